"""Body limits, gzip handling, rate limits and key lookup of the gateway."""

from __future__ import annotations

import base64
import gzip
from collections.abc import AsyncIterator

import pytest

from common.auth import KeyRing, key_from_authorization
from ingest.body import BadEncoding, BodyTooLarge, read_body
from ingest.ratelimit import RateLimiter


async def chunked(data: bytes, size: int = 7000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.mark.parametrize(
    ("payload", "encoding", "expected"),
    [
        pytest.param(b'{"a":1}', "", b'{"a":1}', id="plain"),
        pytest.param(gzip.compress(b'{"a":1}'), "gzip", b'{"a":1}', id="gzip by header"),
        pytest.param(gzip.compress(b'{"a":1}'), "", b'{"a":1}', id="gzip by magic bytes"),
        pytest.param(b"x" * 1000, "identity", b"x" * 1000, id="identity"),
        pytest.param(b"", "", b"", id="empty"),
    ],
)
async def test_read_body(payload: bytes, encoding: str, expected: bytes) -> None:
    assert await read_body(chunked(payload), content_encoding=encoding) == expected


@pytest.mark.parametrize(
    ("payload", "encoding"),
    [
        pytest.param(b"x" * (1024 * 1024 + 1), "", id="plain one byte over"),
        pytest.param(
            gzip.compress(b"x" * (1024 * 1024 + 1)), "gzip", id="gzip over after inflating"
        ),
    ],
)
async def test_over_limit_is_refused(payload: bytes, encoding: str) -> None:
    with pytest.raises(BodyTooLarge):
        await read_body(chunked(payload), content_encoding=encoding)


async def test_exactly_at_limit_is_taken() -> None:
    body = b"x" * (1024 * 1024)
    assert len(await read_body(chunked(gzip.compress(body)), content_encoding="gzip")) == len(body)


async def test_gzip_bomb_stops_early_without_inflating_it_all() -> None:
    bomb = gzip.compress(b"\0" * (200 * 1024 * 1024), compresslevel=9)  # ~200 KB on the wire
    consumed = 0

    async def counting() -> AsyncIterator[bytes]:
        nonlocal consumed
        async for chunk in chunked(bomb, 4096):
            consumed += len(chunk)
            yield chunk

    with pytest.raises(BodyTooLarge):
        await read_body(counting(), content_encoding="gzip")
    # 1 MB of zeros deflates to ~1 KB: reading stopped after a few chunks, not 200 KB.
    assert consumed < 64 * 1024


@pytest.mark.parametrize(
    ("payload", "encoding"),
    [
        pytest.param(b"not gzip at all", "gzip", id="header says gzip"),
        pytest.param(gzip.compress(b"{}")[:-6], "gzip", id="truncated"),
        pytest.param(b"{}", "br", id="unsupported encoding"),
    ],
)
async def test_bad_encoding(payload: bytes, encoding: str) -> None:
    with pytest.raises(BadEncoding):
        await read_body(chunked(payload), content_encoding=encoding)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_limiter_allows_the_limit_then_says_when() -> None:
    clock = FakeClock()
    limiter = RateLimiter(60, clock=clock)
    assert [limiter.allow("ip") for _ in range(60)] == [0] * 60
    assert limiter.allow("ip") == 1
    assert limiter.allow("other ip") == 0
    clock.now += 1.0
    assert limiter.allow("ip") == 0
    assert limiter.allow("ip") >= 1


def test_rate_limiter_retry_after_reflects_refill_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(2, clock=clock)  # one token every 30 s
    limiter.allow("k")
    limiter.allow("k")
    assert limiter.allow("k") == 30


def test_rate_limit_zero_is_off() -> None:
    limiter = RateLimiter(0)
    assert not limiter.enabled
    assert all(limiter.allow("ip") == 0 for _ in range(10_000))


def test_rate_limiter_table_is_bounded() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10, clock=clock, max_tracked=100)
    for i in range(1000):
        limiter.allow(f"ip{i}")
    assert len(limiter._buckets) <= 100


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param("Bearer wk1", "wk1", id="bearer"),
        pytest.param("bearer   wk1 ", "wk1", id="bearer case and spaces"),
        pytest.param("Basic " + base64.b64encode(b"wk1:").decode(), "wk1", id="segment basic"),
        pytest.param("Basic !!!", None, id="bad basic"),
        pytest.param("Token wk1", None, id="unknown scheme"),
        pytest.param("", None, id="empty"),
        pytest.param(None, None, id="absent"),
    ],
)
def test_key_from_authorization(header: str | None, expected: str | None) -> None:
    assert key_from_authorization(header) == expected


def test_keyring_maps_keys_to_projects() -> None:
    ring = KeyRing({"wk1": "vr", "wk2": "web"})
    assert ring.project_for("wk1") == "vr"
    assert ring.project_for("wk2") == "web"
    assert ring.project_for("wk") is None
    assert ring.project_for("wk1 ") is None
    assert ring.project_for(None) is None
