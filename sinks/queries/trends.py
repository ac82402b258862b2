"""Trends (SPEC §5.1 `POST /v1/insights/trends`): per series, a math over the events of
one type (or any), per interval of [from, to], optionally broken down by up to two
properties, from the raw `events` table.

Exactness: `events` may hold copies of an event (replays, retries) until merges, so
counts are distinct `EVENT_KEY`s, users distinct actors (both sinks/queries/actor.py),
and the property maths (sum … p99) read one row per event (a GROUP BY `EVENT_KEY`
subquery) before aggregating. Percentiles are `quantileExact`. A property math counts the
events whose property is a number; other events are left out.

Breakdown (sinks/queries/properties.py): the top `breakdown_limit` combinations by the
series' total over the range are listed one by one, the others as one `$other` group,
computed again as a group (its unique users counted once). Series are ordered by total,
highest first, `$other` last.

Points: one per interval of [from, to] (hour, day, ISO week by its Monday, month by its
1st; a week or month is clipped to the range's days), zeros included; `total` is the math
over the whole range, not a sum of points. Every query names its days, project and
values through parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final, Literal, TypedDict, get_args

from sinks.clickhouse import ClickHouse
from sinks.queries.actor import ACTOR, EVENT_KEY
from sinks.queries.properties import (
    OTHER,
    Filter,
    PropertyError,
    SqlParams,
    breakdown_sql,
    check_breakdown,
    check_filter,
    check_property,
    filter_sql,
    grouped_breakdown_sql,
    property_sql,
)

Interval = Literal["hour", "day", "week", "month"]
INTERVALS: Final[tuple[str, ...]] = get_args(Interval)
Math = Literal[
    "total",
    "unique_users",
    "per_user_avg",
    "sum",
    "avg",
    "min",
    "max",
    "median",
    "p90",
    "p95",
    "p99",
]
MATHS: Final[tuple[str, ...]] = get_args(Math)
# The aggregate function of each property math and its parameters.
_PROPERTY_MATH: Final[dict[str, tuple[str, str]]] = {
    "sum": ("sum", ""),
    "avg": ("avg", ""),
    "min": ("min", ""),
    "max": ("max", ""),
    "median": ("quantileExact", "(0.5)"),
    "p90": ("quantileExact", "(0.9)"),
    "p95": ("quantileExact", "(0.95)"),
    "p99": ("quantileExact", "(0.99)"),
}
_BUCKETS: Final[dict[str, str]] = {
    "hour": "toUInt32(toStartOfHour(time))",
    "day": "toString(day)",
    "week": "toString(toMonday(day))",
    "month": "toString(toStartOfMonth(day))",
}
MAX_HOURLY_DAYS: Final = 31


@dataclass(frozen=True, slots=True)
class Series:
    event: str | None
    math: str = "total"
    property: str | None = None
    filters: Sequence[Filter] = ()


@dataclass(frozen=True, slots=True)
class TrendsQuery:
    day_from: date
    day_to: date
    interval: str
    series: Sequence[Series]
    filters: Sequence[Filter] = ()
    breakdown: Sequence[str] = ()
    breakdown_limit: int | None = None


class Point(TypedDict):
    t: str
    value: float


class SeriesResult(TypedDict):
    index: int
    event: str | None
    math: str
    breakdown: dict[str, str] | None
    points: list[Point]
    total: float


def check_trends(query: TrendsQuery) -> tuple[list[str], int]:
    """Refuses (PropertyError) what the language does not have, before any SQL; returns
    the breakdown properties and limit."""
    if query.day_from > query.day_to:
        raise PropertyError(f"from ({query.day_from}) is after to ({query.day_to})")
    if query.interval not in INTERVALS:
        raise PropertyError(f"interval must be one of {', '.join(INTERVALS)}")
    if query.interval == "hour" and (query.day_to - query.day_from).days >= MAX_HOURLY_DAYS:
        raise PropertyError(f"interval=hour covers at most {MAX_HOURLY_DAYS} days")
    if not 1 <= len(query.series) <= 10:
        raise PropertyError("give 1 to 10 series")
    for item in query.filters:
        check_filter(item)
    for series in query.series:
        if series.math not in MATHS:
            raise PropertyError(f"math must be one of {', '.join(MATHS)}")
        if series.math in _PROPERTY_MATH:
            if series.property is None:
                raise PropertyError(f"math {series.math} needs a numeric property")
            check_property(series.property)
        elif series.property is not None:
            raise PropertyError(f"math {series.math} takes no property")
        for item in series.filters:
            check_filter(item)
    return check_breakdown(query.breakdown, query.breakdown_limit)


def buckets(interval: str, day_from: date, day_to: date) -> list[str]:
    """Every bucket of [day_from, day_to] as the query's `t` keys, in order."""
    if interval == "hour":
        start = int(datetime(day_from.year, day_from.month, day_from.day, tzinfo=UTC).timestamp())
        hours = ((day_to - day_from).days + 1) * 24
        return [str(start + 3600 * n) for n in range(hours)]
    keys: list[str] = []
    day = day_from
    while day <= day_to:
        if interval == "day":
            key = day
        elif interval == "week":
            key = day - timedelta(days=day.weekday())
        else:
            key = day.replace(day=1)
        if not keys or keys[-1] != key.isoformat():
            keys.append(key.isoformat())
        day += timedelta(days=1)
    return keys


