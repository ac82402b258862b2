"""One user's session as events (pure: every draw comes from the user's generator).

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
- **Service messages** of a session: a SocialNotification to the user in 30% of sessions
  (delivered 94%, else failed), a welcome e-mail in the first session and a receipt per
  purchase (sent 97%, else failed).
- **Batching like a headset SDK** (`Session.batches`): a request holds one user's events of
  one session: it closes on 100 events or when the flush interval has passed since its
  first event, and at the session end.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from quip.simulate.catalog import Catalog
from quip.simulate.draws import cumulative, draw_uuid, pick
from quip.simulate.model import (
    BITRATE_LADDER,
    CUSTOM_EVENTS,
    GESTURES,
    HOME_URL,
    MODEL,
    NONFATAL_CODES,
    PAGES,
    PLAY_FATAL_CODES,
    START_FATAL_CODES,
    STORE_URL,
    Model,
    UserProfile,
    user_id,
)
from schemas.services import EmailNotification, ServiceMessage, SocialNotification

MAX_BATCH_EVENTS: Final = 100
HEARTBEAT_MS: Final = 10_000

_PAGE_CUM: Final = cumulative(p[2] for p in PAGES)
_GESTURE_NAMES: Final = tuple(g[0] for g in GESTURES)
_GESTURE_CUM: Final = cumulative(g[1] for g in GESTURES)
_CUSTOM_NAMES: Final = tuple(c[0] for c in CUSTOM_EVENTS)
_CUSTOM_CUM: Final = cumulative(c[1] for c in CUSTOM_EVENTS)


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
                "event_id": draw_uuid(self.rng),
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
                message_id=draw_uuid(self.rng),
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
        url, title, _ = pick(self.rng, PAGES, _PAGE_CUM)
        props: dict[str, Any] = {"url": url}
        if self.rng.random() < 0.9:
            props["title"] = title
        self.add("page_view", props)

    def gesture(self) -> None:
        props: dict[str, Any] = {"gesture": pick(self.rng, _GESTURE_NAMES, _GESTURE_CUM)}
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
        name = pick(self.rng, _CUSTOM_NAMES, _CUSTOM_CUM)
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
                message_id=draw_uuid(rng),
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
        base = {"play_id": "p-" + draw_uuid(rng), "content_id": content.content_id}
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
        "session_id": "s-" + draw_uuid(rng),
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
    action_weights = cumulative(a[1] for a in model.actions)
    for _ in range(actions):
        writer.think()
        kind = pick(rng, kinds, action_weights)
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
