"""Which days of a range a query may answer from stored per-day summaries, which it should
summarize and store now, and which it must compute from the raw events on this call only.

A day's summary is stored with V, the day's newest `data_changes` version read before it
was computed (0 when the day has none), and is valid while the day's newest version is
still V. Why that is exact:
- Every writer stores a batch's rows, then records its (project, day) pairs at its wall
  clock (sinks/changes.py). Writes recorded before V was read were stored before the
  summary's scan, so it holds them.
- A write recorded after V was read gets a version above V, which invalidates the
  summary (whether or not the scan saw its rows): a summary is only stored when
  V <= now - MARGIN_US, and a writer's clock lags this process's by less than MARGIN_US
  (the assumption the cache's change watcher makes, api/freshness.py). A day with a
  more recent write is computed live on this call, and stored by a later one.
- A day without any `data_changes` row (V = 0) was never written by a sink, or its
  first write is not recorded yet: that record will carry a version above 0. Rows
  inserted without a record (a benchmark's seed, a test's loader) are summarized as they
  are; a writer that never records would go unseen here as in the API cache.
- Erasures: `erase_user` records the user's days after deleting its rows and drops the
  project's summaries (sinks/queries/erasure.py). While `events` has a pending mutation
  (an 18.16 erasure not yet applied) nothing is stored: the scan could still hold the
  erased rows.
Two processes summarizing one day at once store two computations of the same V; readers
take the largest computation id per day, so each day's rows come from one computation.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Final

from sinks.changes import MARGIN_US, as_date, day_versions, new_version
from sinks.clickhouse import ClickHouse
from sinks.migrations.v0012_discovery_summary import SUMMARY_DAYS_TABLE
from sinks.queries.erasure import pending_mutations

EVENTS_KIND: Final = "events"


@dataclass(frozen=True, slots=True)
class Marker:
    day: date
    version: int
    computation: int


@dataclass(frozen=True, slots=True)
class DayPlan:
    summarized: dict[date, int]  # day -> computation to read
    to_store: dict[date, int]  # day -> the version to store its summary at
    live: list[date]  # computed from the raw events on this call only


def plan_days(
    days: Iterable[date],
    versions: Mapping[date, int],
    markers: Iterable[Marker],
    now_us: int,
    storable: bool,
) -> DayPlan:
    """Sort `days` by what a query does with them, given each day's newest version
    (absent: none), the stored summaries' markers, this process's clock and whether a
    summary may be stored now (no pending erasure)."""
    chosen: dict[date, int] = {}
    for marker in markers:
        if marker.version == versions.get(marker.day, 0):
            chosen[marker.day] = max(chosen.get(marker.day, 0), marker.computation)
    to_store: dict[date, int] = {}
    live: list[date] = []
    for day in days:
        if day in chosen:
            continue
        version = versions.get(day, 0)
        if storable and version <= now_us - MARGIN_US:
            to_store[day] = version
        else:
            live.append(day)
    return DayPlan(chosen, to_store, live)


def day_plan(ch: ClickHouse, project: str, kind: str, day_from: date, day_to: date) -> DayPlan:
    """`plan_days` for [day_from, day_to] of `project` as stored now."""
    versions = day_versions(ch, project, day_from, day_to)
    markers = [
        Marker(as_date(day), int(version), int(computation))
        for day, version, computation in ch.execute(
            f"SELECT day, version, computation FROM {SUMMARY_DAYS_TABLE} "
            "WHERE project = %(project)s AND kind = %(kind)s "
            "AND day >= toDate(%(day_from)s) AND day <= toDate(%(day_to)s)",
            {"project": project, "kind": kind, "day_from": day_from, "day_to": day_to},
        )
    ]
    days = [day_from + timedelta(days=n) for n in range((day_to - day_from).days + 1)]
    now = new_version()
    plan = plan_days(days, versions, markers, now, storable=True)
    if plan.to_store and pending_mutations(ch, ("events",)):
        return plan_days(days, versions, markers, now, storable=False)
    return plan


def new_computations(days: Iterable[date]) -> dict[date, int]:
    """A fresh computation id per day (random: concurrent processes never share one)."""
    return {day: secrets.randbits(63) + 1 for day in days}


def record_summaries(
    ch: ClickHouse,
    project: str,
    kind: str,
    versions: Mapping[date, int],
    computations: Mapping[date, int],
) -> None:
    """The markers of summaries whose rows are stored."""
    ch.insert(
        SUMMARY_DAYS_TABLE,
        ("project", "kind", "day", "version", "computation"),
        [(project, kind, day, versions[day], computations[day]) for day in computations],
    )
