"""Live mode's traffic: an endless stream in simulated time (pure and deterministic per
seed and start). It keeps as many sessions running as `--rate` needs (from the measured
events per session-second) and cycles users: an idle user, weighted by engagement, starts
the next session. The sender (`run.py`) replaces every ts with the time it emits the
event and flushes a session's events every 2 s of wall time.
"""

from __future__ import annotations

import functools
import heapq
import math
import random
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from quip.simulate.catalog import Catalog, base_catalog
from quip.simulate.model import MODEL, Model, SimulationError, UserProfile, app_version, make_user
from quip.simulate.services import live_content
from quip.simulate.session import ServiceItem, Session, make_session

LIVE_FLUSH_S: Final = 2.0


@dataclass(frozen=True, slots=True)
class Live:
    """An endless stream for live mode, `rate` events per second of simulated time on
    average, with simulated time starting at `start_ms`."""

    seed: int
    users: int
    rate: float
    start_ms: int
    project: str = "default"
    model: Model = MODEL

    def __post_init__(self) -> None:
        if self.users < 1:
            raise SimulationError("--users must be at least 1")
        if not self.rate > 0:
            raise SimulationError("--rate must be positive")


@dataclass(frozen=True, slots=True)
class LiveEvent:
    user_id: str
    context: dict[str, str]
    event: dict[str, Any]
    last_in_session: bool


LIVE_GAP_MEAN_MS: Final = 5_000


@dataclass(frozen=True, slots=True)
class Calibration:
    events_per_s: float  # of one running session (gaps between sessions included)
    mean_session_ms: float


@functools.lru_cache(maxsize=8)
def calibrate(seed: int, model: Model = MODEL, samples: int = 300) -> Calibration:
    """Events per second of a running session and the mean session length, measured on
    sample sessions (deterministic per seed)."""
    rng = random.Random(f"{seed}/calibrate")  # noqa: S311 (test data, not secrets)
    catalog = Catalog(base_catalog())
    events = 0
    duration = 0
    for index in range(samples):
        profile, user_rng = make_user(rng.randrange(1 << 30), index, model)
        session = make_session(
            profile, user_rng, 0, first=rng.random() < 0.1, app="3.1.0",
            catalog=catalog, users=1, project="default", model=model,
        )  # fmt: skip
        events += len(session.events)
        duration += session.end_ms - session.start_ms + LIVE_GAP_MEAN_MS
    return Calibration(events / (duration / 1_000), duration / samples)


def live_sessions_needed(plan: Live) -> int:
    """Concurrent sessions for `plan.rate` (at most one per user; with fewer users than
    that, simulated time runs faster than the clock)."""
    per_session = calibrate(plan.seed, plan.model).events_per_s
    return max(1, min(plan.users, math.ceil(plan.rate / per_session)))


