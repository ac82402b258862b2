"""Sessions (SPEC §4 "Sessions", §5.1 `POST /v1/insights/sessions`).

A session is the events of one (actor, `session_id`), or, for an actor's events without
one, a run of events with less than 30 minutes between neighbours. It belongs to the UTC
day of its first event (earliest time, then smallest event_id) and takes its properties
from that event: filters keep the sessions whose first event matches them, breakdowns
group by its values (top `breakdown_limit` combinations by sessions over the range, the
rest as `$other`). duration = last time - first time; a bounce is a session of one event.
Copies of an event count once (sessions count distinct event ids).

Which events are read: those of the range's days and one day on each side, so a session
that starts before `from` is recognized as such and one that starts on `to` keeps its
later events. A session longer than a day at the edges of the range is cut there.

Per day and breakdown group: sessions, distinct actors, average and median duration in
seconds (`quantileExact`), events per session, bounce rate (bounces / sessions).

Where from: sessions with an id come from the per-day session summary that migration 0011
builds at ingest when every filter and breakdown names a standard dimension of the first
event it keeps (`FIRST_EVENT_DIMENSIONS`: not `session_id`, no `props.*`), and from the
raw `events` otherwise; sessions without an id always come from the raw events (their
30-minute gaps need the whole timeline). Both give the same answer: the summary merges a
session's days over the same read window.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta
from typing import Any, Final, TypedDict

from sinks.clickhouse import ClickHouse
from sinks.migrations.v0011_session_summary import (
    FIRST_EVENT_DIMENSIONS,
    SESSIONLESS_DAYS,
)
from sinks.migrations.v0011_session_summary import TABLE as SUMMARY_TABLE
from sinks.queries.actor import ACTOR, EVENT_KEY, first_order
from sinks.queries.properties import (
    OTHER,
    Filter,
    Slice,
    SqlParams,
    breakdown_sql,
    filter_sql,
    top_grouped,
)

SESSION_GAP_MS: Final = 30 * 60 * 1000


class SessionsRow(TypedDict):
    day: str
    breakdown: dict[str, str] | None
    sessions: int
    users: int
    duration_s_avg: float
    duration_s_median: float
    events_per_session: float
    bounce_rate: float


def _sessions_sql(
    project: str,
    day_from: date,
    day_to: date,
    filters: Sequence[Filter],
    breakdown: Sequence[str],
    sessionless: Sequence[str],
    params: SqlParams,
) -> str:
    """One row per session starting in [day_from, day_to] whose first event matches:
    (day, actor, b0.., duration_ms, events). `sessionless`: the days read that hold events
    without a session id ("YYYY-MM-DD")."""
    dims = breakdown_sql(breakdown, params)
    names = [f"b{n}" for n in range(len(dims))]
    # Raw events, one row per stored copy of an event: the dimensions a session may take
    # from it and whether it matches. Copies are not merged first (a GROUP BY event_id
    # over the range outgrows 18.16's memory limit): they change no time, and sessions
    # count their distinct event keys, from an array per session (cheaper than a hash set
    # per session). Sessions group by a 64-bit hash of their id, cheaper than the string:
    # like EVENT_KEY, two ids of one actor would have to share a hash to be merged. The
    # figures: benchmarks/README.md, "Insights made cheaper".
    carried = ", ".join(
        [f"{expression} AS {name}" for expression, name in zip(dims, names, strict=True)]
        + [f"{filter_sql(filters, params)} AS matches"]
    )
    row = f"tuple({', '.join(['matches', *names]) if names else 'matches'})"
    takes_first = bool(filters or names)

    def first(values: str, order: str) -> str:
        """The first event's row; a constant when nothing is taken from it (no filter, no
        breakdown), since the argMin is most of the query's CPU."""
        return f"argMin({values}, {order})" if takes_first else "tuple(toUInt8(1))"

    read_from = f"toDate({params(day_from - timedelta(days=1))})"
    read_to = f"toDate({params(day_to + timedelta(days=1))})"
    summarized = {f.property for f in filters} | set(breakdown) <= set(FIRST_EVENT_DIMENSIONS)

    def events(days: str, with_id: bool) -> str:
        return f"""
            SELECT event_id, {ACTOR} AS actor, session_id, ts, {carried}
            FROM events
            WHERE project = {params(project)} AND {days}
              AND session_id {"!=" if with_id else "="} ''
        """

    if summarized:
        # The same sessions from migration 0011's rows, one per day of a session: its days
        # merge into its earliest and latest time, its distinct event keys and its first
        # event (the copies of an event are one day's, so they merge as the raw rows do).
        merged = f"""
            SELECT any(user_hash) AS actor, minMerge(min_ts) AS first_ts,
                   maxMerge(max_ts) AS last_ts, arrayUniq(groupArrayMerge(event_keys)) AS n
                   {", argMinMerge(first_event) AS first_event" if takes_first else ""}
            FROM {SUMMARY_TABLE}
            WHERE project = {params(project)} AND day >= {read_from} AND day <= {read_to}
            GROUP BY session_key
        """
        taken = "tuple(toUInt8(1))"
        if takes_first:
            dimensions = ", ".join(
                f"first_event.{n + 1} AS {name}" for n, name in enumerate(FIRST_EVENT_DIMENSIONS)
            )
            merged = f"SELECT actor, first_ts, last_ts, n, {dimensions} FROM ({merged})"
            merged = f"SELECT actor, first_ts, last_ts, n, {carried} FROM ({merged})"
            taken = row
        with_id = f"SELECT actor, first_ts, last_ts, n, {taken} AS first FROM ({merged})"
    else:
        with_id = f"""
            SELECT actor, min(ts) AS first_ts, max(ts) AS last_ts,
                   arrayUniq(groupArray({EVENT_KEY})) AS n,
                   {first(row, first_order("ts", "event_id"))} AS first
            FROM ({events(f"day >= {read_from} AND day <= {read_to}", with_id=True)})
            GROUP BY actor, cityHash64(session_id)
        """
    # Without a session id: each actor's events in time order, cut where the gap between
    # neighbours reaches 30 minutes (the cumulative count of cuts numbers the sessions).
    ordered = f"""
        SELECT actor, arraySort(x -> x.1, groupArray(tuple(ts, event_id, {row}))) AS timeline,
               arrayCumSum(arrayMap(
                   d -> toUInt32(d >= {SESSION_GAP_MS}),
                   arrayDifference(arrayMap(x -> x.1, timeline)))) AS numbers
        FROM ({events(f"day IN {params(tuple(sessionless))}", with_id=False)})
        GROUP BY actor
    """
    without_id = f"""
        SELECT actor, min(item.1) AS first_ts, max(item.1) AS last_ts,
               arrayUniq(groupArray(cityHash64(item.2))) AS n,
               {first("item.3", first_order("item.1", "item.2"))} AS first
        FROM ({ordered}) ARRAY JOIN timeline AS item, numbers AS number
        GROUP BY actor, number
    """
    values = ", ".join(f"first.{n + 2} AS {name}" for n, name in enumerate(names))
    return f"""
        SELECT toDate(toDateTime(intDiv(first_ts, 1000), 'UTC')) AS day, actor,
               {values + ", " if values else ""}last_ts - first_ts AS duration_ms, n
        FROM ({f"{with_id} UNION ALL {without_id}" if sessionless else with_id})
        WHERE first.1 = 1
          AND day >= toDate({params(day_from)}) AND day <= toDate({params(day_to)})
    """


