"""Sessions (SPEC §4, §5.1) through HTTP on both engines against the events as sent:
session ids and 30-minute gaps, first-event dimensions, filters, breakdowns with $other."""

from __future__ import annotations

import itertools
import statistics
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
    unique_events,
)
from tests.insight_reference import breakdown_value, day_of, exact_quantile, holds

FIRST = INSIGHT_LAST_DAY - timedelta(days=INSIGHT_DAYS - 1)
GAP_MS = 30 * 60 * 1000
OTHER = "$other"


Session = list[dict[str, Any]]


def sessions_of(events: list[dict[str, Any]], first: date, last: date) -> list[Session]:
    window = [e for e in unique_events(events)
              if first - timedelta(days=1) <= day_of(e) <= last + timedelta(days=1)]  # fmt: skip
    found: list[list[dict[str, Any]]] = []
    by_id: dict[tuple[str, str], list[dict[str, Any]]] = {}
    by_user: dict[str, list[dict[str, Any]]] = {}
    for event in window:
        if event["session_id"]:
            by_id.setdefault((event["user_id"], event["session_id"]), []).append(event)
        else:
            by_user.setdefault(event["user_id"], []).append(event)
    found.extend(by_id.values())
    for timeline in by_user.values():
        timeline.sort(key=lambda e: (e["ts"], e["event_id"]))
        current = [timeline[0]]
        for previous, event in itertools.pairwise(timeline):
            if event["ts"] - previous["ts"] >= GAP_MS:
                found.append(current)
                current = []
            current.append(event)
        found.append(current)
    return [
        sorted(session, key=lambda e: (e["ts"], e["event_id"]))
        for session in found
        if first <= day_of(min(session, key=lambda e: (e["ts"], e["event_id"]))) <= last
    ]


def expected_rows(
    events: list[dict[str, Any]],
    first: date,
    last: date,
    filters: list[Filter],
    breakdown: list[str],
    limit: int,
) -> list[dict[str, Any]]:
    kept = [s for s in sessions_of(events, first, last) if all(holds(s[0], f) for f in filters)]

    def values(session: list[dict[str, Any]]) -> tuple[str, ...]:
        return tuple(breakdown_value(session[0], name) for name in breakdown)

    counts: dict[tuple[str, ...], int] = {}
    for session in kept:
        counts[values(session)] = counts.get(values(session), 0) + 1
    top = sorted(counts, key=lambda v: (-counts[v], v))[:limit]
    groups: dict[tuple[str, tuple[str, ...]], list[list[dict[str, Any]]]] = {}
    for session in kept:
        group = values(session) if values(session) in top else (OTHER,) * len(breakdown)
        groups.setdefault((day_of(session[0]).isoformat(), group), []).append(session)
    totals: dict[tuple[str, ...], int] = {}
    for (_, group), members in groups.items():
        totals[group] = totals.get(group, 0) + len(members)
    rows = []
    for (day, group), members in groups.items():
        durations = [(s[-1]["ts"] - s[0]["ts"]) / 1000 for s in members]
        rows.append({
            "day": day,
            "breakdown": dict(zip(breakdown, group, strict=True)) if breakdown else None,
            "sessions": len(members),
            "users": len({s[0]["user_id"] for s in members}),
            "duration_s_avg": statistics.fmean(durations),
            "duration_s_median": exact_quantile(durations, 0.5),
            "events_per_session": statistics.fmean(len(s) for s in members),
            "bounce_rate": sum(1 for s in members if len(s) == 1) / len(members),
        })  # fmt: skip
    rows.sort(key=lambda r: (r["day"], bool(breakdown) and set(r["breakdown"].values()) == {OTHER},
                             -totals[tuple((r["breakdown"] or {}).values())],
                             tuple((r["breakdown"] or {}).values())))  # fmt: skip
    return rows


@pytest.mark.parametrize(
    ("filters", "breakdown", "limit"),
    [
        pytest.param([], [], 25, id="all sessions"),
        pytest.param([Filter("device_model", "neq", "quest2")], ["device_model"], 25,
                     id="filtered, by device"),
        pytest.param([], ["os", "region"], 3, id="two properties, $other"),
        pytest.param([Filter("type", "eq", "session_start")], ["props.ab.arm"], 1,
                     id="started by session_start, nested prop, limit 1"),
    ],
)  # fmt: skip
async def test_sessions_answer_the_computation(
    insight_api: httpx.AsyncClient,
    insight_events: list[dict[str, Any]],
    filters: list[Filter],
    breakdown: list[str],
    limit: int,
) -> None:
    first, last = FIRST + timedelta(days=2), INSIGHT_LAST_DAY - timedelta(days=2)
    body = {
        "project": INSIGHT_PROJECT,
        "from": first.isoformat(),
        "to": last.isoformat(),
        "filters": [{"property": f.property, "op": f.op, "value": f.value} for f in filters],
        "breakdown": breakdown,
        "breakdown_limit": limit,
    }
    response = await insight_api.post("/v1/insights/sessions", json=body, headers=INSIGHT_READ)
    assert response.status_code == 200, response.text
    got = response.json()
    want = expected_rows(insight_events, first, last, filters, breakdown, limit)
    assert [(r["day"], r["breakdown"], r["sessions"], r["users"]) for r in got] == [
        (r["day"], r["breakdown"], r["sessions"], r["users"]) for r in want
    ]
    for g, w in zip(got, want, strict=True):
        for field in ("duration_s_avg", "duration_s_median", "events_per_session", "bounce_rate"):
            assert g[field] == pytest.approx(w[field]), (g["day"], g["breakdown"], field)
    assert any(r["bounce_rate"] > 0 for r in want)
    assert any(r["events_per_session"] > 1 for r in want)
