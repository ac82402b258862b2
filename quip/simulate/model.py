"""The traffic model: who the users are and how often they come back (pure data and draws).

- **Users** (`--users N`): device (quest3, quest2, quest3s, quest_pro, pico4, visionpro,
  vive_focus3, weighted), region (eu, us, apac, latam: the local evening is the peak),
  dominant hand, network quality (good/ok/poor: startup time, rebuffering, failures, top
  bitrate), engagement (lognormal, mean 1: scales return probability and session length),
  buyer propensity, and an update lag for app versions (rolled out over time).
- **Retention**: a user's first day is drawn over the window (weighted by its length); on
  day k ≥ 1 after it the user returns with probability
  `min(0.95, engagement x weekday x (0.08 + 0.32·exp(-(k-1)/5)))`: ~40% on day 1, ~20% on
  day 7, ~10% from day 20 on (x1.2 on weekends). An active day has 1-4 sessions
  (55/28/12/5%) at local-time hours peaking at 20:00; sessions of a user never overlap.

What a session consists of is in `session.py`, a play in `playback.py` (and how each
headset plays in `devices.py`), the service messages in `services.py`. Every probability
is a field of `Model`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Final

from quip.simulate.devices import DEVICES, Device
from quip.simulate.draws import cumulative, pick

MINUTE_MS: Final = 60_000
HOUR_MS: Final = 3_600_000
DAY_MS: Final = 86_400_000

HOME_URL: Final = "https://quibrowser.example/"
STORE_URL: Final = "https://quibrowser.example/store"


class SimulationError(ValueError):
    """A simulation that cannot be run as asked (e.g. more days than the gateway keeps)."""


@dataclass(frozen=True, slots=True)
class Region:
    name: str
    utc_offset_h: int
    weight: float


REGIONS: Final = (
    Region("us", -6, 38),
    Region("eu", 1, 32),
    Region("apac", 8, 20),
    Region("latam", -4, 10),
)


@dataclass(frozen=True, slots=True)
class Network:
    name: str
    weight: float
    startup_factor: float
    rebuffer_per_interval: float  # per 10 s of played time
    failure_factor: float  # start failures and mid-play fatal errors
    max_kbps: int


NETWORKS: Final = (
    Network("good", 60, 1.0, 0.006, 1.0, 20_000),
    Network("ok", 30, 1.5, 0.02, 2.0, 6_000),
    Network("poor", 10, 2.6, 0.06, 4.0, 3_000),
)

BITRATE_LADDER: Final = (800, 1_500, 3_000, 6_000, 12_000, 20_000)

# (version, release day relative to the window's last day); users update after a lag.
APP_VERSIONS: Final = (("2.9.4", -120), ("3.0.0", -45), ("3.0.2", -21), ("3.1.0", -6))

# Sessions by local hour (0..23): a morning bump, an evening peak at 20:00.
LOCAL_HOUR_WEIGHTS: Final = (
    1.0, 0.6, 0.4, 0.3, 0.3, 0.4, 0.8, 1.4, 1.8, 2.0, 2.2, 2.4,
    2.8, 2.6, 2.5, 2.6, 3.0, 3.6, 4.6, 5.6, 6.0, 5.4, 4.0, 2.2,
)  # fmt: skip

PAGES: Final = (
    ("https://quibrowser.example/explore", "Explore VR", 14),
    ("https://quibrowser.example/news", "Qui News", 9),
    ("https://quibrowser.example/settings", "Settings", 3),
    ("https://quibrowser.example/library", "My Library", 8),
    ("https://www.youtube.com/vr", "YouTube VR", 16),
    ("https://en.wikipedia.org/wiki/Virtual_reality", "Virtual reality - Wikipedia", 5),
    ("https://sketchfab.com/3d-models", "Sketchfab 3D models", 6),
    ("https://www.nytimes.com/", "The New York Times", 4),
    ("https://github.com/", "GitHub", 3),
    ("https://weather.example/today", "Weather today", 4),
    ("https://maps.example/world", "World Map VR", 5),
    ("https://social.example/feed", "Social feed", 9),
    ("https://games.example/webxr", "WebXR games", 7),
)

GESTURES: Final = (
    ("pinch", 34),
    ("grab", 20),
    ("swipe", 18),
    ("point", 12),
    ("palm_up", 7),
    ("thumbs_up", 5),
    ("fist", 4),
)

CUSTOM_EVENTS: Final = (
    ("menu_open", 40),
    ("bookmark_add", 20),
    ("tab_open", 25),
    ("voice_search", 10),
    ("passthrough_toggle", 5),
)


@dataclass(frozen=True, slots=True)
class Model:
    """The probabilities of the generator (described in the docstrings of this module,
    `session.py`, `playback.py` and `services.py`)."""

    retention_floor: float = 0.08
    retention_initial: float = 0.32
    retention_decay_days: float = 5.0
    weekend_factor: float = 1.2
    engagement_sigma: float = 0.6
    sessions_per_day: tuple[tuple[int, float], ...] = ((1, 55), (2, 28), (3, 12), (4, 5))
    mean_actions: float = 9.0
    mean_think_s: float = 14.0
    actions: tuple[tuple[str, float], ...] = (
        ("browse", 38),
        ("gesture", 22),
        ("play", 18),
        ("store", 8),
        ("custom", 10),
        ("social", 4),
    )
    right_handed: float = 0.88
    tutorial_pinch_dominant: float = 0.9
    tutorial_complete: float = 0.66
    tutorial_skip: float = 0.22
    store_item_view: float = 0.55
    store_add_to_cart: float = 0.40
    store_purchase: float = 0.60
    exit_before_start: float = 0.03
    exit_with_end_event: float = 0.6
    start_failure: float = 0.025
    slow_start_ms: float = 5_000
    slow_start_abandon: float = 0.35
    fatal_per_interval: float = 0.0005
    nonfatal_per_play: float = 0.04
    switch_per_interval: float = 0.015
    upswitch_per_interval: float = 0.5
    downswitch_after_rebuffer: float = 0.6
    # A heartbeat that dropped more than this share of its frames makes the player step
    # down a rung (like dash.js's DroppedFramesRule) with probability downswitch_after_drops.
    downswitch_dropped_fraction: float = 0.06
    downswitch_after_drops: float = 0.5
    # Watched to the end, by content kind; otherwise a Beta(1.1, 3) fraction (movies: Beta(1, 6):
    # long VR viewing is rare).
    full_watch_short: float = 0.55
    full_watch_immersive: float = 0.35
    full_watch_movie: float = 0.05
    social_per_session: float = 0.3
    social_delivered: float = 0.94
    email_sent: float = 0.97
    encoding_success: float = 0.92
    new_content_per_day: float = 3.0
    content_updates_per_day: float = 2.0
    live_new_content_every_s: float = 120.0
    live_new_users: float = 0.25  # share of users whose first live session is their first


MODEL: Final = Model()

_DEVICE_CUM: Final = cumulative(d.weight for d in DEVICES)
_REGION_CUM: Final = cumulative(r.weight for r in REGIONS)
_NETWORK_CUM: Final = cumulative(n.weight for n in NETWORKS)


@dataclass(slots=True)
class UserProfile:
    index: int
    user_id: str
    device: Device
    region: Region
    network: Network
    dominant_hand: str
    engagement: float
    buyer: float
    update_lag_days: float


def user_id(index: int) -> str:
    return f"vr-user-{index:06d}"


def make_user(seed: int, index: int, model: Model = MODEL) -> tuple[UserProfile, random.Random]:
    """A user's profile and the generator of everything it does (seeded by seed and index)."""
    rng = random.Random(f"{seed}/user/{index}")  # noqa: S311 (test data, not secrets)
    sigma = model.engagement_sigma
    profile = UserProfile(
        index=index,
        user_id=user_id(index),
        device=pick(rng, DEVICES, _DEVICE_CUM),
        region=pick(rng, REGIONS, _REGION_CUM),
        network=pick(rng, NETWORKS, _NETWORK_CUM),
        dominant_hand="right" if rng.random() < model.right_handed else "left",
        engagement=rng.lognormvariate(-sigma * sigma / 2, sigma),
        buyer=min(2.0, rng.lognormvariate(-0.125, 0.5)),
        update_lag_days=rng.expovariate(1 / 3),
    )
    return profile, rng


def app_version(profile: UserProfile, day_offset: float) -> str:
    """The newest release the user has installed `day_offset` days after the window's end
    day (negative: before)."""
    installed = APP_VERSIONS[0][0]
    for version, released in APP_VERSIONS:
        if day_offset - released >= profile.update_lag_days:
            installed = version
    return installed
