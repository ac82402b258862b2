"""The filter language and breakdowns (sinks/queries/properties.py) on both engines, against
an independent reading of SPEC §5.1 over the events as sent: every op, nested and numeric
props, missing values, standard dimensions; user values that look like SQL stay values."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from schemas.props import flatten_props
from sinks.clickhouse import ClickHouse
from sinks.queries.properties import (
    OTHER,
    Filter,
    SqlParams,
    breakdown_sql,
    filter_sql,
    grouped_breakdown_sql,
)
from tests.insight_reference import breakdown_value, holds

TABLE = "prop_rows"
STANDARD = ("type", "device_model", "app_version", "os", "region", "source", "session_id")
COLUMNS = (
    "id",
    *STANDARD,
    "props",
    "props_keys",
    "props_values",
    "props_num_keys",
    "props_num_values",
)


def generated_rows(seed: int, n: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        props: dict[str, Any] = {}
        if rng.random() < 0.8:
            props["url"] = rng.choice(["https://a/x", "https://b/store", "1", "Store"])
        if rng.random() < 0.6:
            props["price"] = rng.choice([1, 1.0, 2.5, -3, 10, 0, "7", True])
        if rng.random() < 0.5:
            tier = rng.choice([1, 2, 3, "high"])
            props["hw"] = {"gpu": {"tier": tier}, "eye": rng.random() < 0.5}
        if rng.random() < 0.2:
            props["tags"] = ["a", rng.randrange(3)]
        if rng.random() < 0.1:
            props["nothing"] = None
        rows.append(
            {
                "id": i,
                "type": rng.choice(["page_view", "gesture", "purchase"]),
                "device_model": rng.choice(["quest3", "quest2", "vision_pro", ""]),
                "app_version": rng.choice(["3.0.0", "3.0.1", "10", ""]),
                "os": rng.choice(["horizon", "visionos", ""]),
                "region": rng.choice(["eu", "us", ""]),
                "source": rng.choice(["native", "segment", "posthog"]),
                "session_id": rng.choice(["", "s-1", "s-2"]),
                "props": props,
            }
        )
    return rows


# ------------------------------------------------------------ fixtures


@pytest.fixture
def loaded(clickhouse: ClickHouse) -> tuple[ClickHouse, list[dict[str, Any]]]:
    clickhouse.execute(
        f"""CREATE TABLE {TABLE} (
            id UInt32, type String, device_model String, app_version String, os String,
            region String, source String, session_id String, props String,
            props_keys Array(String), props_values Array(String),
            props_num_keys Array(String), props_num_values Array(Float64)
        ) ENGINE = MergeTree() ORDER BY id"""
    )
    rows = generated_rows(seed=7, n=400)
    clickhouse.insert(
        TABLE,
        COLUMNS,
        [
            (
                row["id"],
                *(row[name] for name in STANDARD),
                json.dumps(row["props"]),
                *flatten_props(row["props"]),
            )
            for row in rows
        ],
    )
    return clickhouse, rows


def matching_ids(clickhouse: ClickHouse, filters: list[Filter]) -> set[int]:
    params = SqlParams()
    where = filter_sql(filters, params)
    rows = clickhouse.execute(f"SELECT id FROM {TABLE} WHERE {where}", params.values)
    return {int(row[0]) for row in rows}


FILTERS = [
    pytest.param(Filter(prop, op, value), id=f"{prop} {op} {value!r}")
    for prop, op, value in [
        ("type", "eq", "purchase"),
        ("type", "neq", "purchase"),
        ("device_model", "eq", "quest3"),
        ("device_model", "neq", "quest3"),
        ("device_model", "in", ["quest2", "vision_pro"]),
        ("device_model", "not_in", ["quest2", "vision_pro"]),
        ("device_model", "is_set", None),
        ("device_model", "is_not_set", None),
        ("app_version", "contains", "3.0"),
        ("app_version", "not_contains", "3.0"),
        ("app_version", "gt", 5),
        ("app_version", "lte", 10),
        ("session_id", "is_not_set", None),
        ("props.url", "eq", "https://b/store"),
        ("props.url", "eq", 1),
        ("props.url", "contains", "store"),
        ("props.url", "not_contains", "store"),
        ("props.url", "in", ["Store", "https://a/x"]),
        ("props.url", "is_set", None),
        ("props.url", "is_not_set", None),
        ("props.price", "eq", 1),
        ("props.price", "eq", "1"),
        ("props.price", "eq", 1.0),
        ("props.price", "eq", True),
        ("props.price", "neq", 1),
        ("props.price", "gt", 1),
        ("props.price", "gte", 1),
        ("props.price", "lt", 0),
        ("props.price", "lte", 2.5),
        ("props.price", "not_in", [1, 10]),
        ("props.hw.gpu.tier", "gte", 2),
        ("props.hw.gpu.tier", "eq", "high"),
        ("props.hw.gpu.tier", "is_set", None),
        ("props.hw.gpu", "is_set", None),
        ("props.hw.eye", "eq", False),
        ("props.tags", "contains", '"a"'),
        ("props.nothing", "is_not_set", None),
        ("props.absent.deeper", "neq", "x"),
        ("props.absent", "lt", 3),
    ]
]


@pytest.mark.parametrize("item", FILTERS)
def test_every_op_matches_the_reading_of_the_spec(
    loaded: tuple[ClickHouse, list[dict[str, Any]]], item: Filter
) -> None:
    clickhouse, rows = loaded
    expected = {row["id"] for row in rows if holds(row, item)}
    assert matching_ids(clickhouse, [item]) == expected


def test_filters_combine_with_and(loaded: tuple[ClickHouse, list[dict[str, Any]]]) -> None:
    clickhouse, rows = loaded
    filters = [
        Filter("device_model", "in", ["quest3", "quest2"]),
        Filter("props.price", "gte", 0),
        Filter("props.url", "not_contains", "a/x"),
    ]
    expected = {row["id"] for row in rows if all(holds(row, f) for f in filters)}
    assert expected, "the dataset exercises the combination"
    assert matching_ids(clickhouse, filters) == expected
    assert matching_ids(clickhouse, []) == {row["id"] for row in rows}


@pytest.mark.parametrize(
    "value",
    [
        "'; DROP TABLE prop_rows; --",
        "\\' OR 1=1 --",
        "quest3' OR '1'='1",
        "%(q0)s",
        "\x00\n",
    ],
)
def test_values_that_look_like_sql_are_inert(
    loaded: tuple[ClickHouse, list[dict[str, Any]]], value: str
) -> None:
    clickhouse, rows = loaded
    for item in [
        Filter("device_model", "eq", value),
        Filter(f"props.{value.strip() or 'x'}", "is_set", None),
        Filter("props.url", "in", [value, "x"]),
        Filter("props.url", "contains", value),
    ]:
        assert matching_ids(clickhouse, [item]) == set(), item
    assert matching_ids(clickhouse, [Filter("device_model", "neq", value)]) == {
        row["id"] for row in rows
    }
    assert int(clickhouse.execute(f"SELECT count() FROM {TABLE}")[0][0]) == len(rows)


@pytest.mark.parametrize(
    "properties", [["device_model"], ["props.hw.gpu.tier", "region"]], ids=["one", "two"]
)
def test_breakdown_values_and_the_rest_as_other(
    loaded: tuple[ClickHouse, list[dict[str, Any]]], properties: list[str]
) -> None:
    clickhouse, rows = loaded

    expected = {
        row["id"]: tuple(breakdown_value(row, name) for name in properties) for row in rows
    }
    params = SqlParams()
    expressions = breakdown_sql(properties, params)
    shown = clickhouse.execute(f"SELECT id, {', '.join(expressions)} FROM {TABLE}", params.values)
    assert {int(row[0]): tuple(row[1:]) for row in shown} == expected

    kept = sorted(set(expected.values()))[:2]
    grouped = grouped_breakdown_sql(expressions, kept, params)
    shown = clickhouse.execute(f"SELECT id, {', '.join(grouped)} FROM {TABLE}", params.values)
    folded = {
        key: value if value in kept else (OTHER,) * len(properties)
        for key, value in expected.items()
    }
    assert {int(row[0]): tuple(row[1:]) for row in shown} == folded
