"""The query API's result cache: TTL and stale window by closed/open range (injected clock
and day), LRU bounds, hit ratio and its gauge, project invalidation, and concurrent use."""

from __future__ import annotations

import random
import threading
from datetime import date, timedelta

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Gauge

from api.cache import (
    CLOSED_STALE_S,
    CLOSED_TTL_S,
    OPEN_STALE_S,
    OPEN_TTL_S,
    Cached,
    CacheKey,
    QueryCache,
)

TODAY = date(2026, 10, 10)
YESTERDAY = TODAY - timedelta(days=1)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def key(endpoint: str = "active-users", project: str = "p", **params: str) -> CacheKey:
    return CacheKey(endpoint, project, tuple(sorted(params.items())))


def value(cache: QueryCache, k: CacheKey) -> bytes | None:
    cached = cache.get(k)
    return None if cached is None else cached.value


def make_cache(clock: Clock, **options: object) -> QueryCache:
    gauge = Gauge("cache_hit_ratio_under_test", "test", registry=CollectorRegistry())
    return QueryCache(clock=clock, today=lambda: TODAY, hit_ratio_gauge=gauge, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("last_day", "ttl", "stale_window"),
    [
        pytest.param(YESTERDAY, CLOSED_TTL_S, CLOSED_STALE_S, id="ended yesterday: closed"),
        pytest.param(TODAY - timedelta(days=40), CLOSED_TTL_S, CLOSED_STALE_S, id="long past"),
        pytest.param(TODAY, OPEN_TTL_S, OPEN_STALE_S, id="range includes today: open"),
        pytest.param(TODAY + timedelta(days=3), OPEN_TTL_S, OPEN_STALE_S, id="ends in the future"),
    ],
)
def test_entry_is_fresh_for_its_ttl_then_stale_for_its_window(
    last_day: date, ttl: float, stale_window: float
) -> None:
    clock = Clock()
    cache = make_cache(clock)
    assert (cache.ttl_for(last_day), cache.stale_window_for(last_day)) == (ttl, stale_window)
    assert cache.put(key(), b"[1]", last_day)
    clock.now += ttl - 0.01
    assert cache.get(key()) == Cached(b"[1]", stale=False)
    clock.now += 0.01
    assert cache.get(key()) == Cached(b"[1]", stale=True)
    clock.now += stale_window - 0.01
    assert cache.get(key()) == Cached(b"[1]", stale=True)
    clock.now += 0.01
    assert cache.get(key()) is None
    assert cache.size == 0, "an entry past its stale window is dropped when met"


def test_storing_again_makes_a_stale_entry_fresh() -> None:
    clock = Clock()
    cache = make_cache(clock)
    cache.put(key(), b"old", TODAY)
    clock.now += OPEN_TTL_S + 1
    assert cache.get(key()) == Cached(b"old", stale=True)
    cache.put(key(), b"new", TODAY)
    assert cache.get(key()) == Cached(b"new", stale=False)


def test_closed_and_open_follow_the_injected_day() -> None:
    days = iter([TODAY, TODAY + timedelta(days=1)])
    current = {"today": next(days)}
    cache = QueryCache(today=lambda: current["today"], hit_ratio_gauge=None)
    assert cache.ttl_for(TODAY) == OPEN_TTL_S
    current["today"] = next(days)  # midnight passed: today's range is now closed
    assert cache.ttl_for(TODAY) == CLOSED_TTL_S


def test_least_recently_used_entry_goes_first() -> None:
    cache = make_cache(Clock(), max_entries=3)
    for name in "abc":
        cache.put(key(x=name), name.encode(), YESTERDAY)
    assert value(cache, key(x="a")) == b"a"  # a is now the most recent
    cache.put(key(x="d"), b"d", YESTERDAY)
    assert cache.size == 3
    assert value(cache, key(x="b")) is None
    assert [value(cache, key(x=name)) for name in "acd"] == [b"a", b"c", b"d"]


def test_size_in_bytes_is_bounded_too() -> None:
    cache = make_cache(Clock(), max_bytes=10)
    cache.put(key(x="a"), b"aaaa", YESTERDAY)
    cache.put(key(x="b"), b"bbbb", YESTERDAY)
    cache.put(key(x="c"), b"cccc", YESTERDAY)  # 12 bytes > 10: a goes
    assert cache.size_bytes == 8
    assert value(cache, key(x="a")) is None
    assert not cache.put(key(x="big"), b"x" * 11, YESTERDAY), "larger than the whole cache"
    assert value(cache, key(x="big")) is None
    cache.put(key(x="b"), b"bb", YESTERDAY)  # replacing an entry adjusts the byte count
    assert cache.size_bytes == 6


