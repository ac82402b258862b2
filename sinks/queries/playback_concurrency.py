"""Concurrent viewers (SPEC §4 `concurrent_viewers`, `peak_concurrent`): per minute from
the `plays` table, and "now" from `events`.

Per minute (`peak_concurrent`): a play counts in every minute from its first event's to
its last event's. Each live play row gives two (minute, change) pairs, +1 at its first
minute and -1 the minute after its last; the engine sums them per minute and Python runs
the total (`running_counts`, the processor's own math), so a play costs two rows whatever
its length and the answer needs no function 18.16 lacks. Rows are the newest per
(project, play_id, day) through FINAL with tombstones dropped after it, as in
sinks/queries/playback.py, so versions and merges never count a play twice. Plays are
stored under the day of their first event: plays that began up to `LOOKBACK_DAYS` before
`from` are read too, so a play across midnight counts on both days; a play lasting
longer than that is only counted from the days read.

Only closed plays are in `plays` (the processor writes a play once it ended or idled
out), so the minutes of the last idle timeout are incomplete here; the worker's InfluxDB
series (`playback_qoe`, field `viewers`) holds them live.

Now (`concurrent_viewers_now`): plays with an event whose ts is in the last
`NOW_WINDOW_MS` before `now_ms` and none that ended them (`playback_end`, or a
`playback_error` with `fatal` true) in the last `NOW_LOOKBACK_MS`. Read from `events`,
which has every stored event, open plays included; the sorting key (project, type, ...)
and the day partitions keep it to the playback events of today (and yesterday just after
midnight).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Final, TypedDict

from common.concurrency import running_counts
from common.qoe import DAY_MS, HOUR_MS, MINUTE_MS
from sinks.clickhouse import ClickHouse
from sinks.queries.playback import INTERVAL_VALUES, Interval, day_params, format_bucket

LOOKBACK_DAYS: Final = 1
NOW_WINDOW_MS: Final = 60_000
NOW_LOOKBACK_MS: Final = 3_600_000

_CHANGES_SQL: Final = """
    SELECT minute, sum(change)
    FROM (
        SELECT
            arrayJoin([
                (intDiv(p_first_ts, 60000) * 60000, toInt64(1)),
                (intDiv(p_last_ts, 60000) * 60000 + 60000, toInt64(-1))
            ]) AS pair,
            tupleElement(pair, 1) AS minute,
            tupleElement(pair, 2) AS change
        FROM (
            SELECT deleted AS p_deleted, first_ts AS p_first_ts, last_ts AS p_last_ts
            FROM plays FINAL
            WHERE project = %(project)s
              AND day >= toDate(%(day_from)s) AND day <= toDate(%(day_to)s)
        )
        WHERE p_deleted = 0 AND p_last_ts >= %(from_ms)s
    )
    GROUP BY minute"""

_NOW_SQL: Final = """
    SELECT count()
    FROM (
        SELECT
            props_values[indexOf(props_keys, 'play_id')] AS play,
            max(ts) AS last_ts,
            max(type = 'playback_end'
                OR (type = 'playback_error'
                    AND props_values[indexOf(props_keys, 'fatal')] = 'true')) AS ended
        FROM events
        WHERE project = %(project)s
          AND type LIKE 'playback\\\\_%%'
          AND day >= toDate(%(since_day)s)
          AND ts >= %(since_ms)s AND ts <= %(now_ms)s
        GROUP BY play
        HAVING play != '' AND last_ts >= %(window_ms)s AND ended = 0
    )"""


class ConcurrencyPoint(TypedDict):
    t: str
    peak_concurrent: int


def _day_start_ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)


def viewers_per_minute(
    ch: ClickHouse, project: str, day_from: date, day_to: date
) -> dict[int, int]:
    """minute (epoch ms) → concurrent viewers, for the minutes of [day_from, day_to] that
    have any. Raises ValueError when day_from > day_to."""
    params = day_params(project, day_from - timedelta(days=LOOKBACK_DAYS), day_to)
    from_ms = _day_start_ms(day_from)
    to_ms = _day_start_ms(day_to) + DAY_MS
    params["from_ms"] = from_ms
    counts = running_counts((int(minute), int(change)) for minute, change in ch.execute(
        _CHANGES_SQL, params
    ))
    return {minute: n for minute, n in counts.items() if from_ms <= minute < to_ms}


_BUCKET_MS: Final = {"minute": MINUTE_MS, "hour": HOUR_MS, "day": DAY_MS}


def peak_concurrent(
    ch: ClickHouse, project: str, day_from: date, day_to: date, interval: Interval = "hour"
) -> list[ConcurrencyPoint]:
    """The largest per-minute concurrent viewers in each bucket of [day_from, day_to]
    that has any, in time order (for `minute`, the minute's concurrent viewers); `t` as
    in the playback timeseries. Raises ValueError for an unknown interval or
    day_from > day_to."""
    if interval not in INTERVAL_VALUES:
        raise ValueError(f"interval must be one of {', '.join(INTERVAL_VALUES)}")
    size = _BUCKET_MS[interval]
    peaks: dict[int, int] = {}
    for minute, viewers in viewers_per_minute(ch, project, day_from, day_to).items():
        bucket = minute // size * size
        peaks[bucket] = max(peaks.get(bucket, 0), viewers)
    return [
        {"t": _bucket_label(interval, bucket), "peak_concurrent": peaks[bucket]}
        for bucket in sorted(peaks)
    ]


def _bucket_label(interval: str, bucket_ms: int) -> str:
    if interval == "day":
        return datetime.fromtimestamp(bucket_ms / 1000, UTC).date().isoformat()
    return format_bucket(interval, bucket_ms // 1000)


def concurrent_viewers_now(ch: ClickHouse, project: str, now_ms: int) -> int:
    """Plays with an event in (now_ms - NOW_WINDOW_MS, now_ms] and no end (module
    docstring)."""
    since_ms = now_ms - NOW_LOOKBACK_MS
    params = {
        "project": project,
        "since_day": datetime.fromtimestamp(since_ms / 1000, UTC).date(),
        "since_ms": since_ms,
        "now_ms": now_ms,
        "window_ms": now_ms - NOW_WINDOW_MS,
    }
    return int(ch.execute(_NOW_SQL, params)[0][0])
