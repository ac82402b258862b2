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
from sinks.migrations.steps import add_missing_columns

# Placed in the order of EVENTS_COLUMNS.
NEW_COLUMNS: Final = (
    ("os", "String DEFAULT '' AFTER app_version"),
    ("source", "String DEFAULT '' AFTER region"),
)


def statements(caps: Capabilities) -> list[str]:
    del caps  # which ALTERs run depends on the table's columns: see apply
    return []


def apply(ch: ClickHouse, caps: Capabilities) -> None:
    del caps  # the same statements on every engine
    add_missing_columns(ch, "events", NEW_COLUMNS)
