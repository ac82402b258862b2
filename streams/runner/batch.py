"""Batch: fetched lists in, batches out, each closed by records, bytes or time.

A batch is made of whole fetches of one generation (the number of revocations before
they were fetched), so its commit positions are those of its fetches: no per-record
bookkeeping. The queue between the fetch loop and the batch loop holds a few fetches;
while it is full the fetch loop pauses the source (streams/runner/fetch.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from streams.runner.protocols import Fetch, Message, Positions

# Larger batches amortize the per-batch costs (inserts, state round trip); the time
# bound keeps freshness: a batch closes BATCH_WITHIN_S after its first record was fetched.
BATCH_MAX_RECORDS = 10_000
BATCH_MAX_BYTES = 4 * 1024 * 1024  # of record values: bounds the decoded events in memory
BATCH_WITHIN_S = 0.5
# Eight fetches of up to MAX_POLL_RECORDS hold more than a batch, so a backlog never
# waits for the next fetch to fill one.
QUEUED_FETCHES = 8
ROOM_POLL_S = 0.005


@dataclass(slots=True)
class Batch:
    generation: int
    messages: list[Message] = field(default_factory=list)
    positions: Positions = field(default_factory=dict)


class Batcher:
    def __init__(self, generation: Callable[[], int]) -> None:
        self._generation = generation
        self._queue: asyncio.Queue[tuple[int, float, Fetch]] = asyncio.Queue(QUEUED_FETCHES)
        self._held: tuple[int, float, Fetch] | None = None  # taken, not batched

    def has_room(self) -> bool:
        """Whether `put` would take a fetch without waiting."""
        return not self._queue.full()

    def is_drained(self) -> bool:
        """Every fetch put has been taken into a batch."""
        return self._queue.empty() and self._held is None

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

    async def put(self, fetch: Fetch, generation: int) -> None:
        """`generation`: the one in which the records were fetched. Waits while full."""
        await self._queue.put((generation, asyncio.get_running_loop().time(), fetch))

    def clear(self) -> None:
        """Drop every fetch not batched yet (a revocation: they are fetched again)."""
        self._held = None
        while not self._queue.empty():
            self._queue.get_nowait()

    async def next_batch(self, check: Callable[[], None]) -> Batch:
        """Up to BATCH_MAX_RECORDS messages or BATCH_MAX_BYTES of values, whatever has
        been fetched within BATCH_WITHIN_S of the first (fetches that waited while the
        previous batch was stored count their wait); all of the current generation.
        `check` is called about every second while no fetch comes (it raises what
        should end the loop)."""
        while True:
            check()
            if self._held is not None:
                (generation, fetched_at, first), self._held = self._held, None
            else:
                try:
                    async with asyncio.timeout(1.0):
                        generation, fetched_at, first = await self._queue.get()
                except TimeoutError:
                    continue
            if generation == self._generation():
                break
        batch = Batch(generation, list(first.messages), dict(first.positions))
        size = _size(first)
        deadline = fetched_at + BATCH_WITHIN_S
        queue = self._queue
        while len(batch.messages) < BATCH_MAX_RECORDS and size < BATCH_MAX_BYTES:
            if queue.empty():
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(remaining):
                        more_generation, more_fetched_at, more = await queue.get()
                except TimeoutError:
                    break
            else:
                more_generation, more_fetched_at, more = queue.get_nowait()
            if more_generation != generation:
                # Revoked meanwhile: this batch is dropped by the core; the newer records
                # are the next batch's (their offsets count as read: dropping them would
                # leave them unprocessed until the next rebalance).
                self._held = (more_generation, more_fetched_at, more)
                break
            batch.messages.extend(more.messages)
            batch.positions.update(more.positions)
            size += _size(more)
        return batch


def _size(fetch: Fetch) -> int:
    return sum(len(message.value or b"") for message in fetch.messages)
