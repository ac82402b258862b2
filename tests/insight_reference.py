"""An independent reading of SPEC §5.1 over events as sent (dicts with the standard
dimensions and nested `props`), for the insight tests to compare the SQL with. Written
from the spec's words, not from sinks/queries/: property lookup by walking the props,
value text, numeric ops, and the filter ops."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sinks.queries.properties import Filter

NONE = "$none"


def lookup(row: dict[str, Any], name: str) -> Any:
    """The value of a property, None when missing (absent, null, empty dimension, object)."""
    if not name.startswith("props."):
        return row[name] or None
    value: Any = row["props"]
    for part in name.split(".")[1:]:
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return None if isinstance(value, dict) else value


def text(value: Any) -> str:
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(int(value)) if float(value) == int(value) else repr(float(value))
    if isinstance(value, list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    try:  # a standard dimension's text
        return float(value) if not isinstance(value, list) else None
    except ValueError:
        return None


def holds(row: dict[str, Any], item: Filter) -> bool:
    value = lookup(row, item.property)
    positive = {"neq": "eq", "not_in": "in", "not_contains": "contains", "is_not_set": "is_set"}
    op = positive.get(item.op, item.op)
    if value is None:
        result = False
    elif op == "is_set":
        result = True
    elif op == "eq":
        result = text(value) == text(item.value)
    elif op == "in":
        result = text(value) in {text(v) for v in item.value}
    elif op == "contains":
        result = text(item.value) in text(value)
    else:
        # A prop is a number only as sent; a dimension's text may parse as one.
        is_prop = item.property.startswith("props.")
        as_number = None if is_prop and isinstance(value, str) else number(value)
        if as_number is None:
            result = False
        else:
            limit = float(item.value)
            result = {
                "gt": as_number > limit,
                "gte": as_number >= limit,
                "lt": as_number < limit,
                "lte": as_number <= limit,
            }[op]
    return not result if item.op in positive else result


def breakdown_value(row: dict[str, Any], name: str) -> str:
    value = lookup(row, name)
    return NONE if value is None else text(value)


def day_of(event: dict[str, Any]) -> date:
    return datetime.fromtimestamp(event["ts"] / 1000, UTC).date()


def bucket_of(event: dict[str, Any], interval: str) -> str:
    moment = datetime.fromtimestamp(event["ts"] / 1000, UTC)
    day = moment.date()
    if interval == "hour":
        return moment.strftime("%Y-%m-%dT%H:00:00Z")
    if interval == "week":
        return (day - timedelta(days=day.weekday())).isoformat()
    if interval == "month":
        return day.replace(day=1).isoformat()
    return day.isoformat()


def all_buckets(interval: str, first: date, last: date) -> list[str]:
    shown: list[str] = []
    moment = datetime(first.year, first.month, first.day, tzinfo=UTC)
    end = datetime(last.year, last.month, last.day, tzinfo=UTC) + timedelta(days=1)
    while moment < end:
        key = bucket_of({"ts": moment.timestamp() * 1000}, interval)
        if key not in shown:
            shown.append(key)
        moment += timedelta(hours=1)
    return shown


def exact_quantile(values: list[float], level: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(level * len(ordered)), len(ordered) - 1)]
