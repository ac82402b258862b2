"""The plays stage's observer: adds what `PlayTally` finds in each output of the plays
processor to the worker's video metrics (streams/metrics.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

from prometheus_client import Counter

from common.qoe import HOUR_MS
from schemas.output import ProcessorOutput
from streams.metrics import (
    VIDEO_EXITS_BEFORE_START,
    VIDEO_FRAMES_DROPPED,
    VIDEO_FRAMES_PLAYED_SECONDS,
    VIDEO_FRAMES_RENDERED,
    VIDEO_HOURS_WATCHED,
    VIDEO_PLAYBACK_FAILURES,
    VIDEO_PLAYBACK_QUALITY,
    VIDEO_PLAYS,
    VIDEO_PLAYS_DOWNSHIFTED,
    VIDEO_PLAYS_STARTED,
    VIDEO_QUALITY_SHIFTS,
    VIDEO_REBUFFER_SECONDS,
    VIDEO_REBUFFERS,
    VIDEO_START_FAILURES,
    VIDEO_WATCH_SECONDS,
)
from streams.processors.plays.tally import TALLIED, PlayTally

# TALLIED quantity → its counter, the labels after device_model, and the unit it scales by.
_COUNTERS: Final[dict[str, tuple[Counter, tuple[str, ...], float]]] = {
    "plays": (VIDEO_PLAYS, (), 1),
    "started": (VIDEO_PLAYS_STARTED, (), 1),
    "video_start_failures": (VIDEO_START_FAILURES, (), 1),
    "exits_before_start": (VIDEO_EXITS_BEFORE_START, (), 1),
    "playback_failures": (VIDEO_PLAYBACK_FAILURES, (), 1),
    "rebuffers": (VIDEO_REBUFFERS, (), 1),
    "rebuffer_ms": (VIDEO_REBUFFER_SECONDS, (), 1000),
    "watch_ms": (VIDEO_WATCH_SECONDS, (), 1000),
    "frames_rendered": (VIDEO_FRAMES_RENDERED, (), 1),
    "frames_dropped": (VIDEO_FRAMES_DROPPED, (), 1),
    "frames_ms": (VIDEO_FRAMES_PLAYED_SECONDS, (), 1000),
    "downshifts": (VIDEO_QUALITY_SHIFTS, ("down",), 1),
    "upshifts": (VIDEO_QUALITY_SHIFTS, ("up",), 1),
    "downshifted_plays": (VIDEO_PLAYS_DOWNSHIFTED, (), 1),
}
assert tuple(_COUNTERS) == TALLIED
_WATCH_MS: Final = TALLIED.index("watch_ms")


class PlayMetrics:
    """`observe` is the plays stage's observer (called with every output of the plays
    processor, after the sinks stored it). `horizon_ms`: how long a play is remembered
    after its last row (PlayTally)."""

    def __init__(self, *, horizon_ms: int, clock: Callable[[], float] = time.time) -> None:
        self._tally = PlayTally(horizon_ms=horizon_ms)
        self._clock = clock
        # Labelled children looked up once per device: `labels()` per closed play cost
        # more than the rest of the observer.
        self._children: dict[str, list[tuple[Counter, float]]] = {}
        self._startup_seconds = VIDEO_PLAYBACK_QUALITY.labels("startup_seconds")
        self._rebuffer_ratio = VIDEO_PLAYBACK_QUALITY.labels("rebuffer_ratio")

    def observe(self, output: ProcessorOutput) -> None:
        if not output.tables:
            return
        increments = self._tally.add(output.tables, int(self._clock() * 1000))
        watch_ms = 0
        for device, amounts in increments.by_device.items():
            children = self._children.get(device)
            if children is None:
                children = self._children[device] = [
                    (counter.labels(device, *labels), unit)
                    for counter, labels, unit in _COUNTERS.values()
                ]
            for (child, unit), amount in zip(children, amounts, strict=True):
                if amount:
                    child.inc(amount / unit)
            watch_ms += amounts[_WATCH_MS]
        if watch_ms:
            VIDEO_HOURS_WATCHED.inc(watch_ms / HOUR_MS)
        for startup_ms in increments.startups_ms:
            self._startup_seconds.observe(startup_ms / 1000)
        for ratio in increments.rebuffer_ratios:
            self._rebuffer_ratio.observe(ratio)
