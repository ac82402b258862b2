"""ClickHouse engines lent to worker threads, one query at a time per connection.

Queries block (clickhouse-driver sockets, chDB calls), so they run in the threadpool and
never on the event loop. At most `size` run at once; further requests wait for a slot.

- Server engine: `ServerClickHouse` is one connection and not thread-safe, so the pool
  keeps up to `size` of them, opened lazily by `connect` (a request never waits for a
  connection another request is using). A connection whose query raised is closed and
  replaced, since it may be mid-protocol. A pool built on one given connection
  (`EnginePool.single`) serializes on it and keeps it whatever happens.
- Embedded engine: chDB sessions are thread-safe, so every slot shares the one engine.

Each query runs in its own task that the caller awaits through `asyncio.shield`: a caller
cancelled while its query runs (client gone, shutdown) returns at once, but the slot and
the connection stay taken until the thread has returned (a native `Task.cancel()` would
otherwise release anyio's slot while the thread still runs). `aclose()` waits for those
queries before closing connections, so none is closed — or reused — under a running query.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any, Final, TypeVar

import anyio
import anyio.to_thread

from sinks.clickhouse import ClickHouse

log = logging.getLogger(__name__)

T = TypeVar("T")

POOL_SIZE: Final = 8


class EnginePool:
    def __init__(
        self,
        *,
        size: int,
        connect: Callable[[], ClickHouse] | None = None,
        shared: ClickHouse | None = None,
        fixed: ClickHouse | None = None,
        owned: bool = True,
    ) -> None:
        if size < 1:
            raise ValueError("pool size must be >= 1")
        if sum(x is not None for x in (connect, shared, fixed)) != 1:
            raise ValueError("give exactly one of connect, shared or fixed")
        self.size = 1 if fixed is not None else size
        self._connect = connect
        self._shared = shared
        self._owned = owned
        self._idle: list[ClickHouse] = [fixed] if fixed is not None else []
        self._lock = threading.Lock()
        self._slots: anyio.CapacityLimiter | None = None
        self._running: set[asyncio.Future[Any]] = set()
        self.opened = 0  # connections opened by `connect` since start (for tests, metrics)

    @classmethod
    def of_connections(cls, connect: Callable[[], ClickHouse], size: int = POOL_SIZE) -> EnginePool:
        """Up to `size` connections from `connect` (server engine); closed by aclose()."""
        return cls(size=size, connect=connect)

    @classmethod
    def shared_engine(
        cls, engine: ClickHouse, size: int = POOL_SIZE, *, owned: bool = False
    ) -> EnginePool:
        """A thread-safe engine (chDB) used by `size` threads at once."""
        return cls(size=size, shared=engine, owned=owned)

    @classmethod
    def single(cls, engine: ClickHouse, *, owned: bool = False) -> EnginePool:
        """One non-thread-safe engine, one query at a time."""
        return cls(size=1, fixed=engine, owned=owned)

    async def run(self, query: Callable[[ClickHouse], T]) -> T:
        """Run `query(engine)` in a worker thread; its exceptions propagate."""
        if self._slots is None:
            self._slots = anyio.CapacityLimiter(self.size)
        task = asyncio.ensure_future(
            anyio.to_thread.run_sync(self._call, query, limiter=self._slots)
        )
        self._running.add(task)
        task.add_done_callback(self._forget)
        return await asyncio.shield(task)

    def _forget(self, task: asyncio.Future[Any]) -> None:
        self._running.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: its caller may have gone away

    def _call(self, query: Callable[[ClickHouse], T]) -> T:
        if self._shared is not None:
            return query(self._shared)
        engine = self._take()
        healthy = False
        try:
            result = query(engine)
            healthy = True
            return result
        finally:
            self._give_back(engine, healthy)

    def _take(self) -> ClickHouse:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        assert self._connect is not None  # a fixed pool always has its engine idle here
        engine = self._connect()
        with self._lock:
            self.opened += 1
        return engine

    def _give_back(self, engine: ClickHouse, healthy: bool) -> None:
        if not healthy and self._connect is not None:
            _close_quietly(engine)
            return
        with self._lock:
            self._idle.append(engine)

    async def aclose(self) -> None:
        """Wait for running queries, then close the connections this pool opened (and a
        given engine it was told it owns). For application shutdown."""
        if self._running:
            await asyncio.wait(list(self._running))
        with self._lock:
            idle, self._idle = self._idle, []
        if self._connect is not None or self._owned:
            for engine in idle:
                _close_quietly(engine)
        if self._shared is not None and self._owned:
            _close_quietly(self._shared)


def _close_quietly(engine: ClickHouse) -> None:
    try:
        engine.close()
    except Exception:  # closing a broken connection must not mask what broke it
        log.debug("closing a ClickHouse connection failed", exc_info=True)
