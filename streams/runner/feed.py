"""Feed: a batch's messages, decoded, into the stages' processors.

A `Stage` is one processor of a pipeline. A stateful stage has one processor per source
partition (like Kafka Streams tasks), its state persisted per partition; a stateless one
has one processor for every partition (its output must not depend on positions).

Feeding a batch takes a few hundred ms of CPU: it lets the loop in every
FEED_SLICE_RECORDS records, so that the previous batch's store (its state write and
commit) and the fetches go on meanwhile, and stops if the partitions were revoked at
one of those points.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from schemas.output import ProcessorOutput
from streams.processors.base import EventProcessor, Position
from streams.runner.decode import Decoder
from streams.runner.protocols import Message

# Without a pause the previous batch's store could not write its state or commit until
# the feed ended, and the loop then sat waiting for them.
FEED_SLICE_RECORDS = 500


@dataclass
class Stage:
    name: str
    make_processor: Callable[[], Any]
    stateful: bool = False
    # Called with the stage's output once the stores have it (live metrics).
    observe: Callable[[ProcessorOutput], None] | None = None
    # Taken with the stage's output: (key, value) records for the dead-letter topic, sent
    # once the batch is stored, before it is committed.
    take_letters: Callable[[], list[tuple[bytes, bytes]]] | None = None
    processors: dict[int, Any] = field(default_factory=dict)  # stateful: per partition
    shared: Any = None  # stateless: the one processor

    def processor(self, partition: int) -> Any:
        if not self.stateful:
            if self.shared is None:
                self.shared = self.make_processor()
            return self.shared
        processor = self.processors.get(partition)
        if processor is None:
            processor = self.processors[partition] = self.make_processor()
        return processor

    def all_processors(self) -> list[EventProcessor]:
        if not self.stateful:
            return [self.shared] if self.shared is not None else []
        return list(self.processors.values())


@dataclass(slots=True)
class Fed:
    counted: int  # events the records count for
    undecodable: list[tuple[Message, Exception]]


async def feed(
    messages: Sequence[Message],
    stages: Sequence[Stage],
    decoder: Decoder,
    still_current: Callable[[], bool],
) -> Fed | None:
    """Feeds `messages` in order; None if `still_current()` turned false at a slice
    boundary: the stateful processors fed so far are dropped by the revocation and read
    again from the state backend; rows the stateless stages took are written again by the
    next owner's replay, which the idempotent stores absorb."""
    counted = 0
    undecodable: list[tuple[Message, Exception]] = []
    decode = decoder.decode
    apply = decoder.apply
    by_partition: dict[int, list[Any]] = {}
    for n, message in enumerate(messages, 1):
        if n % FEED_SLICE_RECORDS == 0:
            await asyncio.sleep(0)
            if not still_current():
                return None
        try:
            decoded = decode(message)
        except Exception as exc:
            undecodable.append((message, exc))
            continue
        partition = message.partition
        processors = by_partition.get(partition)
        if processors is None:
            processors = by_partition[partition] = [stage.processor(partition) for stage in stages]
        counted += apply(decoded, Position(partition, message.offset), processors)
    return Fed(counted, undecodable)
