"""The worker's Prometheus metrics (SPEC §7 names), defined once."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS_PROCESSED = Counter(
    "analytics_events_processed", "Events processed and stored, by agent", ["agent"]
)
UNDECODABLE_RECORDS = Counter(
    "analytics_records_undecodable", "Records that could not be decoded, by agent", ["agent"]
)
SOCIAL_MESSAGES_DELIVERED = Counter(
    "social_messages_delivered", "Social notifications delivered (distinct messages seen)"
)
CONTENT_CREATION_RATE = Gauge(
    "content_creation_rate", "Content items published per minute, over the last minutes"
)
VIDEO_PLAYBACK_QUALITY = Histogram(
    "video_playback_quality",
    "Per closed play: startup time (s) of started plays, and rebuffer ratio",
    ["measure"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)
VIDEO_HOURS_WATCHED = Counter("video_hours_watched", "Hours watched in closed plays")
DAILY_ACTIVE_USERS = Gauge("daily_active_users", "Users active today (UTC)", ["project"])
MONTHLY_ACTIVE_USERS = Gauge(
    "monthly_active_users", "Users active in the last 30 days", ["project"]
)
EVENTS_LOOP_SECONDS = Counter(
    "events_loop_seconds",
    "Where the events loop's time goes, by phase: waiting for records (the fetch),"
    " feeding them to the processors, taking the processors' output, waiting for the"
    " previous batch's store (sinks, changelog)",
    ["phase"],
)
CONSUMER_LAG = Gauge(
    "consumer_lag", "Records between the committed offset and the end", ["topic", "partition"]
)
