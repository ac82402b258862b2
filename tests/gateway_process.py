"""Run `quip gateway` as a real process and read what it wrote to Kafka."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from tests.conftest import KAFKA_BOOTSTRAP, clean_env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class GatewayProcess:
    url: str
    process: subprocess.Popen[bytes]
    log: Path


@contextmanager
def running_gateway(
    env: dict[str, str], *, ready_timeout_s: float = 30
) -> Iterator[GatewayProcess]:
    port = free_port()
    full_env = clean_env({"QUIP_KAFKA_BOOTSTRAP": KAFKA_BOOTSTRAP, **env})
    # A file, not a pipe: nobody drains a pipe while the test runs, and a gateway logging
    # through an outage would block on a full one.
    log = tempfile.NamedTemporaryFile(prefix="quip-gateway-", suffix=".log", delete=False)  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "quip", "gateway", "--port", str(port)],
        env=full_env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if process.poll() is not None:
                output = Path(log.name).read_text()
                raise RuntimeError(f"gateway exited with {process.returncode}:\n{output}")
            try:
                if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("gateway did not become ready")
            time.sleep(0.2)
        yield GatewayProcess(url, process, Path(log.name))
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
        log.close()


async def stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """aiokafka's stop() right after start() can await a task that was cancelled before
    it ever ran, which re-raises CancelledError in the caller; only our own cancellation
    should propagate."""
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise


async def end_offsets(topic: str) -> dict[TopicPartition, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA_BOOTSTRAP)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    partitions = [TopicPartition(topic, p["partition"]) for p in described[0]["partitions"]]
    if not partitions:
        raise RuntimeError(f"topic {topic} does not exist: use the registry_topics fixture")
    consumer = AIOKafkaConsumer(bootstrap_servers=KAFKA_BOOTSTRAP, isolation_level="read_committed")
    await consumer.start()
    try:
        offsets: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
        return offsets
    finally:
        await stop_consumer(consumer)


async def read_since(
    offsets: dict[TopicPartition, int], *, settle_s: float = 1.0, timeout_s: float = 30
) -> list[tuple[bytes, bytes]]:
    """Every committed record after `offsets`, read until the topic has been quiet for
    `settle_s` (and every partition has reached its end offset)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=KAFKA_BOOTSTRAP,
        isolation_level="read_committed",
        enable_auto_commit=False,
    )
    await consumer.start()
    records: list[tuple[bytes, bytes]] = []
    try:
        consumer.assign(list(offsets))
        for partition, offset in offsets.items():
            consumer.seek(partition, offset)
        quiet_since = time.monotonic()
        async with asyncio.timeout(timeout_s):
            while True:
                batch = await consumer.getmany(timeout_ms=200)
                fresh = [(r.key, r.value) for rs in batch.values() for r in rs]
                records.extend(fresh)
                if fresh:
                    quiet_since = time.monotonic()
                ends = await consumer.end_offsets(list(offsets))
                positions = {p: await consumer.position(p) for p in offsets}
                caught_up = all(positions[p] >= ends[p] for p in offsets)
                if caught_up and time.monotonic() - quiet_since >= settle_s:
                    return records
    finally:
        await stop_consumer(consumer)
