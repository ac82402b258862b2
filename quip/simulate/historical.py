"""Historical mode's traffic: a backfill of the window `[end - days, end]` (never older
than the gateway's `QUIP_MAX_EVENT_AGE_DAYS` minus a 2 h margin) in the order a fleet of
headsets would have sent it: requests ordered by their last event's time, so the pipeline
sees event time advance like in production (pure and deterministic per seed and end).

A request closes after 2 min of event time: larger requests for a fast backfill, yet well
under the worker's 5 min play idle timeout, so the next request of a running play arrives
before event time (advancing with every request) could close it.
"""

from __future__ import annotations

import bisect
import heapq
import math
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final

from quip.simulate.catalog import Catalog, base_catalog
from quip.simulate.draws import cumulative, pick
from quip.simulate.model import (
    DAY_MS,
    HOUR_MS,
    LOCAL_HOUR_WEIGHTS,
    MINUTE_MS,
    MODEL,
    REGIONS,
    Model,
    SimulationError,
    UserProfile,
    app_version,
    make_user,
)
from quip.simulate.services import window_content
from quip.simulate.session import Batch, Item, ServiceItem, make_session

HISTORICAL_FLUSH_MS: Final = 120_000
# Historical events are kept this far inside the gateway's age limit, so a long backfill
# (or a gateway clock a little ahead) does not see its oldest events rejected as too_old.
AGE_MARGIN_MS: Final = 2 * HOUR_MS

# Session start hours in UTC, per region.
_UTC_HOUR_CUM: Final = {
    region.name: cumulative(
        LOCAL_HOUR_WEIGHTS[(hour + region.utc_offset_h) % 24] for hour in range(24)
    )
    for region in REGIONS
}


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
    hours = _UTC_HOUR_CUM[profile.region.name]
    for _ in range(12):
        hour = bisect.bisect_right(hours, rng.random() * hours[-1])
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
    first_day = days[bisect.bisect_right(cumulative(spans), rng.random() * sum(spans))]
    counts = tuple(c for c, _ in model.sessions_per_day)
    counts_cum = cumulative(w for _, w in model.sessions_per_day)
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
            for _ in range(pick(rng, counts, counts_cum))
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
    new_items, content_messages = window_content(
        plan.seed, plan.min_ts, plan.end_ms, plan.project, plan.model, base
    )
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
