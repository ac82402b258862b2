"""The worker's loops: decode → pure processors → batch → sink flush → changelog → ack.

`EventPipeline` is the one consumer of `analytics.events`. The Faust consumer hands it
the messages as fetched, in lists (no Faust stream, channel or event per message: that
machinery cost more than everything else a small record needs, benchmarks/README.md).
Each record is decoded once and fed to every processor (events, activity, plays,
funnels). Batches close by records, bytes or time. A batch's messages are acked, so that
Faust may commit their offsets, only after *every* sink has the batch and the state
changes are in Kafka: delivery is at-least-once and the idempotent sinks make results
exact.

Stateful processors run one instance per partition (like Kafka Streams tasks): their
state changes go to a Faust table's changelog on the *same* partition, keyed
`<partition>/<key>` (raw bytes both ways). The table's in-memory store only holds what
recovery read from the changelog until the processors have loaded it: the processors own
the live state, so a copy kept there would only double the memory. Records at or before a
state's last applied position are ignored by the processor, so a replay after a crash
cannot double count.

Rebalances: on revocation (every partition: the group rebalances eagerly) the processors
are dropped and every partition's state is recovered again from the start of its
changelog (streams/app.py), so a worker's state is always exactly its changelog plus the
records replayed from the committed offsets. What a batch changed reaches the changelog
before the batch is acked, and a batch still in flight when its partitions are revoked
writes neither its state changes nor its acks: its records are replayed by whoever owns
them next. Writing them late could put an old state after the new owner's newer one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer

from schemas.events import DeadLetter, decode_record, encode_dead_letter
from sinks.writer import SinkWriter
from streams.metrics import (
    CONTENT_CREATION_RATE,
    EVENTS_PROCESSED,
    SOCIAL_MESSAGES_DELIVERED,
    UNDECODABLE_RECORDS,
)
from streams.processors.base import (
    EventProcessor,
    Position,
    ProcessorOutput,
    StatefulProcessor,
    apply_record,
)
from streams.processors.services import ServiceDeadLetter, ServiceMetricsProcessor

log = logging.getLogger(__name__)

# Larger batches amortize the per-batch costs (inserts, changelog round trip); the time
# bound keeps freshness: a batch closes BATCH_WITHIN_S after its first record was fetched.
BATCH_MAX_RECORDS = 10_000
BATCH_MAX_BYTES = 4 * 1024 * 1024  # of record values: bounds the decoded events in memory
BATCH_WITHIN_S = 0.5
SERVICE_BATCH_MAX_RECORDS = 2_000

EVENTS_AGENT = "events"


def merge_outputs(outputs: Iterable[ProcessorOutput]) -> ProcessorOutput:
    merged = ProcessorOutput()
    by_table: dict[str, Any] = {}
    for output in outputs:
        for table in output.tables:
            if table.table in by_table:
                by_table[table.table].rows.extend(table.rows)
            else:
                by_table[table.table] = table
                merged.tables.append(table)
        merged.points.extend(output.points)
        merged.erasures.extend(output.erasures)
    return merged


ChangelogSend = tuple[str, int, list[tuple[bytes, bytes]]]  # topic, partition, entries


class ChangelogWriter:
    """Writes state changes to changelog partitions as whole Kafka batches, with a producer
    of its own (acks=all): a Faust send per key (future, serializer lookup, buffer) cost
    more than processing the record that changed the key."""

    def __init__(self, make_producer: Callable[[], AIOKafkaProducer]) -> None:
        self._make_producer = make_producer  # called in the event loop (aiokafka wants one)
        self._producer: AIOKafkaProducer | None = None

    async def write(self, sends: Sequence[ChangelogSend]) -> None:
        """Return once Kafka has every entry; raises if it does not take them."""
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

    async def close(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()


@dataclass
class Stage:
    """One processor of the events agent. With a `state_table` the processor is stateful:
    one instance per source partition, its state changelogged in that table; without, one
    instance sees every partition (its output must not depend on positions)."""

    name: str
    make_processor: Callable[[], EventProcessor]
    state_table: Any = None
    observe: Callable[[ProcessorOutput], None] | None = None
    processors: dict[int, EventProcessor] = field(default_factory=dict)
    _shared: EventProcessor | None = None

    def processor(self, partition: int) -> Any:
        if self.state_table is None:
            if self._shared is None:
                self._shared = self.make_processor()
            return self._shared
        processor = self.processors.get(partition)
        if processor is None:
            processor = self.processors[partition] = self.make_processor()
        return processor

    def all_processors(self) -> list[EventProcessor]:
        if self.state_table is None:
            return [self._shared] if self._shared is not None else []
        return list(self.processors.values())


class EventPipeline:
    """The `analytics.events` loop. Fetched messages arrive in lists through `enqueue`
    (the consumer hands them over as fetched, see streams/app.py); `run` takes batches of
    them, feeds every stage, flushes, changelogs, and only then acks the batch's messages
    so their offsets can be committed."""

    def __init__(
        self,
        stages: Sequence[Stage],
        writer: SinkWriter,
        *,
        dead_letters: Any = None,
        ack: Callable[[Any], None] | None = None,
        changelog: ChangelogWriter | None = None,
        generation: Callable[[], int] = lambda: 0,
    ) -> None:
        self.stages = list(stages)
        self.writer = writer
        self.dead_letters = dead_letters
        self.ack = ack
        self.changelog = changelog
        # Changes as soon as a rebalance starts: messages fetched in an older generation
        # are neither processed nor acked (they are fetched again from the committed
        # offsets), and their batches' state changes are not written.
        self.generation = generation
        self._lock = asyncio.Lock()
        self._changelog_lock = asyncio.Lock()
        # A few fetches ahead at most: a full queue blocks the fetch loop (back pressure).
        self._queue: asyncio.Queue[tuple[int, float, list[Any]]] = asyncio.Queue(maxsize=4)
        self._storing: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return EVENTS_AGENT

    # ------------------------------------------------------------------ loop
    async def enqueue(self, messages: list[Any], generation: int) -> None:
        """`generation`: the one in which the messages were fetched."""
        fetched_at = asyncio.get_running_loop().time()
        await self._queue.put((generation, fetched_at, messages))

    async def run(self) -> None:
        """Batch N+1 is decoded and processed while batch N is being stored. Storing is
        chained (sinks, then changelog, then acks; one batch after the other), so offsets
        are acked in order, each only once everything up to it is stored."""
        while True:
            generation, batch = await self._next_batch()
            async with self._lock:
                if generation != self.generation():
                    continue  # partitions were revoked while the batch was collected
                count, undecodable = self._feed(batch)
                taken = self._take()
                await self._stored()
                self._storing = asyncio.create_task(
                    self._store(taken, generation, batch, count, undecodable)
                )

    async def _stored(self) -> None:
        """Wait for the batch being stored; raises what storing raised."""
        if self._storing is not None:
            await self._storing

    async def _next_batch(self) -> tuple[int, list[Any]]:
        """Up to BATCH_MAX_RECORDS messages or BATCH_MAX_BYTES of values, whatever has
        fetched within BATCH_WITHIN_S of the first (messages that waited while the previous
        batch was stored count their wait); all of one generation."""
        while True:
            if self._storing is not None and self._storing.done():
                self._storing.result()  # a failed store ends the loop (and the worker)
            try:
                async with asyncio.timeout(1.0):
                    generation, fetched_at, batch = await self._queue.get()
            except TimeoutError:
                continue
            if generation == self.generation():
                break
        batch = list(batch)
        size = sum(len(message.value or b"") for message in batch)
        deadline = fetched_at + BATCH_WITHIN_S
        while len(batch) < BATCH_MAX_RECORDS and size < BATCH_MAX_BYTES:
            if self._queue.empty():
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(remaining):
                        more_generation, _, more = await self._queue.get()
                except TimeoutError:
                    break
            else:
                more_generation, _, more = self._queue.get_nowait()
            if more_generation != generation:
                break  # revoked meanwhile: the batch is dropped by run()
            batch.extend(more)
            size += sum(len(message.value or b"") for message in more)
        return generation, batch

    def _feed(self, messages: Sequence[Any]) -> tuple[int, list[tuple[Any, Exception]]]:
        count = 0
        undecodable: list[tuple[Any, Exception]] = []
        stages = self.stages
        for message in messages:
            try:
                record = decode_record(message.value)
            except Exception as exc:
                undecodable.append((message, exc))
                continue
            partition = message.partition
            processors = [stage.processor(partition) for stage in stages]
            count += apply_record(record, Position(partition, message.offset), processors)
        return count, undecodable

    async def tick(self) -> None:
        """Flush without new records, so time-based closing (idle plays) happens on a
        quiet stream too."""
        async with self._lock:
            taken = self._take()
            await self._stored()
            await self._store(taken, self.generation(), [], 0, [])

    async def revoke(self, partitions: Iterable[int]) -> None:
        """Partitions revoked (the generation has already moved on): their state is
        dropped, to be recovered from the changelog by whoever is assigned them next, this
        worker included. Returns once no state change of the old generation can still
        reach the changelog."""
        while not self._queue.empty():
            self._queue.get_nowait()
        partitions = list(partitions)
        for stage in self.stages:
            for partition in partitions:
                stage.processors.pop(partition, None)
            if stage.state_table is not None:
                stage.state_table.data.clear()  # a recovery cut short may have left some
        async with self._changelog_lock:
            pass  # a write already under way completes; later ones see the new generation

    def load_recovered(self, assigned: set[int]) -> None:
        """Recovery is complete: load what it put in the tables' memory stores into the
        processors of the assigned partitions (created now, so a quiet partition's open
        plays still close on time), then empty the stores."""
        for stage in self.stages:
            data = stage.state_table.data if stage.state_table is not None else None
            if not data:
                continue
            for raw_key, value in data.items():
                key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
                partition_text, _, state_key = key.partition("/")
                if value and partition_text.isdigit() and int(partition_text) in assigned:
                    stage.processor(int(partition_text)).load_state(state_key, value)
            data.clear()

    # ------------------------------------------------------------------ internals

    def _take(self) -> tuple[list[ProcessorOutput], list[ChangelogSend]]:
        """Flush every processor and take its state changes, before the next batch
        changes the state again."""
        now_ms = int(time.time() * 1000)
        outputs = [
            merge_outputs(p.flush(now_ms) for p in stage.all_processors()) for stage in self.stages
        ]
        sends: list[ChangelogSend] = []
        for stage in self.stages:
            if stage.state_table is None:
                continue
            topic = stage.state_table.changelog_topic.get_topic_name()
            for partition, processor in stage.processors.items():
                assert isinstance(processor, StatefulProcessor)
                entries = [
                    # empty = deleted: the memory store drops keys whose value is empty
                    (f"{partition}/{key}".encode(), value or b"")
                    for key, value in processor.take_state_changes().items()
                ]
                if entries:
                    sends.append((topic, partition, entries))
        return outputs, sends

    async def _store(
        self,
        taken: tuple[list[ProcessorOutput], list[ChangelogSend]],
        generation: int,
        batch: list[Any],
        count: int,
        undecodable: list[tuple[Any, Exception]],
    ) -> None:
        """Sinks first, then the changelog (and wait until Kafka has it: a committed offset
        whose state change was lost would drop those records' effect for good), then ack
        the batch so its offsets can be committed. A batch whose partitions were revoked
        meanwhile stops after the sinks (idempotent): see the module docstring."""
        outputs, sends = taken
        await self.writer.write(merge_outputs(outputs))
        for stage, output in zip(self.stages, outputs, strict=True):
            if stage.observe is not None:
                stage.observe(output)
        async with self._changelog_lock:
            if generation != self.generation():
                return
            if sends and self.changelog is not None:
                await self.changelog.write(sends)
        for message, exc in undecodable:
            await self._undecodable(message, exc)
        if self.ack is not None and generation == self.generation():
            for message in batch:
                self.ack(message)
        if count:
            for stage in self.stages:
                EVENTS_PROCESSED.labels(stage.name).inc(count)

    async def _undecodable(self, message: Any, exc: Exception) -> None:
        UNDECODABLE_RECORDS.labels(EVENTS_AGENT).inc()
        log.warning("undecodable record at %s/%s: %s", message.partition, message.offset, exc)
        if self.dead_letters is None:
            return
        raw = message.value if isinstance(message.value, bytes) else b""
        await self.dead_letters.send(
            key=b"unknown",
            value=encode_dead_letter(
                DeadLetter(
                    project="unknown",
                    received_at=int(time.time() * 1000),
                    index=-1,
                    reason=f"undecodable_record: {exc}"[:500],
                    raw=raw.decode("utf-8", "replace"),
                    source=f"worker:{EVENTS_AGENT}@{message.partition}/{message.offset}",
                )
            ),
        )


class ServicePipeline:
    """The services agent: the four service topics → `ServiceMetricsProcessor` → sinks.
    Undecodable messages go to the dead-letter topic with their reason."""

    def __init__(
        self, processor: ServiceMetricsProcessor, writer: SinkWriter, dead_letters: Any
    ) -> None:
        self.processor = processor
        self.writer = writer
        self.dead_letters = dead_letters
        self._reported_delivered = 0

    async def run(self, stream: Any) -> None:
        async for events in stream.take_events(SERVICE_BATCH_MAX_RECORDS, within=1.0):
            for event in events:
                message = event.message
                self.processor.process(
                    message.topic, message.value, Position(message.partition, message.offset)
                )
            await self.writer.write(self.processor.flush(int(time.time() * 1000)))
            for dead in self.processor.take_dead_letters():
                await self._send_dead_letter(dead)
            delivered = self.processor.delivered_total
            SOCIAL_MESSAGES_DELIVERED.inc(max(delivered - self._reported_delivered, 0))
            self._reported_delivered = delivered
            CONTENT_CREATION_RATE.set(self.processor.published_per_minute(int(time.time() * 1000)))
            EVENTS_PROCESSED.labels("services").inc(len(events))

    async def _send_dead_letter(self, dead: ServiceDeadLetter) -> None:
        await self.dead_letters.send(
            key=dead.topic.encode(),
            value=encode_dead_letter(
                DeadLetter(
                    project="unknown",
                    received_at=int(time.time() * 1000),
                    index=-1,
                    reason=dead.reason[:500],
                    raw=dead.raw.decode("utf-8", "replace"),
                    source=f"worker:services:{dead.topic}@{dead.position.partition}/{dead.position.offset}",
                )
            ),
        )
