"""The query API (SPEC §5) and the dashboard: `quip api`, and part of `quip up`.

`create_app(settings, clickhouse)` builds one app. The ClickHouse engine is injectable:
- given an `EmbeddedClickHouse` (chDB, thread-safe), requests share it;
- given any other engine (a `ServerClickHouse` is one connection), requests take turns on
  it — meant for tests and single-user tools;
- given nothing: cluster mode opens a pool of up to POOL_SIZE `ServerClickHouse`
  connections to QUIP_CLICKHOUSE_URL (one per concurrent query; the schema is the
  `quip migrate` job's), embedded mode opens chDB under QUIP_DATA_DIR and applies pending
  migrations (the process owns that directory).
Predefined funnels are read from QUIP_FUNNELS_FILE here, so a bad file stops start-up
(FunnelConfigError) instead of failing requests.

User erasures are also put on the bus (`publisher`), so the workers forget the user's state:
`quip up` hands its local bus over; in cluster mode the app opens its own Kafka producer
(started and stopped with the app) unless one is given; otherwise erasures only delete rows.

Routes: one router per resource under api/routes/ (the dashboard page included);
`/health`, `/ready` (ClickHouse answers `SELECT 1`) and `/metrics` (Prometheus, with
`cache_hit_ratio`) from common/ops.py.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import BaseRoute

from api.cache import QueryCache, utc_today
from api.context import ApiContext
from api.errors import install_error_handlers
from api.pool import POOL_SIZE, EnginePool
from api.routes import (
    active_users,
    dashboard,
    events,
    funnels,
    insights,
    playback,
    retention,
    services,
    users,
)
from common.auth import KeyRing
from common.bus import Publisher
from common.ops import HttpMetricsMiddleware, health_response, metrics_response, readiness_endpoint
from common.producer import GroupCommitProducer
from common.settings import Mode, Settings
from schemas.funnels import load_funnels
from sinks.clickhouse import ClickHouse, ClickHouseError, EmbeddedClickHouse, ServerClickHouse
from sinks.engines import open_clickhouse
from sinks.migrate import migrate

log = logging.getLogger(__name__)

# Net allocations of tracked objects between young collections in a running API (CPython's
# default is 700). A large answer (playback by content_id: ~20k rows and dicts) ran dozens
# of young collections that freed nothing, since an answer holds no cycles and dies with its
# request (the cost: benchmarks/README.md, "Playback by content_id re-measured"). Set once
# for the whole process (the engine pool's threads included), not per query.
GC_YOUNG_THRESHOLD = 100_000

ROUTERS = (
    active_users.router,
    retention.router,
    funnels.router,
    insights.router,
    playback.router,
    events.router,
    services.router,
    users.router,
    dashboard.router,  # GET / and /dashboard, and the page's assets
)


def engine_pool(
    settings: Settings, clickhouse: ClickHouse | None, size: int = POOL_SIZE
) -> EnginePool:
    """The pool for an injected engine, or for the engine the settings describe."""
    if isinstance(clickhouse, EmbeddedClickHouse):
        return EnginePool.shared_engine(clickhouse, size)
    if clickhouse is not None:
        return EnginePool.single(clickhouse)
    if settings.mode is Mode.CLUSTER:
        url = settings.clickhouse_url
        return EnginePool.of_connections(lambda: ServerClickHouse(url), size)
    embedded = open_clickhouse(settings, embedded=True)
    migrate(embedded)  # this process owns the data directory (cluster: `quip migrate` job)
    return EnginePool.shared_engine(embedded, size, owned=True)


def _route_paths(routes: Iterable[BaseRoute]) -> list[str]:
    return [path for route in routes if (path := getattr(route, "path", None))]


def create_app(
    settings: Settings | None = None,
    clickhouse: ClickHouse | None = None,
    *,
    pool_size: int = POOL_SIZE,
    cache: QueryCache | None = None,
    publisher: Publisher | None = None,
    more_checks: Callable[[], dict[str, str]] | None = None,
) -> FastAPI:
    """The query API app. Raises ValueError when cluster mode lacks read or admin keys,
    FunnelConfigError for a bad QUIP_FUNNELS_FILE. `more_checks`: what else `/ready`
    reports, from the process that embeds the API (`quip up`)."""
    settings = settings or Settings()
    settings.require_keys("read_keys", "admin_keys")
    definitions = load_funnels(settings.funnels_file) if settings.funnels_file else []
    own_publisher = publisher is None and settings.mode is Mode.CLUSTER
    if own_publisher:
        publisher = GroupCommitProducer(settings.kafka_bootstrap, lanes=1, client_id="quip-api")
    context = ApiContext(
        settings=settings,
        read_keys=KeyRing(settings.read_key_projects),
        admin_keys=KeyRing(settings.admin_key_projects),
        pool=engine_pool(settings, clickhouse, pool_size),
        cache=cache if cache is not None else QueryCache(),
        funnels={definition.name: definition for definition in definitions},
        today=utc_today,
        publisher=publisher,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if own_publisher and publisher is not None:
            await publisher.start()
        thresholds = gc.get_threshold()
        gc.set_threshold(GC_YOUNG_THRESHOLD, *thresholds[1:])
        context.start()
        try:
            yield
        finally:
            await context.close()
            if own_publisher and publisher is not None:
                await publisher.stop()
            gc.set_threshold(*thresholds)

    async def readiness() -> dict[str, Any]:
        checks = more_checks() if more_checks is not None else {}
        try:
            await context.pool.run(lambda ch: ch.execute("SELECT 1"))
        except (ClickHouseError, OSError) as exc:
            return {**checks, "clickhouse": f"unreachable: {str(exc).splitlines()[0][:200]}"}
        return {**checks, "clickhouse": "ok"}

    app = FastAPI(
        title="Qui Pipeline query API",
        summary="Active users, retention, funnels, playback quality, event and service "
        "metrics of Qui Browser VR telemetry (SPEC §5)",
        version="1",
        lifespan=lifespan,
    )
    app.state.context = context
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    app.add_route("/health", health_response, methods=["GET"])
    app.add_route("/ready", readiness_endpoint(readiness), methods=["GET"])
    app.add_route("/metrics", metrics_response, methods=["GET"])

    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "Cache-Control"],
            max_age=600,
        )
    known = _route_paths(app.routes) + _route_paths(r for router in ROUTERS for r in router.routes)
    app.add_middleware(HttpMetricsMiddleware, known_routes=known)
    return app
