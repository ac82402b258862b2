"""A user's erasure as the processors see it (`DELETE /v1/users/{id}` puts an erasure
record on the bus): the user's state is dropped and reported deleted, rows not flushed yet
are not written, the sinks are asked to delete the stored rows, and what the user sends
afterwards starts from nothing. Other users are untouched."""

from __future__ import annotations

import itertools
from typing import Any

import msgspec
import pytest

from schemas.events import (
    ERASURE_TYPE,
    Event,
    EventRecord,
    decode_record,
    encode_record,
    erased_user,
    erasure_record,
)
from schemas.funnels import FunnelDefinition, FunnelStep
from schemas.output import ProcessorOutput
from streams.processors.activity import ActivityProcessor
from streams.processors.base import EventProcessor, Position, apply_record
from streams.processors.events import EventsProcessor
from streams.processors.funnels import FunnelsProcessor, state_key
from streams.processors.plays import (
    QOE_MEASUREMENT,
    PlaysProcessor,
    play_state_key,
)

PROJECT = "p1"
T0 = 1_764_100_020_000
IDLE = 300_000
ABC = FunnelDefinition(
    "abc", [FunnelStep("a"), FunnelStep("b"), FunnelStep("c")], window_seconds=3600
)

_ids = itertools.count()


def event(type_: str, user: str, ts: int, **props: Any) -> Event:
    return Event(event_id=f"e{next(_ids)}", type=type_, user_id=user, ts=ts,
                 device_model="quest3", props=props)  # fmt: skip


class Bus:
    """Feeds processors like a runner: one record per call, increasing offsets."""

    def __init__(self, *processors: EventProcessor) -> None:
        self.processors = processors
        self.offset = 0

    def send(self, *events: Event, received_at: int | None = None) -> int:
        received = received_at if received_at is not None else max(e.ts for e in events)
        record = EventRecord(project=PROJECT, received_at=received, events=list(events))
        return self._apply(record)

    def erase(self, user: str, received_at: int) -> int:
        # through the wire format, as the worker gets it
        record = decode_record(encode_record(erasure_record(PROJECT, user, received_at)))
        return self._apply(record)

    def _apply(self, record: EventRecord) -> int:
        self.offset += 1
        return apply_record(record, Position(0, self.offset), self.processors)


def rows(output: ProcessorOutput, table: str) -> list[tuple[Any, ...]]:
    return [row for part in output.tables if part.table == table for row in part.rows]


def test_erasure_record_round_trips_and_is_not_an_event_record() -> None:
    record = decode_record(encode_record(erasure_record(PROJECT, "u/1", T0)))
    assert erased_user(record) == "u/1"
    assert record.project == PROJECT
    assert record.events[0].type == ERASURE_TYPE
    normal = EventRecord(project=PROJECT, received_at=T0, events=[event("a", "u1", T0)])
    assert erased_user(normal) is None
    # a client cannot send it: types start with a lowercase letter
    assert not ERASURE_TYPE[0].islower()


def test_erasure_counts_no_events_and_reaches_every_processor() -> None:
    events, activity = EventsProcessor(), ActivityProcessor()
    bus = Bus(events, activity)
    assert bus.send(event("a", "u1", T0), event("b", "u1", T0 + 1)) == 2
    assert bus.erase("u1", T0 + 2) == 0


def test_events_pending_rows_of_the_user_are_dropped_and_stored_rows_deleted() -> None:
    processor = EventsProcessor()
    bus = Bus(processor)
    bus.send(event("a", "u1", T0))
    bus.send(event("a", "u2", T0))
    bus.erase("u1", T0 + 5)
    after = event("b", "u1", T0 + 10)  # a new event of the same user id is new data
    bus.send(after)
    output = processor.flush(T0)
    assert [(row[3], row[2]) for row in rows(output, "events")] == [("u2", "a"), ("u1", "b")]
    assert output.erasures == [(PROJECT, "u1")]
    assert processor.flush(T0).erasures == []


