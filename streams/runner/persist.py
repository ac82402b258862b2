"""Persist: the stateful processors' state changes to the state backend, after the
stores have the batch and before its positions are committed (a committed position
whose state change was lost would drop those records' effect for good).

Changes are taken right after the flush, before the next batch changes the state again.
They are written one batch after the other under one lock, and only while the batch's
generation is current: a batch revoked in flight writes no state, since writing it late
could put an old state after the new owner's newer one. `settled` waits out a write
already under way (the revocation waits for it, within its deadline).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from streams.processors.base import StatefulProcessor
from streams.runner.feed import Stage
from streams.runner.protocols import Positions, StateBackend, StateChanges


def take_state_changes(stages: Sequence[Stage]) -> list[StateChanges]:
    changes: list[StateChanges] = []
    for stage in stages:
        if not stage.stateful:
            continue
        for partition, processor in stage.processors.items():
            assert isinstance(processor, StatefulProcessor)
            entries = processor.take_state_changes()
            if entries:
                changes.append((stage.name, partition, entries))
    return changes


class PersistStep:
    def __init__(self, backend: StateBackend | None) -> None:
        self.backend = backend
        self._lock = asyncio.Lock()

    async def persist(
        self,
        changes: Sequence[StateChanges],
        positions: Positions,
        still_current: Callable[[], bool],
    ) -> bool:
        """True once the changes (and positions, where the backend keeps them) are
        durable; False if the batch's generation is over. Raises what the backend
        raises."""
        async with self._lock:
            if not still_current():
                return False
            if self.backend is not None and (changes or positions):
                await self.backend.persist(changes, positions)
        return True

    async def settled(self) -> None:
        async with self._lock:
            pass  # a write already under way completes; later ones see the new generation
