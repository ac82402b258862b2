"""Migration 0009 gives `events` the flattened props arrays and backfills the rows stored
before it, on both engines: every event keeps one row, with the arrays its props give."""

from __future__ import annotations

import time

import orjson

from schemas.props import flatten_props
from sinks.capabilities import Capabilities
from sinks.clickhouse import ClickHouse
from sinks.migrate import migrate
from sinks.migrations import v0009_event_props as v0009
from sinks.migrations.steps import table_columns

DAY_MS = 86_400_000
COLUMNS = ("project", "event_id", "type", "user_id", "ts", "received_at", "props")


def old_rows() -> list[tuple[object, ...]]:
    base = (int(time.time() * 1000) // DAY_MS - 3) * DAY_MS + 3_600_000
    props = [
        {},
        {"url": "https://x/it's", "n": 2},
        {"hw": {"gpu": {"tier": 3}}, "ok": True, "l": [1, "a"]},
        {"price": 2.5, "nothing": None},
    ]
    return [
        ("p", f"e{n}", "page_view", f"u{n % 3}", base + (n % 3) * DAY_MS + n, 0,
         orjson.dumps(props[n % len(props)]).decode())
        for n in range(24)
    ]  # fmt: skip


def arrays(clickhouse: ClickHouse) -> dict[str, tuple[object, ...]]:
    rows = clickhouse.execute(
        "SELECT event_id, props_keys, props_values, props_num_keys, props_num_values "
        "FROM events"
    )
    return {str(row[0]): tuple(list(column) for column in row[1:]) for row in rows}


def test_rows_stored_before_get_their_props_arrays(clickhouse: ClickHouse) -> None:
    migrate(clickhouse, up_to=8)
    assert "props_keys" not in table_columns(clickhouse, "events")
    rows = old_rows()
    clickhouse.insert("events", COLUMNS, rows)
    clickhouse.insert("events", COLUMNS, rows[:3])  # replayed copies

    assert [m.version for m in migrate(clickhouse, up_to=9)] == [9]

    expected = {
        str(row[1]): tuple(list(part) for part in flatten_props(orjson.loads(str(row[6]))))
        for row in rows
    }
    assert arrays(clickhouse) == expected, "one row per event, with its arrays"
    assert clickhouse.execute("SELECT count(), uniqExact(event_id) FROM events") == [(24, 24)]
    # Run again (a deploy re-running it): nothing left to do, nothing changes.
    v0009.apply(clickhouse, Capabilities(clickhouse.server_version()))
    assert arrays(clickhouse) == expected


def test_fresh_database_has_the_columns(clickhouse: ClickHouse) -> None:
    migrate(clickhouse)
    columns = table_columns(clickhouse, "events")
    for name, _ in v0009.NEW_COLUMNS:
        assert name in columns
