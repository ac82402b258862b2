"""`quip simulate`: realistic VR headset traffic for a gateway (SPEC §7), deterministic per seed.

Two layers:

- **A pure generator** (no I/O, no clock: the end of the simulated window is a parameter).
  `historical_items(Historical(...))` yields the whole backfill in send order;
  `live_items(Live(...))` yields an endless stream in simulated time. Every random draw comes
  from `random.Random` instances seeded by strings derived from the seed (`"<seed>/user/<i>"`,
  `"<seed>/services"`, ...), so a user's life depends only on the seed and its index, and ids
  (event_id, session_id, play_id, message_id) are uuids made of those generators' bits: the
  same seed and window end (`--end`) give the same events, whatever the concurrency or
  timing of sending; re-sending them is deduplicated by the pipeline (same event_ids).
- **The sending loop** (`run_historical`, `run_live`): one request per `Batch`, N concurrent
  keep-alive connections (aiohttp), a user's requests sent in order, retries of 429/503/5xx
  and network errors with backoff (honouring `Retry-After`) for up to `retry_for_s`; nothing
  is dropped silently: another 4xx fails its batch, a batch still refused after
  `retry_for_s` or a 401 aborts the run, and every batch not accepted is counted and
  reported in the `Summary`. A gateway that refuses the connection (or whose host does not
  resolve) before anything is sent raises `GatewayUnreachable` at once; the first failure
  of a run that has started is printed with how long the run keeps retrying.

The model (probabilities in `Model`):

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
- **A session**: `session_start`, a home `page_view`, then ~9·√engagement actions separated
  by think times (mean 14 s): browse (page_view{url,title}), gesture{gesture,hand}, play a
  video, visit the store, a custom event (menu_open, bookmark_add, ...), social
  (friend_invite); ends with `session_end{duration_ms}`. Context per session: session_id,
  device_model, app_version, os, region (sent as the batch `context`).
- **Funnels** (deploy/funnels.example.toml): the first session has the tutorial: pinch with
  the dominant hand (90%; right-handed 88%), then `tutorial_complete{skipped:false}` (66%),
  `{skipped:true}` (22%) or nothing. Store visits: store `page_view`
  (https://quibrowser.example/store) → item page (55%) → `add_to_cart` (40%, x buyer
  propensity) → `purchase` (60%); a purchase sends a receipt e-mail.
- **Plays** (SPEC §6 events, all with play_id and content_id; content from a catalog of
  shorts/immersive/movies with Zipf popularity): `playback_request`, then exit before start
  (3%, 60% of them with `playback_end{played_ms:0}`, the rest go idle), start failure (2.5%
  x network x device factors: fatal `playback_error`), slow starts (> 5 s) abandoned 35% of
  the time; otherwise `playback_start{startup_ms (device/network lognormal), bitrate_kbps}`
  and a heartbeat every 10 s of played time {played_ms, bitrate_kbps}; per 10 s: ABR
  up-switches while below the network's top rung, a rebuffer (0.6/2/6% by network,
  followed by a down-switch 60% of the time), a random switch (1.5%), a mid-play fatal error
  (0.05% x network factor 1/2/4); 4% of plays get a non-fatal error. A play ends with
  `playback_end{played_ms}` (the remainder since the last heartbeat) after watching the whole
  content (shorts 55%, immersive 35%, movies 5%) or a Beta(1.1, 3) fraction of it (movies:
  Beta(1, 6)). Measured over 500 users x 14 days: ~4% start failures, ~3% exits before
  start, ~2.5% of started plays fail, ~27% rebuffer, startup p50 ~1 s / p95 ~3 s.
- **Service messages** (published only with a Kafka bootstrap): a SocialNotification to the
  user in 30% of sessions (delivered 94%, else failed), a welcome e-mail in the first
  session and a receipt per purchase (sent 97%, else failed); the CMS and video services
  encode and publish new content (~3 per day historically, one per ~2 min live): EncodingJob
  queued → succeeded (92%) or failed (then re-queued as a new job) with encode_ms, then
  ContentPublished; a few "updated" actions per day.
- **Batching like a headset SDK**: a request holds one user's events of one session: it
  closes on 100 events or when the flush interval has passed since its first event, and at
  the session end. Historically the interval is 2 min of event time: larger requests for a
  fast backfill, yet well under the worker's 5 min play idle timeout, so the next request of
  a running play arrives before event time (advancing with every request) could close it.
  Live, it is 2 s of wall time.

Historical mode backfills the window `[end - days, end]` (never older than the gateway's
`QUIP_MAX_EVENT_AGE_DAYS` minus a 2 h margin) in the order a fleet of headsets would have
sent it: requests ordered by their last event's time, so the pipeline sees event time
advance like in production. Live mode keeps as many sessions running as `--rate` needs
(from the measured events per session-second), emits exactly `rate` events per second with
ts = now, and cycles users (an idle user, weighted by engagement, starts the next session).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import email.utils
import functools
import gzip
import heapq
import math
import random
import signal
import socket
import time
import urllib.parse
import uuid
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Final, TypeVar

import aiohttp
import msgspec
import orjson
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from schemas.publisher import PublishError, ServicePublisher
from schemas.services import (
    ContentPublished,
    EmailNotification,
    EncodingJob,
    ServiceMessage,
    SocialNotification,
)

MINUTE_MS: Final = 60_000
HOUR_MS: Final = 3_600_000
DAY_MS: Final = 86_400_000

DEFAULT_URL: Final = "http://127.0.0.1:8000"
EVENTS_PATH: Final = "/v1/events"
MAX_BATCH_EVENTS: Final = 100
HEARTBEAT_MS: Final = 10_000
HISTORICAL_FLUSH_MS: Final = 120_000
LIVE_FLUSH_S: Final = 2.0
# Historical events are kept this far inside the gateway's age limit, so a long backfill
# (or a gateway clock a little ahead) does not see its oldest events rejected as too_old.
AGE_MARGIN_MS: Final = 2 * HOUR_MS

HOME_URL: Final = "https://quibrowser.example/"
STORE_URL: Final = "https://quibrowser.example/store"


T = TypeVar("T")


class SimulationError(ValueError):
    """A simulation that cannot be run as asked (e.g. more days than the gateway keeps)."""


class GatewayUnreachable(RuntimeError):
    """Nothing listens at the gateway URL (connection refused, or the host does not
    resolve): retrying would only wait out `--retry-for` in silence."""


# --------------------------------------------------------------------------- the model


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

START_FATAL_CODES: Final = (
    "MANIFEST_LOAD_ERROR",
    "DRM_LICENSE_FAILED",
    "MEDIA_ERR_SRC_NOT_SUPPORTED",
    "NETWORK_TIMEOUT",
)
PLAY_FATAL_CODES: Final = ("DECODER_CRASH", "SEGMENT_404", "NETWORK_LOST")
NONFATAL_CODES: Final = ("SEGMENT_RETRY", "DECODER_WARNING", "CDN_FAILOVER")


@dataclass(frozen=True, slots=True)
class Model:
    """The probabilities of the generator (see the module docstring)."""

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


@dataclass(frozen=True, slots=True)
class Content:
    content_id: str
    kind: str
    length_ms: int
    weight: float
    published_ms: int  # 0: published before anything simulated


def base_catalog() -> list[Content]:
    """120 items that exist before any simulated time, the same for every seed."""
    rng = random.Random("quip-simulate/catalog")  # noqa: S311 (test data, not secrets)
    kinds = (("short", 55, 60_000, 360_000), ("immersive", 30, 300_000, 1_500_000))
    items = []
    for rank in range(1, 121):
        if rng.random() < 0.1:
            kind, length = "movie", rng.randint(3_600_000, 7_800_000)
        else:
            name, _, low, high = rng.choices(kinds, weights=[k[1] for k in kinds])[0]
            kind, length = name, rng.randint(low, high)
        items.append(Content(f"vid-{rank:04d}", kind, length, 1 / rank**0.9, 0))
    return items


class Catalog:
    """Content to play, by Zipf popularity among the items published at a given time."""

    def __init__(self, items: Iterable[Content]) -> None:
        self.items = sorted(items, key=lambda c: c.published_ms)
        self._published = [c.published_ms for c in self.items]
        self._cumulative: list[float] = []
        total = 0.0
        for item in self.items:
            total += item.weight
            self._cumulative.append(total)

    def pick(self, rng: random.Random, at_ms: int) -> Content:
        available = max(1, bisect.bisect_right(self._published, at_ms))
        point = rng.random() * self._cumulative[available - 1]
        return self.items[min(bisect.bisect_right(self._cumulative, point), available - 1)]


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _cumulative(weights: Iterable[float]) -> list[float]:
    out: list[float] = []
    total = 0.0
    for weight in weights:
        total += weight
        out.append(total)
    return out


def _pick(rng: random.Random, values: tuple[T, ...], cumulative: list[float]) -> T:
    return values[bisect.bisect_right(cumulative, rng.random() * cumulative[-1])]


_DEVICE_CUM: Final = _cumulative(d.weight for d in DEVICES)
_REGION_CUM: Final = _cumulative(r.weight for r in REGIONS)
_NETWORK_CUM: Final = _cumulative(n.weight for n in NETWORKS)
_PAGE_CUM: Final = _cumulative(p[2] for p in PAGES)
_GESTURE_NAMES: Final = tuple(g[0] for g in GESTURES)
_GESTURE_CUM: Final = _cumulative(g[1] for g in GESTURES)
_CUSTOM_NAMES: Final = tuple(c[0] for c in CUSTOM_EVENTS)
_CUSTOM_CUM: Final = _cumulative(c[1] for c in CUSTOM_EVENTS)
# Session start hours in UTC, per region.
_UTC_HOUR_CUM: Final = {
    region.name: _cumulative(
        LOCAL_HOUR_WEIGHTS[(hour + region.utc_offset_h) % 24] for hour in range(24)
    )
    for region in REGIONS
}


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
        device=_pick(rng, DEVICES, _DEVICE_CUM),
        region=_pick(rng, REGIONS, _REGION_CUM),
        network=_pick(rng, NETWORKS, _NETWORK_CUM),
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


# --------------------------------------------------------------------------- sessions


@dataclass(frozen=True, slots=True)
class Batch:
    """One request: one user's events (≤ 100, oldest first) with the session's context."""

    user_id: str
    context: dict[str, str]
    events: list[dict[str, Any]]

    @property
    def sort_ts(self) -> int:
        ts: int = self.events[-1]["ts"]
        return ts


@dataclass(frozen=True, slots=True)
class ServiceItem:
    message: ServiceMessage

    @property
    def sort_ts(self) -> int:
        return self.message.ts


Item = Batch | ServiceItem


@dataclass(slots=True)
class Session:
    """A generated session: events in time order (native, without context fields)."""

    user_id: str
    context: dict[str, str]
    events: list[dict[str, Any]]
    services: list[ServiceMessage]

    @property
    def start_ms(self) -> int:
        ts: int = self.events[0]["ts"]
        return ts

    @property
    def end_ms(self) -> int:
        ts: int = self.events[-1]["ts"]
        return ts

    def shift(self, delta_ms: int) -> None:
        for event in self.events:
            event["ts"] += delta_ms
        self.services = [
            msgspec.structs.replace(message, ts=message.ts + delta_ms) for message in self.services
        ]

    def batches(self, flush_ms: int) -> list[Batch]:
        """The session as a headset SDK flushes it: on 100 events, when `flush_ms` has passed
        since the batch's first event, and at the end."""
        out: list[Batch] = []
        current: list[dict[str, Any]] = []
        for event in self.events:
            if current and (
                len(current) >= MAX_BATCH_EVENTS or event["ts"] - current[0]["ts"] >= flush_ms
            ):
                out.append(Batch(self.user_id, self.context, current))
                current = []
            current.append(event)
        if current:
            out.append(Batch(self.user_id, self.context, current))
        return out


