"""The browser SDKs' endpoints over HTTP against a real `quip gateway` process and the real
Kafka (SPEC §2): Segment single calls, posthog-js's gzip-js and base64 bodies, the flags
and config answers, CORS for all of them, and the `source` every record carries."""

from __future__ import annotations

import base64
import gzip
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson
import pytest

from ingest.app import SEGMENT_CALL_PATHS
from schemas.events import Event, EventRecord
from sinks.clickhouse import ServerClickHouse
from tests.gateway_process import GatewayProcess, running_gateway
from tests.integration.test_gateway import KEYS, OTHER_KEY, WRITE_KEY, Landed, snapshot
from tests.pipeline_checks import WRITE_KEY as PIPELINE_KEY
from tests.worker_process import running_worker

pytestmark = pytest.mark.kafka

PAGE_ORIGIN = "https://vr-page.example"


@pytest.fixture(scope="module")
def gateway(registry_topics: None) -> Iterator[GatewayProcess]:
    env = {
        "QUIP_WRITE_KEYS": KEYS,
        "QUIP_RATE_LIMIT_IP_PER_MIN": "0",
        "QUIP_CORS_ORIGINS": PAGE_ORIGIN,
    }
    with running_gateway(env) as process:
        yield process


def iso_now(offset_ms: int = 0) -> str:
    moment = time.time() + offset_ms / 1000
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(moment))
        + f".{int(moment * 1000) % 1000:03d}Z"
    )


def analytics_js_message(call: str, **fields: Any) -> dict[str, Any]:
    """What analytics-next 1.84 posts to /v1/<letter>: writeKey in the body, no header."""
    return {
        "timestamp": iso_now(-1_000),
        "integrations": {},
        "type": call,
        "context": {
            "page": {"url": "https://vr-page.example/lobby"},
            "userAgentData": {"brands": [], "mobile": False, "platform": "Android"},
            "library": {"name": "analytics.js", "version": "npm:next-1.84.3"},
        },
        "messageId": f"ajs-next-{uuid.uuid4()}",
        "anonymousId": "anon-seg",
        "writeKey": WRITE_KEY,
        "sentAt": iso_now(),
        **fields,
    }


CALL_FIELDS: dict[str, dict[str, Any]] = {
    "track": {"event": "Video Played", "properties": {"content_id": "c-1"}},
    "page": {"name": "Lobby", "properties": {"url": "https://vr-page.example/lobby"}},
    "screen": {"name": "Settings", "properties": {}},
    "identify": {"userId": "u-seg", "traits": {"plan": "pro"}},
    "group": {"userId": "u-seg", "groupId": "g-1", "traits": {"name": "Team"}},
    "alias": {"userId": "u-seg", "previousId": "anon-seg"},
}
CALL_TYPES = {
    "track": "video_played",
    "page": "page_view",
    "screen": "screen",
    "identify": "identify",
    "group": "group",
    "alias": "alias",
}


async def test_every_segment_single_call_lands_once_with_its_type(
    gateway: GatewayProcess,
) -> None:
    since = await snapshot()
    sent: dict[str, tuple[str, str]] = {}  # event_id -> (path, expected type)
    for path, call in SEGMENT_CALL_PATHS.items():
        message = analytics_js_message(call, **CALL_FIELDS[call])
        if len(path) > len("/v1/a"):
            # The HTTP API: key as the Basic-auth user, no type in the body.
            del message["writeKey"], message["type"]
            headers = {
                "Authorization": "Basic " + base64.b64encode(f"{OTHER_KEY}:".encode()).decode()
            }
        else:
            headers = {"Content-Type": "text/plain"}
        response = httpx.post(
            f"{gateway.url}{path}", content=orjson.dumps(message), headers=headers
        )
        assert response.status_code == 200, (path, response.text)
        assert response.json() == {"accepted": 1, "rejected": 0, "errors": []}, path
        sent[message["messageId"]] = (path, CALL_TYPES[call])

    stored = {
        event.event_id: (record.project, record.source, event.type, event.os)
        for record, event in await landed_since(since, set(sent))
    }
    assert stored == {
        event_id: ("vr" if len(path) <= len("/v1/a") else "web", "segment", event_type, "Android")
        for event_id, (path, event_type) in sent.items()
    }


async def test_segment_single_call_without_any_key_is_refused(gateway: GatewayProcess) -> None:
    message = analytics_js_message("track", **CALL_FIELDS["track"])
    del message["writeKey"]

    response = httpx.post(f"{gateway.url}/v1/t", content=orjson.dumps(message))

    assert response.status_code == 401