_MEASURES: Final = (
    "count() AS sessions, uniqExact(actor) AS users, avg(duration_ms) / 1000 AS duration_avg, "
    "quantileExact(0.5)(duration_ms) / 1000 AS duration_median, avg(n) AS per_session, "
    "countIf(n = 1) / count() AS bounce_rate"
)


def sessions(ch: ClickHouse, project: str, where: Slice) -> list[SessionsRow]:
    """Rows per day with sessions (and per breakdown group), by day then sessions.
    Raises ValueError (PropertyError) for a bad query, ClickHouseError when it fails."""
    properties, limit = where.checked()
    params = SqlParams("s")
    sessionless = [
        str(day)
        for (day,) in ch.execute(
            f"SELECT DISTINCT toString(day) FROM {SESSIONLESS_DAYS} WHERE project = %(project)s "
            "AND day >= toDate(%(from)s) AND day <= toDate(%(to)s)",
            {
                "project": project,
                "from": where.day_from - timedelta(days=1),
                "to": where.day_to + timedelta(days=1),
            },
        )
    ]
    source = _sessions_sql(
        project, where.day_from, where.day_to, where.filters, properties, sessionless, params
    )
    names = [f"b{n}" for n in range(len(properties))]
    grouped = top_grouped(ch, source, names, params, limit, "count()")
    selected = ", ".join(f"{e} AS g{n}" for n, e in enumerate(grouped))
    keys = ", ".join(["day", *(f"g{n}" for n in range(len(grouped)))])
    rows = ch.execute(
        f"SELECT day{', ' + selected if selected else ''}, {_MEASURES} "
        f"FROM ({source}) GROUP BY {keys}",
        params.values,
    )
    totals: dict[tuple[str, ...], int] = {}
    shaped: list[tuple[tuple[str, ...], SessionsRow]] = []
    for row in rows:
        values = tuple(str(v) for v in row[1 : 1 + len(grouped)])
        count, users, avg_s, median_s, per_session, bounce = row[1 + len(grouped) :]
        totals[values] = totals.get(values, 0) + int(count)
        shaped.append(
            (
                values,
                {
                    "day": str(row[0]),
                    "breakdown": dict(zip(properties, values, strict=True)) if properties else None,
                    "sessions": int(count),
                    "users": int(users),
                    "duration_s_avg": _float(avg_s),
                    "duration_s_median": _float(median_s),
                    "events_per_session": _float(per_session),
                    "bounce_rate": _float(bounce),
                },
            )
        )
    shaped.sort(
        key=lambda item: (
            item[1]["day"],
            bool(item[0]) and set(item[0]) == {OTHER},
            -totals[item[0]],
            item[0],
        )
    )
    return [row for _, row in shaped]


def _float(value: Any) -> float:
    return float(value) if value is not None else 0.0
