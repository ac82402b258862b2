"""The local `StateBackend` (streams/runner/protocols.py): SQLite beside the local bus.

One database for the pipelines of `quip up`: `state (processor, key, value)` holds the
stateful stages' state (one partition: the bus), `meta (name, value)` each pipeline's
bus position. `persist` writes a batch's state changes *and* its pipeline's position in
one transaction, so after a crash the state and the position where reading resumes
always belong together: the records after it are replayed onto exactly the state they
had not reached.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

from streams.runner.protocols import LoadedState, Positions, StateChanges

BUS_PARTITION = ("bus", 0)  # the one partition of the local bus, as a position key


class SqliteState:
    """The database of `path`; `for_pipeline` gives each pipeline its backend."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False)
        # Both pipelines persist from worker threads: one transaction at a time.
        self._lock = threading.Lock()
        # synchronous stays FULL: a committed position must be durable before the bus
        # segments before it are deleted (one fsync per batch).
        self._db.executescript(
            "PRAGMA journal_mode=WAL;"
            "CREATE TABLE IF NOT EXISTS state (processor TEXT, key TEXT, value BLOB,"
            " PRIMARY KEY (processor, key));"
            "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER);"
        )

    def for_pipeline(self, position_name: str) -> PipelineState:
        return PipelineState(self, position_name)

    def position(self, name: str) -> int | None:
        """The bus position stored as `name`; None if none was."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else None

    def load(self, processor: str) -> dict[str, bytes]:
        with self._lock:
            rows = self._db.execute(
                "SELECT key, value FROM state WHERE processor = ?", (processor,)
            ).fetchall()
        return {str(key): bytes(value) for key, value in rows}

    def commit(
        self, changes: Sequence[StateChanges], position_name: str, position: int | None
    ) -> None:
        with self._lock, self._db:
            for processor, _, entries in changes:
                self._db.executemany(
                    "DELETE FROM state WHERE processor = ? AND key = ?",
                    [(processor, key) for key, value in entries.items() if not value],
                )
                self._db.executemany(
                    "INSERT OR REPLACE INTO state VALUES (?, ?, ?)",
                    [(processor, key, value) for key, value in entries.items() if value],
                )
            if position is not None:
                self._db.execute(
                    "INSERT OR REPLACE INTO meta VALUES (?, ?)", (position_name, position)
                )

    def close(self) -> None:
        self._db.close()


class PipelineState:
    """One pipeline's view: its stages' state and its position `position_name`."""

    def __init__(self, database: SqliteState, position_name: str) -> None:
        self.database = database
        self.position_name = position_name

    def position(self) -> int | None:
        return self.database.position(self.position_name)

    async def load(self, stages: Sequence[str], partitions: Sequence[int]) -> LoadedState:
        assert list(partitions) == [BUS_PARTITION[1]], partitions
        return {
            stage: {BUS_PARTITION[1]: await asyncio.to_thread(self.database.load, stage)}
            for stage in stages
        }

    async def persist(self, changes: Sequence[StateChanges], positions: Positions) -> None:
        await asyncio.to_thread(
            self.database.commit, changes, self.position_name, positions.get(BUS_PARTITION)
        )
