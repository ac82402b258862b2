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
- **Plays** (`playback.py`): content from a catalog of shorts, immersive videos and
  movies with Zipf popularity (`catalog.py`).
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
    CUSTOM_EVENTS,
    GESTURES,
    HOME_URL,
    MODEL,
    PAGES,
    STORE_URL,
    Model,
    UserProfile,
    user_id,
)
from quip.simulate.playback import play
from schemas.services import EmailNotification, ServiceMessage, SocialNotification

MAX_BATCH_EVENTS: Final = 100

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
        play(self, self.rng, self.profile, self.catalog, self.model)


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
