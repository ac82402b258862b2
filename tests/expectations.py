"""Independent computations of the SPEC §4 numbers, written from the definitions, to
compare the pipeline's answers with."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, timedelta

from schemas.events import EventRecord
from streams.processors.activity import utc_day


def _events_of(records: Iterable[EventRecord], project: str) -> Iterable[tuple[str, int]]:
    for record in records:
        if record.project == project:
            for event in record.events:
                yield event.user_id, event.ts


def expected_active(
    records: Iterable[EventRecord], day_from: date, day_to: date, project: str = "p"
) -> list[dict[str, object]]:
    active: dict[date, set[str]] = {}
    for user_id, ts in _events_of(records, project):
        active.setdefault(utc_day(ts), set()).add(user_id)
    out = []
    day = day_from
    while day <= day_to:

        def window(n: int, end: date = day) -> int:
            return len(set().union(*(active.get(end - timedelta(days=k), set()) for k in range(n))))

        dau, wau, mau = window(1), window(7), window(30)
        out.append(
            {
                "day": day.isoformat(),
                "dau": dau,
                "wau": wau,
                "mau": mau,
                "stickiness": dau / mau if mau else 0.0,
            }
        )
        day += timedelta(days=1)
    return out


def expected_retention(
    records: Iterable[EventRecord],
    day_from: date,
    day_to: date,
    period: str,
    today: date,
    project: str = "p",
) -> list[dict[str, object]]:
    days_by_user: dict[str, set[date]] = {}
    for user_id, ts in _events_of(records, project):
        days_by_user.setdefault(user_id, set()).add(utc_day(ts))

    def period_start(day: date) -> date:
        return day if period == "day" else day - timedelta(days=day.weekday())

    step = 1 if period == "day" else 7
    cohorts: dict[date, list[set[date]]] = {}
    for days in days_by_user.values():
        first = min(days)
        if day_from <= first <= day_to:
            cohorts.setdefault(period_start(first), []).append({period_start(d) for d in days})
    out = []
    for cohort in sorted(cohorts):
        started = (period_start(today) - cohort).days // step + 1
        retained = [
            sum(1 for periods in cohorts[cohort] if cohort + timedelta(days=k * step) in periods)
            for k in range(started)
        ]
        out.append({"cohort": cohort.isoformat(), "size": retained[0], "retained": retained})
    return out


def expected_event_counts(
    records: Iterable[EventRecord], project: str
) -> dict[tuple[str, str], int]:
    """(UTC day, type) → distinct events, each event_id counted once."""
    seen: dict[str, tuple[str, str]] = {}
    for record in records:
        if record.project == project:
            for event in record.events:
                seen.setdefault(event.event_id, (utc_day(event.ts).isoformat(), event.type))
    counts: dict[tuple[str, str], int] = {}
    for key in seen.values():
        counts[key] = counts.get(key, 0) + 1
    return counts
