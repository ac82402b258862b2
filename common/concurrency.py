"""Concurrent viewers (SPEC §4) and the write batches that keep the live InfluxDB series
exact for late plays: pure functions of plays' spans and records' arrival times.

Concurrent viewers
    `concurrent_viewers` of a minute = plays whose [first event, last event] spans that
    minute: a play counts in every minute from the one of its first event's ts to the one
    of its last event's ts, both included (a play of one event counts in one minute).
    `peak_concurrent` is the largest of those counts over an interval.

Write batches (why a point is never overwritten with part of its plays)
    InfluxDB keeps one point per measurement, tag set and timestamp: a later write
    replaces it. A processor may only rewrite a point while it still holds everything the
    point counts. Plays are forgotten after their grace period, so a point is settled once
    its plays are gone, and a play that turns up later (a backfill, a headset uploading
    days late) must not rewrite it. Each play's contribution to a minute therefore goes
    to one *batch* of that minute, chosen from the arrival time (`received_at`) of the
    record that brought the play into the minute:
    - `LIVE` (0) when the record arrived at most `horizon_ms` after the minute ended: the
      point at the minute's start, the live view;
    - otherwise the late batch `received_at // LATE_BATCH_MS + 1`: a point of its own,
      tagged `late=true`, a few milliseconds into the minute (`point_time`, distinct per
      batch), so summing a minute's points over tags and time gives every play once.
    A batch's point is held in memory while any of its plays is held and until the
    arrival clock is `grace` past the batch's window (`window_end`): a record that could
    still join the batch arrives before that unless records reach the bus more than the
    grace out of arrival order. The batch is a function of the record, not of when the
    processor flushes, so a replay after a crash puts every play in the same batches.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from common.qoe import MINUTE_MS

LIVE: Final = 0
LATE_BATCH_MS: Final = 300_000
# Late points sit at minute + 1 + batch % (MINUTE_MS - 1) ms: distinct for batches less
# than 59,999 x 5 min (208 days) apart, beyond the oldest event ingest accepts.
_LATE_SLOTS: Final = MINUTE_MS - 1

Run = tuple[int, int, int]  # first minute (ms), last minute (ms), batch


def minute_of(ts: int) -> int:
    return ts // MINUTE_MS * MINUTE_MS


def batch_of(minute_ms: int, received_at: int, horizon_ms: int) -> int:
    """The batch a record arriving at `received_at` puts a play's contribution to
    `minute_ms` in (module docstring)."""
    if received_at <= minute_ms + MINUTE_MS + horizon_ms:
        return LIVE
    return received_at // LATE_BATCH_MS + 1


def window_end(minute_ms: int, batch: int, horizon_ms: int) -> int:
    """The latest arrival time of a record that joins this batch of this minute."""
    if batch == LIVE:
        return minute_ms + MINUTE_MS + horizon_ms
    return batch * LATE_BATCH_MS


def point_time(minute_ms: int, batch: int) -> int:
    """The point's timestamp: the minute's start for the live batch, a distinct
    millisecond inside the minute for each late one."""
    if batch == LIVE:
        return minute_ms
    return minute_ms + 1 + batch % _LATE_SLOTS


def stamp(first_minute: int, last_minute: int, received_at: int, horizon_ms: int) -> list[Run]:
    """Runs of batches for the minutes [first_minute, last_minute] brought by one record:
    the minutes that ended more than the horizon before it arrived in its late batch,
    the rest live."""
    if last_minute < first_minute:
        return []
    # The first minute still live: received_at <= m + MINUTE_MS + horizon_ms.
    earliest_live = minute_of(received_at - MINUTE_MS - horizon_ms + MINUTE_MS - 1)
    runs: list[Run] = []
    if first_minute < earliest_live:
        late = received_at // LATE_BATCH_MS + 1
        runs.append((first_minute, min(last_minute, earliest_live - MINUTE_MS), late))
    if last_minute >= earliest_live:
        runs.append((max(first_minute, earliest_live), last_minute, LIVE))
    return runs


def extend(
    runs: tuple[Run, ...], first_minute: int, last_minute: int, received_at: int, horizon_ms: int
) -> tuple[Run, ...]:
    """`runs` (sorted, contiguous) grown to [first_minute, last_minute]: the minutes added
    are stamped by this record, the others keep their batch."""
    if not runs:
        return tuple(stamp(first_minute, last_minute, received_at, horizon_ms))
    head_first, head_last, head_batch = runs[-1]
    if (
        runs[0][0] == first_minute
        and head_batch == LIVE
        and batch_of(head_last + MINUTE_MS, received_at, horizon_ms) == LIVE
    ):
        # A live play going on (the usual case): the minutes after a live one are live.
        return (*runs[:-1], (head_first, max(head_last, last_minute), LIVE))
    before = stamp(first_minute, runs[0][0] - MINUTE_MS, received_at, horizon_ms)
    after = stamp(runs[-1][1] + MINUTE_MS, last_minute, received_at, horizon_ms)
    return tuple(_merged([*before, *runs, *after]))


def _merged(runs: list[Run]) -> list[Run]:
    merged: list[Run] = []
    for run in runs:
        if merged and merged[-1][2] == run[2] and merged[-1][1] + MINUTE_MS == run[0]:
            merged[-1] = (merged[-1][0], run[1], run[2])
        else:
            merged.append(run)
    return merged


def concurrent_per_minute(spans: Iterable[tuple[int, int]]) -> dict[int, int]:
    """minute (ms) → plays whose (first_ts, last_ts) span covers it; minutes without
    any play are left out."""
    deltas: dict[int, int] = {}
    for first_ts, last_ts in spans:
        start, stop = minute_of(first_ts), minute_of(last_ts) + MINUTE_MS
        deltas[start] = deltas.get(start, 0) + 1
        deltas[stop] = deltas.get(stop, 0) - 1
    return running_counts(deltas.items())


def running_counts(deltas: Iterable[tuple[int, int]]) -> dict[int, int]:
    """minute → count from (minute, change) pairs (+1 where plays begin, -1 the minute
    after they end), every minute with a positive count."""
    counts: dict[int, int] = {}
    current = 0
    previous: int | None = None
    for minute, change in sorted(deltas):
        if previous is not None and current > 0:
            for covered in range(previous, minute, MINUTE_MS):
                counts[covered] = current
        current += change
        previous = minute
    return counts
