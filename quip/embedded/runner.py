"""The embedded stream runner: the local bus → the same pure processors as the Faust
agents → chDB, with processor state and the bus position committed together.

Per batch of frames: feed every record to the processors (bus position = the record's
global sequence number, one partition) → flush → insert each table (idempotent sinks) →
the stored (project, day) pairs in `data_changes` (the API's cache follows them) → one
SQLite transaction storing the stateful processors' state changes *and* the new bus
position; then the bus segments wholly before that position are deleted. A crash anywhere
before that commit replays the batch from the old position onto the old state, so nothing
is lost and the idempotent tables count nothing twice; open plays and funnel progress
survive restarts (first-seen days live in ClickHouse itself).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from quip.embedded.bus import LocalBus
from schemas.events import decode_record
from schemas.output import ProcessorOutput
from schemas.topics import ANALYTICS_EVENTS
from sinks.changes import DATA_CHANGES_TABLE, record_changes, touched_days
from sinks.clickhouse import ClickHouse
from sinks.queries.erasure import erase_users
from streams.metrics import EVENTS_PROCESSED, UNDECODABLE_RECORDS
from streams.pipeline import merge_outputs
from streams.processors.base import EventProcessor, Position, StatefulProcessor, apply_record

log = logging.getLogger(__name__)

BATCH_FRAMES = 256
IDLE_TICK_S = 1.0


class StateStore:
    """SQLite: processor state (`state`) and the bus position (`meta`), one transaction."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False)
        # synchronous stays FULL: a committed position must be durable before the bus
        # segments before it are deleted (one fsync per batch of frames).
        self._db.executescript(
            "PRAGMA journal_mode=WAL;"
            "CREATE TABLE IF NOT EXISTS state (processor TEXT, key TEXT, value BLOB,"
            " PRIMARY KEY (processor, key));"
            "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER);"
        )

    def position(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE name = 'bus_position'").fetchone()
        return int(row[0]) if row else 0

    def load(self, processor: str) -> list[tuple[str, bytes]]:
        rows = self._db.execute("SELECT key, value FROM state WHERE processor = ?", (processor,))
        return [(str(key), bytes(value)) for key, value in rows]

    def commit(self, changes: dict[str, dict[str, bytes | None]], position: int) -> None:
        with self._db:
            for processor, entries in changes.items():
                self._db.executemany(
                    "DELETE FROM state WHERE processor = ? AND key = ?",
                    [(processor, key) for key, value in entries.items() if value is None],
                )
                self._db.executemany(
                    "INSERT OR REPLACE INTO state VALUES (?, ?, ?)",
                    [
                        (processor, key, value)
                        for key, value in entries.items()
                        if value is not None
                    ],
                )
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('bus_position', ?)", (position,))

    def close(self) -> None:
        self._db.close()


class EmbeddedRunner:
    def __init__(
        self,
        bus: LocalBus,
        clickhouse: ClickHouse,
        store: StateStore,
        processors: dict[str, Callable[[], EventProcessor]],
    ) -> None:
        self.bus = bus
        self.clickhouse = clickhouse
        self.store = store
        self.processors = {name: make() for name, make in processors.items()}
        for name, processor in self.processors.items():
            if isinstance(processor, StatefulProcessor):
                for key, value in store.load(name):
                    processor.load_state(key, value)
        self.position = store.position()
        self.last_error: str | None = None

    async def run(self) -> None:
        """Until cancelled. A store that fails is retried with backoff; the position only
        moves once the batch is stored."""
        await self.bus.compact(self.position)  # what a crash kept from the last compaction
        while True:
            frames = await self.bus.read(self.position, BATCH_FRAMES)
            if not frames:
                await self._commit_batch(self.position)  # time-based closing (idle plays)
                await self.bus.wait_for_frames(IDLE_TICK_S)
                continue
            processed = 0
            for frame in frames:
                for index, (topic, _, value) in enumerate(frame.records):
                    if topic != ANALYTICS_EVENTS.name:
                        continue  # dead letters stay in the log file
                    try:
                        record = decode_record(value)
                    except Exception as exc:
                        UNDECODABLE_RECORDS.labels("embedded").inc()
                        log.warning("undecodable record %d: %s", frame.first_seq + index, exc)
                        continue
                    position = Position(0, frame.first_seq + index)
                    processed += apply_record(record, position, self.processors.values())
            await self._commit_batch(frames[-1].end)
            EVENTS_PROCESSED.labels("embedded").inc(processed)

    async def _commit_batch(self, position: int) -> None:
        now_ms = int(time.time() * 1000)
        output = merge_outputs(p.flush(now_ms) for p in self.processors.values())
        await self._store(output)
        changes = {
            name: processor.take_state_changes()
            for name, processor in self.processors.items()
            if isinstance(processor, StatefulProcessor)
        }
        if position != self.position or any(changes.values()):
            await asyncio.to_thread(self.store.commit, changes, position)
            self.position = position
            await self.bus.compact(position)

    async def _store(self, output: ProcessorOutput) -> None:
        delay = 0.5
        done: set[str] = set()
        while True:
            try:
                if output.erasures and "erasures" not in done:
                    await asyncio.to_thread(erase_users, self.clickhouse, output.erasures)
                    done.add("erasures")
                for table in output.tables:
                    if table.rows and table.table not in done:
                        await asyncio.to_thread(
                            self.clickhouse.insert, table.table, table.columns, table.rows
                        )
                        done.add(table.table)
                if DATA_CHANGES_TABLE not in done:
                    changes = touched_days(output.tables)
                    await asyncio.to_thread(record_changes, self.clickhouse, changes)
                    done.add(DATA_CHANGES_TABLE)
                self.last_error = None
                return
            except Exception as exc:
                self.last_error = f"chDB insert failed: {exc}"
                log.warning("%s; retrying in %.1fs", self.last_error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
