"""The pipeline core: fetch → batch → decode and feed → store → persist state → commit,
over a `Source`, a `StateBackend` and `Stores` (streams/runner/protocols.py). The Kafka
worker and `quip up` run it on their backends (streams/backends/kafka, .../local); each
runs two: the events pipeline and the services pipeline.

Contract:
- Order. A batch's positions are committed only after the stores have *every* output of
  the batch and the state changes it made are durable (stores → state → commit): delivery
  is at-least-once and the idempotent stores make results exact. Batches are stored one
  after the other in fetch order, so "commit the positions after the batch" replaces any
  per-record ack; batch N+1 is decoded and fed while batch N is being stored.
- State. Stateful stages run one processor per partition; their state changes go to the
  state backend under the partition's number before the batch is committed. Records at
  or before a state's last applied position are ignored by the processor, so a replay
  after a crash cannot double count.
- Backpressure. Stores answer `RetryAfter(t)` while they cannot take a batch: the source
  is paused (its membership kept alive by the fetch calls) and the write retried after t;
  nothing is dropped.
- Rebalances are eager: every partition is revoked, then the new assignment is given.
  `revoke` moves the generation on (nothing fetched before is fed, persisted or committed
  from then on), drops every stateful processor and waits for a state write under way,
  then flushes the source's commits, all within REVOKE_DEADLINE_S. `assign` starts
  reading the assigned partitions' whole state into new processors; no batch of that
  generation is fed (and no tick flushes) before the read is complete. So a pipeline's
  state is always exactly what the backend stored plus the records replayed from the
  committed positions. A batch in flight when its partitions are revoked writes neither
  its state nor its commit: its records are replayed by whoever owns them next, and
  writing them late could put an old state after the new owner's newer one. A state
  write cut off by the deadline may still land, carrying state of records that were not
  committed, which the next owner replays onto its own read of the state.
- Ticks. Every `tick_interval_s` the stages are flushed without new records, so
  time-based closing (idle plays) happens on a quiet stream too.
- Failures. A source, state backend or dead-letter write that raises ends `run` with
  the error (the app exits and is restarted; what was not committed is replayed).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from schemas.output import ProcessorOutput
from streams.metrics import EVENTS_LOOP_SECONDS, EVENTS_PROCESSED, UNDECODABLE_RECORDS
from streams.runner.batch import Batch, Batcher
from streams.runner.commit import CommitStep
from streams.runner.decode import UNDECODABLE_KEY, Decoder, undecodable_letter
from streams.runner.feed import Fed, Stage, feed
from streams.runner.fetch import ROOM_WAIT_S, fetch_forever
from streams.runner.persist import PersistStep, take_state_changes
from streams.runner.protocols import (
    DeadLetters,
    Fetch,
    Message,
    Positions,
    Source,
    StateBackend,
    StateChanges,
    Stores,
)
from streams.runner.store import StoreStep, take_outputs

log = logging.getLogger(__name__)

REVOKE_DEADLINE_S = 10.0



@dataclass(slots=True)
class Taken:
    """What a batch's flush took from the stages."""

    outputs: list[ProcessorOutput]  # per stage
    changes: list[StateChanges]
    letters: list[tuple[bytes, bytes]]


