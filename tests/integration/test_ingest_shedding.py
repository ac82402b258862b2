"""Load shedding at the gateway: past QUIP_INGEST_MAX_IN_FLIGHT concurrent requests the
next one is answered 503 with Retry-After before its body is read and leaves nothing on the
bus, while every admitted request is stored. The gateway app runs in-process over ASGI in
front of the embedded bus (a real log on disk)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import orjson

from common.settings import Settings
from ingest.app import create_app
from schemas.events import decode_record
from schemas.topics import ANALYTICS_EVENTS
from streams.backends.local.bus import LocalBus

WRITE_KEY = "wk_shed"
AUTH = {"Authorization": f"Bearer {WRITE_KEY}"}
BOUND = 2
WAIT_S = 10


def native_body(*event_ids: str) -> bytes:
    now = int(time.time() * 1000)
    events = [
        {"event_id": event_id, "type": "menu.open", "user_id": "u-1", "ts": now}
        for event_id in event_ids
    ]
    return orjson.dumps({"events": events})


COMPAT_BODIES: dict[str, Callable[[str], bytes]] = {
    "/v1/batch": lambda event_id: orjson.dumps(
        {"batch": [{"type": "track", "event": "x", "userId": "u", "messageId": event_id}]}
    ),
    "/batch/": lambda event_id: orjson.dumps(
        {"api_key": WRITE_KEY, "batch": [{"event": "x", "distinct_id": "u", "uuid": event_id}]}
    ),
}


async def stored_event_ids(bus: LocalBus) -> set[str]:
    ids: set[str] = set()
    position = 0
    while frames := await bus.read(position, 64):
        for frame in frames:
            for record in frame.records:
                if record.topic == ANALYTICS_EVENTS.name:
                    ids.update(event.event_id for event in decode_record(record.value).events)
        position = frames[-1].end
    return ids


class Held:
    """Requests whose bodies stop after their first bytes until `release()`: the gateway
    keeps them in flight meanwhile."""

    def __init__(self, client: httpx.AsyncClient, count: int) -> None:
        self._release = asyncio.Event()
        self._reading = [asyncio.Event() for _ in range(count)]
        self.tasks = [
            asyncio.create_task(client.post("/v1/events", content=self._body(i), headers=AUTH))
            for i in range(count)
        ]

    async def _body(self, index: int) -> AsyncIterator[bytes]:
        body = native_body(f"held-{index}")
        yield body[:10]
        self._reading[index].set()
        await self._release.wait()
        yield body[10:]

    async def in_flight(self) -> None:
        async with asyncio.timeout(WAIT_S):
            for event in self._reading:
                await event.wait()

    async def release(self) -> list[httpx.Response]:
        self._release.set()
        async with asyncio.timeout(WAIT_S):
            return await asyncio.gather(*self.tasks)


@asynccontextmanager
async def gateway(
    directory: Path, max_in_flight: int
) -> AsyncIterator[tuple[httpx.AsyncClient, LocalBus]]:
    bus = LocalBus(directory / "bus")
    settings = Settings(
        write_keys=f"p:{WRITE_KEY}", rate_limit_ip_per_min=0, ingest_max_in_flight=max_in_flight
    )
    app = create_app(settings, publisher=bus)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield client, bus


def accepted_one(response: httpx.Response) -> bool:
    return response.status_code == 200 and response.json()["accepted"] == 1


async def test_requests_past_the_bound_are_shed_unread_and_admitted_ones_stored(
    tmp_path: Path,
) -> None:
    async with gateway(tmp_path, max_in_flight=BOUND) as (client, bus):
        held = Held(client, BOUND)
        await held.in_flight()

        bodies_read: list[str] = []

        async def unread(path: str, body: bytes) -> AsyncIterator[bytes]:
            bodies_read.append(path)
            yield body

        shed_bodies = {"/v1/events": native_body("shed-native")}
        shed_bodies.update({path: make(f"shed-{path}") for path, make in COMPAT_BODIES.items()})
        async with asyncio.timeout(WAIT_S):
            shed = {
                path: await client.post(path, content=unread(path, body), headers=AUTH)
                for path, body in shed_bodies.items()
            }
        for path, response in shed.items():
            assert response.status_code == 503, (path, response.text)
            assert int(response.headers["Retry-After"]) >= 1
            assert "overloaded" in response.json()["error"]
        assert bodies_read == []

        admitted = await held.release()
        async with asyncio.timeout(WAIT_S):
            after = await client.post("/v1/events", content=native_body("after"), headers=AUTH)
        assert all(accepted_one(response) for response in [*admitted, after])
        assert await stored_event_ids(bus) == {"held-0", "held-1", "after"}


async def test_zero_means_no_bound(tmp_path: Path) -> None:
    async with gateway(tmp_path, max_in_flight=0) as (client, bus):
        held = Held(client, 3)
        await held.in_flight()
        async with asyncio.timeout(WAIT_S):
            extra = await client.post("/v1/events", content=native_body("extra"), headers=AUTH)
        admitted = await held.release()
        assert all(accepted_one(response) for response in [*admitted, extra])
        assert await stored_event_ids(bus) == {"held-0", "held-1", "held-2", "extra"}
