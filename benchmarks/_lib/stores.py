"""The stores a benchmark run creates for itself, and their removal."""

from __future__ import annotations

import contextlib

from benchmarks._lib.influx import influx_query
from sinks.clickhouse import ServerClickHouse


def drop_run_databases(clickhouse_url: str, influx_url: str, database: str) -> None:
    """Drop a run's ClickHouse database and InfluxDB database; errors are ignored (the
    run's results are already measured)."""
    with contextlib.suppress(Exception):
        ServerClickHouse(f"{clickhouse_url.rstrip('/')}/default").execute(
            f"DROP DATABASE IF EXISTS {database}"
        )
    with contextlib.suppress(Exception):
        influx_query(influx_url, f'DROP DATABASE "{database}"')