async def landed_since(
    since: dict[str, Any], event_ids: set[str]
) -> list[tuple[EventRecord, Event]]:
    """The records' events with these ids (other gateways may share the broker)."""
    landed = await Landed().collect(since)
    return [
        (record, event)
        for _, record in landed.events
        for event in record.events
        if event.event_id in event_ids
    ]


def posthog_js_batch(event_name: str = "clicked_play", **properties: Any) -> dict[str, Any]:
    """posthog-js 1.449's `/e/` body: a batch with the token as api_key."""
    return {
        "api_key": WRITE_KEY,
        "batch": [
            {
                "uuid": str(uuid.uuid4()),
                "event": event_name,
                "properties": {
                    "$os": "Android",
                    "$current_url": "https://vr-page.example/lobby",
                    "distinct_id": "anon-ph",
                    "$session_id": "ph-session",
                    "token": WRITE_KEY,
                    **properties,
                },
                "timestamp": iso_now(-2_000),
            }
        ],
        "sent_at": iso_now(),
    }


def posthog_bodies() -> list[Any]:
    def gzip_js(body: dict[str, Any]) -> tuple[str, bytes, dict[str, str]]:
        return (
            "?compression=gzip-js&ver=1.449.2",
            gzip.compress(orjson.dumps(body)),
            {"Content-Type": "text/plain"},
        )

    def gzip_plain(body: dict[str, Any]) -> tuple[str, bytes, dict[str, str]]:
        # posthog-js 1.449 names no compression in the URL: gzip by its magic bytes.
        return "", gzip.compress(orjson.dumps(body)), {"Content-Type": "text/plain"}

    def base64_form(body: dict[str, Any]) -> tuple[str, bytes, dict[str, str]]:
        data = base64.b64encode(orjson.dumps(body)).decode()
        form = urlencode({"data": data, "compression": "base64"}).encode()
        return "", form, {"Content-Type": "application/x-www-form-urlencoded"}

    def base64_query(body: dict[str, Any]) -> tuple[str, bytes, dict[str, str]]:
        data = base64.b64encode(orjson.dumps(body)).decode()
        form = urlencode({"data": data}).encode()
        return "?compression=base64", form, {"Content-Type": "application/x-www-form-urlencoded"}

    return [
        pytest.param(path, encode, id=f"{path} {encode.__name__}")
        for path in ("/e/", "/i/v0/e/")
        for encode in (gzip_js, gzip_plain, base64_form, base64_query)
    ]


@pytest.mark.parametrize(("path", "encode"), posthog_bodies())
async def test_posthog_js_bodies(gateway: GatewayProcess, path: str, encode: Any) -> None:
    since = await snapshot()
    body = posthog_js_batch("$pageview", **{"$app_version": "3.1.0"})
    query, content, headers = encode(body)

    response = httpx.post(f"{gateway.url}{path}{query}", content=content, headers=headers)

    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 1
    [(record, event)] = await landed_since(since, {body["batch"][0]["uuid"]})
    assert (record.project, record.source) == ("vr", "posthog")
    assert (event.event_id, event.type, event.user_id) == (
        body["batch"][0]["uuid"],
        "page_view",
        "anon-ph",
    )
    assert (event.os, event.app_version, event.session_id) == ("Android", "3.1.0", "ph-session")


async def test_native_records_say_native(gateway: GatewayProcess) -> None:
    since = await snapshot()
    event = {"event_id": uuid.uuid4().hex, "type": "session_start", "user_id": "u-n",
             "ts": int(time.time() * 1000), "os": "horizon"}  # fmt: skip

    response = httpx.post(
        f"{gateway.url}/v1/events",
        json={"events": [event]},
        headers={"Authorization": f"Bearer {WRITE_KEY}"},
    )

    assert response.status_code == 200
    [(record, stored)] = await landed_since(since, {event["event_id"]})
    assert (record.source, stored.os) == ("native", "horizon")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        pytest.param("POST", "/flags/?v=2", id="flags v2 POST"),
        pytest.param("GET", "/flags/?v=2&config=true", id="flags GET"),
        pytest.param("POST", "/decide/?v=3", id="decide POST"),
        pytest.param("GET", "/decide/?v=3", id="decide GET"),
    ],
)
def test_flags_answer_no_flags(gateway: GatewayProcess, method: str, path: str) -> None:
    body = gzip.compress(orjson.dumps({"token": WRITE_KEY, "distinct_id": "anon-ph"}))
    response = httpx.request(
        method,
        f"{gateway.url}{path}",
        content=body if method == "POST" else None,
        headers={"Content-Type": "text/plain"},
    )

    assert response.status_code == 200
    answer = response.json()
    assert (answer["featureFlags"], answer["flags"], answer["errorsWhileComputingFlags"]) == (
        {},
        {},
        False,
    )


