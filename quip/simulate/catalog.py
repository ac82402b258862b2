"""The content users play: a base catalog that exists before any simulated time, plus what
the simulated CMS publishes, picked by Zipf popularity."""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterable
from dataclasses import dataclass


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
