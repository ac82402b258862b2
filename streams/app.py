"""The Faust worker (`quip worker`): the events pipeline and the services agent, their
sinks, and /health, /ready, /metrics on the Faust web port (6066).

`analytics.events` is consumed by `KafkaEventsSource` (streams/kafka_source.py, aiokafka's
public consumer API, group = the worker group), a task of the Faust app: it hands fetched
lists to `EventPipeline` (streams/pipeline.py), pauses its partitions while the pipeline
stays full (a store down) and commits what the pipeline acked once stored. The service
topics go through a regular Faust agent, whose consumer is Faust's (group
`<worker group>-services`).

The events source reads committed records only (`isolation_level="read_committed"`): the
gateway writes each request inside a Kafka transaction, and a request it answered 503
must never be counted. The service topics need no such setting: their publishers
(schemas/publisher.py) are not transactional, so every record there is committed.

A pipeline or agent that raises is a dead worker, not a zombie: its reason is recorded (so
`/ready` says why) and the worker process exits with status 70 so the supervisor restarts
it; offsets not yet committed are replayed, which the idempotent sinks absorb.

Faust's data directory is `$TMPDIR/quip-worker/<worker group>` (`worker_data_dir`): the
state lives in Kafka changelogs, nothing there has to survive a restart.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faust
from aiokafka import AIOKafkaProducer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from common.settings import Settings
from schemas.funnels import load_funnels
from schemas.services import SERVICE_TOPICS
from schemas.topics import ANALYTICS_EVENTS, ANALYTICS_EVENTS_DLQ
from sinks.engines import open_clickhouse
from sinks.influx import InfluxWriter
from sinks.queries.activity import active_users
from sinks.writer import SinkHealth, SinkWriter
from streams.changelog import Changelog, changelog_topic
from streams.kafka_source import KafkaEventsSource, services_group
from streams.metrics import DAILY_ACTIVE_USERS, MONTHLY_ACTIVE_USERS
from streams.pipeline import EventPipeline, ServicePipeline, Stage
from streams.play_metrics import PlayMetrics
from streams.processors.activity import ActivityProcessor
from streams.processors.events import EventsProcessor
from streams.processors.funnels import FunnelsProcessor
from streams.processors.plays import PlaysProcessor
from streams.processors.services import ServiceMetricsProcessor

log = logging.getLogger(__name__)

WORKER_WEB_PORT = 6066
CRASH_EXIT_STATUS = 70  # EX_SOFTWARE

# In a running worker CPython's automatic cyclic GC is off and a full collection runs every
# GC_INTERVAL_S instead. The heap is mostly long-lived processor state (users, plays,
# funnel progress) plus each batch's records and rows, which live a second or two: both
# survive young collections, so the default thresholds kept scanning them again, about a
# third of the worker's CPU (benchmarks/README.md, "After the worker's CPU and state
# changes", compares raised thresholds with this timer). Reference counting frees all
# else; the worker makes few reference cycles (a few hundred objects/s under load), which
# wait at most this long. A collection holds the loop about 0.3 s with 600k users' state.
GC_INTERVAL_S = 60.0


def malloc_trim() -> Callable[[], None]:
    """glibc's `malloc_trim(0)`: hands the free pages inside malloc's arenas back to the
    system. The worker's batches (rows, sink buffers, fetched records) come and go beside
    long-lived state, and glibc keeps what they freed: in a 60-minute soak 48 of the 115 MB
    that malloc held were free (benchmarks/README.md). A no-op where there is no glibc."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int

    def release() -> None:
        trim(0)

    return release


@dataclass
class WorkerState:
    health: SinkHealth = field(default_factory=SinkHealth)
    crashed: dict[str, str] = field(default_factory=dict)
    pipelines: list[EventPipeline] = field(default_factory=list)
    source: KafkaEventsSource | None = None


def worker_data_dir(settings: Settings) -> Path:
    """Faust's data directory. The worker keeps its state in Kafka (memory store and
    changelogs), so nothing in it has to survive; it lives in the system temp directory
    (`$TMPDIR`, else /tmp), per worker group, never in the current directory."""
    return Path(tempfile.gettempdir()) / "quip-worker" / settings.worker_group


