"""Events posted through the gateway come out of the Faust worker as the exact SPEC §4
numbers in ClickHouse, compared with an independent computation."""

from __future__ import annotations

import pytest

from sinks.clickhouse import ServerClickHouse
from tests.gateway_process import GatewayProcess
from tests.pipeline_checks import assert_exact, post_all
from tests.traffic import generate_batches
from tests.worker_process import running_worker

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]


def test_gateway_to_clickhouse_exact(
    gateway: GatewayProcess,
    worker_env: dict[str, str],
    server_clickhouse: ServerClickHouse,
    project: str,
) -> None:
    batches = generate_batches(seed=11, users=60, days=20)
    with running_worker(worker_env):
        post_all(gateway, batches)
        post_all(gateway, batches[:5])  # client retries of whole batches
        assert_exact(server_clickhouse, project, batches)
