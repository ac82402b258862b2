"""A pipeline `Source` on Kafka (streams/runner/protocols.py): aiokafka's public consumer
API only, hosted in the Faust worker app as a task (streams/app.py).

Each pipeline of the worker has one: the events pipeline's consumer is in the worker
group; the services pipeline's in `services_group(worker group)`.

Contract:
- Reads with `isolation_level="read_committed"`: the gateway writes each request inside a
  Kafka transaction, and a request it answered 503 must never be counted.
- `fetch` is one `getmany`: records of the active assignment only, and for every
  partition in it the consumer's position right after (the last record's offset + 1,
  or past the transaction markers that followed it in that fetch), which is what a
  commit of those records stores. The rebalance listener calls the core's
  `revoke`/`assign` from within `getmany`.
- `pause` pauses every assigned partition; `getmany` is still called while paused
  (streams/runner/fetch.py), so aiokafka sees a live consumer and the group keeps this
  member however long a store outage lasts (max_poll_interval_ms counts the time between
  `getmany` calls).
- `commit(positions)` takes the offsets of a stored batch; they go out from `fetch` once
  COMMIT_INTERVAL_S passed since the last commit (and on `flush`: revocation, stop), so
  the source has no task of its own to outlive it. A failed commit is retried at the
  next interval; records past the last commit are replayed after a crash, which the
  idempotent sinks absorb. After a revocation, offsets not committed are forgotten: a
  late commit of a partition that moved could move its new owner's offset back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import ConsumerStoppedError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from streams.metrics import CONSUMER_LAG
from streams.runner.pipeline import REVOKE_DEADLINE_S
from streams.runner.protocols import Fetch, Positions, Rebalance

log = logging.getLogger(__name__)

COMMIT_INTERVAL_S = 1.0
# Records per `getmany`: a backlog reaches the pipeline in bounded lists.
MAX_POLL_RECORDS = 2_000


def services_group(worker_group: str) -> str:
    """The consumer group (Faust app id) of the worker's service-topic agents."""
    return f"{worker_group}-services"


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(
        self,
        revoked: Callable[[set[TopicPartition]], Awaitable[None]],
        assigned: Callable[[set[TopicPartition]], Awaitable[None]],
    ) -> None:
        self.revoked = revoked
        self.assigned = assigned

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.assigned(assigned)


