"""`quip up`: the whole pipeline in one process on one port — gateway endpoints, the
service bus endpoint (`POST /v1/services/{topic}`), the local bus, the worker's two
pipelines (events and services: the pipeline core of streams/runner/, built by
`build_pipelines` as the worker builds them) on the local backend (streams/backends/local/:
the bus, SQLite state), chDB, the query API and the dashboard. Data (chDB, bus log,
processor state, dev keys) lives under QUIP_DATA_DIR (default ./.quip).

As in the worker, a pipeline that raises ends the process with status 70, its reason on
`/ready` meanwhile (common/supervision.py); `/ready` also reports the bus writer and the
store step's last ClickHouse (chDB) write, and answers 503 when any is not ok."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from pydantic import SecretStr

from api.app import create_app as create_api_app
from common.settings import Settings, generate_dev_keys
from common.supervision import pipeline_checks, supervise
from ingest.app import Gateway, add_ingest_routes
from ingest.openapi import describe_ingest_routes
from ingest.services import add_service_routes
from sinks.clickhouse import EmbeddedClickHouse
from sinks.engines import chdb_path
from sinks.migrate import migrate
from sinks.writer import SinkHealth, SinkWriter
from streams.backends.local.backend import local_backend
from streams.backends.local.bus import LocalBus
from streams.backends.local.state import SqliteState
from streams.runner.build import build_pipelines

KEY_KINDS = ("write_keys", "read_keys", "admin_keys")


def settings_with_dev_keys(settings: Settings) -> Settings:
    """Keys not given in the environment are generated once and kept in
    `<data dir>/dev-keys.json` (mode 0600), so a restart keeps working clients working."""
    path = settings.data_dir / "dev-keys.json"
    stored: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    missing = [kind for kind in KEY_KINDS if not getattr(settings, kind).get_secret_value()]
    for kind in missing:
        stored.setdefault(kind, generate_dev_keys())
    if missing:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(stored, indent=2))
        path.chmod(0o600)
    return settings.model_copy(update={kind: SecretStr(stored[kind]) for kind in missing})


# How long a closed play stays in memory for late events and client retries; it is forgotten
# once both event time and arrival time are this far past it. The cluster default (2 x the
# idle timeout) kept every play of a `quip simulate` backfill in memory, since arrival time
# moves only minutes during one (~5.5 KB a play: 1.4 GB after 10M events). One minute covers
# client retries; an event arriving later for a forgotten play starts a new state whose row
# has fewer events and loses to the full one (see the plays processor), so it is not counted.
PLAY_GRACE_MS = 60_000


def create_embedded_app(settings: Settings) -> FastAPI:
    settings = settings_with_dev_keys(settings)
    clickhouse = EmbeddedClickHouse(chdb_path(settings))
    migrate(clickhouse)
    bus = LocalBus(settings.data_dir / "bus", segment_bytes=settings.bus_segment_mb * 1024 * 1024)
    database = SqliteState(settings.data_dir / "state.sqlite")
    health = SinkHealth()
    backend = local_backend(bus, database, lambda: SinkWriter(lambda: clickhouse, None, health))
    # No InfluxDB here: the plays processor leaves the live series out altogether.
    pipelines = build_pipelines(
        settings, backend, play_grace_ms=PLAY_GRACE_MS, live_series=False
    )
    crashed: dict[str, str] = {}

    def readiness() -> dict[str, str]:
        checks = {"bus": "ok" if bus.ready else (bus.last_error or "not ready")}
        checks.update(pipeline_checks((pipelines.events.name, pipelines.services.name), crashed))
        checks["store:clickhouse"] = health.status.get("clickhouse", "ok")
        return checks

    app = create_api_app(settings, clickhouse, publisher=bus, more_checks=readiness)
    gateway = Gateway(settings, bus)
    describe_ingest_routes(
        app, [*add_ingest_routes(app, gateway), *add_service_routes(app, gateway)]
    )
    api_lifespan = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(inner: FastAPI) -> AsyncIterator[None]:
        await bus.start()
        tasks = [
            asyncio.create_task(
                supervise(crashed, pipeline.name, pipeline.run()), name=f"{pipeline.name}-pipeline"
            )
            for pipeline in (pipelines.events, pipelines.services)
        ]
        try:
            async with api_lifespan(inner):
                yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await bus.stop()
            database.close()

    app.router.lifespan_context = lifespan
    app.state.settings = settings
    app.state.pipelines = pipelines
    app.state.store_health = health
    return app


def embedded_factory() -> FastAPI:
    """For uvicorn's factory mode: settings from the environment `quip up` prepared."""
    return create_embedded_app(Settings())


def announce(settings: Settings, port: int) -> str:
    keys = settings_with_dev_keys(settings)
    lines = [f"Qui Pipeline is up: http://{settings.host}:{port}/  (dashboard)"]
    for kind in KEY_KINDS:
        value = getattr(keys, kind).get_secret_value()
        lines.append(f"  QUIP_{kind.upper()}={value}")
    lines.append(f"  data: {Path(os.path.abspath(settings.data_dir))}")
    return "\n".join(lines)
