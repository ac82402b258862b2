"""The query API without ClickHouse: authentication order and answers, parameter errors as
400, store failures as 503, the engine pool, one query per key under concurrency, and the
`quip api` command's refusals. SQL results are exercised in tests/integration/test_api.py."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from api.app import GC_YOUNG_THRESHOLD, create_app
from api.cache import QueryCache, utc_today
from api.pool import EnginePool
from common.bus import BusUnavailable, OutgoingRecord
from common.settings import Settings
from schemas.events import decode_record, erased_user, record_key
from schemas.funnels import FunnelConfigError
from schemas.topics import ANALYTICS_EVENTS
from sinks.clickhouse import ClickHouseError, Params, Row
from tests.conftest import clean_env

READ = {"Authorization": "Bearer rk"}
ADMIN = {"Authorization": "Bearer ak"}


class FakeClickHouse:
    """Answers every query with no rows (a count with 0); can block or fail on demand."""

    database = "fake"

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.queries: list[str] = []
        self.gate: threading.Event | None = None
        self.closed = False
        self._lock = threading.Lock()

    def execute(self, sql: str, params: Params | None = None) -> list[Row]:
        with self._lock:
            self.queries.append(sql)
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail:
            raise ClickHouseError("Connection refused (fake)")
        return [(0,)] if "count()" in sql and "GROUP BY" not in sql else []

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> int:
        return len(rows)

    def server_version(self) -> tuple[int, ...]:
        return (26, 9, 0)

    def close(self) -> None:
        self.closed = True


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "read_keys": "default:rk,other:ro",
        "admin_keys": "default:ak,other:ao",
        **overrides,
    }
    return Settings(**values)


@pytest.fixture
def engine() -> FakeClickHouse:
    return FakeClickHouse()


@pytest.fixture
async def app(engine: FakeClickHouse) -> AsyncIterator[FastAPI]:
    application = create_app(settings(), engine)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
        yield http


# ------------------------------------------------------------------------ authentication


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        pytest.param({}, "missing Authorization", id="no header"),
        pytest.param({"Authorization": "Bearer nope"}, "unknown read key", id="unknown key"),
        pytest.param({"Authorization": "Basic cms6"}, "missing Authorization", id="basic scheme"),
        pytest.param({"Authorization": "Bearer"}, "missing Authorization", id="empty bearer"),
        pytest.param({"Authorization": "Bearer rk "}, None, id="trailing space is trimmed"),
    ],
)
async def test_read_endpoints_need_a_known_key(
    client: httpx.AsyncClient, headers: dict[str, str], detail: str | None
) -> None:
    response = await client.get("/v1/metrics/active-users", headers=headers)
    if detail is None:
        assert response.status_code == 200
        return
    assert response.status_code == 401
    assert detail in response.json()["detail"]
    assert response.headers["www-authenticate"] == "Bearer"


async def test_a_key_reads_only_its_project(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/metrics/events", headers=READ)).status_code == 200
    assert (await client.get("/v1/metrics/events?project=default", headers=READ)).is_success
    other = await client.get("/v1/metrics/events?project=other", headers=READ)
    assert other.status_code == 403
    assert "'other'" in other.json()["detail"]
    ok = await client.get(
        "/v1/metrics/events?project=other", headers={"Authorization": "Bearer ro"}
    )
    assert ok.status_code == 200


async def test_admin_keys_read_and_erase_read_keys_only_read(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/metrics/services", headers=ADMIN)).status_code == 200
    refused = await client.delete("/v1/users/u1", headers=READ)
    assert refused.status_code == 403
    assert "admin key" in refused.json()["detail"]
    assert (await client.delete("/v1/users/u1")).status_code == 401
    unknown = await client.delete("/v1/users/u1", headers={"Authorization": "Bearer zz"})
    assert unknown.status_code == 401
    other = await client.delete("/v1/users/u1?project=other", headers=ADMIN)
    assert other.status_code == 403
    done = await client.delete("/v1/users/u1", headers=ADMIN)
    assert done.status_code == 202
    assert done.json() == {"status": "scheduled"}


async def test_keys_are_checked_before_parameters(client: httpx.AsyncClient) -> None:
    bad = "/v1/metrics/retention?from=nope&period=month"
    assert (await client.get(bad)).status_code == 401
    assert (await client.get(bad + "&project=other", headers=READ)).status_code == 403
    assert (await client.get(bad, headers=READ)).status_code == 400


# ------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("url", "detail"),
    [
        pytest.param("/v1/metrics/active-users?from=2026-1-1", "YYYY-MM-DD", id="short date"),
        pytest.param("/v1/metrics/active-users?to=2026-02-30", "not a valid", id="no such day"),
        pytest.param("/v1/metrics/active-users?from=٢٠٢٦-01-01", "YYYY-MM-DD", id="unicode digits"),
        pytest.param("/v1/metrics/active-users?from=1999-12-31", "between", id="before 2000"),
        pytest.param(
            "/v1/metrics/active-users?from=2026-10-02&to=2026-10-01", "after", id="from after to"
        ),
        pytest.param(
            "/v1/metrics/active-users?from=2025-01-01&to=2026-01-02", "at most 366", id="too long"
        ),
        pytest.param("/v1/metrics/retention?period=month", "period", id="unknown period"),
        pytest.param("/v1/metrics/events?interval=minute", "interval", id="unknown interval"),
        pytest.param("/v1/metrics/playback?group_by=region", "group_by", id="unknown group_by"),
        pytest.param(
            "/v1/metrics/playback/timeseries?interval=minute&from=2026-10-01&to=2026-10-08",
            "at most 7",
            id="minute series over a week",
        ),
    ],
)
async def test_bad_parameters_are_400_with_a_message(
    client: httpx.AsyncClient, url: str, detail: str
) -> None:
    response = await client.get(url, headers=READ)
    assert response.status_code == 400
    assert detail in response.json()["detail"]


async def test_minute_series_default_range_fits(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/metrics/playback/timeseries?interval=minute", headers=READ)
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        pytest.param({"steps": [], "window_seconds": 60}, "at least 2", id="no steps"),
        pytest.param({"steps": ["a"] * 11, "window_seconds": 60}, "at most 10", id="11 steps"),
        pytest.param({"steps": ["a", "b"], "window_seconds": 0}, "greater than 0", id="window 0"),
        pytest.param(
            {"steps": ["a", "b"], "window_seconds": 14 * 86_400 + 1}, "less than", id="window big"
        ),
        pytest.param({"steps": ["a", "b"], "window_seconds": "60"}, "integer", id="window text"),
        pytest.param({"steps": ["a", "b"], "window_seconds": True}, "integer", id="window bool"),
        pytest.param({"steps": ["a", "Bad Type"], "window_seconds": 60}, "steps[1]", id="type"),
        pytest.param(
            {"steps": ["a", {"event": "b", "where": {"k y": 1}}], "window_seconds": 60},
            "steps[1]",
            id="bad prop key",
        ),
        pytest.param(
            {"steps": ["a", {"event": "b", "where": {"k": [1]}}], "window_seconds": 60},
            "where",
            id="list filter value",
        ),
        pytest.param(
            {"steps": ["a", {"event": "b", "where": {"k": 2**60}}], "window_seconds": 60},
            "2**53",
            id="inexact integer",
        ),
        pytest.param(
            {"steps": ["a", {"event": "b", "extra": 1}], "window_seconds": 60},
            "extra",
            id="unknown step field",
        ),
        pytest.param({"steps": ["a", "b"]}, "window_seconds", id="no window"),
        pytest.param(
            {"steps": ["a", "b"], "window_seconds": 60, "from": "yesterday"}, "from", id="date"
        ),
        pytest.param(["a", "b"], "body", id="array body"),
    ],
)
async def test_bad_funnel_queries_are_400(
    client: httpx.AsyncClient, body: object, detail: str
) -> None:
    response = await client.post("/v1/funnels/query", json=body, headers=READ)
    assert response.status_code == 400, response.text
    assert detail in response.json()["detail"]


async def test_funnel_project_in_body_and_query(client: httpx.AsyncClient) -> None:
    body = {"steps": ["a", "b"], "window_seconds": 60}
    ok = await client.post("/v1/funnels/query", json={**body, "project": "default"}, headers=READ)
    assert ok.status_code == 200
    assert [step["event"] for step in ok.json()["steps"]] == ["a", "b"]
    other = await client.post("/v1/funnels/query", json={**body, "project": "other"}, headers=READ)
    assert other.status_code == 403
    both = await client.post(
        "/v1/funnels/query?project=other", json={**body, "project": "default"}, headers=READ
    )
    assert both.status_code == 400


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"{", id="truncated JSON"),
        pytest.param(b"\xff\xfe", id="not UTF-8"),
        pytest.param(b"[" * 100_000, id="deeply nested"),
        pytest.param(b'{"steps": ["a", "b"], "window_seconds": 1e999}', id="infinite number"),
    ],
)
async def test_unparsable_bodies_are_400(client: httpx.AsyncClient, content: bytes) -> None:
    response = await client.post(
        "/v1/funnels/query",
        content=content,
        headers={**READ, "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["detail"]


async def test_user_id_bounds(client: httpx.AsyncClient, engine: FakeClickHouse) -> None:
    assert (await client.delete("/v1/users/", headers=ADMIN)).status_code == 400
    assert (await client.delete("/v1/users/" + "x" * 129, headers=ADMIN)).status_code == 400
    slashed = await client.delete("/v1/users/team%2Fuser-1", headers=ADMIN)
    assert slashed.status_code == 202
    assert not any("DELETE" in sql for sql in engine.queries), "no rows: nothing deleted"


class FakeBus:
    """A publisher (common.bus.Publisher) that keeps what it is given, or refuses it."""

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.records: list[OutgoingRecord] = []
        self.last_error: str | None = None

    @property
    def ready(self) -> bool:
        return not self.refuse

    async def start(self) -> None:
        raise AssertionError("the app must not start a publisher it was given")

    async def stop(self) -> None:
        raise AssertionError("the app must not stop a publisher it was given")

    async def publish(self, records: Sequence[OutgoingRecord]) -> None:
        if self.refuse:
            raise BusUnavailable("Kafka unavailable (fake)", 7)
        self.records.extend(records)


async def test_erasure_is_put_on_the_bus_under_the_users_key(engine: FakeClickHouse) -> None:
    bus = FakeBus()
    application = create_app(settings(), engine, publisher=bus)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
            response = await http.delete("/v1/users/u%2F1", headers=ADMIN)
    assert response.status_code == 202
    (record,) = bus.records
    assert record.topic == ANALYTICS_EVENTS.name
    assert record.key == record_key("default", "u/1")  # the partition of the user's events
    decoded = decode_record(record.value)
    assert (decoded.project, erased_user(decoded)) == ("default", "u/1")


async def test_erasure_the_bus_refuses_is_503_and_deletes_nothing(engine: FakeClickHouse) -> None:
    application = create_app(settings(), engine, publisher=FakeBus(refuse=True))
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
            response = await http.delete("/v1/users/u-1", headers=ADMIN)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "7"
    assert "fake" not in response.text
    assert engine.queries == []


# ------------------------------------------------------------------------ failures


async def test_store_failures_are_503_with_retry_after() -> None:
    application = create_app(settings(), FakeClickHouse(fail=True))
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
        response = await http.get("/v1/metrics/active-users", headers=READ)
        assert response.status_code == 503
        assert response.headers["retry-after"] == "5"
        assert "Connection refused" not in response.text, "engine text stays in the log"
        ready = await http.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["checks"]["clickhouse"].startswith("unreachable")


async def test_unreachable_server_in_cluster_mode() -> None:
    application = create_app(
        settings(mode="cluster", clickhouse_url="clickhouse://127.0.0.1:1/quip"), pool_size=2
    )
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
        assert (await http.get("/health")).json() == {"status": "ok"}
        assert (await http.get("/ready")).status_code == 503
        assert (await http.get("/v1/metrics/events", headers=READ)).status_code == 503


def test_cluster_mode_needs_read_and_admin_keys() -> None:
    with pytest.raises(ValueError, match="QUIP_ADMIN_KEYS"):
        create_app(Settings(mode="cluster", read_keys="default:rk"), FakeClickHouse())


def test_bad_funnels_file_stops_start_up(tmp_path: Path) -> None:
    path = tmp_path / "funnels.toml"
    path.write_text('[[funnels]]\nname = "x"\nwindow_seconds = 60\nsteps = [{event = "a"}]\n')
    with pytest.raises(FunnelConfigError):
        create_app(settings(funnels_file=path), FakeClickHouse())


# ------------------------------------------------------------------------ cache and pool


async def test_same_question_at_once_runs_one_query(
    client: httpx.AsyncClient, engine: FakeClickHouse
) -> None:
    engine.gate = threading.Event()
    url = "/v1/metrics/events?from=2026-10-01&to=2026-10-02"
    requests = [asyncio.create_task(client.get(url, headers=READ)) for _ in range(5)]
    await asyncio.sleep(0.2)
    engine.gate.set()
    responses = await asyncio.gather(*requests)
    assert [r.status_code for r in responses] == [200] * 5
    assert len([sql for sql in engine.queries if "uniqExact" in sql]) == 1
    again = await client.get(url, headers=READ)
    assert again.headers["x-cache"] == "hit"
    assert len([sql for sql in engine.queries if "uniqExact" in sql]) == 1


class TodaysCount(FakeClickHouse):
    """Answers the events query with one count that the test changes."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 1

    def execute(self, sql: str, params: Params | None = None) -> list[Row]:
        rows = super().execute(sql, params)
        if "uniqExact" in sql and params is not None:
            return [(str(params["day_from"]), "page_view", self.count)]
        return rows


