"""Soak benchmark: live simulator traffic for a long time, sampled every N seconds.

Does the pipeline hold steady under constant load: memory flat, latency steady, consumer
lag bounded, no errors? `quip simulate --rate R --duration S` (live mode: ts = now) drives
the gateway, and every --interval seconds the script records

  - RSS (VmRSS of the process and its children) and CPU (% of one core over the interval,
    from /proc utime+stime) of every process it watches, plus the machine's load average
    and busy CPU (the box is shared: other jobs' load shows here);
  - consumer lag: cluster, records of analytics.events between the worker group's
    committed offsets and the ends, asked of Kafka (the worker's own `consumer_lag` gauge
    is saved too when it has one); embedded, events accepted by the gateway minus events
    processed by the runner (both counters of the one process's /metrics);
  - gateway latency p50/p95 of the requests served in the interval (the simulator's and
    the probe's), from the gateway's own `http_request_duration_seconds` histogram
    (difference of two readings; linear interpolation inside a bucket, so coarse), and
    the error rate (non-2xx share of `http_requests_total` in the interval);
  - probe latency p50/p95 measured by this script: a one-event POST /v1/events and a
    query API GET (alternately active users and event counts of today) every
    --probe-interval seconds, each timed end to end (the API caches query results for a
    short while, so most API probes measure the cached path; the misses show at p95).

Modes:
  - `--mode cluster` (default) starts, each on a free port with its own environment and
    a temporary working directory: `quip gateway` (rate limit off), `quip worker` (a
    consumer group `soak-<nonce>` committed at the current end of the topics, so it reads
    only this run's traffic plus whatever other jobs write to analytics.events meanwhile)
    and `quip api`, against a ClickHouse database `soak_<nonce>` (migrated here) and an
    InfluxDB database of the same name; all of them are removed at the end (--keep keeps
    them). With --gateway-url (and --worker-url, --api-url, --key, --read-key) it starts
    nothing and drives what is already running; pass `--pid name=PID` to sample their
    memory and CPU.
  - `--mode embedded` starts `quip up` with a fresh data directory (removed at the end).

Verdict (printed and saved): memory is flat when the RSS slope over the second half of
the run (least squares, MB per hour) is at most --rss-slope-limit for every process;
latency is steady when the median p95 of the last quarter is at most 1.5x the median p95
of the second quarter (the first quarter is warm-up); lag is bounded when it does not grow
over the second half by more than --lag-growth-limit records per minute.

Diagnosis: `--tracemalloc N` runs the worker (cluster) or `quip up` (embedded) under
tracemalloc with N frames and saves its allocation summary at the half-way point and at
the end (tracemalloc slows the process down: use it to find a leak, not to measure).

Usage (from the repo root):
  .venv/bin/python -m benchmarks.soak --rate 3000 --duration 1800           # 30 min cluster
  .venv/bin/python -m benchmarks.soak --mode embedded --rate 1000 --duration 600
  .venv/bin/python -m benchmarks.soak --duration 120 --interval 5           # quick check
Results: benchmarks/results/soak-<mode>-<UTC>.{json,csv,png} (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import hashlib
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client.parser import text_string_to_metric_families

from benchmarks._lib.influx import influx_query
from benchmarks._lib.kafka import delete_app_topics, end_offsets, start_group_at_end
from benchmarks._lib.procfs import machine_busy_s, tree_cpu_s, tree_rss_mb
from benchmarks._lib.quip_process import QuipProcess
from benchmarks._lib.run import REPO, RESULTS_DIR, git_commit
from benchmarks._lib.stores import drop_run_databases
from common.qoe import quantile_exact
from quip.topics import apply_topics
from schemas.services import SERVICE_TOPICS
from schemas.topics import ANALYTICS_EVENTS
from sinks.clickhouse import ServerClickHouse
from sinks.migrate import migrate
from streams.backends.kafka.source import services_group

EVENTS_ROUTE = "/v1/events"
# `quip up` labels its ingest routes "other" (the query API's route list does not name
# them); its only POSTs are events and ad-hoc funnel queries, which the soak never sends.
EVENTS_ROUTE_LABELS = (EVENTS_ROUTE, "other")


# --------------------------------------------------------------------------- metrics


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Prometheus' histogram_quantile over cumulative (upper bound, count) pairs."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound


@dataclass
class Reading:
    """What one /metrics page says that the soak follows."""

    buckets: dict[float, float] = field(default_factory=dict)  # POST /v1/events latency
    requests_by_status: dict[str, float] = field(default_factory=dict)  # POST /v1/events
    accepted: float = 0.0
    processed: dict[str, float] = field(default_factory=dict)
    lag: float | None = None


def read_metrics(url: str | None, into: Reading) -> bool:
    if url is None:
        return False
    try:
        text = httpx.get(f"{url}/metrics", timeout=10).text
    except httpx.HTTPError:
        return False
    lag = 0.0
    lag_seen = False
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "http_request_duration_seconds_bucket":
                if labels.get("route") in EVENTS_ROUTE_LABELS and labels.get("method") == "POST":
                    into.buckets[float(labels["le"])] = sample.value
            elif sample.name == "http_requests_total":
                if labels.get("route") in EVENTS_ROUTE_LABELS and labels.get("method") == "POST":
                    into.requests_by_status[labels["status"]] = sample.value
            elif sample.name == "ingest_events_accepted_total":
                into.accepted += sample.value
            elif sample.name == "analytics_events_processed_total":
                into.processed[labels["agent"]] = sample.value
            elif sample.name == "consumer_lag" and labels.get("topic") == ANALYTICS_EVENTS.name:
                lag += sample.value
                lag_seen = True
    if lag_seen:
        into.lag = lag
    return True


async def group_commits(bootstrap: str, group: str) -> dict[TopicPartition, int]:
    """The group's committed offsets on analytics.events."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    topic = ANALYTICS_EVENTS.name
    return {tp: meta.offset for tp, meta in committed.items() if tp.topic == topic}


