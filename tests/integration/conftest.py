"""Fixtures for tests that run the whole cluster path: gateway → Kafka → worker → ClickHouse."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from schemas.services import SERVICE_TOPICS
from schemas.topics import ANALYTICS_EVENTS
from sinks.clickhouse import ServerClickHouse
from sinks.migrate import migrate
from tests.conftest import CLICKHOUSE_URL
from tests.gateway_process import GatewayProcess, running_gateway
from tests.pipeline_checks import WRITE_KEY
from tests.worker_process import start_group_at_end


@pytest.fixture
def project(unique_name: str) -> str:
    return f"p_{unique_name}"


@pytest.fixture
def gateway(registry_topics: None, project: str) -> Iterator[GatewayProcess]:
    env = {"QUIP_WRITE_KEYS": f"{project}:{WRITE_KEY}", "QUIP_RATE_LIMIT_IP_PER_MIN": "0"}
    with running_gateway(env) as process:
        yield process


@pytest.fixture
def worker_env(server_clickhouse: ServerClickHouse, unique_name: str) -> dict[str, str]:
    migrate(server_clickhouse)
    asyncio.run(start_group_at_end(unique_name, [ANALYTICS_EVENTS.name, *SERVICE_TOPICS]))
    return {
        "QUIP_CLICKHOUSE_URL": f"{CLICKHOUSE_URL.rsplit('/', 1)[0]}/{unique_name}",
        "QUIP_WORKER_GROUP": unique_name,
    }
