"""The local `Source` (streams/runner/protocols.py): the records of some topics of the
local bus (streams/backends/local/bus.py), for one pipeline of `quip up`.

- One partition (0); a record's offset is its bus sequence number; a fetch's position is
  the byte position after its last frame. Fetches are whole frames, so a frame's
  records are committed together. Frames holding none of the topics' records still move
  the position (a fetch with no records), so a quiet pipeline does not hold the bus.
- The position where reading starts is the one the state backend stored with the
  state (streams/backends/local/state.py); with none stored (a new pipeline, or one that
  never committed), the start of the oldest segment the bus kept: nothing there was
  counted by this pipeline, and no reader may have compacted past its records, since
  its position holds the bus's compaction back from the start. `start` assigns
  partition 0 once: the bus has no rebalances.
- `pause` simply stops reading until `resume`.
- `commit` lets the bus delete the segments every reader has committed past
  (`BusReaders`): the position itself was stored with the state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from streams.backends.local.bus import LocalBus
from streams.backends.local.state import BUS_PARTITION
from streams.runner.protocols import Fetch, Message, Positions, Rebalance

FETCH_FRAMES = 256


class BusReaders:
    """The committed position of every reader of one bus; segments go once all readers
    are past them."""

    def __init__(self, bus: LocalBus) -> None:
        self.bus = bus
        self._committed: dict[str, int] = {}

    def register(self, reader: str, position: int) -> None:
        self._committed[reader] = position

    async def committed(self, reader: str, position: int) -> None:
        self._committed[reader] = position
        await self.bus.compact(min(self._committed.values()))


class LocalBusSource:
    def __init__(
        self, readers: BusReaders, name: str, topics: Iterable[str], position: int | None
    ) -> None:
        """`position`: the committed one, None if there is none yet."""
        self.bus = readers.bus
        self.readers = readers
        self.name = name
        self.topics = frozenset(topics)
        self.committed_position = position
        self.position = 0  # where the next fetch reads, set by `start`
        self._paused = False
        readers.register(name, 0 if position is None else position)

    async def start(self, rebalance: Rebalance) -> None:
        """Reads from the last committed position (again, if started before)."""
        if self.committed_position is None:
            self.committed_position = self.bus.segments[0].base
        self.position = self.committed_position
        await self.readers.committed(self.name, self.position)  # what a crash kept
        rebalance.assign([BUS_PARTITION[1]])

    async def fetch(self, timeout_s: float) -> Fetch | None:
        if self._paused:
            await asyncio.sleep(timeout_s)
            return None
        frames = await self.bus.read(self.position, FETCH_FRAMES)
        if not frames:
            await self.bus.wait_for_frames(timeout_s)
            return None
        topics = self.topics
        messages: list[Message] = [
            record for frame in frames for record in frame.records if record.topic in topics
        ]
        self.position = frames[-1].end
        return Fetch(messages, {BUS_PARTITION: self.position})

    def is_paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    async def commit(self, positions: Positions) -> None:
        position = positions.get(BUS_PARTITION)
        if position is not None:
            self.committed_position = position
            await self.readers.committed(self.name, position)

    async def flush(self) -> None:
        pass  # commits are not deferred

    async def stop(self) -> None:
        pass
