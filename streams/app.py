"""The Faust worker (`quip worker`): the events pipeline and the services agent, their
sinks, and /health, /ready, /metrics on the Faust web port (6066).

`analytics.events` is consumed by the Faust consumer (group membership, assignment,
offset commits) but its records skip Faust's streams and messages: the consumer hands
aiokafka's records in fetched lists to `EventPipeline` (streams/pipeline.py), which acks
them once stored. The service topics go through a regular Faust agent.

Consumers read `isolation_level=read_committed`: the gateway writes each request inside a
Kafka transaction, and a request it answered 503 must never be counted.

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
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import faust
from aiokafka import AIOKafkaProducer
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types.tuples import ack_lock
from mode.utils.futures import notify
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from quip.settings import Settings
from schemas.funnels import load_funnels
from schemas.services import SERVICE_TOPICS
from schemas.topics import ANALYTICS_EVENTS, ANALYTICS_EVENTS_DLQ
from sinks.engines import open_clickhouse
from sinks.influx import InfluxWriter
from sinks.queries.activity import active_users
from sinks.writer import SinkHealth, SinkWriter
from streams.changelog import Changelog, changelog_topic
from streams.metrics import (
    CONSUMER_LAG,
    DAILY_ACTIVE_USERS,
    MONTHLY_ACTIVE_USERS,
    VIDEO_HOURS_WATCHED,
    VIDEO_PLAYBACK_QUALITY,
)
from streams.pipeline import EventPipeline, ServicePipeline, Stage
from streams.processors.activity import ActivityProcessor
from streams.processors.base import ProcessorOutput
from streams.processors.events import EventsProcessor
from streams.processors.funnels import FunnelsProcessor
from streams.processors.plays import PLAY_COLUMNS, PLAYS_TABLE, PlaysProcessor
from streams.processors.services import ServiceMetricsProcessor

log = logging.getLogger(__name__)

WORKER_WEB_PORT = 6066
CRASH_EXIT_STATUS = 70  # EX_SOFTWARE

# In a running worker CPython's automatic cyclic GC is off and a full collection runs every
# GC_INTERVAL_S instead. The heap is mostly long-lived processor state (users, plays,
# funnel progress) plus each batch's records and rows, which live a second or two: both
# survive young collections, so the default thresholds kept scanning them again, about a
# third of the worker's CPU (benchmarks/streams.py, 600k users, µs of worker CPU per event:
# 46 with the default thresholds, 15 of them in the GC; 34 with old generations collected
# 10x less often; 29 like this). Reference counting frees all else; the worker makes few
# reference cycles (a few hundred objects/s under load), which wait at most this long. A
# collection holds the loop about 0.3 s with 600k users' state.
GC_INTERVAL_S = 60.0


DirectHandler = Callable[[list[Any], int], Awaitable[None]]


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

    async def _drain_messages(self, fetcher: Any) -> None:
        """Faust's fetch loop (faust-streaming 0.15.3, `Consumer._drain_messages`) with one
        `wait_first(delivery, suspend_flow)` per fetched batch instead of per message: that
        wait creates four futures and an `asyncio.wait` for every record, the largest
        single cost of a small record. Same order and offset bookkeeping; a rebalance
        abandons the rest of the batch, which is fetched again from the committed offsets
        afterwards."""
        should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        try:
            while not (should_stop() or fetcher_should_stop()):
                self.diag.set_flag(faust_consumer.CONSUMER_FETCHING)
                fetched = await self._fetch(within_s=1.0)
                if fetched and not self.should_stop:
                    # No await since the fetch returned: a rebalance has either not begun
                    # or already taken the revoked partitions out of the active set.
                    generation = self.app.rebalancing_count
                    handed, streamed = self._read(fetched)
                    await self.wait_first(
                        self._deliver(handed, streamed, generation), self.suspend_flow.wait()
                    )
                await self.sleep(0)
                self.diag.unset_flag(faust_consumer.CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            self.diag.unset_flag(faust_consumer.CONSUMER_FETCHING)

    async def _fetch(self, within_s: float) -> list[tuple[Any, list[Any]]]:
        """Faust's `Consumer.getmany` by partition instead of by record: the fetched
        aiokafka records of each active (or buffered) partition. Its per-record steps (an
        async generator, the end offset sent to the monitor, a Faust message built) cost
        more than the events pipeline's own work on a record; here they are once per
        partition, and `_read` builds Faust messages for the streams' topics only. Empty
        when stopping, and when the flow is stopped (then, like Faust, it seeks back to
        the committed offsets)."""
        records, active_partitions = await self._wait_next_records(within_s)
        if records is None or self.should_stop:
            return []
        if not self.flow_active:
            try:
                await self.perform_seek()
            except Exception as exc:
                self.log.warning("exception performing seek when flow not active: %r", exc)
            return []
        buffered = self._buffered_partitions
        track_end_offset = self.app.monitor.track_tp_end_offset
        fetched = []
        for tp, tp_records in records.items():
            if active_partitions is None or tp in active_partitions or tp in buffered:
                track_end_offset(tp, self.highwater(tp))
                fetched.append((tp, tp_records))
        return fetched

    def _read(self, fetched: list[tuple[Any, list[Any]]]) -> tuple[dict[str, list[Any]], list[Any]]:
        """Records the read offsets (and the gaps between them) of a fetched batch and
        splits it into the direct handlers' records (aiokafka's, by topic) and the
        streams' Faust messages. Synchronous on purpose: a revocation clears the read
        offsets, and one written back afterwards would make the refetched records look
        delivered."""
        read_offsets = self._read_offset
        acks_enabled_for = self.app.topics.acks_enabled_for
        handlers: dict[str, DirectHandler] = getattr(self.app, "direct_handlers", {})
        handed: dict[str, list[Any]] = {}
        streamed: list[Any] = []
        for tp, records in fetched:
            read = read_offsets[tp]
            gaps = acks_enabled_for(tp.topic)
            unread = []
            for record in records:
                offset = record.offset
                if read is not None:
                    if offset < read:
                        continue  # already delivered (Faust drops these too)
                    if gaps and offset - read > 1:
                        self._add_gap_between(tp, read, offset)
                unread.append(record)
                read = offset
            if not unread:
                continue
            read_offsets[tp] = read
            if tp.topic in handlers:
                handed.setdefault(tp.topic, []).extend(unread)
            else:
                streamed.extend(self._to_message(tp, record) for record in unread)
        return handed, streamed

    async def _deliver(
        self, handed: dict[str, list[Any]], streamed: list[Any], generation: int
    ) -> None:
        app = self.app
        callback = self.callback
        for n, message in enumerate(streamed, 1):
            if n % 100 == 0:  # let the web pages and timers in
                await asyncio.sleep(0)
            if app.rebalancing_count != generation:
                return
            await callback(message)
        handlers: dict[str, DirectHandler] = getattr(app, "direct_handlers", {})
        for topic, messages in handed.items():
            await handlers[topic](messages, generation)

    def ack_records(self, records: Iterable[Any]) -> None:
        """`Consumer.ack` for records handed to a direct handler (they have no Faust
        message, so no `acked` flag: an offset already acked, or below the committed one,
        is skipped like Faust skips it), one step per partition under Faust's ack lock."""
        offsets: defaultdict[tuple[str, int], list[int]] = defaultdict(list)
        for record in records:
            offsets[record.topic, record.partition].append(record.offset)
        acks_enabled_for = self.app.topics.acks_enabled_for
        with ack_lock:
            for (topic, partition), tp_offsets in offsets.items():
                if not acks_enabled_for(topic):
                    continue
                tp = self._new_topicpartition(topic, partition)
                committed = self._committed_offset[tp]
                acked_index = self._acked_index[tp]
                new = [
                    offset
                    for offset in dict.fromkeys(tp_offsets)
                    if (committed is None or offset >= committed) and offset not in acked_index
                ]
                acked_index.update(new)
                self._acked[tp].extend(new)
                self._n_acked += len(new)
            notify(self._waiting_for_ack)

    def _add_gap_between(self, tp: Any, read: int, offset: int) -> None:
        """The offsets after the last read and *before* the fetched record: transaction
        markers and aborted records, which `_new_offset` may commit past. Faust's own
        `Consumer._add_gap` includes the fetched record too; acked as well, it appears
        twice in the acked list and breaks the run of consecutive offsets that is
        committed, so behind the gateway's transactions (a marker after every record) each
        commit advanced about one record and the acked list grew without bound. No
        `merge_overlaps` (a rebuild of the tree, 15 % of a live worker's CPU): gaps between
        consecutive reads are disjoint and a refetch adds the same interval again."""
        committed = self._committed_offset[tp]
        start = read + 1 if committed is None else max(read + 1, committed + 1)
        if start < offset:
            self._gap[tp].addi(start, offset)  # intervaltree: end excluded


