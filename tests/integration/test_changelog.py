"""The worker's state changelogs (streams/backends/kafka/changelog.py) against the real broker."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from quip.topics import _config_values
from streams.backends.kafka.changelog import Changelog
from tests.conftest import KAFKA_BOOTSTRAP

pytestmark = pytest.mark.kafka


def new_changelog(min_partitions: int = 4) -> Changelog:
    return Changelog(
        KAFKA_BOOTSTRAP,
        lambda: AIOKafkaProducer(bootstrap_servers=KAFKA_BOOTSTRAP, acks="all"),
        min_partitions=min_partitions,
    )


async def describe(topic: str) -> tuple[int, dict[str, str]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA_BOOTSTRAP)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
        configs = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        return len(described["partitions"]), _config_values(configs)
    finally:
        await admin.close()


async def test_topics_are_created_compacted_once_and_grown(unique_name: str) -> None:
    topic = f"{unique_name}-plays-state-changelog"
    # Two workers starting together both try to create it.
    await asyncio.gather(
        new_changelog().ensure_topics([topic], 2), new_changelog().ensure_topics([topic], 3)
    )
    partitions, configs = await describe(topic)
    assert partitions == 4  # the registry's count, not the highest partition assigned
    assert configs["cleanup.policy"] == "compact"

    await new_changelog().ensure_topics([topic], 6)  # the events topic was given more
    assert (await describe(topic))[0] == 6


async def test_read_gives_each_partitions_latest_values_without_deleted_keys(
    unique_name: str,
) -> None:
    topic = f"{unique_name}-funnels-state-changelog"
    changelog = new_changelog()
    await changelog.ensure_topics([topic], 4)
    assert await changelog.read([topic], [0, 3]) == {topic: {0: {}, 3: {}}}
    try:
        many = [(f"user-{n}".encode(), f"v{n}".encode()) for n in range(30_000)]
        await changelog.write([(topic, 1, many), (topic, 2, [(b"user-1", b"other partition")])])
        await changelog.write(
            [(topic, 1, [(b"user-1", b"newer"), (b"user-2", None), (b"user-3", b"")])]
        )
    finally:
        await changelog.close()

    states = await new_changelog().read([topic], [0, 1, 2])
    expected = dict(many)
    expected[b"user-1"] = b"newer"
    del expected[b"user-2"], expected[b"user-3"]
    assert states == {topic: {0: {}, 1: expected, 2: {b"user-1": b"other partition"}}}
