"""`quip up`: the whole pipeline in one process on one port — gateway endpoints, the local
bus, the embedded runner with the same processors as the Faust agents, chDB, the query API
and the dashboard. Data (chDB, bus log, processor state, dev keys) lives under
QUIP_DATA_DIR (default ./.quip)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from pydantic import SecretStr

from api.app import create_app as create_api_app
from common.settings import Settings, generate_dev_keys
from ingest.app import Gateway, add_ingest_routes
from ingest.openapi import describe_ingest_routes
from quip.embedded.bus import LocalBus
from quip.embedded.runner import EmbeddedRunner, StateStore
from schemas.funnels import load_funnels
from sinks.clickhouse import EmbeddedClickHouse
from sinks.engines import chdb_path
from sinks.migrate import migrate
from streams.processors.activity import ActivityProcessor
from streams.processors.events import EventsProcessor
from streams.processors.funnels import FunnelsProcessor
from streams.processors.plays import PlaysProcessor

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


def processor_factories(settings: Settings) -> dict[str, Any]:
    idle_timeout_ms = settings.play_idle_timeout_s * 1000
    factories: dict[str, Any] = {
        "events": EventsProcessor,
        "activity": ActivityProcessor,
        "plays": lambda: PlaysProcessor(idle_timeout_ms=idle_timeout_ms, grace_ms=PLAY_GRACE_MS),
    }
    funnels = load_funnels(settings.funnels_file) if settings.funnels_file else []
    if funnels:
        factories["funnels"] = lambda: FunnelsProcessor(
            funnels, max_event_age_days=settings.max_event_age_days
        )
    return factories


def create_embedded_app(settings: Settings) -> FastAPI:
    settings = settings_with_dev_keys(settings)
    clickhouse = EmbeddedClickHouse(chdb_path(settings))
    migrate(clickhouse)
    bus = LocalBus(settings.data_dir / "bus", segment_bytes=settings.bus_segment_mb * 1024 * 1024)
    store = StateStore(settings.data_dir / "state.sqlite")
    factories: dict[str, Any] = processor_factories(settings)
    runner = EmbeddedRunner(bus, clickhouse, store, factories)

    app = create_api_app(settings, clickhouse, publisher=bus)
    describe_ingest_routes(app, add_ingest_routes(app, Gateway(settings, bus)))
    api_lifespan = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(inner: FastAPI) -> AsyncIterator[None]:
        await bus.start()
        task = asyncio.create_task(runner.run(), name="embedded-runner")
        try:
            async with api_lifespan(inner):
                yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await bus.stop()
            store.close()

    app.router.lifespan_context = lifespan
    app.state.settings = settings
    app.state.runner = runner
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
