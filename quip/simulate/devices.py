"""The headset models the simulator draws users from, and how each plays video."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class Device:
    model: str
    os: str
    weight: float
    startup_ms: float  # median startup on a good network
    max_kbps: int
    failure_factor: float  # older/weaker devices fail to start more often


DEVICES: Final = (
    Device("quest3", "horizon", 36, 750, 20_000, 1.0),
    Device("quest2", "horizon", 24, 1_150, 12_000, 1.5),
    Device("quest3s", "horizon", 10, 820, 12_000, 1.1),
    Device("pico4", "picoos", 11, 950, 12_000, 1.2),
    Device("visionpro", "visionos", 9, 550, 20_000, 0.8),
    Device("quest_pro", "horizon", 6, 800, 20_000, 1.0),
    Device("vive_focus3", "viveport", 4, 1_300, 6_000, 1.6),
)
