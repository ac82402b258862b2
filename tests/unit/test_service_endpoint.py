"""`POST /v1/services/{topic}` (ingest/services.py) in process, on a real local bus in a
temporary directory: what is accepted lands on the bus as the Kafka publisher would have
sent it, with the write key's project; anything wrong is a 4xx with a message and leaves
the bus untouched."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI

from common.settings import Settings
from ingest.app import Gateway
from ingest.services import SERVICES_PATH, add_service_routes
from schemas.services import (
    MAX_MESSAGES_PER_REQUEST,
    SERVICE_TOPICS,
    EncodingJob,
    SocialNotification,
    decode_message,
    message_key,
)
from streams.backends.local.bus import LocalBus

KEYS = "default:wk-default,p2:wk-p2"
T0 = 1_764_100_800_000
SOCIAL = "social.notifications"
VIDEO = "video.encoding"


def social(message_id: str = "s1", **extra: Any) -> dict[str, Any]:
    return {
        "message_id": message_id,
        "user_id": "u1",
        "kind": "message",
        "status": "delivered",
        "ts": T0,
        **extra,
    }


def job(message_id: str = "j1", **extra: Any) -> dict[str, Any]:
    return {
        "message_id": message_id,
        "job_id": "job-1",
        "content_id": "c1",
        "status": "succeeded",
        "ts": T0,
        "encode_ms": 1500,
        **extra,
    }


@pytest.fixture
async def bus(tmp_path: Path) -> AsyncIterator[LocalBus]:
    bus = LocalBus(tmp_path / "bus")
    await bus.start()
    try:
        yield bus
    finally:
        await bus.stop()


def client_for(bus: LocalBus) -> httpx.AsyncClient:
    app = FastAPI()
    add_service_routes(app, Gateway(Settings(write_keys=KEYS), bus))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://quip")


async def post(
    bus: LocalBus,
    topic: str,
    body: Any,
    key: str | None = "wk-default",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    auth = {"Authorization": f"Bearer {key}"} if key is not None else {}
    async with client_for(bus) as client:
        return await client.post(
            SERVICES_PATH.format(topic=topic), content=content, headers={**auth, **(headers or {})}
        )


async def bus_records(bus: LocalBus) -> list[tuple[str, bytes, bytes]]:
    return [
        (record.topic, record.key, record.value)
        for frame in await bus.read(0, 1000)
        for record in frame.records
    ]


async def test_one_message_lands_on_the_bus_as_the_kafka_publisher_sends_it(
    bus: LocalBus,
) -> None:
    response = await post(bus, SOCIAL, social())
    assert response.status_code == 200, response.text
    assert response.json() == {"accepted": 1}
    message = SocialNotification(**social())
    [(topic, key, value)] = await bus_records(bus)
    assert (topic, key) == (SOCIAL, message_key(message))
    assert decode_message(SOCIAL, value) == message  # project "default": the key's


async def test_a_batch_is_one_frame_in_order_with_the_keys_project(bus: LocalBus) -> None:
    batch = [job("j1"), job("j2", status="queued", encode_ms=None), job("j1")]  # j1 twice
    response = await post(bus, VIDEO, batch, key="wk-p2")
    assert response.json() == {"accepted": 3}
    frames = await bus.read(0, 10)
    assert len(frames) == 1  # one fsync'ed frame: all or nothing
    decoded = [decode_message(record.topic, record.value) for record in frames[0].records]
    assert [m.message_id for m in decoded] == ["j1", "j2", "j1"]
    assert {m.project for m in decoded} == {"p2"}
    assert {record.key for record in frames[0].records} == {b"job-1"}  # SPEC §3: key job_id
    assert isinstance(decoded[1], EncodingJob)
    assert decoded[1].encode_ms is None


async def test_a_message_may_name_its_own_project(bus: LocalBus) -> None:
    response = await post(bus, SOCIAL, [social(project="p2")], key="wk-p2")
    assert response.status_code == 200, response.text
    [(_, _, value)] = await bus_records(bus)
    assert decode_message(SOCIAL, value).project == "p2"


async def test_gzip_bodies_are_taken(bus: LocalBus) -> None:
    body = gzip.compress(orjson.dumps([social("a"), social("b")]))
    response = await post(bus, SOCIAL, body, headers={"Content-Encoding": "gzip"})
    assert response.json() == {"accepted": 2}


async def test_an_empty_batch_publishes_nothing(bus: LocalBus) -> None:
    response = await post(bus, SOCIAL, [])
    assert response.json() == {"accepted": 0}
    assert bus.end == 0


@pytest.mark.parametrize(
    ("topic", "batch", "invalid"),
    [
        pytest.param(SOCIAL, [social(), social(ts="yesterday")], [1], id="wrong type"),
        pytest.param(SOCIAL, [{"message_id": "x", "user_id": "u"}], [0], id="missing fields"),
        pytest.param(SOCIAL, [social(status="read")], [0], id="unknown status"),
        pytest.param(SOCIAL, [social(message_id="")], [0], id="empty message_id"),
        pytest.param(SOCIAL, [social(ts=-1)], [0], id="negative time"),
        pytest.param(VIDEO, [job(status="queued")], [0], id="queued job with encode_ms"),
        pytest.param(VIDEO, [social()], [0], id="message of another topic"),
        pytest.param(SOCIAL, [social(), 7, "text", None], [1, 2, 3], id="not objects"),
        pytest.param(SOCIAL, [social(project="p2")], [0], id="another project than the key's"),
        pytest.param(SOCIAL, [social(project=None)], [0], id="null project"),
        pytest.param(SOCIAL, social(ts=1.5), [0], id="one message, float time"),
        pytest.param(SOCIAL, [social(ts=True)], [0], id="boolean time"),
    ],
)
async def test_invalid_messages_refuse_the_whole_request(
    bus: LocalBus, topic: str, batch: Any, invalid: list[int]
) -> None:
    response = await post(bus, topic, batch)
    assert response.status_code == 400, response.text
    answer = response.json()
    assert "nothing was published" in answer["error"]
    assert [error["index"] for error in answer["errors"]] == invalid
    assert all(error["reason"] for error in answer["errors"])
    assert bus.end == 0


@pytest.mark.parametrize(
    ("body", "status"),
    [
        pytest.param(b"{not json", 400, id="not JSON"),
        pytest.param(b"\xff\xfe", 400, id="not UTF-8"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, 400, id="nested too deeply"),
        pytest.param(b"[1e400]", 400, id="number out of range"),
        pytest.param(b"x" * (1024 * 1024 + 1), 413, id="over 1 MB"),
        pytest.param(
            orjson.dumps([social(str(i)) for i in range(MAX_MESSAGES_PER_REQUEST + 1)]),
            413,
            id="too many messages",
        ),
    ],
)
async def test_unusable_bodies(bus: LocalBus, body: bytes, status: int) -> None:
    response = await post(bus, SOCIAL, body)
    assert response.status_code == status, response.text
    assert response.json()["error"]
    assert bus.end == 0


async def test_unknown_topics_are_404_and_name_the_topics(bus: LocalBus) -> None:
    response = await post(bus, "analytics.events", [social()])
    assert response.status_code == 404
    assert all(topic in response.json()["error"] for topic in SERVICE_TOPICS)
    assert bus.end == 0


@pytest.mark.parametrize("key", [None, "", "wk-nope", "wk-default-"])
async def test_a_missing_or_unknown_write_key_is_401(bus: LocalBus, key: str | None) -> None:
    response = await post(bus, SOCIAL, [social()], key=key)
    assert response.status_code == 401
    assert "write key" in response.json()["error"]
    assert bus.end == 0


async def test_a_bus_that_cannot_take_the_request_is_503_with_retry_after(
    tmp_path: Path,
) -> None:
    stopped = LocalBus(tmp_path / "bus")  # never started
    response = await post(stopped, SOCIAL, [social()])
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) >= 1
    assert "retry" in response.json()["error"]
