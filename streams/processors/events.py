"""Events → rows of the raw `events` table (migration 0001), deduplicated there on
(project, event_id)."""

from __future__ import annotations

import orjson

from schemas.events import EventRecord
from streams.processors.base import Position, ProcessorOutput, TableRows

EVENTS_TABLE = "events"
EVENTS_COLUMNS = (
    "project",
    "event_id",
    "type",
    "user_id",
    "ts",
    "received_at",
    "session_id",
    "device_model",
    "app_version",
    "region",
    "props",
)


class EventsProcessor:
    def __init__(self) -> None:
        self._rows: list[tuple[object, ...]] = []
        self._erasures: list[tuple[str, str]] = []

    def process(self, record: EventRecord, position: Position) -> None:
        del position  # the table deduplicates replays by key
        project, received_at = record.project, record.received_at
        dumps = orjson.dumps
        # A loop, not a generator: most records hold one event, and a generator's set-up
        # costs as much as the row.
        append = self._rows.append
        for event in record.events:
            append(
                (
                    project,
                    event.event_id,
                    event.type,
                    event.user_id,
                    event.ts,
                    received_at,
                    event.session_id,
                    event.device_model,
                    event.app_version,
                    event.region,
                    dumps(event.props).decode(),
                )
            )

    def erase(self, project: str, user_id: str) -> None:
        """Also the one processor that asks the sinks to delete the user's stored rows, of
        every table (sinks/queries/erasure.py)."""
        self._rows = [row for row in self._rows if row[0] != project or row[3] != user_id]
        self._erasures.append((project, user_id))

    def flush(self, now_ms: int) -> ProcessorOutput:
        del now_ms
        rows, self._rows = self._rows, []
        erasures, self._erasures = self._erasures, []
        return ProcessorOutput(
            tables=[TableRows(EVENTS_TABLE, EVENTS_COLUMNS, rows)] if rows else [],
            erasures=erasures,
        )
