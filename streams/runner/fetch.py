"""Fetch: the source's records into the batch queue, pausing the source while the
pipeline cannot take more.

The source is paused at once while the stores answer "not now" (the store step's
`rejected`), and when the queue has stayed full for `room_wait_s` (a full queue behind a
batch being stored is normal under a backlog; pausing drops what a Kafka consumer
prefetched). Paused, `fetch` is still called: a Kafka consumer's group membership lives
on those calls (max_poll_interval_ms counts the time between them), so the partitions
stay with this worker however long the outage. Resumed as soon as there is room.
"""

from __future__ import annotations

from collections.abc import Callable

from streams.runner.batch import Batcher
from streams.runner.protocols import Source

# A full queue is normal under a backlog (a batch is being stored); it is waited for this
# long before the source is paused.
ROOM_WAIT_S = 1.0
# How long one fetch waits for records; paused, it only keeps the membership alive.
FETCH_WAIT_S = 0.5


async def fetch_forever(
    source: Source,
    batcher: Batcher,
    generation: Callable[[], int],
    rejected: Callable[[], bool],
    room_wait_s: float = ROOM_WAIT_S,
) -> None:
    """Until cancelled; raises what the source raises."""
    while True:
        if not rejected() and (batcher.has_room() or await batcher.wait_for_room(room_wait_s)):
            source.resume()
        else:
            source.pause()
        fetched = await source.fetch(FETCH_WAIT_S)
        if fetched is None:
            continue
        # Nothing has awaited since the fetch returned: its records are of the active
        # assignment, and this generation is theirs.
        fetched_in = generation()
        # The room was checked before the fetch (and a paused source returns nothing):
        # this does not wait.
        await batcher.put(fetched, fetched_in)