async def test_a_stale_answer_is_sent_at_once_while_one_query_refreshes_it() -> None:
    engine = TodaysCount()
    now = [1000.0]
    cache = QueryCache(clock=lambda: now[0], hit_ratio_gauge=None)
    application = create_app(settings(), engine, cache=cache)
    today = utc_today().isoformat()
    url = f"/v1/metrics/events?from={today}&to={today}"

    def answered(response: httpx.Response) -> tuple[str, int]:
        return response.headers["x-cache"], response.json()[0]["count"]

    def queries() -> int:
        return len([sql for sql in engine.queries if "uniqExact" in sql])

    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            assert answered(await client.get(url, headers=READ)) == ("miss", 1)
            engine.count = 2
            engine.gate = threading.Event()  # the refresh query blocks until released
            now[0] += cache.open_ttl_s + 1
            assert answered(await client.get(url, headers=READ)) == ("stale", 1)
            for _ in range(100):
                if queries() == 2:
                    break
                await asyncio.sleep(0.02)
            for _ in range(2):
                assert answered(await client.get(url, headers=READ)) == ("stale", 1)
            assert queries() == 2, "one refresh for the three stale answers"
            engine.gate.set()
            for _ in range(100):
                response = await client.get(url, headers=READ)
                if response.headers["x-cache"] == "hit":
                    break
                await asyncio.sleep(0.02)
            assert answered(response) == ("hit", 2)
            now[0] += cache.open_ttl_s + cache.open_stale_s
            engine.count = 3
            assert answered(await client.get(url, headers=READ)) == ("miss", 3), (
                "past the stale window the request waits for the query"
            )


