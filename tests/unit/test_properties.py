"""The filter compiler's refusals and the props layout (schemas/props.py), without SQL;
their SQL runs on both engines in tests/integration/test_properties_sql.py."""

from __future__ import annotations

from typing import Any

import pytest

from schemas.props import flatten_props, prop_text
from sinks.queries.properties import (
    OPS,
    Filter,
    PropertyError,
    SqlParams,
    check_breakdown,
    filter_sql,
)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        pytest.param(Filter("colour", "eq", "x"), "unknown property", id="unknown property"),
        pytest.param(Filter("props.", "eq", "x"), "bad props path", id="empty path"),
        pytest.param(Filter("props.a..b", "eq", "x"), "bad props path", id="empty step"),
        pytest.param(Filter("type", "like", "x"), "unknown op", id="unknown op"),
        pytest.param(Filter("props.n", "gt", "5"), "needs a number", id="numeric op on a string"),
        pytest.param(Filter("props.n", "lt", True), "needs a number", id="numeric op on a bool"),
        pytest.param(Filter("props.n", "gte", None), "needs a number", id="numeric op, no value"),
        pytest.param(Filter("type", "in", "page_view"), "non-empty list", id="in without list"),
        pytest.param(Filter("type", "not_in", []), "non-empty list", id="empty list"),
        pytest.param(Filter("type", "in", [{"a": 1}]), "must be strings", id="object in list"),
        pytest.param(Filter("type", "eq", None), "string, number or boolean", id="eq, no value"),
        pytest.param(Filter("type", "eq", [1]), "string, number or boolean", id="eq a list"),
        pytest.param(Filter("type", "is_set", "x"), "takes no value", id="is_set with value"),
    ],
)
def test_bad_filters_are_refused_with_a_message(item: Filter, message: str) -> None:
    with pytest.raises(PropertyError, match=message):
        filter_sql([item], SqlParams())


@pytest.mark.parametrize(
    ("breakdown", "limit", "message"),
    [
        pytest.param(["type", "os", "region"], None, "at most 2", id="three properties"),
        pytest.param(["os", "os"], None, "twice", id="repeated"),
        pytest.param(["props.x", "nope"], None, "unknown property", id="unknown property"),
        pytest.param(["os"], 0, "from 1 to 100", id="limit 0"),
        pytest.param(["os"], 1000, "from 1 to 100", id="limit 1000"),
        pytest.param(["os"], True, "from 1 to 100", id="limit true"),
    ],
)
def test_bad_breakdowns_are_refused(breakdown: list[str], limit: Any, message: str) -> None:
    with pytest.raises(PropertyError, match=message):
        check_breakdown(breakdown, limit)


def test_breakdown_defaults() -> None:
    assert check_breakdown(None, None) == ([], 25)
    assert check_breakdown(["os", "props.a.b"], 100) == (["os", "props.a.b"], 100)


def test_values_travel_only_as_parameters() -> None:
    params = SqlParams()
    sql = filter_sql(
        [Filter("props.x'y", "eq", "a'); DROP TABLE events; --"), Filter("os", "in", ["z'"])],
        params,
    )
    for text in ("DROP", "'y", "z'"):
        assert text not in sql
    assert list(params.values.values()) == ["x'y", "a'); DROP TABLE events; --", ["z'"]]


def test_every_op_compiles() -> None:
    values = {"in": ["a"], "not_in": ["a"], "is_set": None, "is_not_set": None}
    for op in OPS:
        value = values.get(op, 1)
        assert filter_sql([Filter("props.a", op, value)], SqlParams()).count("%(") >= 1


def test_flattening_keeps_leaves_as_dotted_paths() -> None:
    keys, values, num_keys, num_values = flatten_props(
        {"a": {"b": 1.0, "c": {"d": True}}, "s": "x", "l": [1, "y"], "n": None, "f": 2.5}
    )
    assert dict(zip(keys, values, strict=True)) == {
        "a.b": "1",
        "a.c.d": "true",
        "s": "x",
        "l": '[1,"y"]',
        "f": "2.5",
    }
    assert dict(zip(num_keys, num_values, strict=True)) == {"a.b": 1.0, "f": 2.5}


def test_huge_integers_are_text_not_numbers() -> None:
    keys, values, num_keys, _ = flatten_props({"big": 10**400, "ok": 10**40})
    assert dict(zip(keys, values, strict=True))["big"] == str(10**400)
    assert num_keys == ("ok",)


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (1, "1"),
        (1.0, "1"),
        ("1", "1"),
        (True, "true"),
        (-0.5, "-0.5"),
        (1e20, "1e+20"),
    ],
)
def test_prop_text(value: Any, shown: str) -> None:
    assert prop_text(value) == shown
