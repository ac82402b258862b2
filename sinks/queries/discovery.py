"""Schema discovery (SPEC §5.1 `GET /v1/schema/events`, `/v1/schema/properties`): what a
query builder offers — the event types of a range, and the properties of their events
with a type and the most frequent string values.

Counts are distinct events (`EVENT_KEY`, sinks/queries/actor.py: copies of an event
count once) and distinct actors. Events are counted per day, then summed: an event and
its copies share a day, and a day's sets of event keys are ~30 times smaller than the
range's (cheaper to build, and within the CPU caches). A property's type: `number` when
any event holds it as a number, else `bool` when every value is true/false, else
`string`; standard dimensions are strings and count only where set (non-empty).
`top_values` (10, by events) are given for string properties only.

Both are read from per-day summaries for the days whose writes have settled
(sinks/queries/summaries.py, migration 0012; stored by the first question that needs
them), so a repeated question over closed days reads summary rows instead of every
event; the days with recent writes are counted from the events on each call, by the same
per-day aggregations the summaries store. A property's values are all kept per day (not a
top few), so the range's top values are sums of exact day counts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Final, TypedDict

from sinks.clickhouse import ClickHouse
from sinks.migrations.v0012_discovery_summary import (
    EVENT_DAYS_TABLE,
    PROPERTY_DAYS_TABLE,
    VALUE_DAYS_TABLE,
)
from sinks.queries.actor import ACTOR, EVENT_KEY
from sinks.queries.properties import PROPS_PREFIX, STANDARD, SqlParams
from sinks.queries.summaries import (
    EVENTS_KIND,
    DayPlan,
    day_plan,
    new_computations,
    record_summaries,
)

TOP_VALUES: Final = 10


class EventType(TypedDict):
    type: str
    count: int
    users: int
    last_seen: str


class ValueCount(TypedDict):
    value: str
    count: int


class PropertyInfo(TypedDict):
    property: str
    type: str
    count: int
    top_values: list[ValueCount]


def _check_range(day_from: date, day_to: date) -> None:
    if day_from > day_to:
        raise ValueError(f"from ({day_from}) is after to ({day_to})")


def event_types(ch: ClickHouse, project: str, day_from: date, day_to: date) -> list[EventType]:
    """Every event type of [day_from, day_to], most events first."""
    _check_range(day_from, day_to)
    plan = _summarized(
        ch, project, EVENTS_KIND, day_from, day_to,
        lambda stored: ch.execute(
            f"""
            INSERT INTO {EVENT_DAYS_TABLE}
                (project, day, computation, type, events, actors, last_ts)
            SELECT {stored.params(project)}, day, {stored.computation}, type,
                   events, actors, last_ts
            FROM ({_type_groups(stored.days)})
            """,
            stored.params.values,
        ),
    )  # fmt: skip
    params = SqlParams("d")
    parts = []
    if plan.summarized:
        parts.append(
            "SELECT type, events, actors, last_ts "
            f"FROM {EVENT_DAYS_TABLE} WHERE {_summary_rows(project, plan, params)}"
        )
    if plan.live:
        parts.append(
            "SELECT type, events, actors, last_ts "
            f"FROM ({_type_groups(_days(project, plan.live, params))})"
        )
    rows = ch.execute(
        f"""
        SELECT type, sum(events) AS total, uniqExactMerge(actors), max(last_ts)
        FROM ({" UNION ALL ".join(parts)})
        GROUP BY type ORDER BY total DESC, type
        """,
        params.values,
    )
    return [
        {
            "type": str(kind),
            "count": int(count),
            "users": int(users),
            "last_seen": datetime.fromtimestamp(int(last) / 1000, UTC).strftime(
                "%Y-%m-%dT%H:%M:%S.%f"
            )[:-3]
            + "Z",
        }
        for kind, count, users, last in rows
    ]


def _type_groups(where: str) -> str:
    """Per day and type of the events matching `where`: the distinct events, the actors'
    set and the latest time."""
    return f"""
        SELECT day, type, uniqExact({EVENT_KEY}) AS events, uniqExactState({ACTOR}) AS actors,
               max(ts) AS last_ts
        FROM events WHERE {where}
        GROUP BY day, type
    """


@dataclass(frozen=True, slots=True)
class _Stored:
    """What a summary's INSERT … SELECT needs: the events of the days to store
    (`days`, a condition) and each day's computation id (`computation`, an expression of
    `day`), under `params`."""

    days: str
    computation: str
    params: SqlParams


def _summarized(
    ch: ClickHouse,
    project: str,
    kind: str,
    day_from: date,
    day_to: date,
    store: Callable[[_Stored], object],
) -> DayPlan:
    """The plan of [day_from, day_to] for summaries of `kind`, after storing (with
    `store`, then their markers) the settled days that had none."""
    plan = day_plan(ch, project, kind, day_from, day_to)
    if plan.to_store:
        computations = new_computations(plan.to_store)
        params = SqlParams("s")
        days = [day.isoformat() for day in computations]
        computation = (
            f"transform(toString(day), {params(days)}, "
            f"CAST({params(list(computations.values()))} AS Array(UInt64)), toUInt64(0))"
        )
        store(_Stored(_days(project, list(computations), params), computation, params))
        record_summaries(ch, project, kind, plan.to_store, computations)
        plan.summarized.update(computations)
    return plan


def _days(project: str, days: list[date], params: SqlParams) -> str:
    return f"project = {params(project)} AND day IN {params(tuple(days))}"


def _summary_rows(project: str, plan: DayPlan, params: SqlParams) -> str:
    """The rows of a summary table that `plan` reads."""
    return (
        f"{_days(project, list(plan.summarized), params)} "
        f"AND computation IN {params(tuple(plan.summarized.values()))}"
    )


# Every property of a row as (name, text, props key): the standard dimensions that are
# set (key ''), then the props' leaves under their `props.` names. Whether a leaf is a
# number is `has(props_num_keys, key)` once the array is joined (18.16's lambdas cannot
# read other columns).
_STANDARD_TRIPLES: Final = ", ".join(f"tuple({name!r}, {name}, '')" for name in STANDARD)
_TRIPLES: Final = (
    f"arrayConcat(arrayFilter(p -> p.2 != '', [{_STANDARD_TRIPLES}]),"
    f" arrayMap((k, v) -> tuple(concat('{PROPS_PREFIX}', k), v, k), props_keys, props_values))"
)


def _property_groups(where: str) -> str:
    """Per day and property of the events matching `where`: the distinct events holding
    it, whether all its values are true/false, whether any holds it as a number."""
    return f"""
        SELECT day, pair.1 AS property, uniqExact({EVENT_KEY}) AS events,
               min(pair.2 IN ('true', 'false')) AS boolean,
               max(has(props_num_keys, pair.3)) AS numeric
        FROM events ARRAY JOIN {_TRIPLES} AS pair
        WHERE {where}
        GROUP BY day, property
    """


def _value_groups(where: str) -> str:
    """Per day, property and value of the events matching `where` (values held as
    numbers left out): the distinct events holding it."""
    return f"""
        SELECT day, pair.1 AS property, pair.2 AS value, uniqExact({EVENT_KEY}) AS events
        FROM events ARRAY JOIN {_TRIPLES} AS pair
        WHERE {where} AND NOT has(props_num_keys, pair.3)
        GROUP BY day, property, value
    """


def properties(
    ch: ClickHouse, project: str, day_from: date, day_to: date, event: str | None
) -> list[PropertyInfo]:
    """The properties of the events of [day_from, day_to] (of type `event` when given),
    most events first, with their type and top string values."""
    _check_range(day_from, day_to)
    scope = "all" if event is None else f"type:{event}"

    def of_scope(days: str, params: SqlParams) -> str:
        return days if event is None else f"{days} AND type = {params(event)}"

    def store(stored: _Stored) -> None:
        where = of_scope(stored.days, stored.params)
        scope_sql = stored.params(scope)
        ch.execute(
            f"""
            INSERT INTO {PROPERTY_DAYS_TABLE}
                (project, scope, day, computation, property, events, boolean, numeric)
            SELECT {stored.params(project)}, {scope_sql}, day, {stored.computation},
                   property, events, boolean, numeric
            FROM ({_property_groups(where)})
            """,
            stored.params.values,
        )
        ch.execute(
            f"""
            INSERT INTO {VALUE_DAYS_TABLE}
                (project, scope, day, computation, property, value, events)
            SELECT {stored.params(project)}, {scope_sql}, day, {stored.computation},
                   property, value, events
            FROM ({_value_groups(where)})
            """,
            stored.params.values,
        )

    plan = _summarized(ch, project, f"properties {scope}", day_from, day_to, store)
    params = SqlParams("d")

    def union(table: str, columns: str, raw: Callable[[str], str], condition: str) -> str:
        parts = []
        if plan.summarized:
            parts.append(
                f"SELECT {columns} FROM {table} WHERE {_summary_rows(project, plan, params)} "
                f"AND scope = {params(scope)}{condition}"
            )
        if plan.live:
            where = of_scope(_days(project, plan.live, params), params)
            parts.append(f"SELECT {columns} FROM ({raw(where)}) WHERE 1{condition}")
        return " UNION ALL ".join(parts)

    rows = ch.execute(
        f"""
        SELECT property, sum(events) AS total, min(boolean), max(numeric)
        FROM ({union(PROPERTY_DAYS_TABLE, "property, events, boolean, numeric",
                     _property_groups, "")})
        GROUP BY property ORDER BY total DESC, property
        """,
        params.values,
    )  # fmt: skip
    found: list[PropertyInfo] = []
    for name, count, boolean, numeric in rows:
        kind = "number" if int(numeric) else "bool" if int(boolean) else "string"
        found.append({"property": str(name), "type": kind, "count": int(count), "top_values": []})
    strings = [info["property"] for info in found if info["type"] == "string"]
    if strings:
        listed = f" AND property IN {params(tuple(strings))}"
        tops = ch.execute(
            f"""
            SELECT property, value, sum(events) AS total
            FROM ({union(VALUE_DAYS_TABLE, "property, value, events", _value_groups, listed)})
            GROUP BY property, value ORDER BY property, total DESC, value
            LIMIT {TOP_VALUES} BY property
            """,
            params.values,
        )
        by_name = {info["property"]: info for info in found}
        for name, value, count in tops:
            by_name[str(name)]["top_values"].append({"value": str(value), "count": int(count)})
    return found
