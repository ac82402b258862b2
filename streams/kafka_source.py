"""The `analytics.events` consumer of the worker: aiokafka's public consumer API only,
hosted in the Faust app as a task (streams/app.py).

It owns the events topic's group membership (group = the worker group), fetches,
pause/resume and commits; Faust keeps a consumer of its own for the low-rate service
topics in the group `services_group(worker group)` (Faust's partition assignor and
aiokafka's cannot share one group).

Contract:
- Reads with `isolation_level="read_committed"`: the gateway writes each request inside a
  Kafka transaction, and a request it answered 503 must never be counted.
- Records go to the pipeline (`EventPipeline.enqueue`) in fetched lists, tagged with the
  generation (the number of revocations so far) in which they were fetched. `getmany`
  returns records of the active assignment only, and the tag is read before anything
  else can run, so a list never carries a revoked partition's records into a later
  generation.
- Backpressure: when the pipeline has had no room for ROOM_WAIT_S (a store is failing or
  slow), every assigned partition is paused and `getmany` is still called, so aiokafka
  sees a live consumer and the group keeps this member however long the outage
  (max_poll_interval_ms counts the time between `getmany` calls). Resumed as soon as
  there is room.
- Commits: the pipeline stores batches in fetch order and acks one (`ack`) only after the
  sinks and the changelog have it. Per partition the offset committed is the consumer's
  position right after the fetch that returned the batch's last record of the partition:
  the last stored offset + 1, or past the transaction markers that followed it in that
  fetch. No per-record ack or gap bookkeeping is needed. Commits go out every
  COMMIT_INTERVAL_S; a failed one is retried at the next interval, and records past the
  last commit are replayed after a crash, which the idempotent sinks absorb.
- Revocation has a deadline: the generation moves on first (nothing fetched before is
  acked from then on), the pipeline drops its processors and waits at most
  REVOKE_DEADLINE_S for a changelog write under way, and the offsets acked before are
  committed within the same deadline. A batch still being stored is abandoned: neither
  committed nor its state written; the partition's next owner replays it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import ConsumerStoppedError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from streams.metrics import CONSUMER_LAG

log = logging.getLogger(__name__)

COMMIT_INTERVAL_S = 1.0
REVOKE_DEADLINE_S = 10.0
# Records per `getmany`: a backlog reaches the pipeline in bounded lists.
MAX_POLL_RECORDS = 2_000
# A full pipeline queue is normal under a backlog (a batch is being stored); it is
# waited for this long before the partitions are paused.
ROOM_WAIT_S = 1.0
# How long one `getmany` waits for records; paused, it only keeps the membership alive.
FETCH_WAIT_MS = 500


def services_group(worker_group: str) -> str:
    """The consumer group (Faust app id) of the worker's service-topic agents."""
    return f"{worker_group}-services"


class Pipeline(Protocol):
    """What the source drives (streams/pipeline.py's `EventPipeline`)."""

    def has_room(self) -> bool: ...

    async def wait_for_room(self, timeout_s: float) -> bool: ...

    async def enqueue(self, messages: list[Any], generation: int) -> None: ...

    async def revoke(self) -> None: ...

    def assign(self, partitions: list[int]) -> None: ...


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