def _live_events(plan: Live) -> Iterator[LiveEvent | ServiceItem]:
    rng = random.Random(f"{plan.seed}/live")  # noqa: S311 (test data, not secrets)
    model = plan.model
    catalog = Catalog(base_catalog())
    users: dict[int, tuple[UserProfile, random.Random]] = {}
    seen: set[int] = set()
    idle = list(range(plan.users))  # users not in a session; `where` maps user → position
    where = {index: index for index in idle}

    def take_user() -> int:
        """An idle user, more likely the more engaged (up to 8 rejection draws)."""
        for _ in range(8):
            index = idle[rng.randrange(len(idle))]
            if rng.random() * 4.0 < user(index)[0].engagement:
                break
        last = idle.pop()
        if last != index:
            idle[where[index]] = last
            where[last] = where[index]
        del where[index]
        return index

    def release(index: int) -> None:
        where[index] = len(idle)
        idle.append(index)

    def user(index: int) -> tuple[UserProfile, random.Random]:
        if index not in users:
            users[index] = make_user(plan.seed, index, model)
        return users[index]

    def start(at_ms: int) -> tuple[int, _LiveSession]:
        index = take_user()
        profile, user_rng = user(index)
        first = index not in seen and rng.random() < model.live_new_users
        seen.add(index)
        session = make_session(
            profile,
            user_rng,
            at_ms,
            first=first,
            app=app_version(profile, 0),
            catalog=catalog,
            users=plan.users,
            project=plan.project,
            model=model,
        )
        return index, _LiveSession.of(profile.user_id, session)

    heap: list[tuple[int, int, int, int, _LiveSession]] = []
    sequence = 0
    # Staggered over a mean session length, so that the stream starts near its steady mix
    # rather than with every session starting at once.
    stagger_ms = calibrate(plan.seed, model).mean_session_ms
    for _ in range(live_sessions_needed(plan)):
        index, running = start(plan.start_ms + int(rng.uniform(0, stagger_ms)))
        heapq.heappush(heap, (running.times[0], sequence, 0, index, running))
        sequence += 1
    while True:
        _, _, position, index, running = heapq.heappop(heap)
        item = running.pop(position)
        yield item
        sequence += 1
        if position + 1 < len(running.times):
            heapq.heappush(
                heap, (running.times[position + 1], sequence, position + 1, index, running)
            )
        else:  # the user is free once its session and its messages are over
            release(index)
            index, running = start(_live_ts(item) + int(rng.expovariate(1 / LIVE_GAP_MEAN_MS)))
            heapq.heappush(heap, (running.times[0], sequence, 0, index, running))


_encode_event = msgspec.msgpack.Encoder().encode
_decode_event = msgspec.msgpack.Decoder(dict[str, Any]).decode


@dataclass(frozen=True, slots=True)
class _LiveSession:
    """A running session's events and service messages in time order, each event held as
    msgpack until emitted and dropped then: nearly every user is in a session at once, and
    events kept as dicts to their session's end cost gigabytes at large --users. (msgpack
    rather than orjson.dumps, whose small results each keep a 4 KB allocation.)"""

    user_id: str
    context: dict[str, str]
    times: array[int]
    items: list[bytes | ServiceItem | None]
    last_event: int  # position of the session's last event (messages may follow it)

    @classmethod
    def of(cls, user_id: str, session: Session) -> _LiveSession:
        timed: list[tuple[int, bytes | ServiceItem]] = [
            (event["ts"], _encode_event(event)) for event in session.events
        ]
        timed.extend((message.ts, ServiceItem(message)) for message in session.services)
        # Stable: a notification at the same ms stays after the session's events.
        timed.sort(key=lambda pair: pair[0])
        last_event = max(i for i, (_, item) in enumerate(timed) if isinstance(item, bytes))
        items: list[bytes | ServiceItem | None] = [item for _, item in timed]
        return cls(user_id, session.context, array("q", [ts for ts, _ in timed]), items, last_event)

    def pop(self, position: int) -> LiveEvent | ServiceItem:
        """The item at `position`, which is not kept: each is emitted once."""
        held = self.items[position]
        self.items[position] = None
        assert held is not None, "an item is emitted once"
        if isinstance(held, ServiceItem):
            return held
        return LiveEvent(
            self.user_id, self.context, _decode_event(held), position == self.last_event
        )


def _live_ts(item: LiveEvent | ServiceItem) -> int:
    if isinstance(item, ServiceItem):
        return item.sort_ts
    ts: int = item.event["ts"]
    return ts


def live_items(plan: Live) -> Iterator[LiveEvent | ServiceItem]:
    """Session events and service messages in simulated-time order, forever. The sender
    replaces every ts with the time it emits the item."""
    events: Iterator[LiveEvent | ServiceItem] = _live_events(plan)
    services: Iterator[LiveEvent | ServiceItem] = live_content(
        plan.seed, plan.start_ms, plan.project, plan.model
    )
    return heapq.merge(events, services, key=_live_ts)
