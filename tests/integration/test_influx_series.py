"""The worker's InfluxDB series end to end against the real influxd: the real plays and
service processors are fed events and messages the way the worker feeds them (records in
arrival order, a flush every few records), every flush's points go through
`sinks/influx.py` (the /api/v2/write compatibility API of InfluxDB 1.8), and what the
server holds, read back with InfluxQL over the 1.x `/query` endpoint, equals an
independent computation from what was sent (tests/expectations.py's per-play figures,
counts and an exact p95 written here)."""

from __future__ import annotations

import collections
import random
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from schemas.events import Event, EventRecord
from schemas.output import SeriesPoint
from schemas.services import (
    ContentPublished,
    EmailNotification,
    EncodingJob,
    ServiceMessage,
    SocialNotification,
    encode_message,
)
from schemas.topics import CMS_PUBLISH, NOTIFICATIONS_EMAIL, SOCIAL_NOTIFICATIONS, VIDEO_ENCODING
from sinks.influx import InfluxWriter
from streams.processors.base import Position
from streams.processors.plays import PlaysProcessor
from streams.processors.services import ServiceMetricsProcessor
from tests.conftest import INFLUX_URL
from tests.expectations import expected_plays

pytestmark = pytest.mark.influxdb

# InfluxDB 1.8's compatibility API: bucket = database (created by services.sh), token
# "user:password" (auth is off locally), org ignored.
DATABASE = "quip"
MINUTE_MS = 60_000
IDLE_TIMEOUT_MS = 300_000
FLUSH_EVERY = 3  # records


@pytest.fixture
def influx_writer() -> Iterator[InfluxWriter]:
    writer = InfluxWriter(INFLUX_URL, "-:-", "-", DATABASE)
    yield writer
    writer.close()


def influxql(query: str, **params: str) -> list[dict[str, Any]]:
    """Rows of an InfluxQL query (1.x /query, epoch ms), one dict per point: time, tags and
    fields by name (a field the point lacks is None)."""
    response = httpx.post(
        f"{INFLUX_URL}/query",
        data={"db": DATABASE, "q": query, "epoch": "ms", "params": orjson.dumps(params).decode()},
        timeout=30,
    )
    response.raise_for_status()
    (result,) = response.json()["results"]
    assert "error" not in result, result
    rows = []
    for series in result.get("series", []):
        for values in series["values"]:
            rows.append(dict(zip(series["columns"], values, strict=True)))
    return rows


def exact_quantile(values: list[float], level: float) -> float:
    """ClickHouse quantileExact, as SPEC §4 asks: index floor(level·n) of the sorted values."""
    ordered = sorted(values)
    return ordered[min(int(level * len(ordered)), len(ordered) - 1)]


# --------------------------------------------------------------------------- plays


def play_event(
    rng: random.Random, play: dict[str, Any], kind: str, at: int, **props: Any
) -> dict[str, Any]:
    payload = {"play_id": play["play_id"], **props}
    if play["content_id"] is not None:
        payload["content_id"] = play["content_id"]
    return {
        "event_id": uuid.UUID(int=rng.getrandbits(128)).hex,
        "type": kind,
        "user_id": play["user_id"],
        "ts": at,
        "device_model": play["device_model"],
        "props": payload,
    }


def play_events(rng: random.Random, start_ms: int, plays: int) -> list[dict[str, Any]]:
    """Plays of every SPEC §4 outcome, first events spread over five minutes; some without
    content_id or device model (tagged "unknown")."""
    events: list[dict[str, Any]] = []
    for index in range(plays):
        play = {
            "play_id": f"play-{index}",
            "user_id": f"user-{index % 7}",
            "content_id": rng.choice(["c1", "c2", "c3", None]),
            "device_model": rng.choice(["quest3", "pico4", ""]),
        }
        outcome = rng.choice(["watch", "watch", "watch", "start_failure", "exit", "idle", "fail"])
        t = start_ms + rng.randrange(5 * MINUTE_MS)
        events.append(play_event(rng, play, "playback_request", t))
        if outcome == "start_failure":
            events.append(play_event(rng, play, "playback_error", t + 700, code="drm", fatal=True))
            continue
        if outcome == "exit":
            events.append(play_event(rng, play, "playback_end", t + 3_000, played_ms=0))
            continue
        if outcome == "idle":
            continue
        startup = rng.randrange(300, 6_000)
        t += startup
        events.append(
            play_event(rng, play, "playback_start", t, startup_ms=startup, bitrate_kbps=4_000)
        )
        for _ in range(rng.randrange(1, 5)):
            t += 10_000
            bitrate = rng.choice([2_000, 4_000])
            events.append(
                play_event(
                    rng, play, "playback_heartbeat", t, played_ms=10_000, bitrate_kbps=bitrate
                )
            )
            if rng.random() < 0.4:
                stall = rng.randrange(200, 3_000)
                events.append(play_event(rng, play, "playback_rebuffer", t + 1, duration_ms=stall))
                t += stall
        if outcome == "fail":
            events.append(
                play_event(rng, play, "playback_error", t + 500, code="network", fatal=True)
            )
        else:
            played = rng.randrange(0, 4_000)
            events.append(play_event(rng, play, "playback_end", t + 4_000, played_ms=played))
    return events


