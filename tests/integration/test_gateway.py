"""End to end over HTTP: a real `quip gateway` process in front of the real Kafka."""

from __future__ import annotations

import base64
import gzip
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import msgspec
import orjson
import pytest

from schemas.events import DeadLetter, EventRecord, decode_record
from schemas.topics import ANALYTICS_EVENTS, ANALYTICS_EVENTS_DLQ
from tests.gateway_process import GatewayProcess, end_offsets, read_since, running_gateway

pytestmark = pytest.mark.kafka

WRITE_KEY = "wk_vr_test_key"
OTHER_KEY = "wk_web_test_key"
KEYS = f"vr:{WRITE_KEY},web:{OTHER_KEY}"
PROJECTS = {"vr", "web"}


@pytest.fixture(scope="module")
def gateway(registry_topics: None) -> Iterator[GatewayProcess]:
    with running_gateway({"QUIP_WRITE_KEYS": KEYS, "QUIP_RATE_LIMIT_IP_PER_MIN": "0"}) as process:
        yield process


@pytest.fixture
def native_event() -> Callable[..., dict[str, Any]]:
    def make(**overrides: Any) -> dict[str, Any]:
        event = {
            "event_id": uuid.uuid4().hex,
            "type": "page_view",
            "user_id": "u-1",
            "ts": int(time.time() * 1000) - 1000,
            "props": {"url": "https://vr.example/home"},
        }
        event.update(overrides)
        return event

    return make


class Landed:
    """What one test wrote: committed records of both topics since the test began."""

    def __init__(self) -> None:
        self.events: list[tuple[str, EventRecord]] = []
        self.dead: list[DeadLetter] = []

    async def collect(self, since: dict[str, Any]) -> Landed:
        # Only this module's projects: other gateways (a benchmark) may share the broker.
        for key, value in await read_since(since[ANALYTICS_EVENTS.name]):
            record = decode_record(value)
            if record.project in PROJECTS:
                self.events.append((key.decode(), record))
        for _, value in await read_since(since[ANALYTICS_EVENTS_DLQ.name]):
            dead = msgspec.json.decode(value, type=DeadLetter)
            if dead.project in PROJECTS:
                self.dead.append(dead)
        return self

    def event_ids(self) -> set[str]:
        return {event.event_id for _, record in self.events for event in record.events}


async def snapshot() -> dict[str, Any]:
    return {
        topic: await end_offsets(topic)
        for topic in (ANALYTICS_EVENTS.name, ANALYTICS_EVENTS_DLQ.name)
    }


