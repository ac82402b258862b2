"""Schema discovery summaries: what `GET /v1/schema/events` (SPEC §5.1) needs of one
(project, day), computed by the query path for days whose writes have settled
(sinks/queries/summaries.py), so a question over closed days reads a few rows per day
instead of every event.

- `discovery_event_days`: per day and event type, the distinct events, the actors as a
  `uniqExactState` (merged over the range's days: distinct actors are not additive) and
  the latest `ts`.
- `discovery_days`: one marker per computed (project, kind, day): the day's
  `data_changes` version the summary was computed at, and the `computation` id its rows
  carry. Written after the rows, so a marker always names complete rows; two processes
  computing the same day store two computations and readers pick one per day (the
  largest id), so the rows of one computation are never mixed with another's.

Plain MergeTree: rows of superseded computations stay until an erasure drops the
project's summaries or the TTL (that of `events`) expires them; readers only read the
computation a valid marker names. An erasure deletes the project's rows of these tables
(sinks/queries/erasure.py): the actor states hold the erased user's hash.
"""

from __future__ import annotations

from typing import Final

from sinks.capabilities import Capabilities
from sinks.migrations.v0001_events import EVENT_RETENTION_DAYS

SUMMARY_DAYS_TABLE: Final = "discovery_days"
EVENT_DAYS_TABLE: Final = "discovery_event_days"
SUMMARY_TABLES: Final = (EVENT_DAYS_TABLE, SUMMARY_DAYS_TABLE)


def statements(caps: Capabilities) -> list[str]:
    ttl = caps.ttl(f"day + INTERVAL {EVENT_RETENTION_DAYS} DAY")
    return [
        f"""
        CREATE TABLE IF NOT EXISTS {EVENT_DAYS_TABLE} (
            project String,
            day Date,
            computation UInt64,
            type String,
            events UInt64,
            actors AggregateFunction(uniqExact, UInt64),
            last_ts Int64
        )
        ENGINE = MergeTree()
        PARTITION BY toYYYYMM(day)
        ORDER BY (project, day, computation, type)
        {ttl}
        """,
        f"""
        CREATE TABLE IF NOT EXISTS {SUMMARY_DAYS_TABLE} (
            project String,
            kind String,
            day Date,
            version UInt64,
            computation UInt64
        )
        ENGINE = MergeTree()
        PARTITION BY toYYYYMM(day)
        ORDER BY (project, kind, day)
        {ttl}
        """,
    ]
