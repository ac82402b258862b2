"""Service messages (SPEC §3/§4 "Service metrics"): one row per message of the social, CMS,
video and e-mail topics, written by `streams/processors/services.py`.

Deduplicated on (project, topic, message_id): ReplacingMergeTree collapses producer retries
and consumer replays on merge, and `sinks/queries/services.py` reads with FINAL so its
numbers are exact before a merge too. A copy of a message has the same `ts`, hence the same
`day` partition, which is what FINAL needs (it does not merge across partitions).

`status` is the social/video/email status or the cms action; `kind` the social kind, cms
content_type, video profile or email template; `key_id` the topic's key field (user_id for
social and e-mail, so a user's rows can be erased); `value_ms` is a video job's encode_ms,
meaningful only where `has_value = 1` (no Nullable: cheaper, and plain on every version).
Event time is epoch ms `ts` (18.16 has no DateTime64); `time`, `day` and `minute` are derived
by the server so writers cannot get them wrong.
"""

from sinks.capabilities import Capabilities

SERVICE_RETENTION_DAYS = 90


def statements(caps: Capabilities) -> list[str]:
    return [
        f"""
        CREATE TABLE IF NOT EXISTS service_messages (
            project String,
            topic String,
            message_id String,
            status String,
            kind String,
            key_id String,
            ts Int64,
            value_ms Float64,
            has_value UInt8,
            time DateTime('UTC') DEFAULT toDateTime(intDiv(ts, 1000), 'UTC'),
            day Date DEFAULT toDate(toDateTime(intDiv(ts, 1000), 'UTC')),
            minute DateTime('UTC') DEFAULT toStartOfMinute(toDateTime(intDiv(ts, 1000), 'UTC'))
        )
        ENGINE = ReplacingMergeTree()
        PARTITION BY day
        ORDER BY (project, topic, message_id)
        {caps.ttl(f"day + INTERVAL {SERVICE_RETENTION_DAYS} DAY")}
        """
    ]
