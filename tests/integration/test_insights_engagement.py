"""Lifecycle and stickiness (SPEC §4, §5.1) through HTTP on both engines against the events
as sent, with and without an event type, by day and by week."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import httpx
import pytest

from tests.insight_data import (
    INSIGHT_DAYS,
    INSIGHT_LAST_DAY,
    INSIGHT_PROJECT,
    INSIGHT_READ,
    unique_events,
)
from tests.insight_reference import day_of

FIRST = INSIGHT_LAST_DAY - timedelta(days=INSIGHT_DAYS - 1)


async def get(insight_api: httpx.AsyncClient, path: str, **params: str) -> Any:
    response = await insight_api.get(
        path, params={"project": INSIGHT_PROJECT, **params}, headers=INSIGHT_READ
    )
    assert response.status_code == 200, response.text
    return response.json()


def active_days(events: list[dict[str, Any]], event: str | None) -> dict[str, set[date]]:
    days: dict[str, set[date]] = {}
    for row in unique_events(events):
        if event is None or row["type"] == event:
            days.setdefault(row["user_id"], set()).add(day_of(row))
    return days


def period(day: date, interval: str) -> date:
    return day - timedelta(days=day.weekday()) if interval == "week" else day


@pytest.mark.parametrize(
    ("interval", "event", "first", "last"),
    [
        pytest.param("day", None, FIRST + timedelta(days=5), INSIGHT_LAST_DAY, id="days"),
        pytest.param("day", "purchase", FIRST + timedelta(days=1), FIRST + timedelta(days=12),
                     id="days, purchases"),
        pytest.param("week", None, FIRST + timedelta(days=7), INSIGHT_LAST_DAY, id="weeks"),
        pytest.param("week", "video.play", FIRST, INSIGHT_LAST_DAY, id="weeks, plays"),
    ],
)  # fmt: skip
async def test_lifecycle(
    insight_api: httpx.AsyncClient,
    insight_events: list[dict[str, Any]],
    interval: str,
    event: str | None,
    first: date,
    last: date,
) -> None:
    step = 7 if interval == "week" else 1
    users = active_days([e for e in insight_events if day_of(e) <= last], event)
    active = {user: {period(d, interval) for d in days} for user, days in users.items()}
    first_seen = {user: min(periods) for user, periods in active.items()}
    starts = sorted({period(first + timedelta(days=n), interval)
                     for n in range((last - first).days + 1)})  # fmt: skip
    expected = []
    for start in starts:
        before = start - timedelta(days=step)
        row = {"t": start.isoformat(), "new": 0, "returning": 0, "resurrecting": 0, "dormant": 0}
        for user, periods in active.items():
            if start in periods:
                if first_seen[user] == start:
                    row["new"] += 1
                elif before in periods:
                    row["returning"] += 1
                elif first_seen[user] < before:
                    row["resurrecting"] += 1
            elif before in periods:
                row["dormant"] += 1
        expected.append(row)
    params = {"from": first.isoformat(), "to": last.isoformat(), "interval": interval}
    if event:
        params["event"] = event
    assert await get(insight_api, "/v1/insights/lifecycle", **params) == expected
    assert sum(row["dormant"] + row["resurrecting"] for row in expected) > 0


@pytest.mark.parametrize("event", [None, "gesture"])
async def test_stickiness(
    insight_api: httpx.AsyncClient, insight_events: list[dict[str, Any]], event: str | None
) -> None:
    first, last = FIRST + timedelta(days=3), INSIGHT_LAST_DAY - timedelta(days=1)
    users = active_days([e for e in insight_events if first <= day_of(e) <= last], event)
    span = (last - first).days + 1
    expected = [
        {"days": k, "users": sum(1 for days in users.values() if len(days) == k)}
        for k in range(1, span + 1)
    ]
    params = {"from": first.isoformat(), "to": last.isoformat()}
    if event:
        params["event"] = event
    assert await get(insight_api, "/v1/insights/stickiness", **params) == expected


async def test_bad_interval_answers_400(insight_api: httpx.AsyncClient) -> None:
    response = await insight_api.get(
        "/v1/insights/lifecycle",
        params={"project": INSIGHT_PROJECT, "interval": "month"},
        headers=INSIGHT_READ,
    )
    assert response.status_code == 400
    assert "interval" in response.json()["detail"]