def test_activity_forgets_pending_rows_and_sends_the_user_days_again() -> None:
    processor = ActivityProcessor()
    bus = Bus(processor)
    bus.send(event("a", "u1", T0))
    bus.send(event("a", "u2", T0))
    assert len(rows(processor.flush(T0), "user_activity_input")) == 2
    bus.send(event("a", "u1", T0 + 86_400_000))  # a new day, still pending
    bus.erase("u1", T0 + 86_400_001)
    assert rows(processor.flush(T0), "user_activity_input") == []
    bus.send(event("a", "u1", T0 + 5))  # the day the sink forgot is sent again
    assert [row[1] for row in rows(processor.flush(T0), "user_activity_input")] == ["u1"]


def test_funnel_progress_of_the_user_restarts_from_nothing() -> None:
    processor = FunnelsProcessor([ABC])
    bus = Bus(processor)
    bus.send(event("a", "u1", T0))
    bus.send(event("a", "u2", T0))
    bus.send(event("b", "u1", T0 + 1000))
    assert {row[3]: row[5] for row in rows(processor.flush(T0), "funnel_progress")} == {
        "u1": 2,
        "u2": 1,
    }
    processor.take_state_changes()
    bus.send(event("b", "u2", T0 + 1500))
    bus.erase("u1", T0 + 2000)
    changes = processor.take_state_changes()
    assert changes[state_key(PROJECT, "u1")] is None
    assert changes[state_key(PROJECT, "u2")] is not None
    # u1's step c no longer follows an a and a b: nothing for u1
    bus.send(event("c", "u1", T0 + 3000))
    assert {row[3]: row[5] for row in rows(processor.flush(T0), "funnel_progress")} == {"u2": 2}


def test_an_erased_users_plays_are_dropped_with_their_qoe_contribution() -> None:
    processor = PlaysProcessor(idle_timeout_ms=IDLE)
    bus = Bus(processor)
    for user, play in (("u1", "pl-1"), ("u2", "pl-2")):
        bus.send(event("playback_request", user, T0, play_id=play, content_id="c1"))
        bus.send(event("playback_start", user, T0 + 800, play_id=play, content_id="c1"))
    processor.flush(T0 + 1000)  # the series of the two open plays is sent
    processor.take_state_changes()
    quiet = processor.flush(T0 + 1000)
    assert quiet.tables == []
    assert quiet.points == []
    bus.erase("u1", T0 + 2000)
    changes = processor.take_state_changes()
    assert changes[play_state_key(PROJECT, "pl-1")] is None
    assert play_state_key(PROJECT, "pl-2") not in changes
    output = processor.flush(T0 + 2000)
    (point,) = output.points
    assert point.measurement == QOE_MEASUREMENT
    assert point.fields["plays"] == 1  # the series is sent again without u1's play
    assert point.fields["viewers"] == 1  # so are the concurrent viewers of the minute
    # both plays go idle: only u2's is written
    closed = processor.flush(T0 + 800 + IDLE + 10_000)
    assert [row[1] for row in rows(closed, "plays")] == ["pl-2"]
    assert processor.held_plays() == 1


@pytest.mark.parametrize("user", ["u1", "unknown"])
def test_erasing_twice_or_an_unknown_user_is_harmless(user: str) -> None:
    processor = FunnelsProcessor([ABC])
    bus = Bus(processor)
    bus.send(event("a", "u2", T0))
    bus.erase(user, T0 + 1)
    bus.erase(user, T0 + 2)
    assert [row[3] for row in rows(processor.flush(T0), "funnel_progress")] == ["u2"]
    assert state_key(PROJECT, "u2") in processor.take_state_changes()


def test_undecodable_erasure_shape_is_refused() -> None:
    with pytest.raises(msgspec.ValidationError):
        decode_record(b'{"v": 1, "project": "p1", "received_at": 1, "events": [{"type": 1}]}')
