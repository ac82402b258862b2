"""Schema discovery summaries: what `GET /v1/schema/events` and `/v1/schema/properties`
(SPEC §5.1) need of one (project, day), computed by the query path for days whose writes
have settled (sinks/queries/summaries.py), so a question over closed days reads summary
rows instead of every event.

- `discovery_event_days`: per day and event type, the distinct events, the actors as a
  `uniqExactState` (merged over the range's days: distinct actors are not additive) and
  the latest `ts`.
- `discovery_property_days`: per day, scope and property, the distinct events holding
  it, whether every value was true/false and whether any event held it as a number.
  `scope` is `all` (every type) or `type:<event type>`: each is summarized when a
  question of that scope first needs it.
- `discovery_value_days`: per day, scope, property and text value, the distinct events
  holding it; only values not held as numbers (numbers get no top values). Every value,
  not a top few: counts over a range are sums of the days' exact counts, so the range's
  top values are exact whatever the distribution.
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
PROPERTY_DAYS_TABLE: Final = "discovery_property_days"
VALUE_DAYS_TABLE: Final = "discovery_value_days"
SUMMARY_TABLES: Final = (
    EVENT_DAYS_TABLE, PROPERTY_DAYS_TABLE, VALUE_DAYS_TABLE, SUMMARY_DAYS_TABLE
)  # fmt: skip


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
        CREATE TABLE IF NOT EXISTS {PROPERTY_DAYS_TABLE} (
            project String,
            scope String,
            day Date,
            computation UInt64,
            property String,
            events UInt64,
            boolean UInt8,
            numeric UInt8
        )
        ENGINE = MergeTree()
        PARTITION BY toYYYYMM(day)
        ORDER BY (project, scope, day, computation, property)
        {ttl}
        """,
        f"""
        CREATE TABLE IF NOT EXISTS {VALUE_DAYS_TABLE} (
            project String,
            scope String,
            day Date,
            computation UInt64,
            property String,
            value String,
            events UInt64
        )
        ENGINE = MergeTree()
        PARTITION BY toYYYYMM(day)
        ORDER BY (project, scope, property, day, computation, value)
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
