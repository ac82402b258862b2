"""Events → one row per (project, user, UTC day) for `user_activity_input`.

Stateless as far as correctness goes: the sink ORs day bits and takes the min first day,
so emitting a row twice is harmless. The processor only remembers which user-days it has
already emitted to avoid sending the same row for every event of a busy user; that memory
is a bounded set of 64-bit hashes, cleared when full (re-emitting is always safe).
"""

from __future__ import annotations

from datetime import date, timedelta

from schemas.events import EventRecord
from schemas.output import ProcessorOutput, TableRows
from streams.processors.base import Position

DAY_MS = 86_400_000
_EPOCH = date(1970, 1, 1)

ACTIVITY_TABLE = "user_activity_input"
ACTIVITY_COLUMNS = ("project", "user_id", "day")


def utc_day(ts_ms: int) -> date:
    return _day(ts_ms // DAY_MS)


def _day(day_number: int) -> date:
    return _EPOCH + timedelta(days=day_number)


class ActivityProcessor:
    def __init__(self, remember_at_most: int = 250_000) -> None:
        self._remember_at_most = remember_at_most
        # hash() of (project, user_id, day number): a false "already sent" needs a 64-bit
        # collision between live user-days, about 1e-8 at a million entries.
        self._emitted: set[int] = set()
        self._pending: dict[int, tuple[str, str, int]] = {}
        self._days: dict[int, date] = {}  # day number -> date, built once per day

    def process(self, record: EventRecord, position: Position) -> None:
        del position  # idempotent output: replays need no bookkeeping
        project = record.project
        emitted, pending = self._emitted, self._pending
        for event in record.events:
            row = (project, event.user_id, event.ts // DAY_MS)
            key = hash(row)
            if key not in emitted and key not in pending:
                pending[key] = row

    def erase(self, project: str, user_id: str) -> None:
        self._pending = {
            key: row for key, row in self._pending.items() if row[0] != project or row[1] != user_id
        }
        # Hashes cannot tell whose they are; forgetting them all only re-sends some rows.
        self._emitted.clear()

    def flush(self, now_ms: int) -> ProcessorOutput:
        del now_ms
        if not self._pending:
            return ProcessorOutput()
        days = self._days
        rows = [
            (
                project,
                user_id,
                days.get(day_number) or days.setdefault(day_number, _day(day_number)),
            )
            for project, user_id, day_number in self._pending.values()
        ]
        if len(self._emitted) + len(self._pending) > self._remember_at_most:
            self._emitted.clear()
        self._emitted.update(self._pending)
        self._pending = {}
        return ProcessorOutput(tables=[TableRows(ACTIVITY_TABLE, ACTIVITY_COLUMNS, rows)])
