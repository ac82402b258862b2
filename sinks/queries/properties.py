"""The filter language and breakdowns of SPEC §5.1, compiled into ClickHouse SQL plus
parameters: the one place every insight query gets its property expressions from.

Properties: the standard dimensions (`STANDARD`, columns of `events`; an empty string is
a missing value) and `props.<dotted path>`, read from the flattened props columns of
`events` (migration 0009: `props_keys`/`props_values` hold every scalar leaf as text,
`props_num_keys`/`props_num_values` the numeric leaves as Float64, Snuba's layout for
Sentry tags). The same SQL runs on chDB and on clickhouse-server 18.16, which has no JSON
functions: arrays, `has`, `indexOf` and `position` are all it needs.

Semantics (SPEC §5.1):
- string ops (`eq`, `neq`, `in`, `not_in`, `contains`, `not_contains`) compare the value's
  text (schemas/props.py `prop_text`: 1, 1.0 and "1" are the same text);
- numeric ops (`gt`, `gte`, `lt`, `lte`) need a number as value, and match only numeric
  values (a standard dimension matches when its text parses as a number);
- a missing property fails every op but `neq`, `not_in`, `not_contains`, `is_not_set`.
A breakdown value is the property's text, `NONE` ("$none") when it is missing.

User values only ever travel as `%(name)s` parameters (escaped by the driver's
`escape_params` on both engines); property paths too. A bad property, op or value raises
`PropertyError` (a ValueError: the API answers 400) before any SQL is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Final, Literal, get_args

from schemas.props import is_number, prop_text
from sinks.clickhouse import ClickHouse

STANDARD: Final[tuple[str, ...]] = (
    "type",
    "device_model",
    "app_version",
    "os",
    "region",
    "source",
    "session_id",
)
PROPS_PREFIX: Final = "props."
NONE: Final = "$none"
OTHER: Final = "$other"
MAX_PATH_LENGTH: Final = 256

Op = Literal[
    "eq",
    "neq",
    "in",
    "not_in",
    "contains",
    "not_contains",
    "gt",
    "gte",
    "lt",
    "lte",
    "is_set",
    "is_not_set",
]
OPS: Final[tuple[str, ...]] = get_args(Op)
_NEGATED: Final = {"neq": "eq", "not_in": "in", "not_contains": "contains", "is_not_set": "is_set"}
_COMPARISONS: Final = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_LIST_OPS: Final = ("in", "not_in")


class PropertyError(ValueError):
    """A property, op or value the language does not have; the message says which."""


@dataclass(frozen=True, slots=True)
class Filter:
    property: str
    op: str
    value: Any = None


def check_property(name: Any) -> str:
    """`name` when the language has it; PropertyError otherwise."""
    if not isinstance(name, str):
        raise PropertyError("a property name must be a string")
    if name in STANDARD:
        return name
    if name.startswith(PROPS_PREFIX):
        path = name[len(PROPS_PREFIX) :]
        if path and len(path) <= MAX_PATH_LENGTH and "" not in path.split("."):
            return name
        raise PropertyError(f"bad props path {name[:80]!r} (props.<key>[.<key>...])")
    raise PropertyError(
        f"unknown property {name[:80]!r}: one of {', '.join(STANDARD)} or props.<path>"
    )


@dataclass
class SqlParams:
    """Collects parameters under unique names; `prefix` keeps two builders of one query
    apart."""

    prefix: str = "q"
    values: dict[str, Any] = field(default_factory=dict)

    def __call__(self, value: Any) -> str:
        name = f"{self.prefix}{len(self.values)}"
        self.values[name] = value
        return f"%({name})s"


@dataclass(frozen=True, slots=True)
class PropertySql:
    """SQL of one property over a row of `events`: whether it is set, its text, and (for
    numeric ops) whether it is a number and its value."""

    is_set: str
    text: str
    is_number: str
    number: str


def property_sql(name: str, params: SqlParams) -> PropertySql:
    check_property(name)
    if name in STANDARD:
        return PropertySql(
            is_set=f"({name} != '')",
            text=name,
            is_number=f"isNotNull(toFloat64OrNull({name}))",
            number=f"toFloat64OrZero({name})",
        )
    key = params(name[len(PROPS_PREFIX) :])
    return PropertySql(
        is_set=f"has(props_keys, {key})",
        text=f"props_values[indexOf(props_keys, {key})]",
        is_number=f"has(props_num_keys, {key})",
        number=f"props_num_values[indexOf(props_num_keys, {key})]",
    )


def check_filter(item: Filter) -> Filter:
    check_property(item.property)
    if item.op not in OPS:
        raise PropertyError(f"unknown op {str(item.op)[:40]!r}: one of {', '.join(OPS)}")
    op = _NEGATED.get(item.op, item.op)
    value = item.value
    if op == "is_set":
        if value is not None:
            raise PropertyError(f"{item.op} takes no value")
    elif op == "in":
        if not isinstance(value, list) or not value:
            raise PropertyError(f"{item.op} needs a non-empty list of values")
        if not all(_is_scalar(v) for v in value):
            raise PropertyError(f"{item.op} values must be strings, numbers or booleans")
    elif op in _COMPARISONS:
        if not is_number(value):
            raise PropertyError(f"{item.op} on {item.property} needs a number, not {value!r}")
    elif not _is_scalar(value):
        raise PropertyError(f"{item.op} needs a string, number or boolean value")
    return item


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | bool) or is_number(value)


def filter_sql(filters: Sequence[Filter], params: SqlParams) -> str:
    """One boolean SQL expression: every filter holds ("1" for none)."""
    if not filters:
        return "1"
    return " AND ".join(_one_filter(check_filter(item), params) for item in filters)


def _one_filter(item: Filter, params: SqlParams) -> str:
    prop = property_sql(item.property, params)
    negated = item.op in _NEGATED
    op = _NEGATED.get(item.op, item.op)
    if op == "is_set":
        positive = prop.is_set
    elif op == "eq":
        positive = f"({prop.is_set} AND {prop.text} = {params(prop_text(item.value))})"
    elif op == "in":
        values = params([prop_text(v) for v in item.value])
        positive = f"({prop.is_set} AND has({values}, {prop.text}))"
    elif op == "contains":
        positive = f"({prop.is_set} AND position({prop.text}, {params(prop_text(item.value))}) > 0)"
    else:
        comparison = _COMPARISONS[op]
        positive = f"({prop.is_number} AND {prop.number} {comparison} {params(float(item.value))})"
    return f"(NOT {positive})" if negated else positive


def check_breakdown(breakdown: Sequence[str] | None, limit: int | None) -> tuple[list[str], int]:
    """The breakdown's properties (at most 2, no repeats) and its limit (1..100, default
    25); PropertyError otherwise."""
    properties = list(breakdown or [])
    if len(properties) > 2:
        raise PropertyError("a breakdown has at most 2 properties")
    if len(set(properties)) != len(properties):
        raise PropertyError("a breakdown names a property twice")
    for name in properties:
        check_property(name)
    chosen = 25 if limit is None else limit
    if isinstance(chosen, bool) or not isinstance(chosen, int) or not 1 <= chosen <= 100:
        raise PropertyError("breakdown_limit must be an integer from 1 to 100")
    return properties, chosen


def breakdown_sql(properties: Sequence[str], params: SqlParams) -> list[str]:
    """One String expression per property: its text, NONE when missing."""
    expressions = []
    for name in properties:
        prop = property_sql(name, params)
        expressions.append(f"if({prop.is_set}, {prop.text}, {params(NONE)})")
    return expressions


def grouped_breakdown_sql(
    expressions: Sequence[str], kept: Sequence[tuple[str, ...]], params: SqlParams
) -> list[str]:
    """The breakdown expressions with every combination outside `kept` (the top ones)
    folded into OTHER, so the rest is one exact group (unique users counted once)."""
    if not expressions:
        return []
    if not kept:
        inside = "0"
    elif len(expressions) == 1:
        inside = f"has({params([values[0] for values in kept])}, {expressions[0]})"
    else:
        listed = params([list(values) for values in kept])
        inside = f"has({listed}, [{', '.join(expressions)}])"
    other = params(OTHER)
    return [f"if({inside}, {expression}, {other})" for expression in expressions]


@dataclass(frozen=True, slots=True)
class Slice:
    """What an insight is sliced by: the days [day_from, day_to], the filters every event
    must match, and the breakdown with its limit."""

    day_from: date
    day_to: date
    filters: Sequence[Filter] = ()
    breakdown: Sequence[str] = ()
    breakdown_limit: int | None = None

    def checked(self) -> tuple[list[str], int]:
        """The breakdown's properties and limit; PropertyError (a ValueError) for what
        the language does not have or from > to."""
        if self.day_from > self.day_to:
            raise PropertyError(f"from ({self.day_from}) is after to ({self.day_to})")
        for item in self.filters:
            check_filter(item)
        return check_breakdown(self.breakdown, self.breakdown_limit)


def top_grouped(
    ch: ClickHouse, source: str, names: list[str], params: SqlParams, limit: int, measure: str
) -> list[str]:
    """The breakdown columns `names` of the query `source` as they group: the top `limit`
    combinations by `measure` (an aggregate over `source`'s rows) one by one, the rest
    folded into OTHER; `names` unchanged when there are no more than `limit`."""
    if not names:
        return []
    keys = ", ".join(names)
    ranked = ch.execute(
        f"SELECT {keys}, {measure} AS m FROM ({source}) GROUP BY {keys} ORDER BY m DESC, {keys}",
        params.values,
    )
    if len(ranked) <= limit:
        return names
    kept = [tuple(str(value) for value in row[:-1]) for row in ranked[:limit]]
    return grouped_breakdown_sql(names, kept, params)
