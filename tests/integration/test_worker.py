"""Events posted through the gateway come out of the Faust worker as the exact SPEC §4
numbers in ClickHouse, compared with an independent computation."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

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
from tests.pipeline_checks import assert_exact, post_all
from tests.traffic import generate_batches
from tests.worker_process import running_worker

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]


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
    consumer_lag gauge must say so."""
    batches = generate_batches(seed=12, users=80, days=10, batch_size=20)
    with running_worker(worker_env) as worker:
        post_all(gateway, batches)
        assert_exact(server_clickhouse, project, batches)
        ends = asyncio.run(end_offsets(ANALYTICS_EVENTS.name))
        group = worker_env["QUIP_WORKER_GROUP"]
        deadline = time.monotonic() + 30
        while True:
            committed = asyncio.run(committed_offsets(group))
            # the last record's offset + 1: only its transaction's marker is after it
            behind = {tp: ends[tp] - 1 - committed.get(tp, -1) for tp in ends}
            if all(gap <= 0 for gap in behind.values()) or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert all(gap <= 0 for gap in behind.values()), behind
        time.sleep(11)  # the lag gauge's timer period
        lag = {
            line.split('partition="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
            for line in httpx.get(f"{worker.url}/metrics", timeout=10).text.splitlines()
            if line.startswith("consumer_lag{") and f'topic="{ANALYTICS_EVENTS.name}"' in line
        }
        assert lag
        assert max(lag.values()) <= 1, lag


async def committed_offsets(group: str) -> dict[TopicPartition, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA_BOOTSTRAP)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp: meta.offset for tp, meta in offsets.items() if tp.topic == ANALYTICS_EVENTS.name}


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