def test_remote_config_and_its_script(gateway: GatewayProcess) -> None:
    config = httpx.get(f"{gateway.url}/array/{WRITE_KEY}/config")
    script = httpx.get(f"{gateway.url}/array/{WRITE_KEY}/config.js")

    assert (config.status_code, script.status_code) == (200, 200)
    assert config.json()["hasFeatureFlags"] is False
    assert script.headers["content-type"].startswith("application/javascript")
    assert orjson.dumps(WRITE_KEY).decode() in script.text


@pytest.mark.parametrize(
    ("path", "method", "headers"),
    [
        pytest.param("/e/?compression=gzip-js", "POST", "content-type", id="posthog capture"),
        pytest.param("/flags/?v=2", "POST", "content-type", id="posthog flags"),
        pytest.param(f"/array/{WRITE_KEY}/config", "GET", "", id="posthog config"),
        pytest.param("/v1/t", "POST", "content-type", id="analytics.js track"),
        pytest.param("/v1/track", "POST", "authorization,content-type", id="HTTP API track"),
    ],
)
def test_cors_preflight_for_browser_sdk_calls(
    gateway: GatewayProcess, path: str, method: str, headers: str
) -> None:
    request_headers = {"Origin": PAGE_ORIGIN, "Access-Control-Request-Method": method}
    if headers:
        request_headers["Access-Control-Request-Headers"] = headers

    allowed = httpx.options(f"{gateway.url}{path}", headers=request_headers)
    other = httpx.options(
        f"{gateway.url}{path}",
        headers={**request_headers, "Origin": "https://elsewhere.example"},
    )

    assert allowed.status_code == 200, allowed.text
    assert allowed.headers["access-control-allow-origin"] == PAGE_ORIGIN
    assert method in allowed.headers["access-control-allow-methods"]
    assert "access-control-allow-origin" not in other.headers


def test_cors_headers_on_simple_requests(gateway: GatewayProcess) -> None:
    """text/plain POSTs and plain GETs are sent without a preflight: the answer itself must
    allow the page to read it."""
    message = analytics_js_message("track", **CALL_FIELDS["track"])
    answers = [
        httpx.post(
            f"{gateway.url}/v1/t",
            content=orjson.dumps(message),
            headers={"Origin": PAGE_ORIGIN, "Content-Type": "text/plain"},
        ),
        httpx.get(f"{gateway.url}/array/{WRITE_KEY}/config", headers={"Origin": PAGE_ORIGIN}),
    ]

    for answer in answers:
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == PAGE_ORIGIN


@pytest.mark.clickhouse
@pytest.mark.influxdb  # the worker's sink writes InfluxDB too
def test_worker_stores_os_and_source_on_clickhouse_server(
    registry_topics: None,
    project: str,
    worker_env: dict[str, str],
    server_clickhouse: ServerClickHouse,
) -> None:
    """The cluster path: the dimensions reach clickhouse-server (18.16) through the Faust
    worker, from each endpoint family."""
    segment = analytics_js_message("track", **CALL_FIELDS["track"], writeKey=PIPELINE_KEY)
    posthog = posthog_js_batch(**{"$device_model": "Quest 3"})
    posthog["api_key"] = PIPELINE_KEY
    native = {"event_id": uuid.uuid4().hex, "type": "session_start", "user_id": "u-n",
              "ts": int(time.time() * 1000), "os": "horizon"}  # fmt: skip
    env = {"QUIP_WRITE_KEYS": f"{project}:{PIPELINE_KEY}", "QUIP_RATE_LIMIT_IP_PER_MIN": "0"}
    with running_gateway(env) as gateway, running_worker(worker_env):
        answers = [
            httpx.post(f"{gateway.url}/v1/t", content=orjson.dumps(segment)),
            httpx.post(f"{gateway.url}/e/", content=gzip.compress(orjson.dumps(posthog))),
            httpx.post(
                f"{gateway.url}/v1/events",
                json={"events": [native]},
                headers={"Authorization": f"Bearer {PIPELINE_KEY}"},
            ),
        ]
        assert [a.json()["accepted"] for a in answers] == [1, 1, 1], [a.text for a in answers]
        query = (
            "SELECT event_id, source, os, device_model FROM events FINAL "
            "WHERE project = %(project)s ORDER BY source"
        )
        deadline = time.monotonic() + 60
        while len(rows := server_clickhouse.execute(query, {"project": project})) < 3:
            assert time.monotonic() < deadline, rows
            time.sleep(0.5)

    assert rows == [
        (native["event_id"], "native", "horizon", ""),
        (posthog["batch"][0]["uuid"], "posthog", "Android", "Quest 3"),
        (segment["messageId"], "segment", "Android", ""),
    ]