class _SessionWriter:
    __slots__ = (
        "catalog",
        "events",
        "model",
        "profile",
        "project",
        "rng",
        "services",
        "t",
        "users",
    )

    def __init__(
        self,
        profile: UserProfile,
        rng: random.Random,
        start_ms: int,
        catalog: Catalog,
        users: int,
        project: str,
        model: Model,
    ) -> None:
        self.profile = profile
        self.rng = rng
        self.t = start_ms
        self.catalog = catalog
        self.users = users
        self.project = project
        self.model = model
        self.events: list[dict[str, Any]] = []
        self.services: list[ServiceMessage] = []

    def add(self, kind: str, props: dict[str, Any]) -> None:
        self.events.append(
            {
                "event_id": _uuid(self.rng),
                "type": kind,
                "user_id": self.profile.user_id,
                "ts": self.t,
                "props": props,
            }
        )

    def wait(self, low_ms: float, high_ms: float) -> None:
        self.t += int(self.rng.uniform(low_ms, high_ms))

    def think(self) -> None:
        self.t += 1_000 + int(self.rng.expovariate(1 / (self.model.mean_think_s * 1_000)))

    def hand(self) -> str:
        other = "left" if self.profile.dominant_hand == "right" else "right"
        return self.profile.dominant_hand if self.rng.random() < 0.8 else other

    def email(self, template: str) -> None:
        sent = self.rng.random() < self.model.email_sent
        self.services.append(
            EmailNotification(
                message_id=_uuid(self.rng),
                user_id=self.profile.user_id,
                template=template,
                status="sent" if sent else "failed",
                ts=self.t + int(self.rng.uniform(2_000, 30_000)),
                error=None if sent else self.rng.choice(("mailbox unavailable", "bounced")),
                project=self.project,
            )
        )

    # ------------------------------------------------------------------ actions
    def tutorial(self) -> None:
        m, rng = self.model, self.rng
        self.wait(3_000, 12_000)
        dominant = self.profile.dominant_hand
        other = "left" if dominant == "right" else "right"
        hand = dominant if rng.random() < m.tutorial_pinch_dominant else other
        self.add("gesture", {"gesture": "pinch", "hand": hand})
        for gesture in ("grab", "swipe")[: rng.randint(0, 2)]:
            self.wait(2_000, 9_000)
            self.add("gesture", {"gesture": gesture, "hand": self.hand()})
        outcome = rng.random()
        if outcome < m.tutorial_complete:
            self.wait(5_000, 40_000)
            self.add("tutorial_complete", {"skipped": False, "steps": 5})
        elif outcome < m.tutorial_complete + m.tutorial_skip:
            self.wait(1_000, 8_000)
            self.add("tutorial_complete", {"skipped": True, "steps": rng.randint(1, 4)})

    def browse(self) -> None:
        url, title, _ = _pick(self.rng, PAGES, _PAGE_CUM)
        props: dict[str, Any] = {"url": url}
        if self.rng.random() < 0.9:
            props["title"] = title
        self.add("page_view", props)

    def gesture(self) -> None:
        props: dict[str, Any] = {"gesture": _pick(self.rng, _GESTURE_NAMES, _GESTURE_CUM)}
        if self.rng.random() < 0.92:  # some gestures are reported without a hand
            props["hand"] = self.hand()
        self.add("gesture", props)

    def store(self) -> None:
        m, rng = self.model, self.rng
        self.add("page_view", {"url": STORE_URL, "title": "Qui Store"})
        if rng.random() >= m.store_item_view:
            return
        self.think()
        item = 1 + int(rng.paretovariate(1.2)) % 60
        price = rng.choice((0.99, 2.99, 4.99, 9.99, 14.99, 29.99))
        self.add("page_view", {"url": f"{STORE_URL}/item/{item}", "title": f"Store item {item}"})
        if rng.random() >= m.store_add_to_cart * self.profile.buyer:
            return
        self.wait(3_000, 30_000)
        self.add("add_to_cart", {"item_id": f"item-{item}", "price": price})
        if rng.random() >= m.store_purchase:
            return
        self.wait(5_000, 60_000)
        self.add("purchase", {"item_id": f"item-{item}", "price": price, "currency": "USD"})
        self.email("purchase_receipt")

    def custom(self) -> None:
        name = _pick(self.rng, _CUSTOM_NAMES, _CUSTOM_CUM)
        props: dict[str, Any] = {}
        if name == "tab_open":
            props["tabs"] = self.rng.randint(2, 9)
        elif name == "voice_search":
            props["chars"] = self.rng.randint(4, 40)
        self.add(name, props)

    def social(self) -> None:
        self.add("friend_invite", {"channel": self.rng.choice(("link", "party", "message"))})

    def notification(self, end_ms: int) -> None:
        rng = self.rng
        delivered = rng.random() < self.model.social_delivered
        sender = rng.randrange(self.users)
        self.services.append(
            SocialNotification(
                message_id=_uuid(rng),
                user_id=self.profile.user_id,
                kind=rng.choice(("friend_request", "message", "mention", "party_invite")),
                status="delivered" if delivered else "failed",
                ts=int(rng.uniform(self.events[0]["ts"], end_ms)),
                sender_id=user_id(sender),
                project=self.project,
            )
        )

    def play(self) -> None:
        m, rng, profile = self.model, self.rng, self.profile
        network, device = profile.network, profile.device
        content = self.catalog.pick(rng, self.t)
        base = {"play_id": "p-" + _uuid(rng), "content_id": content.content_id}
        self.add("playback_request", dict(base))

        if rng.random() < m.exit_before_start:
            self.wait(1_500, 8_000)
            if rng.random() < m.exit_with_end_event:
                self.add("playback_end", {**base, "played_ms": 0})
            return
        if rng.random() < m.start_failure * network.failure_factor * device.failure_factor:
            self.wait(800, 10_000)
            self.add(
                "playback_error", {**base, "code": rng.choice(START_FATAL_CODES), "fatal": True}
            )
            return
        startup = int(
            rng.lognormvariate(math.log(device.startup_ms * network.startup_factor), 0.55)
        )
        if startup > m.slow_start_ms and rng.random() < m.slow_start_abandon:
            self.wait(m.slow_start_ms * 0.6, startup)
            self.add("playback_end", {**base, "played_ms": 0})
            return
        top = min(device.max_kbps, network.max_kbps)
        ladder = [rung for rung in BITRATE_LADDER if rung <= top] or [BITRATE_LADDER[0]]
        level = max(0, len(ladder) - 1 - rng.randint(1, 2))
        self.t += startup
        self.add("playback_start", {**base, "startup_ms": startup, "bitrate_kbps": ladder[level]})

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
                self.add(
                    "playback_quality_change",
                    {**base, "from_kbps": ladder[level], "to_kbps": ladder[level + 1]},
                )
                level += 1
            elif rng.random() < m.switch_per_interval:
                new = max(0, min(len(ladder) - 1, level + rng.choice((-1, 1))))
                if new != level:
                    self.add(
                        "playback_quality_change",
                        {**base, "from_kbps": ladder[level], "to_kbps": ladder[new]},
                    )
                    level = new
            if rng.random() < network.rebuffer_per_interval:
                offset = int(rng.uniform(0, tick))
                stall = int(rng.lognormvariate(math.log(1_400), 0.7))
                self.t += offset + stall
                self.add("playback_rebuffer", {**base, "duration_ms": stall})
                if level > 0 and rng.random() < m.downswitch_after_rebuffer:
                    self.add(
                        "playback_quality_change",
                        {**base, "from_kbps": ladder[level], "to_kbps": ladder[level - 1]},
                    )
                    level -= 1
            if nonfatal_at is not None and played <= nonfatal_at < played + tick:
                self.add(
                    "playback_error", {**base, "code": rng.choice(NONFATAL_CODES), "fatal": False}
                )
            if rng.random() < fatal_p:
                self.t += int(rng.uniform(100, max(101, tick - offset)))
                self.add(
                    "playback_error", {**base, "code": rng.choice(PLAY_FATAL_CODES), "fatal": True}
                )
                return
            self.t += tick - offset
            played += tick
            remainder = tick
            if tick == HEARTBEAT_MS:
                self.add(
                    "playback_heartbeat", {**base, "played_ms": tick, "bitrate_kbps": ladder[level]}
                )
                remainder = 0
            if played >= target:
                self.t += int(rng.uniform(100, 1_500))
                self.add("playback_end", {**base, "played_ms": remainder})


