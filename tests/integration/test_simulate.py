"""`quip simulate` as a subprocess against a real `quip gateway` and the real Kafka: the
gateway accepted everything it recorded, and exactly the recorded events (and service
messages) landed on the bus."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.events import decode_record
from schemas.services import SERVICE_TOPICS, decode_message
from schemas.topics import ANALYTICS_EVENTS
from tests.conftest import KAFKA_BOOTSTRAP, clean_env
from tests.gateway_process import GatewayProcess, end_offsets, stop_consumer
from tests.pipeline_checks import WRITE_KEY

pytestmark = pytest.mark.kafka


@dataclass
class Run:
    result: subprocess.CompletedProcess[str]
    # Kafka's ts is the recorded (client) ts plus the request's transport latency (SPEC §2
    # clock-skew correction with sent_at = the time of sending), which the run's own
    # duration bounds.
    max_latency_ms: int


def simulate(gateway: GatewayProcess, project: str, *args: str) -> Run:
    env = clean_env({"QUIP_WRITE_KEYS": f"{project}:{WRITE_KEY}"})
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "quip", "simulate", "--url", gateway.url, "--no-progress", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    return Run(result, math.ceil((time.monotonic() - started) * 1000))


async def snapshot() -> dict[str, dict[TopicPartition, int]]:
    return {topic: await end_offsets(topic) for topic in [ANALYTICS_EVENTS.name, *SERVICE_TOPICS]}


async def read_range(
    since: dict[TopicPartition, int], until: dict[TopicPartition, int], timeout_s: float = 120
) -> list[tuple[bytes, bytes]]:
    """The committed records of [since, until) in every partition: the run's, and whatever
    other jobs wrote meanwhile (callers keep their project's). Bounded by offsets taken
    after the run, not by waiting for the shared topic to go quiet, which it never does
    while another job produces to it."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=KAFKA_BOOTSTRAP,
        isolation_level="read_committed",
        enable_auto_commit=False,
    )
    await consumer.start()
    records: list[tuple[bytes, bytes]] = []
    try:
        consumer.assign(list(since))
        for partition, offset in since.items():
            consumer.seek(partition, offset)
        pending = {p for p in since if until[p] > since[p]}
        async with asyncio.timeout(timeout_s):
            while pending:
                batch = await consumer.getmany(*pending, timeout_ms=500)
                for partition, rows in batch.items():
                    records += [(r.key, r.value) for r in rows if r.offset < until[partition]]
                for partition in list(pending):
                    if await consumer.position(partition) >= until[partition]:
                        pending.discard(partition)
    finally:
        await stop_consumer(consumer)
    return records


def landed_events(records: list[tuple[bytes, bytes]], project: str) -> list[Any]:
    landed = []
    for key, value in records:
        record = decode_record(value)
        if record.project != project:
            continue
        users = {event.user_id for event in record.events}
        assert len(users) == 1  # one record per user per request
        assert key == f"{project}:{users.pop()}".encode()
        landed.extend(record.events)
    return landed


def check_landed_as_recorded(
    landed: list[Any], recorded: list[dict[str, Any]], max_latency_ms: int
) -> None:
    assert sorted(e.event_id for e in landed) == sorted(r["event_id"] for r in recorded)
    by_id = {r["event_id"]: r for r in recorded}
    for event in landed:
        sent = by_id[event.event_id]
        assert 0 <= event.ts - sent["ts"] <= max_latency_ms
        for name in (
            "type", "user_id", "session_id", "device_model", "app_version", "os", "region",
            "props",
        ):  # fmt: skip
            assert getattr(event, name) == sent[name], (name, event, sent)


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_historical_backfill_lands_exactly_what_was_recorded(
    gateway: GatewayProcess, project: str, tmp_path: Path
) -> None:
    since = asyncio.run(snapshot())
    record, summary_path = tmp_path / "accepted.jsonl", tmp_path / "summary.json"
    run = simulate(
        gateway, project,
        "--users", "30", "--days", "3", "--seed", "1234", "--concurrency", "8",
        "--kafka-bootstrap", KAFKA_BOOTSTRAP,
        "--record", str(record), "--json-summary", str(summary_path),
    )  # fmt: skip
    result = run.result
    assert result.returncode == 0, result.stderr + result.stdout
    assert "historical" in result.stdout
    until = asyncio.run(snapshot())

    summary = orjson.loads(summary_path.read_bytes())
    recorded = read_json_lines(record)
    assert summary["project"] == project
    assert summary["events_accepted"] == len(recorded) == summary["events_generated"] > 1_000
    assert summary["events_rejected"] == summary["events_failed"] == summary["batches_failed"] == 0
    assert summary["users_active"] == 30
    assert summary["sessions"] == sum(r["type"] == "session_start" for r in recorded)
    assert summary["plays"] == sum(r["type"] == "playback_request" for r in recorded)
    oldest = min(r["ts"] for r in recorded)
    assert time.time() * 1000 - oldest < 3 * 86_400_000
    # The optional render props are accepted and land unchanged (props compared below).
    beats = [r for r in recorded if r["type"] == "playback_heartbeat"]
    assert sum("frames_rendered" in r["props"] and "frames_dropped" in r["props"] for r in beats)

    landed = landed_events(
        asyncio.run(read_range(since[ANALYTICS_EVENTS.name], until[ANALYTICS_EVENTS.name])),
        project,
    )
    if summary["retries"] == 0:
        assert len(landed) == len(recorded)
    check_landed_as_recorded(landed, recorded, run.max_latency_ms)

    published: dict[str, set[str]] = {}
    for topic in SERVICE_TOPICS:
        messages = [
            decode_message(topic, value)
            for _, value in asyncio.run(read_range(since[topic], until[topic]))
        ]
        published[topic] = {m.message_id for m in messages if m.project == project}
    assert summary["services_published"] == summary["services_generated"] > 0
    assert summary["services_failed"] == 0
    assert sum(len(ids) for ids in published.values()) == summary["services_published"]
    assert all(published.values())  # all four services publish


def test_live_mode_sends_rate_times_duration_with_ts_now(
    gateway: GatewayProcess, project: str, tmp_path: Path
) -> None:
    since = asyncio.run(snapshot())
    record, summary_path = tmp_path / "live.jsonl", tmp_path / "summary.json"
    started = int(time.time() * 1000)
    run = simulate(
        gateway, project,
        "--users", "50", "--rate", "150", "--duration", "4", "--seed", "99",
        "--record", str(record), "--json-summary", str(summary_path),
    )  # fmt: skip
    finished = int(time.time() * 1000)
    result = run.result
    assert result.returncode == 0, result.stderr + result.stdout
    until = asyncio.run(snapshot())
    summary = orjson.loads(summary_path.read_bytes())
    recorded = read_json_lines(record)
    assert summary["events_accepted"] == len(recorded) == 600
    assert summary["services_note"].startswith("not sent")
    assert all(started <= r["ts"] <= finished for r in recorded)
    landed = landed_events(
        asyncio.run(read_range(since[ANALYTICS_EVENTS.name], until[ANALYTICS_EVENTS.name])),
        project,
    )
    check_landed_as_recorded(landed, recorded, run.max_latency_ms)
