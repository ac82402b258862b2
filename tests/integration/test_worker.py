"""Events posted through the gateway come out of the Faust worker as the exact SPEC §4
numbers in ClickHouse, compared with an independent computation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from api.app import create_app
from common.settings import Settings
from schemas.events import DeadLetter, decode_dead_letter
from schemas.publisher import ServicePublisher
from schemas.services import (
    ContentPublished,
    EmailNotification,
    EncodingJob,
    ServiceMessage,
    SocialNotification,
)
from schemas.topics import ANALYTICS_EVENTS, ANALYTICS_EVENTS_DLQ
from sinks.clickhouse import ServerClickHouse
from sinks.queries.services import service_metrics
from streams.processors.activity import utc_day
from tests.conftest import KAFKA_BOOTSTRAP
from tests.gateway_process import GatewayProcess, end_offsets, read_since
from tests.pipeline_checks import WRITE_KEY, assert_exact, post_all
from tests.traffic import generate_batches
from tests.worker_process import committed_offsets, records_past_commits, running_worker

# The worker's sink writes InfluxDB too, and waits for it.
pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse, pytest.mark.influxdb]

FUNNELS_FILE = Path(__file__).resolve().parents[2] / "deploy" / "funnels.example.toml"
PLAY_IDLE_TIMEOUT_S = 10


def test_gateway_to_clickhouse_exact(
    gateway: GatewayProcess,
    worker_env: dict[str, str],
    server_clickhouse: ServerClickHouse,
    project: str,
) -> None:
    batches = generate_batches(seed=11, users=60, days=20)
    with running_worker(worker_env):
        post_all(gateway, batches)
        post_all(gateway, batches[:5])  # client retries of whole batches
        assert_exact(server_clickhouse, project, batches)


def test_committed_offsets_reach_the_end_of_the_topic(
    gateway: GatewayProcess,
    worker_env: dict[str, str],
    server_clickhouse: ServerClickHouse,
    project: str,
) -> None:
    """Every gateway request is a Kafka transaction, so a commit marker follows each
    request's records: the worker's commits must step over them and reach the last record
    (a restart would otherwise replay everything since the worker started), and its
    consumer_lag gauge must report Kafka's own distance from the commits to the ends. The
    worker commits its consumer's position after the fetch of the last stored record, past
    the markers fetched with it, so that distance is usually 0; a marker (or an aborted
    request's records) fetched only later is committed past with the next record."""
    group = worker_env["QUIP_WORKER_GROUP"]
    batches = generate_batches(seed=12, users=80, days=10, batch_size=20)
    with running_worker(worker_env) as worker:
        post_all(gateway, batches)
        assert_exact(server_clickhouse, project, batches)
        assert records_past_commits(group, ANALYTICS_EVENTS.name) == 0

        def lag_and_kafkas() -> tuple[dict[str, float], dict[str, float]]:
            lag = {
                line.split('partition="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
                for line in httpx.get(f"{worker.url}/metrics", timeout=10).text.splitlines()
                if line.startswith("consumer_lag{") and f'topic="{ANALYTICS_EVENTS.name}"' in line
            }
            committed = asyncio.run(committed_offsets(group, ANALYTICS_EVENTS.name))
            ends = asyncio.run(end_offsets(ANALYTICS_EVENTS.name))
            return lag, {str(tp.partition): float(ends[tp] - at) for tp, at in committed.items()}

        # The gauge is refreshed on a 10 s timer, and other jobs write to the shared topic
        # meanwhile: wait (bounded) for a refresh that agrees with Kafka at the time.
        deadline = time.monotonic() + 90
        lag, expected = lag_and_kafkas()
        while lag != expected and time.monotonic() < deadline:
            time.sleep(1)
            lag, expected = lag_and_kafkas()
        assert lag == expected


async def test_service_messages_become_service_metrics(
    worker_env: dict[str, str], server_clickhouse: ServerClickHouse, project: str
) -> None:
    now = int(time.time() * 1000) - 60_000
    messages: list[ServiceMessage] = [
        *(
            SocialNotification(
                message_id=f"s{i}",
                user_id=f"u{i}",
                kind="message",
                status="delivered" if i % 3 else "failed",
                ts=now,
                project=project,
            )
            for i in range(9)
        ),
        *(
            ContentPublished(
                message_id=f"c{i}",
                content_id=f"c{i}",
                action="published",
                content_type="scene",
                ts=now,
                project=project,
            )
            for i in range(4)
        ),
        *(
            EncodingJob(
                message_id=f"v{i}",
                job_id=f"j{i}",
                content_id="c1",
                status="succeeded",
                encode_ms=float(100 * (i + 1)),
                ts=now,
                project=project,
            )
            for i in range(20)
        ),
        EncodingJob(
            message_id="vq", job_id="jq", content_id="c1", status="queued", ts=now, project=project
        ),
        EmailNotification(
            message_id="e1",
            user_id="u1",
            template="welcome",
            status="sent",
            ts=now,
            project=project,
        ),
    ]
    with running_worker(worker_env):
        async with ServicePublisher(KAFKA_BOOTSTRAP, client_id="test") as publisher:
            await publisher.publish_many(messages)
            await publisher.publish_many(messages[:5])  # a retried send
        today = utc_day(now)
        deadline = time.monotonic() + 60
        while True:
            totals = service_metrics(server_clickhouse, project, today, today)["totals"]
            if totals["encoding_succeeded"] == 20 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
    assert totals == {
        "social_delivered": 6,
        "content_published": 4,
        "encoding_queued": 1,
        "encoding_succeeded": 20,
        "encoding_failed": 0,
        "encode_ms_p95": 2000.0,  # quantileExact(0.95) of 100..2000: index floor(0.95*20) = 19
        "emails_sent": 1,
        "emails_failed": 0,
    }


async def test_undecodable_record_goes_to_the_dead_letter_topic(
    worker_env: dict[str, str], project: str
) -> None:
    since = await end_offsets(ANALYTICS_EVENTS_DLQ.name)
    garbage = f"not a record of {project}".encode()
    with running_worker(worker_env):
        producer = AIOKafkaProducer(bootstrap_servers=KAFKA_BOOTSTRAP)
        await producer.start()
        try:
            await producer.send_and_wait(ANALYTICS_EVENTS.name, garbage, key=b"x")
        finally:
            await producer.stop()
        deadline = time.monotonic() + 30
        found: list[DeadLetter] = []
        while not found and time.monotonic() < deadline:
            found = [
                letter
                for _, value in await read_since(since, settle_s=0.5)
                if (letter := decode_dead_letter(value)).raw == garbage.decode()
            ]
    assert len(found) == 1
    assert found[0].source.startswith("worker:events@")
    assert found[0].reason.startswith("undecodable_record")


async def test_erasure_drops_the_users_worker_state(
    gateway: GatewayProcess,
    worker_env: dict[str, str],
    server_clickhouse: ServerClickHouse,
    project: str,
) -> None:
    """`DELETE /v1/users/{id}` (the API in cluster mode, with its own Kafka producer) also
    reaches the worker: the user's funnel progress restarts from nothing and their open
    play is never written, while another user's go on."""
    env = {
        **worker_env,
        "QUIP_FUNNELS_FILE": str(FUNNELS_FILE),
        "QUIP_PLAY_IDLE_TIMEOUT_S": str(PLAY_IDLE_TIMEOUT_S),
    }
    users = {"gone": "u-erased/1", "kept": "u-kept"}  # a "/" travels URL-encoded
    now = int(time.time() * 1000)

    def post(events: list[dict[str, Any]]) -> None:
        response = httpx.post(
            f"{gateway.url}/v1/events",
            json={"events": events},
            headers={"Authorization": f"Bearer {WRITE_KEY}"},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        assert response.json()["accepted"] == len(events)

    def started(user: str, ts: int) -> list[dict[str, Any]]:
        play = {"play_id": f"play-{user}", "content_id": "c-1"}
        return [
            {"event_id": f"{user}-s", "type": "session_start", "user_id": user, "ts": ts},
            {"event_id": f"{user}-r", "type": "playback_request", "user_id": user,
             "ts": ts + 100, "props": play},
            {"event_id": f"{user}-p", "type": "playback_start", "user_id": user,
             "ts": ts + 900, "props": {**play, "startup_ms": 800, "bitrate_kbps": 5000}},
        ]  # fmt: skip

    def level(user: str) -> int:
        rows = server_clickhouse.execute(
            "SELECT max(level) FROM funnel_progress WHERE project = %(project)s"
            " AND funnel = 'first-purchase' AND user_hash = cityHash64(%(project)s, %(user)s)",
            {"project": project, "user": user},
        )
        return int(rows[0][0]) if rows else 0

    def plays_of(user: str) -> int:
        rows = server_clickhouse.execute(
            "SELECT count() FROM plays WHERE project = %(project)s AND user_id = %(user)s",
            {"project": project, "user": user},
        )
        return int(rows[0][0])

    def stored_events(user: str) -> int:
        rows = server_clickhouse.execute(
            "SELECT count() FROM events WHERE project = %(project)s AND user_id = %(user)s",
            {"project": project, "user": user},
        )
        return int(rows[0][0])

    settings = Settings(
        mode="cluster",
        read_keys=f"{project}:rk_erasure",
        admin_keys=f"{project}:ak_erasure",
        clickhouse_url=worker_env["QUIP_CLICKHOUSE_URL"],
        kafka_bootstrap=KAFKA_BOOTSTRAP,
    )
    application = create_app(settings)
    with running_worker(env):
        post(started(users["gone"], now) + started(users["kept"], now))
        await until(lambda: all(level(user) == 1 for user in users.values()), "step 1 stored")
        async with application.router.lifespan_context(application):
            transport = httpx.ASGITransport(app=application)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as api:
                response = await api.delete(
                    f"/v1/users/{quote(users['gone'], safe='')}",
                    params={"project": project},
                    headers={"Authorization": "Bearer ak_erasure"},
                )
        assert response.status_code == 202, response.text
        # Step 2 for both, after the erasure: only the kept user has a step 1 before it.
        post([
            {"event_id": f"{user}-v", "type": "page_view", "user_id": user, "ts": now + 2000,
             "props": {"url": "https://quibrowser.example/store"}}
            for user in users.values()
        ])  # fmt: skip
        await until(lambda: level(users["kept"]) == 2, "the kept user's step 2")
        await until(lambda: plays_of(users["kept"]) == 1, "the kept user's play closed idle")
        assert level(users["gone"]) == 0
        assert plays_of(users["gone"]) == 0
        assert stored_events(users["gone"]) == 1  # the page_view sent after the erasure
        assert stored_events(users["kept"]) == 4


async def until(check: Callable[[], bool], what: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(check):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.5)
