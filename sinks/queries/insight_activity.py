"""Active users and retention with filters and breakdowns (SPEC §5.1
`POST /v1/insights/active-users`, `/v1/insights/retention`), from the raw `events`. The
unfiltered fixed endpoints keep reading the pre-aggregated activity tables
(sinks/queries/activity.py); these read events because any property may slice them.

Active users: an actor is active on day D when it has a matching event on D; DAU(D),
WAU(D) over [D-6, D], MAU(D) over [D-29, D]. With a breakdown an actor counts in every
group it had a matching event in (the group of each event); the top `breakdown_limit`
groups by actors over [from, to] are listed one by one, the rest as `$other` (exact).
Every day of [from, to] is listed for every group, zeros included.

Retention: an actor's cohort is the period (UTC day, or ISO week by its Monday) of its
first-ever matching start event (any event when `start_event` is null; every filter
holds), if that event is on a day of [from, to]; `retained[0]` = cohort size,
`retained[k]` = cohort actors with a matching return event in period C+k, for every
period started by `today`. The breakdown takes the values of that first start event
(ties in time: the smallest event_id).
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any, Final, TypedDict

from sinks.clickhouse import ClickHouse
from sinks.queries.actor import ACTOR, first_order
from sinks.queries.properties import (
    OTHER,
    Slice,
    SqlParams,
    breakdown_sql,
    filter_sql,
    top_grouped,
)

MAU_DAYS: Final = 30
WAU_DAYS: Final = 7


class ActiveRow(TypedDict):
    day: str
    breakdown: dict[str, str] | None
    dau: int
    wau: int
    mau: int


class CohortRow(TypedDict):
    cohort: str
    breakdown: dict[str, str] | None
    size: int
    retained: list[int]


def _order(
    rows: list[tuple[tuple[str, ...], Any]], totals: dict[tuple[str, ...], int], first: str
) -> list[Any]:
    """By `first` (day or cohort), then groups by total, `$other` last."""
    rows.sort(
        key=lambda item: (
            item[1][first],
            bool(item[0]) and set(item[0]) == {OTHER},
            -totals.get(item[0], 0),
            item[0],
        )
    )
    return [row for _, row in rows]


def active_users(ch: ClickHouse, project: str, where: Slice) -> list[ActiveRow]:
    properties, limit = where.checked()
    day_from, day_to, filters = where.day_from, where.day_to, where.filters
    params = SqlParams("a")
    names = [f"b{n}" for n in range(len(properties))]
    selected = "".join(
        f", {expression} AS {name}"
        for expression, name in zip(breakdown_sql(properties, params), names, strict=True)
    )
    matching = (
        f"project = {params(project)} AND {filter_sql(filters, params)} "
        f"AND day <= toDate({params(day_to)})"
    )
    # One row per (actor, day, group) with a matching event.
    start = day_from - timedelta(days=MAU_DAYS - 1)
    days = (
        f"SELECT DISTINCT {ACTOR} AS actor, day{selected} FROM events "
        f"WHERE {matching} AND day >= toDate({params(start)})"
    )
    in_range = f"SELECT * FROM ({days}) WHERE day >= toDate({params(day_from)})"
    grouped = top_grouped(ch, in_range, names, params, limit, "uniqExact(actor)")
    group_columns = "".join(f", {expression} AS g{n}" for n, expression in enumerate(grouped))
    group_keys = "".join(f", g{n}" for n in range(len(grouped)))
    rows = ch.execute(
        f"""
        SELECT toString(day + offset) AS target{group_columns},
               uniqExactIf(actor, offset = 0), uniqExactIf(actor, offset < {WAU_DAYS}),
               uniqExact(actor)
        FROM ({days}) ARRAY JOIN range({MAU_DAYS}) AS offset
        WHERE day + offset >= toDate({params(day_from)})
          AND day + offset <= toDate({params(day_to)})
        GROUP BY target{group_keys}
        """,
        params.values,
    )
    found = {
        (str(row[0]), tuple(str(v) for v in row[1 : 1 + len(grouped)])): row[1 + len(grouped) :]
        for row in rows
    }
    totals: dict[tuple[str, ...], int] = {}
    if names:
        group_list = ", ".join(f"g{n}" for n in range(len(grouped)))
        for row in ch.execute(
            f"SELECT {group_list}, uniqExact(actor) FROM "
            f"(SELECT actor{group_columns} FROM ({in_range})) GROUP BY {group_list}",
            params.values,
        ):
            totals[tuple(str(v) for v in row[:-1])] = int(row[-1])
    groups = list(totals) if names else [()]
    result: list[tuple[tuple[str, ...], ActiveRow]] = []
    span = (day_to - day_from).days + 1
    for group in groups:
        for n in range(span):
            day = (day_from + timedelta(days=n)).isoformat()
            dau, wau, mau = found.get((day, group), (0, 0, 0))
            result.append(
                (
                    group,
                    {
                        "day": day,
                        "breakdown": dict(zip(properties, group, strict=True)) if names else None,
                        "dau": int(dau),
                        "wau": int(wau),
                        "mau": int(mau),
                    },
                )
            )
    return _order(result, totals, "day")


def retention(
    ch: ClickHouse,
    project: str,
    where: Slice,
    period: str,
    today: date,
    start_event: str | None = None,
    return_event: str | None = None,
) -> list[CohortRow]:
    properties, limit = where.checked()
    day_from, day_to, filters = where.day_from, where.day_to, where.filters
    if period not in ("day", "week"):
        raise ValueError("period must be day or week")
    step = 7 if period == "week" else 1
    period_of = "toMonday(day)" if period == "week" else "day"
    # Only rows that can matter are read: start events up to `to` (a later one is never
    # the first of a cohort in range) and return events from the first cohort's period on
    # (earlier ones fall before every cohort). With events named, the type narrows the
    # scan to their granules (events is sorted by type).
    first_period = day_from - timedelta(days=day_from.weekday()) if period == "week" else day_from
    params = SqlParams("r")
    matches = filter_sql(filters, params)
    is_start = matches + (f" AND type = {params(start_event)}" if start_event else "")
    is_return = matches + (f" AND type = {params(return_event)}" if return_event else "")
    names = [f"b{n}" for n in range(len(properties))]
    values = breakdown_sql(properties, params)
    first_values = f"tuple({', '.join(values)})" if values else "tuple(0)"
    actors = f"""
        SELECT actor, first_ts, firsts,
               toDate(toDateTime(intDiv(first_ts, 1000), 'UTC')) AS first_day, returns
        FROM (
            SELECT {ACTOR} AS actor,
                   minIf(ts, {is_start}) AS first_ts,
                   argMinIf({first_values}, {first_order('ts', 'event_id')}, {is_start}) AS firsts,
                   groupUniqArrayIf({period_of}, {is_return}) AS returns,
                   countIf({is_start}) AS starts
            FROM events
            WHERE project = {params(project)} AND (
                ({is_start} AND day <= toDate({params(day_to)}))
                OR ({is_return} AND day >= toDate({params(first_period)})))
            GROUP BY actor
        )
        WHERE starts > 0 AND first_day >= toDate({params(day_from)})
          AND first_day <= toDate({params(day_to)})
    """
    cohort_of = "toMonday(first_day)" if period == "week" else "first_day"
    unpacked = "".join(f", firsts.{n + 1} AS {name}" for n, name in enumerate(names))
    cohorts = f"SELECT actor, {cohort_of} AS cohort, returns{unpacked} FROM ({actors})"
    grouped = top_grouped(ch, cohorts, names, params, limit, "count()")
    group_columns = "".join(f", {expression} AS g{n}" for n, expression in enumerate(grouped))
    group_keys = "".join(f", g{n}" for n in range(len(grouped)))
    rows = ch.execute(
        f"""
        SELECT toString(cohort) AS c{group_columns}, k, uniqExact(actor)
        FROM (
            SELECT actor, cohort{"".join(f", {name}" for name in names)},
                   arrayJoin(arrayConcat([0], arrayFilter(x -> x > 0, arrayMap(
                       d -> intDiv(toInt32(d) - toInt32(cohort), {step}), returns)))) AS k
            FROM ({cohorts})
        )
        GROUP BY c{group_keys}, k
        """,
        params.values,
    )
    counts: dict[tuple[str, tuple[str, ...]], dict[int, int]] = {}
    for row in rows:
        key = (str(row[0]), tuple(str(v) for v in row[1 : 1 + len(grouped)]))
        counts.setdefault(key, {})[int(row[-2])] = int(row[-1])
    current = today - timedelta(days=today.weekday()) if period == "week" else today
    totals: dict[tuple[str, ...], int] = {}
    for (_, group), by_offset in counts.items():
        totals[group] = totals.get(group, 0) + by_offset.get(0, 0)
    result: list[tuple[tuple[str, ...], CohortRow]] = []
    for (cohort, group), by_offset in counts.items():
        started = (current - date.fromisoformat(cohort)).days // step + 1
        retained = [by_offset.get(k, 0) for k in range(max(started, 1))]
        result.append(
            (
                group,
                {
                    "cohort": cohort,
                    "breakdown": dict(zip(properties, group, strict=True)) if names else None,
                    "size": retained[0],
                    "retained": retained,
                },
            )
        )
    return _order(result, totals, "cohort")
