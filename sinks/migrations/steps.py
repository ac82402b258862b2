"""Steps that migrations moving rows share (not a migration: no `vNNNN_` name)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Final

from sinks.clickhouse import ClickHouse

MUTATION_WAIT_S: Final = 600.0


def wait_for_mutations(ch: ClickHouse, table: str, timeout_s: float = MUTATION_WAIT_S) -> None:
    """Return once `table` has no pending mutation (an 18.16 erasure is a background
    `ALTER … DELETE`: rows copied before it is done would bring erased rows back). Raises
    RuntimeError past `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = ch.execute(
            "SELECT count() FROM system.mutations "
            "WHERE database = %(database)s AND table = %(table)s AND is_done = 0",
            {"database": ch.database, "table": table},
        )
        if not int(rows[0][0]):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{table} still has pending mutations after {timeout_s:.0f} s; "
                "run the migration again once they are done"
            )
        time.sleep(0.5)


def table_columns(ch: ClickHouse, table: str) -> list[str]:
    """The table's column names in order (empty when there is no such table)."""
    rows = ch.execute(
        "SELECT name FROM system.columns WHERE database = %(database)s AND table = %(table)s",
        {"database": ch.database, "table": table},
    )
    return [str(row[0]) for row in rows]


def add_missing_columns(ch: ClickHouse, table: str, columns: Sequence[tuple[str, str]]) -> None:
    """`ALTER TABLE … ADD COLUMN name definition` for each (name, definition) the table
    lacks: 18.16 does not parse `ADD COLUMN IF NOT EXISTS`, so a run stopped between two
    ALTERs resumes with the columns left."""
    present = set(table_columns(ch, table))
    for name, definition in columns:
        if name not in present:
            ch.execute(f"ALTER TABLE {table} ADD COLUMN {name} {definition}")
