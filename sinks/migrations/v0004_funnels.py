"""Predefined funnel progress: per (project, funnel, user, start day), the furthest step
reached by a chain whose first step happened on that day (streams/processors/funnels.py).

`definition` is the definition's fingerprint, so rows of an edited funnel that keeps its
name are never mixed with the new definition's. The processor only ever raises a level,
and it may re-send a row (at-least-once), so ReplacingMergeTree(level) keeps the highest
level per key on merge; readers still take max(level) per user, which is exact before
merges too. `user_hash` is derived by the server exactly as in `events`, so both funnel
paths count the same user identity. Retention follows `events` (90 days).
"""

from sinks.capabilities import Capabilities

FUNNEL_RETENTION_DAYS = 90


def statements(caps: Capabilities) -> list[str]:
    return [
        f"""
        CREATE TABLE IF NOT EXISTS funnel_progress (
            project String,
            funnel String,
            definition String,
            user_id String,
            start_day Date,
            level UInt8,
            user_hash UInt64 DEFAULT cityHash64(project, user_id)
        )
        ENGINE = ReplacingMergeTree(level)
        PARTITION BY toYYYYMM(start_day)
        ORDER BY (project, funnel, definition, start_day, user_hash)
        {caps.ttl(f"start_day + INTERVAL {FUNNEL_RETENTION_DAYS} DAY")}
        """
    ]
