"""Playback quality reads (SPEC §4 semantics, §5 `/v1/metrics/playback[/timeseries]`).

Exactness regardless of merge state: `plays` holds several versions of a play until
ReplacingMergeTree merges them. Both queries read `plays FINAL` over the requested days,
which keeps the newest row per (project, play_id, day), then drop keys whose newest row is
a tombstone (`deleted = 1`). When late events move a play to another day the processor
writes a tombstone under the old day's key, so every play has one live key and is counted
once, on the day of its first event; because a key never spans days, partition and part
pruning on `day` cannot hide a newer row (see sinks/migrations/v0003_plays.py). For the
same reason the days can be read one month partition per FINAL (`PlayScans`, 18.16: its
FINAL merges all partitions in one stream; benchmarks/README.md, "Fixed playback endpoints
after the QoE fields").
FINAL rather than `argMax(col, version) ... GROUP BY play_id, day`: the same answers, 2-3x
faster on multi-day ranges (the dashboard case), slower only on a single day of a large
table (benchmarks/README.md, "plays FINAL against argMax"). The outer `WHERE p_deleted = 0`
is applied after FINAL on both engines (checked on 18.16 and chDB 26.9, which sets
optimize_move_to_prewhere_if_final = 0).

Ratios and hours are computed in Python from exact integer sums with the same functions
the stream processor uses, so a live series and a query agree; percentiles are ClickHouse
`quantileExact` over started plays (the upper middle value for an even count). Undefined
values are None: startup percentiles without a started play, rebuffer_ratio without watch
time, avg_bitrate_kbps without heartbeat play time. `rebuffer_count` and
`bitrate_switches` are totals over the plays of the group or bucket.

QoE beyond the counts (SPEC §4, migration 0010): percentages of plays, rebuffer frequency
and mean duration, p90/p99, shifts, frame rates and the experience score come from the
same one-row-per-group aggregate (scores are sums of per-play hundredths, so means are
exact); `downshift_pct` and the scores count only plays written since 0010 (`scored`).
`errors` comes from the same aggregate too: each group's codes in one array, one count
per distinct code (a play holds each of its codes once). A `limit` first ranks the groups
from a scan of the group column alone and aggregates the plays of the top ones only.
Every scan of `plays FINAL` costs: 18.16 reads every aggregated column through it, so
each column adds to its cost (benchmarks/README.md, "plays FINAL against argMax", "Fixed
playback endpoints after the QoE fields").

Group and bucket expressions come from fixed tables here, never from the caller's text;
values (project, dates) go through `%(name)s` parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final, Literal, TypedDict, cast, get_args

from common.qoe import (
    avg_bitrate_kbps,
    avg_fps,
    dropped_frame_pct,
    mean,
    mean_score,
    percent,
    rebuffer_frequency,
    rebuffer_ratio,
    watch_hours,
)
from sinks.capabilities import Capabilities
from sinks.clickhouse import ClickHouse

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
BUCKETS: Final[dict[str, tuple[str, str]]] = {
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
    "downshifts",
    "upshifts",
    "frames_rendered",
    "frames_dropped",
    "frames_ms",
    "scored",
    "experience_score",
    "startup_score",
    "smoothness_score",
    "quality_score",
)
TOP_ERRORS: Final = 10
# The four percentiles come from one aggregate and leave the engine as UInt32 columns, not
# an Array column that chDB's Arrow lists and the driver decode per row (milliseconds at
# the ~20k groups of content_id). Writing the aggregate several times costs nothing: both
# engines compute identical aggregates once (checked on 18.16 and chDB 26.9).
_STARTUP_QUANTILES: Final = "quantilesExactIf(0.5, 0.95, 0.9, 0.99)(p_startup_ms, p_started = 1)"
_SCORED_STARTS: Final = "p_scored = 1 AND p_started = 1"
# The group's distinct codes and the plays of each, from all its codes: at a code's last
# copy its occurrence number is its count (18.16's sumMap takes numeric keys only, and its
# lambdas cannot capture a column; sorting the codes first cost 5-9 ms more). The aliases
# stay inside the two expressions, so the intermediate arrays are not columns of the answer.
_ERROR_CODES: Final = """
    arrayFilter(
        (code, last_copy) -> last_copy = 1,
        groupArrayArray(p_error_codes) AS group_codes,
        arrayReverse(arrayEnumerateUniq(arrayReverse(group_codes))) AS last_copies
    ),
    arrayFilter((plays, last) -> last = 1, arrayEnumerateUniq(group_codes), last_copies)"""
AGGREGATES: Final = f"""
    count() AS n_plays,
    sum(p_started),
    sum(p_video_start_failure),
    sum(p_exit_before_start),
    sum(p_playback_failure),
    {_STARTUP_QUANTILES}[1],
    {_STARTUP_QUANTILES}[2],
    {_STARTUP_QUANTILES}[3],
    {_STARTUP_QUANTILES}[4],
    sum(p_rebuffer_ms),
    sum(p_rebuffer_count),
    countIf(p_rebuffer_count > 0),
    sum(p_bitrate_switches),
    sum(p_bitrate_weighted_sum),
    sum(p_bitrate_weight_ms),
    sum(p_watch_ms),
    sum(p_downshifts),
    sum(p_upshifts),
    countIf({_SCORED_STARTS}),
    countIf({_SCORED_STARTS} AND p_downshifts > 0),
    sum(p_frames_rendered),
    sum(p_frames_dropped),
    sum(p_frames_ms),
    countIf(p_scored = 1),
    sumIf(p_video_start_failure + p_playback_failure, p_scored = 1),
    sum(p_experience_score),
    sum(p_startup_score),
    sum(p_smoothness_score),
    countIf({_SCORED_STARTS} AND p_frames_rendered + p_frames_dropped > 0),
    sum(p_quality_score),{_ERROR_CODES}"""


class ErrorCount(TypedDict):
    code: str
    plays: int


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
    video_start_failure_pct: float | None
    exit_before_start_pct: float | None
    playback_failure_pct: float | None
    startup_ms_p90: int | None
    startup_ms_p99: int | None
    rebuffer_frequency: float | None
    rebuffer_duration_ms_avg: float | None
    downshifts: int
    upshifts: int
    downshift_pct: float | None
    errors: list[ErrorCount]
    avg_fps: float | None
    dropped_frame_pct: float | None
    experience_score: float | None
    success_score: float | None
    startup_score: float | None
    smoothness_score: float | None
    quality_score: float | None


class PlaybackSummaryRow(PlaybackMetrics):
    group: str


class PlaybackPoint(PlaybackMetrics):
    t: str


@dataclass(frozen=True, slots=True)
class PlayScans:
    """The day ranges that `plays FINAL` reads, one FINAL each: [day_from, day_to] cut at
    month starts (the partitions, `toYYYYMM(day)`) where the server's FINAL merges every
    partition in one stream and one FINAL per partition costs less
    (`Capabilities.final_per_partition`, 18.16), the whole range elsewhere. Exact either
    way: `day` is in the sorting key, so all versions of a key, tombstones included, sit
    in one partition."""

    ranges: tuple[tuple[date, date], ...]

    @classmethod
    def of(cls, ch: ClickHouse, day_from: date, day_to: date) -> PlayScans:
        if Capabilities(ch.server_version()).final_per_partition:
            return cls(month_ranges(day_from, day_to))
        return cls(((day_from, day_to),))

    def params(self) -> dict[str, date]:
        return {
            name: day
            for n, (day_from, day_to) in enumerate(self.ranges)
            for name, day in ((f"scan_from_{n}", day_from), (f"scan_to_{n}", day_to))
        }

    def latest_plays(self, extra_columns: tuple[str, ...], plain: tuple[str, ...] = ()) -> str:
        """The newest row per (project, play_id, day) for the days of the ranges, as `p_*`
        columns (and the `plain` columns under their own names); the caller drops
        tombstones with `WHERE p_deleted = 0`, which both engines apply after FINAL (never
        write it as PREWHERE: that would filter first), with `params()` and `%(project)s`."""
        columns = ("deleted", *extra_columns, *_METRIC_COLUMNS)
        selected = ",\n            ".join(
            [*(f"{column} AS p_{column}" for column in columns), *plain]
        )
        return "\n        UNION ALL".join(
            f"""
        SELECT
            {selected}
        FROM plays FINAL
        WHERE project = %(project)s
          AND day >= toDate(%(scan_from_{n})s) AND day <= toDate(%(scan_to_{n})s)"""
            for n in range(len(self.ranges))
        )


def month_ranges(day_from: date, day_to: date) -> tuple[tuple[date, date], ...]:
    """[day_from, day_to] cut into the inclusive day ranges of its calendar months."""
    ranges = []
    start = day_from
    while start <= day_to:
        next_month = (start.replace(day=1) + timedelta(days=32)).replace(day=1)
        ranges.append((start, min(day_to, next_month - timedelta(days=1))))
        start = next_month
    return tuple(ranges)


def day_params(project: str, day_from: date, day_to: date) -> dict[str, Any]:
    if day_from > day_to:
        raise ValueError(f"day_from {day_from} is after day_to {day_to}")
    return {"project": project, "day_from": day_from, "day_to": day_to}


def metrics(values: Sequence[Any]) -> PlaybackMetrics:
    """The SPEC §4 fields from one row of `AGGREGATES` (integers as the engines return
    them)."""
    (
        plays,
        started,
        video_start_failures,
        exits_before_start,
        playback_failures,
        startup_p50,
        startup_p95,
        startup_p90,
        startup_p99,
        rebuffer_ms,
        rebuffer_count,
        rebuffered_plays,
        bitrate_switches,
        bitrate_weighted_sum,
        bitrate_weight_ms,
        watch_ms,
        downshifts,
        upshifts,
        scored_starts,
        downshifted_starts,
        frames_rendered,
        frames_dropped,
        frames_ms,
        scored,
        scored_failures,
        experience_total,
        startup_total,
        smoothness_total,
        quality_plays,
        quality_total,
        error_codes,
        error_plays,
    ) = values
    return {
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
        "video_start_failure_pct": percent(video_start_failures, plays),
        "exit_before_start_pct": percent(exits_before_start, plays),
        "playback_failure_pct": percent(playback_failures, plays),
        "startup_ms_p90": startup_p90 if started else None,
        "startup_ms_p99": startup_p99 if started else None,
        "rebuffer_frequency": rebuffer_frequency(rebuffer_count, watch_ms),
        "rebuffer_duration_ms_avg": mean(rebuffer_ms, rebuffered_plays),
        "downshifts": downshifts,
        "upshifts": upshifts,
        "downshift_pct": percent(downshifted_starts, scored_starts),
        "errors": top_errors(error_codes, error_plays),
        "avg_fps": avg_fps(frames_rendered, frames_ms),
        "dropped_frame_pct": dropped_frame_pct(frames_rendered, frames_dropped),
        "experience_score": mean_score(experience_total, scored),
        "success_score": percent(scored - scored_failures, scored),
        "startup_score": mean_score(startup_total, scored_starts),
        "smoothness_score": mean_score(smoothness_total, scored_starts),
        "quality_score": mean_score(quality_total, quality_plays),
    }


def top_errors(codes: Sequence[Any], plays: Sequence[Any]) -> list[ErrorCount]:
    """The TOP_ERRORS of a group's distinct codes and their plays, most plays first, then
    by code."""
    ranked = sorted(zip(codes, plays, strict=True), key=lambda item: (-item[1], item[0]))
    return [{"code": str(code), "plays": int(count)} for code, count in ranked[:TOP_ERRORS]]


def _top_groups_sql(scans: PlayScans, column: str) -> str:
    """The `%(limit)s` values of `column` with the most live plays, ties by value (the
    summary's order), from a scan of the key, `deleted` and that column only."""
    return (
        f"SELECT p_{column} FROM ({scans.latest_plays((column,))}) WHERE p_deleted = 0 "
        f"GROUP BY p_{column} ORDER BY count() DESC, p_{column} LIMIT %(limit)s"
    )


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
    params = day_params(project, day_from, day_to)
    scans = PlayScans.of(ch, day_from, day_to)
    params.update(scans.params())
    if group_by == "none":
        source = scans.latest_plays(("error_codes",))
        sql = f"SELECT 'all', {AGGREGATES}\nFROM ({source})\nWHERE p_deleted = 0"
    else:
        column = _GROUP_COLUMNS[group_by]
        source = scans.latest_plays((column, "error_codes"))
        where = "p_deleted = 0"
        if limit is not None:  # aggregate the plays of the groups answered only (~20k contents)
            where += f" AND p_{column} IN ({_top_groups_sql(scans, column)})"
            params["limit"] = limit
        sql = (
            f"SELECT p_{column} AS grp, {AGGREGATES}\n"
            f"FROM ({source})\n"
            f"WHERE {where}\nGROUP BY grp\nORDER BY n_plays DESC, grp"
        )
    return [
        cast(PlaybackSummaryRow, {"group": row[0], **metrics(row[1:])})
        for row in ch.execute(sql, params)
    ]


def format_bucket(interval: str, value: object) -> str:
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
    params = day_params(project, day_from, day_to)
    scans = PlayScans.of(ch, day_from, day_to)
    params.update(scans.params())
    column, bucket = BUCKETS[interval]
    source = scans.latest_plays((column, "error_codes"))
    sql = (
        f"SELECT {bucket} AS t, {AGGREGATES}\n"
        f"FROM ({source})\n"
        "WHERE p_deleted = 0\nGROUP BY t\nORDER BY t"
    )
    return [
        cast(PlaybackPoint, {"t": format_bucket(interval, row[0]), **metrics(row[1:])})
        for row in ch.execute(sql, params)
    ]
