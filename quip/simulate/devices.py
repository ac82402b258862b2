"""The headset models the simulator draws users from, and how each plays video: one table
(`DEVICES`, with `ERROR_CODES`) and small pure functions over it, every draw from the
caller's generator.

- **Startup**: lognormal around the device's median on a good network (x the network's
  factor): a Vision Pro starts fastest, a Vive Focus 3 slowest.
- **Refresh rate**: each play runs at one of the device's display modes (Quest 2 72/90 Hz,
  Quest 3 and 3S 90/120 Hz, Quest Pro 72/90 Hz, Pico 4 72/90 Hz, Vision Pro 90 Hz,
  Vive Focus 3 90 Hz); a heartbeat's played time shows hz frames a second.
- **Dropped frames**: a share of those frames, `drop_pct x hz/90 x (1 + 2 x (kbps /
  decode_kbps)²)`: the device's rate at light load, more with a shorter frame budget and as
  the bitrate nears what the device decodes comfortably. A play's strain (scene, heat:
  lognormal, mean 1) and each heartbeat's noise scale it. At the same bitrate a Quest 2
  drops several times what a Quest 3 does.
- **Errors**: codes of three kinds (fatal before start, fatal while playing, non-fatal),
  each with a weight, that a device multiplies by its own factors: older decoders crash
  and run out of memory, visionOS refuses more sources and DRM licences, Pico's DRM fails
  more often, hot headsets throttle.
- Players that report no frame counts (`reports_frames`) send heartbeats without them.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Final, Literal

from quip.simulate.draws import cumulative, pick

ErrorKind = Literal["start", "play", "warning"]


@dataclass(frozen=True, slots=True)
class ErrorCode:
    code: str
    kind: ErrorKind  # start: fatal before start; play: fatal after it; warning: not fatal
    weight: float  # among the codes of its kind, on a device without factors


ERROR_CODES: Final = (
    ErrorCode("MANIFEST_LOAD_ERROR", "start", 30),
    ErrorCode("NETWORK_TIMEOUT", "start", 30),
    ErrorCode("DRM_LICENSE_FAILED", "start", 20),
    ErrorCode("MEDIA_ERR_SRC_NOT_SUPPORTED", "start", 20),
    ErrorCode("NETWORK_LOST", "play", 40),
    ErrorCode("SEGMENT_404", "play", 30),
    ErrorCode("DECODER_CRASH", "play", 20),
    ErrorCode("OUT_OF_MEMORY", "play", 10),
    ErrorCode("SEGMENT_RETRY", "warning", 45),
    ErrorCode("CDN_FAILOVER", "warning", 25),
    ErrorCode("DECODER_WARNING", "warning", 20),
    ErrorCode("THERMAL_THROTTLE", "warning", 10),
)


@dataclass(frozen=True, slots=True)
class Device:
    model: str
    os: str
    weight: float  # share of users
    startup_ms: float  # median startup on a good network
    max_kbps: int  # top rung served to it
    failure_factor: float  # older/weaker devices fail to start more often
    refresh_hz: tuple[tuple[int, float], ...]  # display modes a play runs at, weighted
    drop_pct: float  # dropped frames at light load and 90 Hz, in %
    decode_kbps: int  # bitrate it decodes comfortably: drops grow as a play nears it
    error_factors: tuple[tuple[str, float], ...] = ()  # code → multiplier of its weight
    reports_frames: bool = True


DEVICES: Final = (
    Device(
        "quest3", "horizon", 36, 750, 20_000, 1.0,
        refresh_hz=((90, 70), (120, 30)), drop_pct=0.4, decode_kbps=40_000,
    ),
    Device(
        "quest2", "horizon", 24, 1_150, 12_000, 1.5,
        refresh_hz=((72, 60), (90, 40)), drop_pct=1.3, decode_kbps=14_000,
        error_factors=(
            ("DECODER_CRASH", 2.5), ("OUT_OF_MEMORY", 3.0),
            ("DECODER_WARNING", 1.5), ("THERMAL_THROTTLE", 2.0),
        ),
    ),
    Device(
        "quest3s", "horizon", 10, 820, 12_000, 1.1,
        refresh_hz=((90, 75), (120, 25)), drop_pct=0.6, decode_kbps=30_000,
        error_factors=(("OUT_OF_MEMORY", 1.5),),
    ),
    Device(
        "pico4", "picoos", 11, 950, 12_000, 1.2,
        refresh_hz=((72, 50), (90, 50)), drop_pct=0.9, decode_kbps=20_000,
        error_factors=(("DRM_LICENSE_FAILED", 2.0), ("THERMAL_THROTTLE", 1.5)),
    ),
    Device(
        "visionpro", "visionos", 9, 550, 20_000, 0.8,
        refresh_hz=((90, 1),), drop_pct=0.25, decode_kbps=60_000,
        error_factors=(
            ("MEDIA_ERR_SRC_NOT_SUPPORTED", 3.0), ("DRM_LICENSE_FAILED", 1.5),
            ("DECODER_CRASH", 0.3), ("THERMAL_THROTTLE", 0.5),
        ),
    ),
    Device(
        "quest_pro", "horizon", 6, 800, 20_000, 1.0,
        refresh_hz=((72, 50), (90, 50)), drop_pct=0.7, decode_kbps=30_000,
        error_factors=(("THERMAL_THROTTLE", 1.5),),
    ),
    Device(
        "vive_focus3", "viveport", 4, 1_300, 6_000, 1.6,
        refresh_hz=((90, 1),), drop_pct=1.5, decode_kbps=10_000,
        error_factors=(
            ("MEDIA_ERR_SRC_NOT_SUPPORTED", 2.5), ("DECODER_CRASH", 2.0),
            ("OUT_OF_MEMORY", 2.0),
        ),
        reports_frames=False,
    ),
)  # fmt: skip

# At most this share of a heartbeat's frames is dropped, however strained the play.
MAX_DROPPED_FRACTION: Final = 0.5


def error_weights(device: Device, kind: ErrorKind) -> dict[str, float]:
    """The weight of each code of `kind` on `device` (its factors applied)."""
    factors = dict(device.error_factors)
    return {e.code: e.weight * factors.get(e.code, 1.0) for e in ERROR_CODES if e.kind == kind}


_ERROR_TABLES: Final = {
    (device.model, kind): (tuple(weights), cumulative(weights.values()))
    for device in DEVICES
    for kind in ("start", "play", "warning")
    for weights in [error_weights(device, kind)]
}
_REFRESH_TABLES: Final = {
    device.model: (
        tuple(hz for hz, _ in device.refresh_hz),
        cumulative(weight for _, weight in device.refresh_hz),
    )
    for device in DEVICES
}


def draw_error_code(rng: random.Random, device: Device, kind: ErrorKind) -> str:
    codes, weights = _ERROR_TABLES[device.model, kind]
    return pick(rng, codes, weights)


def draw_startup_ms(rng: random.Random, device: Device, network_factor: float) -> int:
    return int(rng.lognormvariate(math.log(device.startup_ms * network_factor), 0.55))


def draw_refresh_hz(rng: random.Random, device: Device) -> int:
    modes, weights = _REFRESH_TABLES[device.model]
    return pick(rng, modes, weights)


def draw_strain(rng: random.Random) -> float:
    """How hard one play is on the device (scene complexity, heat): lognormal, mean 1."""
    sigma = 0.5
    return rng.lognormvariate(-sigma * sigma / 2, sigma)


def expected_drop_pct(device: Device, hz: int, kbps: int) -> float:
    """Dropped frames in % of those shown, for a play of strain 1."""
    return device.drop_pct * hz / 90 * (1 + 2 * (kbps / device.decode_kbps) ** 2)


def draw_frames(
    rng: random.Random, device: Device, hz: int, kbps: int, played_ms: int, strain: float
) -> tuple[int, int]:
    """(frames_rendered, frames_dropped) over `played_ms` of a play at `hz` and `kbps`."""
    shown = round(hz * played_ms / 1000)
    noise = rng.lognormvariate(-0.35 * 0.35 / 2, 0.35)
    fraction = min(MAX_DROPPED_FRACTION, expected_drop_pct(device, hz, kbps) / 100 * strain * noise)
    dropped = round(shown * fraction)
    return shown - dropped, dropped
