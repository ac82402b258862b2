"""A generated dataset for the insight tests: several devices, app versions, OSes, regions
and sources, nested and numeric props, missing values, duplicated events (client
retries, replays) and late events (received days after they happened), stored through
the real processors so the tests read what the worker writes."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from typing import Any

from schemas.events import Event, EventRecord
from sinks.clickhouse import ClickHouse
from streams.processors.activity import ActivityProcessor
from streams.processors.base import Position
from streams.processors.events import EventsProcessor

DAY_MS = 86_400_000
INSIGHT_PROJECT = "p_insights"
INSIGHT_LAST_DAY = date(2026, 11, 20)
INSIGHT_DAYS = 21
INSIGHT_TODAY = INSIGHT_LAST_DAY + timedelta(days=3)  # the insight API's today
INSIGHT_READ = {"Authorization": "Bearer rk"}  # its read key
DEVICES = ["quest3", "quest2", "vision_pro", "pico4", ""]
VERSIONS = ["3.0.0", "3.0.1", "2.9.4", ""]
TYPES = ["page_view", "gesture", "purchase", "session_start", "video.play"]


def generate_events(seed: int, users: int, days: int, last_day: date) -> list[dict[str, Any]]:
    """Events as sent (one dict each, standard dimensions and props), sorted by time; the
    same event_id appears more than once for the duplicates."""
    rng = random.Random(seed)
    first = datetime(last_day.year, last_day.month, last_day.day, tzinfo=UTC) - timedelta(
        days=days - 1
    )
    start_ms = int(first.timestamp() * 1000)
    events: list[dict[str, Any]] = []
    for user in range(users):
        device = rng.choice(DEVICES)
        version = rng.choice(VERSIONS)
        region = rng.choice(["eu", "us", "apac", ""])
        os_name = {"vision_pro": "visionos", "": ""}.get(device, "horizon")
        source = rng.choice(["native", "native", "segment", "posthog"])
        for _ in range(rng.randint(1, 12)):
            kind = rng.choice(TYPES)
            props: dict[str, Any] = {}
            if kind == "purchase":
                props["price"] = rng.choice([0.99, 4.99, 9.99, 20, 100])
                props["item"] = {"category": rng.choice(["game", "app", "video"])}
            elif kind == "page_view":
                props["url"] = rng.choice(["https://vr/store", "https://vr/home", "https://vr/x"])
            elif kind == "video.play":
                props["bitrate"] = rng.randrange(1000, 9000, 500)
                if rng.random() < 0.5:
                    props["hdr"] = rng.random() < 0.5
            if rng.random() < 0.3:
                props["ab"] = {"arm": rng.choice(["a", "b"]), "n": rng.randrange(3)}
            events.append(
                {
                    "event_id": f"e-{seed}-{user}-{len(events)}",
                    "type": kind,
                    "user_id": f"user-{user}",
                    "ts": start_ms + rng.randrange(days * DAY_MS),
                    "session_id": rng.choice(["", f"s-{user}-{rng.randrange(3)}"]),
                    "device_model": device,
                    "app_version": version,
                    "os": os_name,
                    "region": region,
                    "source": source,
                    "props": props,
                }
            )
    events.extend(rng.sample(events, len(events) // 20))  # duplicates
    events.sort(key=lambda e: e["ts"])
    return events


def unique_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for event in events:
        seen.setdefault(event["event_id"], event)
    return list(seen.values())


def store(clickhouse: ClickHouse, project: str, events: list[dict[str, Any]]) -> None:
    """Through the events and activity processors, in two chunks (the second received a
    day later), one record per (user, source) per chunk; duplicates go in as sent."""
    processors = [EventsProcessor(), ActivityProcessor()]
    chunks = [events[: len(events) // 2], events[len(events) // 2 :]]
    for number, chunk in enumerate(chunks):
        by_user: dict[tuple[str, str], list[Event]] = {}
        for event in chunk:
            fields = {key: value for key, value in event.items() if key != "source"}
            by_user.setdefault((event["user_id"], event["source"]), []).append(Event(**fields))
        for offset, ((_, source), user_events) in enumerate(by_user.items()):
            record = EventRecord(
                project=project,
                received_at=user_events[-1].ts + DAY_MS * number,
                events=user_events,
                source=source,
            )
            for processor in processors:
                processor.process(record, Position(0, offset))
        for processor in processors:
            for table in processor.flush(0).tables:
                clickhouse.insert(table.table, table.columns, table.rows)
