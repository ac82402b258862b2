"""Keeps the query cache in step with the stores: polls the sinks' `data_changes`
(sinks/changes.py) every `interval_s` and reports newly changed (project, day) pairs to
the cache (api/cache.py), which then stops serving the answers covering them.

A stored batch therefore shows in every answer covering its days at most `interval_s`
plus one poll query after the sink recorded it (the worker records right after the
batch's inserts). Each poll re-reads `MARGIN_US` behind the newest version seen, so a
writer whose clock runs behind another's by less than that, or whose insert becomes
visible late, is still seen; a pair is reported again only when its version grew.

A poll that fails (ClickHouse unreachable, table not migrated yet) is logged and tried
again at the next interval; the versions missed meanwhile are read then, since the poll
asks for everything past the last version it saw.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import date
from typing import Final

from api.cache import QueryCache
from api.pool import EnginePool
from sinks.changes import MARGIN_US, changes_since

log = logging.getLogger(__name__)

POLL_INTERVAL_S: Final = 0.5


class ChangeWatcher:
    def __init__(
        self, pool: EnginePool, cache: QueryCache, interval_s: float = POLL_INTERVAL_S
    ) -> None:
        self.pool = pool
        self.cache = cache
        self.interval_s = interval_s
        self._seen: dict[tuple[str, date], int] = {}
        self._newest = 0
        self._failing = False

    async def poll(self) -> int:
        """One poll; returns how many (project, day) pairs changed. Raises what the query
        raises (ClickHouseError, OSError)."""
        since = max(0, self._newest - MARGIN_US)
        rows = await self.pool.run(lambda ch: changes_since(ch, since))
        changed = []
        for project, day, version in rows:
            if version > self._seen.get((project, day), 0):
                self._seen[(project, day)] = version
                changed.append((project, day))
            self._newest = max(self._newest, version)
        if changed:
            self.cache.note_changes(changed)
        return len(changed)

    async def run(self) -> None:
        """Poll until cancelled."""
        while True:
            try:
                await self.poll()
                if self._failing:
                    log.info("data versions readable again")
                self._failing = False
            except Exception as exc:  # the loop must outlive any failure, or the cache lags
                if not self._failing:
                    log.warning("cannot read data versions (cached answers may lag): %s", exc)
                self._failing = True
            await asyncio.sleep(self.interval_s)
