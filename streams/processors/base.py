"""The contract between the pipeline core (streams/runner/, on Kafka or the local bus) and
a processor.

The pipeline feeds decoded records with their bus position (an erasure record goes to
`erase` instead: `apply_record`), then asks for `flush(now_ms)`
once per batch and hands the output to the sinks; only after the sinks have it are the
offsets committed. Delivery is therefore at-least-once: a processor must produce output
that is idempotent in its sink (ReplacingMergeTree keys, OR-merged bitmasks) and, when it
keeps state, ignore records at or before the position its state already reflects.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from schemas.events import EventRecord, erased_user
from schemas.output import ProcessorOutput


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """Where a record sits on the bus. All of one user's records share a partition
    (key `project:user_id`), so per-user and per-play state can compare offsets."""

    partition: int
    offset: int


class EventProcessor(Protocol):
    """Consumes `analytics.events` records."""

    def process(self, record: EventRecord, position: Position) -> None: ...

    def erase(self, project: str, user_id: str) -> None:
        """Forget the user: their state (a StatefulProcessor reports it deleted) and the
        rows not flushed yet."""

    def flush(self, now_ms: int) -> ProcessorOutput: ...


@runtime_checkable
class StatefulProcessor(EventProcessor, Protocol):
    """A processor whose state must survive restarts and rebalances. The runner persists
    `take_state_changes()` (key → serialized state, None = delete) in a changelogged
    table after each flush, and on (re)assignment replays stored entries with
    `load_state` before feeding records."""

    def take_state_changes(self) -> dict[str, bytes | None]: ...

    def load_state(self, key: str, value: bytes) -> None: ...


def apply_record(
    record: EventRecord, position: Position, processors: Iterable[EventProcessor]
) -> int:
    """Feed one record to the processors; returns how many events it counts for (none
    for an erasure record)."""
    user_id = erased_user(record)
    if user_id is not None:
        for processor in processors:
            processor.erase(record.project, user_id)
        return 0
    for processor in processors:
        processor.process(record, position)
    return len(record.events)