class Pipeline:
    """One consumer's loop. `run` drives it from its source until cancelled; tests may
    drive `run_batches` with `enqueue`, `revoke` and `assign` instead."""

    def __init__(
        self,
        name: str,
        stages: Sequence[Stage],
        decoder: Decoder,
        stores: Stores,
        *,
        source: Source | None = None,
        state: StateBackend | None = None,
        dead_letters: DeadLetters | None = None,
        consumer: str = "worker",
        tick_interval_s: float | None = None,
        room_wait_s: float = ROOM_WAIT_S,
        measure_loop: bool = False,
    ) -> None:
        """`measure_loop`: this pipeline's batch loop is the one `events_loop_seconds`
        measures (waiting for records, feeding, taking, waiting for the store)."""
        self.name = name
        self.stages = list(stages)
        self.decoder = decoder
        self.source = source
        self.state = state
        self.dead_letters = dead_letters
        self.consumer = consumer
        self.tick_interval_s = tick_interval_s
        self.room_wait_s = room_wait_s
        # Moves on as soon as a revocation starts: records fetched in an older generation
        # are neither fed nor committed (they are fetched again from the committed
        # positions), and their batches' state changes are not written.
        self.generation = 0
        self.batcher = Batcher(lambda: self.generation)
        self.store_step = StoreStep(stores)
        self.persist_step = PersistStep(state)
        self.commit_step = CommitStep(source)
        self._processed = [EVENTS_PROCESSED.labels(stage.name) for stage in self.stages]
        self._loop_phases = (
            [EVENTS_LOOP_SECONDS.labels(phase) for phase in ("records", "feed", "take", "store")]
            if measure_loop
            else None
        )
        self._lock = asyncio.Lock()  # one batch (or tick) taken at a time
        self._storing: asyncio.Task[None] | None = None
        # The generation whose state is being (or has been) read, and that read.
        self._loading_generation = -1
        self._loading: asyncio.Task[None] | None = None
        self._assignment: asyncio.Future[list[int]] | None = None
        self._owned: frozenset[int] = frozenset()  # the partitions whose state is loaded

    # ------------------------------------------------------------------ driving
    async def run(self) -> None:
        """Start the source, then fetch, process and tick until cancelled; raises what
        any of them raises."""
        assert self.source is not None
        self.batcher.clear()  # fetched by an earlier run: the source reads them again
        await self.source.start(self)
        tasks = [
            asyncio.create_task(
                fetch_forever(
                    self.source,
                    self.batcher,
                    lambda: self.generation,
                    lambda: self.store_step.rejected,
                    self.room_wait_s,
                ),
                name=f"{self.name}-fetch",
            ),
            asyncio.create_task(self.run_batches(), name=f"{self.name}-batches"),
        ]
        if self.tick_interval_s is not None:
            tasks.append(asyncio.create_task(self._tick_forever(self.tick_interval_s)))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def enqueue(self, fetch: Fetch, generation: int) -> None:
        """A fetch of `generation` for the batch loop; waits while the queue is full."""
        await self.batcher.put(fetch, generation)

    async def run_batches(self) -> None:
        """Batch N+1 is decoded and fed while batch N is being stored. Storing is chained
        (stores, then state, then commit; one batch after the other)."""
        clock = time.perf_counter
        while True:
            started = clock()
            batch = await self.batcher.next_batch(self._raise_if_store_failed)
            generation = batch.generation
            if not await self._state_loaded(generation):
                continue  # partitions were revoked while the state was read
            self._keep_owned(batch)
            async with self._lock:
                if generation != self.generation:
                    continue  # partitions were revoked while the batch was collected
                collected = clock()
                fed = await feed(
                    batch.messages,
                    self.stages,
                    self.decoder,
                    self._is_current(generation),
                )
                if fed is None:
                    continue  # partitions were revoked while the batch was fed
                fed_at = clock()
                taken = self._take()
                taken_at = clock()
                await self._stored()
                if self._loop_phases is not None:
                    times = (started, collected, fed_at, taken_at, clock())
                    for phase, (begun, ended) in zip(
                        self._loop_phases, itertools.pairwise(times), strict=True
                    ):
                        phase.inc(ended - begun)
                self._storing = asyncio.create_task(
                    self._store(taken, generation, batch.positions, fed)
                )

    async def tick(self) -> None:
        """Flush without new records (see the module docstring)."""
        async with self._lock:
            generation = self.generation
            if not self._is_loaded(generation):
                return
            taken = self._take()
            await self._stored()
            await self._store(taken, generation, {}, Fed(0, []))

    async def _tick_forever(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self.tick()

    def _is_current(self, generation: int) -> Callable[[], bool]:
        return lambda: generation == self.generation

    def _raise_if_store_failed(self) -> None:
        if self._storing is not None and self._storing.done():
            self._storing.result()  # a failed store ends the loop (and the app)

    async def _stored(self) -> None:
        """Wait for the batch being stored; raises what storing raised."""
        if self._storing is not None:
            await self._storing

    def _keep_owned(self, batch: Batch) -> None:
        """Drop records fetched from an earlier assignment after it was revoked: another
        worker's now, neither fed (a processor would write state into its partition) nor
        committed. Checked per partition of the batch, not per record."""
        owned = self._owned
        if all(partition in owned for _, partition in batch.positions):
            return
        batch.messages = [message for message in batch.messages if message.partition in owned]
        batch.positions = {key: at for key, at in batch.positions.items() if key[1] in owned}

    # ------------------------------------------------------------------ rebalance
    async def revoke(self) -> None:
        """Every partition revoked (see the module docstring); returns within
        REVOKE_DEADLINE_S."""
        self.generation += 1
        self._expect_assignment()
        self.batcher.clear()
        for stage in self.stages:
            stage.processors.clear()
        try:
            async with asyncio.timeout(REVOKE_DEADLINE_S):
                await self.persist_step.settled()
                if self.source is not None:
                    await self.source.flush()
        except TimeoutError:
            log.warning(
                "%s: revocation deadline passed; what was not committed is replayed",
                self.name,
            )

    def assign(self, partitions: Iterable[int]) -> None:
        """The new assignment, whose state is read in the background (a Kafka rebalance
        callback must return; the group waits on it)."""
        assignment = self._assignment
        if assignment is None or self._loading_generation != self.generation:
            assignment = self._expect_assignment()
        if not assignment.done():
            assignment.set_result(sorted(partitions))

    def _expect_assignment(self) -> asyncio.Future[list[int]]:
        """The current generation's state read, started at its revocation, before any of
        its records can be fetched: a batch of the generation fetched before `assign`
        waits for it instead of being dropped (its records count as read)."""
        if self._loading is not None:
            self._loading.cancel()
        self._loading_generation = self.generation
        assignment: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._assignment = assignment
        self._loading = asyncio.create_task(self._load(assignment, self._loading_generation))
        return assignment

    async def _load(self, assignment: asyncio.Future[list[int]], generation: int) -> None:
        """Once assigned: fresh processors for every assigned partition (so a quiet
        partition's open plays still close on time), each loaded with its stored state.
        The backend unreachable: retried with backoff, the partitions wait."""
        partitions = await assignment
        stateful = [stage for stage in self.stages if stage.stateful]
        if not stateful or not partitions:
            self._owned = frozenset(partitions)
            return
        assert self.state is not None, "stateful stages need a state backend"
        backoff = 0.5
        while True:
            try:
                states = await self.state.load([stage.name for stage in stateful], partitions)
                break
            except Exception as exc:  # a revocation's CancelledError is not one
                log.warning("state read failed, retrying in %.1f s: %s", backoff, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
        if generation != self.generation:
            return
        started = time.monotonic()
        keys = 0
        for stage in stateful:
            for partition in partitions:
                processor = stage.processor(partition)
                entries = states[stage.name][partition]
                for key, value in entries.items():
                    processor.load_state(key, value)
                keys += len(entries)
        self._owned = frozenset(partitions)
        log.info(
            "%s: state of partitions %s loaded: %d keys in %.2f s",
            self.name,
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
        return self._is_loaded(generation) and generation == self.generation

    def _is_loaded(self, generation: int) -> bool:
        loading = self._loading
        return (
            loading is not None
            and self._loading_generation == generation
            and loading.done()
            and not loading.cancelled()
            and loading.exception() is None
        )

    # ------------------------------------------------------------------ steps
    def _take(self) -> Taken:
        """Flush every processor and take its state changes and dead letters, before
        the next batch changes them again."""
        outputs = take_outputs(self.stages, int(time.time() * 1000))
        letters = [
            letter
            for stage in self.stages
            if stage.take_letters is not None
            for letter in stage.take_letters()
        ]
        return Taken(outputs, take_state_changes(self.stages), letters)

    async def _store(self, taken: Taken, generation: int, positions: Positions, fed: Fed) -> None:
        still_current = self._is_current(generation)
        if not await self.store_step.store(self.stages, taken.outputs, still_current):
            return
        if not await self.persist_step.persist(taken.changes, positions, still_current):
            return
        for message, exc in fed.undecodable:
            await self._undecodable(message, exc)
        if taken.letters and self.dead_letters is not None:
            for key, value in taken.letters:
                await self.dead_letters.send(key=key, value=value)
        await self.commit_step.commit(positions, still_current)
        if fed.counted:
            for processed in self._processed:
                processed.inc(fed.counted)

    async def _undecodable(self, message: Message, exc: Exception) -> None:
        UNDECODABLE_RECORDS.labels(self.name).inc()
        log.warning(
            "%s: undecodable record at %s/%s: %s",
            self.name,
            message.partition,
            message.offset,
            exc,
        )
        if self.dead_letters is None:
            return
        value = undecodable_letter(self.consumer, self.name, message, exc, int(time.time() * 1000))
        await self.dead_letters.send(key=UNDECODABLE_KEY, value=value)
