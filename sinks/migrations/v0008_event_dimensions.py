"""The standard dimensions `os` and `source` on `events` (SPEC §2): the event's operating
system and the endpoint family it came through ("native", "segment" or "posthog").

Both are plain `String DEFAULT ''` columns placed beside the other dimensions. Adding a
column rewrites nothing: rows stored before this migration read "" for both (they were
never told either), and new rows carry what the gateway recorded.

`ADD COLUMN IF NOT EXISTS` does not parse on clickhouse-server 18.16, so `apply` adds only
the columns `system.columns` does not list yet; a run stopped between the two ALTERs
resumes with the one left. Inserts name their columns (EVENTS_COLUMNS), so a writer still
on the old column list keeps working during a rolling deploy (its rows read "").
"""

from __future__ import annotations

from typing import Final

from sinks.capabilities import Capabilities
from sinks.clickhouse import ClickHouse
from sinks.migrations.steps import table_columns

# (column, the column it follows): the order of EVENTS_COLUMNS.
NEW_COLUMNS: Final = (("os", "app_version"), ("source", "region"))


def statements(caps: Capabilities) -> list[str]:
    del caps  # which ALTERs run depends on the table's columns: see apply
    return []


def apply(ch: ClickHouse, caps: Capabilities) -> None:
    del caps  # the same statements on every engine
    present = set(table_columns(ch, "events"))
    for column, after in NEW_COLUMNS:
        if column not in present:
            ch.execute(f"ALTER TABLE events ADD COLUMN {column} String DEFAULT '' AFTER {after}")
