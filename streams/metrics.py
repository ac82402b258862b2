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
    # 5 s is a bucket bound: the startup alert's threshold (deploy/prometheus/alerts.yml).
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30),
)
VIDEO_HOURS_WATCHED = Counter("video_hours_watched", "Hours watched in closed plays")
# Closed plays by headset model, each play counted once (streams/processors/plays/tally.py):
# the QoE alerts' numerators and denominators.
VIDEO_PLAYS = Counter("video_plays", "Plays closed (attempts)", ["device_model"])
VIDEO_PLAYS_STARTED = Counter(
    "video_plays_started", "Closed plays that started", ["device_model"]
)
VIDEO_START_FAILURES = Counter(
    "video_start_failures", "Closed plays with a fatal error before start", ["device_model"]
)
VIDEO_EXITS_BEFORE_START = Counter(
    "video_exits_before_start",
    "Closed plays that ended without a start or a fatal error",
    ["device_model"],
)
VIDEO_PLAYBACK_FAILURES = Counter(
    "video_playback_failures", "Closed plays with a fatal error after start", ["device_model"]
)
VIDEO_REBUFFERS = Counter("video_rebuffers", "Rebuffers in closed plays", ["device_model"])
VIDEO_REBUFFER_SECONDS = Counter(
    "video_rebuffer_seconds", "Rebuffering time in closed plays", ["device_model"]
)
VIDEO_WATCH_SECONDS = Counter(
    "video_watch_seconds",
    "Watch time (startup + played + rebuffering) in closed plays",
    ["device_model"],
)
VIDEO_FRAMES_RENDERED = Counter(
    "video_frames_rendered", "Frames rendered, from heartbeats that report them", ["device_model"]
)
VIDEO_FRAMES_DROPPED = Counter(
    "video_frames_dropped", "Frames dropped, from heartbeats that report them", ["device_model"]
)
VIDEO_FRAMES_PLAYED_SECONDS = Counter(
    "video_frames_played_seconds",
    "Played time of the heartbeats that report frames (average fps = rendered / this)",
    ["device_model"],
)
VIDEO_QUALITY_SHIFTS = Counter(
    "video_quality_shifts",
    "Quality changes in closed plays, down (to_kbps < from_kbps) or up",
    ["device_model", "direction"],
)
VIDEO_PLAYS_DOWNSHIFTED = Counter(
    "video_plays_downshifted", "Closed plays that started and shifted down", ["device_model"]
)
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


class ServiceMetricsExport:
    """The services processor's live numbers as the Prometheus metrics above, after each
    stored batch (the services pipeline's stage, streams/runner/build.py; the pipeline
    counts `analytics_events_processed` itself): the delivered counter grows by what the
    processor counted since the last call."""

    def __init__(self) -> None:
        self._delivered = 0

    def update(self, *, delivered_total: int, published_per_minute: float) -> None:
        SOCIAL_MESSAGES_DELIVERED.inc(max(delivered_total - self._delivered, 0))
        self._delivered = delivered_total
        CONTENT_CREATION_RATE.set(published_per_minute)
