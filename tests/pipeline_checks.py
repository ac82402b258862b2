"""Drive the cluster path and check its numbers against independent computations."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from typing import Literal, TypeVar

import httpx

from sinks.clickhouse import ClickHouseError, ServerClickHouse
from sinks.queries.activity import active_users, retention
from streams.processors.activity import utc_day
from tests.expectations import expected_active, expected_event_counts, expected_retention
from tests.gateway_process import GatewayProcess
from tests.traffic import as_records

WRITE_KEY = "wk_worker_test"
T = TypeVar("T")


def post_all(
    gateway: GatewayProcess,
    batches: list[list[dict[str, object]]],
    pause_s: float = 0.0,
    retry_for_s: float = 120.0,
) -> None:
    """POST each batch, retrying a 503 (the bus is briefly unavailable) for up to
    `retry_for_s` per batch; then fail with the last answer and the gateway's log tail."""
    with httpx.Client(timeout=30) as client:
        for index, batch in enumerate(batches):
            time.sleep(pause_s)
            deadline = time.monotonic() + retry_for_s
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
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"batch {index} of {len(batches)} still answered 503 after "
                        f"{retry_for_s:g} s ({response.text}); gateway log:\n"
                        + gateway.log.read_text(errors="replace")[-3000:]
                    )
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
    rows = clickhouse.execute(
        "SELECT toString(day), type, uniqExact(event_id), count() FROM events FINAL "
        "WHERE project = %(p)s GROUP BY day, type",
        {"p": project},
    )
    assert {(day, kind): distinct for day, kind, distinct, _ in rows} == expected_counts
    assert all(distinct == total for _, _, distinct, total in rows), "FINAL left a duplicate"

    today = utc_day(int(time.time() * 1000))
    day_from = today - timedelta(days=25)
    # The activity rows are their own insert, stored beside the events rows: they may land
    # after the last event's, so these wait for them (bounded) instead of asserting at once.
    expected = expected_active(records, day_from, today, project)
    assert settled(lambda: active_users(clickhouse, project, day_from, today), expected) == expected
    periods: tuple[Literal["day", "week"], ...] = ("day", "week")
    for period in periods:
        wanted = expected_retention(records, day_from, today, period, today, project)
        got = settled(
            partial(retention, clickhouse, project, day_from, today, period, today), wanted
        )
        assert got == wanted, period


def settled(fetch: Callable[[], T], expected: T, timeout_s: float = 60) -> T:
    """What `fetch` returns once it equals `expected`, or its last answer at the deadline
    (for the caller to assert on and show)."""
    deadline = time.monotonic() + timeout_s
    while (got := fetch()) != expected and time.monotonic() < deadline:
        time.sleep(0.5)
    return got
