"""Raw events: one row per accepted event, deduplicated on (project, event_id).

Event time is epoch milliseconds (`ts`, after clock-skew correction) because 18.16 has no
DateTime64; `time`, `day` and `user_hash` are derived by the server so writers cannot get
them wrong. ReplacingMergeTree collapses retried or replayed copies on merge; queries that
must be exact before a merge deduplicate on the key themselves (see FIELD-NOTES).
"""

from sinks.capabilities import Capabilities

EVENT_RETENTION_DAYS = 90


def statements(caps: Capabilities) -> list[str]:
    return [
        f"""
        CREATE TABLE IF NOT EXISTS events (
            project String,
            event_id String,
            type String,
            user_id String,
            ts Int64,
            received_at Int64,
            session_id String,
            device_model String,
            app_version String,
            region String,
            props String,
            time DateTime('UTC') DEFAULT toDateTime(intDiv(ts, 1000), 'UTC'),
            day Date DEFAULT toDate(toDateTime(intDiv(ts, 1000), 'UTC')),
            user_hash UInt64 DEFAULT cityHash64(project, user_id)
        )
        ENGINE = ReplacingMergeTree()
        PARTITION BY day
        ORDER BY (project, event_id)
        {caps.ttl(f"day + INTERVAL {EVENT_RETENTION_DAYS} DAY")}
        """
    ]
