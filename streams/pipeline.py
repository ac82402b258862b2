"""One agent's loop: decode → pure processor → batch → sink flush → commit.

`EventPipeline.run(stream)` consumes `analytics.events` in batches closed by size or time
(`take_events(n, within)`); Faust acks a batch's offsets only when the loop body returns,
i.e. after the sink has the batch, so delivery is at-least-once and the idempotent sinks
make results exact.

Stateful processors run one instance per partition (like Kafka Streams tasks): their
state changes go to a Faust table's changelog on the *same* partition, keyed
`<partition>/<key>`, and a partition's instance is rebuilt from the table when the
partition is (re)assigned. Records at or before a state's last applied position are
ignored by the processor, so a replay after a crash cannot double count.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from schemas.events import DeadLetter, decode_record, encode_dead_letter
from sinks.writer import SinkWriter
from streams.metrics import (
    CONTENT_CREATION_RATE,
    EVENTS_PROCESSED,
    SOCIAL_MESSAGES_DELIVERED,
    UNDECODABLE_RECORDS,
)
from streams.processors.base import EventProcessor, Position, ProcessorOutput, StatefulProcessor
from streams.processors.services import ServiceDeadLetter, ServiceMetricsProcessor

log = logging.getLogger(__name__)

BATCH_MAX_RECORDS = 2_000
BATCH_WITHIN_S = 1.0


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
    return merged


class EventPipeline:
    def __init__(
        self,
        name: str,
        make_processor: Callable[[], EventProcessor],
        writer: SinkWriter,
        *,
        state_table: Any = None,
        dead_letters: Any = None,
        observe: Callable[[ProcessorOutput], None] | None = None,
    ) -> None:
        self.name = name
        self.make_processor = make_processor
        self.writer = writer
        self.state_table = state_table
        self.dead_letters = dead_letters
        self.observe = observe
        self.processors: dict[int, EventProcessor] = {}
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------ agent loop
    async def run(self, stream: Any) -> None:
        async for events in stream.take_events(BATCH_MAX_RECORDS, within=BATCH_WITHIN_S):
            count = 0
            async with self._lock:
                for event in events:
                    message = event.message
                    try:
                        record = decode_record(message.value)
                    except Exception as exc:
                        await self._undecodable(message, exc)
                        continue
                    self._processor(message.partition).process(
                        record, Position(message.partition, message.offset)
                    )
                    count += len(record.events)
                await self._flush()
            EVENTS_PROCESSED.labels(self.name).inc(count)

    async def tick(self) -> None:
        """Flush without new records, so time-based closing (idle plays) happens on a
        quiet stream too."""
        async with self._lock:
            await self._flush()

    def forget(self, partitions: Iterable[int]) -> None:
        """Partitions revoked: their state now belongs to another worker."""
        for partition in partitions:
            self.processors.pop(partition, None)

    # ------------------------------------------------------------------ internals
    def _processor(self, partition: int) -> EventProcessor:
        processor = self.processors.get(partition)
        if processor is None:
            processor = self.processors[partition] = self.make_processor()
            if self.state_table is not None:
                self._restore(partition, processor)
        return processor

    def _restore(self, partition: int, processor: EventProcessor) -> None:
        assert isinstance(processor, StatefulProcessor)
        prefix = f"{partition}/"
        for key, value in list(self.state_table.data.items()):
            if isinstance(key, str) and key.startswith(prefix) and value:
                processor.load_state(key[len(prefix) :], value)

    async def _flush(self) -> None:
        now_ms = int(time.time() * 1000)
        output = merge_outputs(p.flush(now_ms) for p in self.processors.values())
        await self.writer.write(output)
        if self.observe is not None:
            self.observe(output)
        if self.state_table is not None:
            await self._persist_state()

    async def _persist_state(self) -> None:
        """Changelog the state, and wait until Kafka has it: the batch's offsets are
        committed after this returns, and a committed offset whose state change was lost
        would drop those records' effect for good."""
        changed = False
        for partition, processor in self.processors.items():
            assert isinstance(processor, StatefulProcessor)
            for key, value in processor.take_state_changes().items():
                table_key = f"{partition}/{key}"
                stored = value or b""  # empty = deleted; keeps the raw serializer simple
                if stored:
                    self.state_table.data[table_key] = stored
                else:
                    self.state_table.data.pop(table_key, None)
                self.state_table.send_changelog(partition, table_key, stored)
                changed = True
        if changed:
            await self.state_table.app.producer.flush()

    async def _undecodable(self, message: Any, exc: Exception) -> None:
        UNDECODABLE_RECORDS.labels(self.name).inc()
        log.warning(
            "%s: undecodable record at %s/%s: %s", self.name, message.partition, message.offset, exc
        )
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
                    source=f"worker:{self.name}@{message.partition}/{message.offset}",
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
        async for events in stream.take_events(BATCH_MAX_RECORDS, within=BATCH_WITHIN_S):
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
