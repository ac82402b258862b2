"""The `plays` table's contract (sinks/migrations v0003, v0010): its name and the columns
of a row in insert order, shared by the plays processor that writes rows and the readers
that index them."""

from __future__ import annotations

from typing import Final

PLAYS_TABLE: Final = "plays"
PLAY_COLUMNS: Final = (
    "project",
    "play_id",
    "user_id",
    "content_id",
    "device_model",
    "app_version",
    "region",
    "first_ts",
    "last_ts",
    "started",
    "video_start_failure",
    "exit_before_start",
    "playback_failure",
    "startup_ms",
    "played_ms",
    "rebuffer_ms",
    "rebuffer_count",
    "bitrate_switches",
    "bitrate_weighted_sum",
    "bitrate_weight_ms",
    "watch_ms",
    "event_count",
    "deleted",
    "version",
    # migration 0010: the first event's other properties (filters and breakdowns of
    # `POST /v1/insights/playback`) and the QoE beyond the counts
    "type",
    "os",
    "source",
    "session_id",
    "props_keys",
    "props_values",
    "props_num_keys",
    "props_num_values",
    "downshifts",
    "upshifts",
    "error_codes",
    "frames_rendered",
    "frames_dropped",
    "frames_ms",
    "scored",
    "experience_score",
    "startup_score",
    "smoothness_score",
    "quality_score",
)
