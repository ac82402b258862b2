"""Sessions (SPEC §4, §5.1) through HTTP on both engines against the events as sent:
session ids and 30-minute gaps, first-event dimensions, filters, breakdowns with $other."""

from __future__ import annotations

import itertools
import statistics
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest

from sinks.clickhouse import ClickHouse
from sinks.migrate import migrate
from sinks.queries.properties import Filter, Slice
from sinks.queries.sessions import sessions
from tests.insight_data import (
    INSIGHT_DAYS,
    INSIGHT_LAST_DAY,
    INSIGHT_PROJECT,
    INSIGHT_READ,
    store,
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


# ------------------------------------------------------------------ the summary at the edges

EDGE_PROJECT = "p_edges"


def edge_events(first: date, last: date) -> list[list[dict[str, Any]]]:
    """Sessions at the edges of [first, last], in the inserts they arrive in: spanning
    midnight, cut by the read window, copies of an event in separate inserts, two events
    of one time (the smaller id is first), one id shared by two users, and events without
    a session id."""

    def at(day: date, hour: int, minute: int) -> int:
        return int(datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC).timestamp()
                   * 1000)  # fmt: skip

    def event(eid: str, user: str, sid: str, ts: int, device: str = "quest3",
              kind: str = "page_view") -> dict[str, Any]:  # fmt: skip
        return {"event_id": eid, "type": kind, "user_id": user, "ts": ts, "session_id": sid,
                "device_model": device, "app_version": "3.0.0", "os": "horizon",
                "region": "eu", "source": "native", "props": {}}  # fmt: skip

    before, after = first - timedelta(days=1), last + timedelta(days=1)
    mid = first + timedelta(days=1)
    copied_first = event("c1", "u3", "s-copy", at(mid, 10, 0), "pico4", "session_start")
    later_of_two = event("t-b", "u2", "s-tie", at(mid, 8, 0), "quest2")
    one_insert = [
        event("a1", "u1", "s-before", at(before, 23, 50)),  # starts before first: left out
        event("a2", "u1", "s-before", at(first, 0, 10)),
        event("b1", "u1", "s-cut", at(first - timedelta(days=2), 23, 55)),  # outside the read
        event("b2", "u1", "s-cut", at(first, 0, 5), "pico4"),  # window: a bounce on first
        event("d1", "u2", "s-late", at(last, 23, 40), "vision_pro"),  # ends the day after
        event("d2", "u2", "s-late", at(after, 0, 15)),
        event("d3", "u2", "s-late", at(after, 0, 20)),
        event("f1", "u2", "s-beyond", at(last, 23, 59)),  # its second event is past the window
        event("f2", "u2", "s-beyond", at(last + timedelta(days=2), 0, 1)),
        event("g1", "u1", "shared", at(mid, 9, 0)),
        event("g2", "u3", "shared", at(mid, 9, 30), "pico4"),
        event("g3", "u1", "shared", at(mid, 11, 0)),
        event("n1", "u3", "", at(before, 23, 45)),  # without an id: one session before first
        event("n2", "u3", "", at(first, 0, 5)),
        event("n3", "u3", "", at(first, 12, 0), "quest2"),  # then two 40 minutes apart
        event("n4", "u3", "", at(first, 12, 10)),
        event("n5", "u3", "", at(first, 12, 50)),
        later_of_two,
        copied_first,
        event("c2", "u3", "s-copy", at(mid, 10, 5)),
    ]
    return [
        one_insert,
        [copied_first, event("t-a", "u2", "s-tie", at(mid, 8, 0), "quest3")],
        [copied_first, later_of_two, one_insert[-1]],
    ]


SummaryRows = dict[tuple[str, str, str], tuple[int, int, int]]


def summary_rows(ch: ClickHouse, project: str) -> SummaryRows:
    """session_summary merged per (day, user, session id): (first ts, last ts, events)."""
    users = dict(ch.execute("SELECT DISTINCT user_hash, user_id FROM events"))
    ids = dict(
        ch.execute("SELECT DISTINCT cityHash64(user_hash, session_id), session_id FROM events")
    )
    rows = ch.execute(
        "SELECT toString(day), user_hash, session_key, minMerge(min_ts), maxMerge(max_ts), "
        "arrayUniq(groupArrayMerge(event_keys)) FROM session_summary WHERE project = %(p)s "
        "GROUP BY day, user_hash, session_key",
        {"p": project},
    )
    return {
        (str(day), users[user], ids[sid]): (int(low), int(high), int(n))
        for day, user, sid, low, high, n in rows
    }


def expected_summary(inserts: list[list[dict[str, Any]]]) -> SummaryRows:
    parts: dict[tuple[str, str, str], dict[str, int]] = {}
    for event in unique_events([e for chunk in inserts for e in chunk]):
        if event["session_id"]:
            key = (day_of(event).isoformat(), event["user_id"], event["session_id"])
            parts.setdefault(key, {})[event["event_id"]] = event["ts"]
    return {key: (min(ts.values()), max(ts.values()), len(ts)) for key, ts in parts.items()}


@pytest.mark.parametrize(
    ("filters", "breakdown", "later"),
    [
        pytest.param([], [], 0, id="summary"),
        pytest.param([], [], 2, id="summary, no event without an id read"),
        pytest.param([], ["device_model"], 0, id="summary, by the first event's device"),
        pytest.param([Filter("type", "neq", "session_start")], ["region"], 0,
                     id="summary, filtered"),
        pytest.param([Filter("props.nothing", "is_not_set")], [], 0, id="raw events"),
        pytest.param([Filter("props.nothing", "is_not_set")], ["device_model"], 0,
                     id="raw events, by device"),
    ],
)  # fmt: skip
def test_sessions_at_the_edges(
    clickhouse: ClickHouse, filters: list[Filter], breakdown: list[str], later: int
) -> None:
    """`later`: days the range starts after the edge dataset's first day."""
    migrate(clickhouse)
    first = datetime.now(UTC).date() - timedelta(days=10)
    last = first + timedelta(days=3)
    inserts = edge_events(first, last)
    for chunk in inserts:
        store(clickhouse, EDGE_PROJECT, chunk)
    assert summary_rows(clickhouse, EDGE_PROJECT) == expected_summary(inserts)

    start = first + timedelta(days=later)
    got = sessions(clickhouse, EDGE_PROJECT, Slice(start, last, filters, breakdown))
    all_events = [e for chunk in inserts for e in chunk]
    want = expected_rows(all_events, start, last, filters, breakdown, 25)
    assert want
    assert [(r["day"], r["breakdown"], r["sessions"], r["users"]) for r in got] == [
        (r["day"], r["breakdown"], r["sessions"], r["users"]) for r in want
    ]
    for g, w in zip(got, want, strict=True):
        for field in ("duration_s_avg", "duration_s_median", "events_per_session", "bounce_rate"):
            assert g[field] == pytest.approx(w[field]), (g["day"], g["breakdown"], field)