async def group_lag(bootstrap: str, group: str) -> float | None:
    """Records of analytics.events between the group's committed offsets and the ends
    (read_committed), straight from Kafka. Transaction markers take offsets too, so a
    caught-up group can read up to one per partition."""
    committed = await group_commits(bootstrap, group)
    ends = await end_offsets(bootstrap, [ANALYTICS_EVENTS.name])
    lags = [max(0, end - committed[tp]) for tp, end in ends.items() if tp in committed]
    return float(sum(lags)) if lags else None


async def records_past_commits(bootstrap: str, group: str) -> int:
    """Records of analytics.events a read_committed consumer sees at or after the group's
    committed offsets. Unlike the offset lag, a caught-up group reads 0 here even when a
    request answered 503 left aborted records after the last commit."""
    starts = await group_commits(bootstrap, group)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign(list(starts))
        ends = await consumer.end_offsets(list(starts))
        for tp, offset in starts.items():
            consumer.seek(tp, offset)
        seen = 0
        pending = {tp for tp, offset in starts.items() if offset < ends[tp]}
        while pending:
            fetched = await consumer.getmany(*pending, timeout_ms=1_000)
            seen += sum(len(records) for records in fetched.values())
            pending = {tp for tp in pending if await consumer.position(tp) < ends[tp]}
        return seen
    finally:
        await consumer.stop()


def kafka_lag(bootstrap: str, group: str | None) -> float | None:
    if group is None:
        return None
    try:
        return asyncio.run(group_lag(bootstrap, group))
    except Exception:  # a slow or restarting broker: a gap in the series, not a failed run
        return None


def events_processed(reading: Reading) -> float:
    """Events through the events pipeline's first stage (the worker and `quip up` alike)."""
    return reading.processed.get("events", 0.0)


def interval_latency(before: Reading, after: Reading) -> tuple[float | None, float | None, int]:
    bounds = sorted(after.buckets)
    delta = [(b, after.buckets[b] - before.buckets.get(b, 0.0)) for b in bounds]
    count = int(delta[-1][1]) if delta else 0
    p50, p95 = histogram_quantile(delta, 0.5), histogram_quantile(delta, 0.95)
    return (
        None if p50 is None else p50 * 1000,
        None if p95 is None else p95 * 1000,
        count,
    )


def interval_errors(before: Reading, after: Reading) -> tuple[int, int]:
    total = errors = 0
    for status, value in after.requests_by_status.items():
        n = int(value - before.requests_by_status.get(status, 0.0))
        total += n
        if not status.startswith("2"):
            errors += n
    return total, errors


# --------------------------------------------------------------------------- probes


