"""Embedded service messages are counted exactly (issue 16): `quip up` takes service
messages over HTTP (`POST /v1/services/{topic}`, published with `HttpServicePublisher`),
its services pipeline counts them across a SIGKILL restart, with client retries and
duplicates, and `/v1/metrics/services` equals an independent count; invalid messages are
refused with a 4xx and counted nowhere. In process (the services pipeline on the local
backend): records that reach the bus undecodable become dead letters on the bus, and a
replay from an uncommitted position counts nothing twice."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis

from common.bus import OutgoingRecord
from common.settings import Settings
from ingest.services import SERVICES_PATH
from schemas.events import decode_dead_letter
from schemas.publisher import HttpServicePublisher, PublishError
from schemas.services import (
    InvalidMessage,
    ServiceMessage,
    SocialNotification,
    encode_message,
    message_key,
    topic_for,
)
from schemas.topics import ANALYTICS_EVENTS_DLQ, VIDEO_ENCODING
from sinks.clickhouse import EmbeddedClickHouse
from sinks.migrate import migrate
from sinks.queries.services import service_metrics
from sinks.writer import SinkHealth, SinkWriter
from streams.backends.local.backend import EVENTS_POSITION, SERVICES_POSITION, local_backend
from streams.backends.local.bus import LocalBus
from streams.backends.local.state import SqliteState
from streams.runner.build import build_pipelines
from streams.runner.pipeline import Pipeline
from tests.integration.test_embedded import Embedded, wait_for
from tests.integration.test_openapi_fuzz import GATEWAY_CHECKS, fuzz
from tests.integration.test_services_bus import DAY_MS, expected_metrics, make_messages

pytestmark = pytest.mark.chdb

KEYS = {"default": "wk-services-default", "p2": "wk-services-p2"}
READ_KEYS = {project: f"r{key}" for project, key in KEYS.items()}


def keys_env() -> dict[str, str]:
    return {
        f"QUIP_{kind}": ",".join(f"{project}:{key}" for project, key in keys.items())
        for kind, keys in (("WRITE_KEYS", KEYS), ("READ_KEYS", READ_KEYS))
    }


def services_answer(up: Embedded, project: str, day_from: date, day_to: date) -> Any:
    response = httpx.get(
        f"{up.url}/v1/metrics/services",
        params={"project": project, "from": str(day_from), "to": str(day_to)},
        headers={"Authorization": f"Bearer {READ_KEYS[project]}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response.json()


async def publish(up: Embedded, project: str, messages: Sequence[ServiceMessage]) -> int:
    async with HttpServicePublisher(up.url, write_key=KEYS[project]) as publisher:
        if len(messages) == 1:
            await publisher.publish(messages[0])
            return 1
        return await publisher.publish_many(messages)


def by_project(messages: Sequence[ServiceMessage], project: str) -> list[ServiceMessage]:
    return [m for m in messages if m.project == project]


def test_embedded_service_messages_are_counted_exactly(tmp_path: Path) -> None:
    rng = random.Random(20261205)
    now = int(time.time() * 1000)
    today = datetime.fromtimestamp(now / 1000, UTC).date()
    # Over MAX_MESSAGES_PER_REQUEST per project and half: publish_many sends several requests.
    messages = make_messages(rng, "svc", 2600, now - 4 * DAY_MS, now)
    copies = [rng.choice(messages) for _ in range(len(messages) // 5)]  # client retries
    first, second = messages[:1300], messages[1300:]
    up = Embedded(tmp_path, keys_env())
    up.start()
    try:
        for project in KEYS:
            assert asyncio.run(publish(up, project, by_project(first, project))) == len(
                by_project(first, project)
            )
        up.kill()  # accepted messages may not be counted yet: they are in the bus log
        up.start()
        for project in KEYS:
            asyncio.run(publish(up, project, by_project(second + copies, project)))
            asyncio.run(publish(up, project, by_project(messages, project)[:1]))  # one alone

        # Refused as a whole, counted nowhere: a message of another project than the
        # key's (the batch's valid messages included), and bodies the schema refuses.
        foreign = SocialNotification(
            message_id="svc-foreign", user_id="u1", kind="message", status="delivered",
            ts=now, project="p2",
        )  # fmt: skip
        stray = SocialNotification(
            message_id="svc-stray", user_id="u1", kind="message", status="delivered", ts=now
        )
        with pytest.raises(InvalidMessage, match="not the write key's project"):
            asyncio.run(publish(up, "default", [stray, foreign]))
        with pytest.raises(PublishError, match="HTTP 401") as refused:
            asyncio.run(publish_with_key(up.url, "wk-unknown", [stray]))
        assert not refused.value.retryable
        invalid = httpx.post(
            f"{up.url}/v1/services/social.notifications",
            json=[{"message_id": "svc-bad", "user_id": "u1", "status": "delivered"}],
            headers={"Authorization": f"Bearer {KEYS['default']}"},
            timeout=30,
        )
        assert invalid.status_code == 400, invalid.text
        assert invalid.json()["errors"][0]["index"] == 0

        day_from, day_to = today - timedelta(days=4), today
        for project in KEYS:
            expected = expected_metrics(messages, project, day_from, day_to)
            got = wait_for(
                lambda p=project, e=expected: (lambda answer: answer if answer == e else None)(
                    services_answer(up, p, day_from, day_to)
                ),
                timeout_s=60,
            )
            assert got == expected, project
        totals = expected_metrics(messages, "default", day_from, day_to)["totals"]
        assert totals["social_delivered"] > 0
        assert totals["encode_ms_p95"] is not None
    finally:
        up.stop()


async def publish_with_key(url: str, key: str, messages: list[ServiceMessage]) -> None:
    async with HttpServicePublisher(url, write_key=key) as publisher:
        await publisher.publish_many(messages)


def services_pipeline(
    bus: LocalBus, database: SqliteState, clickhouse: EmbeddedClickHouse
) -> Pipeline:
    def stores() -> SinkWriter:
        return SinkWriter(lambda: clickhouse, None, SinkHealth())

    return build_pipelines(Settings(), local_backend(bus, database, stores)).services


async def run_until(pipeline: Pipeline, done: Any, timeout_s: float = 30) -> None:
    task = asyncio.create_task(pipeline.run())
    try:
        async with asyncio.timeout(timeout_s):
            while not await asyncio.to_thread(done):
                await asyncio.sleep(0.1)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_undecodable_records_are_dead_letters_and_replays_count_once(
    tmp_path: Path, embedded_clickhouse: EmbeddedClickHouse
) -> None:
    migrate(embedded_clickhouse)
    now = int(time.time() * 1000)
    today = datetime.fromtimestamp(now / 1000, UTC).date()
    messages = make_messages(random.Random(3), "dl", 60, now - DAY_MS, now)
    garbage = b'{"message_id": "dl-x", "status": "queued"}'
    bus = LocalBus(tmp_path / "bus")
    await bus.start()
    try:
        records = [
            OutgoingRecord(topic_for(m).name, message_key(m), encode_message(m)) for m in messages
        ]
        await bus.publish(records[:30])
        await bus.publish([OutgoingRecord(VIDEO_ENCODING.name, b"job-x", garbage)])
        await bus.publish(records[30:])
        garbage_position = 30

        def expected(project: str) -> dict[str, Any]:
            return expected_metrics(messages, project, today - timedelta(days=1), today)

        def counted(project: str) -> dict[str, Any]:
            return service_metrics(
                embedded_clickhouse, project, today - timedelta(days=1), today
            )

        async def dead_letters() -> list[tuple[bytes, bytes]]:
            frames = await bus.read(0, 1000)
            return [
                (record.key, record.value)
                for frame in frames
                for record in frame.records
                if record.topic == ANALYTICS_EVENTS_DLQ.name
            ]

        database = SqliteState(tmp_path / "state.sqlite")
        pipeline = services_pipeline(bus, database, embedded_clickhouse)
        await run_until(pipeline, lambda: counted("default") == expected("default"))
        assert counted("p2") == expected("p2")

        def committed() -> bool:  # the dead letter's frame too
            return database.position(SERVICES_POSITION) == bus.end

        await run_until(pipeline, committed)
        # At least once, as on Kafka: the first run may have been stopped after the dead
        # letter was written and before its frame's position was committed.
        [(key, value)] = set(await dead_letters())
        letter = decode_dead_letter(value)
        assert key == VIDEO_ENCODING.name.encode()
        assert letter.raw == garbage.decode()
        assert letter.source == f"embedded:services:{VIDEO_ENCODING.name}@0/{garbage_position}"
        assert "invalid video.encoding message" in letter.reason
        database.close()

        # A crash before the commit: everything is read again from position 0.
        database = SqliteState(tmp_path / "r.sqlite")
        replay = services_pipeline(bus, database, embedded_clickhouse)
        await run_until(replay, committed)
        database.close()
        assert counted("default") == expected("default")
        assert counted("p2") == expected("p2")
    finally:
        await bus.stop()


def test_the_service_endpoint_never_answers_5xx(tmp_path: Path) -> None:
    """Fuzzed through `quip up`'s /openapi.json (valid and invalid bodies, the four topics
    and others, with a valid write key): answers are documented and never 5xx."""
    up = Embedded(tmp_path, keys_env())
    up.start()
    try:
        schema = schemathesis.openapi.from_url(f"{up.url}/openapi.json").include(
            path=SERVICES_PATH
        )
        auth = {"Authorization": f"Bearer {KEYS['default']}"}
        assert fuzz(schema, auth, GATEWAY_CHECKS) == []
    finally:
        up.stop()


async def test_a_services_pipeline_that_never_committed_reads_what_the_bus_kept(
    tmp_path: Path, embedded_clickhouse: EmbeddedClickHouse
) -> None:
    """A kill before the services pipeline's first commit, after the events pipeline's:
    the services pipeline starts from the oldest segment, not from the events position."""
    migrate(embedded_clickhouse)
    now = int(time.time() * 1000)
    today = datetime.fromtimestamp(now / 1000, UTC).date()
    messages = make_messages(random.Random(4), "nc", 40, now - DAY_MS, now)
    bus = LocalBus(tmp_path / "bus")
    await bus.start()
    database = SqliteState(tmp_path / "state.sqlite")
    try:
        await bus.publish(
            [OutgoingRecord(topic_for(m).name, message_key(m), encode_message(m)) for m in messages]
        )
        database.commit([], EVENTS_POSITION, bus.end)  # the events pipeline went past them

        def counted() -> bool:
            day_from = today - timedelta(days=1)
            return service_metrics(
                embedded_clickhouse, "default", day_from, today
            ) == expected_metrics(messages, "default", day_from, today)

        await run_until(services_pipeline(bus, database, embedded_clickhouse), counted)
    finally:
        database.close()
        await bus.stop()
