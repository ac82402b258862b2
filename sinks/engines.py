"""Pick the ClickHouse engine the settings describe."""

from __future__ import annotations

from pathlib import Path

from common.settings import Settings
from sinks.clickhouse import ClickHouse, EmbeddedClickHouse, ServerClickHouse


def chdb_path(settings: Settings) -> Path:
    return settings.data_dir / "chdb"


def open_clickhouse(settings: Settings, *, embedded: bool) -> ClickHouse:
    if embedded:
        return EmbeddedClickHouse(chdb_path(settings))
    return ServerClickHouse(settings.clickhouse_url)
