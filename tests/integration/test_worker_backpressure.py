"""Backpressure and revocation of the pipeline core on its Kafka backend
(streams/runner/, streams/backends/kafka/source.py) against the real Kafka and
clickhouse-server.

- A ClickHouse outage longer than the consumer's max poll interval: the worker pauses its
  partitions and keeps polling, so Kafka keeps the same member with the same assignment
  (a member dropped for not polling rejoins under a new member id), and the numbers come
  out exact.
- A Kafka outage mid-stream: the worker waits it out and the numbers come out exact.
- A revocation while a store hangs: the group's rebalance completes within the
  revocation deadline although the store still hangs; the batch in flight is not
  committed and counts once, replayed by the partition's next owner.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from schemas.events import Event, EventRecord, encode_record
from schemas.topics import ANALYTICS_EVENTS
from sinks.clickhouse import ServerClickHouse
from sinks.migrate import migrate
from sinks.writer import SinkHealth, SinkWriter
from streams.backends.kafka.source import KafkaSource
from streams.processors.events import EventsProcessor
from streams.runner import pipeline as pipeline_module
from streams.runner.decode import EVENT_RECORDS
from streams.runner.feed import Stage
from streams.runner.pipeline import Pipeline
from tests.conftest import CLICKHOUSE_URL, KAFKA_BOOTSTRAP, services
from tests.gateway_process import GatewayProcess, end_offsets
from tests.pipeline_checks import assert_exact, post_all
from tests.traffic import generate_batches
from tests.worker_process import committed_offsets, records_past_commits, running_worker

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]

MAX_POLL_INTERVAL_MS = 5_000


async def group_members(group: str) -> dict[str, bytes]:
    """Kafka's view of the group: member id → its assignment."""
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA_BOOTSTRAP)
    await admin.start()
    try:
        (response,) = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    (described,) = response.to_object()["groups"]
    return {member["member_id"]: member["member_assignment"] for member in described["members"]}


