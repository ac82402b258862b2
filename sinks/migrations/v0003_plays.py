"""Plays: one row per play (SPEC §4 playback quality), written by
`streams.processors.plays.PlaysProcessor` once a play has ended.

A play is re-written with a higher `version` when late events change it, and
ReplacingMergeTree(version) keeps the newest row per sorting key. `day` is part of that
key on purpose: when late events move a play to an earlier day, the processor writes a
`deleted = 1` row (higher version) under the old day's key, and queries drop keys whose
newest row is deleted. Keeping each key within one day (so one partition and one part
min/max range) means no merge, insert-time optimization or part pruning can separate a
row from the rows that supersede it; queries are exact whatever the merge state
(see sinks/queries/playback.py).

`day` and `minute` are derived from `first_ts` (epoch ms of the play's first event) by the
server, like `events.time`/`events.day`; `startup_ms` is 0 and meaningless when
`started = 0`. `bitrate_weighted_sum` is Σ heartbeat bitrate_kbps * played_ms (kbps·ms)
over `bitrate_weight_ms` = Σ heartbeat played_ms.
"""

from sinks.capabilities import Capabilities

PLAY_RETENTION_DAYS = 400


def statements(caps: Capabilities) -> list[str]:
    return [
        f"""
        CREATE TABLE IF NOT EXISTS plays (
            project String,
            play_id String,
            user_id String,
            content_id String,
            device_model String,
            app_version String,
            region String,
            first_ts Int64,
            last_ts Int64,
            day Date DEFAULT toDate(toDateTime(intDiv(first_ts, 1000), 'UTC')),
            minute DateTime('UTC') DEFAULT toDateTime(intDiv(first_ts, 60000) * 60, 'UTC'),
            started UInt8,
            video_start_failure UInt8,
            exit_before_start UInt8,
            playback_failure UInt8,
            startup_ms UInt32,
            played_ms UInt64,
            rebuffer_ms UInt64,
            rebuffer_count UInt32,
            bitrate_switches UInt32,
            bitrate_weighted_sum UInt64,
            bitrate_weight_ms UInt64,
            watch_ms UInt64,
            event_count UInt32,
            deleted UInt8,
            version UInt64
        )
        ENGINE = ReplacingMergeTree(version)
        PARTITION BY toYYYYMM(day)
        ORDER BY (project, play_id, day)
        {caps.ttl(f"day + INTERVAL {PLAY_RETENTION_DAYS} DAY")}
        """
    ]
