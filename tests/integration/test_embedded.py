"""`quip up` end to end: one process, local bus, chDB, API. Killed with SIGKILL mid-way and
restarted, it loses no accepted event, counts none twice, and keeps an open play."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

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
        counts = {
            (row["t"], row["type"]): row["count"]
            for row in up.get(
                "/v1/metrics/events", interval="day", **{"from": str(day_from), "to": str(today)}
            )
        }
        playback = wait_for(
            lambda: (lambda r: r if r[0]["watch_hours"] == expected_watch_hours else None)(
                up.get("/v1/metrics/playback", **{"from": str(play_day), "to": str(play_day)})
            )
        )
    finally:
        up.stop()
    assert got == expected
    assert counts == expected_event_counts(records, "default")
    assert playback is not None
    assert (playback[0]["plays"], playback[0]["started"], playback[0]["bitrate_switches"]) == (
        1,
        1,
        1,
    )


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
