"""Migration 0008 adds `os` and `source` to `events` on both engines (clickhouse-server
18.16 and chDB): rows stored before keep what they had and read "" there, the columns
sit where EVENTS_COLUMNS lists them, and a run stopped half-way completes."""

from __future__ import annotations

import time

from sinks.clickhouse import ClickHouse
from sinks.migrate import migrate
from sinks.migrations.steps import table_columns
from streams.processors.events import EVENTS_COLUMNS, EVENTS_TABLE

# The writer's columns as of migration 0008 (0009 added the props arrays after `props`).
COLUMNS_0008 = EVENTS_COLUMNS[: EVENTS_COLUMNS.index("props") + 1]
COLUMNS_BEFORE = [column for column in COLUMNS_0008 if column not in ("os", "source")]


def test_old_rows_keep_their_values_and_new_rows_carry_os_and_source(
    clickhouse: ClickHouse,
) -> None:
    migrate(clickhouse, up_to=7)
    # Recent on purpose: the events table's TTL drops old rows at the first merge.
    ts = int(time.time() * 1000) - 3_600_000
    old = ("p", "e-old", "page_view", "u1", ts, ts + 5, "s-1", "quest3", "3.0.0", "eu", "{}")
    clickhouse.insert(EVENTS_TABLE, COLUMNS_BEFORE, [old])

    assert [m.version for m in migrate(clickhouse, up_to=8)] == [8]

    new = ("p", "e-new", "gesture", "u2", ts, ts + 5, "", "quest pro", "3.1", "Android", "us",
           "posthog", '{"gesture":"pinch"}')  # fmt: skip
    clickhouse.insert(EVENTS_TABLE, COLUMNS_0008, [new])
    stored = clickhouse.execute(f"SELECT {', '.join(COLUMNS_0008)} FROM events ORDER BY event_id")
    assert stored == [
        new,
        ("p", "e-old", "page_view", "u1", ts, ts + 5, "s-1", "quest3", "3.0.0", "", "eu", "",
         "{}"),
    ]  # fmt: skip
    # The dimensions sit beside the others, in the writer's order.
    assert [c for c in table_columns(clickhouse, "events") if c in COLUMNS_0008] == list(
        COLUMNS_0008
    )


def test_a_run_stopped_after_the_first_column_adds_the_other(clickhouse: ClickHouse) -> None:
    migrate(clickhouse, up_to=7)
    clickhouse.execute("ALTER TABLE events ADD COLUMN os String DEFAULT '' AFTER app_version")

    assert [m.version for m in migrate(clickhouse, up_to=8)] == [8]

    assert {"os", "source"} <= set(table_columns(clickhouse, "events"))
