"""Data versions: the sinks say which (project, day) they stored rows for; the query API
drops cached answers that cover those days (SPEC §5: a stored event shows in every answer
covering its day within the freshness target, late events for closed days included).

Writers (the worker's SinkWriter, `quip up`'s runner) call `record_changes` after every
part of a batch is stored, with the pairs `touched_days` finds in the batch's rows. The
API polls `changes_since` (api/freshness.py). A version is the writer's wall clock in
microseconds: versions of one writer only grow, and readers re-read a margin behind the
newest version they saw, so writers whose clocks differ by less than that margin, or whose
inserts become visible out of order, are not missed.

A failed `record_changes` raises like any insert: the writer retries it before the batch
counts as stored, so a committed batch always has its changes recorded.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from datetime import date, timedelta
from typing import Any, Final, Protocol

from sinks.clickhouse import ClickHouse

DATA_CHANGES_TABLE: Final = "data_changes"
# How far writers' clocks (and the visibility of their inserts) may lag one another:
# readers of versions re-read this far behind the newest they saw (api/freshness.py), and
# a summary is only stored for a day whose newest version is this old (sinks/queries/
# summaries.py), so any later write of the day records a higher version.
MARGIN_US: Final = 60_000_000
DAY_MS: Final = 86_400_000
_EPOCH: Final = date(1970, 1, 1)

# Where a table's rows say their day: a Date column, else epoch milliseconds. Tables
# without either (none today) are left out, and their writes refresh nothing.
_DAY_COLUMNS: Final = ("day", "start_day")
_MS_COLUMNS: Final = ("ts", "first_ts")


class Rows(Protocol):
    table: str
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]


def touched_days(tables: Iterable[Rows]) -> set[tuple[str, date]]:
    """The (project, UTC day) of every row of `tables` that has a project and a day."""
    touched: set[tuple[str, date]] = set()
    for table in tables:
        if not table.rows or "project" not in table.columns:
            continue
        project = table.columns.index("project")
        day_column = next((c for c in _DAY_COLUMNS if c in table.columns), None)
        if day_column is not None:
            index = table.columns.index(day_column)
            touched.update({(row[project], row[index]) for row in table.rows})
            continue
        ms_column = next((c for c in _MS_COLUMNS if c in table.columns), None)
        if ms_column is None:
            continue
        index = table.columns.index(ms_column)
        day_numbers = {(row[project], row[index] // DAY_MS) for row in table.rows}
        touched.update((p, _EPOCH + timedelta(days=n)) for p, n in day_numbers)
    return touched


def new_version() -> int:
    return time.time_ns() // 1000


def record_changes(
    clickhouse: ClickHouse, changes: Iterable[tuple[str, date]], version: int | None = None
) -> None:
    """One insert of `changes` at `version` (default: now). Raises what the insert raises."""
    stamp = new_version() if version is None else version
    rows = [(project, day, stamp) for project, day in changes]
    if rows:
        clickhouse.insert(DATA_CHANGES_TABLE, ("project", "day", "version"), rows)


def changes_since(clickhouse: ClickHouse, version: int) -> Sequence[tuple[str, date, int]]:
    """(project, day, newest version) of every pair changed at a version above `version`."""
    rows = clickhouse.execute(
        f"SELECT project, day, max(version) FROM {DATA_CHANGES_TABLE} "
        "WHERE version > %(version)s GROUP BY project, day",
        {"version": version},
    )
    return [(str(project), as_date(day), int(stamp)) for project, day, stamp in rows]


def day_versions(
    clickhouse: ClickHouse, project: str, day_from: date, day_to: date
) -> dict[date, int]:
    """The newest version of every day of [day_from, day_to] of `project` that has one."""
    rows = clickhouse.execute(
        f"SELECT day, max(version) FROM {DATA_CHANGES_TABLE} WHERE project = %(project)s "
        "AND day >= toDate(%(day_from)s) AND day <= toDate(%(day_to)s) GROUP BY day",
        {"project": project, "day_from": day_from, "day_to": day_to},
    )
    return {as_date(day): int(stamp) for day, stamp in rows}


def as_date(value: object) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))
