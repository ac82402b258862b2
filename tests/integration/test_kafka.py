"""The Kafka, aiokafka and faust-streaming versions pinned here work together against the
real broker of deploy/local/services.sh."""

from __future__ import annotations

import asyncio
from pathlib import Path

import faust
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from quip.topics import apply_topics
from schemas.topics import TopicSpec
from tests.conftest import KAFKA_BOOTSTRAP

pytestmark = pytest.mark.kafka


async def create_topic(name: str, partitions: int = 3) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA_BOOTSTRAP)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    finally:
        await admin.close()


async def test_produce_consume_round_trip_keeps_key_order(unique_name: str) -> None:
    await create_topic(unique_name)
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA_BOOTSTRAP, enable_idempotence=True)
    await producer.start()
    try:
        sent = [(f"user-{i % 4}".encode(), f"{i}".encode()) for i in range(40)]
        for key, value in sent:
            await producer.send(unique_name, value=value, key=key)
        await producer.flush()
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        unique_name,
        bootstrap_servers=KAFKA_BOOTSTRAP,
        group_id=unique_name,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    received: list[tuple[bytes, bytes]] = []
    try:
        async with asyncio.timeout(20):
            while len(received) < len(sent):
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    received.extend((r.key, r.value) for r in records)
    finally:
        await consumer.stop()

    assert sorted(received) == sorted(sent)
    for key in {key for key, _ in sent}:
        # One key, one partition: its values arrive in the order they were sent.
        assert [v for k, v in received if k == key] == [v for k, v in sent if k == key]


async def test_faust_agent_consumes_and_stops_cleanly(unique_name: str, tmp_path: Path) -> None:
    app = faust.App(
        unique_name,
        broker=f"kafka://{KAFKA_BOOTSTRAP}",
        store="memory://",
        datadir=tmp_path,  # Faust's default is `<app id>-data` in the current directory
        web_enabled=False,
        topic_partitions=1,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
    )
    topic = app.topic(unique_name, value_type=bytes, value_serializer="raw")
    seen: list[bytes] = []
    all_seen = asyncio.Event()
    expected = [f"v{i}".encode() for i in range(25)]

    @app.agent(topic)
    async def collect(stream: faust.Stream) -> None:
        async for values in stream.take(10, within=0.5):
            seen.extend(values)
            if len(seen) >= len(expected):
                all_seen.set()

    await create_topic(unique_name, partitions=1)
    await app.start()
    try:
        for value in expected:
            await topic.send(value=value)
        await asyncio.wait_for(all_seen.wait(), timeout=60)
    finally:
        await asyncio.wait_for(app.stop(), timeout=30)

    assert seen == expected
    assert not app.crashed
    # mode marks a service "stopping" once stop() has returned, "shutdown" after its loop ends.
    assert app.state in {"stopping", "shutdown"}


async def test_topics_create_is_idempotent_and_reconciles(unique_name: str) -> None:
    registry = (
        TopicSpec(f"{unique_name}.a", "user_id", 2, 3_600_000, "test"),
        TopicSpec(f"{unique_name}.b", "job_id", 1, 7_200_000, "test"),
    )
    first = await apply_topics(KAFKA_BOOTSTRAP, registry)
    assert sorted(first.created) == sorted(spec.name for spec in registry)

    again = await apply_topics(KAFKA_BOOTSTRAP, registry)
    assert again.created == []
    assert again.updated == []
    assert sorted(again.unchanged) == sorted(spec.name for spec in registry)

    grown = (
        TopicSpec(f"{unique_name}.a", "user_id", 4, 3_600_000, "test"),
        TopicSpec(f"{unique_name}.b", "job_id", 1, 60_000, "test"),
    )
    reconciled = await apply_topics(KAFKA_BOOTSTRAP, grown)
    assert sorted(reconciled.updated) == sorted(spec.name for spec in grown)
    assert (await apply_topics(KAFKA_BOOTSTRAP, grown)).updated == []