async def test_a_running_app_collects_young_objects_less_often_and_restores_it() -> None:
    application = create_app(settings(), FakeClickHouse())
    before = gc.get_threshold()
    async with application.router.lifespan_context(application):
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *before[1:])
    assert gc.get_threshold() == before


async def test_erasure_drops_the_projects_cached_answers(client: httpx.AsyncClient) -> None:
    url = "/v1/metrics/events?from=2026-10-01&to=2026-10-02"
    assert (await client.get(url, headers=READ)).headers["x-cache"] == "miss"
    assert (await client.get(url, headers=READ)).headers["x-cache"] == "hit"
    assert (await client.delete("/v1/users/u9", headers=ADMIN)).status_code == 202
    assert (await client.get(url, headers=READ)).headers["x-cache"] == "miss"


async def test_pool_opens_at_most_size_connections_and_replaces_broken_ones() -> None:
    opened: list[FakeClickHouse] = []
    gate = threading.Event()

    def connect() -> FakeClickHouse:
        engine = FakeClickHouse()
        engine.gate = gate
        opened.append(engine)
        return engine

    pool = EnginePool.of_connections(connect, size=3)
    runs = [asyncio.create_task(pool.run(lambda ch: ch.execute("SELECT 1"))) for _ in range(10)]
    await asyncio.sleep(0.2)
    assert len(opened) == 3, "three queries run, seven wait for a slot"
    gate.set()
    await asyncio.gather(*runs)
    assert len(opened) == 3

    def broken(ch: Any) -> None:
        raise ClickHouseError("socket closed")

    with pytest.raises(ClickHouseError):
        await pool.run(broken)
    assert sum(engine.closed for engine in opened) == 1
    await pool.run(lambda ch: ch.execute("SELECT 1"))
    await pool.aclose()
    assert all(engine.closed for engine in opened)


