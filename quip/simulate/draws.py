"""Seeded draws shared by the generators: ids made of a generator's bits and weighted picks.

Every id comes from the caller's `random.Random`, never from `uuid.uuid4()`: the same seed
gives the same event_ids, so a re-sent backfill is deduplicated by the pipeline."""

from __future__ import annotations

import bisect
import random
import uuid
from collections.abc import Iterable
from typing import TypeVar

T = TypeVar("T")


def draw_uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def cumulative(weights: Iterable[float]) -> list[float]:
    out: list[float] = []
    total = 0.0
    for weight in weights:
        total += weight
        out.append(total)
    return out


def pick(rng: random.Random, values: tuple[T, ...], totals: list[float]) -> T:
    """One of `values`, weighted by the running totals of their weights (`cumulative`; one
    draw of `rng`)."""
    return values[bisect.bisect_right(totals, rng.random() * totals[-1])]