def test_hit_ratio_is_kept_and_exported_on_every_lookup() -> None:
    registry = CollectorRegistry()
    gauge = Gauge("ratio_for_test", "test", registry=registry)
    cache = QueryCache(clock=Clock(), today=lambda: TODAY, hit_ratio_gauge=gauge)
    assert cache.hit_ratio == 0.0
    cache.get(key())  # miss
    cache.put(key(), b"[]", YESTERDAY)
    cache.get(key())  # hit
    cache.get(key())  # hit
    cache.get(key(x="other"))  # miss
    assert cache.hit_ratio == 0.5
    assert registry.get_sample_value("ratio_for_test") == 0.5
    cache.get(key())
    assert registry.get_sample_value("ratio_for_test") == pytest.approx(3 / 5)


def test_default_gauge_is_the_spec_metric() -> None:
    cache = QueryCache(clock=Clock(), today=lambda: TODAY)
    cache.put(key(), b"[]", YESTERDAY)
    cache.get(key())
    assert REGISTRY.get_sample_value("cache_hit_ratio") == cache.hit_ratio == 1.0


def test_invalidating_a_project_drops_its_entries_and_refuses_older_results() -> None:
    cache = make_cache(Clock())
    cache.put(key(project="p"), b"p1", YESTERDAY)
    cache.put(key(endpoint="events", project="p"), b"p2", YESTERDAY)
    cache.put(key(project="q"), b"q", YESTERDAY)
    started = cache.epoch()  # a query of project p starts here ...
    assert cache.invalidate_project("p") == 2  # ... a user of p is erased meanwhile
    assert value(cache, key(project="p")) is None
    assert value(cache, key(project="q")) == b"q"
    assert not cache.put(key(project="p"), b"stale", YESTERDAY, epoch=started)
    assert value(cache, key(project="p")) is None
    assert cache.put(key(project="p"), b"fresh", YESTERDAY, epoch=cache.epoch())
    assert value(cache, key(project="p")) == b"fresh"


def test_a_change_of_a_covered_day_drops_the_answer_at_once() -> None:
    """A late event for a closed day: the 300 s TTL does not keep the old answer."""
    clock = Clock()
    cache = make_cache(clock)
    old = TODAY - timedelta(days=10)
    cache.put(key(x="range"), b"old", YESTERDAY, first_day=old, epoch=cache.epoch())
    cache.put(key(x="before"), b"b", old - timedelta(days=1), first_day=old - timedelta(days=5))
    cache.put(key(x="other project", project="q"), b"q", YESTERDAY, first_day=old)
    clock.now += 1
    cache.note_changes([("p", old)])
    assert value(cache, key(x="range")) is None, "answer covering the changed day is dropped"
    assert value(cache, key(x="before")) == b"b", "answers of other days stay"
    assert value(cache, key(x="other project", project="q")) == b"q", "other projects stay"


def test_an_answer_whose_query_started_before_a_change_is_not_kept() -> None:
    cache = make_cache(Clock())
    started = cache.epoch()  # the query starts, reads the stores ...
    cache.note_changes([("p", YESTERDAY)])  # ... a batch of that day is stored meanwhile
    assert not cache.put(key(), b"maybe without it", YESTERDAY, first_day=YESTERDAY, epoch=started)
    assert value(cache, key()) is None
    assert cache.changed_epoch("p", YESTERDAY, YESTERDAY) > started
    assert cache.changed_epoch("p", TODAY, TODAY) == 0, "no change on today"
    after = cache.epoch()
    assert cache.put(key(), b"with it", YESTERDAY, first_day=YESTERDAY, epoch=after)
    assert value(cache, key()) == b"with it"


def test_a_stale_entry_is_served_only_while_its_days_are_unchanged() -> None:
    clock = Clock()
    cache = make_cache(clock)
    cache.put(key(), b"v", YESTERDAY, first_day=YESTERDAY, epoch=cache.epoch())
    clock.now += CLOSED_TTL_S + 1
    assert cache.get(key()) == Cached(b"v", stale=True)
    cache.note_changes([("p", YESTERDAY)])
    assert cache.get(key()) is None


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        QueryCache(max_entries=0, hit_ratio_gauge=None)


def test_concurrent_use_keeps_the_books_straight() -> None:
    cache = make_cache(Clock(), max_entries=50, max_bytes=4000)
    errors: list[BaseException] = []

    def hammer(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(3000):
                k = key(project=rng.choice("pq"), x=str(rng.randrange(200)))
                roll = rng.random()
                if roll < 0.5:
                    cache.get(k)
                elif roll < 0.98:
                    cache.put(k, b"v" * rng.randrange(1, 200), YESTERDAY)
                else:
                    cache.invalidate_project(k.project)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert cache.size <= 50
    assert 0 <= cache.size_bytes <= 4000
    stored = sum(len(entry.value) for entry in cache._entries.values())
    assert stored == cache.size_bytes
    assert 0.0 <= cache.hit_ratio <= 1.0