def as_record(project: str, events: list[dict[str, Any]], received_at: int) -> EventRecord:
    return EventRecord(
        project=project,
        received_at=received_at,
        events=[
            Event(
                event_id=e["event_id"],
                type=e["type"],
                user_id=e["user_id"],
                ts=e["ts"],
                device_model=e["device_model"],
                props=e["props"],
            )
            for e in events
        ],
    )


def expected_qoe(events: list[dict[str, Any]], project: str) -> dict[tuple[Any, ...], Any]:
    """(minute, content, device) → the `playback_qoe` fields, from the per-play figures of
    tests/expectations.py (every play is closed by then)."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = collections.defaultdict(list)
    for play in expected_plays(events):
        minute = play["first_ts"] - play["first_ts"] % MINUTE_MS
        key = (minute, play["content_id"] or "unknown", play["device_model"] or "unknown")
        groups[key].append(play)
    expected = {}
    for key, members in groups.items():
        startups = [p["startup_ms"] for p in members if p["started"]]
        watch = sum(p["watch_ms"] for p in members)
        rebuffer = sum(p["rebuffer_ms"] for p in members)
        expected[key] = {
            "project": project,
            "partition": "0",
            "plays": len(members),
            "started": sum(p["started"] for p in members),
            "video_start_failures": sum(p["video_start_failure"] for p in members),
            "exits_before_start": sum(p["exit_before_start"] for p in members),
            "playback_failures": sum(p["playback_failure"] for p in members),
            "watch_ms": watch,
            "startup_ms_p50": exact_quantile(startups, 0.5) if startups else None,
            "startup_ms_p95": exact_quantile(startups, 0.95) if startups else None,
            "rebuffer_ratio": rebuffer / watch if watch else None,
        }
    return expected


def expected_viewers(events: list[dict[str, Any]]) -> dict[tuple[Any, ...], int]:
    """(minute, content, device) → concurrent viewers: the plays whose [first event, last
    event] spans the minute (SPEC §4), tagged as their `playback_qoe` points are."""
    by_play: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for event in events:
        by_play[event["props"]["play_id"]].append(event)
    viewers: dict[tuple[Any, ...], int] = collections.defaultdict(int)
    for members in by_play.values():
        members.sort(key=lambda e: (e["ts"], e["event_id"]))
        content = next(
            (e["props"]["content_id"] for e in members if e["props"].get("content_id")), ""
        )
        device = members[0].get("device_model") or "unknown"
        first = members[0]["ts"] - members[0]["ts"] % MINUTE_MS
        for minute in range(first, members[-1]["ts"] + 1, MINUTE_MS):
            viewers[(minute, content or "unknown", device)] += 1
    return dict(viewers)


def feed_and_write(
    processor: Any,
    inputs: list[Any],
    feed: Any,
    now_of: Any,
    writer: InfluxWriter,
    final_now_ms: int,
) -> list[SeriesPoint]:
    """Feed `inputs` one by one, flushing every FLUSH_EVERY and once more at the end, and
    write each flush's points; returns every point written."""
    written: list[SeriesPoint] = []
    for offset, item in enumerate(inputs):
        feed(item, Position(0, offset))
        if offset % FLUSH_EVERY == FLUSH_EVERY - 1:
            points = processor.flush(now_of(item)).points
            writer.write(points)
            written += points
    points = processor.flush(final_now_ms).points
    writer.write(points)
    return written + points


def test_qoe_series_read_back_equal_what_the_plays_say(
    influx_writer: InfluxWriter, unique_name: str
) -> None:
    project = f"p_{unique_name}"
    rng = random.Random(14)
    start_ms = (int(time.time() * 1000) - 3_600_000) // MINUTE_MS * MINUTE_MS
    events = play_events(rng, start_ms, plays=120)
    events.sort(key=lambda e: (e["ts"], e["event_id"]))
    # Records of a few events each, received a second after their last event.
    records = [
        as_record(project, chunk, chunk[-1]["ts"] + 1_000)
        for chunk in (events[i : i + 5] for i in range(0, len(events), 5))
    ]
    processor = PlaysProcessor(idle_timeout_ms=IDLE_TIMEOUT_MS)
    last_received = records[-1].received_at
    written = feed_and_write(
        processor,
        records,
        processor.process,
        lambda record: record.received_at,
        influx_writer,
        # Past the idle timeout in arrival time: the plays that never ended close.
        final_now_ms=last_received + IDLE_TIMEOUT_MS + 1,
    )
    assert len(written) > len({(p.time_ms, *p.tags.values()) for p in written})  # rewrites

    rows = influxql("SELECT * FROM playback_qoe WHERE project = $project", project=project)
    # Records arrive a second after their events: every point is live, none tagged late
    # (SELECT * lists the measurement's `late` tag, null on these points).
    assert {row.pop("late", None) for row in rows} == {None}
    stored = {
        (row.pop("time"), row.pop("content_id"), row.pop("device_model")): row for row in rows
    }
    # One point per key: its `viewers`, and the QoE fields where plays began in the minute
    # (InfluxDB kept them through the writes that carried `viewers` only).
    viewers = {key: fields.pop("viewers") for key, fields in stored.items()}
    assert viewers == expected_viewers(events)
    expected = expected_qoe(events, project)
    assert {key: fields for key, fields in stored.items() if fields["plays"] is not None} == (
        expected
    )
    outcomes = ("started", "video_start_failures", "exits_before_start", "playback_failures")
    totals = {name: sum(fields[name] for fields in expected.values()) for name in outcomes}
    assert all(totals.values()), totals  # every outcome occurred


