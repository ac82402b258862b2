"""Cached answers follow the stored data (SPEC §5): an answer for a closed day, cached, then
late events for that day stored through the gateway; the next answers include them within
the freshness target, in both modes (cluster: gateway → Kafka → worker → clickhouse-server
18.16 → API; embedded: `quip up` on chDB). `Cache-Control: no-cache` reads the stores."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.app import create_app
from api.cache import QueryCache
from api.freshness import ChangeWatcher
from api.pool import EnginePool
from common.settings import Settings
from schemas.output import TableRows
from sinks.changes import changes_since, record_changes, touched_days
from sinks.clickhouse import ClickHouse, ServerClickHouse
from sinks.migrate import migrate
from tests.conftest import KAFKA_BOOTSTRAP
from tests.gateway_process import GatewayProcess
from tests.integration.test_embedded import Embedded
from tests.pipeline_checks import post_all
from tests.worker_process import running_worker

DAY_MS = 86_400_000
# SPEC §5's freshness target is 5 s after the event's 200; the bound here is looser so a
# busy CI box does not fail a correctness test, and still far below the 300 s closed-day
# TTL that used to hide late data.
ANSWER_BOUND_S = 30.0


def closed_day() -> date:
    return datetime.now(UTC).date() - timedelta(days=3)


def events_on(day: date, users: range, tag: str) -> list[dict[str, Any]]:
    noon = int(datetime(day.year, day.month, day.day, 12, tzinfo=UTC).timestamp() * 1000)
    return [
        {"event_id": f"{tag}-{user}", "type": "page_view", "user_id": f"u{user}",
         "ts": noon + user, "props": {"url": "https://vr.example/late"}}
        for user in users
    ]  # fmt: skip


def dau(answer: list[dict[str, Any]]) -> int:
    return int(answer[0]["dau"])


async def wait_until(
    read: Callable[[], Awaitable[tuple[int, str]]], expected: int, bound_s: float
) -> float:
    """Seconds until `read()` gives `expected` (answer, X-Cache); fails past `bound_s`."""
    started = time.monotonic()
    seen: tuple[int, str] = (-1, "")
    while time.monotonic() - started < bound_s:
        seen = await read()
        if seen[0] == expected:
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    raise AssertionError(f"answer still {seen} (X-Cache) after {bound_s} s, expected {expected}")


# ---------------------------------------------------------------------------- pure parts


def test_touched_days_reads_the_day_or_the_time_of_every_table() -> None:
    day = date(2026, 10, 3)
    ms = int(datetime(2026, 10, 5, 23, 59, tzinfo=UTC).timestamp() * 1000)
    tables = [
        TableRows("events", ("project", "event_id", "ts"), [("a", "e1", ms), ("b", "e2", ms)]),
        TableRows("user_activity_input", ("project", "user_id", "day"), [("a", "u", day)]),
        TableRows("plays", ("project", "first_ts"), [("a", ms + 60_000)]),  # the next day
        TableRows("no_time", ("project", "x"), [("c", 1)]),
        TableRows("empty", ("project", "ts"), []),
    ]
    assert touched_days(tables) == {
        ("a", date(2026, 10, 5)),
        ("b", date(2026, 10, 5)),
        ("a", day),
        ("a", date(2026, 10, 6)),
    }


@pytest.fixture
def migrated(clickhouse: ClickHouse) -> ClickHouse:
    migrate(clickhouse)
    return clickhouse


async def test_watcher_reports_each_change_once_on_both_engines(migrated: ClickHouse) -> None:
    cache = QueryCache(hit_ratio_gauge=None)
    watcher = ChangeWatcher(EnginePool.single(migrated), cache)
    assert await watcher.poll() == 0
    record_changes(migrated, [("p", date(2026, 9, 1)), ("q", date(2026, 9, 2))], version=10)
    assert await watcher.poll() == 2
    assert await watcher.poll() == 0, "nothing new"
    record_changes(migrated, [("p", date(2026, 9, 1))], version=9)  # an older copy
    assert await watcher.poll() == 0
    record_changes(migrated, [("p", date(2026, 9, 1))], version=11)
    assert await watcher.poll() == 1
    assert cache.changed_epoch("p", date(2026, 9, 1), date(2026, 9, 1)) == cache.epoch()
    assert cache.changed_epoch("q", date(2026, 9, 3), date(2026, 9, 30)) == 0
    assert sorted(changes_since(migrated, 10)) == [("p", date(2026, 9, 1), 11)]


# ---------------------------------------------------------------------------- no-cache


async def test_no_cache_request_reads_the_stores(migrated: ClickHouse) -> None:
    """Rows inserted behind the API's back (no data version recorded): a plain request
    answers from the cache, one with `Cache-Control: no-cache` from the stores, and the
    answer it stores serves the next plain request."""
    day = closed_day()
    settings = Settings(read_keys="default:rk", admin_keys="default:ak")
    application = create_app(settings, migrated)
    columns = ("project", "user_id", "day")
    params = {"from": day.isoformat(), "to": day.isoformat()}
    headers = {"Authorization": "Bearer rk"}
    migrated.insert("user_activity_input", columns, [("default", "u1", day)])
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as api:
        first = await api.get("/v1/metrics/active-users", params=params, headers=headers)
        assert (dau(first.json()), first.headers["x-cache"]) == (1, "miss")
        migrated.insert("user_activity_input", columns, [("default", "u2", day)])
        cached = await api.get("/v1/metrics/active-users", params=params, headers=headers)
        assert (dau(cached.json()), cached.headers["x-cache"]) == (1, "hit")
        fresh = await api.get(
            "/v1/metrics/active-users",
            params=params,
            headers={**headers, "Cache-Control": "no-cache"},
        )
        assert (dau(fresh.json()), fresh.headers["x-cache"]) == (2, "miss")
        after = await api.get("/v1/metrics/active-users", params=params, headers=headers)
        assert (dau(after.json()), after.headers["x-cache"]) == (2, "hit")


# ---------------------------------------------------------------------------- both modes


@pytest.mark.kafka
@pytest.mark.clickhouse
@pytest.mark.influxdb
async def test_late_events_show_in_cached_answers_in_cluster_mode(
    gateway: GatewayProcess,
    worker_env: dict[str, str],
    server_clickhouse: ServerClickHouse,
    project: str,
) -> None:
    day = closed_day()
    settings = Settings(
        mode="cluster",
        read_keys=f"{project}:rk_fresh",
        admin_keys=f"{project}:ak_fresh",
        clickhouse_url=worker_env["QUIP_CLICKHOUSE_URL"],
        kafka_bootstrap=KAFKA_BOOTSTRAP,
    )
    params = {"project": project, "from": day.isoformat(), "to": day.isoformat()}
    headers = {"Authorization": "Bearer rk_fresh"}
    application = create_app(settings)
    transport = httpx.ASGITransport(app=application)
    with running_worker(worker_env):
        # The lifespan starts the data-version watcher.
        async with (
            application.router.lifespan_context(application),
            httpx.AsyncClient(transport=transport, base_url="http://api") as api,
        ):

            async def read() -> tuple[int, str]:
                response = await api.get(
                    "/v1/metrics/active-users", params=params, headers=headers
                )
                assert response.status_code == 200, response.text
                return dau(response.json()), response.headers["x-cache"]

            post_all(gateway, [events_on(day, range(5), "first")])
            await wait_until(read, 5, ANSWER_BOUND_S * 4)  # the worker's first assignment too
            assert (await read()) == (5, "hit")
            post_all(gateway, [events_on(day, range(5, 8), "late")])
            took = await wait_until(read, 8, ANSWER_BOUND_S)
            assert (await read()) == (8, "hit"), "cached again once fresh"
    print(f"late events in the cached cluster answer after {took:.2f} s")


@pytest.mark.chdb
async def test_late_events_show_in_cached_answers_in_embedded_mode(tmp_path: Path) -> None:
    day = closed_day()
    up = Embedded(tmp_path)
    up.start()
    try:
        async with httpx.AsyncClient(base_url=up.url, timeout=30) as api:

            async def read() -> tuple[int, str]:
                response = await api.get(
                    "/v1/metrics/active-users",
                    params={"project": "default", "from": day.isoformat(), "to": day.isoformat()},
                    headers={"Authorization": f"Bearer {up.key('read_keys')}"},
                )
                assert response.status_code == 200, response.text
                return dau(response.json()), response.headers["x-cache"]

            up.post(events_on(day, range(5), "first"))
            await wait_until(read, 5, ANSWER_BOUND_S)
            assert (await read()) == (5, "hit")
            up.post(events_on(day, range(5, 8), "late"))
            took = await wait_until(read, 8, ANSWER_BOUND_S)
            assert (await read()) == (8, "hit"), "cached again once fresh"
        print(f"late events in the cached embedded answer after {took:.2f} s")
    finally:
        up.stop()
