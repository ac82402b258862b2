"""What the worker's live QoE counters (Prometheus) add for the `plays` rows of one
processor output: pure, `streams/play_metrics.py` applies it.

Each play counts once, although its row is written again whenever a late event changes it
(a higher `version`, see the package docstring): the tally remembers, per play, the most
each counted quantity has shown, and a row adds only what it shows beyond that. A replayed
row adds nothing; a late heartbeat adds its watch time and frames; a play is one attempt
however often it is rewritten. Counters cannot go down, so a late event that takes
something away counts nothing back: a play first closed as an exit before start whose
`playback_start` arrives late counts as an exit and as a start, one whose earlier
`playback_start` lowers its startup keeps the watch time counted. Those are the live
indicators the alerts need; the exact figures are the API's (`plays` keeps one row per play).

A play is remembered for `horizon_ms` of the caller's clock after its last row, and at most
`remember_at_most` plays (the oldest go first): the plays processor rewrites a play only
while it holds it, for its grace period after the play's last event, so the horizon should
cover that grace plus the worker's lag. A play rewritten after it was forgotten, or after a
restart of the worker, counts again (counters restart with the process anyway).

Labels: `device_model` only (content ids would make a series per title), at most
`max_devices` values; later models count as OTHER_DEVICE, plays without one as UNKNOWN_TAG.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from schemas.output import TableRows
from schemas.plays import PLAY_COLUMNS, PLAYS_TABLE
from streams.processors.plays.processor import UNKNOWN_TAG

# The quantities counted per play, in this order in `PlayIncrements.by_device` values.
TALLIED: Final = (
    "plays",
    "started",
    "video_start_failures",
    "exits_before_start",
    "playback_failures",
    "rebuffers",
    "rebuffer_ms",
    "watch_ms",
    "frames_rendered",
    "frames_dropped",
    "frames_ms",
    "downshifts",
    "upshifts",
    "downshifted_plays",
)
OTHER_DEVICE: Final = "other"

_STARTED: Final = TALLIED.index("started")
_WATCH_MS: Final = TALLIED.index("watch_ms")
_PLAY_COLUMN_INDEX: Final = {name: PLAY_COLUMNS.index(name) for name in PLAY_COLUMNS}


def play_totals(row: Sequence[Any]) -> tuple[int, ...]:
    """The TALLIED quantities of one play from its `plays` row."""
    column = _PLAY_COLUMN_INDEX
    started = row[column["started"]]
    downshifts = row[column["downshifts"]]
    return (
        1,
        started,
        row[column["video_start_failure"]],
        row[column["exit_before_start"]],
        row[column["playback_failure"]],
        row[column["rebuffer_count"]],
        row[column["rebuffer_ms"]],
        row[column["watch_ms"]],
        row[column["frames_rendered"]],
        row[column["frames_dropped"]],
        row[column["frames_ms"]],
        downshifts,
        row[column["upshifts"]],
        1 if started and downshifts else 0,
    )


@dataclass
class PlayIncrements:
    """What to add: per device label the TALLIED amounts; the startup (ms) of each play
    seen started for the first time, the rebuffer ratio of each play seen with watch time
    for the first time (each observed once per play)."""

    by_device: dict[str, list[int]] = field(default_factory=dict)
    startups_ms: list[int] = field(default_factory=list)
    rebuffer_ratios: list[float] = field(default_factory=list)


class PlayTally:
    """Turns `plays` rows into counter increments, each play counted once (module
    docstring). Not thread-safe: one observer owns it."""

    def __init__(
        self, *, horizon_ms: int, remember_at_most: int = 100_000, max_devices: int = 32
    ) -> None:
        if horizon_ms <= 0 or remember_at_most <= 0:
            raise ValueError("horizon_ms and remember_at_most must be positive")
        self.horizon_ms = horizon_ms
        self.remember_at_most = remember_at_most
        self.max_devices = max_devices
        # play → (the most each quantity has shown, when its last row was tallied), in the
        # order of that time: the oldest entries are the first to forget.
        self._counted: dict[int, tuple[tuple[int, ...], int]] = {}
        self._devices: set[str] = set()

    def remembered(self) -> int:
        return len(self._counted)

    def add(self, tables: Iterable[TableRows], now_ms: int) -> PlayIncrements:
        increments = PlayIncrements()
        counted = self._counted
        column = _PLAY_COLUMN_INDEX
        project, play_id = column["project"], column["play_id"]
        deleted, device = column["deleted"], column["device_model"]
        startup_ms, rebuffer_ms = column["startup_ms"], column["rebuffer_ms"]
        for table in tables:
            if table.table != PLAYS_TABLE:
                continue
            for row in table.rows:
                if row[deleted]:
                    continue  # a tombstone hides an older key of a play written again
                totals = play_totals(row)
                key = hash((row[project], row[play_id]))
                seen = counted.pop(key, None)
                if seen is None:
                    added = totals
                    most = totals
                    before_started, before_watch = 0, 0
                else:
                    before = seen[0]
                    added = tuple(
                        max(0, now - then) for now, then in zip(totals, before, strict=True)
                    )
                    most = tuple(map(max, totals, before))
                    before_started, before_watch = before[_STARTED], before[_WATCH_MS]
                counted[key] = (most, now_ms)
                if any(added):
                    label = self._device_label(row[device])
                    sums = increments.by_device.setdefault(label, [0] * len(TALLIED))
                    for index, amount in enumerate(added):
                        sums[index] += amount
                if totals[_STARTED] and not before_started:
                    increments.startups_ms.append(row[startup_ms])
                if totals[_WATCH_MS] and not before_watch:
                    increments.rebuffer_ratios.append(row[rebuffer_ms] / totals[_WATCH_MS])
        self._forget(now_ms)
        return increments

    def _device_label(self, device_model: str) -> str:
        if not device_model:
            return UNKNOWN_TAG
        if device_model in self._devices:
            return device_model
        if len(self._devices) < self.max_devices:
            self._devices.add(device_model)
            return device_model
        return OTHER_DEVICE

    def _forget(self, now_ms: int) -> None:
        counted = self._counted
        oldest_kept = now_ms - self.horizon_ms
        while counted:
            key = next(iter(counted))
            if counted[key][1] >= oldest_kept and len(counted) <= self.remember_at_most:
                return
            del counted[key]
