"""Events → rows of the raw `events` table (migration 0001; `os` and `source` from 0008,
the flattened props arrays of schemas/props.py from 0009), deduplicated there on
(project, event_id)."""

from __future__ import annotations

import orjson

from schemas.events import EventRecord
from schemas.output import ProcessorOutput, TableRows
from schemas.props import FlatProps, flatten_props
from streams.processors.base import Position

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
    "os",
    "region",
    "source",
    "props",
    "props_keys",
    "props_values",
    "props_num_keys",
    "props_num_values",
)
NO_PROPS: FlatProps = ((), (), (), ())


class EventsProcessor:
    def __init__(self) -> None:
        self._rows: list[tuple[object, ...]] = []
        self._erasures: list[tuple[str, str]] = []

    def process(self, record: EventRecord, position: Position) -> None:
        del position  # the table deduplicates replays by key
        project, received_at, source = record.project, record.received_at, record.source
        dumps = orjson.dumps
        # A loop, not a generator: most records hold one event, and a generator's set-up
        # costs as much as the row.
        append = self._rows.append
        for event in record.events:
            props = event.props
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
                    event.os,
                    event.region,
                    source,
                    dumps(props).decode(),
                    *(flatten_props(props) if props else NO_PROPS),
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
