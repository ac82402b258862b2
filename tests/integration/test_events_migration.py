"""Migration 0006 re-sorts `events` by (project, type, event_id) on both engines, keeping
every row, on an empty table, a filled one, and after a run stopped half-way."""

from __future__ import annotations

import time
from datetime import date

from sinks.capabilities import Capabilities
from sinks.clickhouse import ClickHouse
from sinks.migrate import discover, migrate
from sinks.migrations import v0006_events_by_type as v0006
from sinks.queries.events import event_counts

DAY_MS = 86_400_000
ALL_COLUMNS = v0006.COLUMNS


def migrate_up_to(clickhouse: ClickHouse, last: int) -> None:
    """The schema as it was before migration `last + 1`, recorded as applied."""
    migrate_partially = [m for m in discover() if m.version <= last]
    caps = Capabilities(clickhouse.server_version())
    clickhouse.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version UInt32, name String, applied_at DateTime('UTC')) "
        "ENGINE = MergeTree() ORDER BY version"
    )
    for migration in migrate_partially:
        for statement in migration.statements(caps):
            clickhouse.execute(statement)
        record = [(migration.version, migration.name)]
        clickhouse.insert("schema_migrations", ["version", "name"], record)


def sorting_key(clickhouse: ClickHouse, table: str = "events") -> str | None:
    rows = clickhouse.execute(
        "SELECT sorting_key FROM system.tables WHERE database = %(db)s AND name = %(t)s",
        {"db": clickhouse.database, "t": table},
    )
    return str(rows[0][0]) if rows else None


def fill(clickhouse: ClickHouse) -> list[tuple[object, ...]]:
    """Rows over three days (recent: the TTL drops old ones), with a duplicated event."""
    base = (int(time.time() * 1000) // DAY_MS - 3) * DAY_MS + 3_600_000
    rows = []
    for n in range(30):
        ts = base + (n % 3) * DAY_MS + n
        kind = ("session_start", "page_view", "gesture")[n % 3]
        props = '{"page":"l\'ib \\"q\\" é"}' if n == 4 else "{}"
        rows.append(
            ("p", f"e{n}", kind, f"u{n % 5}", ts, ts + 5, "s", "quest3", "1.0", "eu", props)
        )
    rows.append(rows[4])  # a replayed copy
    columns = ALL_COLUMNS.split(", ")[:11]
    clickhouse.insert("events", columns, rows)
    return stored(clickhouse)


def stored(clickhouse: ClickHouse) -> list[tuple[object, ...]]:
    return sorted(clickhouse.execute(f"SELECT {ALL_COLUMNS} FROM events"), key=repr)


def test_fresh_database_gets_the_type_sorted_events(clickhouse: ClickHouse) -> None:
    migrate(clickhouse)
    assert sorting_key(clickhouse) == v0006.SORTING_KEY
    assert sorting_key(clickhouse, v0006.OLD_TABLE) is None
    assert clickhouse.execute("SELECT count() FROM events") == [(0,)]


def test_filled_events_move_to_the_new_key_with_every_row(clickhouse: ClickHouse) -> None:
    migrate_up_to(clickhouse, 5)
    assert sorting_key(clickhouse) == "project, event_id"
    before = fill(clickhouse)
    days = sorted(date.fromisoformat(str(row[12])) for row in before)
    first, last = days[0], days[-1]
    counts_before = event_counts(clickhouse, "p", first, last)

    assert [m.version for m in migrate(clickhouse, up_to=6)] == [6]

    assert sorting_key(clickhouse) == v0006.SORTING_KEY
    assert sorting_key(clickhouse, v0006.OLD_TABLE) is None
    assert sorting_key(clickhouse, v0006.NEW_TABLE) is None
    assert stored(clickhouse) == before
    assert event_counts(clickhouse, "p", first, last) == counts_before
    # Still a ReplacingMergeTree on a key that holds every copy of an event.
    clickhouse.execute("OPTIMIZE TABLE events FINAL")
    assert clickhouse.execute("SELECT count(), uniqExact(event_id) FROM events") == [(30, 30)]


def test_a_run_stopped_after_the_swap_resumes(clickhouse: ClickHouse) -> None:
    migrate_up_to(clickhouse, 5)
    before = fill(clickhouse)
    caps = Capabilities(clickhouse.server_version())
    # Stopped after the swap and one day's copy, before that day's partition was dropped.
    clickhouse.execute(v0006.create_statement(caps, v0006.NEW_TABLE))
    clickhouse.execute(f"RENAME TABLE events TO {v0006.OLD_TABLE}, {v0006.NEW_TABLE} TO events")
    first_day = min((row[12] for row in before), key=str)
    clickhouse.execute(
        f"INSERT INTO events ({ALL_COLUMNS}) SELECT {ALL_COLUMNS} FROM {v0006.OLD_TABLE} "
        "WHERE day = %(day)s",
        {"day": first_day},
    )

    migrate(clickhouse, up_to=6)

    assert sorting_key(clickhouse) == v0006.SORTING_KEY
    assert sorting_key(clickhouse, v0006.OLD_TABLE) is None
    # The day copied twice holds identical copies, collapsed by the engine.
    assert set(stored(clickhouse)) == set(before)
    clickhouse.execute("OPTIMIZE TABLE events FINAL")
    assert stored(clickhouse) == sorted(set(before), key=repr)


def test_a_run_stopped_before_the_swap_starts_over(clickhouse: ClickHouse) -> None:
    migrate_up_to(clickhouse, 5)
    before = fill(clickhouse)
    caps = Capabilities(clickhouse.server_version())
    clickhouse.execute(v0006.create_statement(caps, v0006.NEW_TABLE))

    migrate(clickhouse, up_to=6)

    assert sorting_key(clickhouse) == v0006.SORTING_KEY
    assert sorting_key(clickhouse, v0006.NEW_TABLE) is None
    assert stored(clickhouse) == before
