"""Ad-hoc funnels with filters, a breakdown and time to convert (SPEC §4, §5.1) on both
engines against a brute-force reading of the spec over the events as sent."""

from __future__ import annotations

import statistics
from datetime import date, timedelta
from typing import Any

import pytest

from schemas.funnels import FunnelStep
from sinks.clickhouse import ClickHouse
from sinks.queries.funnel_insight import funnel_insight
from sinks.queries.properties import Filter, PropertyError, Slice
from tests.insight_data import INSIGHT_DAYS, INSIGHT_LAST_DAY, INSIGHT_PROJECT, unique_events
from tests.insight_reference import breakdown_value, day_of, exact_quantile, holds

FIRST = INSIGHT_LAST_DAY - timedelta(days=INSIGHT_DAYS - 1)
OTHER = "$other"


def step_matches(step: FunnelStep, event: dict[str, Any]) -> bool:
    if event["type"] != step.event:
        return False
    for key, wanted in step.where.items():
        value = event["props"].get(key)
        if isinstance(value, bool) != isinstance(wanted, bool) or value != wanted:
            return False
    return True


def expected(
    events: list[dict[str, Any]],
    steps: list[FunnelStep],
    window_s: int,
    first: date,
    last: date,
    filters: list[Filter],
    breakdown: list[str],
    limit: int,
) -> list[dict[str, Any]]:
    by_user: dict[str, list[dict[str, Any]]] = {}
    for event in unique_events(events):
        if all(holds(event, f) for f in filters):
            by_user.setdefault(event["user_id"], []).append(event)
    actors = []  # (breakdown value, shortest ms per reached step)
    for timeline in by_user.values():
        timeline.sort(key=lambda e: (e["ts"], e["event_id"]))
        starts = [e for e in timeline
                  if step_matches(steps[0], e) and first <= day_of(e) <= last]  # fmt: skip
        if not starts:
            continue
        best: dict[int, int] = {}
        for start in starts:
            t = start["ts"]
            best[1] = 0
            for k, step in enumerate(steps[1:], start=2):
                found = next((e["ts"] for e in timeline
                              if e["ts"] >= t and step_matches(step, e)), None)  # fmt: skip
                if found is None or found - start["ts"] > window_s * 1000:
                    break
                t = found
                best[k] = min(best.get(k, found - start["ts"]), found - start["ts"])
        value = breakdown_value(starts[0], breakdown[0]) if breakdown else ""
        actors.append((value, best))
    groups: dict[str, list[dict[int, int]]] = {}
    for value, best in actors:
        groups.setdefault(value, []).append(best)
    top = sorted(groups, key=lambda v: (-len(groups[v]), v))[:limit]
    folded: dict[str, list[dict[int, int]]] = {}
    for value, members in groups.items():
        folded.setdefault(value if value in top else OTHER, []).extend(members)
    result = []
    for value, members in folded.items():
        rows, first_users, previous = [], 0, 0
        for k, step in enumerate(steps, start=1):
            times = [m[k] / 1000 for m in members if k in m]
            users = len(times)
            if k == 1:
                first_users = previous = users
            rows.append({
                "event": step.event, "users": users,
                "conversion_from_start": users / first_users if first_users else 0.0,
                "conversion_from_previous": users / previous if previous else 0.0,
                "median_time_to_convert_s": exact_quantile(times, 0.5) if k > 1 and times
                else None,
                "avg_time_to_convert_s": statistics.fmean(times) if k > 1 and times else None,
            })  # fmt: skip
            previous = users
        result.append({"breakdown": {breakdown[0]: value} if breakdown else None, "steps": rows})
    result.sort(key=lambda g: (OTHER in (g["breakdown"] or {}).values(),
                               -g["steps"][0]["users"], str(g["breakdown"])))  # fmt: skip
    return result


STEPS = [FunnelStep("session_start"), FunnelStep("page_view"), FunnelStep("purchase")]
CASES = [
    pytest.param(STEPS, 3600 * 24, [], [], 25, id="three steps, a day"),
    pytest.param(STEPS[:2], 86400 * 2, [Filter("device_model", "neq", "quest2")], [], 25,
                 id="filtered, two days"),
    pytest.param([FunnelStep("page_view"), FunnelStep("purchase", {"price": 9.99})], 86400 * 3,
                 [], ["device_model"], 25, id="prop step, by device"),
    pytest.param([FunnelStep("page_view"), FunnelStep("page_view"), FunnelStep("gesture"),
                  FunnelStep("purchase")], 86400 * 7, [], ["props.ab.arm"], 1,
                 id="four steps, repeated step, $other"),
]  # fmt: skip


@pytest.mark.parametrize(("steps", "window", "filters", "breakdown", "limit"), CASES)
def test_funnels_answer_the_computation(
    insight_store: ClickHouse,
    insight_events: list[dict[str, Any]],
    steps: list[FunnelStep],
    window: int,
    filters: list[Filter],
    breakdown: list[str],
    limit: int,
) -> None:
    first, last = FIRST + timedelta(days=2), INSIGHT_LAST_DAY - timedelta(days=3)
    where = Slice(first, last, filters, breakdown, limit)
    got = funnel_insight(insight_store, INSIGHT_PROJECT, steps, window, where)
    want = expected(insight_events, steps, window, first, last, filters, breakdown, limit)
    assert [g["breakdown"] for g in got] == [g["breakdown"] for g in want]
    for g, w in zip(got, want, strict=True):
        assert [s["users"] for s in g["steps"]] == [s["users"] for s in w["steps"]]
        for got_step, want_step in zip(g["steps"], w["steps"], strict=True):
            assert got_step == pytest.approx(want_step), (g["breakdown"], want_step["event"])
    assert any(s["users"] for g in want for s in g["steps"][1:])


def test_a_funnel_breaks_down_by_one_property(insight_store: ClickHouse) -> None:
    where = Slice(FIRST, INSIGHT_LAST_DAY, breakdown=["os", "region"])
    with pytest.raises(PropertyError, match="one property"):
        funnel_insight(insight_store, INSIGHT_PROJECT, STEPS, 60, where)
