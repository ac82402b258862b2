"""Keys by a time, for "which are due": plays (idle closing, forgetting) and the series
points of the live view (settling)."""

from __future__ import annotations

import heapq
from typing import Final, Generic, TypeVar

K = TypeVar("K")
_DEADLINE_BUCKET_MS: Final = 1_000


class _Deadlines(Generic[K]):
    """Play keys by a time, for "which are due": buckets of `_DEADLINE_BUCKET_MS` in a
    dict of lists, plus a heap of the bucket numbers. A key costs a list slot (8 bytes)
    where a heap of (time, key) entries cost 64 (the tuple and its slot), once per index
    for every held play. The time itself is not kept: the caller reads it from the play,
    and puts back what is not due yet."""

    def __init__(self) -> None:
        self._buckets: dict[int, list[K]] = {}
        self._order: list[int] = []

    def __len__(self) -> int:
        return sum(len(keys) for keys in self._buckets.values())

    def add(self, time: int, key: K) -> None:
        bucket = time // _DEADLINE_BUCKET_MS
        keys = self._buckets.get(bucket)
        if keys is None:
            self._buckets[bucket] = [key]
            heapq.heappush(self._order, bucket)
        else:
            keys.append(key)

    def take(self, latest: int) -> list[tuple[int, list[K]]]:
        """Removes and returns (bucket, keys) for every bucket that may hold a time at or
        before `latest`; the last may also hold later times."""
        taken = []
        order, buckets = self._order, self._buckets
        while order and order[0] * _DEADLINE_BUCKET_MS <= latest:
            bucket = heapq.heappop(order)
            taken.append((bucket, buckets.pop(bucket)))
        return taken
