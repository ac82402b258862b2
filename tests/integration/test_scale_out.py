"""Scale-out on one machine: two gateways behind the same Kafka, two workers in one
consumer group on analytics.events (12 partitions). The simulator sends live traffic
through both gateways; one worker is killed with SIGKILL mid-stream, the other takes its
partitions (and the state of the plays and funnels that were open on them, from the
changelogs), then the killed one comes back and the group splits the partitions again.
The final SPEC §4 numbers equal an independent computation over the events that were sent
(the simulator's recordings; without `sent_at`, so the gateway stores each ts as sent and
a clock-skew bug shows as a mismatch instead of moving the expectations with it)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

from common.producer import fast_partitioner
from schemas.events import record_key
from schemas.funnels import FunnelDefinition, load_funnels
from schemas.topics import ANALYTICS_EVENTS
from sinks.clickhouse import ServerClickHouse
from sinks.queries.funnels import predefined_funnel
from sinks.queries.playback import playback_summary
from streams.processors.activity import utc_day
from tests.conftest import KAFKA_BOOTSTRAP, clean_env
from tests.expectations import expected_funnel, expected_playback, expected_plays
from tests.gateway_process import GatewayProcess, running_gateway
from tests.pipeline_checks import WRITE_KEY, assert_exact, wait_for_events
from tests.worker_process import WorkerProcess, records_past_commits

# The worker's sink writes InfluxDB too, and waits for it.
pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse, pytest.mark.influxdb]

FUNNELS_FILE = Path(__file__).resolve().parents[2] / "deploy" / "funnels.example.toml"
PARTITIONS = set(range(ANALYTICS_EVENTS.partitions))
# Live traffic per gateway: plays in the simulator's (compressed) time last seconds to a
# few minutes of wall time, so many are open when the worker is killed.
RATE, DURATION_S, USERS = 120, 40, 300
# Short, so plays left open when the traffic stops close soon; still well above the gap
# between two events of a running play.
PLAY_IDLE_TIMEOUT_S = 20

T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T | None], timeout_s: float = 90) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what} (last: {value!r})")
        time.sleep(0.5)


def settled(fetch: Callable[[], Any], expected: Any, timeout_s: float) -> Any:
    """What `fetch` returns once it equals `expected`, or at the timeout (figures written
    on the pipeline's own schedule, e.g. plays closed for idleness, settle late)."""
    deadline = time.monotonic() + timeout_s
    while (got := fetch()) != expected and time.monotonic() < deadline:
        time.sleep(1)
    return got


# ------------------------------------------------------------------- the consumer group


async def _describe(group: str) -> dict[str, set[int]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA_BOOTSTRAP)
    await admin.start()
    try:
        response = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    _error, _group, state, _kind, _protocol, members = response[0].groups[0]
    if state != "Stable":
        return {}
    owned: dict[str, set[int]] = {}
    for member_id, _client, _host, _metadata, assignment in members:
        decoded = ConsumerProtocolMemberAssignment.decode(assignment)
        owned[member_id] = {
            partition
            for topic, partitions in decoded.assignment
            if topic == ANALYTICS_EVENTS.name
            for partition in partitions
        }
    return owned


def assignment(group: str) -> dict[str, set[int]]:
    """Member id → its analytics.events partitions, as the broker has them ({} while
    the group is rebalancing)."""
    return asyncio.run(_describe(group))


def member_id(worker: WorkerProcess, group: str) -> str | None:
    """The member id the worker last joined the group with (Faust logs it)."""
    joined = re.findall(rf"Joined group '{group}' \(generation \d+\) with member_id (\S+)",
                        worker.log.read_text(errors="replace"))  # fmt: skip
    return joined[-1] if joined else None


def split_between(group: str, workers: list[WorkerProcess]) -> dict[str, set[int]] | None:
    """The partitions of each worker once both own some and together own all of them."""
    owned = assignment(group)
    ids = [member_id(worker, group) for worker in workers]
    if set(owned) != set(ids) or not all(owned.values()):
        return None
    if set().union(*owned.values()) != PARTITIONS:
        return None
    return owned


def accepted(gateway: GatewayProcess) -> float:
    metrics = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    return sum(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("ingest_events_accepted_total")
    )


def processed(worker: WorkerProcess, agent: str) -> float:
    prefix = f'analytics_events_processed_total{{agent="{agent}"}}'
    for line in httpx.get(f"{worker.url}/metrics", timeout=10).text.splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    return 0.0


# ------------------------------------------------------------------- the traffic


def start_simulator(gateway: GatewayProcess, project: str, seed: int, record: Path) -> Any:
    env = clean_env({"QUIP_WRITE_KEYS": f"{project}:{WRITE_KEY}"})
    return subprocess.Popen(
        [
            sys.executable, "-m", "quip", "simulate", "--url", gateway.url, "--no-progress",
            "--rate", str(RATE), "--duration", str(DURATION_S), "--users", str(USERS),
            "--seed", str(seed), "--concurrency", "8", "--record", str(record), "--no-sent-at",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip


def stored_times(clickhouse: ServerClickHouse, project: str) -> dict[str, list[int]]:
    """Event id → every ts stored for it (one, unless a duplicate row differs)."""
    rows = clickhouse.execute(
        "SELECT event_id, groupUniqArray(ts) FROM events WHERE project = %(p)s GROUP BY event_id",
        {"p": project},
    )
    return {event_id: sorted(int(ts) for ts in times) for event_id, times in rows}


def partition_of(project: str, user_id: str) -> int:
    """Where the gateway put the user's records (its own partitioner)."""
    partitions = sorted(PARTITIONS)
    return fast_partitioner(record_key(project, user_id), partitions, partitions)


def stored_plays(clickhouse: ServerClickHouse, project: str, play_ids: list[str]) -> list[Any]:
    rows = clickhouse.execute(
        "SELECT play_id, started, video_start_failure, exit_before_start, playback_failure, "
        "startup_ms, rebuffer_ms, rebuffer_count, bitrate_switches, watch_ms, event_count "
        "FROM plays FINAL WHERE project = %(p)s AND deleted = 0 AND play_id IN %(ids)s "
        "ORDER BY play_id",
        {"p": project, "ids": tuple(play_ids)},
    )
    return [
        tuple(int(value) if not isinstance(value, str) else value for value in row) for row in rows
    ]


def steps_of(definition: FunnelDefinition) -> list[Any]:
    return [{"event": step.event, "where": dict(step.where)} for step in definition.steps]


# ------------------------------------------------------------------- the test


def test_two_gateways_two_workers_kill_9_one_numbers_exact(
    registry_topics: None,
    worker_env: dict[str, str],
    server_clickhouse: ServerClickHouse,
    project: str,
    unique_name: str,
    tmp_path: Path,
) -> None:
    group = unique_name
    env = {
        **worker_env,
        "QUIP_FUNNELS_FILE": str(FUNNELS_FILE),
        "QUIP_PLAY_IDLE_TIMEOUT_S": str(PLAY_IDLE_TIMEOUT_S),
    }
    gateway_env = {"QUIP_WRITE_KEYS": f"{project}:{WRITE_KEY}", "QUIP_RATE_LIMIT_IP_PER_MIN": "0"}
    workers = [WorkerProcess(env), WorkerProcess(env)]
    survivor, victim = workers
    records = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    with ExitStack() as stack:
        gateways = [stack.enter_context(running_gateway(gateway_env)) for _ in range(2)]
        for worker in workers:
            stack.callback(worker.stop)
            worker.start(ready_timeout_s=120)
        before = wait_for(
            "both workers to share the partitions", lambda: split_between(group, workers)
        )
        victim_partitions = before[member_id(victim, group) or ""]

        simulators = [
            start_simulator(gateway, project, seed, record)
            for gateway, seed, record in zip(gateways, (101, 202), records, strict=True)
        ]
        for simulator in simulators:
            stack.callback(simulator.kill)
        # Mid-stream: a third of the traffic is in (other jobs' traffic on the shared topic
        # moves the workers' counters, so the gateways' counters decide).
        wait_for(
            "a third of the traffic",
            lambda: sum(accepted(gateway) for gateway in gateways) >= 2 * RATE * DURATION_S / 3,
        )
        killed_at_ms = int(time.time() * 1000)
        victim.kill()
        taken = wait_for(
            "the survivor to own every partition",
            lambda: (lambda owned: owned if list(owned.values()) == [PARTITIONS] else None)(
                assignment(group)
            ),
        )
        assert list(taken) == [member_id(survivor, group)]
        after_takeover = processed(survivor, "plays")
        wait_for(
            "the survivor to process the moved partitions",
            lambda: processed(survivor, "plays") > after_takeover + 100,
        )
        victim.start(ready_timeout_s=120)
        wait_for(
            "the two workers to share the partitions again", lambda: split_between(group, workers)
        )

        for simulator in simulators:
            output, _ = simulator.communicate(timeout=DURATION_S * 4)
            assert simulator.returncode == 0, output.decode(errors="replace")

        recorded = [
            orjson.loads(line) for path in records for line in path.read_bytes().splitlines()
        ]
        assert len({r["event_id"] for r in recorded}) == len(recorded) == 2 * RATE * DURATION_S
        # The other jobs on this box share analytics.events with the workers: be patient.
        wait_for_events(server_clickhouse, project, len(recorded), timeout_s=300)
        # Stored as sent: the expectations below are computed from the recordings alone.
        assert stored_times(server_clickhouse, project) == {
            r["event_id"]: [r["ts"]] for r in recorded
        }
        per_gateway = [accepted(gateway) for gateway in gateways]
        assert per_gateway == [RATE * DURATION_S] * 2, per_gateway

        # Events, active users, retention: exact (deduplicated, nothing lost).
        assert_exact(server_clickhouse, project, [recorded])
        # ...and the group's commits caught up across the kill and the rebalances.
        assert records_past_commits(group, ANALYTICS_EVENTS.name) == 0

        # Plays: every play, and those open across the kill on the victim's partitions.
        today = utc_day(int(time.time() * 1000))
        day_from = today - timedelta(days=1)
        plays = expected_plays(recorded)
        wanted = expected_playback(plays, day_from, today, "none")
        got = settled(
            partial(playback_summary, server_clickhouse, project, day_from, today),
            wanted,
            timeout_s=PLAY_IDLE_TIMEOUT_S * 4 + 60,
        )
        assert got == wanted
        by_play: dict[str, list[dict[str, Any]]] = {}
        for event in recorded:
            play_id = event["props"].get("play_id")
            if event["type"].startswith("playback_") and play_id:
                by_play.setdefault(play_id, []).append(event)
        # Live mode stamps ts = the wall clock when an event is emitted: a play with events
        # on both sides of the kill was open across it.
        moved_open = sorted(
            play_id
            for play_id, events in by_play.items()
            if partition_of(project, events[0]["user_id"]) in victim_partitions
            and min(e["ts"] for e in events) < killed_at_ms < max(e["ts"] for e in events)
        )
        assert len(moved_open) >= 5, "too few plays were open on the moved partitions"
        expected_rows = []
        for play_id in moved_open:
            (play,) = expected_plays(by_play[play_id])
            expected_rows.append(
                (
                    play_id, play["started"], play["video_start_failure"],
                    play["exit_before_start"], play["playback_failure"], play["startup_ms"],
                    play["rebuffer_ms"], play["rebuffer_count"], play["bitrate_switches"],
                    play["watch_ms"], len({e["event_id"] for e in by_play[play_id]}),
                )
            )  # fmt: skip
        assert stored_plays(server_clickhouse, project, moved_open) == [
            tuple(int(v) if isinstance(v, bool) else v for v in row) for row in expected_rows
        ]

        # Predefined funnels (their progress is changelogged state too).
        for definition in load_funnels(FUNNELS_FILE):
            expected = expected_funnel(
                recorded, steps_of(definition), definition.window_seconds, day_from, today
            )
            got = settled(
                partial(predefined_funnel, server_clickhouse, project, definition, day_from, today),
                expected,
                timeout_s=60,
            )
            assert got == expected, definition.name
