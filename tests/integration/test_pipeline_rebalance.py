"""The pipeline core (streams/runner/pipeline.py) across rebalances, driven the way the
Kafka source drives it (revoke, assign, fetches tagged with their generation), with the
real changelog (Kafka) and sinks (clickhouse-server): funnel progress moves between
workers with its partition, a batch fetched before its generation's assignment is
processed once the state is read (after a Kafka outage too), records of a partition this
worker no longer owns are neither processed nor committed, and a batch revoked while it
was collected takes no newer message with it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import REGISTRY

from schemas.events import Event, EventRecord, encode_record
from schemas.funnels import FunnelDefinition, FunnelStep
from schemas.output import ProcessorOutput
from sinks.clickhouse import ServerClickHouse
from sinks.migrate import migrate
from sinks.queries.funnels import predefined_funnel
from sinks.writer import SinkHealth, SinkWriter
from streams.backends.kafka.changelog import Changelog, ChangelogState
from streams.processors.base import Position
from streams.processors.events import EventsProcessor
from streams.processors.funnels import FunnelsProcessor
from streams.runner import batch as batch_module
from streams.runner.decode import EVENT_RECORDS
from streams.runner.feed import FEED_SLICE_RECORDS, Stage
from streams.runner.pipeline import Pipeline
from streams.runner.protocols import Fetch, Positions, Rebalance
from tests.conftest import CLICKHOUSE_URL, KAFKA_BOOTSTRAP, services

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]

FUNNEL = FunnelDefinition(
    name="three-steps",
    steps=[FunnelStep(event="step_a"), FunnelStep(event="step_b"), FunnelStep(event="step_c")],
    window_seconds=3600,
)


TOPIC = "events"


@dataclass(frozen=True)
class FetchedMessage:
    """What the pipeline reads of a fetched record."""

    partition: int
    offset: int
    value: bytes
    topic: str = TOPIC


def fetched(messages: list[FetchedMessage]) -> Fetch:
    """As a source fetches them: each partition's position is after its last record."""
    return Fetch(
        list(messages), {(TOPIC, message.partition): message.offset + 1 for message in messages}
    )


class RecordedCommits:
    """The source's commit side (the test feeds the fetches itself): what was committed."""

    def __init__(self) -> None:
        self.committed: Positions = {}

    def has(self, message: FetchedMessage) -> bool:
        return self.committed.get((TOPIC, message.partition), 0) > message.offset

    async def start(self, rebalance: Rebalance) -> None:
        raise AssertionError("the test drives the pipeline")

    async def fetch(self, timeout_s: float) -> Fetch | None:
        raise AssertionError("the test drives the pipeline")

    def pause(self) -> None:
        pass

    def resume(self) -> None:
        pass

    def is_paused(self) -> bool:
        return False

    async def commit(self, positions: Positions) -> None:
        for key, offset in positions.items():
            assert offset > self.committed.get(key, 0), "committed out of order"
            self.committed[key] = offset

    async def flush(self) -> None:
        pass

    async def stop(self) -> None:
        pass


@pytest.fixture
def clickhouse_url(server_clickhouse: ServerClickHouse, unique_name: str) -> str:
    """The test's database, migrated, as a worker's QUIP_CLICKHOUSE_URL."""
    migrate(server_clickhouse)
    return f"{CLICKHOUSE_URL.rsplit('/', 1)[0]}/{unique_name}"


class Worker:
    """One worker's events pipeline; the workers of a test share the changelog topic."""

    def __init__(self, clickhouse_url: str, group: str) -> None:
        self.commits = RecordedCommits()
        self.changelog = Changelog(
            KAFKA_BOOTSTRAP,
            lambda: AIOKafkaProducer(bootstrap_servers=KAFKA_BOOTSTRAP, acks="all"),
            min_partitions=2,
        )
        self.pipeline = Pipeline(
            "events",
            [
                Stage("events", EventsProcessor),
                Stage("funnels", lambda: FunnelsProcessor([FUNNEL]), stateful=True),
            ],
            EVENT_RECORDS,
            SinkWriter(lambda: ServerClickHouse(clickhouse_url), None, SinkHealth()),
            source=self.commits,
            state=ChangelogState(self.changelog, group),
            measure_loop=True,
        )
        self.task = asyncio.create_task(self.pipeline.run_batches())

    async def enqueue(self, messages: list[FetchedMessage]) -> None:
        await self.pipeline.enqueue(fetched(messages), self.pipeline.generation)

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.changelog.close()


