"""Run `quip worker` as a real process against the real Kafka, clickhouse-server and
InfluxDB (its sink writes the QoE and service series there and waits for it): tests that
start one are marked `kafka`, `clickhouse` and `influxdb`."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from tests.conftest import INFLUX_URL, KAFKA_BOOTSTRAP, clean_env
from tests.gateway_process import end_offsets, free_port, read_since, stop_consumer


async def start_group_at_end(group: str, topics: list[str]) -> None:
    """Commit the group's offsets at the topics' ends, so a fresh worker group skips what
    earlier tests wrote and processes only this test's messages."""
    offsets = {tp: offset for topic in topics for tp, offset in (await end_offsets(topic)).items()}
    consumer = AIOKafkaConsumer(
        bootstrap_servers=KAFKA_BOOTSTRAP, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit(offsets)
    finally:
        await stop_consumer(consumer)


async def committed_offsets(group: str, topic: str) -> dict[TopicPartition, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA_BOOTSTRAP)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp: meta.offset for tp, meta in offsets.items() if tp.topic == topic}


def records_past_commits(group: str, topic: str, timeout_s: float = 30) -> int:
    """How many records of `topic` are at or after the group's committed offsets, waiting
    up to `timeout_s` for none to be. Offsets alone cannot tell: each gateway request is a
    Kafka transaction, so a marker follows every request's records, and a request answered
    503 leaves aborted records that a read_committed consumer never sees."""
    deadline = time.monotonic() + timeout_s
    while True:
        committed = asyncio.run(committed_offsets(group, topic))
        past = len(asyncio.run(read_since(committed, settle_s=0.5)))
        if past == 0 or time.monotonic() > deadline:
            return past
        time.sleep(1)


class WorkerProcess:
    def __init__(self, env: dict[str, str]) -> None:
        # The worker's Faust data directory goes under TMPDIR (streams.app.worker_data_dir):
        # a directory of this worker's own, removed when it stops.
        self.tmp = Path(tempfile.mkdtemp(prefix="quip-worker-"))
        self.env = clean_env(
            {
                "QUIP_KAFKA_BOOTSTRAP": KAFKA_BOOTSTRAP,
                "QUIP_INFLUX_URL": INFLUX_URL,
                "TMPDIR": str(self.tmp),
                **env,
            }
        )
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(tempfile.mkstemp(prefix="quip-worker-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, ready_timeout_s: float = 60) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "quip", "worker", "--port", str(self.port)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"worker exited {self.process.returncode}:\n{self.log.read_text()[-3000:]}"
                )
            try:
                if httpx.get(f"{self.url}/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"worker not ready:\n{self.log.read_text()[-3000:]}")

    def ready_checks_failing(self) -> set[str]:
        checks: dict[str, str] = httpx.get(f"{self.url}/ready", timeout=5).json()["checks"]
        return {name for name, status in checks.items() if status != "ok"}

    def kill(self) -> None:
        """SIGKILL: no flush, no commit, no goodbye to the group."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> int:
        try:
            if self.process is None or self.process.poll() is not None:
                return self.process.returncode if self.process else 0
            self.process.terminate()
            try:
                return self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                return self.process.wait(timeout=30)
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


@contextmanager
def running_worker(env: dict[str, str]) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(env)
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()