def shown_bucket(interval: str, key: str) -> str:
    if interval != "hour":
        return key
    return datetime.fromtimestamp(int(key), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def trends(ch: ClickHouse, project: str, query: TrendsQuery) -> list[SeriesResult]:
    """The series of `query`. Raises PropertyError (a ValueError) for a query the language
    does not have, ClickHouseError when a query fails."""
    properties, limit = check_trends(query)
    results: list[SeriesResult] = []
    for index, series in enumerate(query.series):
        results.extend(_one_series(ch, project, query, index, series, properties, limit))
    return results


def _one_series(
    ch: ClickHouse,
    project: str,
    query: TrendsQuery,
    index: int,
    series: Series,
    properties: list[str],
    limit: int,
) -> list[SeriesResult]:
    params = SqlParams("t")
    where = _where(project, query, series, params)
    keys = buckets(query.interval, query.day_from, query.day_to)
    raw = breakdown_sql(properties, params)
    groups = _aggregate(ch, series, where, raw, params, query.interval)
    if not properties:
        points, total = groups[()]
        return [_result(index, series, None, keys, points, total, query)]
    if len(groups) > limit:  # fold the rest into $other, its total computed as a group
        ranked = sorted(groups.items(), key=lambda item: (-item[1][1], item[0]))
        kept = [combination for combination, _ in ranked[:limit]]
        groups = _aggregate(
            ch, series, where, grouped_breakdown_sql(raw, kept, params), params, query.interval
        )
    order = sorted(groups, key=lambda c: (c == (OTHER,) * len(properties), -groups[c][1], c))
    return [
        _result(
            index,
            series,
            dict(zip(properties, combination, strict=True)),
            keys,
            *groups[combination],
            query,
        )
        for combination in order
    ]


def _where(project: str, query: TrendsQuery, series: Series, params: SqlParams) -> str:
    conditions = [
        f"project = {params(project)}",
        f"day >= toDate({params(query.day_from)})",
        f"day <= toDate({params(query.day_to)})",
    ]
    if series.event is not None:
        conditions.append(f"type = {params(series.event)}")
    conditions.append(filter_sql([*query.filters, *series.filters], params))
    if series.property is not None and series.math in _PROPERTY_MATH:
        conditions.append(property_sql(series.property, params).is_number)
    return " AND ".join(conditions)


def _math_sql(series: Series) -> tuple[str, str, str]:
    """(what the scan keeps per bucket and combination, a bucket's value from it, the
    range's value from every bucket's): event counts add up over buckets (an event and
    its copies share one), distinct users and property maths merge their states."""
    if series.math == "total":
        return f"uniqExact({EVENT_KEY}) AS n", "n", "sum(n)"
    if series.math == "unique_users":
        return f"uniqExactState({ACTOR}) AS s", "finalizeAggregation(s)", "uniqExactMerge(s)"
    if series.math == "per_user_avg":
        return (
            f"uniqExact({EVENT_KEY}) AS n, uniqExactState({ACTOR}) AS s",
            "n / finalizeAggregation(s)",
            "sum(n) / uniqExactMerge(s)",
        )
    function, parameters = _PROPERTY_MATH[series.math]
    return f"{function}State{parameters}(v) AS s", "finalizeAggregation(s)", (
        f"{function}Merge{parameters}(s)"
    )


def _aggregate(
    ch: ClickHouse,
    series: Series,
    where: str,
    breakdown: Sequence[str],
    params: SqlParams,
    interval: str,
) -> dict[tuple[str, ...], tuple[dict[str, float], float]]:
    """Per combination of breakdown values (just `()` without a breakdown): the math per
    bucket and over the whole range, from one scan of `events`."""
    bucket = _BUCKETS[interval]
    names = [f"b{n}" for n in range(len(breakdown))]
    selected = "".join(
        f", {expression} AS {name}" for expression, name in zip(breakdown, names, strict=True)
    )
    group = ", ".join(["t", *names])
    kept, point, total = _math_sql(series)
    if series.property is None:
        scan = f"SELECT {bucket} AS t{selected}, {kept} FROM events WHERE {where} GROUP BY {group}"
    else:
        value = property_sql(series.property, params).number
        inner = ", ".join(
            [
                f"any({bucket}) AS t",
                *(f"any({e}) AS {n}" for e, n in zip(breakdown, names, strict=True)),
                f"any({value}) AS v",
            ]
        )
        scan = (
            f"SELECT {group}, {kept} FROM "
            f"(SELECT {inner} FROM events WHERE {where} GROUP BY {EVENT_KEY}) GROUP BY {group}"
        )
    by = f" GROUP BY {', '.join(names)}" if names else ""
    rows = ch.execute(
        f"SELECT {''.join(f'{name}, ' for name in names)}groupArray(t), groupArray({point}), "
        f"{total} FROM ({scan}){by}",
        params.values,
    )
    return {
        tuple(str(part) for part in row[:-3]): (
            {str(t): _number(value) for t, value in zip(row[-3], row[-2], strict=True)},
            _number(row[-1]),
        )
        for row in rows
    }


def _number(value: Any) -> float:
    number = float(value) if value is not None else 0.0
    return number if number == number else 0.0  # NaN (0/0) reads as 0


def _result(
    index: int,
    series: Series,
    breakdown: dict[str, str] | None,
    keys: list[str],
    value_of: dict[str, float],
    total: float,
    query: TrendsQuery,
) -> SeriesResult:
    return {
        "index": index,
        "event": series.event,
        "math": series.math,
        "breakdown": breakdown,
        "points": [
            {"t": shown_bucket(query.interval, key), "value": value_of.get(key, 0.0)}
            for key in keys
        ],
        "total": total,
    }
