"""Deliver a processor's output to the stores, one attempt per call.

`write(output, written)` tries every part of an output (one table, or the series) that
`written` does not name yet, concurrently, and adds each part it stored. If a part fails
it raises `RetryAfter(seconds)`: the store's "not now". The caller (the pipeline core's
store step, streams/runner/store.py) pauses its source, waits, and calls again with the
same `written`, so only the missing parts are retried; it commits offsets only after
`write` returned. The wait backs off exponentially from `first_backoff_s` up to
`max_backoff_s` while the failures go on; meanwhile `health` reports the store as
failing, which `/ready` shows. Every table written here deduplicates by key, so a retry
after an ambiguous failure is safe.

Once every part is stored, the (project, day) pairs the batch's rows belong to are
recorded in `data_changes` (sinks/changes.py), as one more part: the query API drops its
cached answers for those days, so `write` returning means the batch shows in answers
within the API's poll interval.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any, NoReturn

from prometheus_client import Histogram

from schemas.output import ProcessorOutput, SeriesPoint, TableRows
from sinks.changes import DATA_CHANGES_TABLE, record_changes, touched_days
from sinks.clickhouse import ClickHouse
from sinks.influx import InfluxWriter
from sinks.queries.erasure import erase_users

log = logging.getLogger(__name__)

ERASURES = "erasures"  # the connection the erasures use (one per table otherwise)
SERIES = "series"  # the InfluxDB part of an output

SINK_BATCH_ROWS = Histogram(
    "sink_batch_rows",
    "Rows (or points) per sink write",
    ["sink", "target"],
    buckets=(1, 10, 100, 1_000, 5_000, 20_000, 100_000),
)
SINK_WRITE_SECONDS = Histogram(
    "sink_write_seconds",
    "Latency of one successful sink write",
    ["sink", "target"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


@dataclass
class SinkHealth:
    """Last outcome per store: "ok" or why not. Shared by all writers of a process."""

    status: dict[str, str] = field(default_factory=dict)

    def ok(self, store: str) -> None:
        self.status[store] = "ok"

    def failing(self, store: str, reason: str) -> None:
        self.status[store] = reason


class RetryAfter(Exception):
    """A store's "not now": nothing of the output is lost, try again in `seconds`."""

    def __init__(self, seconds: float, reason: str) -> None:
        super().__init__(f"retry after {seconds:.1f} s: {reason}")
        self.seconds = seconds
        self.reason = reason


class SinkWriter:
    """Writes each part of an output (one table, or the series) concurrently, each in a
    thread with a ClickHouse connection of its own: the stores take the parts in
    parallel, so a batch is stored in the time of its largest part."""

    def __init__(
        self,
        clickhouse: Callable[[], ClickHouse],
        influx: InfluxWriter | None,
        health: SinkHealth,
        *,
        first_backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
    ) -> None:
        self._clickhouse_factory = clickhouse
        self._clients: dict[str, ClickHouse] = {}  # table -> its connection
        self._influx = influx
        self.health = health
        self.first_backoff_s = first_backoff_s
        self.max_backoff_s = max_backoff_s
        self._failures = 0  # failed writes in a row: the backoff grows with them

    async def write(self, output: ProcessorOutput, written: set[str]) -> None:
        """Store the parts of `output` not in `written` (see the module docstring); raises
        `RetryAfter` if any failed. Never raises anything else for store errors."""
        if output.is_empty():
            return
        if output.erasures and ERASURES not in written:
            # Before the inserts: rows after an erasure are new.
            failure = await self._attempt(written, ERASURES, self._erase, output.erasures)
            if failure:
                self._retry_after([failure])
        parts = [
            self._attempt(written, table.table, self._insert, table)
            for table in output.tables
            if table.rows and table.table not in written
        ]
        if output.points and self._influx is not None and SERIES not in written:
            parts.append(self._attempt(written, SERIES, self._write_points, output.points))
        failures = [failure for failure in await asyncio.gather(*parts) if failure]
        if not failures and DATA_CHANGES_TABLE not in written:
            changes = touched_days(output.tables)
            if changes:
                failure = await self._attempt(
                    written, DATA_CHANGES_TABLE, self._record_changes, changes
                )
                if failure:
                    failures.append(failure)
        if failures:
            self._retry_after(failures)
        self._failures = 0

    def _retry_after(self, failures: list[str]) -> NoReturn:
        self._failures += 1
        delay = min(self.max_backoff_s, self.first_backoff_s * 2 ** (self._failures - 1))
        log.warning(
            "sink write failed (%d in a row), retrying in %.1fs: %s",
            self._failures,
            delay,
            "; ".join(failures),
        )
        raise RetryAfter(delay, failures[0])

    async def _attempt(
        self, written: set[str], name: str, write: Callable[[Any], None], part: Any
    ) -> str | None:
        """Write `part` once; None if stored (its name added to `written`), else why not."""
        try:
            await asyncio.to_thread(write, part)
        except Exception as exc:
            return f"{name}: {exc}"
        written.add(name)
        return None

    def _insert(self, table: TableRows) -> None:
        started = time.perf_counter()
        self._on_clickhouse(
            table.table,
            f"insert into {table.table}",
            lambda client: client.insert(table.table, table.columns, table.rows),
        )
        SINK_WRITE_SECONDS.labels("clickhouse", table.table).observe(time.perf_counter() - started)
        SINK_BATCH_ROWS.labels("clickhouse", table.table).observe(len(table.rows))

    def _erase(self, users: list[tuple[str, str]]) -> None:
        self._on_clickhouse(ERASURES, "erasure", lambda client: erase_users(client, users))

    def _record_changes(self, changes: set[tuple[str, date]]) -> None:
        self._on_clickhouse(
            DATA_CHANGES_TABLE, "data version", lambda client: record_changes(client, changes)
        )

    def _on_clickhouse(
        self, connection: str, what: str, call: Callable[[ClickHouse], Any]
    ) -> None:
        """`call` on the connection named `connection` (opened on first use); a failure
        marks ClickHouse failing and drops the connection, so the next attempt reconnects."""
        try:
            client = self._clients.get(connection)
            if client is None:
                client = self._clients[connection] = self._clickhouse_factory()
            call(client)
        except Exception as exc:
            self.health.failing("clickhouse", f"{what} failed: {exc}")
            self._clients.pop(connection, None)
            raise
        self.health.ok("clickhouse")

    def _write_points(self, points: list[SeriesPoint]) -> None:
        assert self._influx is not None
        started = time.perf_counter()
        try:
            self._influx.write(points)
        except Exception as exc:
            self.health.failing("influxdb", f"write failed: {exc}")
            raise
        self.health.ok("influxdb")
        SINK_WRITE_SECONDS.labels("influxdb", "series").observe(time.perf_counter() - started)
        SINK_BATCH_ROWS.labels("influxdb", "series").observe(len(points))
