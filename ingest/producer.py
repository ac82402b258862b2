"""All-or-nothing publishing of request batches to Kafka, by group commit.

One HTTP request becomes several Kafka records (one per user, plus dead letters), on
several partitions. SPEC §2 wants the request either fully in Kafka or not at all, so
records are written inside a Kafka transaction; consumers read with
`isolation_level=read_committed` and never see an aborted request.

A transaction per request would cost two broker round trips each, so requests are
*group-committed*: one committer task takes every request waiting in the queue, writes
them all in one transaction and answers them together. Under load groups grow and the
per-request cost shrinks; when idle a lone request commits at once.

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
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OutgoingRecord:
    topic: str
    key: bytes
    value: bytes


class BusUnavailable(RuntimeError):
    """Kafka did not take the batch in time; nothing of it is visible to consumers."""

    def __init__(self, reason: str, retry_after_s: int) -> None:
        super().__init__(reason)
        self.retry_after_s = retry_after_s


@dataclass(slots=True)
class _Pending:
    records: Sequence[OutgoingRecord]
    deadline: float
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class GroupCommitProducer:
    def __init__(
        self,
        bootstrap: str,
        *,
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
        self.transactional_id = f"{client_id}-{uuid.uuid4().hex}"
        self._producer: AIOKafkaProducer | None = None
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._ready = asyncio.Event()
        self.last_error: str | None = "not started"

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    async def start(self) -> None:
        """Start the committer and connect; if Kafka is down, keep trying in the background
        (the gateway starts and reports not ready instead of crashing)."""
        self._tasks = [
            asyncio.create_task(self._commit_loop(), name="kafka-group-commit"),
            asyncio.create_task(self._health_loop(), name="kafka-health"),
        ]
        await self._connect()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while not self._queue.empty():
            self._queue.get_nowait().done.set_exception(BusUnavailable("gateway stopping", 1))
        await self._discard_producer()

    async def publish(self, records: Sequence[OutgoingRecord]) -> None:
        """Return once every record is committed to Kafka; raise BusUnavailable otherwise.

        Waits at most about `timeout_s` (queueing included)."""
        if not self.ready:
            raise BusUnavailable(self.last_error or "Kafka unavailable", self.retry_after_s)
        pending = _Pending(records, time.monotonic() + self.timeout_s)
        self._queue.put_nowait(pending)
        await pending.done

    # ------------------------------------------------------------------ internals
    async def _connect(self) -> bool:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            client_id=self.client_id,
            enable_idempotence=True,  # implies acks=all
            transactional_id=self.transactional_id,
            transaction_timeout_ms=int(self.timeout_s * 1000) * 6,
            request_timeout_ms=int(self.timeout_s * 1000),
            max_batch_size=1024 * 1024,
            max_request_size=4 * 1024 * 1024,
        )
        try:
            async with asyncio.timeout(self.timeout_s):
                await producer.start()
        except Exception as exc:
            self.last_error = f"Kafka at {self.bootstrap} unreachable: {exc!r}"
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), 2)
            self._ready.clear()
            return False
        self._producer = producer
        self.last_error = None
        self._ready.set()
        log.info("connected to Kafka at %s", self.bootstrap)
        return True

    async def _discard_producer(self) -> None:
        self._ready.clear()
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), 2)

    async def _health_loop(self) -> None:
        """Notice Kafka going away while idle, and come back when it returns."""
        while True:
            await asyncio.sleep(self.health_interval_s)
            if self._producer is None:
                await self._connect()
                continue
            try:
                async with asyncio.timeout(self.health_interval_s):
                    await self._producer.client.fetch_all_metadata()
            except Exception as exc:
                self.last_error = f"Kafka at {self.bootstrap} unreachable: {exc!r}"
                self._ready.clear()
            else:
                if self.last_error is None:
                    self._ready.set()

    def _take_group(self, first: _Pending) -> list[_Pending]:
        group, count = [first], len(first.records)
        while count < self.max_group_records and not self._queue.empty():
            pending = self._queue.get_nowait()
            group.append(pending)
            count += len(pending.records)
        return group

    async def _commit_loop(self) -> None:
        while True:
            group = self._take_group(await self._queue.get())
            now = time.monotonic()
            expired = [p for p in group if p.deadline <= now or self._producer is None]
            live = [p for p in group if p not in expired]
            for pending in expired:
                pending.done.set_exception(
                    BusUnavailable(self.last_error or "Kafka too slow", self.retry_after_s)
                )
            if live:
                await self._commit(live)

    async def _commit(self, group: list[_Pending]) -> None:
        """Deliver every record (acked, still invisible to read_committed consumers), then
        commit. A failure before the commit is clean: abort, nothing visible. Only a commit
        that times out is ambiguous, and it is a single small request."""
        producer = self._producer
        assert producer is not None
        budget = min(p.deadline for p in group) - time.monotonic()
        try:
            async with asyncio.timeout(max(budget, 0.05)):
                await producer.begin_transaction()
                deliveries = [
                    await producer.send(record.topic, value=record.value, key=record.key)
                    for pending in group
                    for record in pending.records
                ]
                await asyncio.gather(*deliveries)
        except Exception as exc:
            self._fail(group, f"Kafka did not take the batch: {exc!r}")
            await self._abort_or_replace(producer)
            return
        try:
            async with asyncio.timeout(self.timeout_s):
                await producer.commit_transaction()
        except Exception as exc:
            self._fail(group, f"Kafka did not confirm the commit: {exc!r}")
            await self._discard_producer()
            return
        for pending in group:
            pending.done.set_result(None)

    def _fail(self, group: list[_Pending], reason: str) -> None:
        log.warning("group of %d requests failed: %s", len(group), reason)
        self.last_error = reason
        for pending in group:
            pending.done.set_exception(BusUnavailable(reason, self.retry_after_s))

    async def _abort_or_replace(self, producer: AIOKafkaProducer) -> None:
        try:
            async with asyncio.timeout(1.0):
                await producer.abort_transaction()
        except Exception:
            # The transaction manager is in an unknown state: start over; the health loop
            # reconnects (same transactional id, fencing this one) when Kafka answers.
            await self._discard_producer()
        else:
            self.last_error = None
