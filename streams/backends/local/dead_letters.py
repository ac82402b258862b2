"""The local `DeadLetters` (streams/runner/protocols.py): records appended to the local
bus as `analytics.events.dlq` records, where the gateway's rejected events go. No
pipeline reads that topic; the records stay in the bus segments until they are
compacted."""

from __future__ import annotations

import asyncio
import logging

from common.bus import BusUnavailable, OutgoingRecord
from schemas.topics import ANALYTICS_EVENTS_DLQ
from streams.backends.local.bus import LocalBus

log = logging.getLogger(__name__)


class BusDeadLetters:
    def __init__(self, bus: LocalBus, max_backoff_s: float = 30.0) -> None:
        self.bus = bus
        self.max_backoff_s = max_backoff_s

    async def send(self, *, key: bytes, value: bytes) -> None:
        """Returns once the record is on the bus (fsync'ed); retried with backoff while
        the bus refuses it, like a store."""
        delay = 0.5
        while True:
            try:
                await self.bus.publish([OutgoingRecord(ANALYTICS_EVENTS_DLQ.name, key, value)])
                return
            except BusUnavailable as exc:
                log.warning("dead letter not on the bus (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)