@dataclass
class ProbeLog:
    """(monotonic time, latency ms, status or 0 for a transport error), per probe."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    samples: dict[str, list[tuple[float, float, int]]] = field(default_factory=dict)

    def add(self, name: str, at: float, latency_ms: float, status: int) -> None:
        with self.lock:
            self.samples.setdefault(name, []).append((at, latency_ms, status))

    def window(self, name: str, start: float, end: float) -> list[tuple[float, float, int]]:
        with self.lock:
            return [s for s in self.samples.get(name, []) if start <= s[0] < end]


class Prober(threading.Thread):
    def __init__(
        self,
        log: ProbeLog,
        gateway_url: str,
        write_key: str,
        api_url: str | None,
        read_key: str | None,
        project: str,
        interval_s: float,
    ) -> None:
        super().__init__(name="soak-prober", daemon=True)
        self.log = log
        self.gateway_url = gateway_url
        self.write_key = write_key
        self.api_url = api_url
        self.read_key = read_key
        self.project = project
        self.interval_s = interval_s
        self.stopped = threading.Event()
        self.nonce = uuid.uuid4().hex[:12]

    def run(self) -> None:
        count = 0
        with httpx.Client(timeout=30) as client:
            while not self.stopped.wait(self.interval_s):
                count += 1
                now_ms = int(time.time() * 1000)
                body = {
                    "events": [
                        {
                            "event_id": f"soak-probe-{self.nonce}-{count}",
                            "type": "page_view",
                            "user_id": "soak-probe",
                            "ts": now_ms,
                            "props": {"url": "https://quibrowser.example/"},
                        }
                    ]
                }
                self._timed(
                    "gateway",
                    client,
                    "POST",
                    f"{self.gateway_url}{EVENTS_ROUTE}",
                    json=body,
                    headers={"Authorization": f"Bearer {self.write_key}"},
                )
                if self.api_url and self.read_key:
                    today = date.today().isoformat()
                    path = "active-users" if count % 2 else "events"
                    self._timed(
                        "api",
                        client,
                        "GET",
                        f"{self.api_url}/v1/metrics/{path}",
                        params={"project": self.project, "from": today, "to": today},
                        headers={"Authorization": f"Bearer {self.read_key}"},
                    )

    def _timed(self, name: str, client: httpx.Client, method: str, url: str, **kw: Any) -> None:
        started = time.monotonic()
        try:
            status = client.request(method, url, **kw).status_code
        except httpx.HTTPError:
            status = 0
        self.log.add(name, started, (time.monotonic() - started) * 1000, status)


# --------------------------------------------------------------------------- analysis


def slope_per_hour(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) points, per hour."""
    if len(points) < 3:
        return None
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mean_x) ** 2 for x in xs)
    if var == 0:
        return None
    cov = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    return cov / var * 3600


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def verdict(
    rows: list[dict[str, Any]], processes: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    if len(rows) < 8:
        return {"note": "too few samples for a verdict"}
    half = rows[len(rows) // 2 :]
    quarter = len(rows) // 4
    second_q, last_q = rows[quarter : 2 * quarter], rows[3 * quarter :]
    memory: dict[str, Any] = {}
    for name in processes:
        points = [(r["t_s"], r[f"rss_mb_{name}"]) for r in half if r.get(f"rss_mb_{name}")]
        slope = slope_per_hour(points)
        memory[name] = {
            "rss_mb_start": rows[0].get(f"rss_mb_{name}"),
            "rss_mb_half": half[0].get(f"rss_mb_{name}"),
            "rss_mb_end": rows[-1].get(f"rss_mb_{name}"),
            "rss_mb_max": max((r.get(f"rss_mb_{name}") or 0) for r in rows),
            "slope_mb_per_h_second_half": None if slope is None else round(slope, 1),
            "flat": slope is not None and slope <= args.rss_slope_limit,
        }
    latency: dict[str, Any] = {}
    for column in ("gateway_p95_ms", "probe_gateway_p95_ms", "probe_api_p95_ms"):
        early, late = (
            _median([r.get(column) for r in second_q]),
            _median([r.get(column) for r in last_q]),
        )
        if early is None or late is None:
            continue
        latency[column] = {
            "median_second_quarter_ms": round(early, 2),
            "median_last_quarter_ms": round(late, 2),
            "ratio": round(late / early, 2) if early else None,
            "steady": late <= 1.5 * early,
        }
    lag_points = [(r["t_s"], r["lag"]) for r in half if r.get("lag") is not None]
    lag_slope = slope_per_hour(lag_points)
    lag = {
        "max": max((r["lag"] for r in rows if r.get("lag") is not None), default=None),
        "end_of_load": rows[-1].get("lag"),
        "slope_per_min_second_half": None if lag_slope is None else round(lag_slope / 60, 1),
        "bounded": lag_slope is None or lag_slope / 60 <= args.lag_growth_limit,
    }
    requests = sum(r.get("gateway_requests") or 0 for r in rows)
    errors = sum(r.get("gateway_errors") or 0 for r in rows)
    return {
        "memory_flat": all(m["flat"] for m in memory.values()),
        "latency_steady": all(v["steady"] for v in latency.values()) if latency else None,
        "lag_bounded": lag["bounded"],
        "error_rate": errors / requests if requests else None,
        "memory": memory,
        "latency": latency,
        "lag": lag,
        "rss_slope_limit_mb_per_h": args.rss_slope_limit,
        "lag_growth_limit_per_min": args.lag_growth_limit,
    }


# --------------------------------------------------------------------------- outputs


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def write_chart(rows: list[dict[str, Any]], processes: list[str], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [r["t_s"] / 60 for r in rows]

    def series(column: str) -> list[float]:
        return [math.nan if r.get(column) is None else float(r[column]) for r in rows]

    fig, axes = plt.subplots(4, 1, figsize=(11, 13), sharex=True)
    ax = axes[0]
    for name in processes:
        ax.plot(minutes, series(f"rss_mb_{name}"), label=name)
    ax.set_ylabel("RSS (MB)")
    ax.set_title(title)
    ax.legend(loc="upper left")
    ax = axes[1]
    for name in processes:
        ax.plot(minutes, series(f"cpu_pct_{name}"), label=f"{name} CPU %")
    ax.set_ylabel("CPU (% of a core)")
    ax.legend(loc="upper left")
    twin = ax.twinx()
    twin.plot(minutes, series("loadavg_1m"), "k:", label="machine load average (1 min)")
    twin.set_ylabel("load average")
    twin.legend(loc="upper right")
    ax = axes[2]
    for column, style in (
        ("gateway_p50_ms", "b-"),
        ("gateway_p95_ms", "b--"),
        ("probe_gateway_p95_ms", "g--"),
        ("probe_api_p50_ms", "r-"),
        ("probe_api_p95_ms", "r--"),
    ):
        ax.plot(minutes, series(column), style, label=column)
    ax.set_yscale("log")
    ax.set_ylabel("latency (ms)")
    ax.legend(loc="upper left")
    ax = axes[3]
    ax.plot(minutes, series("lag"), "m-", label="consumer lag")
    ax.set_ylabel("lag")
    ax.legend(loc="upper left")
    twin = ax.twinx()
    twin.plot(minutes, series("accepted_per_s"), "c-", label="accepted ev/s")
    twin.plot(minutes, series("processed_per_s"), "y-", label="processed ev/s (events agent)")
    twin.plot(minutes, series("error_rate_pct"), "r.", label="error rate %")
    twin.set_ylabel("events/s, error %")
    twin.legend(loc="upper right")
    axes[-1].set_xlabel("minutes")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --------------------------------------------------------------------------- the run


@dataclass
class Target:
    gateway_url: str
    write_key: str
    worker_url: str | None
    api_url: str | None
    read_key: str | None
    pids: dict[str, int]
    group: str | None = None  # the worker's consumer group, for the lag


@dataclass
class Setup:
    mode: str
    nonce: str
    project: str
    workdir: Path
    processes: list[QuipProcess] = field(default_factory=list)
    database: str | None = None
    group: str | None = None


def start_cluster(args: argparse.Namespace, setup: Setup) -> Target:
    database = setup.database = f"soak_{setup.nonce}"
    group = setup.group = f"soak-{setup.nonce}"
    clickhouse_url = f"{args.clickhouse.rstrip('/')}/{database}"
    write_key, read_key = f"wk_soak_{setup.nonce}", f"rk_soak_{setup.nonce}"
    asyncio.run(apply_topics(args.bootstrap))
    clickhouse = ServerClickHouse(clickhouse_url)
    migrate(clickhouse)
    clickhouse.close()
    influx_query(args.influx_url, f'CREATE DATABASE "{database}"')
    asyncio.run(start_group_at_end(args.bootstrap, group, [ANALYTICS_EVENTS.name]))
    asyncio.run(start_group_at_end(args.bootstrap, services_group(group), list(SERVICE_TOPICS)))
    funnels = setup.workdir / "funnels.toml"
    shutil.copyfile(args.funnels_file, funnels)
    common = {
        "QUIP_MODE": "cluster",
        "QUIP_KAFKA_BOOTSTRAP": args.bootstrap,
        "QUIP_CLICKHOUSE_URL": clickhouse_url,
        "QUIP_FUNNELS_FILE": str(funnels),
    }
    gateway = QuipProcess(
        "gateway",
        {
            **common,
            "QUIP_WRITE_KEYS": f"{setup.project}:{write_key}",
            "QUIP_RATE_LIMIT_IP_PER_MIN": "0",
        },
        setup.workdir,
    )
    worker = QuipProcess(
        "worker",
        {
            **common,
            "QUIP_WORKER_GROUP": group,
            "QUIP_INFLUX_URL": args.influx_url,
            "QUIP_INFLUX_BUCKET": database,
        },
        setup.workdir,
        tracemalloc_frames=args.tracemalloc,
    )
    api = QuipProcess(
        "api",
        {
            **common,
            "QUIP_READ_KEYS": f"{setup.project}:{read_key}",
            "QUIP_ADMIN_KEYS": f"{setup.project}:ak_soak_{setup.nonce}",
        },
        setup.workdir,
    )
    for process in (gateway, worker, api):
        setup.processes.append(process)
        process.start()
    return Target(
        gateway.url,
        write_key,
        worker.url,
        api.url,
        read_key,
        {"gateway": gateway.pid, "worker": worker.pid, "api": api.pid},
        group,
    )


def start_embedded(args: argparse.Namespace, setup: Setup) -> Target:
    write_key, read_key = f"wk_soak_{setup.nonce}", f"rk_soak_{setup.nonce}"
    funnels = setup.workdir / "funnels.toml"
    shutil.copyfile(args.funnels_file, funnels)
    up = QuipProcess(
        "up",
        {
            "QUIP_DATA_DIR": str(setup.workdir / "data"),
            "QUIP_WRITE_KEYS": f"{setup.project}:{write_key}",
            "QUIP_READ_KEYS": f"{setup.project}:{read_key}",
            "QUIP_ADMIN_KEYS": f"{setup.project}:ak_soak_{setup.nonce}",
            "QUIP_RATE_LIMIT_IP_PER_MIN": "0",
            "QUIP_FUNNELS_FILE": str(funnels),
        },
        setup.workdir,
        tracemalloc_frames=args.tracemalloc,
    )
    setup.processes.append(up)
    up.start(ready_timeout_s=180)
    return Target(up.url, write_key, up.url, up.url, read_key, {"up": up.pid})


def given_target(args: argparse.Namespace) -> Target:
    if not args.key:
        raise SystemExit("--gateway-url needs --key (a write key of the gateway)")
    pids = {}
    for item in args.pid:
        name, _, pid = item.partition("=")
        pids[name] = int(pid)
    return Target(
        args.gateway_url, args.key, args.worker_url, args.api_url, args.read_key, pids, args.group
    )


def start_simulator(
    args: argparse.Namespace, target: Target, setup: Setup, summary_path: Path
) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "quip", "simulate",
        "--url", target.gateway_url,
        "--key", target.write_key,
        "--rate", str(args.rate),
        "--duration", str(args.duration),
        "--users", str(args.users),
        "--seed", str(args.seed),
        "--concurrency", str(args.concurrency),
        "--no-progress",
        "--json-summary", str(summary_path),
    ]  # fmt: skip
    if setup.mode == "cluster" and not args.gateway_url:
        command += ["--kafka-bootstrap", args.bootstrap]
    env = {**os.environ, "QUIP_WRITE_KEYS": f"{setup.project}:{target.write_key}"}
    log = (setup.workdir / "simulate.log").open("ab")
    return subprocess.Popen(command, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)


def sample_loop(
    args: argparse.Namespace,
    target: Target,
    simulator: subprocess.Popen[bytes],
    probes: ProbeLog,
    setup: Setup,
    tracemalloc: dict[str, Any],
    rows: list[dict[str, Any]],
) -> None:
    """Appends a row to `rows` every --interval (in place: an interrupted run keeps them)."""
    processes = [*target.pids, "simulate"]
    pids = {**target.pids, "simulate": simulator.pid}
    origin = time.monotonic()
    previous_t = origin
    previous_cpu = {name: tree_cpu_s(pid) for name, pid in pids.items()}
    previous_busy = machine_busy_s()
    gateway_before, worker_before = Reading(), Reading()
    read_metrics(target.gateway_url, gateway_before)
    if target.worker_url != target.gateway_url:
        read_metrics(target.worker_url, worker_before)
    else:
        worker_before = gateway_before
    end = origin + args.duration
    traced_half = args.tracemalloc == 0
    while True:
        wake = previous_t + args.interval
        if simulator.poll() is not None and time.monotonic() >= end:
            break
        time.sleep(max(0.0, wake - time.monotonic()))
        now = time.monotonic()
        elapsed = now - previous_t
        row: dict[str, Any] = {
            "t_s": round(now - origin, 1),
            "utc": datetime.now(UTC).strftime("%H:%M:%S"),
            "loadavg_1m": os.getloadavg()[0],
        }
        busy = machine_busy_s()
        row["machine_cpu_pct"] = round(100 * (busy - previous_busy) / elapsed, 1)
        previous_busy = busy
        for name in processes:
            pid = pids[name]
            cpu = tree_cpu_s(pid)
            row[f"rss_mb_{name}"] = round(tree_rss_mb(pid), 1) or None
            row[f"cpu_pct_{name}"] = round(100 * (cpu - previous_cpu[name]) / elapsed, 1)
            previous_cpu[name] = cpu
        gateway_now = Reading()
        if read_metrics(target.gateway_url, gateway_now):
            p50, p95, _ = interval_latency(gateway_before, gateway_now)
            total, errors = interval_errors(gateway_before, gateway_now)
            row["gateway_p50_ms"] = None if p50 is None else round(p50, 2)
            row["gateway_p95_ms"] = None if p95 is None else round(p95, 2)
            row["gateway_requests"] = total
            row["gateway_errors"] = errors
            row["error_rate_pct"] = round(100 * errors / total, 3) if total else None
            row["accepted_per_s"] = round(
                (gateway_now.accepted - gateway_before.accepted) / elapsed
            )
            gateway_before = gateway_now
        if target.worker_url == target.gateway_url:
            worker_now = gateway_now
        else:
            worker_now = Reading()
            read_metrics(target.worker_url, worker_now)
        if worker_now.processed:
            processed = events_processed(worker_now)
            row["processed_per_s"] = round((processed - events_processed(worker_before)) / elapsed)
            if worker_now.lag is not None:
                row["worker_lag_gauge"] = worker_now.lag
            worker_before = worker_now
        row["lag"] = current_lag(args, target, worker_now)
        for probe in ("gateway", "api"):
            window = probes.window(probe, previous_t, now)
            latencies = [s[1] for s in window]
            p50, p95 = quantile_exact(latencies, 0.5), quantile_exact(latencies, 0.95)
            row[f"probe_{probe}_p50_ms"] = None if p50 is None else round(p50, 2)
            row[f"probe_{probe}_p95_ms"] = None if p95 is None else round(p95, 2)
            row[f"probe_{probe}_errors"] = sum(1 for s in window if not 200 <= s[2] < 300)
        previous_t = now
        rows.append(row)
        print(
            f"  {row['t_s']:7.0f}s load {row['loadavg_1m']:.2f} "
            + " ".join(
                f"{n} {row[f'rss_mb_{n}'] or 0:.0f}MB/{row[f'cpu_pct_{n}']:.0f}%" for n in processes
            )
            + f" | {row.get('accepted_per_s', '-')} in/s {row.get('processed_per_s', '-')} out/s"
            f" lag {row.get('lag', '-')} | gw p95 {row.get('gateway_p95_ms', '-')} ms"
            f" api p95 {row.get('probe_api_p95_ms', '-')} ms err {row.get('gateway_errors', '-')}",
            flush=True,
        )
        if not traced_half and now - origin >= args.duration / 2:
            traced_half = True
            traced = next(p for p in setup.processes if p.command in ("worker", "up"))
            tracemalloc["half"] = traced.allocation_summary()
        for process in setup.processes:
            if not process.alive():
                raise RuntimeError(f"{process.command} exited during the soak:\n{process.tail()}")


def current_lag(args: argparse.Namespace, target: Target, reading: Reading) -> float | None:
    """Cluster: from Kafka (the group's committed offsets). Embedded: events the gateway
    accepted minus events the runner processed, both counters of the one process."""
    if target.group is not None:
        return kafka_lag(args.bootstrap, target.group)
    if target.worker_url == target.gateway_url and reading.processed:
        return max(0.0, reading.accepted - events_processed(reading))
    return None


def drain(args: argparse.Namespace, target: Target) -> float | None:
    """Seconds after the load stopped until no record is left past the group's commits
    (cluster) or the lag is down to one event per partition (embedded, as before); None:
    not within --drain-timeout."""
    started = time.monotonic()
    while time.monotonic() - started < args.drain_timeout:
        if target.group is not None:
            drained = asyncio.run(records_past_commits(args.bootstrap, target.group)) == 0
        else:
            reading = Reading()
            read_metrics(target.worker_url, reading)
            lag = current_lag(args, target, reading)
            drained = lag is not None and lag <= ANALYTICS_EVENTS.partitions
        if drained:
            return round(time.monotonic() - started, 1)
        time.sleep(2)
    return None


def uncommitted_changes() -> dict[str, Any]:
    """The checkout is shared and edited while soaks run: which files differed from the
    commit when the processes started, and a digest of that diff."""
    try:
        stat = subprocess.run(
            ["git", "diff", "--stat", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=30
        ).stdout
        diff = subprocess.run(
            ["git", "diff", "HEAD"], cwd=REPO, capture_output=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"stat": stat.splitlines(), "sha256": hashlib.sha256(diff).hexdigest()}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=("cluster", "embedded"), default="cluster")
    parser.add_argument("--rate", type=float, default=3000, help="events/s (simulator)")
    parser.add_argument("--duration", type=float, default=1800, help="seconds of load")
    parser.add_argument("--interval", type=float, default=10, help="seconds between samples")
    parser.add_argument("--users", type=int, default=1000, help="simulated users")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--concurrency", type=int, default=64, help="simulator connections")
    parser.add_argument("--probe-interval", type=float, default=0.5)
    parser.add_argument("--rss-slope-limit", type=float, default=20.0, help="MB/h")
    parser.add_argument("--lag-growth-limit", type=float, default=100.0, help="records/min")
    parser.add_argument("--drain-timeout", type=float, default=120)
    parser.add_argument("--tracemalloc", type=int, default=0, metavar="FRAMES")
    parser.add_argument(
        "--bootstrap", default=os.environ.get("QUIP_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    )
    parser.add_argument(
        "--clickhouse",
        default=os.environ.get("QUIP_CLICKHOUSE_URL", "clickhouse://127.0.0.1:9000/quip").rsplit(
            "/", 1
        )[0],
        help="clickhouse-server base URL (the run's database is appended)",
    )
    parser.add_argument(
        "--influx-url", default=os.environ.get("QUIP_INFLUX_URL", "http://127.0.0.1:8086")
    )
    parser.add_argument(
        "--funnels-file", type=Path, default=REPO / "deploy" / "funnels.example.toml"
    )
    given = parser.add_argument_group("drive processes already running (cluster)")
    given.add_argument("--gateway-url")
    given.add_argument("--worker-url")
    given.add_argument("--api-url")
    given.add_argument("--key", help="write key of the gateway")
    given.add_argument("--read-key", help="read key of the API")
    given.add_argument("--project", default="default", help="project of --key")
    given.add_argument("--pid", action="append", default=[], metavar="NAME=PID")
    given.add_argument("--group", help="the worker's consumer group (for the lag)")
    parser.add_argument("--keep", action="store_true", help="keep database, topics, workdir")
    parser.add_argument("--label", default="")
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    nonce = uuid.uuid4().hex[:10]
    setup = Setup(
        mode=args.mode,
        nonce=nonce,
        project=args.project if args.gateway_url else f"soak_{nonce}",
        workdir=Path(tempfile.mkdtemp(prefix=f"quip-soak-{nonce}-")),
    )
    stem = f"soak-{args.mode}-{started.strftime('%Y%m%dT%H%M%SZ')}"
    args.output_dir.mkdir(parents=True, exist_ok=True)
    paths = {ext: args.output_dir / f"{stem}.{ext}" for ext in ("json", "csv", "png")}
    results: dict[str, Any] = {
        "benchmark": "soak",
        "mode": args.mode,
        "label": args.label,
        "started_at": started.isoformat(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "git_commit": git_commit(),
        "uncommitted_changes": uncommitted_changes(),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "loadavg_start": os.getloadavg(),
        },
        "setup": {"project": setup.project, "workdir": str(setup.workdir)},
    }
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    rows: list[dict[str, Any]] = []
    tracemalloc: dict[str, Any] = {}
    failed = True
    simulator: subprocess.Popen[bytes] | None = None
    prober: Prober | None = None
    try:
        if args.gateway_url:
            target = given_target(args)
        elif args.mode == "cluster":
            target = start_cluster(args, setup)
        else:
            target = start_embedded(args, setup)
        results["setup"].update(
            database=setup.database, group=setup.group, pids=target.pids,
            gateway_url=target.gateway_url, worker_url=target.worker_url, api_url=target.api_url,
        )  # fmt: skip
        print(
            f"soak {args.mode}: {args.rate:g} events/s for {args.duration:g} s, "
            f"sampled every {args.interval:g} s; workdir {setup.workdir}",
            flush=True,
        )
        probes = ProbeLog()
        prober = Prober(
            probes, target.gateway_url, target.write_key, target.api_url, target.read_key,
            setup.project, args.probe_interval,
        )  # fmt: skip
        prober.start()
        summary_path = setup.workdir / "simulate-summary.json"
        simulator = start_simulator(args, target, setup, summary_path)
        sample_loop(args, target, simulator, probes, setup, tracemalloc, rows)
        prober.stopped.set()
        code = simulator.wait(timeout=120)
        results["simulator"] = {
            "exit_status": code,
            "summary": orjson.loads(summary_path.read_bytes()) if summary_path.exists() else None,
        }
        results["drain_s"] = drain(args, target)
        if args.tracemalloc:
            traced = next(p for p in setup.processes if p.command in ("worker", "up"))
            tracemalloc["end"] = traced.allocation_summary()
            results["tracemalloc"] = tracemalloc
        failed = False
    except BaseException as exc:
        results["error"] = f"{type(exc).__name__}: {exc}"[:3000]
        raise
    finally:
        if prober is not None:
            prober.stopped.set()
        if simulator is not None and simulator.poll() is None:
            simulator.send_signal(signal.SIGINT)
            try:
                simulator.wait(timeout=30)
            except subprocess.TimeoutExpired:
                simulator.kill()
        for process in reversed(setup.processes):
            results.setdefault("exit_status", {})[process.command] = process.stop()
            if failed:
                print(
                    f"--- {process.command} log ({process.log}):\n{process.tail()}", file=sys.stderr
                )
        if not args.keep and not args.gateway_url:
            if setup.group:
                with contextlib.suppress(Exception):
                    asyncio.run(delete_app_topics(args.bootstrap, setup.group))
            if setup.database:
                drop_run_databases(args.clickhouse, args.influx_url, setup.database)
            if not failed:
                shutil.rmtree(setup.workdir, ignore_errors=True)
        processes = [*results["setup"].get("pids", {}), "simulate"]
        results["machine"]["loadavg_end"] = os.getloadavg()
        results["complete"] = not failed
        results["verdict"] = verdict(rows, processes, args)
        results["samples"] = rows
        paths["json"].write_bytes(
            orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
        )
        if rows:
            write_csv(rows, paths["csv"])
            write_chart(
                rows,
                processes,
                f"soak {args.mode}: {args.rate:g} ev/s, {started:%Y-%m-%d %H:%M} UTC",
                paths["png"],
            )
        print(f"results: {', '.join(str(p) for p in paths.values())}", flush=True)
    print_verdict(results)
    return 0


def print_verdict(results: dict[str, Any]) -> None:
    v = results["verdict"]
    if "memory" not in v:
        print(v.get("note"))
        return
    print("\nverdict")
    for name, m in v["memory"].items():
        print(
            f"  {name:9s} RSS {m['rss_mb_start']} → {m['rss_mb_half']} → {m['rss_mb_end']} MB"
            f" (max {m['rss_mb_max']}); second-half slope {m['slope_mb_per_h_second_half']} MB/h"
            f" → {'flat' if m['flat'] else 'GROWING'}"
        )
    for column, lat in v["latency"].items():
        print(
            f"  {column}: {lat['median_second_quarter_ms']} → {lat['median_last_quarter_ms']} ms"
            f" (x{lat['ratio']}) → {'steady' if lat['steady'] else 'DEGRADING'}"
        )
    lag = v["lag"]
    print(
        f"  lag max {lag['max']}, at end of load {lag['end_of_load']}, second-half slope"
        f" {lag['slope_per_min_second_half']}/min → {'bounded' if lag['bounded'] else 'GROWING'};"
        f" drained in {results.get('drain_s')} s after the load"
    )
    rate = v["error_rate"]
    print(f"  error rate {'-' if rate is None else f'{100 * rate:.3f} %'}")
    sim = (results.get("simulator") or {}).get("summary") or {}
    if sim:
        print(
            f"  simulator: {sim.get('events_accepted')} accepted,"
            f" {sim.get('events_failed')} failed, {sim.get('retries')} retries"
            f" in {sim.get('elapsed_s', 0):.0f} s"
        )
    machine = results["machine"]
    print(f"  load average {machine['loadavg_start']} → {machine['loadavg_end']}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
