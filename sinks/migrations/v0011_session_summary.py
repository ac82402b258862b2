"""Sessions summarized at ingest: `session_summary` holds, per (project, day of the event,
actor, 64-bit hash of `session_id`), what `sinks/queries/sessions.py` needs of a session's
events that carry a `session_id` in that day, so `POST /v1/insights/sessions` merges one
row per session-day instead of grouping every raw event (SPEC §4 "Sessions", §5.1).

A materialized view on `events` fills it, so every writer of `events` (the worker's
sink, `quip up`'s chDB inserts, a migration copying rows) feeds it without knowing it.
Copies of an event arrive in separate inserts and are summarized before `events` merges
them, so every column is an idempotent state, exact whatever the copies and the merge
progress:
- `min_ts` / `max_ts`: the earliest and the latest `ts`;
- `event_keys`: the set of the events' keys (`actor.EVENT_KEY`, `uniqExact`);
- `first_event`: the standard dimensions of the first event (`actor.first_order`: the
  earliest time, then the smallest id), which filters and breakdowns on `type`,
  `device_model`, `app_version`, `os`, `region` and `source` read; copies of an event
  carry the same dimensions, so any copy is the same answer.
The actor is `actor.ACTOR` (`user_hash` today), stored under that name so an erasure finds
the user's rows as in the activity tables. Events without a session id are not here: their
sessions are cut by 30-minute gaps over the whole timeline, which only the raw events
tell. Kept as long as `events` where the server has TTL.

`apply` backfills the rows stored before the view, one day partition at a time, after
pending mutations of `events` (an 18.16 erasure) are done so no erased row is summarized.
Rows inserted meanwhile are summarized by both the view and the backfill, and a run
stopped half-way is simply run again: the states are idempotent.
"""

from __future__ import annotations

from typing import Final

from sinks.capabilities import Capabilities
from sinks.clickhouse import ClickHouse
from sinks.migrations.steps import wait_for_mutations
from sinks.migrations.v0001_events import EVENT_RETENTION_DAYS
from sinks.queries.actor import ACTOR, EVENT_KEY, first_order

TABLE: Final = "session_summary"
# The first event's standard dimensions, in `first_event`'s tuple order.
FIRST_EVENT_DIMENSIONS: Final = ("type", "device_model", "app_version", "os", "region", "source")


def summary_select(condition: str) -> str:
    """The summary rows of the `events` rows matching `condition` (and carrying a session
    id), as the view and the backfill write them."""
    return f"""
        SELECT project, day, {ACTOR} AS user_hash, cityHash64(session_id) AS session_hash,
               minState(ts) AS min_ts, maxState(ts) AS max_ts,
               uniqExactState({EVENT_KEY}) AS event_keys,
               argMinState(tuple({", ".join(FIRST_EVENT_DIMENSIONS)}),
                           {first_order("ts", "event_id")}) AS first_event
        FROM events
        WHERE session_id != '' AND {condition}
        GROUP BY project, day, user_hash, session_hash
    """


def statements(caps: Capabilities) -> list[str]:
    dimensions = ", ".join("String" for _ in FIRST_EVENT_DIMENSIONS)
    return [
        f"""
        CREATE TABLE IF NOT EXISTS {TABLE} (
            project String,
            day Date,
            user_hash UInt64,
            session_hash UInt64,
            min_ts AggregateFunction(min, Int64),
            max_ts AggregateFunction(max, Int64),
            event_keys AggregateFunction(uniqExact, UInt64),
            first_event AggregateFunction(argMin, Tuple({dimensions}), String)
        )
        ENGINE = AggregatingMergeTree()
        PARTITION BY day
        ORDER BY (project, day, user_hash, session_hash)
        {caps.ttl(f"day + INTERVAL {EVENT_RETENTION_DAYS} DAY")}
        """,
        f"""
        CREATE MATERIALIZED VIEW IF NOT EXISTS {TABLE}_mv TO {TABLE} AS
        {summary_select("1")}
        """,
    ]


def apply(ch: ClickHouse, caps: Capabilities) -> None:
    del caps  # the same statements on every engine
    wait_for_mutations(ch, "events")
    days = ch.execute(
        "SELECT DISTINCT toString(day) AS d FROM events WHERE session_id != '' ORDER BY d"
    )
    for (day,) in days:
        ch.execute(
            f"INSERT INTO {TABLE} {summary_select('day = toDate(%(day)s)')}", {"day": str(day)}
        )