def step(project: str, user: str, event_type: str, offset: int, ts: int) -> FetchedMessage:
    record = EventRecord(
        project=project,
        received_at=ts,
        events=[Event(event_id=f"{user}-{event_type}", type=event_type, user_id=user, ts=ts)],
    )
    return FetchedMessage(partition=0, offset=offset, value=encode_record(record))


async def until(condition: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def taken(worker: Worker) -> None:
    """Until the pipeline's loop has taken every enqueued fetch into the batch it is
    collecting (white box: the fetch queue is the pipeline's own)."""
    await until(worker.pipeline.batcher.is_drained, "the loop to take the fetched records")


async def test_funnel_progress_follows_its_partition_across_workers(
    server_clickhouse: ServerClickHouse,
    clickhouse_url: str,
    unique_name: str,
    project: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Batches close as soon as they are taken, so "taken" below means "closed".
    monkeypatch.setattr(batch_module, "BATCH_WITHIN_S", 0.0)
    now = int(time.time() * 1000) - 60_000
    first = Worker(clickhouse_url, unique_name)
    second = Worker(clickhouse_url, unique_name)
    try:
        # Generation 1: the first worker owns partition 0. Its first batch is fetched
        # before the assignment reaches the pipeline: it waits for the state, not dropped.
        await first.pipeline.revoke()
        step_a = step(project, "u1", "step_a", 0, now)
        await first.enqueue([step_a])
        await taken(first)  # the batch is closed and waits for the state
        first.pipeline.assign([0])
        await until(lambda: first.commits.has(step_a), "the first batch to be committed")

        # Generation 2: partition 0 moves to the second worker, which reads the progress
        # from the changelog. A record of partition 0 still reaching the first worker is
        # not its to process.
        await first.pipeline.revoke()
        await second.pipeline.revoke()
        first.pipeline.assign([1])
        second.pipeline.assign([0])
        late = step(project, "u2", "step_a", 1, now + 1_000)
        # Fetched with `late`, on the partition the first worker owns now: once it is
        # committed, the batch holding `late` has been through the loop.
        marker = replace(step(project, "u3", "marker", 1, now + 1_000), partition=1)
        await first.enqueue([late, marker])
        step_b = step(project, "u1", "step_b", 2, now + 2_000)
        await second.enqueue([step_b])
        await until(lambda: second.commits.has(step_b), "the second worker's batch")
        await until(lambda: first.commits.has(marker), "the first worker's batch")
        assert not first.commits.has(late)

        today = datetime.now(UTC).date()
        levels = [
            row["users"]
            for row in predefined_funnel(server_clickhouse, project, FUNNEL, today, today)
        ]
        assert levels == [1, 1, 0]  # u1 reached step_b: its step_a came from the changelog
        users = server_clickhouse.execute(
            "SELECT user_id FROM events WHERE project = %(p)s ORDER BY user_id", {"p": project}
        )
        assert users == [("u1",), ("u1",), ("u3",)]  # u2's record was the second worker's now
    finally:
        await first.stop()
        await second.stop()


async def test_a_revoked_batch_takes_no_record_of_the_next_generation_with_it(
    server_clickhouse: ServerClickHouse,
    clickhouse_url: str,
    unique_name: str,
    project: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A window the rebalance below certainly falls in (it follows at once, while the
    # batch is open); the refetched batch closes at the end of its own.
    monkeypatch.setattr(batch_module, "BATCH_WITHIN_S", 5.0)
    now = int(time.time() * 1000) - 60_000
    worker = Worker(clickhouse_url, unique_name)
    try:
        await worker.pipeline.revoke()
        worker.pipeline.assign([0])
        revoked = step(project, "u1", "step_a", 0, now)
        await worker.enqueue([revoked])
        await taken(worker)  # the batch is open when the group rebalances
        await worker.pipeline.revoke()
        worker.pipeline.assign([0])
        # Another record at the same offset: the rows tell which of the two was stored.
        refetched = step(project, "u2", "step_a", 0, now)
        await worker.enqueue([refetched])
        await until(lambda: worker.commits.has(refetched), "the new generation's record")
        users = server_clickhouse.execute(
            "SELECT user_id FROM events WHERE project = %(p)s", {"p": project}
        )
        assert users == [("u2",)]
    finally:
        await worker.stop()


class RebalanceAt:
    """A processor at whose `at`-th record the group starts a rebalance."""

    def __init__(self, at: int, rebalance: Callable[[], None]) -> None:
        self.at = at
        self.seen = 0
        self.rebalance = rebalance

    def process(self, record: EventRecord, position: Position) -> None:
        self.seen += 1
        if self.seen == self.at:
            self.rebalance()

    def erase(self, project: str, user_id: str) -> None:
        pass

    def flush(self, now_ms: int) -> ProcessorOutput:
        return ProcessorOutput()


async def test_a_batch_revoked_while_it_is_fed_stops_and_counts_once_when_replayed(
    server_clickhouse: ServerClickHouse, clickhouse_url: str, unique_name: str, project: str
) -> None:
    """The feed lets the loop in between slices of the batch, where a rebalance can begin:
    the rest of the batch is not fed, so no processor of a partition the worker may no
    longer own comes back, nothing is committed, and the records fetched again from the
    committed offsets count once."""
    now = int(time.time() * 1000) - 60_000
    revoked: list[asyncio.Task[None]] = []

    def rebalance() -> None:
        """The revocation comes in while the batch is fed."""
        revoked.append(asyncio.create_task(worker.pipeline.revoke()))

    worker = Worker(clickhouse_url, unique_name)
    rebalance_at = RebalanceAt(FEED_SLICE_RECORDS // 2, rebalance)
    worker.pipeline.stages.append(Stage("rebalance", lambda: rebalance_at))
    funnels = worker.pipeline.stages[1]
    users = FEED_SLICE_RECORDS * 2
    batch = [
        *(step(project, f"u{n}", "step_a", n, now) for n in range(users)),
        *(replace(step(project, f"v{n}", "step_a", n, now), partition=1) for n in range(users)),
    ]
    try:
        await worker.pipeline.revoke()
        worker.pipeline.assign([0, 1])
        await worker.enqueue(batch)
        await until(lambda: bool(revoked), "the rebalance to begin")
        await revoked[0]
        worker.pipeline.assign([0])  # partition 1 went to another worker

        rebalance_at.at = 0  # the refetched batch goes through
        fed_before = REGISTRY.get_sample_value("events_loop_seconds_total", {"phase": "feed"})
        await worker.enqueue(batch)
        # The loop is sequential: had the revoked feed gone on, its processors and commits
        # would be there by the time the refetched batch is committed.
        await until(lambda: worker.commits.has(batch[users - 1]), "the refetched batch")
        assert worker.commits.committed == {(TOPIC, 0): users}
        assert set(funnels.processors) == {0}
        fed_after = REGISTRY.get_sample_value("events_loop_seconds_total", {"phase": "feed"})
        assert fed_before is not None
        assert fed_after is not None
        assert fed_after > fed_before
        today = datetime.now(UTC).date()
        levels = [
            row["users"]
            for row in predefined_funnel(server_clickhouse, project, FUNNEL, today, today)
        ]
        assert levels == [users, 0, 0]
    finally:
        await worker.stop()


async def test_the_state_read_waits_out_a_kafka_outage(
    clickhouse_url: str, unique_name: str, project: str
) -> None:
    now = int(time.time() * 1000) - 60_000
    worker = Worker(clickhouse_url, unique_name)
    first_step = step(project, "u1", "step_a", 0, now)
    try:
        await asyncio.to_thread(services, "stop", "kafka")
        try:
            await worker.pipeline.revoke()
            worker.pipeline.assign([0])
            await worker.enqueue([first_step])
            await asyncio.sleep(3)
            # No record before the partition's state is read.
            assert worker.commits.committed == {}
        finally:
            await asyncio.to_thread(services, "start", "kafka")
        await until(lambda: worker.commits.has(first_step), "the batch after the outage", 90)
    finally:
        await worker.stop()