# --------------------------------------------------------------------------- services


def service_messages(
    rng: random.Random, project: str, start_ms: int
) -> list[tuple[str, ServiceMessage]]:
    messages: list[tuple[str, ServiceMessage]] = []
    for index in range(240):
        ts = start_ms + rng.randrange(4 * MINUTE_MS)
        message_id = f"m-{index}"
        kind = rng.randrange(4)
        message: ServiceMessage
        if kind == 0:
            status = rng.choice(["sent", "delivered", "delivered", "failed"])
            message = SocialNotification(
                message_id=message_id, user_id="u", kind="mention", status=status, ts=ts,
                project=project,
            )  # fmt: skip
            messages.append((SOCIAL_NOTIFICATIONS.name, message))
        elif kind == 1:
            action = rng.choice(["published", "updated", "unpublished"])
            message = ContentPublished(
                message_id=message_id, content_id="c", action=action, content_type="video",
                ts=ts, project=project,
            )  # fmt: skip
            messages.append((CMS_PUBLISH.name, message))
        elif kind == 2:
            status = rng.choice(["queued", "succeeded", "succeeded", "failed"])
            message = EncodingJob(
                message_id=message_id, job_id=f"j-{index}", content_id="c", status=status,
                ts=ts, project=project,
                encode_ms=None if status == "queued" else float(rng.randrange(1_000, 90_000)),
            )  # fmt: skip
            messages.append((VIDEO_ENCODING.name, message))
        else:
            status = rng.choice(["sent", "sent", "failed"])
            message = EmailNotification(
                message_id=message_id, user_id="u", template="receipt", status=status, ts=ts,
                project=project,
            )  # fmt: skip
            messages.append((NOTIFICATIONS_EMAIL.name, message))
    # A producer retry: the same messages again, counted once.
    return messages + rng.sample(messages, 20)


def expected_service_points(
    messages: list[tuple[str, ServiceMessage]],
) -> dict[tuple[Any, ...], dict[str, Any]]:
    distinct = {(topic, m.message_id): (topic, m) for topic, m in messages}
    groups: dict[tuple[Any, ...], list[ServiceMessage]] = collections.defaultdict(list)
    for topic, message in distinct.values():
        status = message.action if isinstance(message, ContentPublished) else message.status
        groups[(message.ts - message.ts % MINUTE_MS, topic, status)].append(message)
    expected: dict[tuple[Any, ...], dict[str, Any]] = {}
    for (minute, topic, status), members in groups.items():
        encode = [m.encode_ms for m in members if isinstance(m, EncodingJob) and m.encode_ms]
        succeeded = topic == VIDEO_ENCODING.name and status == "succeeded"
        expected[(minute, topic, status)] = {
            "count": len(members),
            "encode_ms_p95": exact_quantile(encode, 0.95) if succeeded and encode else None,
        }
    return expected


def test_service_series_read_back_equal_what_was_sent(
    influx_writer: InfluxWriter, unique_name: str
) -> None:
    project = f"p_{unique_name}"
    rng = random.Random(5)
    start_ms = (int(time.time() * 1000) - 1_800_000) // MINUTE_MS * MINUTE_MS
    messages = service_messages(rng, project, start_ms)
    arrival = sorted(messages[:-20], key=lambda item: item[1].ts) + messages[-20:]
    processor = ServiceMetricsProcessor()
    newest = max(message.ts for _, message in messages)
    written = feed_and_write(
        processor,
        arrival,
        lambda item, position: processor.process(item[0], encode_message(item[1]), position),
        lambda item: newest,
        influx_writer,
        final_now_ms=newest,
    )
    assert written

    rows = influxql(
        "SELECT count, encode_ms_p95, topic, status FROM service_metrics WHERE project = $project",
        project=project,
    )
    stored = {
        (row["time"], row["topic"], row["status"]): {
            "count": row["count"],
            "encode_ms_p95": row["encode_ms_p95"],
        }
        for row in rows
    }
    expected = expected_service_points(messages)
    assert stored == expected
    assert any(fields["encode_ms_p95"] for fields in expected.values())
