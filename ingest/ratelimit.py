"""Token-bucket rate limits per client IP and per write key (requests per minute).

Limits are per gateway process: with N uvicorn workers or N replicas behind a balancer a
client can reach up to N times the limit. Keep-alive connections stick to one worker, so
in practice a single client sees the configured figure.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """`allow(key)` returns 0 when the request may proceed, else the seconds to wait
    (for `Retry-After`). A limit of 0 turns the limiter off."""

    def __init__(
        self,
        per_minute: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_tracked: int = 100_000,
    ) -> None:
        self.per_minute = per_minute
        self._rate = per_minute / 60.0
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._max_tracked = max_tracked

    @property
    def enabled(self) -> bool:
        return self.per_minute > 0

    def allow(self, key: str) -> int:
        if not self.enabled:
            return 0
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_tracked:
                self._forget_full_buckets(now)
            bucket = self._buckets[key] = _Bucket(float(self.per_minute), now)
        else:
            bucket.tokens = min(
                float(self.per_minute), bucket.tokens + (now - bucket.updated) * self._rate
            )
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0
        return max(1, math.ceil((1.0 - bucket.tokens) / self._rate))

    def _forget_full_buckets(self, now: float) -> None:
        """A bucket that has refilled completely holds no information: drop those, so a
        scan of many addresses cannot grow the table without bound."""
        full = [
            key
            for key, bucket in self._buckets.items()
            if bucket.tokens + (now - bucket.updated) * self._rate >= self.per_minute
        ]
        for key in full:
            del self._buckets[key]
        if len(self._buckets) >= self._max_tracked:
            self._buckets.clear()