def make_session(
    profile: UserProfile,
    rng: random.Random,
    start_ms: int,
    *,
    first: bool,
    app: str,
    catalog: Catalog,
    users: int,
    project: str,
    model: Model = MODEL,
) -> Session:
    """One session starting at `start_ms` (pure: draws only from `rng`)."""
    writer = _SessionWriter(profile, rng, start_ms, catalog, users, project, model)
    context = {
        "session_id": "s-" + _uuid(rng),
        "device_model": profile.device.model,
        "app_version": app,
        "os": profile.device.os,
        "region": profile.region.name,
    }
    writer.add("session_start", {})
    writer.wait(500, 3_000)
    writer.add("page_view", {"url": HOME_URL, "title": "Qui Browser"})
    if first:
        writer.tutorial()
        writer.email("welcome")
    actions = min(
        80, int(rng.expovariate(1 / (model.mean_actions * math.sqrt(profile.engagement))))
    )
    kinds = tuple(a[0] for a in model.actions)
    cumulative = _cumulative(a[1] for a in model.actions)
    for _ in range(actions):
        writer.think()
        kind = _pick(rng, kinds, cumulative)
        if kind == "browse":
            writer.browse()
        elif kind == "gesture":
            writer.gesture()
        elif kind == "play":
            writer.play()
        elif kind == "store":
            writer.store()
        elif kind == "custom":
            writer.custom()
        else:
            writer.social()
    writer.wait(1_000, 10_000)
    writer.add("session_end", {"duration_ms": writer.t - start_ms})
    if rng.random() < model.social_per_session:
        writer.notification(writer.t)
    return Session(profile.user_id, context, writer.events, writer.services)


# --------------------------------------------------------------------------- historical


