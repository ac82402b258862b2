"""Fixtures for tests that run the whole cluster path: gateway → Kafka → worker → ClickHouse."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from api.app import create_app
from common.settings import Settings
from schemas.services import SERVICE_TOPICS
from schemas.topics import ANALYTICS_EVENTS
from sinks.clickhouse import ClickHouse, ServerClickHouse
from sinks.migrate import migrate
from streams.backends.kafka.source import services_group
from tests.conftest import CLICKHOUSE_URL
from tests.gateway_process import GatewayProcess, running_gateway
from tests.insight_data import (
    INSIGHT_DAYS,
    INSIGHT_LAST_DAY,
    INSIGHT_PROJECT,
    INSIGHT_TODAY,
    generate_events,
    store,
)
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
    asyncio.run(start_group_at_end(unique_name, [ANALYTICS_EVENTS.name]))
    asyncio.run(start_group_at_end(services_group(unique_name), list(SERVICE_TOPICS)))
    return {
        "QUIP_CLICKHOUSE_URL": f"{CLICKHOUSE_URL.rsplit('/', 1)[0]}/{unique_name}",
        "QUIP_WORKER_GROUP": unique_name,
    }


@pytest.fixture(scope="session")
def insight_events() -> list[dict[str, Any]]:
    """The insight tests' events as sent (tests/insight_data.py)."""
    return generate_events(seed=3, users=150, days=INSIGHT_DAYS, last_day=INSIGHT_LAST_DAY)


@pytest.fixture
def insight_store(clickhouse: ClickHouse, insight_events: list[dict[str, Any]]) -> ClickHouse:
    """A migrated database holding `insight_events` of INSIGHT_PROJECT (and some of another
    project, which no answer may include), on each engine."""
    migrate(clickhouse)
    store(clickhouse, INSIGHT_PROJECT, insight_events)
    store(clickhouse, "someone_else", insight_events[:50])
    return clickhouse


@pytest.fixture
async def insight_api(insight_store: ClickHouse) -> AsyncIterator[httpx.AsyncClient]:
    """The query API over `insight_store`, read key "rk" (INSIGHT_READ), its today fixed
    to INSIGHT_TODAY."""
    settings = Settings(read_keys=f"{INSIGHT_PROJECT}:rk", admin_keys=f"{INSIGHT_PROJECT}:ak")
    application = create_app(settings, insight_store)
    application.state.context.today = lambda: INSIGHT_TODAY
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        yield client
