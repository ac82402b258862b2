"""QoE math of SPEC §4 (playback quality, QoE beyond the counts, the experience score of
README "Experience score"), shared by the plays processor, its live series and the
playback queries: integers in, the undefined cases as None."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Final, TypeVar

import msgspec

MINUTE_MS: Final = 60_000
DAY_MS: Final = 86_400_000
HOUR_MS: Final = 3_600_000

Number = TypeVar("Number", int, float)


def quantile_exact(values: Iterable[Number], level: float) -> Number | None:
    """ClickHouse `quantileExact(level)`: the element at index `floor(level * n)` of the
    sorted values (clamped to the last one), so the median of an even count is the upper
    of the two middle values. None when there are no values (ClickHouse returns 0)."""
    ordered = sorted(values)
    if not ordered:
        return None
    index = int(level * len(ordered)) if level < 1 else len(ordered) - 1
    return ordered[min(index, len(ordered) - 1)]


def play_watch_ms(startup_ms: int, played_ms: int, rebuffer_ms: int) -> int:
    """watch_ms of one play = startup_ms + Σ played_ms + Σ rebuffer duration_ms."""
    return startup_ms + played_ms + rebuffer_ms


def rebuffer_ratio(rebuffer_ms: int, watch_ms: int) -> float | None:
    """Σ rebuffer duration_ms / Σ watch_ms; None when nothing was watched."""
    return rebuffer_ms / watch_ms if watch_ms > 0 else None


def avg_bitrate_kbps(bitrate_weighted_sum: int, bitrate_weight_ms: int) -> float | None:
    """Mean heartbeat bitrate weighted by each heartbeat's played_ms (Σ kbps·ms / Σ ms);
    None without heartbeat play time."""
    return bitrate_weighted_sum / bitrate_weight_ms if bitrate_weight_ms > 0 else None


def watch_hours(watch_ms: int) -> float:
    return watch_ms / HOUR_MS


def percent(part: int, whole: int) -> float | None:
    """part / whole x 100; None when the whole is empty."""
    return part / whole * 100 if whole > 0 else None


def rebuffer_frequency(rebuffer_count: int, watch_ms: int) -> float | None:
    """Rebuffers per minute watched: Σ rebuffer_count / (Σ watch_ms / 60,000)."""
    return rebuffer_count / (watch_ms / MINUTE_MS) if watch_ms > 0 else None


def mean(total: int, count: int) -> float | None:
    return total / count if count > 0 else None


def avg_fps(frames_rendered: int, frames_ms: int) -> float | None:
    """Σ frames_rendered / (Σ played_ms / 1000) over the heartbeats that report frames;
    None without them."""
    return frames_rendered / (frames_ms / 1000) if frames_ms > 0 else None


def dropped_frame_pct(frames_rendered: int, frames_dropped: int) -> float | None:
    return percent(frames_dropped, frames_rendered + frames_dropped)


# ---------------------------------------------------------------- experience score
# Per play, as Mux scores each view (README "Experience score"): sub-scores 0-100 for
# startup, smoothness and quality, a success gate, and the play's score; a group's score
# is the mean over its scored plays. Stored in hundredths of a point, so group sums are
# exact integers on every engine.


def startup_score(startup_ms: int) -> float:
    """Mux's Startup Time Score: 8 / (8 + startup seconds) x 100."""
    return 8_000 / (8_000 + startup_ms) * 100


def smoothness_score(rebuffer_count: int, rebuffer_ms: int, watch_ms: int) -> float:
    """Mux's Smoothness Score: the mean of 100 / sqrt(1 + (rebuffer_count / 2)^2) and
    100 x e^(-10 x rebuffer fraction of the watch time)."""
    fraction = rebuffer_ms / watch_ms if watch_ms > 0 else 0.0
    by_count = 100 / math.sqrt(1 + (rebuffer_count / 2) ** 2)
    return (by_count + 100 * math.exp(-10 * fraction)) / 2


def quality_score(frames_rendered: int, frames_dropped: int) -> float | None:
    """VR render quality: 100 x e^(-10 x dropped fraction of the frames), the smoothness
    curve applied to judder; None without frame data."""
    total = frames_rendered + frames_dropped
    return 100 * math.exp(-10 * frames_dropped / total) if total > 0 else None


def experience_score(
    failed: bool, started: bool, startup: float, smoothness: float, quality: float | None
) -> float | None:
    """One play's score: 0 when it failed (success sub-score 0), None for an exit before
    start (nothing was shown to judge), else the geometric mean of the startup,
    smoothness and (with frame data) quality sub-scores."""
    if failed:
        return 0.0
    if not started:
        return None
    parts = [startup, smoothness] if quality is None else [startup, smoothness, quality]
    return math.prod(parts) ** (1 / len(parts))


def hundredths(score: float) -> int:
    """A score as whole hundredths of a point, half up."""
    return math.floor(score * 100 + 0.5)


def mean_score(total_hundredths: int, count: int) -> float | None:
    """The mean of `count` scores stored in hundredths; None without any."""
    return total_hundredths / count / 100 if count > 0 else None


# ---------------------------------------------------------------- live series


class QoeContribution(msgspec.Struct, frozen=True, array_like=True):
    """What one play adds to its minute's QoE point. `version` is the play's event count:
    a contribution only replaces one with a lower or equal count."""

    version: int
    started: bool
    video_start_failure: bool
    exit_before_start: bool
    playback_failure: bool
    startup_ms: int | None
    rebuffer_ms: int
    watch_ms: int


def qoe_fields(contributions: Iterable[QoeContribution]) -> dict[str, int | float]:
    """The `playback_qoe` fields for one series point. Counts and milliseconds are ints,
    the ratio a float; percentiles and the ratio are left out when undefined (InfluxDB
    fields keep one type per measurement, so no placeholder values)."""
    # One pass: the worker computes a point per (minute, tags) in every batch, most of
    # them of a single play.
    plays = started = start_failures = exits = failures = rebuffer_total = watch_total = 0
    startups: list[int] = []
    for c in contributions:
        plays += 1
        if c.started:
            started += 1
            if c.startup_ms is not None:
                startups.append(c.startup_ms)
        start_failures += c.video_start_failure
        exits += c.exit_before_start
        failures += c.playback_failure
        rebuffer_total += c.rebuffer_ms
        watch_total += c.watch_ms
    fields: dict[str, int | float] = {
        "plays": plays,
        "started": started,
        "video_start_failures": start_failures,
        "exits_before_start": exits,
        "playback_failures": failures,
        "watch_ms": watch_total,
    }
    p50, p95 = quantile_exact(startups, 0.5), quantile_exact(startups, 0.95)
    if p50 is not None and p95 is not None:
        fields["startup_ms_p50"] = p50
        fields["startup_ms_p95"] = p95
    ratio = rebuffer_ratio(rebuffer_total, watch_total)
    if ratio is not None:
        fields["rebuffer_ratio"] = ratio
    return fields