@pytest.mark.influxdb
def test_a_store_outage_longer_than_the_poll_interval_keeps_the_partitions(
    gateway: GatewayProcess,
    worker_env: dict[str, str],
    server_clickhouse: ServerClickHouse,
    project: str,
) -> None:
    group = worker_env["QUIP_WORKER_GROUP"]
    # Small requests posted one by one during the outage: many small fetches, more than the
    # pipeline queues, so the consumer has to pause.
    batches = generate_batches(seed=31, users=80, days=10, batch_size=5)
    before, during = batches[: len(batches) // 2], batches[len(batches) // 2 :]
    env = {**worker_env, "QUIP_WORKER_MAX_POLL_INTERVAL_MS": str(MAX_POLL_INTERVAL_MS)}
    with running_worker(env) as worker:
        post_all(gateway, before)
        assert_exact(server_clickhouse, project, before)
        members = asyncio.run(group_members(group))
        assert len(members) == 1
        services("stop", "clickhouse")
        try:
            post_all(gateway, during, pause_s=0.05)
            deadline = time.monotonic() + 30
            while "clickhouse" not in worker.ready_checks_failing():
                assert time.monotonic() < deadline, "the outage did not show in /ready"
                time.sleep(0.5)
            # Three poll intervals with every write failing: a consumer that stopped
            # polling would have been dropped from the group twice over.
            time.sleep(3 * MAX_POLL_INTERVAL_MS / 1000)
            assert asyncio.run(group_members(group)) == members
        finally:
            services("start", "clickhouse")
        assert_exact(server_clickhouse, project, batches)
        assert records_past_commits(group, ANALYTICS_EVENTS.name) == 0
        assert asyncio.run(group_members(group)) == members


@pytest.mark.influxdb
def test_a_kafka_outage_mid_stream_keeps_numbers_exact(
    gateway: GatewayProcess,
    worker_env: dict[str, str],
    server_clickhouse: ServerClickHouse,
    project: str,
) -> None:
    """The consumer's fetches and commits fail while Kafka is down; the worker stays up
    (no crash, no exit), resumes from its commits and counts everything once."""
    group = worker_env["QUIP_WORKER_GROUP"]
    batches = generate_batches(seed=32, users=80, days=10, batch_size=5)
    before, after = batches[: len(batches) // 2], batches[len(batches) // 2 :]
    with running_worker(worker_env) as worker:
        post_all(gateway, before, pause_s=0.02)
        services("stop", "kafka")
        try:
            time.sleep(5)
        finally:
            services("start", "kafka")
        post_all(gateway, after)  # retries the gateway's 503s until Kafka takes them
        assert_exact(server_clickhouse, project, batches)
        assert records_past_commits(group, ANALYTICS_EVENTS.name) == 0
        assert worker.process is not None
        assert worker.process.poll() is None, "the worker exited"


class HangingClickHouse:
    """clickhouse-server whose inserts hang until `release` is set (bounded: 120 s)."""

    def __init__(self, url: str, release: threading.Event, hanging: threading.Event) -> None:
        self._clickhouse = ServerClickHouse(url)
        self._release = release
        self._hanging = hanging

    def insert(self, table: str, columns: Any, rows: Any) -> None:
        if not self._release.is_set():
            self._hanging.set()
            assert self._release.wait(timeout=120), "the test never released the store"
        self._clickhouse.insert(table, columns, rows)

    def execute(self, query: str, params: Any = None) -> Any:
        return self._clickhouse.execute(query, params)


class Worker:
    """A source and its events pipeline (the events stage only), as the worker wires them."""

    def __init__(self, topic: str, group: str, clickhouse: Callable[[], Any]) -> None:
        self.source = KafkaSource(KAFKA_BOOTSTRAP, group, [topic])
        self.pipeline = Pipeline(
            "events",
            [Stage("events", EventsProcessor)],
            EVENT_RECORDS,
            SinkWriter(clickhouse, None, SinkHealth()),
            source=self.source,
        )
        self.task = asyncio.create_task(self.pipeline.run())

    async def stop(self) -> None:
        await self.source.stop()
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def until(condition: Callable[[], bool], what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_a_revocation_while_a_store_hangs_finishes_within_its_deadline(
    server_clickhouse: ServerClickHouse,
    unique_name: str,
    project: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    revoke_deadline_s = 3.0
    monkeypatch.setattr(pipeline_module, "REVOKE_DEADLINE_S", revoke_deadline_s)
    migrate(server_clickhouse)
    url = f"{CLICKHOUSE_URL.rsplit('/', 1)[0]}/{unique_name}"
    topic = group = unique_name
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA_BOOTSTRAP)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 2, replication_factor=1)])
    finally:
        await admin.close()
    now = int(time.time() * 1000) - 60_000
    records = [
        EventRecord(
            project=project,
            received_at=now,
            events=[Event(event_id=f"e{n}", type="view", user_id=f"u{n}", ts=now + n)],
        )
        for n in range(200)
    ]
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA_BOOTSTRAP, acks="all")
    await producer.start()
    try:
        for n, record in enumerate(records):
            await producer.send(topic, encode_record(record), partition=n % 2)
        await producer.flush()
    finally:
        await producer.stop()

    release, hanging = threading.Event(), threading.Event()
    first = Worker(topic, group, lambda: HangingClickHouse(url, release, hanging))
    second: Worker | None = None
    try:
        await until(hanging.is_set, "the first worker's store to hang", 30)
        assigned_before = first.source.assignments
        second = Worker(topic, group, lambda: ServerClickHouse(url))
        joined = time.monotonic()
        # The first worker must revoke and rejoin while its store still hangs.
        await until(
            lambda: (
                first.source.assignments > assigned_before
                and len(first.source.assignment()) == 1
                and second is not None
                and len(second.source.assignment()) == 1
            ),
            "the rebalance",
            revoke_deadline_s + 15,
        )
        # The store still hangs (released below). The group waits for its members'
        # revocations: this bounds the first one's.
        rebalanced_s = time.monotonic() - joined
        assert rebalanced_s < revoke_deadline_s + 10, rebalanced_s
        # Nothing of the hanging batch was committed: the first worker's partition stays
        # at its start (its new generation's records wait behind the hanging store).
        (kept,) = first.source.assignment()
        assert (await committed_offsets(group, topic)).get(kept, 0) == 0

        release.set()
        ends = await end_offsets(topic)

        async def all_committed() -> bool:
            return await committed_offsets(group, topic) == ends

        deadline = time.monotonic() + 60
        while not await all_committed():
            assert time.monotonic() < deadline, "the offsets did not reach the end"
            await asyncio.sleep(0.5)
        ((stored, distinct),) = server_clickhouse.execute(
            "SELECT count(), uniqExact(event_id) FROM events FINAL WHERE project = %(p)s",
            {"p": project},
        )
        assert (stored, distinct) == (len(records), len(records))
    finally:
        release.set()
        await first.stop()
        if second is not None:
            await second.stop()
