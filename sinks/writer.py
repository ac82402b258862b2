"""Deliver a processor's output to the stores, retrying until they take it.

The caller (a stream agent) commits its offsets only after `write` returns, so a store
that is down slows the agent instead of losing data: attempts back off exponentially up to
`max_backoff_s` and go on until the store answers; meanwhile `health` reports the store as
failing, which the worker's `/ready` shows. Each part of an output (one table, or the
series) is written once and retried on its own: after a partial failure only the missing
parts are retried.
Every table written here deduplicates by key, so a retry after an ambiguous failure is safe.

Once every part is stored, the (project, day) pairs the batch's rows belong to are
recorded in `data_changes` (sinks/changes.py), retried the same way: the query API drops
its cached answers for those days, so `write` returning means the batch shows in answers
within the API's poll interval.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from prometheus_client import Histogram

from schemas.output import ProcessorOutput, SeriesPoint, TableRows
from sinks.changes import DATA_CHANGES_TABLE, record_changes, touched_days
from sinks.clickhouse import ClickHouse
from sinks.influx import InfluxWriter
from sinks.queries.erasure import erase_users

log = logging.getLogger(__name__)

ERASURES = "erasures"  # the connection the erasures use (one per table otherwise)

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

    async def write(self, output: ProcessorOutput) -> None:
        """Return when every part of `output` is stored. Never raises for store errors."""
        if output.is_empty():
            return
        if output.erasures:  # before the inserts: rows after an erasure are new
            await self._retrying(self._erase, output.erasures)
        parts = [self._retrying(self._insert, table) for table in output.tables if table.rows]
        if output.points and self._influx is not None:
            parts.append(self._retrying(self._write_points, output.points))
        await asyncio.gather(*parts)
        changes = touched_days(output.tables)
        if changes:
            await self._retrying(self._record_changes, changes)

    async def _retrying(self, write: Callable[[Any], None], part: Any) -> None:
        attempt = 0
        while True:
            try:
                await asyncio.to_thread(write, part)
                return
            except Exception as exc:
                attempt += 1
                delay = min(self.max_backoff_s, self.first_backoff_s * 2 ** (attempt - 1))
                log.warning(
                    "sink write failed (attempt %d), retrying in %.1fs: %s", attempt, delay, exc
                )
                await asyncio.sleep(delay)

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
