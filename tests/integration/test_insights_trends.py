"""Trends (SPEC §5.1) on both engines against an independent computation over the events
as sent: every math, every interval, filters, one- and two-property breakdowns with
`$other`, duplicates and late events; bad queries refused before any SQL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest

from sinks.clickhouse import ClickHouse
from sinks.queries.properties import Filter, PropertyError
from sinks.queries.trends import Series, TrendsQuery, trends
from tests.insight_data import (
    INSIGHT_DAYS,
    INSIGHT_LAST_DAY,
    INSIGHT_PROJECT,
    INSIGHT_READ,
    unique_events,
)
from tests.insight_reference import (
    all_buckets,
    breakdown_value,
    bucket_of,
    day_of,
    exact_quantile,
    holds,
    lookup,
)

PROJECT = INSIGHT_PROJECT
LAST_DAY = INSIGHT_LAST_DAY
DAYS = INSIGHT_DAYS
OTHER = "$other"


# ---------------------------------------------------------------- the independent computation


def compute(math: str, rows: list[dict[str, Any]], prop: str | None) -> float:
    if not rows:
        return 0.0
    if math == "total":
        return float(len(rows))
    users = {row["user_id"] for row in rows}
    if math == "unique_users":
        return float(len(users))
    if math == "per_user_avg":
        return len(rows) / len(users)
    assert prop is not None
    values = [float(lookup(row, prop)) for row in rows]
    levels = {"median": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99}
    if math in levels:
        return exact_quantile(values, levels[math])
    reducers: dict[str, Callable[[list[float]], float]] = {
        "sum": sum,
        "avg": lambda v: sum(v) / len(v),
        "min": min,
        "max": max,
    }
    return reducers[math](values)


def is_numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def entry(
    query: TrendsQuery, index: int, combo: dict[str, str] | None, members: list[dict[str, Any]]
) -> dict[str, Any]:
    series = query.series[index]
    points = [
        {
            "t": key,
            "value": compute(
                series.math,
                [r for r in members if bucket_of(r, query.interval) == key],
                series.property,
            ),
        }
        for key in all_buckets(query.interval, query.day_from, query.day_to)
    ]
    return {
        "index": index,
        "event": series.event,
        "math": series.math,
        "breakdown": combo,
        "points": points,
        "total": compute(series.math, members, series.property),
    }


def expected(events: list[dict[str, Any]], query: TrendsQuery) -> list[dict[str, Any]]:
    results = []
    limit = query.breakdown_limit or 25
    for index, series in enumerate(query.series):
        rows = [
            e
            for e in unique_events(events)
            if query.day_from <= day_of(e) <= query.day_to
            and (series.event is None or e["type"] == series.event)
            and all(holds(e, f) for f in [*query.filters, *series.filters])
            and (series.property is None or is_numeric(lookup(e, series.property)))
        ]

        if not query.breakdown:
            results.append(entry(query, index, None, rows))
            continue
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for row in rows:
            values = tuple(breakdown_value(row, name) for name in query.breakdown)
            groups.setdefault(values, []).append(row)
        ranked = sorted(
            groups, key=lambda v: (-compute(series.math, groups[v], series.property), v)
        )
        kept, rest = ranked[:limit], ranked[limit:]
        shown = [(values, groups[values]) for values in kept]
        if rest:
            shown.append(((OTHER,) * len(query.breakdown), [r for v in rest for r in groups[v]]))
        entries = [
            entry(query, index, dict(zip(query.breakdown, v, strict=True)), m) for v, m in shown
        ]
        entries.sort(
            key=lambda e: (
                set(e["breakdown"].values()) == {OTHER},
                -e["total"],
                tuple(e["breakdown"].values()),
            )
        )
        results.extend(entries)
    return results


def assert_same(actual: list[Any], wanted: list[dict[str, Any]]) -> None:
    assert [(s["index"], s["breakdown"]) for s in actual] == [
        (s["index"], s["breakdown"]) for s in wanted
    ]
    for got, want in zip(actual, wanted, strict=True):
        assert got["total"] == pytest.approx(want["total"]), (got["breakdown"], "total")
        assert [p["t"] for p in got["points"]] == [p["t"] for p in want["points"]]
        assert [p["value"] for p in got["points"]] == pytest.approx(
            [p["value"] for p in want["points"]]
        ), got["breakdown"]


# ---------------------------------------------------------------- cases

FIRST = LAST_DAY - timedelta(days=DAYS - 1)
CASES = [
    pytest.param(
        TrendsQuery(FIRST, LAST_DAY, "day", [Series(None, "total")]), id="all events per day"
    ),
    pytest.param(
        TrendsQuery(
            FIRST + timedelta(days=3),
            LAST_DAY - timedelta(days=2),
            "week",
            [Series("page_view", "unique_users"), Series("purchase", "per_user_avg")],
        ),
        id="two series by week",
    ),
    pytest.param(
        TrendsQuery(LAST_DAY - timedelta(days=1), LAST_DAY, "hour", [Series("gesture", "total")]),
        id="hours",
    ),
    pytest.param(
        TrendsQuery(FIRST, LAST_DAY, "month", [Series("purchase", "sum", "props.price")]),
        id="sum by month",
    ),
    *(
        pytest.param(
            TrendsQuery(
                FIRST,
                LAST_DAY,
                "day",
                [Series("purchase", math, "props.price")],
                filters=[Filter("region", "neq", "us")],
            ),
            id=f"{math} of a prop",
        )
        for math in ("avg", "min", "max", "median", "p90", "p95", "p99")
    ),
    pytest.param(
        TrendsQuery(
            FIRST,
            LAST_DAY,
            "day",
            [Series(None, "total", filters=[Filter("props.ab.arm", "eq", "a")])],
            filters=[Filter("app_version", "in", ["3.0.0", "3.0.1"])],
            breakdown=["device_model"],
        ),
        id="filtered, breakdown by device",
    ),
    pytest.param(
        TrendsQuery(
            FIRST,
            LAST_DAY,
            "week",
            [Series(None, "unique_users"), Series("video.play", "avg", "props.bitrate")],
            breakdown=["os", "props.hdr"],
            breakdown_limit=3,
        ),
        id="two-property breakdown with $other",
    ),
    pytest.param(
        TrendsQuery(
            FIRST,
            LAST_DAY,
            "day",
            [Series(None, "unique_users")],
            breakdown=["props.item.category"],
            breakdown_limit=1,
        ),
        id="nested prop breakdown, limit 1",
    ),
]


@pytest.mark.parametrize("query", CASES)
def test_trends_answer_the_independent_computation(
    insight_store: ClickHouse, insight_events: list[dict[str, Any]], query: TrendsQuery
) -> None:
    assert_same(trends(insight_store, PROJECT, query), expected(insight_events, query))


@pytest.mark.parametrize(
    ("query", "message"),
    [
        pytest.param(
            TrendsQuery(LAST_DAY, FIRST, "day", [Series(None)]), "is after", id="from after to"
        ),
        pytest.param(
            TrendsQuery(FIRST, LAST_DAY, "minute", [Series(None)]), "interval", id="bad interval"
        ),
        pytest.param(TrendsQuery(FIRST, LAST_DAY, "day", []), "1 to 10", id="no series"),
        pytest.param(
            TrendsQuery(FIRST, LAST_DAY, "day", [Series(None, "sum")]),
            "needs a numeric property",
            id="sum without property",
        ),
        pytest.param(
            TrendsQuery(FIRST, LAST_DAY, "day", [Series(None, "total", "props.x")]),
            "takes no property",
            id="property on a count",
        ),
        pytest.param(
            TrendsQuery(FIRST, LAST_DAY, "day", [Series(None, "mode")]), "math", id="bad math"
        ),
        pytest.param(
            TrendsQuery(FIRST, LAST_DAY, "day", [Series(None)], breakdown=["a", "b", "c"]),
            "at most 2",
            id="breakdown of 3",
        ),
        pytest.param(
            TrendsQuery(LAST_DAY - timedelta(days=31), LAST_DAY, "hour", [Series(None)]),
            "at most 31 days",
            id="too many hours",
        ),
    ],
)
def test_bad_queries_are_refused_before_sql(query: TrendsQuery, message: str) -> None:
    class NoEngine:
        database = "none"

        def execute(self, *_: object) -> list[Any]:
            raise AssertionError("no SQL for a refused query")

    with pytest.raises(PropertyError, match=message):
        trends(NoEngine(), PROJECT, query)  # type: ignore[arg-type]


# ---------------------------------------------------------------- through HTTP


async def test_the_endpoint_answers_the_computation(
    insight_api: httpx.AsyncClient, insight_events: list[dict[str, Any]]
) -> None:
    body = {
        "project": PROJECT,
        "from": FIRST.isoformat(),
        "to": LAST_DAY.isoformat(),
        "interval": "week",
        "series": [
            {"event": "purchase", "math": "sum", "property": "props.price"},
            {"event": None, "math": "unique_users", "filters": [
                {"property": "props.ab.n", "op": "gte", "value": 1}]},
        ],
        "filters": [{"property": "device_model", "op": "is_set"}],
        "breakdown": ["region"],
        "breakdown_limit": 2,
    }  # fmt: skip
    response = await insight_api.post("/v1/insights/trends", json=body, headers=INSIGHT_READ)
    assert response.status_code == 200, response.text
    query = TrendsQuery(
        FIRST,
        LAST_DAY,
        "week",
        [
            Series("purchase", "sum", "props.price"),
            Series(None, "unique_users", filters=[Filter("props.ab.n", "gte", 1)]),
        ],
        filters=[Filter("device_model", "is_set")],
        breakdown=["region"],
        breakdown_limit=2,
    )
    assert_same(response.json()["series"], expected(insight_events, query))
    again = await insight_api.post("/v1/insights/trends", json=body, headers=INSIGHT_READ)
    assert (again.json(), again.headers["x-cache"]) == (response.json(), "hit")


BASE = {
    "project": PROJECT,
    "from": FIRST.isoformat(),
    "to": LAST_DAY.isoformat(),
    "series": [{"event": None}],
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({"filters": [{"property": "nope", "op": "eq", "value": 1}]},
                     "unknown property", id="unknown property"),
        pytest.param({"filters": [{"property": "os", "op": "like", "value": "x"}]},
                     "unknown op", id="unknown op"),
        pytest.param({"filters": [{"property": "props.x", "op": "gt", "value": "5"}]},
                     "needs a number", id="numeric op on a string"),
        pytest.param({"breakdown": ["os", "region", "type"]}, "at most 2", id="breakdown of 3"),
        pytest.param({"breakdown": ["os"], "breakdown_limit": 0}, "1 to 100", id="limit 0"),
        pytest.param({"breakdown": ["os"], "breakdown_limit": 1000}, "1 to 100", id="limit 1000"),
        pytest.param({"series": [{"event": None, "math": "sum"}]}, "numeric property",
                     id="sum without property"),
        pytest.param({"series": []}, "series", id="no series"),
        pytest.param({"interval": "minute"}, "interval", id="bad interval"),
        pytest.param({"from": "2026-13-01"}, "from", id="bad date"),
        pytest.param({"colour": "red"}, "colour", id="unknown field"),
    ],
)  # fmt: skip
async def test_bad_bodies_answer_400_with_a_message(
    insight_api: httpx.AsyncClient, change: dict[str, Any], message: str
) -> None:
    response = await insight_api.post(
        "/v1/insights/trends", json={**BASE, **change}, headers=INSIGHT_READ
    )
    assert response.status_code == 400, response.text
    assert message in response.json()["detail"]
