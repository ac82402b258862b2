"""Service topics end to end: the publisher against the real Kafka broker, and the
processor's rows plus the services query on both ClickHouse engines, checked against an
independent computation in Python."""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from schemas.publisher import PublishedRecord, ServicePublisher
from schemas.services import (
    SERVICE_TOPICS,
    ContentPublished,
    EmailNotification,
    EncodingJob,
    EncodingStatus,
    ServiceMessage,
    SocialNotification,
    decode_message,
    encode_message,
    message_key,
    topic_for,
)
from sinks.clickhouse import ClickHouse
from sinks.migrate import migrate
from sinks.queries.services import service_metrics
from streams.processors.base import Position
from streams.processors.services import ServiceMetricsProcessor
from tests.conftest import KAFKA_BOOTSTRAP
from tests.gateway_process import stop_consumer

DAY_MS = 86_400_000


# ---------------------------------------------------------------------- message factory
def make_messages(
    rng: random.Random, prefix: str, count: int, start_ms: int, end_ms: int
) -> list[ServiceMessage]:
    """`count` messages of every topic and status, spread over [start_ms, end_ms); most in
    project "default", some in "p2"."""
    messages: list[ServiceMessage] = []
    for i in range(count):
        message_id = f"{prefix}-{i}"
        ts = rng.randrange(start_ms, end_ms)
        project = "p2" if rng.random() < 0.2 else "default"
        user = f"u{rng.randrange(40)}"
        topic = rng.randrange(4)
        if topic == 0:
            messages.append(
                SocialNotification(
                    message_id=message_id,
                    user_id=user,
                    kind=rng.choice(["friend_request", "message", "mention"]),
                    status=rng.choice(["sent", "delivered", "delivered", "failed"]),
                    ts=ts,
                    sender_id=rng.choice([None, "u0"]),
                    project=project,
                )
            )
        elif topic == 1:
            messages.append(
                ContentPublished(
                    message_id=message_id,
                    content_id=f"c{rng.randrange(30)}",
                    action=rng.choice(["published", "published", "updated", "unpublished"]),
                    content_type=rng.choice(["scene", "video"]),
                    ts=ts,
                    project=project,
                )
            )
        elif topic == 2:
            status: EncodingStatus = rng.choice(["queued", "succeeded", "succeeded", "failed"])
            encode_ms = None
            if status != "queued" and rng.random() < 0.9:
                # Half-millisecond steps keep ties (quantiles must handle equal values).
                encode_ms = rng.randrange(200, 8000) / 2
            messages.append(
                EncodingJob(
                    message_id=message_id,
                    job_id=f"job-{i}",
                    content_id=f"c{rng.randrange(30)}",
                    status=status,
                    ts=ts,
                    encode_ms=encode_ms,
                    profile=rng.choice([None, "1080p", "4k"]),
                    project=project,
                )
            )
        else:
            messages.append(
                EmailNotification(
                    message_id=message_id,
                    user_id=user,
                    template=rng.choice(["welcome", "digest"]),
                    status=rng.choice(["sent", "sent", "failed"]),
                    ts=ts,
                    error=None,
                    project=project,
                )
            )
    return messages


# ---------------------------------------------------------------------- (a) Kafka
async def create_topics(prefix: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA_BOOTSTRAP)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(
                    f"{prefix}{name}", num_partitions=topic.spec.partitions, replication_factor=1
                )
                for name, topic in SERVICE_TOPICS.items()
            ]
        )
    finally:
        await admin.close()


