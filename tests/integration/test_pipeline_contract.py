"""The pipeline core's contract, the same cases on both backends (as arroyo's backend
mixins): `PipelineContract` holds the cases, one subclass per backend provides a
`harness` — Kafka (the real broker, changelogs, clickhouse-server) and local (the bus
in a tmp dir, SQLite, chDB).

- Events in are stored once, and every position is committed.
- A store answering "retry after t" pauses the source; once it takes the batches again
  nothing is lost or doubled.
- A crash after a batch was stored but before its state and commit: the restarted
  pipeline replays it exactly, onto the state persisted before (funnel progress made
  before the crash survives).
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from common.bus import OutgoingRecord
from schemas.events import Event, EventRecord, encode_record
from schemas.funnels import FunnelDefinition, FunnelStep
from schemas.output import ProcessorOutput
from schemas.topics import ANALYTICS_EVENTS
from sinks.clickhouse import ClickHouse, EmbeddedClickHouse, ServerClickHouse
from sinks.migrate import migrate
from sinks.queries.funnels import predefined_funnel
from sinks.writer import RetryAfter, SinkHealth, SinkWriter
from streams.backends.kafka.changelog import Changelog, ChangelogState
from streams.backends.kafka.source import KafkaSource
from streams.backends.local.bus import LocalBus
from streams.backends.local.source import BusReaders, LocalBusSource
from streams.backends.local.state import SqliteState
from streams.processors.events import EventsProcessor
from streams.processors.funnels import FunnelsProcessor
from streams.runner.decode import EVENT_RECORDS
from streams.runner.feed import Stage
from streams.runner.pipeline import Pipeline
from streams.runner.protocols import Source, StateBackend, Stores
from tests.conftest import CLICKHOUSE_URL, KAFKA_BOOTSTRAP
from tests.gateway_process import end_offsets
from tests.worker_process import committed_offsets

FUNNEL = FunnelDefinition(
    name="two-steps",
    steps=[FunnelStep(event="step_a"), FunnelStep(event="step_b"), FunnelStep(event="step_c")],
    window_seconds=3600,
)
USERS = 40


def step_records(project: str, step: str, now_ms: int) -> list[tuple[str, bytes]]:
    """(user, record value): each user's `step` event, one record per user."""
    return [
        (
            f"u{n}",
            encode_record(
                EventRecord(
                    project=project,
                    received_at=now_ms,
                    events=[
                        Event(event_id=f"u{n}-{step}", type=step, user_id=f"u{n}", ts=now_ms)
                    ],
                )
            ),
        )
        for n in range(USERS)
    ]


class Refusing:
    """The real stores behind a switch: while `refusing`, every write answers "retry
    after 0.1 s" (as the sink writer does while ClickHouse is down)."""

    def __init__(self, stores: Stores) -> None:
        self.stores = stores
        self.refusing = False
        self.refused = 0

    async def write(self, output: ProcessorOutput, written: set[str]) -> None:
        if self.refusing:
            self.refused += 1
            raise RetryAfter(0.1, "refused by the test")
        await self.stores.write(output, written)


class HoldingAfterWrite:
    """The real stores; once `hold` is set, a write with rows returns only when the test
    drops the pipeline (a crash between the stores and the state write)."""

    def __init__(self, stores: Stores) -> None:
        self.stores = stores
        self.hold = False
        self.holding = asyncio.Event()

    async def write(self, output: ProcessorOutput, written: set[str]) -> None:
        await self.stores.write(output, written)
        if self.hold and not output.is_empty():
            self.holding.set()
            await asyncio.Event().wait()  # until cancelled


