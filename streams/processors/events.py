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

    def process(self, record: EventRecord, position: Position) -> None:
        del position  # the table deduplicates replays by key
        project, received_at = record.project, record.received_at
        self._rows.extend(
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
                orjson.dumps(event.props).decode(),
            )
            for event in record.events
        )

    def flush(self, now_ms: int) -> ProcessorOutput:
        del now_ms
        rows, self._rows = self._rows, []
        return ProcessorOutput(
            tables=[TableRows(EVENTS_TABLE, EVENTS_COLUMNS, rows)] if rows else []
        )