@dataclass(frozen=True, slots=True)
class Historical:
    """A backfill of `days` days ending at `end_ms` for `users` users."""

    seed: int
    users: int
    days: int
    end_ms: int
    max_age_days: int = 30
    flush_ms: int = HISTORICAL_FLUSH_MS
    project: str = "default"
    model: Model = MODEL
    now_ms: int | None = None  # when it is sent (default end_ms): the gateway's age limit

    def __post_init__(self) -> None:
        if self.users < 1:
            raise SimulationError("--users must be at least 1")
        if self.days < 1:
            raise SimulationError("--days must be at least 1")
        if self.days > self.max_age_days:
            raise SimulationError(
                f"--days {self.days} is more than QUIP_MAX_EVENT_AGE_DAYS={self.max_age_days}: "
                "the gateway rejects events older than that (too_old); use --days "
                f"{self.max_age_days} or less"
            )
        now = self.end_ms if self.now_ms is None else self.now_ms
        if self.end_ms > now + MINUTE_MS:
            raise SimulationError("the end of the window is in the future")
        if self.min_ts >= self.end_ms - HOUR_MS:
            raise SimulationError(
                "the window ends too long ago: the gateway rejects events older than "
                f"QUIP_MAX_EVENT_AGE_DAYS={self.max_age_days} days"
            )

    @property
    def min_ts(self) -> int:
        """The oldest event time generated: `days` before the end, and at least
        AGE_MARGIN_MS inside the gateway's age limit at `now_ms`."""
        now = self.end_ms if self.now_ms is None else self.now_ms
        return max(
            self.end_ms - self.days * DAY_MS,
            now - self.max_age_days * DAY_MS + AGE_MARGIN_MS,
        )


def _content_pipeline(
    rng: random.Random,
    content_id: str,
    queued_ms: int,
    project: str,
    model: Model,
) -> tuple[list[ServiceMessage], int]:
    """Encoding jobs until one succeeds, then the publication. Returns the messages and
    the publication time."""
    messages: list[ServiceMessage] = []
    t = queued_ms
    while True:
        job_id = "job-" + _uuid(rng)
        profile = rng.choice(("1080p-h264", "4k-hevc", "8k-hevc-360"))
        messages.append(
            EncodingJob(
                message_id=_uuid(rng),
                job_id=job_id,
                content_id=content_id,
                status="queued",
                ts=t,
                profile=profile,
                project=project,
            )
        )
        encode_ms = round(rng.lognormvariate(math.log(180_000), 0.6), 1)
        t += int(encode_ms) + int(rng.uniform(1_000, 60_000))
        succeeded = rng.random() < model.encoding_success
        messages.append(
            EncodingJob(
                message_id=_uuid(rng),
                job_id=job_id,
                content_id=content_id,
                status="succeeded" if succeeded else "failed",
                ts=t,
                encode_ms=encode_ms,
                profile=profile,
                project=project,
            )
        )
        if succeeded:
            break
        t += int(rng.uniform(60_000, 600_000))
    t += int(rng.uniform(60_000, 1_800_000))
    messages.append(
        ContentPublished(
            message_id=_uuid(rng),
            content_id=content_id,
            action="published",
            content_type="video",
            ts=t,
            author_id=f"creator-{rng.randrange(40):02d}",
            project=project,
        )
    )
    return messages, t


def _historical_services(
    plan: Historical, base: list[Content]
) -> tuple[list[Content], list[ServiceMessage]]:
    """New content encoded and published during the window (it becomes playable when
    published), and updates of existing content."""
    rng = random.Random(f"{plan.seed}/services")  # noqa: S311 (test data, not secrets)
    model = plan.model
    span = plan.end_ms - plan.min_ts
    new_items: list[Content] = []
    messages: list[ServiceMessage] = []
    count = max(1, round(model.new_content_per_day * span / DAY_MS))
    for number in range(count):
        queued = plan.min_ts + int(rng.uniform(0, span))
        content_id = f"vid-n{plan.seed % 100_000:05d}-{number:04d}"
        pipeline, published = _content_pipeline(rng, content_id, queued, plan.project, model)
        pipeline = [message for message in pipeline if message.ts <= plan.end_ms]
        messages.extend(pipeline)
        if published <= plan.end_ms:
            kind = rng.choice(("short", "immersive"))
            length = rng.randint(90_000, 1_200_000)
            new_items.append(Content(content_id, kind, length, rng.uniform(0.05, 0.6), published))
    for _ in range(round(model.content_updates_per_day * span / DAY_MS)):
        item = rng.choice(base)
        messages.append(
            ContentPublished(
                message_id=_uuid(rng),
                content_id=item.content_id,
                action="updated",
                content_type="video",
                ts=plan.min_ts + int(rng.uniform(0, span)),
                project=plan.project,
            )
        )
    messages.sort(key=lambda message: message.ts)
    return new_items, messages


def _return_probability(
    model: Model, profile: UserProfile, days_since_first: int, day: int
) -> float:
    curve = model.retention_floor + model.retention_initial * math.exp(
        -(days_since_first - 1) / model.retention_decay_days
    )
    weekday = (day + 3) % 7  # epoch day 0 was a Thursday; 5, 6 = Saturday, Sunday
    factor = model.weekend_factor if weekday >= 5 else 1.0
    return min(0.95, profile.engagement * factor * curve)


def _session_start(rng: random.Random, profile: UserProfile, day: int, low: int, high: int) -> int:
    """A start time on UTC day `day` within [low, high), following local-time habits."""
    cumulative = _UTC_HOUR_CUM[profile.region.name]
    for _ in range(12):
        hour = bisect.bisect_right(cumulative, rng.random() * cumulative[-1])
        ts = day * DAY_MS + hour * HOUR_MS + rng.randrange(HOUR_MS)
        if low <= ts < high:
            return ts
    return low + rng.randrange(max(1, high - low))


def _user_items(plan: Historical, catalog: Catalog, index: int) -> Iterator[Item]:
    """One user's life in the window, as requests and service messages in send order."""
    model = plan.model
    profile, rng = make_user(plan.seed, index, model)
    low_day, high_day = plan.min_ts // DAY_MS, plan.end_ms // DAY_MS
    days = list(range(low_day, high_day + 1))
    spans = [
        max(0, min((d + 1) * DAY_MS, plan.end_ms) - max(d * DAY_MS, plan.min_ts)) for d in days
    ]
    first_day = days[bisect.bisect_right(_cumulative(spans), rng.random() * sum(spans))]
    counts = tuple(c for c, _ in model.sessions_per_day)
    counts_cum = _cumulative(w for _, w in model.sessions_per_day)
    busy_until = plan.min_ts
    sessions = 0
    for day in range(first_day, high_day + 1):
        since_first = day - first_day
        if since_first > 0 and rng.random() >= _return_probability(
            model, profile, since_first, day
        ):
            continue
        low = max(day * DAY_MS, plan.min_ts)
        high = min((day + 1) * DAY_MS, plan.end_ms)
        if high <= low:
            continue
        starts = sorted(
            _session_start(rng, profile, day, low, high)
            for _ in range(_pick(rng, counts, counts_cum))
        )
        for planned in starts:
            gap = int(rng.uniform(2 * MINUTE_MS, 40 * MINUTE_MS)) if sessions else 0
            start = max(planned, busy_until + gap)
            session = make_session(
                profile,
                rng,
                start,
                first=sessions == 0,
                app=app_version(profile, (start - plan.end_ms) / DAY_MS),
                catalog=catalog,
                users=plan.users,
                project=plan.project,
                model=model,
            )
            overflow = session.end_ms - (plan.end_ms - int(rng.uniform(1_000, 60_000)))
            if overflow > 0:
                # Still running "now": moved back so that every session is complete.
                session.shift(-overflow)
                if session.start_ms < max(plan.min_ts, busy_until + gap):
                    continue
            sessions += 1
            busy_until = session.end_ms
            items: list[Item] = [*session.batches(plan.flush_ms)]
            items.extend(ServiceItem(m) for m in session.services)
            items.sort(key=lambda item: item.sort_ts)
            yield from items


