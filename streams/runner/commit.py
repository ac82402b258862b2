"""Commit: the batch's positions to the source, last in the chain (stores → state →
commit), and only while the batch's generation is current: a revoked batch's records
are replayed by their next owner. Batches are committed in fetch order, so a position
committed means every record before it is stored.
"""

from __future__ import annotations

from collections.abc import Callable

from streams.runner.protocols import Positions, Source


class CommitStep:
    def __init__(self, source: Source | None) -> None:
        self.source = source

    async def commit(self, positions: Positions, still_current: Callable[[], bool]) -> None:
        if self.source is not None and positions and still_current():
            await self.source.commit(positions)
