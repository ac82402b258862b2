"""What the pipeline core (streams/runner/pipeline.py) runs over: a source of records, a
state backend for the stateful processors, the stores its output goes to, and where
undecodable records go. The Kafka backend (streams/backends/kafka/) and the local one
(streams/backends/local/) implement them; the core knows neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from schemas.output import ProcessorOutput

# Where a source's partition is read, e.g. (topic, partition): the key of `Positions`.
SourcePartition = tuple[str, int]
# Per source partition, where reading resumes after a batch: what a commit stores.
Positions = dict[SourcePartition, int]
# Per stateful stage, per partition: state key → serialized state (stored entries only).
LoadedState = dict[str, dict[int, dict[str, bytes]]]
# (stage, partition, key → serialized state or None = deleted): one unit of persisted state.
StateChanges = tuple[str, int, dict[str, bytes | None]]


class Message(Protocol):
    """One record as a source fetched it (aiokafka's `ConsumerRecord` is one)."""

    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...

    @property
    def value(self) -> bytes | None: ...


@dataclass(slots=True)
class Fetch:
    """What one fetch returned, in order: `positions` has, for every partition with
    records in `messages`, where reading resumes after them (past any transaction
    markers that followed): committing it commits exactly these records."""

    messages: list[Message]
    positions: Positions


class Rebalance(Protocol):
    """What a source tells the core about its assignment (the core implements it).
    Rebalances are eager: `revoke` takes every partition, then `assign` gives the new
    ones."""

    async def revoke(self) -> None: ...

    def assign(self, partitions: list[int]) -> None: ...


class Source(Protocol):
    """Records in, positions committed. `fetch` is called in a loop even while paused:
    a Kafka consumer's group membership lives on those calls."""

    async def start(self, rebalance: Rebalance) -> None:
        """Begin reading; assignments and revocations are announced to `rebalance`
        (before `start` returns or from within `fetch`)."""

    async def fetch(self, timeout_s: float) -> Fetch | None:
        """Records of the active assignment, or None after at most `timeout_s`."""

    def pause(self) -> None:
        """Stop returning records (the source may drop what it prefetched)."""

    def resume(self) -> None: ...

    def is_paused(self) -> bool: ...

    async def commit(self, positions: Positions) -> None:
        """The records before `positions` are stored and their state persisted: they
        are never to be read again. The source may defer the write (see `flush`)."""

    async def flush(self) -> None:
        """Write deferred commits now (on revocation and stop); a failure is logged and
        the records are replayed."""

    async def stop(self) -> None: ...


class StateBackend(Protocol):
    """Where stateful stages keep their state, per partition."""

    async def load(self, stages: Sequence[str], partitions: Sequence[int]) -> LoadedState:
        """Every stored entry of the stages' state in the partitions. Raises while the
        backend is unreachable (the core retries)."""

    async def persist(self, changes: Sequence[StateChanges], positions: Positions) -> None:
        """Returns once the changes are durable. A backend that keeps source positions
        with the state (SQLite beside the local bus) stores `positions` in the same
        transaction; one that does not (Kafka changelogs) ignores them."""


class Stores(Protocol):
    async def write(self, output: ProcessorOutput, written: set[str]) -> None:
        """Store every part of `output` not named in `written`, adding each stored
        part's name. Raises `RetryAfter` (sinks/writer.py) if a part could not be stored;
        called again with the same `written`, only the missing parts are retried. Stores
        deduplicate: writing a part twice counts it once."""


class DeadLetters(Protocol):
    """The dead-letter topic. `send` returns once the record is handed over (what it
    returns is the sender's, e.g. Faust's delivery future)."""

    async def send(self, *, key: bytes, value: bytes) -> object: ...
