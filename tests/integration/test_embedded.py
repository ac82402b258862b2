"""`quip up` end to end: one process, local bus, chDB, API. Killed with SIGKILL mid-way and
restarted, it loses no accepted event, counts none twice, and keeps an open play."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from common.settings import Settings
from common.supervision import CRASH_EXIT_STATUS
from quip.embedded.app import create_embedded_app
from sinks.clickhouse import EmbeddedClickHouse
from streams.processors.activity import utc_day
from tests.conftest import clean_env
from tests.expectations import expected_active, expected_event_counts
from tests.gateway_process import free_port
from tests.integration.test_worker_plays_funnels import START, plays
from tests.traffic import as_records, generate_batches

pytestmark = pytest.mark.chdb


class Embedded:
    def __init__(self, workdir: Path, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.env = env or {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = clean_env(self.env)
        with (self.workdir / "up.log").open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "quip", "up", "--port", str(self.port)],
                cwd=self.workdir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (self.workdir / "up.log").read_text()[-2000:]
            try:
                if httpx.get(f"{self.url}/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError("quip up did not become ready")

    def key(self, kind: str) -> str:
        keys = json.loads((self.workdir / ".quip" / "dev-keys.json").read_text())
        return str(keys[kind].split(":", 1)[1])

    def post(self, events: list[dict[str, Any]]) -> None:
        response = httpx.post(
            f"{self.url}/v1/events",
            json={"events": events},
            headers={"Authorization": f"Bearer {self.key('write_keys')}"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        assert response.json()["rejected"] == 0

    def erase(self, user_id: str) -> None:
        response = httpx.delete(
            f"{self.url}/v1/users/{user_id}",
            params={"project": "default"},
            headers={"Authorization": f"Bearer {self.key('admin_keys')}"},
            timeout=30,
        )
        assert response.status_code == 202, response.text

    def get(self, path: str, **params: str) -> Any:
        response = httpx.get(
            f"{self.url}{path}",
            params={"project": "default", **params},
            headers={"Authorization": f"Bearer {self.key('read_keys')}"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        return response.json()

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


def wait_for(check: Any, timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.5)


def test_kill_and_restart_keep_numbers_exact(tmp_path: Path) -> None:
    batches = generate_batches(seed=5, users=80, days=20, batch_size=50)
    play_a = plays()[:7]
    up = Embedded(tmp_path)
    up.start()
    try:
        for batch in batches[: len(batches) // 2]:
            up.post(batch)
        up.post(play_a[:4])  # an open play
        up.kill()  # accepted batches may not be processed yet: they are in the log
        up.start()
        for batch in batches[len(batches) // 2 :]:
            up.post(batch)
        up.post(batches[0])  # a client retry
        up.post(play_a[4:])

        records = as_records([*batches, play_a], "default")
        today = utc_day(int(time.time() * 1000))
        day_from = today - timedelta(days=25)
        expected = expected_active(records, day_from, today, "default")
        play_day = utc_day(START)
        expected_watch_hours = (800 + 10_000 + 5_000 + 500) / 3_600_000
        got = wait_for(
            lambda: (lambda r: r if r == expected else None)(
                up.get("/v1/metrics/active-users", **{"from": str(day_from), "to": str(today)})
            )
        )
        expected_counts = expected_event_counts(records, "default")

        def event_counts() -> dict[tuple[str, str], int]:
            return {
                (row["t"], row["type"]): row["count"]
                for row in up.get(
                    "/v1/metrics/events",
                    interval="day",
                    **{"from": str(day_from), "to": str(today)},
                )
            }

        # The active users can settle before the last request's events are counted.
        counts = wait_for(lambda: (lambda c: c if c == expected_counts else None)(event_counts()))
        counts = counts or event_counts()
        playback = wait_for(
            lambda: (lambda r: r if r[0]["watch_hours"] == expected_watch_hours else None)(
                up.get("/v1/metrics/playback", **{"from": str(play_day), "to": str(play_day)})
            )
        )
    finally:
        up.stop()
    assert got == expected
    assert counts == expected_counts
    assert playback is not None
    assert (playback[0]["plays"], playback[0]["started"], playback[0]["bitrate_switches"]) == (
        1,
        1,
        1,
    )
    # No InfluxDB in quip up: the plays state holds plays, no series entries.
    state = sqlite3.connect(tmp_path / ".quip" / "state.sqlite")
    try:
        kinds = {
            key.split(":", 1)[0]
            for (key,) in state.execute("SELECT key FROM state WHERE processor = 'plays'")
        }
    finally:
        state.close()
    assert kinds == {"play"}


def test_erasure_forgets_the_users_funnel_progress(tmp_path: Path) -> None:
    """`DELETE /v1/users/{id}` goes through the local bus to the runner: the user's
    predefined-funnel progress restarts from nothing (the rows alone would come back with
    the user's next step), another user's goes on."""
    funnels_file = Path(__file__).resolve().parents[2] / "deploy" / "funnels.example.toml"
    up = Embedded(tmp_path, {"QUIP_FUNNELS_FILE": str(funnels_file)})
    up.start()
    now = int(time.time() * 1000)
    today = utc_day(now).isoformat()
    users = ("u-gone", "u-kept")

    def users_per_step() -> list[int]:
        answer = up.get("/v1/funnels/first-purchase", **{"from": today, "to": today})
        return [step["users"] for step in answer["steps"]]

    def settle(expected: list[int], what: str) -> None:
        deadline = time.monotonic() + 30
        while (got := users_per_step()) != expected:
            assert time.monotonic() < deadline, f"{what}: {got} != {expected}"
            time.sleep(0.3)

    try:
        up.post([
            {"event_id": f"{user}-s", "type": "session_start", "user_id": user, "ts": now}
            for user in users
        ])  # fmt: skip
        settle([2, 0, 0], "both users at step 1")
        up.erase("u-gone")
        up.post([
            {"event_id": f"{user}-v", "type": "page_view", "user_id": user, "ts": now + 1000,
             "props": {"url": "https://quibrowser.example/store"}}
            for user in users
        ])  # fmt: skip
        settle([1, 1, 0], "only the kept user at step 2")
        time.sleep(2)  # nothing of the erased user shows up later either
        assert users_per_step() == [1, 1, 0]
    finally:
        up.stop()


def an_event(event_id: str) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "type": "menu.open",
        "user_id": "u1",
        "ts": int(time.time() * 1000),
        "props": {},
    }


@pytest.fixture
def data_dir(tmp_path: Path, chdb_path: Path) -> Iterator[Path]:
    """A data directory for `quip up` in this process: its chDB is the one path chDB lets
    the process bind (tests/conftest.py), whose `quip` database is dropped afterwards."""
    directory = tmp_path / ".quip"
    directory.mkdir()
    (directory / "chdb").symlink_to(chdb_path)
    yield directory
    EmbeddedClickHouse(chdb_path).execute("DROP DATABASE IF EXISTS quip")


async def test_ready_reports_the_stores_and_a_dead_bus_writer_answers_503(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`/ready` reports the bus writer, both pipelines and the store step; once the bus's
    writer is gone (here the loop's thread pool is, so no write can be scheduled),
    POST /v1/events answers 503 with Retry-After at once, and `/ready` says why."""
    exits: list[int] = []
    monkeypatch.setattr(os, "_exit", exits.append)  # the pipelines crash too: no exit here
    app = create_embedded_app(Settings(data_dir=data_dir))
    write_key = app.state.settings.write_keys.get_secret_value().split(",")[0].split(":", 1)[1]
    auth = {"Authorization": f"Bearer {write_key}"}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://up") as client:
            ready = await client.get("/ready")
            assert ready.status_code == 200, ready.text
            assert ready.json()["checks"] == {
                "bus": "ok",
                "pipeline:events": "ok",
                "pipeline:services": "ok",
                "store:clickhouse": "ok",
                "clickhouse": "ok",
            }
            accepted = await client.post(
                "/v1/events", json={"events": [an_event("e1")]}, headers=auth
            )
            assert accepted.status_code == 200, accepted.text

            await asyncio.get_running_loop().shutdown_default_executor()
            async with asyncio.timeout(10):
                for event_id in ("e2", "e3"):  # the one that stops the writer, then one after
                    refused = await client.post(
                        "/v1/events", json={"events": [an_event(event_id)]}, headers=auth
                    )
                    assert refused.status_code == 503, refused.text
                    assert int(refused.headers["Retry-After"]) > 0
                ready = await client.get("/ready")
    assert ready.status_code == 503
    assert ready.json()["checks"]["bus"].startswith("local bus writer stopped: RuntimeError")


async def test_ready_fails_while_the_store_step_cannot_write(data_dir: Path) -> None:
    """The store step's failing chDB writes (the events table renamed away under it) make
    `/ready` answer 503 with their reason, and 200 again once the writes go through."""
    app = create_embedded_app(Settings(data_dir=data_dir))
    write_key = app.state.settings.write_keys.get_secret_value().split(",")[0].split(":", 1)[1]
    pool = app.state.context.pool

    async def ready_when(expected: int) -> dict[str, str]:
        async with asyncio.timeout(60):
            while (ready := await client.get("/ready")).status_code != expected:
                await asyncio.sleep(0.2)
        checks: dict[str, str] = ready.json()["checks"]
        return checks

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://up") as client:
            await ready_when(200)
            await pool.run(lambda ch: ch.execute("RENAME TABLE events TO events_away"))
            accepted = await client.post(
                "/v1/events",
                json={"events": [an_event("e1")]},
                headers={"Authorization": f"Bearer {write_key}"},
            )
            assert accepted.status_code == 200, accepted.text
            failing = await ready_when(503)
            assert failing["store:clickhouse"] != "ok"
            assert "events" in failing["store:clickhouse"]
            assert failing["bus"] == failing["clickhouse"] == "ok"
            await pool.run(lambda ch: ch.execute("RENAME TABLE events_away TO events"))
            await ready_when(200)


def test_a_pipeline_that_raises_ends_quip_up_with_its_reason(tmp_path: Path) -> None:
    """As the worker does: a pipeline that raises (here its SQLite state stays locked by
    another process past the busy timeout) is on `/ready` as crashed, and the process exits
    with status 70 and the error in its log, rather than answering while processing
    nothing."""
    up = Embedded(tmp_path)
    up.start()
    lock = sqlite3.connect(tmp_path / ".quip" / "state.sqlite", isolation_level=None)
    try:
        lock.execute("BEGIN EXCLUSIVE")
        up.post([an_event("e1")])  # on the bus; its state cannot be stored
        assert up.process is not None
        crashed: dict[str, str] = {}
        deadline = time.monotonic() + 60
        while up.process.poll() is None and time.monotonic() < deadline:
            try:
                ready = httpx.get(f"{up.url}/ready", timeout=1)
                for check, status in ready.json()["checks"].items():
                    if check.startswith("pipeline:") and status != "ok":
                        crashed[check] = status
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        assert up.process.poll() == CRASH_EXIT_STATUS
        log = (tmp_path / "up.log").read_text()
        assert "crashed; the process exits" in log
        assert "database is locked" in log
        assert crashed, "no /ready answer showed the crash"
        assert all("database is locked" in status for status in crashed.values()), crashed
    finally:
        lock.close()
        up.stop()
