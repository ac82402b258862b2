"""Seeded data for the dashboard browser test: analytics events (with props), plays and
service messages, run through the real stream processors and inserted as their sinks would.

Everything is relative to now (event time at least an hour in the past, within the last 28
days, plus a few page views earlier today) so that the page's default range, the last 30 UTC
days, covers all of it. A little noise goes to another project, which the page must never show.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from schemas.events import Event, EventRecord
from schemas.funnels import FunnelDefinition
from schemas.output import ProcessorOutput
from schemas.services import (
    ContentPublished,
    EmailNotification,
    EncodingJob,
    ServiceMessage,
    SocialNotification,
)
from schemas.topics import CMS_PUBLISH, NOTIFICATIONS_EMAIL, SOCIAL_NOTIFICATIONS, VIDEO_ENCODING
from sinks.clickhouse import ClickHouse
from streams.processors.activity import ActivityProcessor
from streams.processors.base import Position
from streams.processors.events import EventsProcessor
from streams.processors.funnels import FunnelsProcessor
from streams.processors.plays import PlaysProcessor
from streams.processors.services import ServiceMetricsProcessor
from tests.traffic import generate_batches

PROJECT = "default"
OTHER_PROJECT = "other"
DAY_MS = 86_400_000
HOUR_MS = 3_600_000
DAYS = 28
USERS = 160
DEVICES = ["quest3", "quest2", "pico4"]
APPS = ["3.0.0", "3.1.0"]
CONTENTS = [f"c-{index}" for index in range(5)]

FUNNELS_JSON = b"""{"funnels": [
  {"name": "pinch-after-start", "window_seconds": 86400,
   "steps": [{"event": "session_start"}, {"event": "gesture", "where": {"gesture": "pinch"}}]},
  {"name": "play-started", "window_seconds": 600,
   "steps": [{"event": "playback_request"}, {"event": "playback_start"},
             {"event": "playback_heartbeat"}]}
]}"""


@dataclass(frozen=True, slots=True)
class Seeded:
    events: int
    plays: int
    service_messages: int


def write_funnels_file(directory: Path) -> Path:
    path = directory / "funnels.json"
    path.write_bytes(FUNNELS_JSON)
    return path


def activity_records(seed: int, now_ms: int) -> list[EventRecord]:
    """tests/traffic.py's generated users (page views, gestures, session starts, a custom
    event), keeping their props so that funnel prop filters have something to match."""
    records = []
    for batch in generate_batches(seed, users=USERS, days=DAYS, batch_size=50):
        events = [
            Event(
                event_id=raw["event_id"],
                type=raw["type"],
                user_id=raw["user_id"],
                ts=raw["ts"],
                device_model=DEVICES[int(raw["user_id"].rsplit("-", 1)[1]) % len(DEVICES)],
                props=raw["props"],
            )
            for raw in batch
        ]
        records.append(EventRecord(project=PROJECT, received_at=now_ms, events=events))
    records.append(today_record(seed, now_ms))
    return records


def today_record(seed: int, now_ms: int) -> EventRecord:
    """Page views of a few users earlier today (UTC): the generated traffic stays an hour
    in the past, which before 01:00 UTC leaves today, the last day the page shows, empty."""
    rng = random.Random(seed)
    today_start = now_ms - now_ms % DAY_MS
    events = [
        Event(
            event_id=f"today-{user}",
            type="page_view",
            user_id=f"user-{user}",
            ts=today_start + rng.randrange(max(1, now_ms - today_start)),
            device_model=DEVICES[user % len(DEVICES)],
            props={"url": "https://quip.example/today"},
        )
        for user in rng.sample(range(USERS), 5)
    ]
    return EventRecord(project=PROJECT, received_at=now_ms, events=events)


class _Play:
    """The events of one play, in order."""

    def __init__(self, play_id: str, user: str, rng: random.Random) -> None:
        self.play_id, self.user = play_id, user
        self.device, self.app = rng.choice(DEVICES), rng.choice(APPS)
        self.content = rng.choice(CONTENTS)
        self.events: list[Event] = []

    def add(self, kind: str, ts: int, **props: Any) -> None:
        self.events.append(
            Event(
                event_id=f"{self.play_id}-{len(self.events)}",
                type=f"playback_{kind}",
                user_id=self.user,
                ts=ts,
                device_model=self.device,
                app_version=self.app,
                props={"play_id": self.play_id, "content_id": self.content, **props},
            )
        )


def play_records(seed: int, now_ms: int, plays: int) -> list[EventRecord]:
    """Complete plays (each ends itself: playback_end or a fatal error), one record each:
    most start and play with heartbeats, some rebuffer or switch bitrate, some fail to
    start, exit before start, or fail after starting."""
    rng = random.Random(seed)
    records = []
    for number in range(plays):
        play = _Play(f"play-{number}", f"user-{rng.randrange(USERS)}", rng)
        t = now_ms - 2 * HOUR_MS - rng.randrange(DAYS) * DAY_MS - rng.randrange(DAY_MS // 2)
        scenario = rng.choices(["ok", "start_failure", "exit", "play_failure"], [72, 10, 8, 10])[0]
        play.add("request", t)
        if scenario == "start_failure":
            play.add("error", t + rng.randint(500, 6_000), code="E-START", fatal=True)
        elif scenario == "exit":
            play.add("end", t + rng.randint(500, 6_000), played_ms=0)
        else:
            startup = rng.randint(250, 6_000)
            bitrate = rng.choice([1500, 3000, 6000, 12000])
            t += startup
            play.add("start", t, startup_ms=startup, bitrate_kbps=bitrate)
            for _ in range(rng.randint(1, 6)):
                if rng.random() < 0.25:
                    stall = rng.randint(200, 4_000)
                    t += stall
                    play.add("rebuffer", t, duration_ms=stall)
                if rng.random() < 0.15:
                    new_bitrate = rng.choice([1500, 3000, 6000, 12000])
                    play.add("quality_change", t, from_kbps=bitrate, to_kbps=new_bitrate)
                    bitrate = new_bitrate
                t += 10_000
                play.add("heartbeat", t, played_ms=10_000, bitrate_kbps=bitrate)
            if scenario == "play_failure":
                play.add("error", t + 500, code="E-DECODE", fatal=True)
            else:
                play.add("end", t + 2_000, played_ms=2_000)
        records.append(
            EventRecord(project=PROJECT, received_at=play.events[-1].ts, events=play.events)
        )
    return records


def _day_messages(
    rng: random.Random, back: int, day_start: int, first_id: int
) -> list[tuple[str, ServiceMessage]]:
    """One day's service messages, ids from `first_id` on."""
    out: list[tuple[str, ServiceMessage]] = []

    def ts() -> int:
        return day_start + rng.randrange(DAY_MS // 2)

    def mid() -> str:
        return f"m-{first_id + len(out)}"

    for _ in range(rng.randint(0, 12)):
        social = rng.choice(["sent", "delivered", "delivered", "failed"])
        message = SocialNotification(
            message_id=mid(),
            user_id=f"user-{rng.randrange(USERS)}",
            kind="message",
            status=social,  # type: ignore[arg-type]
            ts=ts(),
        )
        out.append((SOCIAL_NOTIFICATIONS.name, message))
    for _ in range(rng.randint(0, 4)):
        action = rng.choice(["published", "published", "updated"])
        published = ContentPublished(
            message_id=mid(),
            content_id=rng.choice(CONTENTS),
            action=action,  # type: ignore[arg-type]
            content_type="video",
            ts=ts(),
        )
        out.append((CMS_PUBLISH.name, published))
    for job in range(rng.randint(0, 5)):
        job_id = f"job-{back}-{job}"
        queued = EncodingJob(
            message_id=mid(), job_id=job_id, content_id="c-0", status="queued", ts=ts()
        )
        out.append((VIDEO_ENCODING.name, queued))
        finished = EncodingJob(
            message_id=mid(),
            job_id=job_id,
            content_id="c-0",
            status=rng.choice(["succeeded", "succeeded", "succeeded", "failed"]),  # type: ignore[arg-type]
            ts=ts(),
            encode_ms=float(rng.randint(20_000, 400_000)),
        )
        out.append((VIDEO_ENCODING.name, finished))
    for _ in range(rng.randint(0, 8)):
        email = EmailNotification(
            message_id=mid(),
            user_id=f"user-{rng.randrange(USERS)}",
            template="digest",
            status=rng.choice(["sent", "sent", "sent", "failed"]),  # type: ignore[arg-type]
            ts=ts(),
        )
        out.append((NOTIFICATIONS_EMAIL.name, email))
    return out


def service_messages(seed: int, now_ms: int) -> list[tuple[str, ServiceMessage]]:
    rng = random.Random(seed)
    messages: list[tuple[str, ServiceMessage]] = []
    for back in range(DAYS):
        day_start = now_ms - HOUR_MS - back * DAY_MS - DAY_MS // 2
        messages += _day_messages(rng, back, day_start, len(messages))
    # Noise: another project's messages must not show up.
    noise = SocialNotification(
        message_id="noise",
        user_id="u",
        kind="message",
        status="delivered",
        ts=now_ms - DAY_MS,
        project=OTHER_PROJECT,
    )
    messages.append((SOCIAL_NOTIFICATIONS.name, noise))
    return messages


def _insert(clickhouse: ClickHouse, outputs: Iterable[ProcessorOutput]) -> None:
    for output in outputs:
        for table in output.tables:
            clickhouse.insert(table.table, table.columns, table.rows)


def seed(clickhouse: ClickHouse, funnels: list[FunnelDefinition], seed: int = 11) -> Seeded:
    """Run the generated data through the processors and insert their output (the schema
    must be migrated already)."""
    now_ms = int(time.time() * 1000)
    records = activity_records(seed, now_ms) + play_records(seed, now_ms, plays=240)
    records.append(
        EventRecord(
            project=OTHER_PROJECT,
            received_at=now_ms,
            events=[Event(event_id="noise", type="page_view", user_id="x", ts=now_ms - DAY_MS)],
        )
    )
    processors = [
        EventsProcessor(),
        ActivityProcessor(),
        PlaysProcessor(),
        FunnelsProcessor(funnels),
    ]
    for offset, record in enumerate(records):
        for processor in processors:
            processor.process(record, Position(0, offset))
    _insert(clickhouse, (processor.flush(now_ms) for processor in processors))

    services = ServiceMetricsProcessor()
    messages = service_messages(seed, now_ms)
    for offset, (topic, message) in enumerate(messages):
        services.process(topic, msgspec.json.encode(message), Position(0, offset))
    _insert(clickhouse, [services.flush(now_ms)])
    return Seeded(
        events=sum(len(record.events) for record in records),
        plays=sum(1 for record in records if record.events[0].type == "playback_request"),
        service_messages=len(messages),
    )