def _sort_ts(item: Item) -> int:
    return item.sort_ts


def historical_items(plan: Historical) -> Iterator[Item]:
    """The whole backfill in send order: every user's requests and service messages merged
    by time (a request is sent after its last event). Pure and deterministic."""
    base = base_catalog()
    new_items, content_messages = _historical_services(plan, base)
    catalog = Catalog([*base, *new_items])
    streams: list[Iterator[Item]] = [
        _user_items(plan, catalog, index) for index in range(plan.users)
    ]
    streams.append(ServiceItem(m) for m in content_messages)
    return heapq.merge(*streams, key=_sort_ts)


@dataclass(slots=True)
class Totals:
    events: int = 0
    batches: int = 0
    services: int = 0
    users: int = 0


def count_items(items: Iterable[Item]) -> Totals:
    totals = Totals()
    users: set[str] = set()
    for item in items:
        if isinstance(item, Batch):
            totals.batches += 1
            totals.events += len(item.events)
            users.add(item.user_id)
        else:
            totals.services += 1
    totals.users = len(users)
    return totals


# --------------------------------------------------------------------------- live


@dataclass(frozen=True, slots=True)
class Live:
    """An endless stream for live mode, `rate` events per second of simulated time on
    average, with simulated time starting at `start_ms`."""

    seed: int
    users: int
    rate: float
    start_ms: int
    project: str = "default"
    model: Model = MODEL

    def __post_init__(self) -> None:
        if self.users < 1:
            raise SimulationError("--users must be at least 1")
        if not self.rate > 0:
            raise SimulationError("--rate must be positive")


@dataclass(frozen=True, slots=True)
class LiveEvent:
    user_id: str
    context: dict[str, str]
    event: dict[str, Any]
    last_in_session: bool


LIVE_GAP_MEAN_MS: Final = 5_000


@dataclass(frozen=True, slots=True)
class Calibration:
    events_per_s: float  # of one running session (gaps between sessions included)
    mean_session_ms: float


@functools.lru_cache(maxsize=8)
def calibrate(seed: int, model: Model = MODEL, samples: int = 300) -> Calibration:
    """Events per second of a running session and the mean session length, measured on
    sample sessions (deterministic per seed)."""
    rng = random.Random(f"{seed}/calibrate")  # noqa: S311 (test data, not secrets)
    catalog = Catalog(base_catalog())
    events = 0
    duration = 0
    for index in range(samples):
        profile, user_rng = make_user(rng.randrange(1 << 30), index, model)
        session = make_session(
            profile, user_rng, 0, first=rng.random() < 0.1, app="3.1.0",
            catalog=catalog, users=1, project="default", model=model,
        )  # fmt: skip
        events += len(session.events)
        duration += session.end_ms - session.start_ms + LIVE_GAP_MEAN_MS
    return Calibration(events / (duration / 1_000), duration / samples)


def live_sessions_needed(plan: Live) -> int:
    """Concurrent sessions for `plan.rate` (at most one per user; with fewer users than
    that, simulated time runs faster than the clock)."""
    per_session = calibrate(plan.seed, plan.model).events_per_s
    return max(1, min(plan.users, math.ceil(plan.rate / per_session)))


def _live_services(plan: Live) -> Iterator[ServiceItem]:
    rng = random.Random(f"{plan.seed}/services-live")  # noqa: S311 (test data, not secrets)
    pending: list[tuple[int, int, ServiceMessage]] = []
    sequence = 0
    t = plan.start_ms
    number = 0
    while True:
        t += int(rng.expovariate(1 / (plan.model.live_new_content_every_s * 1_000)))
        content_id = f"vid-l{plan.seed % 100_000:05d}-{number:06d}"
        number += 1
        messages, _ = _content_pipeline(rng, content_id, t, plan.project, plan.model)
        for message in messages:
            heapq.heappush(pending, (message.ts, sequence, message))
            sequence += 1
        while pending and pending[0][0] <= t:
            yield ServiceItem(heapq.heappop(pending)[2])


def _live_events(plan: Live) -> Iterator[LiveEvent | ServiceItem]:
    rng = random.Random(f"{plan.seed}/live")  # noqa: S311 (test data, not secrets)
    model = plan.model
    catalog = Catalog(base_catalog())
    users: dict[int, tuple[UserProfile, random.Random]] = {}
    seen: set[int] = set()
    idle = list(range(plan.users))  # users not in a session; `where` maps user → position
    where = {index: index for index in idle}

    def take_user() -> int:
        """An idle user, more likely the more engaged (up to 8 rejection draws)."""
        for _ in range(8):
            index = idle[rng.randrange(len(idle))]
            if rng.random() * 4.0 < user(index)[0].engagement:
                break
        last = idle.pop()
        if last != index:
            idle[where[index]] = last
            where[last] = where[index]
        del where[index]
        return index

    def release(index: int) -> None:
        where[index] = len(idle)
        idle.append(index)

    def user(index: int) -> tuple[UserProfile, random.Random]:
        if index not in users:
            users[index] = make_user(plan.seed, index, model)
        return users[index]

    def start(at_ms: int) -> tuple[int, _LiveSession]:
        index = take_user()
        profile, user_rng = user(index)
        first = index not in seen and rng.random() < model.live_new_users
        seen.add(index)
        session = make_session(
            profile,
            user_rng,
            at_ms,
            first=first,
            app=app_version(profile, 0),
            catalog=catalog,
            users=plan.users,
            project=plan.project,
            model=model,
        )
        return index, _LiveSession.of(profile.user_id, session)

    heap: list[tuple[int, int, int, int, _LiveSession]] = []
    sequence = 0
    # Staggered over a mean session length, so that the stream starts near its steady mix
    # rather than with every session starting at once.
    stagger_ms = calibrate(plan.seed, model).mean_session_ms
    for _ in range(live_sessions_needed(plan)):
        index, running = start(plan.start_ms + int(rng.uniform(0, stagger_ms)))
        heapq.heappush(heap, (running.times[0], sequence, 0, index, running))
        sequence += 1
    while True:
        _, _, position, index, running = heapq.heappop(heap)
        item = running.pop(position)
        yield item
        sequence += 1
        if position + 1 < len(running.times):
            heapq.heappush(
                heap, (running.times[position + 1], sequence, position + 1, index, running)
            )
        else:  # the user is free once its session and its messages are over
            release(index)
            index, running = start(_live_ts(item) + int(rng.expovariate(1 / LIVE_GAP_MEAN_MS)))
            heapq.heappush(heap, (running.times[0], sequence, 0, index, running))


_encode_event = msgspec.msgpack.Encoder().encode
_decode_event = msgspec.msgpack.Decoder(dict[str, Any]).decode


