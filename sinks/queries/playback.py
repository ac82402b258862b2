"""Playback quality reads (SPEC §4 semantics, §5 `/v1/metrics/playback[/timeseries]`).

Exactness regardless of merge state: `plays` holds several versions of a play until
ReplacingMergeTree merges them. Both queries read `plays FINAL` over the requested days,
which keeps the newest row per (project, play_id, day), then drop keys whose newest row is
a tombstone (`deleted = 1`). When late events move a play to another day the processor
writes a tombstone under the old day's key, so every play has one live key and is counted
once, on the day of its first event; because a key never spans days, partition and part
pruning on `day` cannot hide a newer row (see sinks/migrations/v0003_plays.py).
FINAL was measured against `argMax(col, version) ... GROUP BY play_id, day` (identical
answers; best of 7, 2 cores, rows inserted over 7 days with 1.5 versions per play):
  plays   engine   summary/content  minute series  summary/none  summary/one day
  100k    chDB     0.020 vs 0.046   0.059 vs 0.085  0.018 vs 0.037  0.005 vs 0.006 s
  100k    18.16    0.030 vs 0.076   0.071 vs 0.115  0.024 vs 0.064  0.002 vs 0.003 s
  1M      chDB     0.100 vs 0.254   0.154 vs 0.306  0.088 vs 0.216  0.084 vs 0.048 s
  1M      18.16    0.247 vs 0.803   0.282 vs 0.838  0.191 vs 0.714  0.175 vs 0.114 s
FINAL wins 2-3x on multi-day ranges (the dashboard case) and loses on a single day of a
large table. The outer `WHERE p_deleted = 0` is applied after FINAL on both engines
(checked on 18.16 and chDB 26.9, which sets optimize_move_to_prewhere_if_final = 0).

Ratios and hours are computed in Python from exact integer sums with the same functions
the stream processor uses, so a live series and a query agree; percentiles are ClickHouse
`quantileExact` over started plays (the upper middle value for an even count). Undefined
values are None: startup percentiles without a started play, rebuffer_ratio without watch
time, avg_bitrate_kbps without heartbeat play time. `rebuffer_count` and
`bitrate_switches` are totals over the plays of the group or bucket.

Group and bucket expressions come from fixed tables here, never from the caller's text;
values (project, dates) go through `%(name)s` parameters.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime
from typing import Any, Final, Literal, TypedDict, cast, get_args

from sinks.clickhouse import ClickHouse, Row
from streams.processors.plays import avg_bitrate_kbps, rebuffer_ratio, watch_hours

GroupBy = Literal["none", "content_id", "device_model", "app_version"]
Interval = Literal["minute", "hour", "day"]

GROUP_BY_VALUES: Final[tuple[str, ...]] = get_args(GroupBy)
INTERVAL_VALUES: Final[tuple[str, ...]] = get_args(Interval)

# group_by -> the plays column it groups on
_GROUP_COLUMNS: Final[dict[str, str]] = {
    "content_id": "content_id",
    "device_model": "device_model",
    "app_version": "app_version",
}
# interval -> (column of the newest row, bucket expression over its alias)
_BUCKETS: Final[dict[str, tuple[str, str]]] = {
    "minute": ("minute", "toUInt32(p_minute)"),
    "hour": ("minute", "toUInt32(toStartOfHour(p_minute))"),
    "day": ("day", "toString(p_day)"),
}
_METRIC_COLUMNS: Final = (
    "started",
    "video_start_failure",
    "exit_before_start",
    "playback_failure",
    "startup_ms",
    "rebuffer_ms",
    "rebuffer_count",
    "bitrate_switches",
    "bitrate_weighted_sum",
    "bitrate_weight_ms",
    "watch_ms",
)
# Both percentiles come from one aggregate and leave the engine as two UInt32 columns, not
# an Array column that chDB's Arrow lists and the driver decode per row (2-7 ms at ~20k
# content groups). Both engines compute the aggregate written twice once (18.16 and chDB
# 26.9: the same CPU as with one aliased aggregate).
_STARTUP_QUANTILES: Final = "quantilesExactIf(0.5, 0.95)(p_startup_ms, p_started = 1)"
_AGGREGATES: Final = f"""
    count() AS n_plays,
    sum(p_started),
    sum(p_video_start_failure),
    sum(p_exit_before_start),
    sum(p_playback_failure),
    {_STARTUP_QUANTILES}[1],
    {_STARTUP_QUANTILES}[2],
    sum(p_rebuffer_ms),
    sum(p_rebuffer_count),
    sum(p_bitrate_switches),
    sum(p_bitrate_weighted_sum),
    sum(p_bitrate_weight_ms),
    sum(p_watch_ms)"""


class PlaybackMetrics(TypedDict):
    plays: int
    started: int
    video_start_failures: int
    exits_before_start: int
    playback_failures: int
    startup_ms_p50: int | None
    startup_ms_p95: int | None
    rebuffer_ratio: float | None
    rebuffer_count: int
    bitrate_switches: int
    avg_bitrate_kbps: float | None
    watch_hours: float


class PlaybackSummaryRow(PlaybackMetrics):
    group: str


class PlaybackPoint(PlaybackMetrics):
    t: str


def _latest_plays(extra_columns: tuple[str, ...]) -> str:
    """The newest row per (project, play_id, day) for the days of [day_from, day_to], as
    `p_*` columns; the caller drops tombstones with `WHERE p_deleted = 0`, which both
    engines apply after FINAL (never write it as PREWHERE: that would filter first)."""
    columns = ("deleted", *extra_columns, *_METRIC_COLUMNS)
    selected = ",\n            ".join(f"{column} AS p_{column}" for column in columns)
    return f"""
        SELECT
            {selected}
        FROM plays FINAL
        WHERE project = %(project)s
          AND day >= toDate(%(day_from)s) AND day <= toDate(%(day_to)s)"""


def _params(project: str, day_from: date, day_to: date) -> dict[str, Any]:
    if day_from > day_to:
        raise ValueError(f"day_from {day_from} is after day_to {day_to}")
    return {"project": project, "day_from": day_from, "day_to": day_to}


def _metric_rows(label: str, rows: Iterable[Row]) -> list[dict[str, Any]]:
    """Rows of (label value, aggregates in `_AGGREGATES` order) as SPEC §5 objects with
    the label first (integers as the engines return them). One dict display per row: a
    per-row helper whose dict was then merged under the label took twice as long (21 vs
    10 ms at ~20k content groups)."""
    return [
        {
            label: value,
            "plays": plays,
            "started": started,
            "video_start_failures": video_start_failures,
            "exits_before_start": exits_before_start,
            "playback_failures": playback_failures,
            "startup_ms_p50": startup_p50 if started else None,
            "startup_ms_p95": startup_p95 if started else None,
            "rebuffer_ratio": rebuffer_ratio(rebuffer_ms, watch_ms),
            "rebuffer_count": rebuffer_count,
            "bitrate_switches": bitrate_switches,
            "avg_bitrate_kbps": avg_bitrate_kbps(bitrate_weighted_sum, bitrate_weight_ms),
            "watch_hours": watch_hours(watch_ms),
        }
        for (
            value,
            plays,
            started,
            video_start_failures,
            exits_before_start,
            playback_failures,
            startup_p50,
            startup_p95,
            rebuffer_ms,
            rebuffer_count,
            bitrate_switches,
            bitrate_weighted_sum,
            bitrate_weight_ms,
            watch_ms,
        ) in rows
    ]


def playback_summary(
    ch: ClickHouse,
    project: str,
    day_from: date,
    day_to: date,
    group_by: GroupBy = "none",
    limit: int | None = None,
) -> list[PlaybackSummaryRow]:
    """SPEC §5 `/v1/metrics/playback` over plays whose first event is on a day of
    [day_from, day_to] (UTC, inclusive). `group_by="none"` gives one row with group "all"
    (zeros when there are no plays); otherwise one row per value that has plays (the value
    may be "" for plays that never named it), most plays first, then by value; only the
    first `limit` of them when given (content_id has ~20k values at 10M events).
    Raises ValueError for an unknown group_by, a limit below 1 or day_from > day_to,
    ClickHouseError when the query fails."""
    if group_by not in GROUP_BY_VALUES:
        raise ValueError(f"group_by must be one of {', '.join(GROUP_BY_VALUES)}")
    if limit is not None and limit < 1:
        raise ValueError("limit must be at least 1")
    params = _params(project, day_from, day_to)
    if group_by == "none":
        sql = f"SELECT 'all', {_AGGREGATES}\nFROM ({_latest_plays(())})\nWHERE p_deleted = 0"
    else:
        column = _GROUP_COLUMNS[group_by]
        sql = (
            f"SELECT p_{column} AS grp, {_AGGREGATES}\n"
            f"FROM ({_latest_plays((column,))})\n"
            "WHERE p_deleted = 0\nGROUP BY grp\nORDER BY n_plays DESC, grp"
        )
        if limit is not None:
            sql += "\nLIMIT %(limit)s"
            params["limit"] = limit
    return cast(list[PlaybackSummaryRow], _metric_rows("group", ch.execute(sql, params)))


def _format_bucket(interval: str, value: object) -> str:
    if interval == "day":
        return str(value)
    moment = datetime.fromtimestamp(int(str(value)), UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def playback_timeseries(
    ch: ClickHouse, project: str, day_from: date, day_to: date, interval: Interval = "hour"
) -> list[PlaybackPoint]:
    """SPEC §5 `/v1/metrics/playback/timeseries`: the summary metrics per bucket of the
    play's first event, for buckets that have plays (sparse), in time order. `t` is
    "2026-10-01T13:00:00Z" for minute and hour buckets, "2026-10-01" for days.
    Raises ValueError for an unknown interval or day_from > day_to."""
    if interval not in INTERVAL_VALUES:
        raise ValueError(f"interval must be one of {', '.join(INTERVAL_VALUES)}")
    params = _params(project, day_from, day_to)
    column, bucket = _BUCKETS[interval]
    sql = (
        f"SELECT {bucket} AS t, {_AGGREGATES}\n"
        f"FROM ({_latest_plays((column,))})\n"
        "WHERE p_deleted = 0\nGROUP BY t\nORDER BY t"
    )
    rows = ((_format_bucket(interval, row[0]), *row[1:]) for row in ch.execute(sql, params))
    return cast(list[PlaybackPoint], _metric_rows("t", rows))