class KafkaEventsSource:
    """One consumer of `topic` in `group`, feeding `pipeline`. `run` fetches until
    cancelled and raises what the consumer raises (the worker then exits); `stop`
    commits what was acked and leaves the group."""

    def __init__(
        self,
        bootstrap: str,
        group: str,
        topic: str,
        *,
        max_poll_interval_ms: int = 300_000,
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 2_000,
    ) -> None:
        self.topic = topic
        self._config: dict[str, Any] = {
            "bootstrap_servers": bootstrap,
            "group_id": group,
            "isolation_level": "read_committed",
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "max_poll_interval_ms": max_poll_interval_ms,
            # As the worker's Faust consumer has them: a killed worker's partitions move
            # after 10 s.
            "session_timeout_ms": session_timeout_ms,
            "heartbeat_interval_ms": heartbeat_interval_ms,
        }
        self._consumer: AIOKafkaConsumer | None = None  # made in the loop: aiokafka wants one
        # How long a full pipeline is waited for before the partitions are paused: well
        # within the poll interval, since no getmany is called meanwhile.
        self._room_wait_s = min(ROOM_WAIT_S, max_poll_interval_ms / 1000 / 4)
        self.generation = 0
        self.assignments = 0  # completed assignments: a rebalance shows as one more
        self._pipeline: Pipeline | None = None
        # Per partition, the handed lists not acked yet: (last offset, position after it).
        self._handed: dict[TopicPartition, deque[tuple[int, int]]] = {}
        self._to_commit: dict[TopicPartition, int] = {}
        self._commit_lock = asyncio.Lock()
        self._stopping = False

    @property
    def consumer(self) -> AIOKafkaConsumer:
        assert self._consumer is not None, "not running"
        return self._consumer

    def assignment(self) -> set[TopicPartition]:
        return set(self._consumer.assignment()) if self._consumer is not None else set()

    async def run(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline
        consumer = self._consumer = AIOKafkaConsumer(**self._config)
        await consumer.start()
        consumer.subscribe([self.topic], listener=_Listener(self._revoked, self._assigned))
        committer = asyncio.create_task(self._commit_every_interval())
        try:
            while True:
                if committer.done():
                    committer.result()
                if pipeline.has_room() or await pipeline.wait_for_room(self._room_wait_s):
                    paused = consumer.paused()
                    if paused:
                        consumer.resume(*paused)
                else:
                    # Records already fetched for a paused partition are dropped (and
                    # fetched again on resume): pause only when the wait is no
                    # ordinary full queue behind a batch being stored.
                    consumer.pause(*consumer.assignment())
                fetched = await consumer.getmany(
                    timeout_ms=FETCH_WAIT_MS, max_records=MAX_POLL_RECORDS
                )
                if not fetched:
                    continue
                # Nothing has awaited since getmany returned: these records are of the
                # active assignment, and this generation is theirs.
                generation = self.generation
                messages: list[Any] = []
                for tp, records in fetched.items():
                    if not records:
                        continue
                    # Assigned, with a valid position: `position` returns without waiting.
                    position = await consumer.position(tp)
                    self._handed.setdefault(tp, deque()).append((records[-1].offset, position))
                    messages.extend(records)
                if messages:
                    # The room was checked before the fetch: this does not wait.
                    await pipeline.enqueue(messages, generation)
        except ConsumerStoppedError:
            if not self._stopping:
                raise
        finally:
            committer.cancel()
            await asyncio.gather(committer, return_exceptions=True)

    def ack(self, messages: list[Any]) -> None:
        """The pipeline stored `messages` (a batch, in fetch order, of the current
        generation): their partitions' offsets are committed at the next interval."""
        # Keyed by partition alone (one topic): no TopicPartition built per record.
        last: dict[int, int] = {}
        for message in messages:
            last[message.partition] = message.offset
        for partition, offset in last.items():
            tp = TopicPartition(self.topic, partition)
            handed = self._handed.get(tp)
            commit_at = offset + 1
            while handed and handed[0][0] <= offset:
                handed_last, position = handed.popleft()
                if handed_last == offset:
                    commit_at = position
            self._to_commit[tp] = max(commit_at, self._to_commit.get(tp, 0))

    async def _commit_every_interval(self) -> None:
        while True:
            await asyncio.sleep(COMMIT_INTERVAL_S)
            await self._commit()

    async def _commit(self) -> None:
        """Commit what was acked; a failure is logged and retried at the next call."""
        async with self._commit_lock:
            if not self._to_commit:
                return
            offsets, self._to_commit = self._to_commit, {}
            try:
                await self.consumer.commit(
                    {tp: OffsetAndMetadata(offset, "") for tp, offset in offsets.items()}
                )
            except KafkaError as exc:
                log.warning("offset commit failed, retried at the next interval: %s", exc)
                for tp, offset in offsets.items():
                    self._to_commit[tp] = max(offset, self._to_commit.get(tp, 0))

    async def _revoked(self, revoked: set[TopicPartition]) -> None:
        self.generation += 1
        assert self._pipeline is not None
        try:
            async with asyncio.timeout(REVOKE_DEADLINE_S):
                await self._pipeline.revoke()
                await self._commit()
        except TimeoutError:
            log.warning("revocation deadline passed; what was not committed is replayed")
        self._handed.clear()
        self._to_commit.clear()

    async def _assigned(self, assigned: set[TopicPartition]) -> None:
        self.assignments += 1
        assert self._pipeline is not None
        self._pipeline.assign(sorted(tp.partition for tp in assigned if tp.topic == self.topic))

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
        """Commit what was acked (bounded by REVOKE_DEADLINE_S) and leave the group."""
        if self._consumer is None or self._stopping:
            return
        self._stopping = True
        try:
            async with asyncio.timeout(REVOKE_DEADLINE_S):
                await self._commit()
        except TimeoutError:
            log.warning("final offset commit timed out; the records are replayed")
        await self._consumer.stop()
