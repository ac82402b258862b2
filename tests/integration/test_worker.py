"""Events posted through the gateway come out of the Faust worker as the exact SPEC §4
numbers in ClickHouse, compared with an independent computation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest

from schemas.topics import ANALYTICS_EVENTS
from sinks.clickhouse import ServerClickHouse
from sinks.migrate import migrate
from sinks.queries.activity import active_users, retention
from streams.processors.activity import utc_day
from tests.conftest import CLICKHOUSE_URL
from tests.expectations import expected_active, expected_event_counts, expected_retention
from tests.gateway_process import GatewayProcess, running_gateway
from tests.traffic import as_records, generate_batches
from tests.worker_process import running_worker, start_group_at_end

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]

WRITE_KEY = "wk_worker_test"


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
    asyncio.run(start_group_at_end(unique_name, ANALYTICS_EVENTS.name))
    return {
        "QUIP_CLICKHOUSE_URL": f"{CLICKHOUSE_URL.rsplit('/', 1)[0]}/{unique_name}",
        "QUIP_WORKER_GROUP": unique_name,
    }


def post_all(gateway: GatewayProcess, batches: list[list[dict[str, object]]]) -> None:
    with httpx.Client(timeout=30) as client:
        for batch in batches:
            while True:
                response = client.post(
                    f"{gateway.url}/v1/events",
                    json={"events": batch},
                    headers={"Authorization": f"Bearer {WRITE_KEY}"},
                )
                if response.status_code == 200:
                    assert response.json()["rejected"] == 0, response.text
                    break
                assert response.status_code == 503, response.text
                time.sleep(0.5)


def wait_for_events(
    clickhouse: ServerClickHouse, project: str, expected: int, timeout_s: float = 120
) -> None:
    deadline = time.monotonic() + timeout_s
    stored = -1
    while time.monotonic() < deadline:
        stored = clickhouse.execute(
            "SELECT uniqExact(event_id) FROM events WHERE project = %(p)s", {"p": project}
        )[0][0]
        if stored >= expected:
            return
        time.sleep(0.5)
    raise AssertionError(f"{stored} of {expected} events stored in time")


def assert_exact(
    clickhouse: ServerClickHouse, project: str, batches: list[list[dict[str, object]]]
) -> None:
    records = as_records(batches, project)
    expected_counts = expected_event_counts(records, project)
    wait_for_events(clickhouse, project, sum(expected_counts.values()))
    # The activity agent commits independently of the events agent: give it its flush.
    time.sleep(2.5)
    rows = clickhouse.execute(
        "SELECT toString(day), type, uniqExact(event_id), count() FROM events FINAL "
        "WHERE project = %(p)s GROUP BY day, type",
        {"p": project},
    )
    assert {(day, kind): distinct for day, kind, distinct, _ in rows} == expected_counts
    assert all(distinct == total for _, _, distinct, total in rows), "FINAL left a duplicate"

    today = utc_day(int(time.time() * 1000))
    day_from = today - timedelta(days=25)
    assert active_users(clickhouse, project, day_from, today) == expected_active(
        records, day_from, today, project
    )
    for period in ("day", "week"):
        assert retention(clickhouse, project, day_from, today, period, today) == expected_retention(  # type: ignore[arg-type]
            records, day_from, today, period, today, project
        )


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
