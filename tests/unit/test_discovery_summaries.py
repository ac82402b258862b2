"""Which days schema discovery reads from stored summaries, summarizes now, or counts
live (sinks/queries/summaries.py `plan_days`)."""

from __future__ import annotations

from datetime import date, timedelta

from sinks.changes import MARGIN_US
from sinks.queries.summaries import Marker, plan_days

DAY = date(2026, 11, 1)
NOW = 10 * MARGIN_US
DAYS = [DAY + timedelta(days=n) for n in range(4)]


def test_a_day_without_a_version_and_summary_is_summarized_at_version_zero() -> None:
    plan = plan_days(DAYS[:1], {}, [], NOW, storable=True)
    assert (plan.summarized, plan.to_store, plan.live) == ({}, {DAY: 0}, [])


def test_a_summary_is_read_while_the_day_keeps_its_version() -> None:
    markers = [Marker(DAYS[0], 0, 7), Marker(DAYS[1], 500, 8)]
    plan = plan_days(DAYS[:2], {DAYS[1]: 500}, markers, NOW, storable=True)
    assert (plan.summarized, plan.to_store, plan.live) == ({DAYS[0]: 7, DAYS[1]: 8}, {}, [])


def test_a_newer_version_invalidates_the_summary() -> None:
    settled = NOW - MARGIN_US
    plan = plan_days(DAYS[:1], {DAY: settled}, [Marker(DAY, 500, 8)], NOW, storable=True)
    assert (plan.summarized, plan.to_store, plan.live) == ({}, {DAY: settled}, [])


def test_a_day_written_within_the_margin_is_counted_live() -> None:
    recent = NOW - MARGIN_US + 1
    plan = plan_days(DAYS[:1], {DAY: recent}, [Marker(DAY, 500, 8)], NOW, storable=True)
    assert (plan.summarized, plan.to_store, plan.live) == ({}, {}, [DAY])


def test_nothing_is_stored_while_an_erasure_is_pending_but_valid_summaries_are_read() -> None:
    plan = plan_days(DAYS[:2], {}, [Marker(DAYS[0], 0, 3)], NOW, storable=False)
    assert (plan.summarized, plan.to_store, plan.live) == ({DAYS[0]: 3}, {}, [DAYS[1]])


def test_concurrent_computations_of_a_day_resolve_to_the_largest_id() -> None:
    markers = [Marker(DAY, 0, 9), Marker(DAY, 0, 4), Marker(DAY, 1, 99)]
    plan = plan_days(DAYS[:1], {}, markers, NOW, storable=True)
    assert plan.summarized == {DAY: 9}, "the marker of another version is ignored"