@pytest.mark.kafka
async def test_publisher_round_trips_keys_and_values_on_every_topic(unique_name: str) -> None:
    prefix = f"{unique_name}."
    await create_topics(prefix)
    now = int(time.time() * 1000)
    messages = make_messages(random.Random(7), unique_name, 40, now - DAY_MS, now)
    assert {topic_for(m).name for m in messages} == set(SERVICE_TOPICS)

    async with ServicePublisher(
        KAFKA_BOOTSTRAP, client_id=unique_name, topic_prefix=prefix
    ) as publisher:
        published = [await publisher.publish(messages[0])]
        published += await publisher.publish_many(messages[1:])
    assert [p.topic for p in published] == [f"{prefix}{topic_for(m).name}" for m in messages]

    consumer = AIOKafkaConsumer(
        *(f"{prefix}{name}" for name in SERVICE_TOPICS),
        bootstrap_servers=KAFKA_BOOTSTRAP,
        group_id=unique_name,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    received: dict[PublishedRecord, tuple[bytes, bytes]] = {}
    try:
        async with asyncio.timeout(30):
            while len(received) < len(messages):
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for r in records:
                        received[PublishedRecord(r.topic, r.partition, r.offset)] = (r.key, r.value)
    finally:
        await stop_consumer(consumer)

    assert set(received) == set(published)
    processor = ServiceMetricsProcessor()
    for message, where in zip(messages, published, strict=True):
        key, value = received[where]
        topic = where.topic.removeprefix(prefix)
        assert (
            key
            == message_key(message)
            == getattr(message, SERVICE_TOPICS[topic].key_field).encode()
        )
        assert decode_message(topic, value) == message
        assert value == encode_message(message)
        processor.process(topic, value, Position(where.partition, where.offset))
    # One key, one partition, in publish order: a user's notifications stay ordered.
    by_key: dict[tuple[str, bytes], list[PublishedRecord]] = {}
    for message, where in zip(messages, published, strict=True):
        by_key.setdefault((where.topic, message_key(message)), []).append(where)
    assert any(len(records) > 1 for records in by_key.values())
    for records in by_key.values():
        assert len({r.partition for r in records}) == 1
        assert [r.offset for r in records] == sorted(r.offset for r in records)

    assert processor.dead_letters == []
    assert processor.processed == len(messages)
    delivered = [
        m for m in messages if isinstance(m, SocialNotification) and m.status == "delivered"
    ]
    assert processor.delivered_total == len(delivered)


# ---------------------------------------------------------------------- (b) ClickHouse


def utc_day(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).date().isoformat()


def p95(values: list[float]) -> float | None:
    """quantileExact(0.95) by its definition: sorted value at index floor(0.95 * n)."""
    if not values:
        return None
    return sorted(values)[int(len(values) * 0.95)]


def status_of(message: ServiceMessage) -> str:
    return message.action if isinstance(message, ContentPublished) else message.status


def expected_metrics(
    messages: list[ServiceMessage], project: str, day_from: date, day_to: date
) -> dict[str, Any]:
    unique: dict[tuple[str, str, str], ServiceMessage] = {}
    for m in messages:
        unique.setdefault((m.project, type(m).__name__, m.message_id), m)
    days = [(day_from + timedelta(days=i)).isoformat() for i in range((day_to - day_from).days + 1)]

    def summary(chosen: list[ServiceMessage]) -> dict[str, Any]:
        def count(kind: type[ServiceMessage], status: str) -> int:
            return sum(1 for m in chosen if isinstance(m, kind) and status_of(m) == status)

        timings = [
            m.encode_ms
            for m in chosen
            if isinstance(m, EncodingJob) and m.status == "succeeded" and m.encode_ms is not None
        ]
        return {
            "social_delivered": count(SocialNotification, "delivered"),
            "content_published": count(ContentPublished, "published"),
            "encoding_queued": count(EncodingJob, "queued"),
            "encoding_succeeded": count(EncodingJob, "succeeded"),
            "encoding_failed": count(EncodingJob, "failed"),
            "encode_ms_p95": p95(timings),
            "emails_sent": count(EmailNotification, "sent"),
            "emails_failed": count(EmailNotification, "failed"),
        }

    in_range = [m for m in unique.values() if m.project == project and utc_day(m.ts) in days]
    return {
        "days": [
            {"day": day, **summary([m for m in in_range if utc_day(m.ts) == day])} for day in days
        ],
        "totals": summary(in_range),
    }


def test_service_metrics_are_exact_with_replays_on_both_engines(
    clickhouse: ClickHouse, unique_name: str
) -> None:
    migrate(clickhouse)
    rng = random.Random(20261001)
    now = int(time.time() * 1000)
    today = datetime.fromtimestamp(now / 1000, UTC).date()
    start = int(datetime(today.year, today.month, today.day, tzinfo=UTC).timestamp() * 1000)
    messages = make_messages(rng, unique_name, 900, start - 4 * DAY_MS, now)
    # Producer retries and consumer replays: copies of 20 % of the messages, later on.
    stream = messages + [rng.choice(messages) for _ in range(len(messages) // 5)]
    rng.shuffle(stream)

    # Keep every copy in its own part until the end, so the query meets unmerged data.
    clickhouse.execute("SYSTEM STOP MERGES service_messages")
    processor = ServiceMetricsProcessor(remember_at_most=50)  # forgets: replays reach the table
    garbage = [("video.encoding", b'{"message_id": "x"}'), ("cms.publish", b"\xff")]
    inserted = 0
    for first in range(0, len(stream), 64):
        for offset, message in enumerate(stream[first : first + 64], start=first):
            processor.process(topic_for(message).name, encode_message(message), Position(0, offset))
        for topic, value in garbage if first == 0 else []:
            processor.process(topic, value, Position(1, first))
        output = processor.flush(now)
        for table in output.tables:
            inserted += clickhouse.insert(table.table, table.columns, table.rows)
            if first == 0:  # a sink retrying a block it is not sure was written
                inserted += clickhouse.insert(table.table, table.columns, table.rows)
    assert len(processor.dead_letters) == len(garbage)

    unique_count = len({(m.project, m.message_id) for m in messages})
    [(stored,)] = clickhouse.execute("SELECT count() FROM service_messages")
    assert stored == inserted > unique_count  # copies are really in the table, unmerged

    ranges = [
        ("default", today - timedelta(days=3), today),
        ("p2", today - timedelta(days=3), today),
        ("default", today - timedelta(days=1), today - timedelta(days=1)),
        ("default", today - timedelta(days=6), today - timedelta(days=4)),
        ("nobody", today, today),
    ]
    for project, day_from, day_to in ranges:
        expected = expected_metrics(messages, project, day_from, day_to)
        assert service_metrics(clickhouse, project, day_from, day_to) == expected, project
    totals = expected_metrics(messages, "default", today - timedelta(days=3), today)["totals"]
    assert totals["encode_ms_p95"] is not None
    assert totals["social_delivered"] > 0

    clickhouse.execute("SYSTEM START MERGES service_messages")
    clickhouse.execute("OPTIMIZE TABLE service_messages FINAL")
    [(merged,)] = clickhouse.execute("SELECT count() FROM service_messages")
    assert merged == unique_count
    for project, day_from, day_to in ranges:
        expected = expected_metrics(messages, project, day_from, day_to)
        assert service_metrics(clickhouse, project, day_from, day_to) == expected, project
