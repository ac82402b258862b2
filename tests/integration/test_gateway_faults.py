"""Kafka stopped while clients post: every request gets 200 or 503, and the topic ends up
holding exactly the events of the 200 responses — none lost, none extra."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest

from schemas.events import decode_record
from schemas.topics import ANALYTICS_EVENTS
from tests.conftest import services
from tests.gateway_process import end_offsets, read_since, running_gateway

pytestmark = pytest.mark.kafka

WRITE_KEY = "wk_fault_test"


async def post_until(
    client: httpx.AsyncClient, url: str, stop: asyncio.Event, outcomes: list[tuple[int, list[str]]]
) -> None:
    while not stop.is_set():
        ids = [uuid.uuid4().hex for _ in range(20)]
        now = int(time.time() * 1000)
        body = {
            "events": [
                {
                    "event_id": i,
                    "type": "gesture",
                    "user_id": f"u{n % 5}",
                    "ts": now,
                    "props": {"gesture": "pinch"},
                }
                for n, i in enumerate(ids)
            ]
        }
        response = await client.post(
            f"{url}/v1/events", json=body, headers={"Authorization": f"Bearer {WRITE_KEY}"}
        )
        outcomes.append((response.status_code, ids))
        if response.status_code == 503:
            assert int(response.headers["Retry-After"]) >= 1
            await asyncio.sleep(0.2)


async def test_kafka_outage_loses_nothing_and_adds_nothing(registry_topics: None) -> None:
    since = await end_offsets(ANALYTICS_EVENTS.name)
    outcomes: list[tuple[int, list[str]]] = []
    readiness_during_outage: int | None = None
    with running_gateway(
        {"QUIP_WRITE_KEYS": f"faults:{WRITE_KEY}", "QUIP_RATE_LIMIT_IP_PER_MIN": "0"}
    ) as gw:
        stop = asyncio.Event()
        async with httpx.AsyncClient(timeout=30) as client:
            posters = [
                asyncio.create_task(post_until(client, gw.url, stop, outcomes)) for _ in range(4)
            ]
            try:
                await asyncio.sleep(2)
                await asyncio.to_thread(services, "stop", "kafka")
                try:
                    await asyncio.sleep(4)
                    readiness_during_outage = (await client.get(f"{gw.url}/ready")).status_code
                finally:
                    # Later tests need the broker whatever happened here.
                    await asyncio.to_thread(services, "start", "kafka")
                async with asyncio.timeout(60):
                    while (await client.get(f"{gw.url}/ready")).status_code != 200:
                        await asyncio.sleep(0.5)
                recovered_at = len(outcomes)
                await asyncio.sleep(3)
            finally:
                stop.set()
                await asyncio.gather(*posters)
    statuses = {status for status, _ in outcomes}
    assert statuses <= {200, 503}, statuses
    assert 503 in statuses, "the outage was not noticed"
    assert readiness_during_outage == 503
    assert any(status == 200 for status, _ in outcomes[recovered_at:]), "no success after recovery"

    accepted = [event_id for status, ids in outcomes if status == 200 for event_id in ids]
    records = [
        decode_record(value) for _, value in await read_since(since, settle_s=2, timeout_s=120)
    ]
    landed = [
        event.event_id
        for record in records
        if record.project == "faults"
        for event in record.events
    ]
    assert len(landed) == len(set(landed)), "an event was written twice"
    extra, lost = set(landed) - set(accepted), set(accepted) - set(landed)
    assert (len(extra), len(lost)) == (0, 0), f"{len(outcomes)} requests, extra/lost events"