class _Transport(faust_aiokafka.Transport):
    Consumer = _ReadCommittedConsumer


class WorkerApp(faust.App):
    """`direct_handlers`: topics whose fetched records (aiokafka's `ConsumerRecord`, no
    Faust message) go to a handler in batches, as fetched, instead of through Faust's
    channels, streams and events one message at a time. The handler acks them
    (`consumer.ack_records`) once they are processed; Faust commits acked offsets as
    usual."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.direct_handlers: dict[str, DirectHandler] = {}

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)


@dataclass
class WorkerState:
    health: SinkHealth = field(default_factory=SinkHealth)
    crashed: dict[str, str] = field(default_factory=dict)
    pipelines: list[EventPipeline] = field(default_factory=list)


def worker_data_dir(settings: Settings) -> Path:
    """Faust's data directory. The worker keeps its state in Kafka (memory store and
    changelogs), so nothing in it has to survive; it lives in the system temp directory
    (`$TMPDIR`, else /tmp), per worker group, never in the current directory."""
    return Path(tempfile.gettempdir()) / "quip-worker" / settings.worker_group


def create_worker_app(settings: Settings) -> tuple[faust.App, WorkerState]:
    datadir = worker_data_dir(settings)
    datadir.mkdir(parents=True, exist_ok=True)
    app = WorkerApp(
        settings.worker_group,
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
        # Fetched records reach the events pipeline in lists of at most this many, so a
        # backlog is taken in bounded steps instead of whole prefetch buffers.
        broker_max_poll_records=2_000,
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

    idle_timeout_ms = settings.play_idle_timeout_s * 1000
    stages = [
        Stage("events", EventsProcessor),
        Stage("activity", ActivityProcessor),
        Stage(
            "plays",
            lambda: PlaysProcessor(idle_timeout_ms=idle_timeout_ms),
            changelog_topic=changelog_topic(settings.worker_group, "plays-state"),
            observe=PlayMetrics().observe,
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
    pipeline = EventPipeline(
        stages,
        writer(),
        dead_letters=dead_letters,
        ack=_acker(app),
        changelog=changelog,
        generation=lambda: app.rebalancing_count,
    )
    state.pipelines = [pipeline]
    # The events topic bypasses Faust's per-message streams (see WorkerApp); subscribing
    # the topic with the conductor keeps it in the group's assignment and commits.
    app.topics.add(events_topic)
    app.direct_handlers[ANALYTICS_EVENTS.name] = pipeline.enqueue
    app.task(_supervised(state, pipeline.name, lambda _app: pipeline.run()))

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
    async def _close_changelog(sender: Any, /, *args: Any, signal: Any, **_: Any) -> None:
        await changelog.close()

    @app.on_partitions_revoked.connect
    async def _revoke(sender: Any, /, *args: Any, signal: Any, **_: Any) -> None:
        for pipeline in state.pipelines:
            await pipeline.revoke()

    @app.on_partitions_assigned.connect
    async def _assign(sender: Any, /, *args: Any, signal: Any, **_: Any) -> None:
        assigned: set[Any] = args[0]
        partitions = {tp.partition for tp in assigned if tp.topic == ANALYTICS_EVENTS.name}
        for pipeline in state.pipelines:
            pipeline.assign(partitions)

    @app.timer(interval=5.0)  # type: ignore[untyped-decorator]
    async def _tick() -> None:
        for pipeline in state.pipelines:
            await pipeline.tick()

    lag_labels: set[tuple[str, str]] = set()

    @app.timer(interval=10.0)  # type: ignore[untyped-decorator]
    async def _lag() -> None:
        consumer = app.consumer
        # Faust keeps what it committed per partition and has no public accessor for it.
        committed_offsets = consumer._committed_offset  # type: ignore[attr-defined]
        assigned = set()
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            committed = committed_offsets.get(tp)
            if highwater is not None and committed is not None:
                labels = (tp.topic, str(tp.partition))
                CONSUMER_LAG.labels(*labels).set(max(highwater - committed, 0))
                assigned.add(labels)
        for labels in lag_labels - assigned:  # moved to another worker: not ours to report
            CONSUMER_LAG.remove(*labels)
        lag_labels.clear()
        lag_labels.update(assigned)

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

    _READ = ("deleted", "project", "play_id", "started", "watch_ms", "startup_ms", "rebuffer_ms")

    def __init__(self, remember_at_most: int = 50_000) -> None:
        self._counted_watch_ms: dict[int, int] = {}
        self._remember_at_most = remember_at_most
        # Labelled children looked up once: `labels()` per closed play was most of this.
        self._startup_seconds = VIDEO_PLAYBACK_QUALITY.labels("startup_seconds")
        self._rebuffer_ratio = VIDEO_PLAYBACK_QUALITY.labels("rebuffer_ratio")
        self._columns = tuple(PLAY_COLUMNS.index(name) for name in self._READ)

    def observe(self, output: ProcessorOutput) -> None:
        deleted, project, play_id, started, watch, startup, rebuffer = self._columns
        counted_watch_ms = self._counted_watch_ms
        hours_watched = 0.0
        for table in output.tables:
            if table.table != PLAYS_TABLE:
                continue
            for row in table.rows:
                if row[deleted]:
                    continue
                key = hash((row[project], row[play_id]))
                seen_before = key in counted_watch_ms
                if not seen_before and len(counted_watch_ms) >= self._remember_at_most:
                    counted_watch_ms.clear()
                watch_ms = row[watch]
                counted = counted_watch_ms.get(key, 0)
                if watch_ms > counted:
                    hours_watched += (watch_ms - counted) / 3_600_000
                counted_watch_ms[key] = max(watch_ms, counted)
                if seen_before:
                    continue
                if row[started]:
                    self._startup_seconds.observe(row[startup] / 1000)
                if watch_ms:
                    self._rebuffer_ratio.observe(row[rebuffer] / watch_ms)
        if hours_watched:
            VIDEO_HOURS_WATCHED.inc(hours_watched)


def _acker(app: faust.App) -> Callable[[list[Any]], None]:
    def ack(records: list[Any]) -> None:
        cast(_ReadCommittedConsumer, app.consumer).ack_records(records)

    return ack


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
