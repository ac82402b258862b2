"""User activity as OR-merged bitmasks, and each user's first-seen day.

The activity processor's rows, one per (project, user, day), go into the Null-engine
`user_activity_input`; materialized views fold them into
- `user_activity`: per (project, user_hash, 64-day block) a `groupBitOr` state of day bits,
- `user_first_seen`: per (project, user_hash) a `min` state of the day.
Both aggregations are idempotent (OR and min), so replays and retries cannot inflate a
count, and queries merge states exactly whatever the merge progress (FIELD-NOTES: DAU/WAU/
MAU over 30 days from bitmask rows is ~7x faster than distinct counts over user-days).
`user_hash` is `cityHash64(project, user_id)`, the same as in `events`.
"""

from sinks.capabilities import Capabilities

DAYS_PER_BLOCK = 64


def statements(caps: Capabilities) -> list[str]:
    del caps  # no version-gated clause: activity is kept for cohorts, without TTL
    return [
        """
        CREATE TABLE IF NOT EXISTS user_activity (
            project String,
            user_hash UInt64,
            block UInt16,
            days AggregateFunction(groupBitOr, UInt64)
        )
        ENGINE = AggregatingMergeTree()
        PARTITION BY block
        ORDER BY (project, block, user_hash)
        """,
        """
        CREATE TABLE IF NOT EXISTS user_first_seen (
            project String,
            user_hash UInt64,
            first_day AggregateFunction(min, Date)
        )
        ENGINE = AggregatingMergeTree()
        ORDER BY (project, user_hash)
        """,
        """
        CREATE TABLE IF NOT EXISTS user_activity_input (
            project String,
            user_id String,
            day Date
        )
        ENGINE = Null
        """,
        f"""
        CREATE MATERIALIZED VIEW IF NOT EXISTS user_activity_mv TO user_activity AS
        SELECT
            project,
            cityHash64(project, user_id) AS user_hash,
            intDiv(toUInt16(day), {DAYS_PER_BLOCK}) AS block,
            groupBitOrState(bitShiftLeft(toUInt64(1), toUInt16(day) % {DAYS_PER_BLOCK})) AS days
        FROM user_activity_input
        GROUP BY project, user_hash, block
        """,
        """
        CREATE MATERIALIZED VIEW IF NOT EXISTS user_first_seen_mv TO user_first_seen AS
        SELECT
            project,
            cityHash64(project, user_id) AS user_hash,
            minState(day) AS first_day
        FROM user_activity_input
        GROUP BY project, user_hash
        """,
    ]