def create_worker_app(settings: Settings) -> tuple[faust.App, WorkerState]:
    datadir = worker_data_dir(settings)
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        services_group(settings.worker_group),
        broker=f"kafka://{settings.kafka_bootstrap}",
        datadir=datadir,
        web_enabled=True,
        web_port=settings.listen_port(WORKER_WEB_PORT),
        web_bind=settings.host,
        web_in_thread=False,
        topic_partitions=ANALYTICS_EVENTS.partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        broker_commit_interval=1.0,
        # A killed worker's partitions move after 10 s instead of a minute.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
        stream_wait_empty=False,
    )
    state = WorkerState()
    dead_letters = app.topic(
        ANALYTICS_EVENTS_DLQ.name, key_serializer="raw", value_serializer="raw"
    )

    influx = InfluxWriter.from_settings(settings)

    def writer() -> SinkWriter:
        return SinkWriter(lambda: open_clickhouse(settings, embedded=False), influx, state.health)

    idle_timeout_ms = settings.play_idle_timeout_s * 1000
    stages = [
        Stage("events", EventsProcessor),
        Stage("activity", ActivityProcessor),
        Stage(
            "plays",
            lambda: PlaysProcessor(idle_timeout_ms=idle_timeout_ms),
            changelog_topic=changelog_topic(settings.worker_group, "plays-state"),
            # A play is rewritten while the processor holds it (twice the idle timeout
            # after its last event); twice that again leaves room for the worker's lag.
            observe=PlayMetrics(horizon_ms=4 * idle_timeout_ms).observe,
        ),
    ]
    funnels = load_funnels(settings.funnels_file) if settings.funnels_file else []
    if funnels:
        stages.append(
            Stage(
                "funnels",
                lambda: FunnelsProcessor(funnels, max_event_age_days=settings.max_event_age_days),
                changelog_topic=changelog_topic(settings.worker_group, "funnels-state"),
            )
        )
    changelog = Changelog(
        settings.kafka_bootstrap,
        lambda: AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap,
            acks="all",
            max_batch_size=512 * 1024,  # below the brokers' default 1 MB message limit
        ),
        min_partitions=ANALYTICS_EVENTS.partitions,
    )
    source = KafkaEventsSource(
        settings.kafka_bootstrap,
        settings.worker_group,
        ANALYTICS_EVENTS.name,
        max_poll_interval_ms=settings.worker_max_poll_interval_ms,
    )
    pipeline = EventPipeline(
        stages,
        writer(),
        dead_letters=dead_letters,
        ack=source.ack,
        changelog=changelog,
        generation=lambda: source.generation,
    )
    state.pipelines = [pipeline]
    state.source = source
    app.task(_supervised(state, pipeline.name, lambda _app: pipeline.run()))
    app.task(_supervised(state, "events-source", lambda _app: source.run(pipeline)))

    async def _no_automatic_gc() -> None:
        gc.disable()

    app.task(_no_automatic_gc)  # in a running worker only, not in an app merely created

    release_free_memory = malloc_trim()

    @app.timer(interval=GC_INTERVAL_S)  # type: ignore[untyped-decorator]
    async def _collect_cycles() -> None:
        gc.collect()
        release_free_memory()

    service_topics = app.topic(
        *SERVICE_TOPICS,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    services = ServicePipeline(ServiceMetricsProcessor(), writer(), dead_letters)
    app.agent(service_topics, name="services")(_supervised(state, "services", services.run))

    @app.on_before_shutdown.connect
    async def _stop_events(sender: Any, /, *args: Any, signal: Any, **_: Any) -> None:
        await source.stop()
        await changelog.close()

    @app.timer(interval=5.0)  # type: ignore[untyped-decorator]
    async def _tick() -> None:
        for pipeline in state.pipelines:
            await pipeline.tick()

    lag_labels: set[tuple[str, str]] = set()

    @app.timer(interval=10.0)  # type: ignore[untyped-decorator]
    async def _lag() -> None:
        reported = await source.report_lag(lag_labels)
        lag_labels.clear()
        lag_labels.update(reported)

    @app.timer(interval=60.0)  # type: ignore[untyped-decorator]
    async def _active_user_gauges() -> None:
        await asyncio.to_thread(_refresh_active_user_gauges, settings)

    _add_web_pages(app, state)
    return app, state


def _refresh_active_user_gauges(settings: Settings) -> None:
    try:
        clickhouse = open_clickhouse(settings, embedded=False)
        today = datetime.now(UTC).date()
        projects = [
            row[0] for row in clickhouse.execute("SELECT DISTINCT project FROM user_first_seen")
        ]
        for project in projects:
            (day,) = active_users(clickhouse, project, today, today)
            DAILY_ACTIVE_USERS.labels(project).set(day["dau"])
            MONTHLY_ACTIVE_USERS.labels(project).set(day["mau"])
        clickhouse.close()
    except Exception as exc:  # a gauge refresh must never take the worker down
        log.warning("active user gauges not refreshed: %s", exc)


def _supervised(
    state: WorkerState, name: str, run: Callable[[Any], Awaitable[None]]
) -> Callable[[Any], Awaitable[None]]:
    async def agent(stream: Any) -> None:
        try:
            await run(stream)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            state.crashed[name] = f"{type(exc).__name__}: {exc}"
            log.exception("agent %s crashed; the worker exits", name)
            # Leave a moment for /ready to be read, then go: a half-dead worker would
            # hold its partitions and process nothing.
            asyncio.get_running_loop().call_later(2.0, os._exit, CRASH_EXIT_STATUS)
            raise

    agent.__name__ = name
    return agent


def _add_web_pages(app: faust.App, state: WorkerState) -> None:
    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        return web.json({"status": "ok"})

    @app.page("/ready")
    async def ready(web: Any, request: Any) -> Any:
        checks: dict[str, str] = {}
        assigned = state.source is not None and state.source.assignment()
        checks["kafka"] = "ok" if assigned else "no partitions assigned"
        for store in ("clickhouse", "influxdb"):
            checks[store] = state.health.status.get(store, "ok")
        for name, reason in state.crashed.items():
            checks[f"agent:{name}"] = f"crashed: {reason}"
        ok = all(value == "ok" for value in checks.values())
        return web.json({"ready": ok, "checks": checks}, status=200 if ok else 503)

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        # aiohttp wants the charset separately from the media type.
        return web.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])
