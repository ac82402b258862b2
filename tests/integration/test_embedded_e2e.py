"""`quip up` with `quip simulate` end to end: the simulator backfills a few days of traffic
while `quip up` is stopped (SIGTERM) and killed (SIGKILL) and restarted under it; then
every SPEC §5 endpoint must answer exactly what tests/expectations.py computes from the
events the simulator recorded as accepted (SPEC §4 definitions, no product code)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import tomllib
import uuid
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from quip.simulate import Historical, ServiceItem, count_items, historical_items
from streams.backends.local.bus import list_segments
from streams.processors.activity import utc_day
from tests.conftest import clean_env
from tests.expectations import (
    expected_active,
    expected_event_counts,
    expected_event_counts_hourly,
    expected_funnel,
    expected_playback,
    expected_playback_series,
    expected_plays,
    expected_retention,
    without_times,
)
from tests.integration.test_embedded import Embedded, wait_for
from tests.integration.test_insights_sessions import expected_rows as expected_sessions
from tests.integration.test_services_bus import expected_metrics
from tests.traffic import as_records

pytestmark = pytest.mark.chdb

REPO = Path(__file__).resolve().parents[2]
SEED, USERS, DAYS = 20261125, 200, 4
STORE_URL = "https://quibrowser.example/store"
ADHOC_FUNNELS: list[tuple[list[Any], int]] = [
    (["session_start", "playback_request", "playback_start", "playback_end"], 900),
    (
        [
            {"event": "page_view", "where": {"url": STORE_URL}},
            "add_to_cart",
            {"event": "purchase"},
        ],
        600,
    ),
]
GROUP_BYS = ("none", "content_id", "device_model", "app_version")


class Checks:
    """The pipeline's answers next to the independent ones, for one set of events."""

    def __init__(self, up: Embedded, events: list[dict[str, Any]], day_from: date, today: date):
        self.up, self.events, self.day_from, self.today = up, events, day_from, today
        self.records = as_records([events], "default")
        self.plays = expected_plays(events)
        self.range = {"from": str(day_from), "to": str(today)}

    def get(self, path: str, **params: str) -> Any:
        return self.up.get(path, **{**self.range, **params})

    def funnel(self, steps: list[Any], window: int) -> tuple[Any, Any]:
        response = httpx.post(
            f"{self.up.url}/v1/funnels/query",
            json={"steps": steps, "window_seconds": window, **self.range},
            headers={"Authorization": f"Bearer {self.up.key('read_keys')}"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        expected = expected_funnel(self.events, steps, window, self.day_from, self.today)
        return without_times(response.json()["steps"]), expected

    def event_counts(self, interval: str) -> tuple[Any, Any]:
        got = {
            (r["t"], r["type"]): r["count"]
            for r in self.get("/v1/metrics/events", interval=interval)
        }
        if interval == "day":
            return got, expected_event_counts(self.records, "default")
        return got, expected_event_counts_hourly(self.events)

    def active(self) -> tuple[Any, Any]:
        expected = expected_active(self.records, self.day_from, self.today, "default")
        return self.get("/v1/metrics/active-users"), expected

    def retention(self, period: str) -> tuple[Any, Any]:
        expected = expected_retention(
            self.records, self.day_from, self.today, period, self.today, "default"
        )
        return self.get("/v1/metrics/retention", period=period), expected

    def playback(self, group_by: str) -> tuple[Any, Any]:
        expected = expected_playback(self.plays, self.day_from, self.today, group_by)
        return self.get("/v1/metrics/playback", group_by=group_by), expected

    def playback_series(self, interval: str) -> tuple[Any, Any]:
        expected = expected_playback_series(self.plays, self.day_from, self.today, interval)
        return self.get("/v1/metrics/playback/timeseries", interval=interval), expected

    def sessions(self) -> tuple[Any, Any]:
        """The sessions insight, its session ids read from the summary quip up's inserts
        fed (migration 0011), floats to 9 digits (ClickHouse's sums run in another order)."""
        response = httpx.post(
            f"{self.up.url}/v1/insights/sessions",
            json=self.range,
            headers={"Authorization": f"Bearer {self.up.key('read_keys')}"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        events = [{"session_id": "", **event} for event in self.events]
        expected = expected_sessions(events, self.day_from, self.today, [], [], 25)

        def rounded(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [
                {k: round(v, 9) if isinstance(v, float) else v for k, v in row.items()}
                for row in rows
            ]

        return rounded(response.json()), rounded(expected)

    def predefined(self, funnel: dict[str, Any]) -> tuple[Any, Any]:
        got = without_times(self.get(f"/v1/funnels/{funnel['name']}")["steps"])
        expected = expected_funnel(
            self.events, funnel["steps"], funnel["window_seconds"], self.day_from, self.today
        )
        return got, expected


def settle(check: Any, what: str, timeout_s: float = 30) -> None:
    """Wait for `check()` = (got, expected) to agree (the API caches today for 5 s and
    the runner works in batches), then assert it."""
    result = wait_for(
        lambda: (lambda pair: pair if pair[0] == pair[1] else None)(check()), timeout_s
    )
    if result is None:
        got, expected = check()
        assert got == expected, what


def simulate(up: Embedded, workdir: Path, end_ms: int) -> subprocess.Popen[bytes]:
    keys = orjson.loads((workdir / ".quip" / "dev-keys.json").read_bytes())
    env = clean_env({"QUIP_WRITE_KEYS": keys["write_keys"]})
    args = [
        sys.executable, "-m", "quip", "simulate", "--url", up.url, "--no-progress",
        "--users", str(USERS), "--days", str(DAYS), "--seed", str(SEED), "--end", str(end_ms),
        "--concurrency", "8", "--retry-for", "120",
        "--no-sent-at", "--record", str(workdir / "accepted.jsonl"),
    ]  # fmt: skip
    with (workdir / "simulate.log").open("wb") as log:
        return subprocess.Popen(
            args,
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def recorded_lines(workdir: Path) -> int:
    path = workdir / "accepted.jsonl"
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_simulated_traffic_through_restarts_matches_independent_numbers(tmp_path: Path) -> None:
    funnels_file = tmp_path / "funnels.toml"
    shutil.copy(REPO / "deploy" / "funnels.example.toml", funnels_file)
    predefined = tomllib.loads(funnels_file.read_text())["funnels"]
    now = int(time.time() * 1000)
    end_ms = now - 3_600_000  # so one event at "now" later closes every simulated play
    plan = Historical(seed=SEED, users=USERS, days=DAYS, end_ms=end_ms, now_ms=now)
    total = count_items(historical_items(plan)).events
    service_messages = [
        item.message for item in historical_items(plan) if isinstance(item, ServiceItem)
    ]

    # 1 MB bus segments: the ~12 MB of traffic rolls over and is compacted across restarts.
    up = Embedded(
        tmp_path, env={"QUIP_FUNNELS_FILE": str(funnels_file), "QUIP_BUS_SEGMENT_MB": "1"}
    )
    up.start()
    sim: subprocess.Popen[bytes] | None = None
    try:
        sim = simulate(up, tmp_path, end_ms)
        interruptions = [(total // 3, up.stop), (2 * total // 3, up.kill)]
        while interruptions and sim.poll() is None:
            threshold, interrupt = interruptions[0]
            if recorded_lines(tmp_path) >= threshold:
                interrupt()  # requests in flight fail or stay unanswered: the simulator retries
                up.start()
                interruptions.pop(0)
            time.sleep(0.05)
        assert not interruptions, "the simulator finished before both restarts"
        assert sim.wait(timeout=120) == 0, (tmp_path / "simulate.log").read_text()[-3000:]

        events = [
            orjson.loads(line) for line in (tmp_path / "accepted.jsonl").read_bytes().splitlines()
        ]
        assert len(events) == total
        # One event at the current time: event time passes the idle timeout of every
        # simulated play, so the runner closes and writes them all.
        clock = {
            "event_id": uuid.uuid4().hex,
            "type": "clock_tick",
            "user_id": "e2e-clock",
            "ts": int(time.time() * 1000),
        }
        up.post([clock])
        events.append(clock)

        today = utc_day(int(time.time() * 1000))
        day_from = utc_day(min(e["ts"] for e in events))
        checks = Checks(up, events, day_from, today)
        settle(lambda: checks.event_counts("day"), "events by day", timeout_s=60)
        settle(lambda: checks.playback("none"), "playback", timeout_s=30)
        assert any(p["started"] for p in checks.plays)
        segments = list_segments(tmp_path / ".quip" / "bus")
        assert segments[0].base > 5_000_000  # processed segments were deleted
        assert len(segments) <= 2

        settle(lambda: checks.event_counts("hour"), "events by hour")
        settle(checks.active, "active users")
        settle(lambda: checks.retention("day"), "retention by day")
        settle(lambda: checks.retention("week"), "retention by week")
        settle(checks.sessions, "sessions")
        for steps, window in ADHOC_FUNNELS:
            settle(lambda s=steps, w=window: checks.funnel(s, w), f"ad-hoc funnel {steps}")
        listed = up.get("/v1/funnels")
        assert sorted(f["name"] for f in listed) == sorted(f["name"] for f in predefined)
        for funnel in predefined:
            settle(lambda f=funnel: checks.predefined(f), f"predefined funnel {funnel['name']}")
        for group_by in GROUP_BYS:
            settle(lambda g=group_by: checks.playback(g), f"playback by {group_by}")
        for interval in ("minute", "hour", "day"):
            settle(lambda i=interval: checks.playback_series(i), f"playback per {interval}")
        # The simulator published its service messages over HTTP through the restarts.
        settle(
            lambda: (
                checks.get("/v1/metrics/services"),
                expected_metrics(service_messages, "default", day_from, today),
            ),
            "service metrics",
        )

        # Erasure: the user with the most events, then every number without them.
        counts: dict[str, int] = {}
        for event in events:
            counts[event["user_id"]] = counts.get(event["user_id"], 0) + 1
        erased = max(counts, key=lambda user: counts[user])
        up.erase(erased)
        rest = Checks(up, [e for e in events if e["user_id"] != erased], day_from, today)
        assert len(rest.plays) < len(checks.plays)
        settle(lambda: rest.event_counts("day"), "events after erasure")
        settle(rest.active, "active users after erasure")
        settle(lambda: rest.retention("day"), "retention after erasure")
        settle(rest.sessions, "sessions after erasure")
        settle(lambda: rest.playback("none"), "playback after erasure")
        settle(lambda: rest.funnel(*ADHOC_FUNNELS[0]), "ad-hoc funnel after erasure")
        for funnel in predefined:
            settle(lambda f=funnel: rest.predefined(f), f"{funnel['name']} after erasure")
    finally:
        if sim is not None and sim.poll() is None:
            sim.kill()
            sim.wait(timeout=30)
        up.stop()
