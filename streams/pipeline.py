"""The worker's loops: decode → pure processors → batch → sink flush → changelog → ack.

`EventPipeline` is the one consumer of `analytics.events`. Its source
(streams/kafka_source.py, aiokafka's public consumer) hands it aiokafka's records as
fetched, in lists, and pauses its partitions while `has_room` is false.
Each record is decoded once and fed to every processor (events, activity, plays,
funnels). Batches close by records, bytes or time. A batch's messages are acked only
after *every* sink has the batch and the state changes are in Kafka; the source then
commits the offset after the batch's last record of each partition: delivery is
at-least-once and the idempotent sinks make results exact.

Stateful processors run one instance per partition (like Kafka Streams tasks): their
state changes go to the partition of the same number of their changelog topic
(streams/changelog.py) before the batch is acked. Records at or before a state's last
applied position are ignored by the processor, so a replay after a crash cannot double
count.

Rebalances are eager: every partition is revoked, then the new assignment is given.
`revoke` drops every processor; `assign` starts reading the assigned partitions' whole
changelogs into new processors, and no batch of that generation is processed (and no
tick flushes) before the read is complete. So a worker's state is always exactly its
changelogs plus the records replayed from the committed offsets. A batch still in flight
when its partitions are revoked writes neither its state changes nor its acks: its
records are replayed by whoever owns them next, and writing them late could put an old
state after the new owner's newer one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from schemas.events import DeadLetter, decode_record, encode_dead_letter
from schemas.output import ProcessorOutput
from sinks.writer import SinkWriter
from streams.changelog import Changelog, ChangelogSend
from streams.metrics import (
    CONTENT_CREATION_RATE,
    EVENTS_LOOP_SECONDS,
    EVENTS_PROCESSED,
    SOCIAL_MESSAGES_DELIVERED,
    UNDECODABLE_RECORDS,
)
from streams.processors.base import EventProcessor, Position, StatefulProcessor, apply_record
from streams.processors.services import ServiceDeadLetter, ServiceMetricsProcessor

log = logging.getLogger(__name__)

# Larger batches amortize the per-batch costs (inserts, changelog round trip); the time
# bound keeps freshness: a batch closes BATCH_WITHIN_S after its first record was fetched.
BATCH_MAX_RECORDS = 10_000
BATCH_MAX_BYTES = 4 * 1024 * 1024  # of record values: bounds the decoded events in memory
BATCH_WITHIN_S = 0.5
SERVICE_BATCH_MAX_RECORDS = 2_000
# Feeding a batch takes a few hundred ms of CPU; without a pause the previous batch's
# store could not send its changelog or ack until the feed ended, and the loop then sat
# waiting for them (benchmarks/streams.py: the worker used 68 % of a core under a
# backlog, 83 % with the pauses).
FEED_SLICE_RECORDS = 500

ROOM_POLL_S = 0.005

_WAITING_FOR_RECORDS = EVENTS_LOOP_SECONDS.labels("records")
_FEEDING = EVENTS_LOOP_SECONDS.labels("feed")
_TAKING = EVENTS_LOOP_SECONDS.labels("take")
_WAITING_FOR_STORE = EVENTS_LOOP_SECONDS.labels("store")

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


@dataclass
class Stage:
    """One processor of the events agent. With a `changelog_topic` the processor is
    stateful: one instance per source partition, its state in that topic; without, one
    instance sees every partition (its output must not depend on positions)."""

    name: str
    make_processor: Callable[[], EventProcessor]
    changelog_topic: str | None = None
    observe: Callable[[ProcessorOutput], None] | None = None
    processors: dict[int, EventProcessor] = field(default_factory=dict)
    _shared: EventProcessor | None = None

    def processor(self, partition: int) -> Any:
        if self.changelog_topic is None:
            if self._shared is None:
                self._shared = self.make_processor()
            return self._shared
        processor = self.processors.get(partition)
        if processor is None:
            processor = self.processors[partition] = self.make_processor()
        return processor

    def all_processors(self) -> list[EventProcessor]:
        if self.changelog_topic is None:
            return [self._shared] if self._shared is not None else []
        return list(self.processors.values())


class EventPipeline:
    """The `analytics.events` loop. Fetched messages arrive in lists through `enqueue`
    (the source hands them over as fetched, see streams/kafka_source.py); `run` takes
    batches of them, feeds every stage, flushes, changelogs, and only then acks the batch's
    messages, with one call of `ack` per batch and batches in fetch order, so the source
    can commit the offset after each partition's last acked record."""

    def __init__(
        self,
        stages: Sequence[Stage],
        writer: SinkWriter,
        *,
        dead_letters: Any = None,
        ack: Callable[[list[Any]], None] | None = None,
        changelog: Changelog | None = None,
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
        # A few fetches ahead at most: while it is full the source pauses its partitions
        # (back pressure) and keeps polling.
        # Eight lists of up to broker_max_poll_records hold more than a batch, so a backlog
        # never waits for the next fetch to fill one (benchmarks/streams.py: with four the
        # loop waited for records 31 % of its time, 21 % with eight, 17 % with sixteen,
        # which gained nothing more).
        self._queue: asyncio.Queue[tuple[int, float, list[Any]]] = asyncio.Queue(maxsize=8)
        self._storing: asyncio.Task[None] | None = None
        self._held: tuple[int, float, list[Any]] | None = None  # taken from the queue, not batched
        # The generation whose state is being (or has been) read, and that read.
        self._loading_generation = -1
        self._loading: asyncio.Task[None] | None = None
        self._assignment: asyncio.Future[list[int]] | None = None
        self._owned: frozenset[int] = frozenset()  # the partitions whose state is loaded

    @property
    def name(self) -> str:
        return EVENTS_AGENT

    # ------------------------------------------------------------------ loop
    def has_room(self) -> bool:
        """Whether `enqueue` would take a fetched list without waiting."""
        return not self._queue.full()

    async def wait_for_room(self, timeout_s: float) -> bool:
        """True as soon as `has_room`, False once `timeout_s` passed without it. Polls
        every ROOM_POLL_S: the queue offers no wait for room that does not also put."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._queue.full():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            await asyncio.sleep(min(ROOM_POLL_S, remaining))
        return True

    async def enqueue(self, messages: list[Any], generation: int) -> None:
        """`generation`: the one in which the messages were fetched. Waits while the
        queue is full."""
        fetched_at = asyncio.get_running_loop().time()
        await self._queue.put((generation, fetched_at, messages))

    async def run(self) -> None:
        """Batch N+1 is decoded and processed while batch N is being stored. Storing is
        chained (sinks, then changelog, then acks; one batch after the other), so offsets
        are acked in order, each only once everything up to it is stored."""
        clock = time.perf_counter
        while True:
            started = clock()
            generation, batch = await self._next_batch()
            if not await self._state_loaded(generation):
                continue  # partitions were revoked while the state was read
            owned = self._owned
            # Fetched from an earlier assignment after it was revoked: another worker's now,
            # neither fed (a processor would changelog into its partition) nor acked.
            batch = [message for message in batch if message.partition in owned]
            async with self._lock:
                if generation != self.generation():
                    continue  # partitions were revoked while the batch was collected
                collected = clock()
                _WAITING_FOR_RECORDS.inc(collected - started)
                fed = await self._feed(batch, generation)
                if fed is None:
                    continue  # partitions were revoked while the batch was fed
                count, undecodable = fed
                feeding_done = clock()
                _FEEDING.inc(feeding_done - collected)
                taken = self._take()
                taking_done = clock()
                _TAKING.inc(taking_done - feeding_done)
                await self._stored()
                _WAITING_FOR_STORE.inc(clock() - taking_done)
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
            if self._held is not None:
                (generation, fetched_at, batch), self._held = self._held, None
            else:
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
                        more_generation, more_fetched_at, more = await self._queue.get()
                except TimeoutError:
                    break
            else:
                more_generation, more_fetched_at, more = self._queue.get_nowait()
            if more_generation != generation:
                # Revoked meanwhile: this batch is dropped by run(); the newer messages are
                # the next batch's (their offsets count as read: dropping them would leave
                # them unprocessed until the next rebalance).
                self._held = (more_generation, more_fetched_at, more)
                break
            batch.extend(more)
            size += sum(len(message.value or b"") for message in more)
        return generation, batch

    async def _feed(
        self, messages: Sequence[Any], generation: int
    ) -> tuple[int, list[tuple[Any, Exception]]] | None:
        """Feeds the batch to the processors, letting the loop in every FEED_SLICE_RECORDS
        so that the previous batch's store (its changelog write and acks) and the fetches
        go on meanwhile. None if the partitions were revoked at one of those points: the
        processors fed so far have been dropped, their state is read again from the
        changelog; rows the shared stages took are written again by the next owner's
        replay, which the idempotent sinks absorb."""
        count = 0
        undecodable: list[tuple[Any, Exception]] = []
        stages = self.stages
        by_partition: dict[int, list[EventProcessor]] = {}
        for n, message in enumerate(messages, 1):
            if n % FEED_SLICE_RECORDS == 0:
                await asyncio.sleep(0)
                if generation != self.generation():
                    return None
            try:
                record = decode_record(message.value)
            except Exception as exc:
                undecodable.append((message, exc))
                continue
            partition = message.partition
            processors = by_partition.get(partition)
            if processors is None:
                processors = by_partition[partition] = [
                    stage.processor(partition) for stage in stages
                ]
            count += apply_record(record, Position(partition, message.offset), processors)
        return count, undecodable

    async def tick(self) -> None:
        """Flush without new records, so time-based closing (idle plays) happens on a
        quiet stream too."""
        async with self._lock:
            generation = self.generation()
            if not self._is_loaded(generation):
                return
            taken = self._take()
            await self._stored()
            await self._store(taken, generation, [], 0, [])

    async def revoke(self) -> None:
        """Partitions revoked (the generation has already moved on, and the rebalance is
        eager: all of them): every processor is dropped, its state to be read again from
        the changelog by whoever is assigned the partition next, this worker included.
        Returns once no state change of the old generation can still reach the
        changelog. The source bounds this wait by its revocation deadline: a changelog
        write cut off by it may still land, carrying state of records that were not
        committed and that the next owner replays onto its own read of the changelog."""
        self._expect_assignment()
        self._held = None
        while not self._queue.empty():
            self._queue.get_nowait()
        for stage in self.stages:
            stage.processors.clear()
        async with self._changelog_lock:
            pass  # a write already under way completes; later ones see the new generation

    def assign(self, partitions: Iterable[int]) -> None:
        """The new assignment, whose state is read in the background (the rebalance
        callback must return; the group waits on it)."""
        assignment = self._assignment
        if assignment is None or self._loading_generation != self.generation():
            assignment = self._expect_assignment()
        if not assignment.done():
            assignment.set_result(sorted(partitions))

    def _expect_assignment(self) -> asyncio.Future[list[int]]:
        """The current generation's state read, started at its revocation, before any of
        its records can be fetched: a batch of the generation fetched before `assign`
        waits for it instead of being dropped (its records count as read)."""
        if self._loading is not None:
            self._loading.cancel()
        self._loading_generation = self.generation()
        assignment: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._assignment = assignment
        self._loading = asyncio.create_task(self._load(assignment, self._loading_generation))
        return assignment

    async def _load(self, assignment: asyncio.Future[list[int]], generation: int) -> None:
        """Once assigned: fresh processors for every assigned partition (so a quiet
        partition's open plays still close on time), each loaded with its changelog. Kafka
        unreachable: retried with backoff, the partitions wait."""
        partitions = await assignment
        stateful = [
            (stage, stage.changelog_topic) for stage in self.stages if stage.changelog_topic
        ]
        if not stateful or not partitions:
            self._owned = frozenset(partitions)
            return
        assert self.changelog is not None
        topics = [topic for _, topic in stateful]
        backoff = 0.5
        while True:
            try:
                await self.changelog.ensure_topics(topics, max(partitions) + 1)
                states = await self.changelog.read(topics, partitions)
                break
            except Exception as exc:  # a revocation's CancelledError is not one
                log.warning("changelog read failed, retrying in %.1f s: %s", backoff, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
        if generation != self.generation():
            return
        started = time.monotonic()
        keys = 0
        for stage, topic in stateful:
            for partition in partitions:
                processor = stage.processor(partition)
                for key, value in states[topic][partition].items():
                    processor.load_state(key.decode(), value)
                keys += len(states[topic][partition])
        self._owned = frozenset(partitions)
        log.info(
            "state of partitions %s loaded: %d keys in %.2f s",
            partitions,
            keys,
            time.monotonic() - started,
        )

    async def _state_loaded(self, generation: int) -> bool:
        """Waits for the read of `generation`'s state; False if that generation is over
        (or its read was never started here). A read that failed ends the loop."""
        loading = self._loading
        if loading is None or self._loading_generation != generation:
            return False
        await asyncio.wait({loading})
        if not loading.cancelled():
            loading.result()
        return self._is_loaded(generation) and generation == self.generation()

    def _is_loaded(self, generation: int) -> bool:
        loading = self._loading
        return (
            loading is not None
            and self._loading_generation == generation
            and loading.done()
            and not loading.cancelled()
            and loading.exception() is None
        )

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
            topic = stage.changelog_topic
            if topic is None:
                continue
            for partition, processor in stage.processors.items():
                assert isinstance(processor, StatefulProcessor)
                entries = [
                    (key.encode(), value or None)  # None: a tombstone, compaction drops the key
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
        if self.ack is not None and batch and generation == self.generation():
            self.ack(batch)
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
