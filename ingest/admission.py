"""Load shedding for the ingest routes: a bound on requests in flight per process.

Past the bound a request is refused at once (503) instead of queueing behind the others,
so the admitted ones keep their latency. Refusing is cheap but not free (the body is on the
wire already), so the Retry-After asks refused clients to come back roughly when there is
room: the ratio of refused to admitted requests over the last one to two seconds, rounded
up, between 1 and MAX_RETRY_AFTER_S. A client population ten times the capacity is told to
wait about ten seconds, and its retries then arrive at about the rate the process takes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Final

MAX_RETRY_AFTER_S: Final = 30


class Admission:
    """Counts the requests in flight. Not thread-safe: one per event loop (a uvicorn worker
    process has one)."""

    __slots__ = ("_admitted", "_clock", "_refused", "_second", "in_flight", "limit")

    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        """`limit` requests in flight at most; 0 means no bound."""
        self.limit = limit
        self.in_flight = 0
        self._clock = clock
        self._second = math.floor(clock())
        # [previous second, current second]
        self._admitted = [0, 0]
        self._refused = [0, 0]

    def enter(self) -> int | None:
        """None when the request is admitted (call `leave` when it is done), else the
        seconds the client should wait before retrying."""
        self._roll()
        if self.limit and self.in_flight >= self.limit:
            self._refused[1] += 1
            refused, admitted = sum(self._refused), max(1, sum(self._admitted))
            return min(MAX_RETRY_AFTER_S, max(1, math.ceil(refused / admitted)))
        self._admitted[1] += 1
        self.in_flight += 1
        return None

    def leave(self) -> None:
        self.in_flight -= 1

    def _roll(self) -> None:
        second = math.floor(self._clock())
        if second == self._second:
            return
        keep = second == self._second + 1
        self._admitted = [self._admitted[1] if keep else 0, 0]
        self._refused = [self._refused[1] if keep else 0, 0]
        self._second = second
