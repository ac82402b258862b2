"""The Faust worker (`quip worker`): agents over the bus, their sinks, and /health,
/ready, /metrics on the Faust web port (6066).

Consumers read `isolation_level=read_committed`: the gateway writes each request inside a
Kafka transaction, and a request it answered 503 must never be counted.

An agent that raises is a dead worker, not a zombie: its reason is recorded (so `/ready`
says why) and the worker process exits with status 70 so the supervisor restarts it;
offsets not yet committed are replayed, which the idempotent sinks absorb.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from quip.settings import Settings
from schemas.funnels import load_funnels
from schemas.services import SERVICE_TOPICS
from schemas.topics import ANALYTICS_EVENTS, ANALYTICS_EVENTS_DLQ
from sinks.engines import open_clickhouse
from sinks.influx import InfluxWriter
from sinks.queries.activity import active_users
from sinks.writer import SinkHealth, SinkWriter
from streams.metrics import (
    CONSUMER_LAG,
    DAILY_ACTIVE_USERS,
    MONTHLY_ACTIVE_USERS,
    VIDEO_HOURS_WATCHED,
    VIDEO_PLAYBACK_QUALITY,
)
from streams.pipeline import EventPipeline, ServicePipeline
from streams.processors.activity import ActivityProcessor
from streams.processors.base import ProcessorOutput
from streams.processors.events import EventsProcessor
from streams.processors.funnels import FunnelsProcessor
from streams.processors.plays import PLAY_COLUMNS, PLAYS_TABLE, PlaysProcessor
from streams.processors.services import ServiceMetricsProcessor

log = logging.getLogger(__name__)

WORKER_WEB_PORT = 6066
CRASH_EXIT_STATUS = 70  # EX_SOFTWARE


class _ReadCommittedConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # faust only reads committed data under exactly_once; we want it with
        # at-least-once (transactions are the gateway's, not ours).
        consumer._isolation_level = "read_committed"
        return consumer


class _ReadCommittedConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> Any:
        return _ReadCommittedConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(faust_aiokafka.Transport):
    Consumer = _ReadCommittedConsumer


class WorkerApp(faust.App):
    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)


@dataclass
class WorkerState:
    health: SinkHealth = field(default_factory=SinkHealth)
    crashed: dict[str, str] = field(default_factory=dict)
    pipelines: list[EventPipeline] = field(default_factory=list)


def create_worker_app(settings: Settings) -> tuple[faust.App, WorkerState]:
    app = WorkerApp(
        settings.worker_group,
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="memory://",
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
    events_topic = app.topic(
        ANALYTICS_EVENTS.name,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    dead_letters = app.topic(
        ANALYTICS_EVENTS_DLQ.name, key_serializer="raw", value_serializer="raw"
    )

    influx = InfluxWriter.from_settings(settings)

    def writer() -> SinkWriter:
        return SinkWriter(lambda: open_clickhouse(settings, embedded=False), influx, state.health)

    def state_table(name: str) -> Any:
        # Changelogged per source partition (see streams/pipeline.py); memory store: the
        # state is small (open plays, funnel candidates), so replaying it on start is quick.
        return app.Table(
            f"{name}-state",
            partitions=ANALYTICS_EVENTS.partitions,
            key_type=str,  # json-serialized keys
            value_type=bytes,  # raw values: the processors' own msgspec encoding
        )

    idle_timeout_ms = settings.play_idle_timeout_s * 1000
    state.pipelines = [
        EventPipeline("events", EventsProcessor, writer(), dead_letters=dead_letters),
        EventPipeline("activity", ActivityProcessor, writer()),
        EventPipeline(
            "plays",
            lambda: PlaysProcessor(idle_timeout_ms=idle_timeout_ms),
            writer(),
            state_table=state_table("plays"),
            observe=PlayMetrics().observe,
        ),
    ]
    funnels = load_funnels(settings.funnels_file) if settings.funnels_file else []
    if funnels:
        state.pipelines.append(
            EventPipeline(
                "funnels",
                lambda: FunnelsProcessor(funnels, max_event_age_days=settings.max_event_age_days),
                writer(),
                state_table=state_table("funnels"),
            )
        )
    for pipeline in state.pipelines:
        app.agent(events_topic, name=pipeline.name)(_supervised(state, pipeline.name, pipeline.run))

    service_topics = app.topic(
        *SERVICE_TOPICS,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    services = ServicePipeline(ServiceMetricsProcessor(), writer(), dead_letters)
    app.agent(service_topics, name="services")(_supervised(state, "services", services.run))

    @app.on_partitions_revoked.connect
    async def _forget(sender: Any, /, *args: Any, signal: Any, **_: Any) -> None:
        revoked: set[Any] = args[0]
        partitions = [tp.partition for tp in revoked if tp.topic == ANALYTICS_EVENTS.name]
        for pipeline in state.pipelines:
            pipeline.forget(partitions)

    @app.timer(interval=5.0)  # type: ignore[untyped-decorator]
    async def _tick() -> None:
        for pipeline in state.pipelines:
            await pipeline.tick()

    @app.timer(interval=10.0)  # type: ignore[untyped-decorator]
    async def _lag() -> None:
        consumer = app.consumer
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            committed = await consumer.committed(tp) if hasattr(consumer, "committed") else None
            if highwater is not None and committed is not None:
                CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(max(highwater - committed, 0))

    @app.timer(interval=60.0)  # type: ignore[untyped-decorator]
    async def _active_user_gauges() -> None:
        await asyncio.to_thread(_refresh_active_user_gauges, settings)

    _add_web_pages(app, state)
    return app, state


class PlayMetrics:
    """Feeds `video_playback_quality` and `video_hours_watched` from closed-play rows. A play
    re-emitted after a late event adds only its extra watch time, and its startup is
    observed once (bounded memory of plays: after a restart a play may be observed again;
    these are live indicators, the API is exact)."""

    def __init__(self, remember_at_most: int = 200_000) -> None:
        self._counted_watch_ms: dict[int, int] = {}
        self._remember_at_most = remember_at_most
        self._index = {name: n for n, name in enumerate(PLAY_COLUMNS)}

    def observe(self, output: ProcessorOutput) -> None:
        col = self._index
        for table in output.tables:
            if table.table != PLAYS_TABLE:
                continue
            for row in table.rows:
                if row[col["deleted"]]:
                    continue
                key = hash((row[col["project"]], row[col["play_id"]]))
                seen_before = key in self._counted_watch_ms
                if not seen_before and len(self._counted_watch_ms) >= self._remember_at_most:
                    self._counted_watch_ms.clear()
                watch_ms = row[col["watch_ms"]]
                counted = self._counted_watch_ms.get(key, 0)
                if watch_ms > counted:
                    VIDEO_HOURS_WATCHED.inc((watch_ms - counted) / 3_600_000)
                self._counted_watch_ms[key] = max(watch_ms, counted)
                if seen_before:
                    continue
                if row[col["started"]]:
                    VIDEO_PLAYBACK_QUALITY.labels("startup_seconds").observe(
                        row[col["startup_ms"]] / 1000
                    )
                if watch_ms:
                    VIDEO_PLAYBACK_QUALITY.labels("rebuffer_ratio").observe(
                        row[col["rebuffer_ms"]] / watch_ms
                    )


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
        checks["kafka"] = (
            "ok" if app.consumer and app.consumer.assignment() else "no partitions assigned"
        )
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
