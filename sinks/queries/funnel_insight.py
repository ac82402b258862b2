"""Ad-hoc funnels with filters, a breakdown and time to convert (SPEC §4 "Funnel", "Time to
convert", §5.1 `POST /v1/funnels/query`), over the raw `events`.

Per actor, the times of the events matching each step (step 1 only on a day of [from,
to]; every filter holds for every step) are sorted arrays a1..an. Each step-1 time t1 is
an attempt; its chain takes, step after step, the earliest matching time at or after the
previous one (`arrayFirst`), so one event may serve consecutive steps and equal times
chain in step order, as windowFunnel does. The greedy chain gives each step its earliest
possible time for that t1, so:
- an actor reaches step k when some attempt's chain has tk - t1 <= window (the same
  answer as windowFunnel's, sinks/queries/funnels.py);
- its time to convert to step k is the shortest tk - t1 over those attempts.
`users[k]` counts actors whose furthest step is >= k; per step k >= 2, the median
(`quantileExact`, the upper middle for an even count) and the mean of the actors' times
to convert, in seconds (null for step 1 and for a step nobody reached).

Breakdown (one property): the value on the actor's earliest step-1 event in the range
(ties: smallest event_id); the top `breakdown_limit` values by step-1 actors are listed
one by one, the rest as `$other`.

Copies of an event add equal times, which change no chain. 18.16 lambdas cannot read
columns, so the arrays a lambda needs are handed to it as arguments (`arrayResize` repeats
a step's array once per attempt): memory grows with (step-1 events x step-k events) of
one actor, which is small for real funnels.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any, Final, TypedDict

from schemas.funnels import DAY_MS, FunnelStep, check_funnel
from sinks.clickhouse import ClickHouse
from sinks.queries.actor import ACTOR, first_order
from sinks.queries.funnels import day_of_ms, day_start_ms, step_condition, step_prefilter
from sinks.queries.properties import (
    OTHER,
    Filter,
    PropertyError,
    Slice,
    SqlParams,
    breakdown_sql,
    filter_sql,
    grouped_breakdown_sql,
)

MAX_FUNNEL_BREAKDOWN: Final = 1


class FunnelStepTimes(TypedDict):
    event: str
    users: int
    conversion_from_start: float
    conversion_from_previous: float
    median_time_to_convert_s: float | None
    avg_time_to_convert_s: float | None


class FunnelGroup(TypedDict):
    breakdown: dict[str, str] | None
    steps: list[FunnelStepTimes]


def check_funnel_insight(
    steps: list[FunnelStep], window_seconds: int, where: Slice
) -> tuple[list[str], int]:
    check_funnel(steps, window_seconds)
    properties, chosen = where.checked()
    if len(properties) > MAX_FUNNEL_BREAKDOWN:
        raise PropertyError("a funnel breaks down by one property")
    return properties, chosen


def _per_actor_sql(
    project: str,
    steps: list[FunnelStep],
    window_ms: int,
    day_from: date,
    day_to: date,
    filters: Sequence[Filter],
    breakdown: Sequence[str],
    params: SqlParams,
) -> str:
    """One row per actor with a step-1 event in range: (actor, b, times), times[k] = its
    shortest time to step k+1 in ms, -1 when not reached."""
    legacy: dict[str, Any] = {}
    conditions = [step_condition(step, index, legacy) for index, step in enumerate(steps)]
    prefilter = step_prefilter(steps, legacy)
    for name, value in legacy.items():  # the step matchers' own parameters
        params.values[name] = value
    in_range = f"e_day >= toDate({params(day_from)}) AND e_day <= toDate({params(day_to)})"
    arrays = [f"arraySort(groupArrayIf(e_ts, {in_range} AND {conditions[0]})) AS a1"]
    arrays += [
        f"arraySort(groupArrayIf(e_ts, {condition})) AS a{k}"
        for k, condition in enumerate(conditions[1:], start=2)
    ]
    values = breakdown_sql(breakdown, params)
    first_value = (
        f"argMinIf(b, {first_order('e_ts', 'event_id')}, {in_range} AND {conditions[0]}) AS b"
        if values
        else "'' AS b"
    )
    chains = ["a1 AS c1"]
    for k in range(2, len(steps) + 1):
        chains.append(
            f"arrayMap((previous, later) -> if(previous = 0, toInt64(0), "
            f"arrayFirst(x -> x >= previous, later)), c{k - 1}, "
            f"arrayResize([a{k}], length(a1), a{k})) AS c{k}"
        )
    shortest = [
        f"arrayFilter(d -> d >= 0, arrayMap((c, t) -> if(c = 0 OR c - t > {window_ms}, "
        f"toInt64(-1), c - t), c{k}, a1)) AS d{k}"
        for k in range(1, len(steps) + 1)
    ]
    times = ", ".join(
        f"if(empty(d{k}), toInt64(-1), arrayReduce('min', d{k}))" for k in range(1, len(steps) + 1)
    )
    scan_end = day_start_ms(day_to) + DAY_MS - 1 + window_ms
    return f"""
        SELECT actor, b, [{times}] AS times, {", ".join([*chains, *shortest])}
        FROM (
            SELECT uh AS actor, {", ".join(arrays)}, {first_value}
            FROM (
                SELECT {ACTOR} AS uh, ts AS e_ts, event_id, day AS e_day, type AS e_type,
                       props AS e_props{"".join(f", {value} AS b" for value in values)}
                FROM events
                WHERE project = {params(project)} AND type IN {params(_types(steps))}
                  AND ({prefilter}) AND {filter_sql(filters, params)}
                  AND day >= toDate({params(day_from)})
                  AND day <= toDate({params(day_of_ms(scan_end))})
                  AND ts >= {params(day_start_ms(day_from))} AND ts <= {params(scan_end)}
            )
            GROUP BY uh
            HAVING notEmpty(a1)
        )
    """


def funnel_insight_sql(
    project: str, steps: list[FunnelStep], window_seconds: int, where: Slice
) -> tuple[str, SqlParams]:
    """The per-actor query and its parameters (for EXPLAIN, logs and tests): one row per
    actor with a step-1 event in range, `times[k]` its shortest time to step k+1 in ms
    (-1: not reached). Raises ValueError (PropertyError) for a bad funnel or query."""
    properties, _ = check_funnel_insight(steps, window_seconds, where)
    params = SqlParams("f")
    sql = _per_actor_sql(
        project,
        steps,
        window_seconds * 1000,
        where.day_from,
        where.day_to,
        where.filters,
        properties,
        params,
    )
    return sql, params


def _types(steps: list[FunnelStep]) -> tuple[str, ...]:
    return tuple(sorted({step.event for step in steps}))


def funnel_insight(
    ch: ClickHouse, project: str, steps: list[FunnelStep], window_seconds: int, where: Slice
) -> list[FunnelGroup]:
    """One group (breakdown None) without a breakdown, else one per value, most step-1
    actors first, `$other` last. Raises ValueError (PropertyError) for a bad funnel or
    query, ClickHouseError when it fails."""
    properties, limit = check_funnel_insight(steps, window_seconds, where)
    source, params = funnel_insight_sql(project, steps, window_seconds, where)
    by_group = _reached(ch, source, params, "b")
    if len(by_group) > limit:  # fold the values past the top ones into $other, and count again
        ranked = sorted(by_group, key=lambda v: (-by_group[v].get(1, (0, 0.0, 0.0))[0], v))
        kept = [(value,) for value in ranked[:limit]]
        by_group = _reached(ch, source, params, grouped_breakdown_sql(["b"], kept, params)[0])
    if not properties:
        return [{"breakdown": None, "steps": _steps(steps, by_group.get("", {}))}]
    order = sorted(by_group, key=lambda v: (v == OTHER, -by_group[v].get(1, (0, 0.0, 0.0))[0], v))
    return [
        {"breakdown": {properties[0]: value}, "steps": _steps(steps, by_group[value])}
        for value in order
    ]


def _reached(
    ch: ClickHouse, source: str, params: SqlParams, group: str
) -> dict[str, dict[int, tuple[int, float, float]]]:
    """Per value of `group` (an expression of the per-actor rows' `b`) and step k: the
    actors reaching k, and the median and mean of their times to k in ms."""
    rows = ch.execute(
        f"""
        SELECT {group} AS g, k, count(), quantileExact(0.5)(d), avg(d)
        FROM ({source}) ARRAY JOIN times AS d, arrayEnumerate(times) AS k
        WHERE d >= 0
        GROUP BY g, k
        """,
        params.values,
    )
    by_group: dict[str, dict[int, tuple[int, float, float]]] = {}
    for value, k, users, median_ms, mean_ms in rows:
        by_group.setdefault(str(value), {})[int(k)] = (int(users), float(median_ms), float(mean_ms))
    return by_group


def _steps(
    steps: list[FunnelStep], reached: dict[int, tuple[int, float, float]]
) -> list[FunnelStepTimes]:
    results: list[FunnelStepTimes] = []
    first = previous = 0
    for k, step in enumerate(steps, start=1):
        users, median_ms, mean_ms = reached.get(k, (0, 0.0, 0.0))
        if k == 1:
            first = previous = users
        timed = k > 1 and users > 0
        results.append(
            {
                "event": step.event,
                "users": users,
                "conversion_from_start": users / first if first else 0.0,
                "conversion_from_previous": users / previous if previous else 0.0,
                "median_time_to_convert_s": median_ms / 1000 if timed else None,
                "avg_time_to_convert_s": mean_ms / 1000 if timed else None,
            }
        )
        previous = users
    return results
