"""Migrations and a round trip on both engines: clickhouse-server (18.16 here) and chDB."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from sinks.capabilities import Capabilities
from sinks.clickhouse import ClickHouse, ClickHouseError
from sinks.migrate import discover, migrate
from streams.processors.events import EVENTS_COLUMNS, EVENTS_TABLE


def event_row(event_id: str, user_id: str, ts: int, project: str = "p1") -> tuple[object, ...]:
    return (
        project,
        event_id,
        "page_view",
        user_id,
        ts,
        ts + 50,
        "s-1",
        "quest3",
        "3.0.0",
        "horizon",
        "eu",
        "native",
        '{"url": "https://example.test/it\'s"}',
        ["url"],
        ["https://example.test/it's"],
        [],
        [],
    )


def test_every_migration_applies_once_and_is_recorded(clickhouse: ClickHouse) -> None:
    applied = migrate(clickhouse)
    assert [m.version for m in applied] == [m.version for m in discover()]
    assert migrate(clickhouse) == []
    recorded = clickhouse.execute("SELECT version, name FROM schema_migrations ORDER BY version")
    assert recorded == [(m.version, m.name) for m in discover()]


def test_events_round_trip_derives_time_columns_and_dedups_on_key(clickhouse: ClickHouse) -> None:
    migrate(clickhouse)
    # Recent on purpose: the 90-day TTL drops older rows at the first merge.
    day_one = (int(time.time()) // 86_400 - 3) * 86_400_000 + 45_000_123
    first_day = datetime.fromtimestamp(day_one / 1000, UTC).date()
    rows = [event_row("e1", "u1", day_one), event_row("e2", "u2", day_one + 86_400_000)]
    clickhouse.insert(EVENTS_TABLE, EVENTS_COLUMNS, rows)
    # A client retry of e1, inserted as a separate block as the sink would.
    clickhouse.insert(EVENTS_TABLE, EVENTS_COLUMNS, [event_row("e1", "u1", day_one)])

    per_day = clickhouse.execute(
        "SELECT toString(day), uniqExact(event_id), uniqExact(user_hash) FROM events "
        "WHERE project = %(project)s GROUP BY day ORDER BY day",
        {"project": "p1"},
    )
    next_day = datetime.fromtimestamp(day_one / 1000 + 86_400, UTC).date()
    assert per_day == [(first_day.isoformat(), 1, 1), (next_day.isoformat(), 1, 1)]

    deduplicated = clickhouse.execute(
        "SELECT count() FROM events FINAL WHERE project = %(project)s", {"project": "p1"}
    )
    assert deduplicated == [(2,)]

    props, seconds = clickhouse.execute(
        "SELECT props, toUInt32(time) FROM events WHERE event_id = %(id)s LIMIT 1", {"id": "e2"}
    )[0]
    assert props == '{"url": "https://example.test/it\'s"}'
    assert seconds == (day_one + 86_400_000) // 1000


def test_parameters_are_escaped_not_pasted(clickhouse: ClickHouse) -> None:
    migrate(clickhouse)
    clickhouse.insert(
        EVENTS_TABLE, EVENTS_COLUMNS, [event_row("e1", "u1", int(time.time() * 1000))]
    )
    hostile = "p1' OR '1'='1"
    assert clickhouse.execute(
        "SELECT count() FROM events WHERE project = %(project)s", {"project": hostile}
    ) == [(0,)]


def test_ttl_clause_follows_server_version(clickhouse: ClickHouse) -> None:
    migrate(clickhouse)
    create = str(clickhouse.execute("SHOW CREATE TABLE events")[0][0])
    assert ("TTL" in create) is Capabilities(clickhouse.server_version()).supports_ttl


def test_errors_carry_the_engine_message(clickhouse: ClickHouse) -> None:
    with pytest.raises(ClickHouseError, match="no_such_table"):
        clickhouse.execute("SELECT * FROM no_such_table")
