"""Queryable props: `events` gains the flattened props arrays of schemas/props.py
(`props_keys`, `props_values`, `props_num_keys`, `props_num_values`), and the rows stored
before them get theirs.

Why arrays: clickhouse-server 18.16 has no JSON functions, so filters and breakdowns on
`props.<path>` (SPEC §5.1) cannot read the `props` JSON string the same way on every
engine; parallel key/value arrays (Snuba's layout for Sentry tags) read with `has` and
`indexOf` everywhere. `props` keeps the raw JSON.

`apply`:
1. adds the missing columns one by one (18.16 has no `ADD COLUMN IF NOT EXISTS`); empty
   arrays by default, so rows written meanwhile by an old worker read as "no props";
2. waits for pending mutations of `events` (an 18.16 erasure), so no erased row is copied;
3. per day partition holding rows with props but no arrays: reads those rows, flattens
   their props in Python (no JSON functions server-side), inserts them again with the
   arrays, and merges the partition (`OPTIMIZE … FINAL`): ReplacingMergeTree keeps the
   copy inserted last, so each event is one row with its arrays again. A run stopped
   half-way resumes with the days left; a day done twice only re-merges.
Memory is bounded by one day's rows with props.
"""

from __future__ import annotations

from datetime import date
from typing import Any, Final

import msgspec

from schemas.props import FlatProps, flatten_props
from sinks.capabilities import Capabilities
from sinks.clickhouse import ClickHouse
from sinks.migrations.steps import add_missing_columns, table_columns, wait_for_mutations

NEW_COLUMNS: Final = (
    ("props_keys", "Array(String)"),
    ("props_values", "Array(String)"),
    ("props_num_keys", "Array(String)"),
    ("props_num_values", "Array(Float64)"),
)
# Derived by the table's DEFAULT expressions from `ts`, `project` and `user_id`.
DERIVED: Final = ("time", "day", "user_hash")
WITHOUT_ARRAYS: Final = "props NOT IN ('', '{}') AND empty(props_keys)"


def statements(caps: Capabilities) -> list[str]:
    del caps  # what to add depends on the table: see apply
    return []


def apply(ch: ClickHouse, caps: Capabilities) -> None:
    del caps
    add_missing_columns(ch, "events", NEW_COLUMNS)
    wait_for_mutations(ch, "events")
    skipped = {*DERIVED, *(name for name, _ in NEW_COLUMNS)}
    columns = [name for name in table_columns(ch, "events") if name not in skipped]
    props_at = columns.index("props")
    days = ch.execute(f"SELECT DISTINCT day FROM events WHERE {WITHOUT_ARRAYS} ORDER BY day")
    for (day,) in days:
        params = {"day": _as_date(day)}
        rows = ch.execute(
            f"SELECT {', '.join(columns)} FROM events WHERE day = %(day)s AND {WITHOUT_ARRAYS}",
            params,
        )
        ch.insert(
            "events",
            [*columns, *(name for name, _ in NEW_COLUMNS)],
            [(*row, *_flattened(row[props_at])) for row in rows],
        )
        ch.execute("OPTIMIZE TABLE events PARTITION %(day)s FINAL", params)


def _flattened(props: Any) -> FlatProps:
    try:
        decoded = msgspec.json.decode(str(props))
    except (msgspec.DecodeError, RecursionError):
        return (), (), (), ()
    return flatten_props(decoded) if isinstance(decoded, dict) else ((), (), (), ())


def _as_date(value: object) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))
