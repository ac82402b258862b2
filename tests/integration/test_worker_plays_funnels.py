"""Plays and predefined funnels through gateway → Kafka → worker → ClickHouse, checked
against numbers worked out by hand from SPEC §4."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from schemas.funnels import load_funnels
from sinks.clickhouse import ServerClickHouse
from sinks.queries.funnels import predefined_funnel
from sinks.queries.playback import playback_summary
from streams.processors.activity import utc_day
from tests.expectations import expected_scores
from tests.gateway_process import GatewayProcess
from tests.integration.test_funnel_sql import adhoc_funnel
from tests.pipeline_checks import post_all
from tests.worker_process import WorkerProcess, running_worker

# The worker's sink writes InfluxDB too, and waits for it.
pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse, pytest.mark.influxdb]

# 12 min ago, so the latest event (+700 s) is not in the future. Plays may be closed for
# idleness meanwhile (other traffic moves the event-time watermark); a later event reopens
# them and the row is rewritten, which is why tests wait for the final figures.
START = int(time.time() * 1000) - 720_000


def event(kind: str, user: str, at_s: float, **props: Any) -> dict[str, Any]:
    return {
        "event_id": uuid.uuid4().hex,
        "type": kind,
        "user_id": user,
        "ts": START + int(at_s * 1000),
        "device_model": "quest3",
        "props": props,
    }


def plays() -> list[dict[str, Any]]:
    return [
        # A: started, two heartbeats, a rebuffer and a quality switch, then ended.
        event("playback_request", "u1", 0, play_id="A", content_id="c1"),
        event(
            "playback_start",
            "u1",
            1,
            play_id="A",
            content_id="c1",
            startup_ms=800,
            bitrate_kbps=4000,
        ),
        event("playback_heartbeat", "u1", 11, play_id="A", played_ms=10_000, bitrate_kbps=4000),
        event("playback_rebuffer", "u1", 12, play_id="A", duration_ms=500),
        event("playback_quality_change", "u1", 13, play_id="A", from_kbps=4000, to_kbps=2000),
        event("playback_heartbeat", "u1", 18, play_id="A", played_ms=5_000, bitrate_kbps=2000),
        event("playback_end", "u1", 19, play_id="A", played_ms=0),
        # B: fatal error before start.
        event("playback_request", "u2", 0, play_id="B", content_id="c1"),
        event("playback_error", "u2", 2, play_id="B", code="E_DRM", fatal=True),
        # C: ended without starting.
        event("playback_request", "u3", 0, play_id="C", content_id="c2"),
        event("playback_end", "u3", 3, play_id="C", played_ms=0),
        # D: started, then a fatal error.
        event(
            "playback_start",
            "u1",
            30,
            play_id="D",
            content_id="c2",
            startup_ms=1200,
            bitrate_kbps=3000,
        ),
        event("playback_heartbeat", "u1", 33, play_id="D", played_ms=3_000, bitrate_kbps=3000),
        event("playback_error", "u1", 34, play_id="D", code="E_NET", fatal=True),
    ]


def funnel_events() -> list[dict[str, Any]]:
    return [
        event("session_start", "f1", 0),
        event("page_view", "f1", 10, url="https://vr.example"),
        event("gesture", "f1", 20, gesture="pinch"),
        event("session_start", "f2", 0),
        event("page_view", "f2", 5, url="https://vr.example"),
        event("gesture", "f2", 700, gesture="pinch"),  # beyond the 600 s window
        event("session_start", "f3", 0),
        event("gesture", "f3", 3, gesture="pinch"),
        event("page_view", "f4", 0, url="https://vr.example"),
        event("gesture", "f5", 0, gesture="grab"),
    ]


@pytest.fixture
def funnels_file(tmp_path: Path) -> Path:
    path = tmp_path / "funnels.json"
    path.write_text(
        json.dumps(
            {
                "funnels": [
                    {
                        "name": "onboarding",
                        "window_seconds": 600,
                        "steps": [
                            {"event": "session_start"},
                            {"event": "page_view"},
                            {"event": "gesture", "where": {"gesture": "pinch"}},
                        ],
                    }
                ]
            }
        )
    )
    return path


def wait_until(check: Any, timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.5)


def test_plays_and_funnels_exact(
    gateway: GatewayProcess,
    worker_env: dict[str, str],
    server_clickhouse: ServerClickHouse,
    project: str,
    funnels_file: Path,
) -> None:
    watch_ms = (800 + 10_000 + 5_000 + 500) + (1200 + 3_000)
    # (experience, startup, smoothness) in hundredths; none is undefined for a started play
    score_a = [v or 0 for v in expected_scores(True, False, 800, 1, 500, 16_300, 0, 0)[:3]]
    score_d = [v or 0 for v in expected_scores(True, True, 1200, 0, 0, 4_200, 0, 0)[:3]]
    expected = [
        {
            "group": "all",
            "plays": 4,
            "started": 2,
            "video_start_failures": 1,
            "exits_before_start": 1,
            "playback_failures": 1,
            "startup_ms_p50": 1200,
            "startup_ms_p95": 1200,  # quantileExact: element floor(q*n)
            "rebuffer_ratio": 500 / watch_ms,
            "rebuffer_count": 1,
            "bitrate_switches": 1,
            "avg_bitrate_kbps": (4000 * 10_000 + 2000 * 5_000 + 3000 * 3_000) / 18_000,
            "watch_hours": watch_ms / 3_600_000,
            # QoE beyond the counts (SPEC §4): one play each of the four kinds.
            "video_start_failure_pct": 25.0,
            "exit_before_start_pct": 25.0,
            "playback_failure_pct": 25.0,
            "startup_ms_p90": 1200,
            "startup_ms_p99": 1200,
            "rebuffer_frequency": 1 / (watch_ms / 60_000),
            "rebuffer_duration_ms_avg": 500.0,
            "downshifts": 1,
            "upshifts": 0,
            "downshift_pct": 50.0,  # A of the started A and D
            "errors": [{"code": "E_DRM", "plays": 1}, {"code": "E_NET", "plays": 1}],
            "avg_fps": None,
            "dropped_frame_pct": None,
            # Scored: A, B and D (C exited before start); B and D failed and score 0.
            "experience_score": score_a[0] / 3 / 100,
            "success_score": 1 / 3 * 100,
            "startup_score": (score_a[1] + score_d[1]) / 2 / 100,
            "smoothness_score": (score_a[2] + score_d[2]) / 2 / 100,
            "quality_score": None,
        }
    ]
    batch = plays() + funnel_events()
    with running_worker({**worker_env, "QUIP_FUNNELS_FILE": str(funnels_file)}) as worker:
        post_all(gateway, [batch[::2], batch[1::2]])  # two requests, events out of order
        post_all(gateway, [batch[:7]])  # a client retry
        day = utc_day(START)
        # Wait for the final figures: a play closed early for idleness is rewritten later.
        rows = wait_until(
            lambda: (lambda r: r if r == expected else [])(
                playback_summary(server_clickhouse, project, day, day)
            )
        ) or playback_summary(server_clickhouse, project, day, day)
        definition = load_funnels(funnels_file)[0]
        predefined = wait_until(
            lambda: (lambda r: r if r[0]["users"] == 3 else [])(
                predefined_funnel(server_clickhouse, project, definition, day, day)
            )
        )
        metrics = httpx.get(f"{worker.url}/metrics").text
        adhoc = adhoc_funnel(server_clickhouse, project, list(definition.steps), 600, day, day)

    assert rows == expected
    assert [step["users"] for step in predefined] == [3, 2, 1]
    assert predefined == adhoc
    hours = next(
        line for line in metrics.splitlines() if line.startswith("video_hours_watched_total")
    )
    assert float(hours.split()[-1]) == pytest.approx(watch_ms / 3_600_000)
    assert 'video_playback_quality_count{measure="startup_seconds"} 2.0' in metrics
    assert 'analytics_events_processed_total{agent="plays"}' in metrics
    # The QoE alerts' counters (A, B, C, D by hand): each play once, although the client
    # retry was processed; the plays carry no frames and A's one quality change is down.
    counters = samples(metrics)
    quest3 = {
        name.removesuffix('{device_model="quest3"}'): value
        for name, value in counters.items()
        if name.startswith("video_") and name.endswith('_total{device_model="quest3"}')
    }
    assert quest3 == {
        "video_plays_total": 4,
        "video_plays_started_total": 2,
        "video_start_failures_total": 1,
        "video_exits_before_start_total": 1,
        "video_playback_failures_total": 1,
        "video_rebuffers_total": 1,
        "video_rebuffer_seconds_total": 0.5,
        "video_watch_seconds_total": pytest.approx(watch_ms / 1000),
        "video_frames_rendered_total": 0,
        "video_frames_dropped_total": 0,
        "video_frames_played_seconds_total": 0,
        "video_plays_downshifted_total": 1,
    }
    assert counters['video_quality_shifts_total{device_model="quest3",direction="down"}'] == 1
    assert counters['video_quality_shifts_total{device_model="quest3",direction="up"}'] == 0


def samples(metrics: str) -> dict[str, float]:
    """`name{labels}` -> value of each sample of a Prometheus text page."""
    found = {}
    for line in metrics.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            found[name] = float(value)
    return found


def processed(worker: WorkerProcess, agent: str) -> float:
    prefix = f'analytics_events_processed_total{{agent="{agent}"}}'
    for line in httpx.get(f"{worker.url}/metrics").text.splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    return 0.0


def test_open_play_survives_a_killed_worker(
    gateway: GatewayProcess,
    worker_env: dict[str, str],
    server_clickhouse: ServerClickHouse,
    project: str,
) -> None:
    play_a = plays()[:7]
    worker = WorkerProcess(worker_env)
    worker.start()
    try:
        post_all(gateway, [play_a[:4]])  # request, start, heartbeat, rebuffer: still open
        assert wait_until(lambda: processed(worker, "plays") >= 4)
        worker.kill()
        worker.start(ready_timeout_s=90)
        post_all(gateway, [play_a[4:]])  # quality change, heartbeat, end
        day = utc_day(START)
        watch_ms = 800 + 10_000 + 5_000 + 500
        rows = wait_until(
            lambda: (lambda r: r if r[0]["watch_hours"] == watch_ms / 3_600_000 else [])(
                playback_summary(server_clickhouse, project, day, day)
            )
        )
    finally:
        worker.stop()
    assert rows
    assert (rows[0]["started"], rows[0]["startup_ms_p50"], rows[0]["rebuffer_count"]) == (1, 800, 1)
    assert rows[0]["bitrate_switches"] == 1
    assert rows[0]["watch_hours"] == watch_ms / 3_600_000
