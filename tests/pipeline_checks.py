"""Drive the cluster path and check its numbers against independent computations."""

from __future__ import annotations

import time
from datetime import timedelta

import httpx

from sinks.clickhouse import ClickHouseError, ServerClickHouse
from sinks.queries.activity import active_users, retention
from streams.processors.activity import utc_day
from tests.expectations import expected_active, expected_event_counts, expected_retention
from tests.gateway_process import GatewayProcess
from tests.traffic import as_records

WRITE_KEY = "wk_worker_test"


def post_all(
    gateway: GatewayProcess, batches: list[list[dict[str, object]]], pause_s: float = 0.0
) -> None:
    with httpx.Client(timeout=30) as client:
        for batch in batches:
            time.sleep(pause_s)
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
        try:
            stored = clickhouse.execute(
                "SELECT uniqExact(event_id) FROM events WHERE project = %(p)s", {"p": project}
            )[0][0]
        except ClickHouseError:  # a fault test may have the server restarting
            stored = -1
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