@dataclass(frozen=True, slots=True)
class _LiveSession:
    """A running session's events and service messages in time order, each event held as
    msgpack until emitted and dropped then. Nearly every user is in a session at once
    (20,000 users at 2,000 events/s: 19,172 sessions of ~80 events), and as dicts kept to
    the session's end they took the simulator past 2 GB. (Not orjson.dumps: each of its
    small results kept a 4 KB allocation.)"""

    user_id: str
    context: dict[str, str]
    times: array[int]
    items: list[bytes | ServiceItem | None]
    last_event: int  # position of the session's last event (messages may follow it)

    @classmethod
    def of(cls, user_id: str, session: Session) -> _LiveSession:
        timed: list[tuple[int, bytes | ServiceItem]] = [
            (event["ts"], _encode_event(event)) for event in session.events
        ]
        timed.extend((message.ts, ServiceItem(message)) for message in session.services)
        # Stable: a notification at the same ms stays after the session's events.
        timed.sort(key=lambda pair: pair[0])
        last_event = max(i for i, (_, item) in enumerate(timed) if isinstance(item, bytes))
        items: list[bytes | ServiceItem | None] = [item for _, item in timed]
        return cls(user_id, session.context, array("q", [ts for ts, _ in timed]), items, last_event)

    def pop(self, position: int) -> LiveEvent | ServiceItem:
        """The item at `position`, which is not kept: each is emitted once."""
        held = self.items[position]
        self.items[position] = None
        assert held is not None, "an item is emitted once"
        if isinstance(held, ServiceItem):
            return held
        return LiveEvent(
            self.user_id, self.context, _decode_event(held), position == self.last_event
        )


def _live_ts(item: LiveEvent | ServiceItem) -> int:
    if isinstance(item, ServiceItem):
        return item.sort_ts
    ts: int = item.event["ts"]
    return ts


def live_items(plan: Live) -> Iterator[LiveEvent | ServiceItem]:
    """Session events and service messages in simulated-time order, forever. The sender
    replaces every ts with the time it emits the item."""
    events: Iterator[LiveEvent | ServiceItem] = _live_events(plan)
    services: Iterator[LiveEvent | ServiceItem] = _live_services(plan)
    return heapq.merge(events, services, key=_live_ts)


# --------------------------------------------------------------------------- sending


def now_ms() -> int:
    return int(time.time() * 1000)


RETRYABLE_STATUSES: Final = frozenset({429, 500, 502, 503, 504})


@dataclass(slots=True)
class SendOptions:
    url: str
    key: str
    project: str = "default"
    concurrency: int = 64
    retry_for_s: float = 300.0
    request_timeout_s: float = 30.0
    gzip: bool = False
    record: Path | None = None
    kafka_bootstrap: str | None = None
    progress: bool = True
    # False: no `sent_at`, so the gateway stores each ts as recorded (no skew correction
    # by the request's latency); tests that recompute metrics from --record need that.
    sent_at: bool = True

    @property
    def endpoint(self) -> str:
        return self.url.rstrip("/") + EVENTS_PATH


@dataclass(slots=True)
class Summary:
    """What a run sent; `events_accepted`/`events_rejected` are the gateway's counts."""

    mode: str
    url: str
    project: str
    seed: int
    users: int
    days: int | None = None
    window_from: str | None = None
    window_to: str | None = None
    rate: float | None = None
    duration_s: float | None = None
    concurrent_sessions: int | None = None
    requests: int = 0
    batches_ok: int = 0
    retries: int = 0
    batches_failed: int = 0
    events_generated: int = 0
    events_accepted: int = 0
    events_rejected: int = 0
    events_failed: int = 0
    reject_reasons: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    sessions: int = 0
    plays: int = 0
    users_active: int = 0
    services_generated: int = 0
    services_published: int = 0
    services_failed: int = 0
    services_note: str = ""
    elapsed_s: float = 0.0
    interrupted: bool = False
    aborted: str | None = None

    @property
    def events_per_s(self) -> float:
        return self.events_accepted / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def ok(self) -> bool:
        return self.batches_failed == 0 and self.services_failed == 0 and self.aborted is None

    def to_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["events_per_s"] = round(self.events_per_s, 1)
        data["elapsed_s"] = round(self.elapsed_s, 3)
        return data

    def table(self) -> Table:
        table = Table(title=f"quip simulate ({self.mode})", show_header=False, title_justify="left")
        table.add_column("what", style="bold")
        table.add_column("value")
        rows: list[tuple[str, str]] = [
            ("gateway", f"{self.url}{EVENTS_PATH} (project {self.project})"),
            ("seed", str(self.seed)),
            ("users", f"{self.users:,} ({self.users_active:,} sent events)"),
        ]
        if self.mode == "historical":
            rows.append(("days", f"{self.days} ({self.window_from} .. {self.window_to})"))
        else:
            rows.append(("rate", f"{self.rate:g} events/s, {self.concurrent_sessions} sessions"))
        rows += [
            ("requests", f"{self.batches_ok:,} ok, {self.retries:,} retries, "
                         f"{self.batches_failed:,} failed"),
            ("events", f"{self.events_accepted:,} accepted, {self.events_rejected:,} rejected, "
                       f"{self.events_failed:,} failed (of {self.events_generated:,})"),
            ("sessions", f"{self.sessions:,}"),
            ("plays", f"{self.plays:,}"),
            ("service messages", self._services_text()),
            ("elapsed", f"{self.elapsed_s:.1f} s"),
            ("throughput", f"{self.events_per_s:,.0f} events/s"),
        ]  # fmt: skip
        if self.reject_reasons:
            top = sorted(self.reject_reasons.items(), key=lambda kv: -kv[1])[:5]
            rows.append(("rejections", "; ".join(f"{n} x {reason}" for reason, n in top)))
        for failure in self.failures[:5]:
            rows.append(("failure", failure))
        if self.interrupted:
            rows.append(("interrupted", "stopped by Ctrl-C"))
        if self.aborted:
            rows.append(("aborted", self.aborted))
        for name, value in rows:
            table.add_row(name, value)
        return table

    def _services_text(self) -> str:
        if self.services_note:
            return f"{self.services_note} ({self.services_generated:,} generated)"
        return (
            f"{self.services_published:,} published, {self.services_failed:,} failed "
            f"(of {self.services_generated:,})"
        )


async def check_gateway(url: str, timeout_s: float = 5.0) -> None:
    """Raise `GatewayUnreachable` when the gateway's port refuses connections or its host
    does not resolve. A timeout or any other error is left to the sending loop's retries
    (a slow or briefly overloaded gateway is not a wrong URL)."""
    parsed = urllib.parse.urlsplit(url)
    host = parsed.hostname or "127.0.0.1"
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(host, port)
    except (ConnectionRefusedError, socket.gaierror) as exc:
        raise GatewayUnreachable(
            f"no gateway at {url} ({exc.strerror or exc}): start one (`quip up`, or "
            "`quip gateway` in cluster mode) or point --url at it"
        ) from exc
    except (TimeoutError, OSError):
        return
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return min(60.0, max(0.0, seconds))


@dataclass(slots=True)
class _Request:
    batch: Batch
    after: asyncio.Event | None
    done: asyncio.Event


