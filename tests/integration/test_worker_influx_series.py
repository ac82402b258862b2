"""Late plays and concurrent viewers through gateway → Kafka → worker → InfluxDB: plays of
the last minutes, of a few hours ago and of weeks ago (a backfill), their events shuffled,
split into requests and partly sent twice. Once the plays are stored, the `playback_qoe`
points' `plays` and `viewers` (concurrent viewers) read back from InfluxDB, summed per
minute over every tag and point, equal the playback queries' per-minute answers over
ClickHouse and a count worked out here from the events sent."""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from sinks.clickhouse import ServerClickHouse
from sinks.queries.playback import playback_timeseries
from sinks.queries.playback_concurrency import viewers_per_minute
from tests.gateway_process import GatewayProcess
from tests.integration.test_influx_series import influxql, play_events
from tests.pipeline_checks import post_all
from tests.worker_process import running_worker

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse, pytest.mark.influxdb]

MINUTE = 60_000
HOUR = 3_600_000
DAY = 86_400_000
IDLE_TIMEOUT_S = 20  # plays that never end close soon; the grace is twice that


def sent_events(project: str) -> list[dict[str, Any]]:
    """Plays (every SPEC §4 outcome) starting in the last 10 minutes, 3 hours ago and 20
    days ago, ids unique to the project; shuffled."""
    rng = random.Random(17)
    now = int(time.time() * 1000)
    events = []
    starts = (("live", now - 10 * MINUTE), ("hours", now - 3 * HOUR), ("weeks", now - 20 * DAY))
    for name, start in starts:
        for event in play_events(rng, start, plays=25):
            props = event["props"]
            props["play_id"] = f"{project}-{name}-{props['play_id']}"
            events.append(event)
    rng.shuffle(events)
    return events


def expected_per_minute(events: list[dict[str, Any]]) -> tuple[dict[int, int], dict[int, int]]:
    """(plays per minute of their first event, viewers per minute), minute by minute."""
    spans: dict[str, tuple[int, int]] = {}
    for event in events:
        play = event["props"]["play_id"]
        first, last = spans.get(play, (event["ts"], event["ts"]))
        spans[play] = (min(first, event["ts"]), max(last, event["ts"]))
    plays: dict[int, int] = defaultdict(int)
    viewers: dict[int, int] = defaultdict(int)
    for first, last in spans.values():
        plays[first // MINUTE * MINUTE] += 1
        for minute in range(first // MINUTE, last // MINUTE + 1):
            viewers[minute * MINUTE] += 1
    return dict(plays), dict(viewers)


def influx_per_minute(project: str, measurement: str, field: str) -> dict[int, int]:
    """A field summed per minute over every point of the project (all tags, live and
    late batches)."""
    sums: dict[int, int] = defaultdict(int)
    rows = influxql(f"SELECT {field} FROM {measurement} WHERE project = $project", project=project)
    for row in rows:
        sums[row["time"] // MINUTE * MINUTE] += row[field]
    return {minute: total for minute, total in sums.items() if total}


def wait_for(check: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check() and time.monotonic() < deadline:
        time.sleep(1)


def test_late_and_shuffled_plays_sum_to_the_apis_counts_in_influxdb(
    gateway: GatewayProcess,
    worker_env: dict[str, str],
    server_clickhouse: ServerClickHouse,
    project: str,
) -> None:
    events = sent_events(project)
    plays, viewers = expected_per_minute(events)
    first_day = datetime.fromtimestamp(min(plays) / 1000, UTC).date()
    last_day = datetime.now(UTC).date()

    def api_plays() -> dict[int, int]:
        series = playback_timeseries(server_clickhouse, project, first_day, last_day, "minute")
        return {
            int(datetime.strptime(p["t"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp())
            * 1000: p["plays"]
            for p in series
        }

    env = {**worker_env, "QUIP_PLAY_IDLE_TIMEOUT_S": str(IDLE_TIMEOUT_S)}
    with running_worker(env):
        batches = [events[i : i + 40] for i in range(0, len(events), 40)]
        post_all(gateway, [*batches, batches[1]])  # the second request retried
        # Stored: every play closed and written, and the live series caught up with it.
        wait_for(
            lambda: api_plays() == plays
            and influx_per_minute(project, "playback_qoe", "viewers") == viewers
            and influx_per_minute(project, "playback_qoe", "plays") == plays,
            timeout_s=120 + 3 * IDLE_TIMEOUT_S,
        )
    assert api_plays() == plays
    assert viewers_per_minute(server_clickhouse, project, first_day, last_day) == viewers
    assert influx_per_minute(project, "playback_qoe", "plays") == plays
    assert influx_per_minute(project, "playback_qoe", "viewers") == viewers
    late = influxql(
        "SELECT plays FROM playback_qoe WHERE project = $project AND late = 'true'",
        project=project,
    )
    assert {row["time"] // DAY for row in late} >= {min(plays) // DAY}  # the backfill's day
