"""Answers of the read endpoints: cache lookup → (one shared query per key) → validate and
serialize through the endpoint's response model → cache → JSON response.

- Hit: the stored bytes, `X-Cache: hit`.
- Stale (past the TTL, within the stale window; api/cache.py): the stored bytes at once,
  `X-Cache: stale`, and the query starts in the background (or is already running) to
  replace them, so a slow query of today's growing data delays no request once cached.
- Miss: the query runs in the engine pool as its own task; concurrent requests for the
  same key wait for that task instead of querying again, and a client that disconnects
  does not cancel it. The result goes through the response model's TypeAdapter
  (validate, then dump_json), so what is sent is exactly what the OpenAPI document says.
  An endpoint whose query function already builds exactly the model's fields and types
  may pass `encode` (orjson) instead: validating the 20k rows of playback by content_id
  costs more than the query (tests/integration/test_api.py checks the two agree).
  `X-Cache: miss`.
- A ValueError from a query function is a refused argument: 400 (`BadRequest`). The
  endpoints check their parameters first, so this is a safety net, not the usual path.
  ClickHouseError propagates (the app answers 503).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import date
from typing import Any

from pydantic import TypeAdapter
from starlette.responses import Response

from api.cache import CacheKey, QueryCache
from api.metrics import QUERY_DURATION
from api.params import BadRequest
from api.pool import EnginePool
from sinks.clickhouse import ClickHouse

Query = Callable[[ClickHouse], object]


class JSONBytes(Response):
    media_type = "application/json"


class Results:
    def __init__(self, pool: EnginePool, cache: QueryCache) -> None:
        self.pool = pool
        self.cache = cache
        self._inflight: dict[tuple[CacheKey, int], asyncio.Task[bytes]] = {}

    async def respond(
        self,
        *,
        endpoint: str,
        project: str,
        params: tuple[tuple[str, str], ...],
        last_day: date,
        adapter: TypeAdapter[Any],
        query: Query,
        encode: Callable[[Any], bytes] | None = None,
    ) -> Response:
        """The endpoint's answer for `params` (canonical, every parameter that changes the
        answer besides the project); `last_day` is the last UTC day the answer depends on
        (the cache's closed/open rule)."""
        key = CacheKey(endpoint, project, params)
        cached = self.cache.get(key)
        if cached is not None and not cached.stale:
            return JSONBytes(cached.value, headers={"X-Cache": "hit"})
        # A query started before an invalidation (erasure) is not joined by later requests.
        flight = (key, self.cache.generation(project))
        task = self._inflight.get(flight)
        if task is None:
            task = asyncio.create_task(
                self._compute(key, last_day, flight[1], adapter, query, encode)
            )
            self._inflight[flight] = task
            task.add_done_callback(lambda done: self._finished(flight, done))
        if cached is not None:
            return JSONBytes(cached.value, headers={"X-Cache": "stale"})
        body = await asyncio.shield(task)
        return JSONBytes(body, headers={"X-Cache": "miss"})

    async def _compute(
        self,
        key: CacheKey,
        last_day: date,
        generation: int,
        adapter: TypeAdapter[Any],
        query: Query,
        encode: Callable[[Any], bytes] | None,
    ) -> bytes:
        started = time.perf_counter()
        try:
            result = await self.pool.run(query)
        except ValueError as exc:
            raise BadRequest(str(exc)) from exc
        QUERY_DURATION.labels(key.endpoint).observe(time.perf_counter() - started)
        if encode is None:
            body = adapter.dump_json(adapter.validate_python(result))
        else:
            body = encode(result)
        self.cache.put(key, body, last_day, generation=generation)
        return body

    def _finished(self, flight: tuple[CacheKey, int], task: asyncio.Task[bytes]) -> None:
        if self._inflight.get(flight) is task:
            del self._inflight[flight]
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have gone away
