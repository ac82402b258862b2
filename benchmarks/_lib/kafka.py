"""Kafka set-up for the worker benchmarks: end offsets, a consumer group started at the
end, and the topics a Faust app id left behind."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient


async def end_offsets(bootstrap: str, topics: Sequence[str]) -> dict[Any, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(list(topics))
    finally:
        await admin.close()
    partitions = [
        TopicPartition(topic["topic"], p["partition"])
        for topic in described
        for p in topic["partitions"]
    ]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
    await consumer.start()
    try:
        offsets: dict[Any, int] = await consumer.end_offsets(partitions)
        return offsets
    finally:
        await consumer.stop()


async def start_group_at_end(bootstrap: str, group: str, topics: Sequence[str]) -> int:
    """Commit `group`'s offsets at the topics' current ends (as tests/worker_process.py
    does), so the worker skips everything written before this run. Returns partitions."""
    offsets = await end_offsets(bootstrap, topics)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit(offsets)
    finally:
        await consumer.stop()
    return len(offsets)


async def delete_app_topics(bootstrap: str, app_id: str) -> list[str]:
    """The topics named after this app id (state changelogs, Faust's assignor topic)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = [name for name in await admin.list_topics() if name.startswith(f"{app_id}-")]
        if names:
            await admin.delete_topics(names)
        return sorted(names)
    finally:
        await admin.close()
