"""Plays gain the QoE beyond the counts (SPEC §4) and what filters need from their first
event (SPEC §5.1 `POST /v1/insights/playback`), written by
`streams.processors.plays.PlaysProcessor`.

First event: `type`, `os`, `source`, `session_id` and the flattened props arrays
(`props_keys`/`props_values`/`props_num_keys`/`props_num_values`, schemas/props.py) beside
the existing `device_model`, `app_version`, `region`, under the names `events` uses, so the
filter and breakdown compiler (sinks/queries/properties.py) reads a play row as it reads an
event row. Stored on the play rather than joined to `events` by the first event's id: a
join of every play to its first event is a second scan of `events` with a hash table of
the range's plays on both engines, and 18.16 cannot push the day range through it; the
arrays of a play's first event are small (a playback_request carries play_id and
content_id).

QoE: `downshifts`/`upshifts` (quality changes with to_kbps < / > from_kbps),
`error_codes` (the play's distinct `playback_error` codes), `frames_rendered`,
`frames_dropped` and `frames_ms` (played_ms of the heartbeats that report frames), and the
experience score in hundredths of a point: `experience_score` (meaningful where
`scored = 1`), `startup_score` and `smoothness_score` (where scored and started),
`quality_score` (there, with frames). No Nullable, as in `service_messages`.

Rows written before this migration keep what they had: every new column reads its default
(empty, 0, `scored = 0`), so they count in the SPEC §4 counts as before, are left out of
the scores, and match a filter on a first-event property only as a missing value.

`ADD COLUMN IF NOT EXISTS` does not parse on clickhouse-server 18.16, so `apply` adds the
columns `system.columns` does not list yet, one by one; a run stopped half-way resumes
with the ones left.
"""

from __future__ import annotations

from typing import Final

from sinks.capabilities import Capabilities
from sinks.clickhouse import ClickHouse
from sinks.migrations.steps import add_missing_columns

NEW_COLUMNS: Final = (
    ("type", "String DEFAULT ''"),
    ("os", "String DEFAULT ''"),
    ("source", "String DEFAULT ''"),
    ("session_id", "String DEFAULT ''"),
    ("props_keys", "Array(String)"),
    ("props_values", "Array(String)"),
    ("props_num_keys", "Array(String)"),
    ("props_num_values", "Array(Float64)"),
    ("downshifts", "UInt32 DEFAULT 0"),
    ("upshifts", "UInt32 DEFAULT 0"),
    ("error_codes", "Array(String)"),
    ("frames_rendered", "UInt64 DEFAULT 0"),
    ("frames_dropped", "UInt64 DEFAULT 0"),
    ("frames_ms", "UInt64 DEFAULT 0"),
    ("scored", "UInt8 DEFAULT 0"),
    ("experience_score", "UInt16 DEFAULT 0"),
    ("startup_score", "UInt16 DEFAULT 0"),
    ("smoothness_score", "UInt16 DEFAULT 0"),
    ("quality_score", "UInt16 DEFAULT 0"),
)


def statements(caps: Capabilities) -> list[str]:
    del caps  # which ALTERs run depends on the table's columns: see apply
    return []


def apply(ch: ClickHouse, caps: Capabilities) -> None:
    del caps  # the same statements on every engine
    add_missing_columns(ch, "plays", NEW_COLUMNS)
