"""One video play as SPEC §6 events, drawn from the user's generator.

`playback_request`, then exit before start (3%, 60% of them with
`playback_end{played_ms:0}`, the rest go idle), start failure (2.5% x network x device
factors: a fatal `playback_error`), slow starts (> 5 s) abandoned 35% of the time;
otherwise `playback_start{startup_ms, bitrate_kbps}` and a heartbeat every 10 s of played
time {played_ms, bitrate_kbps, frames_rendered, frames_dropped} (frames only from players
that report them). Per 10 s: ABR up-switches while below the top rung the device and the
network allow, a rebuffer (0.6/2/6% by network, followed by a down-switch 60% of the time),
a down-switch after a heartbeat that dropped over 6% of its frames (50%), a random switch
(1.5%), a mid-play fatal error (0.05% x network factor 1/2/4); 4% of plays get a non-fatal
error. A play ends with `playback_end{played_ms}` (the remainder since the last heartbeat)
after watching the whole content (shorts 55%, immersive 35%, movies 5%) or a Beta(1.1, 3)
fraction of it (movies: Beta(1, 6)). Startup, refresh rate, dropped frames and error codes
depend on the device (`devices.py`).

What that gives over 500 users x 14 days (seed 2): ~4.7% start failures, ~3% exits before
start, ~2.3% of started plays fail, ~27% rebuffer, ~33% downshift at least once, startup
p50 ~1 s / p95 ~3 s.
"""

from __future__ import annotations

import math
import random
from typing import Any, Final, Protocol

from quip.simulate.catalog import Catalog
from quip.simulate.devices import (
    draw_error_code,
    draw_frames,
    draw_refresh_hz,
    draw_startup_ms,
    draw_strain,
)
from quip.simulate.draws import draw_uuid
from quip.simulate.model import BITRATE_LADDER, Model, UserProfile

HEARTBEAT_MS: Final = 10_000


class Timeline(Protocol):
    """Where a play writes its events: `t` is the current event time."""

    t: int

    def add(self, kind: str, props: dict[str, Any]) -> None: ...

    def wait(self, low_ms: float, high_ms: float) -> None: ...


def play(
    timeline: Timeline, rng: random.Random, profile: UserProfile, catalog: Catalog, m: Model
) -> None:
    network, device = profile.network, profile.device
    content = catalog.pick(rng, timeline.t)
    base = {"play_id": "p-" + draw_uuid(rng), "content_id": content.content_id}
    timeline.add("playback_request", dict(base))

    if rng.random() < m.exit_before_start:
        timeline.wait(1_500, 8_000)
        if rng.random() < m.exit_with_end_event:
            timeline.add("playback_end", {**base, "played_ms": 0})
        return
    if rng.random() < m.start_failure * network.failure_factor * device.failure_factor:
        timeline.wait(800, 10_000)
        code = draw_error_code(rng, device, "start")
        timeline.add("playback_error", {**base, "code": code, "fatal": True})
        return
    startup = draw_startup_ms(rng, device, network.startup_factor)
    if startup > m.slow_start_ms and rng.random() < m.slow_start_abandon:
        timeline.wait(m.slow_start_ms * 0.6, startup)
        timeline.add("playback_end", {**base, "played_ms": 0})
        return
    top = min(device.max_kbps, network.max_kbps)
    ladder = [rung for rung in BITRATE_LADDER if rung <= top] or [BITRATE_LADDER[0]]
    level = max(0, len(ladder) - 1 - rng.randint(1, 2))
    hz = draw_refresh_hz(rng, device)
    strain = draw_strain(rng)
    timeline.t += startup
    timeline.add("playback_start", {**base, "startup_ms": startup, "bitrate_kbps": ladder[level]})

    def shift(to_level: int) -> None:
        nonlocal level
        timeline.add(
            "playback_quality_change",
            {**base, "from_kbps": ladder[level], "to_kbps": ladder[to_level]},
        )
        level = to_level

    if content.kind == "movie":
        full, partial = m.full_watch_movie, rng.betavariate(1.0, 6.0)
    else:
        full = m.full_watch_short if content.kind == "short" else m.full_watch_immersive
        partial = rng.betavariate(1.1, 3.0)
    whole = rng.random() < full
    target = max(2_000, content.length_ms if whole else int(content.length_ms * partial))
    nonfatal_at = rng.randrange(0, target) if rng.random() < m.nonfatal_per_play else None
    fatal_p = m.fatal_per_interval * network.failure_factor
    played = 0
    while played < target:
        tick = min(HEARTBEAT_MS, target - played)
        offset = 0  # of the stalls and errors within this tick of played time
        if level < len(ladder) - 1 and rng.random() < m.upswitch_per_interval / (
            1 + played / 60_000
        ):
            shift(level + 1)
        elif rng.random() < m.switch_per_interval:
            new = max(0, min(len(ladder) - 1, level + rng.choice((-1, 1))))
            if new != level:
                shift(new)
        if rng.random() < network.rebuffer_per_interval:
            offset = int(rng.uniform(0, tick))
            stall = int(rng.lognormvariate(math.log(1_400), 0.7))
            timeline.t += offset + stall
            timeline.add("playback_rebuffer", {**base, "duration_ms": stall})
            if level > 0 and rng.random() < m.downswitch_after_rebuffer:
                shift(level - 1)
        if nonfatal_at is not None and played <= nonfatal_at < played + tick:
            code = draw_error_code(rng, device, "warning")
            timeline.add("playback_error", {**base, "code": code, "fatal": False})
        if rng.random() < fatal_p:
            timeline.t += int(rng.uniform(100, max(101, tick - offset)))
            code = draw_error_code(rng, device, "play")
            timeline.add("playback_error", {**base, "code": code, "fatal": True})
            return
        timeline.t += tick - offset
        played += tick
        remainder = tick
        if tick == HEARTBEAT_MS:
            beat: dict[str, Any] = {**base, "played_ms": tick, "bitrate_kbps": ladder[level]}
            rendered, dropped = draw_frames(rng, device, hz, ladder[level], tick, strain)
            if device.reports_frames:
                beat["frames_rendered"] = rendered
                beat["frames_dropped"] = dropped
            timeline.add("playback_heartbeat", beat)
            remainder = 0
            struggling = dropped > (rendered + dropped) * m.downswitch_dropped_fraction
            can_step_down = struggling and played < target and level > 0
            if can_step_down and rng.random() < m.downswitch_after_drops:
                shift(level - 1)
        if played >= target:
            timeline.t += int(rng.uniform(100, 1_500))
            timeline.add("playback_end", {**base, "played_ms": remainder})
