"""The Faust worker (`quip worker`): the events and services pipelines, their stores, and
/health, /ready, /metrics on the Faust web port (6066).

Both pipelines are the pipeline core (streams/runner/) on the Kafka backend
(streams/backends/kafka/), built by `build_pipelines` as `quip up` builds its own, and
run as tasks of the Faust app:
- events: `analytics.events`, consumer group = the worker group, state in Kafka
  changelogs;
- services: the four service topics, group `<worker group>-services`, stateless.
Each consumer is aiokafka's public consumer; Faust keeps what it is good at here: the
app's lifecycle, its timers and web views, and the producer of the dead-letter topic.
Faust's own consumer reads no topic (its group is `faust_app_id`).

The consumers read committed records only (`isolation_level="read_committed"`): the
gateway writes each request inside a Kafka transaction, and a request it answered 503
must never be counted.

A pipeline that raises is a dead worker, not a zombie (common/supervision.py): its reason
is recorded (so `/ready` says why) and the worker process exits with status 70 so the
supervisor restarts it; offsets not yet committed are replayed, which the idempotent sinks
absorb.

Faust's data directory is `$TMPDIR/quip-worker/<worker group>` (`worker_data_dir`): the
state lives in Kafka changelogs, nothing there has to survive a restart.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
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
from common.supervision import pipeline_checks, supervise
from schemas.services import SERVICE_TOPICS
from schemas.topics import ANALYTICS_EVENTS, ANALYTICS_EVENTS_DLQ
from sinks.engines import open_clickhouse
from sinks.influx import InfluxWriter
from sinks.queries.activity import active_users
from sinks.writer import SinkHealth, SinkWriter
from streams.backends.kafka.changelog import Changelog, ChangelogState
from streams.backends.kafka.source import KafkaSource, services_group
from streams.metrics import DAILY_ACTIVE_USERS, MONTHLY_ACTIVE_USERS
from streams.runner.build import Backend, build_pipelines
from streams.runner.pipeline import Pipeline

log = logging.getLogger(__name__)

WORKER_WEB_PORT = 6066

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
    pipelines: tuple[str, ...] = ()
    source: KafkaSource | None = None  # the events pipeline's


def faust_app_id(worker_group: str) -> str:
    """The Faust app's id, which is also the group of a consumer of its own that reads no
    topic: the pipelines' consumers are in the worker group and `services_group`."""
    return f"{worker_group}-faust"


def worker_data_dir(settings: Settings) -> Path:
    """Faust's data directory. The worker keeps its state in Kafka (memory store and
    changelogs), so nothing in it has to survive; it lives in the system temp directory
    (`$TMPDIR`, else /tmp), per worker group, never in the current directory."""
    return Path(tempfile.gettempdir()) / "quip-worker" / settings.worker_group


def create_worker_app(settings: Settings) -> tuple[faust.App, WorkerState]:
    datadir = worker_data_dir(settings)
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        faust_app_id(settings.worker_group),
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
    changelog = Changelog(
        settings.kafka_bootstrap,
        lambda: AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap,
            acks="all",
            max_batch_size=512 * 1024,  # below the brokers' default 1 MB message limit
        ),
        min_partitions=ANALYTICS_EVENTS.partitions,
    )
    sources = [
        KafkaSource(
            settings.kafka_bootstrap,
            group,
            topics,
            max_poll_interval_ms=settings.worker_max_poll_interval_ms,
        )
        for group, topics in (
            (settings.worker_group, [ANALYTICS_EVENTS.name]),
            (services_group(settings.worker_group), list(SERVICE_TOPICS)),
        )
    ]
    events_source, services_source = sources
    changelogs = ChangelogState(changelog, settings.worker_group)
    backend = Backend(
        events_source=events_source,
        events_state=changelogs,
        services_source=services_source,
        services_state=changelogs,
        stores=lambda: SinkWriter(
            lambda: open_clickhouse(settings, embedded=False), influx, state.health
        ),
        dead_letters=dead_letters,
        consumer="worker",
        max_fetch_gap_s=events_source.max_fetch_gap_s,
    )
    pipelines = build_pipelines(settings, backend)
    state.source = events_source
    state.pipelines = (pipelines.events.name, pipelines.services.name)
    for pipeline in (pipelines.events, pipelines.services):
        app.task(_supervised(state, pipeline.name, _running(pipeline)))

    async def _no_automatic_gc() -> None:
        gc.disable()

    app.task(_no_automatic_gc)  # in a running worker only, not in an app merely created

    release_free_memory = malloc_trim()

    @app.timer(interval=GC_INTERVAL_S)  # type: ignore[untyped-decorator]
    async def _collect_cycles() -> None:
        gc.collect()
        release_free_memory()

    @app.on_before_shutdown.connect
    async def _stop_sources(sender: Any, /, *args: Any, signal: Any, **_: Any) -> None:
        for source in sources:
            await source.stop()
        await changelog.close()

    lag_labels: set[tuple[str, str]] = set()

    @app.timer(interval=10.0)  # type: ignore[untyped-decorator]
    async def _lag() -> None:
        reported = await events_source.report_lag(lag_labels)
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


def _running(pipeline: Pipeline) -> Callable[[Any], Awaitable[None]]:
    async def run(_app: Any) -> None:
        await pipeline.run()

    return run


def _supervised(
    state: WorkerState, name: str, run: Callable[[Any], Awaitable[None]]
) -> Callable[[Any], Awaitable[None]]:
    async def agent(stream: Any) -> None:
        await supervise(state.crashed, name, run(stream))

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
        checks.update(pipeline_checks(state.pipelines, state.crashed))
        ok = all(value == "ok" for value in checks.values())
        return web.json({"ready": ok, "checks": checks}, status=200 if ok else 503)

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        # aiohttp wants the charset separately from the media type.
        return web.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])
