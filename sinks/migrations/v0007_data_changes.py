"""`data_changes`: which (project, day) the sinks last stored rows for, and when.

Every sink write that stores rows also records the (project, day) pairs those rows belong
to, with a version that grows with time (sinks/changes.py). The query API reads the new
versions a few times a second and drops the cached answers that cover a changed day, so a
late event for a closed day shows in the answers as soon as it is stored (SPEC §5).

ReplacingMergeTree keeps the highest version of a pair after merges, so the table stays
about as small as the number of days with data; readers take `max(version)` and are exact
before merges too.
"""

from __future__ import annotations

from sinks.capabilities import Capabilities


def statements(caps: Capabilities) -> list[str]:
    del caps  # the same table everywhere
    return [
        """
        CREATE TABLE IF NOT EXISTS data_changes (
            project String,
            day Date,
            version UInt64
        )
        ENGINE = ReplacingMergeTree(version)
        ORDER BY (project, day)
        """
    ]