class Harness(ABC):
    """One backend under test: durable parts (topic or bus, state, store) that outlive
    the pipelines started on them."""

    clickhouse: ClickHouse
    project: str

    @abstractmethod
    async def publish(self, records: list[tuple[str, bytes]]) -> None: ...

    @abstractmethod
    def source(self) -> Source:
        """A new source, reading from the committed positions."""

    @abstractmethod
    def state(self) -> StateBackend: ...

    @abstractmethod
    def stores(self) -> Stores: ...

    @abstractmethod
    async def all_committed(self) -> bool: ...

    @abstractmethod
    async def crash(self, source: Source) -> None:
        """Drop the source's connections without committing anything more."""

    def pipeline(self, stores: Stores) -> Pipeline:
        return Pipeline(
            "events",
            [
                Stage("events", EventsProcessor),
                Stage("funnels", lambda: FunnelsProcessor([FUNNEL]), stateful=True),
            ],
            EVENT_RECORDS,
            stores,
            source=self.source(),
            state=self.state(),
            tick_interval_s=1.0,
        )

    async def wait_until(
        self, condition: Callable[[], Any], what: str, timeout_s: float = 60
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while not await condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.1)

    def stored(self) -> tuple[int, int, int]:
        """Rows, rows after deduplication, distinct event ids of the project."""
        ((rows,),) = self.clickhouse.execute(
            "SELECT count() FROM events WHERE project = %(p)s", {"p": self.project}
        )
        ((final_rows, distinct),) = self.clickhouse.execute(
            "SELECT count(), uniqExact(event_id) FROM events FINAL WHERE project = %(p)s",
            {"p": self.project},
        )
        return int(rows), int(final_rows), int(distinct)

    def funnel_levels(self) -> list[int]:
        today = datetime.now(UTC).date()
        return [
            row["users"]
            for row in predefined_funnel(self.clickhouse, self.project, FUNNEL, today, today)
        ]


