"""Store: flush the stages and hand their output to the stores, retrying on "not now".

The stores answer `RetryAfter(seconds)` while they cannot take a batch (ClickHouse
down); the step then raises the `rejected` flag, which makes the fetch loop pause the
source (streams/runner/fetch.py), waits, and writes the missing parts again. It gives
up on a batch whose partitions were revoked meanwhile: its records were not committed,
so their next owner stores them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from schemas.output import ProcessorOutput
from sinks.writer import RetryAfter
from streams.runner.feed import Stage
from streams.runner.protocols import Stores


def merge_outputs(outputs: Iterable[ProcessorOutput]) -> ProcessorOutput:
    merged = ProcessorOutput()
    by_table: dict[str, Any] = {}
    for output in outputs:
        for table in output.tables:
            if table.table in by_table:
                by_table[table.table].rows.extend(table.rows)
            else:
                by_table[table.table] = table
                merged.tables.append(table)
        merged.points.extend(output.points)
        merged.erasures.extend(output.erasures)
    return merged


def take_outputs(stages: Sequence[Stage], now_ms: int) -> list[ProcessorOutput]:
    """Every stage's output, its processors flushed (per stage, in stage order)."""
    return [merge_outputs(p.flush(now_ms) for p in stage.all_processors()) for stage in stages]


class StoreStep:
    def __init__(self, stores: Stores) -> None:
        self.stores = stores
        self.rejected = False  # the stores answered "not now" to the batch being stored

    async def store(
        self,
        stages: Sequence[Stage],
        outputs: list[ProcessorOutput],
        still_current: Callable[[], bool],
    ) -> bool:
        """True once the stores have every part of the outputs; False if the batch was
        revoked while the stores refused it."""
        output = merge_outputs(outputs)
        written: set[str] = set()
        while True:
            try:
                await self.stores.write(output, written)
                break
            except RetryAfter as wait:
                self.rejected = True
                await asyncio.sleep(wait.seconds)
                if not still_current():
                    self.rejected = False
                    return False
        self.rejected = False
        for stage, stage_output in zip(stages, outputs, strict=True):
            if stage.observe is not None:
                stage.observe(stage_output)
        return True
