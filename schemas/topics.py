"""The bus topics of SPEC §3: names, keys, partitions and retention, in one place.

`quip topics create` applies this registry; producers and consumers import the names
from here so a topic is never spelled twice.
"""

from __future__ import annotations

from dataclasses import dataclass

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    key: str
    partitions: int
    retention_ms: int
    producer: str
    max_message_bytes: int = 1024 * 1024

    @property
    def configs(self) -> dict[str, str]:
        return {
            "retention.ms": str(self.retention_ms),
            "max.message.bytes": str(self.max_message_bytes),
        }


# A gateway record holds one user's share of a request (body ≤ 1 MB decompressed) plus
# envelope fields, so the event topics accept records up to the producer's 4 MiB.
GATEWAY_RECORD_BYTES = 4 * 1024 * 1024


# Partition counts bound consumer parallelism: analytics.events gets enough for several
# Faust workers and gateway-side producer parallelism; low-volume service topics get few.
ANALYTICS_EVENTS = TopicSpec(
    "analytics.events", "project:user_id", 12, 7 * DAY_MS, "gateway", GATEWAY_RECORD_BYTES
)
ANALYTICS_EVENTS_DLQ = TopicSpec(
    "analytics.events.dlq", "project", 3, 14 * DAY_MS, "gateway", GATEWAY_RECORD_BYTES
)
SOCIAL_NOTIFICATIONS = TopicSpec(
    "social.notifications", "user_id", 6, 24 * HOUR_MS, "social service"
)
CMS_PUBLISH = TopicSpec("cms.publish", "content_id", 3, 7 * DAY_MS, "CMS service")
VIDEO_ENCODING = TopicSpec("video.encoding", "job_id", 3, 7 * DAY_MS, "video service")
NOTIFICATIONS_EMAIL = TopicSpec("notifications.email", "user_id", 6, 7 * DAY_MS, "any service")

TOPICS: tuple[TopicSpec, ...] = (
    ANALYTICS_EVENTS,
    ANALYTICS_EVENTS_DLQ,
    SOCIAL_NOTIFICATIONS,
    CMS_PUBLISH,
    VIDEO_ENCODING,
    NOTIFICATIONS_EMAIL,
)

TOPICS_BY_NAME: dict[str, TopicSpec] = {topic.name: topic for topic in TOPICS}
