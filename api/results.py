"""Answers of the read endpoints: cache lookup → (one shared query per key) → validate and
serialize through the endpoint's response model → cache → JSON response.

- Hit: the stored bytes, `X-Cache: hit`.
- Stale (past the TTL, within the stale window, days unchanged; api/cache.py): the stored
  bytes at once, `X-Cache: stale`, and the query starts in the background (or is already
  running) to replace them.
- Miss (nothing cached, or a day of the answer changed since it was computed): the query
  runs in the engine pool as its own task; concurrent requests for the same key wait for
  that task instead of querying again — unless the answer's days changed after it started
  (then a new query starts) —, and a client that disconnects does not cancel it.
- `fresh` (the request said `Cache-Control: no-cache`): the cache is not read and the
  request joins no earlier query; its answer is stored for the next requests.
  `X-Cache: miss`.
- A computed result goes through the response model's TypeAdapter (validate, then
  dump_json), so what is sent is exactly what the OpenAPI document says. An endpoint
  whose query function already builds exactly the model's fields and types may pass
  `encode` (orjson) instead: validating the 20k rows of playback by content_id costs more
  than the query (tests/integration/test_api.py checks the two agree).
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
        first_day: date = date.min,
        fresh: bool = False,
    ) -> Response:
        """The endpoint's answer for `params` (canonical, every parameter that changes the
        answer besides the project); the answer depends on the stored rows of the UTC days
        `first_day`..`last_day` (what a reported change drops; `last_day` also picks the
        cache's closed/open TTL)."""
        key = CacheKey(endpoint, project, params)
        cached = None if fresh else self.cache.get(key)
        if cached is not None and not cached.stale:
            return JSONBytes(cached.value, headers={"X-Cache": "hit"})
        # Requests join a running query only while none of its days changed since it began.
        flight = (key, self.cache.changed_epoch(project, first_day, last_day))
        task = None if fresh else self._inflight.get(flight)
        if task is None:
            task = asyncio.create_task(
                self._compute(key, first_day, last_day, self.cache.epoch(), adapter, query, encode)
            )
            if not fresh:
                self._inflight[flight] = task
            task.add_done_callback(lambda done: self._finished(flight, done))
        if cached is not None:
            return JSONBytes(cached.value, headers={"X-Cache": "stale"})
        body = await asyncio.shield(task)
        return JSONBytes(body, headers={"X-Cache": "miss"})

    async def _compute(
        self,
        key: CacheKey,
        first_day: date,
        last_day: date,
        epoch: int,
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
        self.cache.put(key, body, last_day, epoch=epoch, first_day=first_day)
        return body

    def _finished(self, flight: tuple[CacheKey, int], task: asyncio.Task[bytes]) -> None:
        if self._inflight.get(flight) is task:
            del self._inflight[flight]
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have gone away