class KafkaSource:
    """One consumer of `topics` in `group`. `stop` commits what was stored and leaves
    the group."""

    def __init__(
        self,
        bootstrap: str,
        group: str,
        topics: list[str],
        *,
        max_poll_interval_ms: int = 300_000,
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 2_000,
    ) -> None:
        self.topics = topics
        self._config: dict[str, Any] = {
            "bootstrap_servers": bootstrap,
            "group_id": group,
            "isolation_level": "read_committed",
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "max_poll_interval_ms": max_poll_interval_ms,
            "max_poll_records": MAX_POLL_RECORDS,
            # As the worker's Faust consumer has them: a killed worker's partitions move
            # after 10 s.
            "session_timeout_ms": session_timeout_ms,
            "heartbeat_interval_ms": heartbeat_interval_ms,
        }
        # How long the pipeline may go without fetching (waiting for room before it
        # pauses): well within the poll interval.
        self.max_fetch_gap_s = max_poll_interval_ms / 1000 / 4
        self._consumer: AIOKafkaConsumer | None = None  # made in the loop: aiokafka wants one
        self.assignments = 0  # completed assignments: a rebalance shows as one more
        self._rebalance: Rebalance | None = None
        self._to_commit: dict[TopicPartition, int] = {}
        self._commit_lock = asyncio.Lock()
        self._committed_at = 0.0  # loop time of the last commit
        self._stopping = False

    @property
    def consumer(self) -> AIOKafkaConsumer:
        assert self._consumer is not None, "not running"
        return self._consumer

    def assignment(self) -> set[TopicPartition]:
        return set(self._consumer.assignment()) if self._consumer is not None else set()

    async def start(self, rebalance: Rebalance) -> None:
        self._rebalance = rebalance
        consumer = self._consumer = AIOKafkaConsumer(**self._config)
        await consumer.start()
        consumer.subscribe(self.topics, listener=_Listener(self._revoked, self._assigned))

    async def fetch(self, timeout_s: float) -> Fetch | None:
        """Raises what the consumer raises (the worker then exits)."""
        consumer = self.consumer
        if asyncio.get_running_loop().time() - self._committed_at >= COMMIT_INTERVAL_S:
            await self.flush()
        try:
            fetched = await consumer.getmany(timeout_ms=int(timeout_s * 1000))
        except ConsumerStoppedError:
            if not self._stopping:
                raise
            await asyncio.sleep(timeout_s)
            return None
        if not fetched:
            return None
        messages: list[Any] = []
        positions: Positions = {}
        for tp, records in fetched.items():
            if not records:
                continue
            # Assigned, with a valid position: `position` returns without waiting.
            positions[tp] = await consumer.position(tp)
            messages.extend(records)
        return Fetch(messages, positions) if messages else None

    def pause(self) -> None:
        # Records already fetched for a paused partition are dropped (and fetched again on
        # resume).
        consumer = self.consumer
        consumer.pause(*consumer.assignment())

    def resume(self) -> None:
        paused = self.consumer.paused()
        if paused:
            self.consumer.resume(*paused)

    async def commit(self, positions: Positions) -> None:
        to_commit = self._to_commit
        for key, offset in positions.items():
            tp = key if isinstance(key, TopicPartition) else TopicPartition(*key)
            if offset > to_commit.get(tp, -1):
                to_commit[tp] = offset

    def is_paused(self) -> bool:
        return bool(self._consumer is not None and self._consumer.paused())

    async def flush(self) -> None:
        """Commit what was stored; a failure is logged and retried at the next call."""
        async with self._commit_lock:
            self._committed_at = asyncio.get_running_loop().time()
            if not self._to_commit or self._consumer is None:
                return
            offsets, self._to_commit = self._to_commit, {}
            try:
                await self._consumer.commit(
                    {tp: OffsetAndMetadata(offset, "") for tp, offset in offsets.items()}
                )
            except KafkaError as exc:
                log.warning("offset commit failed, retried at the next interval: %s", exc)
                for tp, offset in offsets.items():
                    self._to_commit[tp] = max(offset, self._to_commit.get(tp, 0))

    async def _revoked(self, revoked: set[TopicPartition]) -> None:
        assert self._rebalance is not None
        await self._rebalance.revoke()  # bounded by its deadline; flushes the commits
        self._to_commit.clear()

    async def _assigned(self, assigned: set[TopicPartition]) -> None:
        self.assignments += 1
        assert self._rebalance is not None
        self._rebalance.assign(sorted({tp.partition for tp in assigned}))

    async def report_lag(self, reported: set[tuple[str, str]]) -> set[tuple[str, str]]:
        """Sets `consumer_lag` (end offset - committed offset) of every assigned
        partition and removes the gauges of `reported` partitions no longer assigned;
        returns the partitions reported now. Kafka unreachable: the gauges keep their
        last values until the next call (a timer must not take the worker down)."""
        assigned = set()
        for tp in self.assignment():
            if tp not in self.assignment():
                continue  # revoked while an earlier partition's commit was asked for
            highwater = self.consumer.highwater(tp)
            try:
                committed = await self.consumer.committed(tp)
            except KafkaError as exc:
                log.warning("consumer lag not refreshed: %s", exc)
                return reported
            if highwater is not None and committed is not None:
                labels = (tp.topic, str(tp.partition))
                CONSUMER_LAG.labels(*labels).set(max(highwater - committed, 0))
                assigned.add(labels)
        for labels in reported - assigned:  # moved to another worker: not ours to report
            CONSUMER_LAG.remove(*labels)
        return assigned

    async def stop(self) -> None:
        """Commit what was stored (bounded by REVOKE_DEADLINE_S) and leave the group."""
        if self._consumer is None or self._stopping:
            return
        self._stopping = True
        try:
            async with asyncio.timeout(REVOKE_DEADLINE_S):
                await self.flush()
        except TimeoutError:
            log.warning("final offset commit timed out; the records are replayed")
        await self._consumer.stop()
