"""The Kafka `StateBackend` (streams/runner/protocols.py): the stateful stages' changelogs,
compacted Kafka topics `<worker group>-<stage>-state-changelog`, one partition per
source partition of `analytics.events`, keyed by the processor's state key, written and
read by the worker itself. Source positions are not kept here: the consumer group's
committed offsets are.

The pipeline reads a partition's whole changelog when it is assigned the partition, into
processors that see no record before that read is complete (streams/runner/pipeline.py). Faust
tables did this before, and their recovery left too many interleavings to reason about: a
recovery cut short by the next rebalance still announced itself complete, changelog
records fetched in one generation were applied in the next, and its processors outlived
their partitions (the scale-out test lost funnel progress and play starts). Here the read
is one coroutine per assignment, cancelled by the next revocation.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from streams.runner.protocols import LoadedState, Positions, StateChanges

log = logging.getLogger(__name__)

ChangelogSend = tuple[str, int, list[tuple[bytes, bytes | None]]]  # topic, partition, entries
PartitionState = dict[bytes, bytes]  # key → latest value; deleted keys absent

_TOPIC_CONFIGS = {"cleanup.policy": "compact"}
_TOPIC_ALREADY_EXISTS = TopicAlreadyExistsError.errno


def changelog_topic(app_id: str, state_name: str) -> str:
    """Named as Faust named its table changelogs, so runbooks and clean-up scripts that
    look for `<app id>-*-changelog` still find them."""
    return f"{app_id}-{state_name}-changelog"


class Changelog:
    """Writes state changes as whole Kafka batches with a producer of its own (acks=all;
    a Faust send per key cost more than processing the record that changed the key) and
    reads partitions back whole."""

    def __init__(
        self,
        bootstrap: str,
        make_producer: Callable[[], AIOKafkaProducer],
        *,
        min_partitions: int,
        request_timeout_ms: int = 15_000,
    ) -> None:
        self._bootstrap = bootstrap
        self._min_partitions = min_partitions
        self._make_producer = make_producer  # called in the event loop (aiokafka wants one)
        self._producer: AIOKafkaProducer | None = None
        self._request_timeout_ms = request_timeout_ms
        self._partitions_ensured: dict[str, int] = {}

    async def ensure_topics(self, topics: Iterable[str], partitions: int) -> None:
        """Create the compacted topics that are missing and grow those with fewer
        partitions (the events topic may have been given more); idempotent, and safe when
        several workers race to create them."""
        partitions = max(partitions, self._min_partitions)
        needed = [t for t in topics if self._partitions_ensured.get(t, 0) < partitions]
        if not needed:
            return
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self._bootstrap, request_timeout_ms=self._request_timeout_ms
        )
        await admin.start()
        try:
            # Describing a missing topic would have the broker auto-create it (uncompacted).
            listed = set(await admin.list_topics())
            described = [t for t in needed if t in listed]
            existing = {
                item["topic"]: len(item["partitions"])
                for item in (await admin.describe_topics(described) if described else [])
            }
            missing = [t for t in needed if t not in existing]
            if missing:
                response = await admin.create_topics(
                    [
                        NewTopic(t, partitions, replication_factor=1, topic_configs=_TOPIC_CONFIGS)
                        for t in missing
                    ]
                )
                raced = []
                for topic, code, *_ in response.topic_errors:
                    if code == _TOPIC_ALREADY_EXISTS:
                        raced.append(topic)
                    elif code != 0:
                        raise RuntimeError(f"changelog topic {topic}: Kafka error code {code}")
                # Listed as missing but there: another worker made it meanwhile, or the
                # listing broker's metadata lagged. It may still be smaller than needed.
                if raced:
                    existing.update(
                        (item["topic"], len(item["partitions"]))
                        for item in await admin.describe_topics(raced)
                    )
            smaller = {t: n for t, n in existing.items() if n < partitions}
            if smaller:
                await admin.create_partitions(
                    {t: NewPartitions(total_count=partitions) for t in smaller}
                )
        finally:
            await admin.close()
        for topic in needed:
            self._partitions_ensured[topic] = partitions

    async def write(self, sends: Sequence[ChangelogSend]) -> None:
        """Return once Kafka has every entry (a None value deletes the key); raises if it
        does not take them."""
        if self._producer is None:
            producer = self._make_producer()
            await producer.start()
            self._producer = producer
        futures = []
        producer = self._producer
        for topic, partition, entries in sends:
            batch = producer.create_batch()
            for key, value in entries:
                if batch.append(key=key, value=value, timestamp=None) is None:  # full
                    futures.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None)
            futures.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*futures)

    async def read(
        self, topics: Sequence[str], partitions: Iterable[int]
    ) -> dict[str, dict[int, PartitionState]]:
        """Per topic, each partition's latest value per key, from its first offset to the
        end offset at the time of the call; one consumer fetches them all."""
        partitions = list(partitions)
        tps = [TopicPartition(topic, partition) for topic in topics for partition in partitions]
        states: dict[str, dict[int, PartitionState]] = {
            topic: {partition: {} for partition in partitions} for topic in topics
        }
        if not tps:
            return states
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            request_timeout_ms=self._request_timeout_ms,
            max_partition_fetch_bytes=8 * 1024 * 1024,
            fetch_max_bytes=32 * 1024 * 1024,
        )
        await consumer.start()
        try:
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            await consumer.seek_to_beginning(*tps)
            pending = {tp for tp in tps if await consumer.position(tp) < ends[tp]}
            while pending:
                fetched = await consumer.getmany(*pending, timeout_ms=1_000)
                for tp, records in fetched.items():
                    state = states[tp.topic][tp.partition]
                    for record in records:
                        if record.key is None:
                            continue
                        if record.value:
                            state[record.key] = record.value
                        else:
                            state.pop(record.key, None)
                pending = {tp for tp in pending if await consumer.position(tp) < ends[tp]}
        finally:
            await consumer.stop()
        return states

    async def close(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()


class ChangelogState:
    """The state of stage `<name>` in changelog topic `changelog_topic(app_id,
    "<name>-state")`; the topics are created (or grown) on the first load."""

    def __init__(self, changelog: Changelog, app_id: str) -> None:
        self.changelog = changelog
        self.app_id = app_id

    def topic(self, stage: str) -> str:
        return changelog_topic(self.app_id, f"{stage}-state")

    async def load(self, stages: Sequence[str], partitions: Sequence[int]) -> LoadedState:
        topics = [self.topic(stage) for stage in stages]
        await self.changelog.ensure_topics(topics, max(partitions) + 1)
        states = await self.changelog.read(topics, partitions)
        return {
            stage: {
                partition: {key.decode(): value for key, value in entries.items()}
                for partition, entries in states[topic].items()
            }
            for stage, topic in zip(stages, topics, strict=True)
        }

    async def persist(self, changes: Sequence[StateChanges], positions: Positions) -> None:
        if not changes:
            return
        await self.changelog.write(
            [
                (
                    self.topic(stage),
                    partition,
                    # None: a tombstone, compaction drops the key
                    [(key.encode(), value or None) for key, value in entries.items()],
                )
                for stage, partition, entries in changes
            ]
        )