class Running:
    """A pipeline's `run` as a task; `done` cancels it (the source is stopped or crashed
    by the caller)."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.task = asyncio.create_task(pipeline.run())

    async def cancel(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        assert self.task.cancelled(), self.task.exception()


class PipelineContract:
    """The cases; a subclass provides the `harness` fixture."""

    async def test_events_in_are_stored_once(self, harness: Harness) -> None:
        now = int(time.time() * 1000) - 60_000
        await harness.publish(step_records(harness.project, "step_a", now))
        running = Running(harness.pipeline(harness.stores()))
        try:
            await harness.wait_until(harness.all_committed, "every record committed")
            assert harness.stored() == (USERS, USERS, USERS)
        finally:
            await running.cancel()
            assert running.pipeline.source is not None
            await running.pipeline.source.stop()

    async def test_a_store_answering_retry_after_pauses_and_loses_nothing(
        self, harness: Harness
    ) -> None:
        now = int(time.time() * 1000) - 60_000
        stores = Refusing(harness.stores())
        pipeline = harness.pipeline(stores)
        source = pipeline.source
        assert source is not None
        running = Running(pipeline)
        try:
            await harness.publish(step_records(harness.project, "step_a", now))
            await harness.wait_until(harness.all_committed, "the first records committed")
            stores.refusing = True
            await harness.publish(step_records(harness.project, "step_b", now + 1_000))

            async def paused() -> bool:
                return source.is_paused()

            async def resumed() -> bool:
                return not source.is_paused()

            await harness.wait_until(paused, "the source to pause")
            await asyncio.sleep(1.5)  # refused again and again, still paused
            assert await paused()
            assert not await harness.all_committed()
            assert harness.stored() == (USERS, USERS, USERS)
            stores.refusing = False
            await harness.wait_until(harness.all_committed, "every record committed")
            await harness.wait_until(resumed, "the source to resume")
            assert stores.refused > 1
            assert harness.stored() == (2 * USERS, 2 * USERS, 2 * USERS)
            assert harness.funnel_levels() == [USERS, USERS, 0]
        finally:
            await running.cancel()
            await source.stop()

    async def test_a_crash_between_store_and_commit_replays_exactly(
        self, harness: Harness
    ) -> None:
        now = int(time.time() * 1000) - 60_000
        stores = HoldingAfterWrite(harness.stores())
        first = Running(harness.pipeline(stores))
        first_source = first.pipeline.source
        assert first_source is not None
        await harness.publish(step_records(harness.project, "step_a", now))
        try:
            await harness.wait_until(harness.all_committed, "the first step committed")
            stores.hold = True
            await harness.publish(step_records(harness.project, "step_b", now + 1_000))
            async with asyncio.timeout(60):
                await stores.holding.wait()  # step_b stored, its state and commit not
        finally:
            await first.cancel()
            await harness.crash(first_source)
        assert not await harness.all_committed()

        second = Running(harness.pipeline(harness.stores()))
        try:
            await harness.wait_until(harness.all_committed, "the replay committed")
            rows, final_rows, distinct = harness.stored()
            assert (final_rows, distinct) == (2 * USERS, 2 * USERS)
            assert rows >= 2 * USERS  # the replayed batch's rows may be there twice
            # step_a's progress came from the persisted state, step_b from the replay.
            assert harness.funnel_levels() == [USERS, USERS, 0]
        finally:
            await second.cancel()
            assert second.pipeline.source is not None
            await second.pipeline.source.stop()


class KafkaHarness(Harness):
    def __init__(self, name: str, project: str, clickhouse: ServerClickHouse) -> None:
        self.topic = self.group = name
        self.project = project
        self.clickhouse = clickhouse
        self.url = f"{CLICKHOUSE_URL.rsplit('/', 1)[0]}/{name}"
        self.changelogs: list[Changelog] = []

    async def create_topic(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA_BOOTSTRAP)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(self.topic, 2, replication_factor=1)])
        finally:
            await admin.close()

    async def publish(self, records: list[tuple[str, bytes]]) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=KAFKA_BOOTSTRAP, acks="all")
        await producer.start()
        try:
            for key, value in records:
                await producer.send(self.topic, value, key=key.encode())
            await producer.flush()
        finally:
            await producer.stop()

    def source(self) -> Source:
        return KafkaSource(KAFKA_BOOTSTRAP, self.group, [self.topic])

    def state(self) -> StateBackend:
        changelog = Changelog(
            KAFKA_BOOTSTRAP,
            lambda: AIOKafkaProducer(bootstrap_servers=KAFKA_BOOTSTRAP, acks="all"),
            min_partitions=2,
        )
        self.changelogs.append(changelog)
        return ChangelogState(changelog, self.group)

    def stores(self) -> Stores:
        return SinkWriter(lambda: ServerClickHouse(self.url), None, SinkHealth())

    async def all_committed(self) -> bool:
        ends = await end_offsets(self.topic)
        committed = await committed_offsets(self.group, self.topic)
        return all(committed.get(tp, 0) >= end for tp, end in ends.items())

    async def crash(self, source: Source) -> None:
        assert isinstance(source, KafkaSource)
        await source.consumer.stop()  # leaves the group; commits nothing

    async def close(self) -> None:
        for changelog in self.changelogs:
            await changelog.close()


class LocalHarness(Harness):
    def __init__(self, directory: Path, project: str, clickhouse: EmbeddedClickHouse) -> None:
        self.project = project
        self.clickhouse = clickhouse
        self.bus = LocalBus(directory / "bus", segment_bytes=4096)
        self.database = SqliteState(directory / "state.sqlite")
        self.readers = BusReaders(self.bus)

    async def publish(self, records: list[tuple[str, bytes]]) -> None:
        for key, value in records:  # one frame per request, as the gateway writes them
            await self.bus.publish([OutgoingRecord(ANALYTICS_EVENTS.name, key.encode(), value)])

    def source(self) -> Source:
        state = self.database.for_pipeline("events")
        return LocalBusSource(self.readers, "events", [ANALYTICS_EVENTS.name], state.position())

    def state(self) -> StateBackend:
        return self.database.for_pipeline("events")

    def stores(self) -> Stores:
        return SinkWriter(lambda: self.clickhouse, None, SinkHealth())

    async def all_committed(self) -> bool:
        return self.database.position("events") == self.bus.end

    async def crash(self, source: Source) -> None:
        pass  # the pipeline's task is gone; nothing of it was committed after its state


@pytest.mark.kafka
@pytest.mark.clickhouse
class TestKafkaBackend(PipelineContract):
    @pytest.fixture
    async def harness(
        self, unique_name: str, project: str, server_clickhouse: ServerClickHouse
    ) -> AsyncIterator[Harness]:
        migrate(server_clickhouse)
        harness = KafkaHarness(unique_name, project, server_clickhouse)
        await harness.create_topic()
        yield harness
        await harness.close()


@pytest.mark.chdb
class TestLocalBackend(PipelineContract):
    @pytest.fixture
    async def harness(
        self, tmp_path: Path, project: str, embedded_clickhouse: EmbeddedClickHouse
    ) -> AsyncIterator[Harness]:
        migrate(embedded_clickhouse)
        harness = LocalHarness(tmp_path, project, embedded_clickhouse)
        await harness.bus.start()
        yield harness
        await harness.bus.stop()
        harness.database.close()
