"""Everything a request handler needs, built once per app by `create_app` and reached
through the dependencies in api/deps.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Final

from api.cache import QueryCache
from api.freshness import ChangeWatcher
from api.pool import EnginePool
from api.results import Results
from common.auth import KeyRing
from common.bus import Publisher
from common.settings import Settings
from schemas.funnels import FunnelDefinition
from sinks.clickhouse import ClickHouseError
from sinks.queries.erasure import pending_mutations

log = logging.getLogger(__name__)

# After an erasure, how often and how long to wait for background mutations (18.16)
# before dropping the project's cached answers a second time.
MUTATION_POLL_S: Final = 1.0
MUTATION_WAIT_S: Final = 900.0


@dataclass
class ApiContext:
    settings: Settings
    read_keys: KeyRing
    admin_keys: KeyRing
    pool: EnginePool
    cache: QueryCache
    funnels: dict[str, FunnelDefinition]
    today: Callable[[], date]
    publisher: Publisher | None = None  # where erasures go for the workers (api/app.py)
    results: Results = field(init=False)
    changes: ChangeWatcher = field(init=False)
    _watchers: set[asyncio.Task[None]] = field(default_factory=set, init=False)

    def __post_init__(self) -> None:
        self.results = Results(self.pool, self.cache)
        self.changes = ChangeWatcher(self.pool, self.cache)

    def start(self) -> None:
        """Start following the stores' data versions (the cache's freshness); `close`
        stops it."""
        task = asyncio.create_task(self.changes.run())
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    def erased(self, project: str) -> None:
        """A user of `project` was just erased: drop the project's cached answers now, and
        again once the engine has applied the deletions (on 18.16 they are background
        mutations, so answers computed meanwhile may still include the user)."""
        self.cache.invalidate_project(project)
        task = asyncio.create_task(self._invalidate_when_applied(project))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def _invalidate_when_applied(self, project: str) -> None:
        deadline = time.monotonic() + MUTATION_WAIT_S
        try:
            while time.monotonic() < deadline:
                if await self.pool.run(pending_mutations) == 0:
                    break
                await asyncio.sleep(MUTATION_POLL_S)
            else:
                log.warning("erasure mutations still pending after %.0f s", MUTATION_WAIT_S)
        except ClickHouseError as exc:
            log.warning("could not watch erasure mutations: %s", exc)
        finally:
            self.cache.invalidate_project(project)

    async def close(self) -> None:
        for task in list(self._watchers):
            task.cancel()
        for task in list(self._watchers):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.pool.aclose()
