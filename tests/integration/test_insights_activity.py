"""Active users and retention with filters and breakdowns (SPEC §5.1) through HTTP on both
engines against the events as sent; the unfiltered insight agrees with the fixed endpoint."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import httpx
import pytest

from sinks.queries.properties import Filter
from tests.insight_data import (
    INSIGHT_DAYS,
    INSIGHT_LAST_DAY,
    INSIGHT_PROJECT,
    INSIGHT_READ,
    INSIGHT_TODAY,
    unique_events,
)
from tests.insight_reference import breakdown_value, day_of, holds

FIRST = INSIGHT_LAST_DAY - timedelta(days=INSIGHT_DAYS - 1)
OTHER = "$other"


async def post(insight_api: httpx.AsyncClient, path: str, body: dict[str, Any]) -> Any:
    response = await insight_api.post(
        path, json={"project": INSIGHT_PROJECT, **body}, headers=INSIGHT_READ
    )
    assert response.status_code == 200, response.text
    return response.json()


def as_json(filters: list[Filter]) -> list[dict[str, Any]]:
    return [{"property": f.property, "op": f.op, "value": f.value} for f in filters]


def ranked(groups: dict[tuple[str, ...], set[str]], limit: int) -> list[tuple[str, ...]]:
    return sorted(groups, key=lambda g: (-len(groups[g]), g))[:limit]


def group_order(row: dict[str, Any], totals: dict[tuple[str, ...], int]) -> tuple[Any, ...]:
    values = tuple((row["breakdown"] or {}).values())
    return (bool(values) and set(values) == {OTHER}, -totals.get(values, 0), values)


@pytest.mark.parametrize(
    ("filters", "breakdown", "limit"),
    [
        pytest.param([], [], 25, id="all events"),
        pytest.param([Filter("type", "eq", "purchase")], [], 25, id="purchasers"),
        pytest.param([Filter("props.ab.arm", "is_set")], ["props.ab.arm"], 25, id="by arm"),
        pytest.param([], ["device_model", "source"], 4, id="two properties, $other"),
    ],
)
async def test_active_users(
    insight_api: httpx.AsyncClient,
    insight_events: list[dict[str, Any]],
    filters: list[Filter],
    breakdown: list[str],
    limit: int,
) -> None:
    first, last = FIRST + timedelta(days=10), INSIGHT_LAST_DAY
    matching = [e for e in unique_events(insight_events) if all(holds(e, f) for f in filters)]

    def group(event: dict[str, Any]) -> tuple[str, ...]:
        return tuple(breakdown_value(event, name) for name in breakdown)

    in_range: dict[tuple[str, ...], set[str]] = {}
    for event in matching:
        if first <= day_of(event) <= last:
            in_range.setdefault(group(event), set()).add(event["user_id"])
    top = ranked(in_range, limit)
    folded = {g: g if g in top else (OTHER,) * len(breakdown) for g in in_range}
    activity: dict[tuple[str, ...], dict[date, set[str]]] = {}
    for event in matching:
        target = folded.get(group(event), (OTHER,) * len(breakdown))
        activity.setdefault(target, {}).setdefault(day_of(event), set()).add(event["user_id"])
    totals: dict[tuple[str, ...], int] = {}
    for g in in_range:
        totals.setdefault(folded[g], 0)
    for target in totals:
        totals[target] = len(set().union(*(in_range[g] for g in in_range if folded[g] == target)))
    expected = []
    for target in totals if breakdown else [()]:
        days = activity.get(target, {})
        for n in range((last - first).days + 1):
            day = first + timedelta(days=n)

            def users(width: int, day: date = day, days: dict[date, set[str]] = days) -> int:
                window = [days.get(day - timedelta(days=k), set()) for k in range(width)]
                return len(set().union(*window))

            expected.append({
                "day": day.isoformat(),
                "breakdown": dict(zip(breakdown, target, strict=True)) if breakdown else None,
                "dau": users(1), "wau": users(7), "mau": users(30),
            })  # fmt: skip
    expected.sort(key=lambda row: (row["day"], *group_order(row, totals)))
    body = {"from": first.isoformat(), "to": last.isoformat(), "filters": as_json(filters),
            "breakdown": breakdown, "breakdown_limit": limit}  # fmt: skip
    assert await post(insight_api, "/v1/insights/active-users", body) == expected


async def test_unfiltered_active_users_equal_the_fixed_endpoint(
    insight_api: httpx.AsyncClient,
) -> None:
    days = {"from": FIRST.isoformat(), "to": INSIGHT_LAST_DAY.isoformat()}
    insight = await post(insight_api, "/v1/insights/active-users", days)
    response = await insight_api.get(
        "/v1/metrics/active-users",
        params={"project": INSIGHT_PROJECT, **days},
        headers=INSIGHT_READ,
    )
    fixed = response.json()
    assert [(r["day"], r["dau"], r["wau"], r["mau"]) for r in insight] == [
        (r["day"], r["dau"], r["wau"], r["mau"]) for r in fixed
    ]
    assert any(r["dau"] for r in fixed)


@pytest.mark.parametrize(
    ("period", "start", "returning", "filters", "breakdown", "limit"),
    [
        pytest.param("day", None, None, [], [], 25, id="any event, days"),
        pytest.param("week", "session_start", "purchase", [], [], 25, id="start and return"),
        pytest.param("day", "page_view", None, [Filter("region", "neq", "us")], ["device_model"],
                     25, id="filtered, by device"),
        pytest.param("week", None, "video.play", [], ["os", "region"], 3, id="$other"),
    ],
)  # fmt: skip
async def test_retention(
    insight_api: httpx.AsyncClient,
    insight_events: list[dict[str, Any]],
    period: str,
    start: str | None,
    returning: str | None,
    filters: list[Filter],
    breakdown: list[str],
    limit: int,
) -> None:
    first, last = FIRST + timedelta(days=2), INSIGHT_LAST_DAY - timedelta(days=4)
    step = 7 if period == "week" else 1

    def period_of(day: date) -> date:
        return day - timedelta(days=day.weekday()) if period == "week" else day

    matching = [e for e in unique_events(insight_events) if all(holds(e, f) for f in filters)]
    firsts: dict[str, dict[str, Any]] = {}
    for event in sorted(matching, key=lambda e: (e["ts"], e["event_id"])):
        if start is None or event["type"] == start:
            firsts.setdefault(event["user_id"], event)
    returns: dict[str, set[date]] = {}
    for event in matching:
        if returning is None or event["type"] == returning:
            returns.setdefault(event["user_id"], set()).add(period_of(day_of(event)))
    members = {u: e for u, e in firsts.items() if first <= day_of(e) <= last}
    groups: dict[tuple[str, ...], set[str]] = {}
    for user, event in members.items():
        groups.setdefault(tuple(breakdown_value(event, n) for n in breakdown), set()).add(user)
    top = ranked(groups, limit)
    cohorts: dict[tuple[date, tuple[str, ...]], set[str]] = {}
    totals: dict[tuple[str, ...], int] = {}
    for user, event in members.items():
        values = tuple(breakdown_value(event, n) for n in breakdown)
        target = values if values in top else (OTHER,) * len(breakdown)
        cohorts.setdefault((period_of(day_of(event)), target), set()).add(user)
        totals[target] = totals.get(target, 0) + 1
    current = period_of(INSIGHT_TODAY)
    expected = []
    for (cohort, target), users in cohorts.items():
        started = (current - cohort).days // step + 1
        retained = [len(users)] + [
            sum(1 for u in users if cohort + timedelta(days=step * k) in returns.get(u, set()))
            for k in range(1, started)
        ]
        expected.append({
            "cohort": cohort.isoformat(),
            "breakdown": dict(zip(breakdown, target, strict=True)) if breakdown else None,
            "size": len(users), "retained": retained,
        })  # fmt: skip
    expected.sort(key=lambda row: (row["cohort"], *group_order(row, totals)))
    body = {"from": first.isoformat(), "to": last.isoformat(), "period": period,
            "start_event": start, "return_event": returning, "filters": as_json(filters),
            "breakdown": breakdown, "breakdown_limit": limit}  # fmt: skip
    got = await post(insight_api, "/v1/insights/retention", body)
    assert got == expected
    assert any(sum(row["retained"][1:]) for row in expected)