class _Runner:
    """Workers sending requests over one keep-alive connection pool, the service publisher,
    the progress bar and the record file. Use as `async with`; `stop()` (Ctrl-C) ends
    submission, and leaving the block waits for everything submitted."""

    MAX_FAILURE_MESSAGES: Final = 20

    def __init__(
        self, options: SendOptions, summary: Summary, console: Console, total: int | None
    ) -> None:
        self.options = options
        self.summary = summary
        self.stopped = False
        self._console = console
        self._warned: set[str] = set()
        self._jitter = random.Random()  # noqa: S311 (backoff jitter)
        self._queue: asyncio.Queue[_Request | None] = asyncio.Queue(options.concurrency * 2)
        self._services: asyncio.Queue[ServiceMessage | None] = asyncio.Queue(10_000)
        self._last: dict[str, asyncio.Event] = {}
        self._users: set[str] = set()
        self._workers: list[asyncio.Task[None]] = []
        self._publisher_task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._record: BinaryIO | None = None
        self._started = time.monotonic()
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=not options.progress,
        )
        self._task: TaskID = self._progress.add_task(
            f"{summary.mode} events", total=total, status=""
        )

    async def __aenter__(self) -> _Runner:
        options = self.options
        if options.record is not None:
            self._record = options.record.open("wb")
        connector = aiohttp.TCPConnector(
            limit=options.concurrency, limit_per_host=options.concurrency, keepalive_timeout=60
        )
        headers = {
            "Authorization": f"Bearer {options.key}",
            "Content-Type": "application/json",
            "User-Agent": "quip-simulate",
        }
        if options.gzip:
            headers["Content-Encoding"] = "gzip"
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=options.request_timeout_s),
        )
        self._workers = [asyncio.create_task(self._work()) for _ in range(options.concurrency)]
        if options.kafka_bootstrap:
            self._publisher_task = asyncio.create_task(self._publish(options.kafka_bootstrap))
        else:
            self.summary.services_note = "not sent: no --kafka-bootstrap"
        self._progress.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            for _ in self._workers:
                await self._queue.put(None)
            await asyncio.gather(*self._workers)
            if self._publisher_task is not None:
                await self._services.put(None)
                await self._publisher_task
        finally:
            for task in self._workers:
                task.cancel()
            if self._publisher_task is not None:
                self._publisher_task.cancel()
            if self._session is not None:
                await self._session.close()
            if self._record is not None:
                self._record.close()
            self.summary.users_active = len(self._users)
            self.summary.elapsed_s = time.monotonic() - self._started
            self._refresh()
            self._progress.stop()

    def stop(self) -> None:
        self.stopped = True

    # ------------------------------------------------------------------ submission
    async def submit(self, batch: Batch) -> None:
        """Queue a request (waits while `concurrency * 2` are queued). Requests of a user
        are sent one after the other, in submission order."""
        self.summary.events_generated += len(batch.events)
        done = asyncio.Event()
        after = self._last.get(batch.user_id)
        self._last[batch.user_id] = done
        await self._queue.put(_Request(batch, after, done))

    async def submit_service(self, message: ServiceMessage) -> None:
        self.summary.services_generated += 1
        if self._publisher_task is not None:
            await self._services.put(message)

    # ------------------------------------------------------------------ requests
    async def _work(self) -> None:
        while True:
            request = await self._queue.get()
            if request is None:
                return
            try:
                if request.after is not None:
                    await request.after.wait()
                await self._deliver(request.batch)
            finally:
                request.done.set()
                if self._last.get(request.batch.user_id) is request.done:
                    del self._last[request.batch.user_id]

    def _body(self, batch: Batch) -> bytes:
        body = orjson.dumps(
            {
                **({"sent_at": now_ms()} if self.options.sent_at else {}),
                "context": batch.context,
                "events": batch.events,
            }
        )
        return gzip.compress(body, compresslevel=1) if self.options.gzip else body

    async def _deliver(self, batch: Batch) -> None:
        if self.summary.aborted:
            self._fail(batch, None)  # counted, not sent: the run is being aborted
            return
        assert self._session is not None
        deadline = time.monotonic() + self.options.retry_for_s
        attempt = 0
        while True:
            attempt += 1
            self.summary.requests += 1
            delay: float | None = None
            try:
                async with self._session.post(
                    self.options.endpoint, data=self._body(batch)
                ) as response:
                    status = response.status
                    payload = await response.read()
                    delay = _retry_after(response.headers.get("Retry-After"))
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                problem = f"network error: {exc!r}"
            else:
                if status == 200:
                    self._accepted(batch, payload)
                    return
                text = payload[:300].decode("utf-8", "replace")
                if status == 401:
                    self.summary.aborted = (
                        f"HTTP 401 from the gateway ({text}): check --key / QUIP_WRITE_KEYS"
                    )
                    self.stopped = True
                    self._fail(batch, None)
                    return
                if status not in RETRYABLE_STATUSES:
                    self._fail(batch, f"HTTP {status}: {text}")
                    return
                problem = f"HTTP {status}: {text}"
            if delay is None:
                delay = min(10.0, 0.25 * 2 ** min(attempt - 1, 8)) * self._jitter.uniform(0.5, 1.5)
            self._warn_once(
                "gateway",
                f"POST {self.options.endpoint} failed ({problem}); each batch is retried "
                f"for up to {self.options.retry_for_s:g} s (--retry-for), then the run is "
                "aborted",
            )
            if time.monotonic() + delay > deadline:
                # The gateway (or its bus) has been unusable for retry_for_s: stop the run
                # rather than wait as long again for every batch still to send.
                self._fail(batch, f"gave up after {attempt} attempts: {problem}")
                self.summary.aborted = (
                    f"the gateway did not take a batch within {self.options.retry_for_s:g} s "
                    f"of retries ({problem})"
                )
                self.stopped = True
                return
            self.summary.retries += 1
            self._refresh()
            await asyncio.sleep(delay)

    def _warn_once(self, what: str, message: str) -> None:
        """The first failure of each kind is said at once: otherwise the retries run for
        up to `retry_for_s` with nothing on screen (or only a retry count on the bar)."""
        if what in self._warned:
            return
        self._warned.add(what)
        self._console.print(f"[yellow]quip simulate: {escape(message)}[/yellow]", highlight=False)

    def _accepted(self, batch: Batch, payload: bytes) -> None:
        summary = self.summary
        try:
            result = orjson.loads(payload)
            accepted = int(result["accepted"])
            errors = result.get("errors", [])
            rejected_at = {int(error["index"]): str(error["reason"]) for error in errors}
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            self._fail(batch, f"unexpected 200 response: {payload[:200]!r}")
            return
        if accepted + len(rejected_at) != len(batch.events):
            summary.failures.append(
                f"gateway counted {accepted} accepted + {len(rejected_at)} rejected "
                f"of {len(batch.events)} events"
            )
        summary.batches_ok += 1
        summary.events_accepted += accepted
        summary.events_rejected += len(rejected_at)
        for reason in rejected_at.values():
            code = reason.partition(":")[0]
            summary.reject_reasons[code] = summary.reject_reasons.get(code, 0) + 1
        lines: list[bytes] = []
        for index, event in enumerate(batch.events):
            if index in rejected_at:
                continue
            kind = event["type"]
            if kind == "session_start":
                summary.sessions += 1
            elif kind == "playback_request":
                summary.plays += 1
            if self._record is not None:
                lines.append(orjson.dumps({**event, **batch.context}) + b"\n")
        if accepted:
            self._users.add(batch.user_id)
        if self._record is not None:
            self._record.write(b"".join(lines))
        self._progress.advance(self._task, len(batch.events))
        self._refresh()

    def _fail(self, batch: Batch, message: str | None) -> None:
        self.summary.batches_failed += 1
        self.summary.events_failed += len(batch.events)
        if message and len(self.summary.failures) < self.MAX_FAILURE_MESSAGES:
            self.summary.failures.append(f"{batch.user_id}: {message}")
        self._progress.advance(self._task, len(batch.events))
        self._refresh()

    def _refresh(self) -> None:
        summary = self.summary
        elapsed = max(1e-6, time.monotonic() - self._started)
        status = f"{summary.events_accepted / elapsed:,.0f} ev/s"
        if summary.retries:
            status += f" · {summary.retries:,} retries"
        if summary.batches_failed:
            status += f" · [red]{summary.batches_failed:,} failed[/red]"
        self._progress.update(self._task, status=status)

    # ------------------------------------------------------------------ services
    async def _publish(self, bootstrap: str) -> None:
        publisher = ServicePublisher(bootstrap, client_id="quip-simulate")
        deadline = time.monotonic() + self.options.retry_for_s
        attempt = 0
        while True:
            try:
                await publisher.start()
                break
            except Exception as exc:
                attempt += 1
                self._warn_once(
                    "kafka",
                    f"Kafka at {bootstrap} unreachable ({exc!r}); retrying for up to "
                    f"{self.options.retry_for_s:g} s (--retry-for) before the service "
                    "messages are counted as failed",
                )
                if time.monotonic() > deadline:
                    self.summary.services_note = f"Kafka unreachable at {bootstrap}: {exc!r}"
                    await self._drain_services_as_failed()
                    return
                await asyncio.sleep(min(10.0, 0.5 * 2**attempt))
        try:
            closing = False
            while not closing:
                message = await self._services.get()
                if message is None:
                    break
                batch = [message]
                while len(batch) < 500 and not self._services.empty():
                    more = self._services.get_nowait()
                    if more is None:
                        closing = True
                        break
                    batch.append(more)
                await self._publish_batch(publisher, batch, deadline_s=self.options.retry_for_s)
        finally:
            await publisher.stop()

    async def _publish_batch(
        self, publisher: ServicePublisher, batch: list[ServiceMessage], deadline_s: float
    ) -> None:
        deadline = time.monotonic() + deadline_s
        attempt = 0
        while True:
            try:
                await publisher.publish_many(batch)
            except PublishError as exc:
                attempt += 1
                self._warn_once(
                    "publish",
                    f"publishing service messages to Kafka failed ({exc}); each batch is "
                    f"retried for up to {deadline_s:g} s (--retry-for)",
                )
                if time.monotonic() > deadline:
                    self.summary.services_failed += len(batch)
                    if len(self.summary.failures) < self.MAX_FAILURE_MESSAGES:
                        self.summary.failures.append(f"service messages: {exc}")
                    return
                await asyncio.sleep(min(10.0, 0.5 * 2**attempt))
            else:
                self.summary.services_published += len(batch)
                return

    async def _drain_services_as_failed(self) -> None:
        while True:
            message = await self._services.get()
            if message is None:
                return
            self.summary.services_failed += 1


