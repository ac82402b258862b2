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

Event types are read from per-day summaries for the days whose writes have settled
(sinks/queries/summaries.py; stored by the first question that needs them), so a repeated
question over closed days reads a few rows per day instead of every event; the days with
recent writes are counted from the events on each call.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Final, TypedDict

from sinks.clickhouse import ClickHouse
from sinks.migrations.v0012_discovery_summary import EVENT_DAYS_TABLE
from sinks.queries.actor import ACTOR, EVENT_KEY
from sinks.queries.properties import PROPS_PREFIX, STANDARD, SqlParams
from sinks.queries.summaries import EVENTS_KIND, day_plan, new_computations, record_summaries

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


def _range(project: str, day_from: date, day_to: date, params: SqlParams) -> str:
    _check_range(day_from, day_to)
    return (
        f"project = {params(project)} AND day >= toDate({params(day_from)}) "
        f"AND day <= toDate({params(day_to)})"
    )


def event_types(ch: ClickHouse, project: str, day_from: date, day_to: date) -> list[EventType]:
    """Every event type of [day_from, day_to], most events first. Settled days are read
    from their stored summaries (sinks/queries/summaries.py), summarized first when they
    have none; days with recent writes are counted from the events."""
    _check_range(day_from, day_to)
    params = SqlParams("d")
    plan = day_plan(ch, project, EVENTS_KIND, day_from, day_to)
    if plan.to_store:
        computations = new_computations(plan.to_store)
        _store_event_days(ch, project, computations)
        record_summaries(ch, project, EVENTS_KIND, plan.to_store, computations)
        plan.summarized.update(computations)
    parts = []
    if plan.summarized:
        parts.append(
            f"SELECT type, events AS n, actors, last_ts AS last FROM {EVENT_DAYS_TABLE} "
            f"WHERE project = {params(project)} AND day IN {params(tuple(plan.summarized))} "
            f"AND computation IN {params(tuple(plan.summarized.values()))}"
        )
    if plan.live:
        parts.append(
            f"SELECT type, uniqExact({EVENT_KEY}) AS n, uniqExactState({ACTOR}) AS actors, "
            f"max(ts) AS last FROM events WHERE project = {params(project)} "
            f"AND day IN {params(tuple(plan.live))} GROUP BY day, type"
        )
    rows = ch.execute(
        f"""
        SELECT type, sum(n) AS total, uniqExactMerge(actors), max(last)
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


def _store_event_days(ch: ClickHouse, project: str, computations: dict[date, int]) -> None:
    """The summary rows of `computations`' days, counted from the events in one scan."""
    days = [day.isoformat() for day in computations]
    ch.execute(
        f"""
        INSERT INTO {EVENT_DAYS_TABLE} (project, day, computation, type, events, actors, last_ts)
        SELECT project, day,
               transform(toString(day), %(days)s, CAST(%(ids)s AS Array(UInt64)), toUInt64(0)),
               type, uniqExact({EVENT_KEY}), uniqExactState({ACTOR}), max(ts)
        FROM events WHERE project = %(project)s AND day IN %(day_set)s
        GROUP BY project, day, type
        """,
        {"project": project, "days": days, "ids": list(computations.values()),
         "day_set": tuple(days)},
    )  # fmt: skip


# Every property of a row as (name, text): the standard dimensions that are set, then the
# props' leaves under their `props.` names. (18.16's lambdas cannot read other columns,
# so which props are numbers is a query of its own.)
_STANDARD_PAIRS: Final = ", ".join(f"tuple({name!r}, {name})" for name in STANDARD)
_PAIRS: Final = (
    f"arrayConcat(arrayFilter(p -> p.2 != '', [{_STANDARD_PAIRS}]),"
    f" arrayMap((k, v) -> tuple(concat('{PROPS_PREFIX}', k), v), props_keys, props_values))"
)


def properties(
    ch: ClickHouse, project: str, day_from: date, day_to: date, event: str | None
) -> list[PropertyInfo]:
    """The properties of the events of [day_from, day_to] (of type `event` when given),
    most events first, with their type and top string values."""
    params = SqlParams("d")
    where = _range(project, day_from, day_to, params)
    if event is not None:
        where += f" AND type = {params(event)}"
    rows = ch.execute(
        f"""
        SELECT name, sum(n) AS total, min(boolean) FROM (
            SELECT day, pair.1 AS name, uniqExact({EVENT_KEY}) AS n,
                   min(pair.2 IN ('true', 'false')) AS boolean
            FROM events ARRAY JOIN {_PAIRS} AS pair
            WHERE {where}
            GROUP BY day, name
        )
        GROUP BY name ORDER BY total DESC, name
        """,
        params.values,
    )
    numeric = {
        f"{PROPS_PREFIX}{row[0]}"
        for row in ch.execute(
            f"SELECT DISTINCT key FROM events ARRAY JOIN props_num_keys AS key WHERE {where}",
            params.values,
        )
    }
    found: list[PropertyInfo] = []
    for name, count, boolean in rows:
        kind = "number" if name in numeric else "bool" if int(boolean) else "string"
        found.append({"property": str(name), "type": kind, "count": int(count), "top_values": []})
    strings = [info["property"] for info in found if info["type"] == "string"]
    if strings:
        listed = params(strings)
        tops = ch.execute(
            f"""
            SELECT name, value, sum(n) AS total FROM (
                SELECT day, pair.1 AS name, pair.2 AS value, uniqExact({EVENT_KEY}) AS n
                FROM events ARRAY JOIN {_PAIRS} AS pair
                WHERE {where} AND has({listed}, pair.1)
                GROUP BY day, name, value
            )
            GROUP BY name, value ORDER BY name, total DESC, value
            LIMIT {TOP_VALUES} BY name
            """,
            params.values,
        )
        by_name = {info["property"]: info for info in found}
        for name, value, count in tops:
            by_name[str(name)]["top_values"].append({"value": str(value), "count": int(count)})
    return found
