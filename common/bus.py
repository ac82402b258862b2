"""The bus as its writers see it: records, the `Publisher` protocol, and the error that
says a batch was not taken. Kafka (common/producer.py) and the local bus of `quip up`
(streams/backends/local/bus.py) implement it; the gateway and the API publish through
it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class OutgoingRecord:
    topic: str
    key: bytes
    value: bytes


class BusUnavailable(RuntimeError):
    """The bus did not take the batch in time; nothing of it is visible to consumers.
    `retry_after_s` is the Retry-After the HTTP answer gives."""

    def __init__(self, reason: str, retry_after_s: int) -> None:
        super().__init__(reason)
        self.retry_after_s = retry_after_s


class Publisher(Protocol):
    """Where accepted batches go: Kafka (cluster) or the embedded bus (`quip up`)."""

    @property
    def ready(self) -> bool: ...

    last_error: str | None

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def publish(self, records: Sequence[OutgoingRecord]) -> None: ...