@contextlib.contextmanager
def _interruptible(runner: _Runner) -> Iterator[None]:
    """The first Ctrl-C stops submission (what was submitted is still sent); a second one
    interrupts as usual."""
    loop = asyncio.get_running_loop()

    def first_interrupt() -> None:
        runner.stop()
        runner.summary.interrupted = True
        loop.remove_signal_handler(signal.SIGINT)

    try:
        loop.add_signal_handler(signal.SIGINT, first_interrupt)
    except (NotImplementedError, RuntimeError):  # not the main thread, or no signals
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGINT)


def _day(ms: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ms / 1000))


async def run_historical(
    plan: Historical, options: SendOptions, console: Console | None = None
) -> Summary:
    """Send the backfill as fast as the gateway takes it."""
    console = console or Console(stderr=True)
    summary = Summary(
        mode="historical",
        url=options.url,
        project=options.project,
        seed=plan.seed,
        users=plan.users,
        days=plan.days,
        window_from=_day(plan.min_ts),
        window_to=_day(plan.end_ms),
    )
    await check_gateway(options.url)
    total = count_items(historical_items(plan)).events if options.progress else None
    async with _Runner(options, summary, console, total) as runner:
        with _interruptible(runner):
            for item in historical_items(plan):
                if runner.stopped:
                    break
                if isinstance(item, Batch):
                    await runner.submit(item)
                else:
                    await runner.submit_service(item.message)
    return summary


@dataclass(slots=True)
class _Buffer:
    user_id: str
    context: dict[str, str]
    opened: float
    events: list[dict[str, Any]] = field(default_factory=list)


async def run_live(
    plan: Live,
    options: SendOptions,
    *,
    duration_s: float | None,
    flush_s: float = LIVE_FLUSH_S,
    console: Console | None = None,
) -> Summary:
    """Emit `plan.rate` events per second with ts = now until `duration_s` (or Ctrl-C)."""
    console = console or Console(stderr=True)
    summary = Summary(
        mode="live",
        url=options.url,
        project=options.project,
        seed=plan.seed,
        users=plan.users,
        rate=plan.rate,
        duration_s=duration_s,
        concurrent_sessions=live_sessions_needed(plan),
    )
    await check_gateway(options.url)
    total = int(plan.rate * duration_s) if duration_s is not None else None
    stream = live_items(plan)
    buffers: dict[str, _Buffer] = {}
    session_starts: dict[str, int] = {}
    tick_s = 0.05
    async with _Runner(options, summary, console, total) as runner:

        async def flush(session_id: str) -> None:
            buffer = buffers.pop(session_id)
            await runner.submit(Batch(buffer.user_id, buffer.context, buffer.events))

        with _interruptible(runner):
            origin = time.monotonic()
            emitted = 0
            while not runner.stopped:
                clock = time.monotonic()
                elapsed = clock - origin
                if duration_s is not None and elapsed >= duration_s:
                    target = int(plan.rate * duration_s)
                else:
                    target = int(plan.rate * elapsed)
                if target - emitted > plan.rate:  # the gateway is slower: do not burst
                    origin += (target - emitted - plan.rate) / plan.rate
                    target = emitted + int(plan.rate)
                wall = now_ms()
                while emitted < target:
                    item = next(stream)
                    if isinstance(item, ServiceItem):
                        message = msgspec.structs.replace(item.message, ts=wall)
                        await runner.submit_service(message)
                        continue
                    event = {**item.event, "ts": wall}
                    session_id = item.context["session_id"]
                    if event["type"] == "session_start":
                        session_starts[session_id] = wall
                    elif event["type"] == "session_end":
                        began = session_starts.pop(session_id, wall)
                        event["props"] = {"duration_ms": wall - began}
                    buffer = buffers.get(session_id)
                    if buffer is None:
                        buffer = buffers[session_id] = _Buffer(item.user_id, item.context, clock)
                    buffer.events.append(event)
                    emitted += 1
                    if len(buffer.events) >= MAX_BATCH_EVENTS or item.last_in_session:
                        await flush(session_id)
                for session_id in [s for s, b in buffers.items() if clock - b.opened >= flush_s]:
                    await flush(session_id)
                if duration_s is not None and elapsed >= duration_s:
                    break
                await asyncio.sleep(tick_s)
            for session_id in list(buffers):
                await flush(session_id)
    return summary


def write_json_summary(summary: Summary, path: Path) -> None:
    path.write_bytes(orjson.dumps(summary.to_dict(), option=orjson.OPT_INDENT_2))
