"""Generated native event batches for end-to-end tests, and the same events as records
for the independent expectations."""

from __future__ import annotations

import random
import time
import uuid
from typing import Any

from schemas.events import Event, EventRecord

DAY_MS = 86_400_000
TYPES = ["page_view", "gesture", "session_start", "custom.menu_open"]


def _props(kind: str, rng: random.Random) -> dict[str, Any]:
    if kind == "page_view":
        return {"url": f"https://vr.example/{rng.randrange(20)}"}
    if kind == "gesture":
        return {"gesture": rng.choice(["pinch", "grab", "swipe"])}
    return {}


def generate_batches(
    seed: int, users: int, days: int, batch_size: int = 100
) -> list[list[dict[str, Any]]]:
    """Users active on random days of the last `days` (event time at least an hour in the
    past), shuffled across batches so each batch mixes users and days."""
    rng = random.Random(seed)
    now_ms = int(time.time() * 1000) - 3_600_000
    events = []
    for user in range(users):
        for back in rng.sample(range(days), rng.randint(1, min(days, 8))):
            for _ in range(rng.randint(1, 4)):
                kind = rng.choice(TYPES)
                events.append(
                    {
                        "event_id": uuid.UUID(int=rng.getrandbits(128)).hex,
                        "type": kind,
                        "user_id": f"user-{user}",
                        "ts": now_ms - back * DAY_MS - rng.randrange(DAY_MS // 2),
                        "props": _props(kind, rng),
                    }
                )
    rng.shuffle(events)
    return [events[i : i + batch_size] for i in range(0, len(events), batch_size)]


def as_records(batches: list[list[dict[str, Any]]], project: str) -> list[EventRecord]:
    return [
        EventRecord(
            project=project,
            received_at=0,
            events=[
                Event(event_id=e["event_id"], type=e["type"], user_id=e["user_id"], ts=e["ts"])
                for e in batch
            ],
        )
        for batch in batches
    ]
