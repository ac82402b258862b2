"""In-process TTL + LRU cache of serialized query results that follows the stored data.

Keys are (endpoint, project, canonical parameters); values are the JSON bytes sent to the
client, so a hit costs a dictionary lookup and no serialization.

Following the data (SPEC §5: once an event is stored, an answer covering its day includes
it within the freshness target, late events for closed days included): every entry
remembers the days its answer depends on (`first_day`..`last_day`, chosen per endpoint:
see api/routes/) and the cache's epoch when its query started. `note_changes` (fed by
api/freshness.py from the sinks' `data_changes`) stamps changed (project, day) pairs with
a new epoch; an entry whose days changed after its query started is dropped when met, so
the next request reads the stores. `invalidate_project` (an erasure) stamps a whole
project the same way.

TTL, a ceiling for unchanged data: `last_day` before today → `closed_ttl_s` (300 s),
today or later → `open_ttl_s` (5 s). Changes are tracked per day, so the TTLs only bound
what the sinks do not report.

Stale while revalidating: for `closed_stale_s` (300 s) or `open_stale_s` (30 s) past its
TTL an unchanged entry is still returned, marked stale, so that the caller answers with
it and refreshes it in the background (api/results.py). It is still exact (no change of
its days was reported); the refresh only re-checks what the TTL bounds.

Bounds: at most `max_entries` entries and `max_bytes` of values; the least recently used
entries go first, expired ones are dropped when met. A value larger than `max_bytes` is
not stored.

`cache_hit_ratio` (hits / lookups since this cache was built) is set on every lookup.

Thread-safe: one lock around every operation, never held while a query runs; safe to call
from the event loop and from worker threads.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Final

from prometheus_client import Gauge

from api.metrics import CACHE_HIT_RATIO, CACHE_LOOKUPS

CLOSED_TTL_S: Final = 300.0
OPEN_TTL_S: Final = 5.0
CLOSED_STALE_S: Final = 300.0
OPEN_STALE_S: Final = 30.0
MAX_ENTRIES: Final = 512
MAX_BYTES: Final = 64 * 1024 * 1024


def utc_today() -> date:
    return datetime.now(UTC).date()


@dataclass(frozen=True, slots=True)
class CacheKey:
    endpoint: str
    project: str
    params: tuple[tuple[str, str], ...]


@dataclass(slots=True)
class _Entry:
    value: bytes
    expires_at: float
    stale_until: float
    first_day: date
    last_day: date
    epoch: int  # the cache's epoch when the answer's query started


@dataclass(frozen=True, slots=True)
class Cached:
    value: bytes
    stale: bool  # past its TTL, within its stale window: refresh it


class QueryCache:
    def __init__(
        self,
        *,
        max_entries: int = MAX_ENTRIES,
        max_bytes: int = MAX_BYTES,
        closed_ttl_s: float = CLOSED_TTL_S,
        open_ttl_s: float = OPEN_TTL_S,
        closed_stale_s: float = CLOSED_STALE_S,
        open_stale_s: float = OPEN_STALE_S,
        clock: Callable[[], float] = time.monotonic,
        today: Callable[[], date] = utc_today,
        hit_ratio_gauge: Gauge | None = CACHE_HIT_RATIO,
    ) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("cache bounds must be positive")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.closed_ttl_s = closed_ttl_s
        self.open_ttl_s = open_ttl_s
        self.closed_stale_s = closed_stale_s
        self.open_stale_s = open_stale_s
        self._clock = clock
        self._today = today
        self._gauge = hit_ratio_gauge
        self._entries: OrderedDict[CacheKey, _Entry] = OrderedDict()
        self._bytes = 0
        self._epoch = 0
        # project -> day -> epoch of its latest reported change; project -> epoch of its
        # latest erasure (every day changed).
        self._changed_days: dict[str, dict[date, int]] = {}
        self._changed_projects: dict[str, int] = {}
        self._hits = 0
        self._lookups = 0
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ reads
    def ttl_for(self, last_day: date) -> float:
        """closed_ttl_s when `last_day` is before today (UTC), else open_ttl_s."""
        return self.closed_ttl_s if last_day < self._today() else self.open_ttl_s

    def stale_window_for(self, last_day: date) -> float:
        return self.closed_stale_s if last_day < self._today() else self.open_stale_s

    def get(self, key: CacheKey) -> Cached | None:
        """The stored value (stale past its TTL), or None when absent, past its stale
        window, or when a day it depends on changed after its query started. Counts a
        lookup; a stale value counts as a hit (it is what is served)."""
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and (
                entry.stale_until <= now
                or self._changed_epoch(key.project, entry.first_day, entry.last_day)
                > entry.epoch
            ):
                self._drop(key)
                entry = None
            stale = entry is not None and entry.expires_at <= now
            if entry is not None:
                self._entries.move_to_end(key)
                self._hits += 1
            self._lookups += 1
            ratio = self._hits / self._lookups
        result = "miss" if entry is None else "stale" if stale else "hit"
        CACHE_LOOKUPS.labels(result).inc()
        if self._gauge is not None:
            self._gauge.set(ratio)
        return None if entry is None else Cached(entry.value, stale)

    def epoch(self) -> int:
        """Now, in the cache's clock of changes: read it before a query starts and `put`
        its answer with it."""
        with self._lock:
            return self._epoch

    def changed_epoch(self, project: str, first_day: date, last_day: date) -> int:
        """The epoch of the latest reported change of `project` within the days."""
        with self._lock:
            return self._changed_epoch(project, first_day, last_day)

    def _changed_epoch(self, project: str, first_day: date, last_day: date) -> int:
        latest = self._changed_projects.get(project, 0)
        for day, epoch in self._changed_days.get(project, {}).items():
            if epoch > latest and first_day <= day <= last_day:
                latest = epoch
        return latest

    # ------------------------------------------------------------------ writes
    def put(
        self,
        key: CacheKey,
        value: bytes,
        last_day: date,
        *,
        epoch: int = 0,
        first_day: date = date.min,
    ) -> bool:
        """Store `value`, an answer depending on the days `first_day`..`last_day` whose
        query started at `epoch`, for ttl_for(last_day), then stale for
        stale_window_for(last_day). Returns False, storing nothing, when the value is
        larger than max_bytes or one of its days changed since `epoch`."""
        if len(value) > self.max_bytes:
            return False
        expires_at = self._clock() + self.ttl_for(last_day)
        stale_until = expires_at + self.stale_window_for(last_day)
        with self._lock:
            if self._changed_epoch(key.project, first_day, last_day) > epoch:
                return False
            if key in self._entries:
                self._drop(key)
            self._entries[key] = _Entry(value, expires_at, stale_until, first_day, last_day, epoch)
            self._bytes += len(value)
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                oldest = next(iter(self._entries))
                self._drop(oldest)
        return True

    def note_changes(self, changes: Iterable[tuple[str, date]]) -> None:
        """The stores hold new rows for these (project, day): answers covering one of
        those days that were computed (or started) before now are not served again."""
        with self._lock:
            self._epoch += 1
            for project, day in changes:
                self._changed_days.setdefault(project, {})[day] = self._epoch

    def invalidate_project(self, project: str) -> int:
        """Drop every entry of `project` and refuse results whose query started before
        now; returns how many entries were dropped."""
        with self._lock:
            self._epoch += 1
            self._changed_projects[project] = self._epoch
            doomed = [key for key in self._entries if key.project == project]
            for key in doomed:
                self._drop(key)
        return len(doomed)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def _drop(self, key: CacheKey) -> None:
        entry = self._entries.pop(key)
        self._bytes -= len(entry.value)

    # ------------------------------------------------------------------ numbers
    @property
    def hit_ratio(self) -> float:
        with self._lock:
            return self._hits / self._lookups if self._lookups else 0.0

    @property
    def size(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def size_bytes(self) -> int:
        with self._lock:
            return self._bytes