async def test_single_connection_pool_keeps_its_engine() -> None:
    engine = FakeClickHouse()
    pool = EnginePool.single(engine)

    def broken(ch: Any) -> None:
        raise ClickHouseError("query failed")

    with pytest.raises(ClickHouseError):
        await pool.run(broken)
    assert await pool.run(lambda ch: ch is engine)
    await pool.aclose()
    assert not engine.closed, "the caller owns an injected engine"


# ------------------------------------------------------------------------ command


def test_quip_api_refuses_cluster_mode_without_keys() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "quip", "api"],
        capture_output=True,
        text=True,
        env=clean_env({"QUIP_MODE": "cluster"}),
        check=False,
        timeout=60,
    )
    assert result.returncode == 2
    assert "QUIP_READ_KEYS, QUIP_ADMIN_KEYS required in cluster mode" in result.stderr


async def test_a_cancelled_caller_leaves_its_query_running_on_its_connection() -> None:
    """Client gone or shutdown: the caller returns, but the connection is neither reused
    nor closed until its thread is done, and aclose() waits for it."""
    engine = FakeClickHouse()
    engine.gate = threading.Event()
    pool = EnginePool.single(engine)
    caller = asyncio.create_task(pool.run(lambda ch: ch.execute("SELECT sleep(1)")))
    await asyncio.sleep(0.1)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    second = asyncio.create_task(pool.run(lambda ch: ch.execute("SELECT 2")))
    await asyncio.sleep(0.1)
    assert engine.queries == ["SELECT sleep(1)"], "the slot is still taken"
    closing = asyncio.create_task(pool.aclose())
    await asyncio.sleep(0.1)
    assert not closing.done(), "aclose waits for the running query"
    engine.gate.set()
    await second
    await closing
    assert engine.queries == ["SELECT sleep(1)", "SELECT 2"]
