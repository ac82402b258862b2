"""Bad input never answers 500 (SPEC §2): deep nesting on every ingest endpoint and body
form, and undecodable text. The gateway app runs in-process over ASGI in front of the
embedded bus (a real log on disk), so what a 200 stored is read back from the bus."""

from __future__ import annotations

import base64
import gzip
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import quote

import httpx
import msgspec
import orjson
import pytest

from common.settings import Settings
from ingest.app import create_app
from schemas.events import DeadLetter, decode_record
from schemas.topics import ANALYTICS_EVENTS, ANALYTICS_EVENTS_DLQ
from streams.backends.local.bus import LocalBus

WRITE_KEY = "wk_bad_input"
AUTH = {"Authorization": f"Bearer {WRITE_KEY}"}


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, LocalBus]]:
    bus = LocalBus(tmp_path / "bus")
    app = create_app(Settings(write_keys=f"p:{WRITE_KEY}", rate_limit_ip_per_min=0), publisher=bus)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield client, bus


async def landed(bus: LocalBus) -> tuple[set[str], list[DeadLetter]]:
    """Event ids stored and dead letters written, from the whole bus."""
    ids: set[str] = set()
    dead: list[DeadLetter] = []
    position = 0
    while frames := await bus.read(position, 64):
        for frame in frames:
            for record in frame.records:
                if record.topic == ANALYTICS_EVENTS.name:
                    ids.update(event.event_id for event in decode_record(record.value).events)
                elif record.topic == ANALYTICS_EVENTS_DLQ.name:
                    dead.append(msgspec.json.decode(record.value, type=DeadLetter))
        position = frames[-1].end
    return ids, dead


def deep(levels: int) -> bytes:
    return b'{"a":' * (levels - 1) + b"{}" + b"}" * (levels - 1)


NOW_MS = int(time.time() * 1000)


def native(props: bytes) -> bytes:
    event = b'{"event_id":"%s","type":"menu.open","user_id":"u","ts":%d,"props":%s}'
    return b'{"events":[%s,%s]}' % (
        event % (b"ok", NOW_MS, b"{}"),
        event % (b"deep", NOW_MS, props),
    )


def segment(props: bytes) -> bytes:
    message = b'{"type":"track","event":"menu.open","userId":"u","messageId":"%s",'
    message += b'"timestamp":%d,"properties":%s}'
    items = (message % (b"ok", NOW_MS, b"{}"), message % (b"deep", NOW_MS, props))
    return b'{"batch":[%s,%s]}' % items


def posthog_events(props: bytes) -> bytes:
    event = b'{"event":"menu.open","distinct_id":"u","uuid":"%s","timestamp":%d,'
    event += b'"properties":%s}'
    return b"[%s,%s]" % (event % (b"ok", NOW_MS, b"{}"), event % (b"deep", NOW_MS, props))


def posthog_batch(props: bytes) -> bytes:
    return b'{"api_key":"%s","batch":%s}' % (WRITE_KEY.encode(), posthog_events(props))


def form(data: bytes) -> bytes:
    return b"data=" + quote(base64.b64encode(data)).encode() + b"&compression=base64"


# path, body from props text, extra headers: every body form of every endpoint
BODY_FORMS: list[tuple[str, Callable[[bytes], bytes], dict[str, str]]] = [
    ("/v1/events", native, {}),
    ("/v1/batch", segment, {}),
    ("/batch/", posthog_batch, {}),
    ("/e/", posthog_events, {}),
    ("/e/?compression=base64", lambda p: base64.b64encode(posthog_batch(p)), {}),
    (
        "/e/",
        lambda p: form(posthog_batch(p)),
        {"Content-Type": "application/x-www-form-urlencoded"},
    ),
    ("/i/v0/e/", lambda p: gzip.compress(posthog_batch(p)), {}),
    ("/capture/", posthog_batch, {}),
]
FORM_IDS = [
    "native",
    "segment",
    "posthog batch",
    "posthog array",
    "base64",
    "form",
    "gzip",
    "capture",
]


@pytest.mark.parametrize(("path", "body", "headers"), BODY_FORMS, ids=FORM_IDS)
@pytest.mark.parametrize("levels", [pytest.param(33, id="33"), pytest.param(1_000, id="1000")])
async def test_deep_props_reject_their_event_only(
    gateway: tuple[httpx.AsyncClient, LocalBus],
    path: str,
    body: Callable[[bytes], bytes],
    headers: dict[str, str],
    levels: int,
) -> None:
    client, bus = gateway

    response = await client.post(path, content=body(deep(levels)), headers={**AUTH, **headers})

    assert response.status_code == 200, response.text
    assert response.json() == {
        "accepted": 1,
        "rejected": 1,
        "errors": [{"index": 1, "reason": "too_deep: props nested more than 32 levels"}],
    }
    ids, dead = await landed(bus)
    assert ids == {"ok"}
    assert [(letter.index, letter.reason.split(":")[0]) for letter in dead] == [(1, "too_deep")]
    assert orjson.loads(dead[0].raw)["event_id"] == "deep"


@pytest.mark.parametrize(("path", "body", "headers"), BODY_FORMS, ids=FORM_IDS)
async def test_body_nested_too_deep_to_parse_is_400(
    gateway: tuple[httpx.AsyncClient, LocalBus],
    path: str,
    body: Callable[[bytes], bytes],
    headers: dict[str, str],
) -> None:
    client, bus = gateway

    response = await client.post(path, content=body(deep(20_000)), headers={**AUTH, **headers})

    assert response.status_code == 400, response.text
    assert "nested more than" in response.json()["error"]
    assert await landed(bus) == (set(), [])


@pytest.mark.parametrize(
    ("path", "content", "headers"),
    [
        pytest.param("/v1/batch", segment(b'{"k":"\xff"}'), {}, id="segment non-UTF-8"),
        pytest.param("/batch/", posthog_batch(b'{"\xfe":1}'), {}, id="posthog non-UTF-8 key"),
        pytest.param(
            "/e/", base64.b64encode(posthog_batch(b'{"k":"\xff"}')), {}, id="base64 non-UTF-8"
        ),
        pytest.param("/v1/events", b"[" * 30_000, {}, id="unclosed deep array"),
        pytest.param("/v1/batch", b"1e999", {}, id="number out of range"),
        pytest.param("/e/", b"", {}, id="empty posthog body"),
    ],
)
async def test_undecodable_bodies_are_400(
    gateway: tuple[httpx.AsyncClient, LocalBus],
    path: str,
    content: bytes,
    headers: dict[str, str],
) -> None:
    client, bus = gateway

    response = await client.post(path, content=content, headers={**AUTH, **headers})

    assert response.status_code == 400, response.text
    assert response.json()["error"]
    assert await landed(bus) == (set(), [])