def auth(key: str = WRITE_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_native_batch_lands_keyed_by_user_with_rejects_in_dlq(
    gateway: GatewayProcess, native_event: Callable[..., dict[str, Any]]
) -> None:
    since = await snapshot()
    events = [
        native_event(user_id="u-1", type="session_start", props={}),
        native_event(user_id="u-2"),
        native_event(user_id="u-1", type="not a valid type"),
        native_event(user_id="u-1", type="custom.thing", props={"k": 1}, session_id="s-9"),
    ]
    body = {"context": {"device_model": "quest3", "region": "eu"}, "events": events}
    response = httpx.post(f"{gateway.url}/v1/events", json=body, headers=auth())
    assert response.status_code == 200, response.text
    result = response.json()
    assert (result["accepted"], result["rejected"]) == (3, 1)
    assert result["errors"][0]["index"] == 2

    landed = await Landed().collect(since)
    keys = sorted(key for key, _ in landed.events)
    assert keys == ["vr:u-1", "vr:u-2"]
    by_key = dict(landed.events)
    first_user = by_key["vr:u-1"]
    assert first_user.project == "vr"
    assert [e.event_id for e in first_user.events] == [events[0]["event_id"], events[3]["event_id"]]
    assert first_user.events[1].session_id == "s-9"
    assert {e.device_model for e in first_user.events} == {"quest3"}
    assert [(d.project, d.index, d.source) for d in landed.dead] == [("vr", 2, "native")]
    assert orjson.loads(landed.dead[0].raw)["event_id"] == events[2]["event_id"]


async def test_gzip_native_body(
    gateway: GatewayProcess, native_event: Callable[..., dict[str, Any]]
) -> None:
    since = await snapshot()
    events = [native_event(user_id="gz") for _ in range(50)]
    body = gzip.compress(orjson.dumps({"events": events}))
    response = httpx.post(
        f"{gateway.url}/v1/events",
        content=body,
        headers={**auth(), "Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert response.json()["accepted"] == 50
    assert (await Landed().collect(since)).event_ids() == {e["event_id"] for e in events}


async def test_segment_batch_maps_fields(gateway: GatewayProcess) -> None:
    since = await snapshot()
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    body = {
        "batch": [
            {
                "type": "track",
                "event": "video_started",
                "userId": "seg-1",
                "messageId": "m-1" + uuid.uuid4().hex,
                "timestamp": now,
                "properties": {"content_id": "c1"},
            },
            {
                "type": "page",
                "anonymousId": "anon-7",
                "messageId": "m-2" + uuid.uuid4().hex,
                "timestamp": now,
                "properties": {"url": "https://vr.example/a"},
            },
        ],
        "context": {"device": {"model": "quest3"}},
        "sentAt": now,
    }
    basic = base64.b64encode(f"{OTHER_KEY}:".encode()).decode()
    response = httpx.post(
        f"{gateway.url}/v1/batch", json=body, headers={"Authorization": f"Basic {basic}"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 2

    landed = await Landed().collect(since)
    by_key = {key: record for key, record in landed.events}
    assert set(by_key) == {"web:seg-1", "web:anon-7"}
    assert by_key["web:seg-1"].events[0].type == "video_started"
    assert by_key["web:anon-7"].events[0].type == "page_view"
    assert by_key["web:seg-1"].events[0].device_model == "quest3"


async def test_posthog_gzip_without_header_and_body_key(gateway: GatewayProcess) -> None:
    since = await snapshot()
    body = {
        "api_key": WRITE_KEY,
        "batch": [
            {
                "event": "$pageview",
                "distinct_id": "ph-1",
                "uuid": str(uuid.uuid4()),
                "properties": {"$current_url": "https://vr.example"},
                "timestamp": int(time.time() * 1000),
            },
        ],
    }
    response = httpx.post(
        f"{gateway.url}/batch/",
        content=gzip.compress(orjson.dumps(body)),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.text
    landed = await Landed().collect(since)
    assert [(key, record.events[0].type) for key, record in landed.events] == [
        ("vr:ph-1", "page_view")
    ]


async def test_real_segment_sdk_delivers(gateway: GatewayProcess) -> None:
    from segment.analytics import Client

    since = await snapshot()
    client = Client(write_key=OTHER_KEY, host=gateway.url, sync_mode=True, gzip=True)
    client.track(user_id="sdk-seg", event="Gesture Performed", properties={"gesture": "pinch"})
    client.page(user_id="sdk-seg", name="Home", properties={"url": "https://vr.example/"})
    client.flush()
    landed = await Landed().collect(since)
    types = sorted(event.type for _, record in landed.events for event in record.events)
    assert types == ["gesture_performed", "page_view"]
    assert {key for key, _ in landed.events} == {"web:sdk-seg"}


async def test_real_posthog_sdk_delivers(gateway: GatewayProcess) -> None:
    from posthog import Posthog

    since = await snapshot()
    client = Posthog(WRITE_KEY, host=gateway.url, sync_mode=True)
    client.capture(
        "playback_request", distinct_id="sdk-ph", properties={"play_id": "p1", "content_id": "c9"}
    )
    client.capture(
        "$pageview", distinct_id="sdk-ph", properties={"$current_url": "https://vr.example"}
    )
    client.flush()
    client.shutdown()
    landed = await Landed().collect(since)
    types = sorted(event.type for _, record in landed.events for event in record.events)
    assert types == ["page_view", "playback_request"]
    assert {key for key, _ in landed.events} == {"vr:sdk-ph"}


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        pytest.param({}, 401, id="no key"),
        pytest.param({"Authorization": "Bearer nope"}, 401, id="unknown key"),
        pytest.param({"Authorization": f"Bearer {WRITE_KEY}x"}, 401, id="key with suffix"),
    ],
)
def test_bad_keys(gateway: GatewayProcess, headers: dict[str, str], status: int) -> None:
    response = httpx.post(f"{gateway.url}/v1/events", json={"events": []}, headers=headers)
    assert response.status_code == status
    assert "key" in response.json()["error"]


@pytest.mark.parametrize(
    ("content", "extra_headers", "status"),
    [
        pytest.param(b"{" + b" " * (1024 * 1024) + b"}", {}, 413, id="plain over 1 MB"),
        pytest.param(
            gzip.compress(b" " * (20 * 1024 * 1024)),
            {"Content-Encoding": "gzip"},
            413,
            id="gzip bomb",
        ),
        pytest.param(b"not json", {}, 400, id="not json"),
        pytest.param(b'{"events": {}}', {}, 400, id="wrong shape"),
        pytest.param(b"\x1f\x8bnot really gzip", {}, 400, id="corrupt gzip"),
    ],
)
def test_bad_bodies(
    gateway: GatewayProcess, content: bytes, extra_headers: dict[str, str], status: int
) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/events", content=content, headers={**auth(), **extra_headers}
    )
    assert response.status_code == status, response.text
    assert response.json()["error"]


def test_too_many_events_is_413(
    gateway: GatewayProcess, native_event: Callable[..., dict[str, Any]]
) -> None:
    events = [native_event() for _ in range(1001)]
    response = httpx.post(f"{gateway.url}/v1/events", json={"events": events}, headers=auth())
    assert response.status_code == 413


def test_rate_limit_answers_429_with_retry_after() -> None:
    with running_gateway({"QUIP_WRITE_KEYS": KEYS, "QUIP_RATE_LIMIT_IP_PER_MIN": "3"}) as limited:
        statuses = [
            httpx.post(f"{limited.url}/v1/events", json={"events": []}, headers=auth())
            for _ in range(5)
        ]
    assert [r.status_code for r in statuses] == [200, 200, 200, 429, 429]
    assert int(statuses[3].headers["Retry-After"]) >= 1


def test_key_rate_limit() -> None:
    env = {
        "QUIP_WRITE_KEYS": KEYS,
        "QUIP_RATE_LIMIT_IP_PER_MIN": "0",
        "QUIP_RATE_LIMIT_KEY_PER_MIN": "2",
    }
    with running_gateway(env) as limited:
        first_key = [
            httpx.post(f"{limited.url}/v1/events", json={"events": []}, headers=auth()).status_code
            for _ in range(3)
        ]
        other_key = httpx.post(
            f"{limited.url}/v1/events", json={"events": []}, headers=auth(OTHER_KEY)
        )
    assert first_key == [200, 200, 429]
    assert other_key.status_code == 200


def test_cors_preflight_for_configured_origin() -> None:
    env = {"QUIP_WRITE_KEYS": KEYS, "QUIP_CORS_ORIGINS": "https://webxr.example"}
    with running_gateway(env) as cors:
        allowed = httpx.options(
            f"{cors.url}/v1/events",
            headers={
                "Origin": "https://webxr.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        other = httpx.options(
            f"{cors.url}/v1/events",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://webxr.example"
    assert "access-control-allow-origin" not in other.headers


def test_health_ready_and_metrics(
    gateway: GatewayProcess, native_event: Callable[..., dict[str, Any]]
) -> None:
    httpx.post(
        f"{gateway.url}/v1/events",
        json={"events": [native_event(), native_event(type="BAD")]},
        headers=auth(),
    )
    assert httpx.get(f"{gateway.url}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{gateway.url}/ready")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"kafka": "ok"}
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert 'http_requests_total{method="POST",route="/v1/events",status="200"}' in metrics
    assert "http_request_duration_seconds_bucket" in metrics
    assert 'ingest_events_accepted_total{source="native"}' in metrics
    assert 'ingest_events_rejected_total{reason="invalid_type",source="native"}' in metrics
