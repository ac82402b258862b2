"""Worker killed with SIGKILL mid-stream, several times, and ClickHouse stopped for a
while: the final numbers are still exact (nothing lost, nothing counted twice)."""

from __future__ import annotations

import threading
import time

import pytest

from sinks.clickhouse import ServerClickHouse
from tests.conftest import services
from tests.gateway_process import GatewayProcess
from tests.pipeline_checks import assert_exact, post_all
from tests.traffic import generate_batches
from tests.worker_process import WorkerProcess

# The worker's sink writes InfluxDB too, and waits for it.
pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse, pytest.mark.influxdb]


def test_kill_9_and_clickhouse_outage_keep_numbers_exact(
    gateway: GatewayProcess,
    worker_env: dict[str, str],
    server_clickhouse: ServerClickHouse,
    project: str,
) -> None:
    batches = generate_batches(seed=23, users=200, days=20, batch_size=20)
    # The last quarter is posted while ClickHouse is down: the worker keeps up, so without
    # traffic during the outage it would have nothing to write and nothing to notice.
    during_kills, during_outage = batches[: len(batches) * 3 // 4], batches[len(batches) * 3 // 4 :]
    posters = [
        threading.Thread(target=post_all, args=(gateway, part), kwargs={"pause_s": 0.05})
        for part in (during_kills, during_outage)
    ]
    worker = WorkerProcess(worker_env)
    worker.start()
    try:
        posters[0].start()
        for _ in range(3):
            time.sleep(2.0)
            worker.kill()
            worker.start(ready_timeout_s=90)
        services("stop", "clickhouse")
        try:
            posters[1].start()
            deadline = time.monotonic() + 30
            while "clickhouse" not in worker.ready_checks_failing():
                assert time.monotonic() < deadline, "the outage did not show in /ready"
                time.sleep(0.5)
            time.sleep(3)  # the outage lasts: writes keep failing and are retried
        finally:
            services("start", "clickhouse")
        for poster in posters:
            poster.join(timeout=120)
            assert not poster.is_alive()
        assert_exact(server_clickhouse, project, batches)
    finally:
        worker.stop()
