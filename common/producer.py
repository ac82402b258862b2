"""All-or-nothing publishing of request batches to Kafka, by group commit.

One HTTP request becomes several Kafka records (one per user, plus dead letters), on
several partitions. SPEC §2 wants the request either fully in Kafka or not at all, so
records are written inside a Kafka transaction; consumers read with
`isolation_level=read_committed` and never see an aborted request.

A transaction per request would cost two broker round trips each, so requests are
*group-committed*: a committer takes every request waiting in the queue, writes them all
in one transaction and answers them together. Under load groups grow and the per-request
cost shrinks; when idle a lone request commits at once. A producer runs one transaction
at a time, so several *lanes* (producer + committer, each with its own transactional id)
commit concurrently: measured, one lane spent most of its time waiting on the broker.

Failure modes:
- Kafka unreachable: `publish` raises `BusUnavailable` at once while the producer is
  known to be down; otherwise the group's transaction is bounded by `timeout_s`, then
  aborted and every request in it gets `BusUnavailable` (the gateway answers 503).
- A commit that times out *after* the broker committed is the one ambiguous case: the
  client is told 503, retries, and the duplicate is removed by the (project, event_id)
  deduplication downstream.
- After a failure the producer is replaced under the *same* transactional id: its
  initialisation fences the old one and makes the broker abort any transaction left open,
  so read_committed consumers are not held back until the transaction times out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer

from common.bus import BusUnavailable, OutgoingRecord

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Pending:
    records: Sequence[OutgoingRecord]
    deadline: float
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


def fast_partitioner(key: bytes, all_partitions: list[int], available: list[int]) -> int:
    """CRC32 of the key: C speed where aiokafka's default murmur2 is pure Python (9 % of
    gateway CPU, measured). Only gateways produce to `analytics.events`, and they all use
    this function, so one key always lands on one partition."""
    return all_partitions[zlib.crc32(key) % len(all_partitions)]


class _Lane:
    def __init__(self, transactional_id: str) -> None:
        self.transactional_id = transactional_id
        self.producer: AIOKafkaProducer | None = None
        self.ready = asyncio.Event()


class GroupCommitProducer:
    def __init__(
        self,
        bootstrap: str,
        *,
        lanes: int = 4,
        timeout_s: float = 5.0,
        retry_after_s: int = 5,
        max_group_records: int = 20_000,
        health_interval_s: float = 2.0,
        client_id: str = "quip-gateway",
    ) -> None:
        self.bootstrap = bootstrap
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self.max_group_records = max_group_records
        self.health_interval_s = health_interval_s
        self.client_id = client_id
        instance = uuid.uuid4().hex
        self._lanes = [_Lane(f"{client_id}-{instance}-{n}") for n in range(lanes)]
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._partitions: dict[str, list[int]] = {}
        self.last_error: str | None = "not started"

    @property
    def ready(self) -> bool:
        return self.last_error is None and any(lane.ready.is_set() for lane in self._lanes)

    async def start(self) -> None:
        """Start the committers and connect; if Kafka is down, keep trying in the
        background (the gateway starts and reports not ready instead of crashing)."""
        self._tasks = [
            asyncio.create_task(self._commit_loop(lane), name=f"kafka-commit-{n}")
            for n, lane in enumerate(self._lanes)
        ]
        self._tasks.append(asyncio.create_task(self._health_loop(), name="kafka-health"))
        await asyncio.gather(*(self._connect(lane) for lane in self._lanes))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while not self._queue.empty():
            self._queue.get_nowait().done.set_exception(BusUnavailable("gateway stopping", 1))
        await asyncio.gather(*(self._discard(lane) for lane in self._lanes))

    async def publish(self, records: Sequence[OutgoingRecord]) -> None:
        """Return once every record is committed to Kafka; raise BusUnavailable otherwise.

        Waits at most about `timeout_s` (queueing included)."""
        if not self.ready:
            raise BusUnavailable(self.last_error or "Kafka unavailable", self.retry_after_s)
        pending = _Pending(records, time.monotonic() + self.timeout_s)
        self._queue.put_nowait(pending)
        await pending.done

    # ------------------------------------------------------------------ internals
    async def _connect(self, lane: _Lane) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            client_id=self.client_id,
            enable_idempotence=True,  # implies acks=all
            transactional_id=lane.transactional_id,
            transaction_timeout_ms=int(self.timeout_s * 1000) * 6,
            request_timeout_ms=int(self.timeout_s * 1000),
            max_batch_size=1024 * 1024,
            max_request_size=4 * 1024 * 1024,
            partitioner=fast_partitioner,
        )
        try:
            async with asyncio.timeout(self.timeout_s):
                await producer.start()
        except Exception as exc:
            self.last_error = f"Kafka at {self.bootstrap} unreachable: {exc!r}"
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), 2)
            return
        lane.producer = producer
        lane.ready.set()
        self.last_error = None
        log.info("connected to Kafka at %s (%s)", self.bootstrap, lane.transactional_id)

    async def _discard(self, lane: _Lane) -> None:
        lane.ready.clear()
        producer, lane.producer = lane.producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), 2)

    async def _health_loop(self) -> None:
        """Notice Kafka going away while idle, and come back when it returns."""
        while True:
            await asyncio.sleep(self.health_interval_s)
            for lane in self._lanes:
                if lane.producer is None:
                    await self._connect(lane)
            probe = next((lane.producer for lane in self._lanes if lane.producer), None)
            if probe is None:
                continue
            try:
                async with asyncio.timeout(self.health_interval_s):
                    await probe.client.fetch_all_metadata()
            except Exception as exc:
                self.last_error = f"Kafka at {self.bootstrap} unreachable: {exc!r}"
            else:
                self.last_error = None

    def _take_group(self, first: _Pending) -> list[_Pending]:
        group, count = [first], len(first.records)
        while count < self.max_group_records and not self._queue.empty():
            pending = self._queue.get_nowait()
            group.append(pending)
            count += len(pending.records)
        return group

    async def _commit_loop(self, lane: _Lane) -> None:
        while True:
            await lane.ready.wait()
            group = self._take_group(await self._queue.get())
            now = time.monotonic()
            expired = [p for p in group if p.deadline <= now or lane.producer is None]
            for pending in expired:
                pending.done.set_exception(
                    BusUnavailable(self.last_error or "Kafka too slow", self.retry_after_s)
                )
            live = [p for p in group if not p.done.done()]
            if live:
                await self._commit(lane, live)

    async def _commit(self, lane: _Lane, group: list[_Pending]) -> None:
        """Deliver every record (acked, still invisible to read_committed consumers), then
        commit. A failure before the commit is clean: abort, nothing visible. Only a commit
        that times out is ambiguous, and it is a single small request."""
        producer = lane.producer
        assert producer is not None
        budget = min(p.deadline for p in group) - time.monotonic()
        try:
            async with asyncio.timeout(max(budget, 0.05)):
                await producer.begin_transaction()
                deliveries = await self._send_batches(producer, group)
                await asyncio.gather(*deliveries)
        except Exception as exc:
            self._fail(group, f"Kafka did not take the batch: {exc!r}")
            await self._abort_or_replace(lane, producer)
            return
        try:
            async with asyncio.timeout(self.timeout_s):
                await producer.commit_transaction()
        except Exception as exc:
            self._fail(group, f"Kafka did not confirm the commit: {exc!r}")
            await self._discard(lane)
            return
        for pending in group:
            pending.done.set_result(None)

    async def _send_batches(
        self, producer: AIOKafkaProducer, group: list[_Pending]
    ) -> list[asyncio.Future[Any]]:
        """Partition the group's records ourselves and hand aiokafka one batch per
        partition: per-record `send()` cost most of the gateway's CPU when a request
        carries many users (one record each), measured."""
        by_partition: dict[tuple[str, int], list[OutgoingRecord]] = {}
        for pending in group:
            for record in pending.records:
                partitions = self._partitions.get(record.topic)
                if partitions is None:
                    partitions = sorted(await producer.partitions_for(record.topic))
                    self._partitions[record.topic] = partitions
                partition = fast_partitioner(record.key, partitions, partitions)
                by_partition.setdefault((record.topic, partition), []).append(record)
        deliveries = []
        for (topic, partition), records in by_partition.items():
            batch = producer.create_batch()
            for record in records:
                if batch.append(key=record.key, value=record.value, timestamp=None) is None:
                    deliveries.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                    batch.append(key=record.key, value=record.value, timestamp=None)
            deliveries.append(await producer.send_batch(batch, topic, partition=partition))
        return deliveries

    def _fail(self, group: list[_Pending], reason: str) -> None:
        log.warning("group of %d requests failed: %s", len(group), reason)
        self.last_error = reason
        for pending in group:
            pending.done.set_exception(BusUnavailable(reason, self.retry_after_s))

    async def _abort_or_replace(self, lane: _Lane, producer: AIOKafkaProducer) -> None:
        try:
            async with asyncio.timeout(1.0):
                await producer.abort_transaction()
        except Exception:
            # The transaction manager is in an unknown state: start over; the health loop
            # reconnects (same transactional id, fencing this one) when Kafka answers.
            await self._discard(lane)
        else:
            self.last_error = None  # the broker answered: this lane can take the next group
