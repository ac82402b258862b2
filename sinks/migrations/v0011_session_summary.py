"""Sessions summarized at ingest: `session_summary` holds, per (project, day of the event,
actor, session), what `sinks/queries/sessions.py` needs of a session's
events that carry a `session_id` in that day, so `POST /v1/insights/sessions` merges one
row per session-day instead of grouping every raw event (SPEC §4 "Sessions", §5.1).

A materialized view on `events` fills it, so every writer of `events` (the worker's
sink, `quip up`'s chDB inserts, a migration copying rows) feeds it without knowing it.
Copies of an event arrive in separate inserts and are summarized before `events` merges
them, so every column stays exact whatever the copies and the merge progress:
- `min_ts` / `max_ts`: the earliest and the latest `ts` (min and max ignore copies);
- `event_keys`: the events' keys (`actor.EVENT_KEY`) as an array, copies included; the
  query counts its distinct keys (`arrayUniq`), so a copy adds a repeated key, not an
  event. An array rather than a set state (`uniqExact`): merging 625k sessions' sets cost
  clickhouse-server 18.16 2.4x the CPU of concatenating their arrays and counting
  (benchmarks/README.md, "Sessions from a summary built at ingest"); what copies cost is
  their keys' room, as the copies in `events` do until it merges them;
- `first_event`: the standard dimensions of the first event (`actor.first_order`: the
  earliest time, then the smallest id), which filters and breakdowns on `type`,
  `device_model`, `app_version`, `os`, `region` and `source` read; copies of an event
  carry the same dimensions, so any copy is the same answer.
The actor is `actor.ACTOR` (`user_hash` today), stored under that name so an erasure finds
the user's rows as in the activity tables. A session is keyed by one 64-bit hash of
(actor, `session_id`), `session_key`: the query groups by that one key, which cost
18.16 ~130 ms less CPU per call than the pair (actor, hash of the id) over 625k
sessions; two sessions would have to share a hash to be merged (as for `EVENT_KEY`).
Events without a session id are not here: their sessions are cut by 30-minute gaps over
the whole timeline, which only the raw events tell. A second view notes in
`sessionless_days` the (project, day) pairs that hold such events, so the query reads the
raw events of those days only (none when every event carries an id: scanning
`session_id` over 30 days of 10M events cost 18.16 ~0.7 s of CPU however few rows
matched). It names no user. Both tables are kept as long as
`events` where the server has TTL.

`apply` backfills the rows stored before the views, one day partition at a time, after
pending mutations of `events` (an 18.16 erasure) are done so no erased row is summarized.
Rows inserted meanwhile are summarized by both the view and the backfill, and a run
stopped half-way is simply run again: what it summarizes twice is copies, as above.
"""

from __future__ import annotations

from typing import Final

from sinks.capabilities import Capabilities
from sinks.clickhouse import ClickHouse
from sinks.migrations.steps import wait_for_mutations
from sinks.migrations.v0001_events import EVENT_RETENTION_DAYS
from sinks.queries.actor import ACTOR, EVENT_KEY, first_order

TABLE: Final = "session_summary"
SESSIONLESS_DAYS: Final = "sessionless_days"
# The first event's standard dimensions, in `first_event`'s tuple order.
FIRST_EVENT_DIMENSIONS: Final = ("type", "device_model", "app_version", "os", "region", "source")


SESSIONLESS_SELECT: Final = "SELECT DISTINCT project, day FROM events WHERE session_id = ''"


def summary_select(condition: str) -> str:
    """The summary rows of the `events` rows matching `condition` (and carrying a session
    id), as the view and the backfill write them."""
    return f"""
        SELECT project, day, {ACTOR} AS user_hash,
               cityHash64({ACTOR}, session_id) AS session_key,
               minState(ts) AS min_ts, maxState(ts) AS max_ts,
               groupArrayState({EVENT_KEY}) AS event_keys,
               argMinState(tuple({", ".join(FIRST_EVENT_DIMENSIONS)}),
                           {first_order("ts", "event_id")}) AS first_event
        FROM events
        WHERE session_id != '' AND {condition}
        GROUP BY project, day, user_hash, session_key
    """


def statements(caps: Capabilities) -> list[str]:
    dimensions = ", ".join("String" for _ in FIRST_EVENT_DIMENSIONS)
    ttl = caps.ttl(f"day + INTERVAL {EVENT_RETENTION_DAYS} DAY")
    return [
        f"""
        CREATE TABLE IF NOT EXISTS {TABLE} (
            project String,
            day Date,
            user_hash UInt64,
            session_key UInt64,
            min_ts AggregateFunction(min, Int64),
            max_ts AggregateFunction(max, Int64),
            event_keys AggregateFunction(groupArray, UInt64),
            first_event AggregateFunction(argMin, Tuple({dimensions}), String)
        )
        ENGINE = AggregatingMergeTree()
        PARTITION BY day
        ORDER BY (project, day, user_hash, session_key)
        {ttl}
        """,
        f"""
        CREATE MATERIALIZED VIEW IF NOT EXISTS {TABLE}_mv TO {TABLE} AS
        {summary_select("1")}
        """,
        f"""
        CREATE TABLE IF NOT EXISTS {SESSIONLESS_DAYS} (project String, day Date)
        ENGINE = ReplacingMergeTree()
        ORDER BY (project, day)
        {ttl}
        """,
        f"""
        CREATE MATERIALIZED VIEW IF NOT EXISTS {SESSIONLESS_DAYS}_mv TO {SESSIONLESS_DAYS} AS
        {SESSIONLESS_SELECT}
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
    ch.execute(f"INSERT INTO {SESSIONLESS_DAYS} {SESSIONLESS_SELECT}")
