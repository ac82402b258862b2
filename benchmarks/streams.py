"""Stream worker benchmark: events/s from Kafka to ClickHouse, worker RSS, and freshness.

Needs, already running: Kafka, clickhouse-server and InfluxDB (deploy/local/services.sh up).

What it creates, and removes before exiting (unless --keep):
  - a ClickHouse database `bench_<nonce>` (migrated with sinks.migrate) that the worker
    writes to, and an InfluxDB database `bench_<nonce>` for the worker's QoE series;
  - consumer groups `bench-<nonce>` (the worker's events consumer) and
    `bench-<nonce>-services` (its Faust app id), committed at the current end of
    analytics.events and of the service topics before anything is produced, so the
    worker processes only what this run writes; the topics named after that app id
    (state changelogs, Faust's assignor topic) are deleted at the end (the empty group
    expires by itself);
  - one `quip worker` subprocess (phase 1 and 2) and one `quip gateway` subprocess
    (phase 2), each started with its own port, environment and temporary working directory.
The preloaded events stay on analytics.events (retention as configured), like any traffic.

Phase 1, throughput (--phase throughput): M events (--events) of U distinct users
(--users) are preloaded into analytics.events exactly as the gateway writes them: one
EventRecord per (project, user) per simulated request of --batch events, key
record_key(project, user_id), committed in Kafka transactions by the gateway's own
common.producer.GroupCommitProducer (the worker reads read_committed). Then ONE worker
starts, and the script measures from the worker's /ready to
  - `events`: uniqExact(event_id) for the project reaching M (polled every 0.5 s; a cheap
    count() gates the exact query),
  - activity: uniqExact(user_hash) in user_first_seen reaching U,
  - every processor's analytics_events_processed counter reaching M (/metrics, every second),
giving events/s end to end and per agent. Worker RSS (VmRSS of the process and its
children) and the CPU of the worker, Kafka and ClickHouse are sampled every second.
With --profile S, py-spy records the worker for S seconds while it consumes.

Phase 2, freshness (--phase freshness): a gateway starts (rate limit off, a write key for
a second project); a paced open-loop client posts batches of --fresh-batch events (one
user per request) at --rate events/s for --duration seconds. For a sample of requests the
time of the 200 answer is kept, and a poller asks ClickHouse every --poll-interval for the
sampled event ids still outstanding; freshness = first poll (its start) that sees the id
minus the 200 time. --rate can be repeated: each rate runs in turn on the same processes.

Usage (from the repo root):
  .venv/bin/python -m benchmarks.streams --events 50000 --users 20000      # quick check
  .venv/bin/python -m benchmarks.streams                                   # 1M events, 1M users
  .venv/bin/python -m benchmarks.streams --phase freshness --rate 5000 --rate 20000
Results: benchmarks/results/streams-<timestamp>.json (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families

from benchmarks._lib.influx import influx_query
from benchmarks._lib.kafka import delete_app_topics, start_group_at_end
from benchmarks._lib.procfs import machine_busy_s, service_pids, status_kb, tree_cpu_s, tree_rss_mb
from benchmarks._lib.profile import parse_profile, start_profile
from benchmarks._lib.quip_process import QuipProcess
from benchmarks._lib.run import REPO, git_commit, result_path
from benchmarks._lib.stats import percentile
from benchmarks._lib.stores import drop_run_databases
from common.bus import BusUnavailable, OutgoingRecord
from common.producer import GroupCommitProducer
from quip.topics import apply_topics
from schemas.events import Event, EventRecord, encode_record, record_key
from schemas.services import SERVICE_TOPICS
from schemas.topics import ANALYTICS_EVENTS, DAY_MS
from sinks.clickhouse import ClickHouseError, ServerClickHouse
from sinks.migrate import migrate
from streams.backends.kafka.source import services_group

TARGET_EVENTS_PER_S = 50_000  # per worker, consume -> ClickHouse
TARGET_FRESHNESS_P95_S = 5.0
TARGET_RSS_MB = 500.0  # with 1M distinct users
TARGET_RSS_USERS = 1_000_000
AGENTS = ("events", "activity", "plays", "funnels")

# --------------------------------------------------------------------------- workload

DEVICES = (
    ("quest3", "horizon"),
    ("quest2", "horizon"),
    ("pico4", "pico_os"),
    ("vision_pro", "visionos"),
)
APP_VERSIONS = ("3.0.0", "3.0.1", "3.1.0", "3.1.2")
REGIONS = ("eu", "us", "apac", "latam")
PAGES = ("home", "library", "store", "settings", "social", "search", "title")
GESTURES = ("pinch", "grab", "swipe_left", "swipe_right", "point", "wave")
STORE_URL = "https://quibrowser.example/store"  # step 2 of deploy/funnels.example.toml
BITRATES = (2500, 4500, 8000, 12000)

# A user with a single event gets one of these (weights in per mille).
SINGLE_MIX: tuple[tuple[str, int], ...] = (
    ("page_view", 300),
    ("gesture", 220),
    ("session_start", 140),
    ("playback_heartbeat", 100),
    ("playback_end", 60),
    ("playback_start", 50),
    ("playback_request", 50),
    ("session_end", 40),
    ("playback_error", 20),
    ("purchase", 10),
    ("tutorial_complete", 10),
)
_SINGLE_KINDS = [kind for kind, _ in SINGLE_MIX]
_SINGLE_WEIGHTS = [weight for _, weight in SINGLE_MIX]


def make_props(rng: random.Random, kind: str, play_id: str, content_id: str) -> dict[str, Any]:
    """Props that pass the gateway's typed checks (schemas/events.py PROPS_TYPES)."""
    if kind == "page_view":
        if rng.random() < 0.2:
            return {"url": STORE_URL, "title": "Store"}
        page = rng.choice(PAGES)
        return {
            "url": f"https://vr.quip.example/{page}/{rng.randrange(10_000)}",
            "title": page.title(),
        }
    if kind == "gesture":
        return {"gesture": rng.choice(GESTURES), "hand": rng.choice(("left", "right"))}
    if kind == "session_start":
        return {}
    if kind == "session_end":
        return {"duration_ms": rng.randrange(60_000, 7_200_000)}
    if kind == "playback_request":
        return {"play_id": play_id, "content_id": content_id}
    if kind == "playback_start":
        return {
            "play_id": play_id,
            "content_id": content_id,
            "startup_ms": rng.randrange(80, 4_000),
            "bitrate_kbps": rng.choice(BITRATES),
        }
    if kind == "playback_heartbeat":
        return {
            "play_id": play_id,
            "content_id": content_id,
            "played_ms": rng.randrange(1_000, 30_000),
            "bitrate_kbps": rng.choice(BITRATES),
        }
    if kind == "playback_rebuffer":
        return {"play_id": play_id, "duration_ms": rng.randrange(50, 5_000)}
    if kind == "playback_quality_change":
        return {"play_id": play_id, "from_kbps": 8000, "to_kbps": 4500}
    if kind == "playback_error":
        return {"play_id": play_id, "code": rng.choice(("E_NET", "E_DRM", 4031)), "fatal": True}
    if kind == "playback_end":
        return {"play_id": play_id, "played_ms": rng.randrange(1_000, 7_200_000)}
    if kind == "purchase":
        return {"item_id": f"sku-{rng.randrange(90_000):05d}", "price": 9.99}
    if kind == "tutorial_complete":
        return {"skipped": rng.random() < 0.3}
    return {}


def session_script(rng: random.Random, n: int) -> list[str]:
    """Event types of one user with n >= 2 events: a play (request, start, heartbeats,
    sometimes a rebuffer or quality change, end) or a browsing session (session_start,
    store page, pinch, purchase / tutorial, ...), cut or padded to n events."""
    if rng.random() < 0.5:
        middle = ["playback_heartbeat"] * max(n - 3, 0)
        for index in range(len(middle)):
            roll = rng.random()
            if roll < 0.05:
                middle[index] = "playback_rebuffer"
            elif roll < 0.10:
                middle[index] = "playback_quality_change"
        return ["playback_request", "playback_start", *middle, "playback_end"][:n]
    browse = ["session_start", "page_view", "gesture", "page_view", "purchase", "tutorial_complete"]
    kinds = browse[: n - 1] + ["page_view"] * max(0, n - 1 - len(browse))
    return [*kinds, "session_end"]


@dataclass(frozen=True, slots=True)
class PreloadSpec:
    project: str
    events: int
    users: int
    batch: int
    days: float
    seed: int
    nonce: str


def events_per_user(rng: random.Random, events: int, users: int) -> list[int]:
    """n_u >= 1 for every user, summing to `events` (the extra events land on random
    users, so a few users have long sessions)."""
    counts = [1] * users
    for _ in range(events - users):
        counts[rng.randrange(users)] += 1
    return counts


def user_events(
    rng: random.Random,
    spec: PreloadSpec,
    user_index: int,
    count: int,
    now_ms: int,
    counter: int,
) -> list[Event]:
    user_id = f"u{spec.nonce}-{user_index}"
    device, os_name = rng.choice(DEVICES)
    app_version, region = rng.choice(APP_VERSIONS), rng.choice(REGIONS)
    session_id = f"s-{user_index}-{rng.randrange(1 << 16):04x}"
    play_id = f"pl-{spec.nonce}-{user_index}"
    content_id = f"c-{rng.randrange(20_000):05d}"
    kinds = (
        rng.choices(_SINGLE_KINDS, _SINGLE_WEIGHTS) if count == 1 else session_script(rng, count)
    )
    step_ms = rng.randrange(5_000, 30_000)
    start = now_ms - 600_000 - count * step_ms - int(rng.random() * spec.days * DAY_MS)
    return [
        Event(
            event_id=f"b{spec.nonce}-{counter + index}",
            type=kind,
            user_id=user_id,
            ts=start + index * step_ms,
            session_id=session_id,
            device_model=device,
            app_version=app_version,
            os=os_name,
            region=region,
            props=make_props(rng, kind, play_id, content_id),
        )
        for index, kind in enumerate(kinds)
    ]


def preload_requests(spec: PreloadSpec) -> Iterator[tuple[list[OutgoingRecord], int]]:
    """Simulated requests of `batch` events in user order, each split like the gateway
    splits a request: one record per user present in it. Yields (records, events)."""
    rng = random.Random(spec.seed)  # noqa: S311 (test data, not secrets)
    counts = events_per_user(rng, spec.events, spec.users)
    now_ms = int(time.time() * 1000)
    request: list[list[Event]] = []
    filled, counter = 0, 0
    for user_index, count in enumerate(counts):
        events = user_events(rng, spec, user_index, count, now_ms, counter)
        counter += count
        while events:
            take = min(len(events), spec.batch - filled)
            request.append(events[:take])
            events = events[take:]
            filled += take
            if filled == spec.batch:
                yield _records(spec.project, request), filled
                request, filled = [], 0
    if request:
        yield _records(spec.project, request), filled


def _records(project: str, per_user: list[list[Event]]) -> list[OutgoingRecord]:
    received_at = int(time.time() * 1000)
    return [
        OutgoingRecord(
            ANALYTICS_EVENTS.name,
            record_key(project, events[0].user_id),
            encode_record(EventRecord(project=project, received_at=received_at, events=events)),
        )
        for events in per_user
    ]


async def preload(spec: PreloadSpec, bootstrap: str, inflight: int) -> dict[str, Any]:
    producer = GroupCommitProducer(bootstrap, client_id=f"quip-bench-{spec.nonce}")
    await producer.start()
    if not producer.ready:
        await producer.stop()
        raise RuntimeError(f"Kafka at {bootstrap} not ready: {producer.last_error}")
    gate = asyncio.Semaphore(inflight)
    stats: Counter[str] = Counter()
    failures: list[BaseException] = []

    async def publish(records: list[OutgoingRecord], events: int) -> None:
        try:
            for attempt in range(20):
                try:
                    await producer.publish(records)
                    break
                except BusUnavailable:
                    stats["retries"] += 1
                    await asyncio.sleep(min(0.2 * 2**attempt, 5.0))
            else:
                raise RuntimeError("Kafka refused a preload request 20 times")
            stats["events"] += events
            stats["records"] += len(records)
            stats["bytes"] += sum(len(r.value) for r in records)
            stats["requests"] += 1
        except BaseException as exc:
            failures.append(exc)
        finally:
            gate.release()

    started = time.perf_counter()
    tasks: set[asyncio.Task[None]] = set()
    try:
        for records, events in preload_requests(spec):
            await gate.acquire()
            if failures:
                raise failures[0]
            task = asyncio.create_task(publish(records, events))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
        if failures:
            raise failures[0]
    finally:
        await producer.stop()
    elapsed = time.perf_counter() - started
    return {
        "events": stats["events"],
        "records": stats["records"],
        "requests": stats["requests"],
        "mean_record_bytes": round(stats["bytes"] / max(stats["records"], 1), 1),
        "events_per_record": round(stats["events"] / max(stats["records"], 1), 3),
        "retries": stats["retries"],
        "seconds": round(elapsed, 2),
        "events_per_s": round(stats["events"] / elapsed),
        "records_per_s": round(stats["records"] / elapsed),
    }


# --------------------------------------------------------------------------- sampling


def parse_metrics(text: str) -> dict[str, Any]:
    """The worker's /metrics reduced to what the report needs."""
    processed: dict[str, float] = {}
    sums: dict[str, dict[str, dict[str, float]]] = {"sink_write_seconds": {}, "sink_batch_rows": {}}
    scalars: dict[str, float] = {}
    loop: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "analytics_events_processed_total":
                processed[sample.labels["agent"]] = sample.value
            elif sample.name == "events_loop_seconds_total":
                loop[sample.labels["phase"]] = sample.value
            elif family.name in sums and sample.name.endswith(("_sum", "_count")):
                target = f"{sample.labels['sink']}:{sample.labels['target']}"
                part = "sum" if sample.name.endswith("_sum") else "count"
                sums[family.name].setdefault(target, {})[part] = sample.value
            elif sample.name in (
                "process_cpu_seconds_total",
                "process_resident_memory_bytes",
                "analytics_records_undecodable_total",
            ):
                scalars[sample.name] = scalars.get(sample.name, 0.0) + sample.value
    return {"processed": processed, "events_loop_seconds": loop, **sums, **scalars}


@dataclass
class Sample:
    t: float  # time.monotonic()
    rss_mb: float
    cpu_s: dict[str, float]  # cumulative CPU seconds per watched process tree
    processed: dict[str, float]


MACHINE = "machine (all processes)"  # the sampled CPU of every process on the box


@dataclass
class Sampler:
    """Every `interval` s: worker RSS, CPU of the watched processes, and the worker's
    per-agent processed counters (its /metrics). With `more_workers` (--workers), the
    workers' RSS, CPU (as "worker") and counters are their sums."""

    worker: QuipProcess
    watch: dict[str, int]  # name -> root pid, besides the workers
    interval: float = 1.0
    more_workers: list[QuipProcess] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    last_metrics: list[str] = field(default_factory=list)  # per worker
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self._stop.is_set():
                self.take(client)
                self._stop.wait(self.interval)

    @property
    def workers(self) -> list[QuipProcess]:
        return [self.worker, *self.more_workers]

    def take(self, client: httpx.Client) -> Sample:
        t = time.monotonic()
        processed: dict[str, float] = {}
        try:
            texts = [client.get(f"{worker.url}/metrics").text for worker in self.workers]
            self.last_metrics = texts
            processed = merged_metrics(texts)["processed"]
        except (httpx.HTTPError, ValueError):
            pass
        workers = self.workers
        sample = Sample(
            t=t,
            rss_mb=sum(tree_rss_mb(worker.pid) for worker in workers),
            cpu_s={
                "worker": sum(tree_cpu_s(worker.pid) for worker in workers),
                **{name: tree_cpu_s(pid) for name, pid in list(self.watch.items())},
                MACHINE: machine_busy_s(),
            },
            processed=processed,
        )
        self.samples.append(sample)
        return sample

    def window(self, t0: float, t1: float) -> list[Sample]:
        return [s for s in self.samples if t0 <= s.t <= t1]

    def cpu_percent(self, t0: float, t1: float) -> dict[str, float]:
        inside = self.window(t0, t1)
        if len(inside) < 2:
            return {}
        first, last = inside[0], inside[-1]
        wall = last.t - first.t
        return {
            name: round(100 * (last.cpu_s.get(name, 0) - first.cpu_s.get(name, 0)) / wall, 1)
            for name in last.cpu_s
        }

    def rss(self, t0: float, t1: float) -> dict[str, float]:
        inside = self.window(t0, t1) or self.samples[-1:]
        if not inside:
            return {}
        return {
            "peak_mb": round(max(s.rss_mb for s in inside), 1),
            "final_mb": round(inside[-1].rss_mb, 1),
        }


def merged_metrics(texts: Sequence[str]) -> dict[str, Any]:
    """`parse_metrics` of several workers, their numbers added up."""

    def add(into: dict[str, Any], more: dict[str, Any]) -> None:
        for key, value in more.items():
            if isinstance(value, dict):
                add(into.setdefault(key, {}), value)
            else:
                into[key] = into.get(key, 0) + value

    merged: dict[str, Any] = {}
    for text in texts:
        add(merged, parse_metrics(text))
    return merged


def distribution(values: Sequence[float], digits: int = 3) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {}
    return {
        "count": len(ordered),
        "p50": round(percentile(ordered, 0.50), digits),
        "p95": round(percentile(ordered, 0.95), digits),
        "p99": round(percentile(ordered, 0.99), digits),
        "max": round(ordered[-1], digits),
        "mean": round(sum(ordered) / len(ordered), digits),
    }


def crossing_time(points: Sequence[tuple[float, float]], level: float) -> float | None:
    """First time the (t, value) series reaches `level`, linearly interpolated."""
    previous: tuple[float, float] | None = None
    for t, value in points:
        if value >= level:
            if previous is None or value == previous[1]:
                return t
            t0, v0 = previous
            return t0 + (t - t0) * (level - v0) / (value - v0)
        previous = (t, value)
    return None


def rate_summary(
    points: Sequence[tuple[float, float]], total: int, t_ready: float
) -> dict[str, Any]:
    """events/s from ready to done, and the steady rate between 10 % and 90 % of total."""
    done = crossing_time(points, total)
    t10, t90 = crossing_time(points, 0.1 * total), crossing_time(points, 0.9 * total)
    out: dict[str, Any] = {"done": done is not None}
    if done is not None:
        out["seconds_from_ready"] = round(done - t_ready, 2)
        out["events_per_s"] = round(total / max(done - t_ready, 1e-9))
    elif points:
        t_last, reached = points[-1]
        out["reached"] = int(reached)
        out["seconds_from_ready"] = round(t_last - t_ready, 2)
        out["events_per_s"] = round(reached / max(t_last - t_ready, 1e-9))
    if t10 is not None and t90 is not None and t90 > t10:
        out["steady_events_per_s_10_90"] = round(0.8 * total / (t90 - t10))
    return out


# --------------------------------------------------------------------------- phase 1


@dataclass
class Run:
    args: argparse.Namespace
    nonce: str
    project: str
    group: str
    database: str
    clickhouse_url: str
    workdir: Path
    worker: QuipProcess | None = None
    gateway: QuipProcess | None = None
    sampler: Sampler | None = None


def worker_env(run: Run) -> dict[str, str]:
    env = {
        "QUIP_KAFKA_BOOTSTRAP": run.args.bootstrap,
        "QUIP_CLICKHOUSE_URL": run.clickhouse_url,
        "QUIP_WORKER_GROUP": run.group,
        "QUIP_INFLUX_URL": run.args.influx_url,
        "QUIP_INFLUX_BUCKET": run.database,
        # Faust's data directory (streams.app.worker_data_dir) lands in the temp workdir.
        "TMPDIR": str(run.workdir),
    }
    if not run.args.no_funnels:
        funnels = run.workdir / "funnels.toml"
        shutil.copyfile(run.args.funnels_file, funnels)
        env["QUIP_FUNNELS_FILE"] = str(funnels)
    return env


def start_worker(run: Run) -> QuipProcess:
    worker = QuipProcess(
        "worker",
        worker_env(run),
        run.workdir,
        gc_mode=run.args.worker_gc,
        tracemalloc_frames=run.args.worker_tracemalloc,
    )
    worker.start()
    run.worker = worker
    watch = service_pids()
    if run.gateway is not None:
        watch["gateway"] = run.gateway.pid
    run.sampler = Sampler(worker, watch)
    run.sampler.start()
    return worker


def start_more_workers(run: Run) -> None:
    """Workers 2..N of --workers, in the first one's consumer group: each joins once the
    one before it is ready (a rebalance each), while the first already consumes."""
    assert run.sampler is not None
    for number in range(2, run.args.workers + 1):
        worker = QuipProcess("worker", worker_env(run), run.workdir, name=f"worker-{number}")
        try:
            worker.start()
        except BaseException:
            worker.stop()  # not among the workers the run stops yet
            raise
        run.sampler.more_workers.append(worker)


POLL_ERRORS: Counter[str] = Counter()


def scalar(clickhouse: ServerClickHouse, sql: str, params: dict[str, Any]) -> int:
    """One number; -1 when the server does not answer (another job may be restarting it:
    the poll counts the error and tries again next time)."""
    try:
        return int(clickhouse.execute(sql, params)[0][0])
    except ClickHouseError as exc:
        POLL_ERRORS[str(exc).splitlines()[0][:120]] += 1
        return -1


def sink_summary(after: dict[str, Any], before: dict[str, Any] | None = None) -> dict[str, Any]:
    """Sink writes per table from the worker's histograms (the difference between two
    /metrics readings when `before` is given)."""
    sink: dict[str, Any] = {}
    for target, parts in after.get("sink_write_seconds", {}).items():
        rows = after.get("sink_batch_rows", {}).get(target, {})
        old_parts = (before or {}).get("sink_write_seconds", {}).get(target, {})
        old_rows = (before or {}).get("sink_batch_rows", {}).get(target, {})
        count = parts.get("count", 0) - old_parts.get("count", 0)
        seconds = parts.get("sum", 0) - old_parts.get("sum", 0)
        total_rows = rows.get("sum", 0) - old_rows.get("sum", 0)
        sink[target] = {
            "writes": int(count),
            "seconds_total": round(seconds, 2),
            "mean_ms": round(1000 * seconds / count, 1) if count else None,
            "rows_total": int(total_rows),
            "mean_rows": round(total_rows / count, 1) if count else None,
        }
    return sink


def loop_summary(after: dict[str, Any], before: dict[str, Any] | None = None) -> dict[str, Any]:
    """The events loop's seconds per phase, and each phase's share of their sum."""
    old = (before or {}).get("events_loop_seconds", {})
    seconds = {
        phase: value - old.get(phase, 0.0)
        for phase, value in after.get("events_loop_seconds", {}).items()
    }
    total = sum(seconds.values())
    return {
        phase: {"seconds": round(value, 2), "percent": round(100 * value / total, 1)}
        for phase, value in seconds.items()
        if total
    }


def worker_metrics(worker: QuipProcess) -> dict[str, Any]:
    try:
        return parse_metrics(httpx.get(f"{worker.url}/metrics", timeout=10).text)
    except (httpx.HTTPError, ValueError):
        return {}


def cpu_per_event(
    sampler: Sampler, t_ready: float, t_done: float | None, events: int
) -> dict[str, Any]:
    """Worker CPU seconds from ready to done per event: unlike events/s, this does not
    depend on how much of a core other jobs on the box left the worker."""
    inside = sampler.window(t_ready, t_done) if t_done else []
    if t_done is None or len(inside) < 2:
        return {}
    busy = inside[-1].cpu_s["worker"] - inside[0].cpu_s["worker"]
    share = events * (inside[-1].t - inside[0].t) / max(t_done - t_ready, 1e-9)
    machine_busy = inside[-1].cpu_s[MACHINE] - inside[0].cpu_s[MACHINE]
    cores = os.cpu_count() or 1
    return {
        "cpu_seconds": round(busy, 2),
        "us_per_event": round(1e6 * busy / max(share, 1), 1),
        "events_per_s_at_one_full_core": round(share / max(busy, 1e-9)),
        # Everything on the box (ClickHouse and Kafka too): the rate that every core
        # busy would allow, however the work were spread over processes.
        "machine_us_per_event": round(1e6 * machine_busy / max(share, 1), 1),
        "events_per_s_at_all_cores": round(cores * share / max(machine_busy, 1e-9)),
    }


def measure_throughput(run: Run) -> dict[str, Any]:
    args = run.args
    users = min(args.users, args.events)
    spec = PreloadSpec(
        project=run.project,
        events=args.events,
        users=users,
        batch=args.batch,
        days=args.days,
        seed=args.seed,
        nonce=run.nonce,
    )
    print(
        f"phase 1: preloading {spec.events:,} events of {spec.users:,} users into "
        f"{ANALYTICS_EVENTS.name} (project {spec.project}) ...",
        flush=True,
    )
    loaded = asyncio.run(preload(spec, args.bootstrap, args.preload_inflight))
    print(
        f"  preloaded in {loaded['seconds']} s ({loaded['events_per_s']:,} events/s, "
        f"{loaded['records']:,} records, {loaded['events_per_record']} events/record)",
        flush=True,
    )

    worker = start_worker(run)
    sampler = run.sampler
    assert sampler is not None
    t_ready = worker.ready_at
    print(
        f"  worker pid {worker.pid} ready in {t_ready - worker.spawned_at:.1f} s; consuming ...",
        flush=True,
    )
    start_more_workers(run)
    if sampler.more_workers:
        print(
            f"  workers 2..{args.workers} ready {time.monotonic() - t_ready:.1f} s after the first",
            flush=True,
        )
    workers = sampler.workers
    profile: subprocess.Popen[bytes] | None = None
    profile_path = Path(tempfile.gettempdir()) / f"quip-bench-streams-{run.nonce}.profile.txt"
    profile_started = 0.0

    clickhouse = ServerClickHouse(run.clickhouse_url)
    p = {"p": run.project}
    events_points: list[tuple[float, float]] = [(t_ready, 0.0)]
    users_points: list[tuple[float, float]] = [(t_ready, 0.0)]
    events_done = users_done = None
    agents = [a for a in AGENTS if not (a == "funnels" and args.no_funnels)]
    deadline = t_ready + args.throughput_timeout
    while time.monotonic() < deadline:
        for each in workers:
            if not each.alive():
                raise RuntimeError(f"{each.name} exited during phase 1:\n{each.tail()}")
        now = time.monotonic()
        if args.profile and profile is None and now - t_ready >= args.profile_delay:
            profile = start_profile(
                args.py_spy,
                worker.pid,
                args.profile,
                args.profile_rate,
                profile_path,
                not args.profile_all_threads,
            )
            profile_started = now
        if events_done is None:
            stored = scalar(clickhouse, "SELECT count() FROM events WHERE project = %(p)s", p)
            if stored >= spec.events:  # count() is cheap; confirm with the exact figure
                stored = scalar(
                    clickhouse, "SELECT uniqExact(event_id) FROM events WHERE project = %(p)s", p
                )
                if stored >= spec.events:
                    events_done = now
            if stored >= 0:
                events_points.append((now, float(stored)))
        if users_done is None:
            rows = scalar(
                clickhouse, "SELECT count() FROM user_first_seen WHERE project = %(p)s", p
            )
            seen = rows
            if rows >= spec.users:
                seen = scalar(
                    clickhouse,
                    "SELECT uniqExact(user_hash) FROM user_first_seen WHERE project = %(p)s",
                    p,
                )
                if seen >= spec.users:
                    users_done = now
            if seen >= 0:
                users_points.append((now, float(min(seen, spec.users))))
        last = sampler.samples[-1] if sampler.samples else None
        agents_done = last is not None and all(
            last.processed.get(a, 0) >= spec.events for a in agents
        )
        profiling = profile is not None and profile.poll() is None
        if events_done and users_done and agents_done and not profiling:
            break
        time.sleep(0.5)
    t_end = time.monotonic()
    with httpx.Client(timeout=5) as client:
        final = sampler.take(client)
    metrics = merged_metrics(sampler.last_metrics)

    per_agent: dict[str, Any] = {}
    for agent in agents:
        points = [(t_ready, 0.0)] + [
            (s.t, s.processed.get(agent, 0.0)) for s in sampler.samples if s.t >= t_ready
        ]
        per_agent[agent] = rate_summary(points, spec.events, t_ready)
        per_agent[agent]["processed"] = int(final.processed.get(agent, 0))
    sink = sink_summary(metrics)
    end_to_end = (
        max(t for t in (events_done, users_done) if t is not None)
        if (events_done and users_done)
        else None
    )
    tables = {
        table: scalar(clickhouse, f"SELECT count() FROM {table} WHERE project = %(p)s", p)
        for table in ("events", "plays", "funnel_progress")
    }
    clickhouse.close()

    hwm = sum(status_kb(each.pid, "VmHWM") or 0 for each in workers)
    allocations = worker.allocation_summary() if args.worker_tracemalloc else None
    result: dict[str, Any] = {
        "project": spec.project,
        "events": spec.events,
        "users": spec.users,
        "preload": loaded,
        "workers": len(workers),
        "worker_start_to_ready_s": round(t_ready - worker.spawned_at, 2),
        "events_table": rate_summary(events_points, spec.events, t_ready),
        "activity_tables": rate_summary(users_points, spec.users, t_ready),
        "end_to_end": {
            "done": end_to_end is not None,
            "seconds_from_ready": round(end_to_end - t_ready, 2) if end_to_end else None,
            "events_per_s": round(spec.events / (end_to_end - t_ready)) if end_to_end else None,
        },
        "per_agent": per_agent,
        "sink_writes": sink,
        "events_loop": loop_summary(metrics),
        "rows_stored": tables,
        # The sum over the workers when there are several.
        "worker_rss": {**sampler.rss(t_ready, t_end), "hwm_mb": round(hwm / 1024, 1)},
        "cpu_percent_of_one_core": sampler.cpu_percent(t_ready, events_done or t_end),
        "worker_cpu_seconds": metrics.get("process_cpu_seconds_total"),
        "worker_cpu_per_event": cpu_per_event(sampler, t_ready, end_to_end, spec.events),
        "undecodable_records": metrics.get("analytics_records_undecodable_total", 0),
        # Records other jobs wrote to analytics.events during the run (processed too); with
        # several workers, also the records replayed after the rebalances as they join.
        "foreign_events_processed": max(
            int(max(final.processed.values(), default=0)) - spec.events, 0
        ),
        "timeline": [
            {
                "t": round(s.t - t_ready, 1),
                "rss_mb": round(s.rss_mb, 1),
                "processed": {k: int(v) for k, v in s.processed.items()},
            }
            for s in sampler.samples
            if s.t >= t_ready and s.t <= t_end
        ],
        "measured_until_s": round(t_end - t_ready, 1),
    }
    if allocations is not None:
        result["worker_allocations"] = allocations
    if profile is not None:
        _, err = profile.communicate(timeout=args.profile + 60)
        raw = profile_path.read_text() if profile_path.exists() else ""
        result["profile"] = {
            "seconds": args.profile,
            "started_s_after_ready": round(profile_started - t_ready, 1),
            "rate_hz": args.profile_rate,
            "mode": "all active threads" if args.profile_all_threads else "GIL holder only",
            "raw_file": str(profile_path),
            "py_spy_stderr": err.decode(errors="replace")[-500:],
            **parse_profile(raw),
        }
        expected = args.profile * args.profile_rate
        result["profile"]["active_share_percent"] = (
            round(100 * result["profile"]["samples"] / expected, 1) if expected else None
        )
    return result


# --------------------------------------------------------------------------- phase 2


class HttpConnection:
    """Minimal HTTP/1.1 keep-alive client (httpx costs far more CPU per request)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, headers: bytes, body: bytes) -> int:
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.reader, self.writer
        try:
            writer.write(
                b"POST %s HTTP/1.1\r\nHost: %s:%d\r\n%sContent-Length: %d\r\n\r\n"
                % (path.encode(), self.host.encode(), self.port, headers, len(body))
                + body
            )
            await writer.drain()
            status = int((await reader.readline()).split()[1])
            length, chunked = 0, False
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
                elif name.strip().lower() == b"transfer-encoding":
                    chunked = b"chunked" in value.lower()
            if chunked:
                while True:
                    size = int((await reader.readline()).split(b";")[0], 16)
                    await reader.readexactly(size + 2)
                    if size == 0:
                        break
            else:
                await reader.readexactly(length)
            return status
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


FRESH_MIX = (
    ("playback_heartbeat", 35),
    ("gesture", 20),
    ("page_view", 15),
    ("playback_start", 5),
    ("playback_quality_change", 5),
    ("playback_rebuffer", 3),
    ("session_start", 3),
    ("session_end", 2),
    ("playback_end", 2),
    ("purchase", 10),
)


def fresh_body(
    rng: random.Random, nonce: str, request: int, batch: int, users: int
) -> tuple[bytes, str]:
    """One native batch (SPEC §2) of one user; returns (body, last event id)."""
    user = rng.randrange(users)
    now_ms = int(time.time() * 1000)
    play_id = f"fpl-{nonce}-{user}-{request}"
    kinds = rng.choices([k for k, _ in FRESH_MIX], [w for _, w in FRESH_MIX], k=batch)
    events = [
        {
            "event_id": f"f{nonce}-{request}-{index}",
            "type": kind,
            "user_id": f"fu{nonce}-{user}",
            "ts": now_ms - (batch - index) * 10,
            "props": make_props(rng, kind, play_id, f"c-{user % 20_000:05d}"),
        }
        for index, kind in enumerate(kinds)
    ]
    context = {
        "session_id": f"fs-{user}",
        "device_model": "quest3",
        "app_version": "3.1.2",
        "os": "horizon",
        "region": "eu",
    }
    return orjson.dumps({"context": context, "events": events}), f"f{nonce}-{request}-{batch - 1}"


@dataclass
class FreshnessState:
    outstanding: dict[str, float] = field(default_factory=dict)  # event id -> 200 time
    freshness: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    accepted_events: int = 0
    polls: int = 0
    poll_seconds: list[float] = field(default_factory=list)


async def poll_visible(
    run: Run, state: FreshnessState, project: str, stop: asyncio.Event, interval: float
) -> None:
    clickhouse = ServerClickHouse(run.clickhouse_url)
    try:
        while True:
            ids = list(state.outstanding)
            if stop.is_set() and not ids:
                return
            if ids:
                t_query = time.monotonic()
                seen: list[tuple[Any, ...]] = []
                for chunk in range(0, len(ids), 2_000):
                    try:
                        seen += await asyncio.to_thread(
                            clickhouse.execute,
                            "SELECT event_id FROM events "
                            "WHERE project = %(p)s AND event_id IN %(ids)s",
                            {"p": project, "ids": tuple(ids[chunk : chunk + 2_000])},
                        )
                    except ClickHouseError as exc:  # restarted by another job: next poll
                        POLL_ERRORS[str(exc).splitlines()[0][:120]] += 1
                state.polls += 1
                state.poll_seconds.append(time.monotonic() - t_query)
                for (event_id,) in seen:
                    answered = state.outstanding.pop(event_id, None)
                    if answered is not None:
                        state.freshness.append(t_query - answered)
            await asyncio.sleep(interval)
    finally:
        clickhouse.close()


async def freshness_load(run: Run, rate: float, project: str, key: str) -> dict[str, Any]:
    args = run.args
    assert run.gateway is not None
    batch = args.fresh_batch
    per_s = rate / batch
    warmup_requests = int(per_s * args.warmup)
    total = warmup_requests + int(per_s * args.duration)
    sample_every = max(1, round(per_s / args.samples_per_s))
    headers = b"Content-Type: application/json\r\nAuthorization: Bearer %s\r\n" % key.encode()
    rng = random.Random(args.seed + int(rate))  # noqa: S311 (test data, not secrets)
    state = FreshnessState()
    queue: asyncio.Queue[tuple[int, float]] = asyncio.Queue()
    stop = asyncio.Event()
    nonce = f"{run.nonce}r{int(rate)}"
    host = "127.0.0.1"
    port = run.gateway.port

    async def sender() -> None:
        connection = HttpConnection(host, port)
        while True:
            request, scheduled = await queue.get()
            if request < 0:
                connection.close()
                return
            body, last_id = fresh_body(rng, nonce, request, batch, args.fresh_users)
            try:
                async with asyncio.timeout(args.request_timeout):
                    status = await connection.post("/v1/events", headers, body)
            except TimeoutError:  # before OSError, its base class
                connection.close()
                state.statuses["error:timeout"] += 1
                continue
            except (OSError, ValueError, IndexError, asyncio.IncompleteReadError) as exc:
                state.statuses[f"error:{type(exc).__name__}"] += 1
                continue
            answered = time.monotonic()
            state.statuses[str(status)] += 1
            if request >= warmup_requests:
                state.latencies.append(answered - scheduled)
            if status == 200:
                state.accepted_events += batch
                if request >= warmup_requests and request % sample_every == 0:
                    state.outstanding[last_id] = answered

    poller = asyncio.create_task(poll_visible(run, state, project, stop, args.poll_interval))
    senders = [asyncio.create_task(sender()) for _ in range(args.connections)]
    t0 = time.monotonic() + 0.1
    for request in range(total):
        scheduled = t0 + request / per_s
        delay = scheduled - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((request, scheduled))
    for _ in senders:
        queue.put_nowait((-1, 0.0))
    await asyncio.gather(*senders)
    t_load_end = time.monotonic()
    load_seconds = t_load_end - t0
    stop.set()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(poller, args.drain_timeout)
    return {
        "target_events_per_s": rate,
        "batch": batch,
        "requests": total,
        "warmup_requests": warmup_requests,
        "statuses": dict(state.statuses),
        "accepted_events": state.accepted_events,
        "achieved_events_per_s": round(state.accepted_events / load_seconds),
        "load_seconds": round(load_seconds, 2),
        "request_latency_s": distribution(state.latencies),
        "sampled_requests": len(state.freshness) + len(state.outstanding),
        "freshness_s": distribution(state.freshness),
        "never_visible": len(state.outstanding),
        "polls": state.polls,
        "poll_query_s": distribution(state.poll_seconds),
        "t0": t0,
        "t_end": t_load_end,
        "sample_every": sample_every,
    }


def measure_freshness(run: Run) -> list[dict[str, Any]]:
    args = run.args
    project = f"{run.project}_f"
    key = f"wk_{run.nonce}"
    if run.worker is None or not run.worker.alive():
        start_worker(run)
    gateway = QuipProcess(
        "gateway",
        {
            "QUIP_KAFKA_BOOTSTRAP": args.bootstrap,
            "QUIP_WRITE_KEYS": f"{project}:{key}",
            "QUIP_RATE_LIMIT_IP_PER_MIN": "0",
            "QUIP_RATE_LIMIT_KEY_PER_MIN": "0",
        },
        run.workdir,
        ["--workers", str(args.gateway_workers)],
    )
    gateway.start()
    run.gateway = gateway
    sampler, worker = run.sampler, run.worker
    assert sampler is not None
    assert worker is not None
    sampler.watch["gateway"] = gateway.pid
    results = []
    for rate in args.rate:
        print(
            f"phase 2: {rate:,.0f} events/s for {args.warmup:g}+{args.duration:g} s "
            f"(B={args.fresh_batch}, one user per request) ...",
            flush=True,
        )
        before = worker_metrics(worker)
        result = asyncio.run(freshness_load(run, rate, project, key))
        after = worker_metrics(worker)
        result["sink_writes"] = sink_summary(after, before)
        # Anything else produced to analytics.events meanwhile is processed too.
        processed = after.get("processed", {}).get("events", 0) - before.get("processed", {}).get(
            "events", 0
        )
        result["foreign_events_processed"] = max(int(processed) - result["accepted_events"], 0)
        t0, t1 = result.pop("t0"), result.pop("t_end")
        result["worker_rss"] = sampler.rss(t0, t1)
        result["cpu_percent_of_one_core"] = sampler.cpu_percent(t0, t1)
        result["project"] = project
        results.append(result)
        fresh = result["freshness_s"]
        print(
            f"  achieved {result['achieved_events_per_s']:,} events/s; freshness p50 "
            f"{fresh.get('p50')} s, p95 {fresh.get('p95')} s, max {fresh.get('max')} s",
            flush=True,
        )
        if not worker.alive():
            raise RuntimeError(f"worker exited during phase 2:\n{worker.tail()}")
    return results


# --------------------------------------------------------------------------- report


def evaluate_targets(results: dict[str, Any]) -> dict[str, Any]:
    targets: dict[str, Any] = {}
    phase1 = results.get("throughput")
    if phase1:
        rate = phase1["end_to_end"]["events_per_s"] or phase1["events_table"].get("events_per_s")
        workers = phase1.get("workers", 1)
        per_worker = round(rate / workers) if rate is not None else None
        targets["events_per_s_per_worker"] = {
            "target": f">= {TARGET_EVENTS_PER_S:,}",
            "value": per_worker,
            "met": per_worker is not None and per_worker >= TARGET_EVENTS_PER_S,
        }
        peak = phase1["worker_rss"].get("hwm_mb") or phase1["worker_rss"].get("peak_mb")
        peak = round(peak / workers, 1) if peak is not None else None  # a worker's share
        targets["worker_rss_mb"] = {
            "target": f"< {TARGET_RSS_MB:g} MB with {TARGET_RSS_USERS:,} distinct users",
            "value": peak,
            "users": phase1["users"],
            "met": peak is not None and peak < TARGET_RSS_MB
            if phase1["users"] >= TARGET_RSS_USERS
            else "not applicable (fewer users)",
        }
    for run in results.get("freshness", []):
        p95 = run["freshness_s"].get("p95")
        targets[f"freshness_p95_s@{run['target_events_per_s']:g}"] = {
            "target": f"< {TARGET_FRESHNESS_P95_S:g} s",
            "value": p95,
            "met": p95 is not None and p95 < TARGET_FRESHNESS_P95_S and not run["never_visible"],
        }
    return targets


def num(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    return f"{value:,}" if isinstance(value, int | float) else str(value)


def contamination(foreign: int, own: int) -> list[str]:
    if foreign <= 0.01 * own:
        return []
    return [
        f"  WARNING: the worker also processed {foreign:,} events that other jobs wrote to "
        f"{ANALYTICS_EVENTS.name} meanwhile ({100 * foreign / max(own, 1):.0f}% of this run's):"
        " these figures are not clean"
    ]


def print_summary(results: dict[str, Any]) -> None:
    lines = [
        f"== streams benchmark{' [' + results['label'] + ']' if results['label'] else ''}"
        f" ({results['machine']['cpu_count']} cores, commit "
        f"{(results['git_commit'] or '?')[:8]})"
    ]
    phase1 = results.get("throughput")
    if phase1:
        pre = phase1["preload"]
        lines.append(
            f"preload     {pre['events']:,} events / {phase1['users']:,} users in "
            f"{pre['records']:,} records ({pre['events_per_record']} ev/record, "
            f"{pre['mean_record_bytes']} B) at {pre['events_per_s']:,} events/s"
        )
        e2e, ev, act = phase1["end_to_end"], phase1["events_table"], phase1["activity_tables"]
        if phase1.get("workers", 1) > 1:
            lines.append(
                f"workers     {phase1['workers']} processes in one group: the rates are theirs "
                "together; RSS and worker CPU are their sums"
            )
        lines.append(
            f"end to end  {num(e2e['events_per_s'])} events/s "
            f"({e2e['seconds_from_ready']} s from worker ready; start-to-ready "
            f"{phase1['worker_start_to_ready_s']} s)"
            if e2e["done"]
            else f"end to end  NOT DONE after {phase1['measured_until_s']} s: events "
            f"{num(ev.get('reached'))} stored, {num(ev.get('events_per_s'))} events/s"
        )
        lines.append(
            f"  events    {num(ev.get('events_per_s'))} events/s "
            f"(steady 10-90 %: {num(ev.get('steady_events_per_s_10_90'))})"
        )
        lines.append(
            f"  activity  {num(act.get('events_per_s'))} users/s "
            f"(steady 10-90 %: {num(act.get('steady_events_per_s_10_90'))})"
        )
        for agent, figures in phase1["per_agent"].items():
            lines.append(
                f"  agent {agent:<9} {num(figures.get('events_per_s')):>8} events/s "
                f"(steady {num(figures.get('steady_events_per_s_10_90'))}, "
                f"processed {figures['processed']:,})"
            )
        allocations = phase1.get("worker_allocations")
        if allocations:
            lines.append(f"allocations {allocations['traced_mb']} MB live (tracemalloc), top:")
            for entry in allocations["top"][:12]:
                lines.append(
                    f"  {entry['mb']:8.1f} MB {entry['share_percent']:5.1f}%  {entry['where']}"
                )
        rss = phase1["worker_rss"]
        lines.append(
            f"worker RSS  peak {rss.get('peak_mb')} MB (VmHWM {rss.get('hwm_mb')} MB), "
            f"final {rss.get('final_mb')} MB"
        )
        cpu = ", ".join(f"{k} {v}%" for k, v in phase1["cpu_percent_of_one_core"].items())
        lines.append(
            f"CPU         {cpu} (% of one core, while consuming; "
            f"{results['machine']['cpu_count']} cores = "
            f"{100 * (results['machine']['cpu_count'] or 1)}%)"
        )
        if phase1.get("workers", 1) > 1:
            lines.append(
                f"  replayed  {phase1.get('foreign_events_processed', 0):,} events processed "
                "twice: replays after the rebalances as workers joined (or other jobs' events)"
            )
        else:
            lines.extend(contamination(phase1.get("foreign_events_processed", 0), phase1["events"]))
        per_event = phase1.get("worker_cpu_per_event") or {}
        if per_event:
            lines.append(
                f"worker CPU  {per_event['us_per_event']} µs per event -> "
                f"{num(per_event['events_per_s_at_one_full_core'])} events/s if it had a "
                "whole core to itself (it is one event loop: one core is its ceiling)"
            )
            lines.append(
                f"machine CPU {per_event['machine_us_per_event']} µs per event (every process) "
                f"-> {num(per_event['events_per_s_at_all_cores'])} events/s with all "
                f"{results['machine']['cpu_count']} cores busy"
            )
        loop = phase1.get("events_loop") or {}
        if loop:
            shares = ", ".join(f"{phase} {part['percent']}%" for phase, part in loop.items())
            lines.append(f"events loop {shares} (of its wall time)")
        for target, sink in phase1["sink_writes"].items():
            lines.append(
                f"  sink {target:<32} {sink['writes']:>6} writes, mean "
                f"{sink['mean_rows']} rows / {sink['mean_ms']} ms, total "
                f"{sink['seconds_total']} s"
            )
        profile = phase1.get("profile")
        if profile and profile["samples"]:
            lines.append(
                f"profile     {profile['samples']} samples over {profile['seconds']} s, "
                f"{profile['mode']} ({profile['active_share_percent']}% of wall time)"
            )
            for entry in profile["by_thread"]:
                lines.append(f"  {entry['share_percent']:5.1f}%  {entry['frame']}")
            lines.append("  by package (self):")
            for entry in profile["self_by_package"][:10]:
                lines.append(f"  {entry['share_percent']:5.1f}%  {entry['frame']}")
            lines.append("  top functions (self):")
            for entry in profile["self"][:15]:
                lines.append(f"  {entry['share_percent']:5.1f}%  {entry['frame']}")
    for run in results.get("freshness", []):
        fresh, lat = run["freshness_s"], run["request_latency_s"]
        lines.append(
            f"freshness @ {run['target_events_per_s']:,.0f} events/s: achieved "
            f"{num(run['achieved_events_per_s'])}; p50 {fresh.get('p50')} s, p95 "
            f"{fresh.get('p95')} s, max {fresh.get('max')} s over "
            f"{fresh.get('count', 0)} samples ({run['never_visible']} never visible)"
        )
        lines.append(
            f"  request latency p50 {lat.get('p50')} s, p99 {lat.get('p99')} s; "
            f"statuses {run['statuses']}; RSS {run['worker_rss']}"
        )
        cpu = ", ".join(f"{k} {v}%" for k, v in run["cpu_percent_of_one_core"].items())
        lines.append(f"  CPU {cpu}")
        lines.extend(contamination(run.get("foreign_events_processed", 0), run["accepted_events"]))
        for target, sink in run.get("sink_writes", {}).items():
            lines.append(
                f"  sink {target:<32} {sink['writes']:>6} writes, mean "
                f"{sink['mean_rows']} rows / {sink['mean_ms']} ms"
            )
    for name, target in results["targets"].items():
        lines.append(
            f"target      {name}: {target['value']} ({target['target']}) -> "
            f"{'met' if target['met'] is True else target['met'] or 'NOT met'}"
        )
    lines.append(f"saved       {results['output']}")
    print("\n".join(lines))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--phase", choices=("throughput", "freshness", "both"), default="both")
    group = parser.add_argument_group("phase 1 (throughput)")
    group.add_argument("--events", type=int, default=1_000_000, help="M events to preload")
    group.add_argument("--users", type=int, default=1_000_000, help="U distinct users (<= M)")
    group.add_argument("--batch", type=int, default=100, help="events per simulated request")
    group.add_argument("--days", type=float, default=3.0, help="event times within the last N")
    group.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes in the group (RSS, CPU and counters are their sums; "
        "the targets are per worker: 1)",
    )
    group.add_argument(
        "--preload-inflight",
        type=int,
        default=200,
        help="simulated requests awaiting their Kafka commit at once",
    )
    group.add_argument(
        "--throughput-timeout",
        type=float,
        default=900.0,
        help="stop waiting after this many seconds from worker ready",
    )
    group.add_argument(
        "--profile",
        type=float,
        default=0.0,
        help="py-spy the worker for this many seconds while it consumes",
    )
    group.add_argument(
        "--profile-delay",
        type=float,
        default=3.0,
        help="seconds after worker ready before py-spy starts",
    )
    group.add_argument("--profile-rate", type=int, default=100, help="py-spy samples/s")
    group.add_argument(
        "--profile-all-threads",
        action="store_true",
        help="sample every non-idle thread, not only the GIL holder",
    )
    group.add_argument("--py-spy", type=Path, default=Path("/tmp/venv-tools/bin/py-spy"))  # noqa: S108
    group = parser.add_argument_group("phase 2 (freshness)")
    group.add_argument(
        "--rate",
        type=float,
        action="append",
        default=None,
        help="events/s offered to the gateway (repeat for several; default 5000)",
    )
    group.add_argument("--duration", type=float, default=30.0, help="measured seconds per rate")
    group.add_argument("--warmup", type=float, default=3.0, help="unsampled seconds first")
    group.add_argument("--fresh-batch", type=int, default=100, help="events per request")
    group.add_argument("--fresh-users", type=int, default=10_000, help="distinct users")
    group.add_argument("--connections", type=int, default=16, help="keep-alive connections")
    group.add_argument(
        "--samples-per-s",
        type=float,
        default=50.0,
        help="requests per second whose freshness is measured",
    )
    group.add_argument("--poll-interval", type=float, default=0.2, help="ClickHouse poll, s")
    group.add_argument(
        "--drain-timeout",
        type=float,
        default=60.0,
        help="wait this long after the load for sampled events to appear",
    )
    group.add_argument(
        "--request-timeout", type=float, default=30.0, help="per request, s (then reconnect)"
    )
    group.add_argument("--gateway-workers", type=int, default=1, help="quip gateway --workers")
    group = parser.add_argument_group("setup")
    parser.add_argument(
        "--worker-gc",
        choices=("default", "off", "relaxed"),
        default="default",
        help="diagnostic: start the worker with CPython's cyclic GC off, or "
        "with high thresholds (gc.set_threshold(100000, 50, 1000))",
    )
    parser.add_argument(
        "--worker-tracemalloc",
        type=int,
        default=0,
        metavar="FRAMES",
        help="diagnostic: trace the worker's allocations (slows it down) and "
        "report live memory by allocating line at the end of phase 1",
    )
    parser.add_argument(
        "--no-funnels", action="store_true", help="run the worker without predefined funnels"
    )
    parser.add_argument(
        "--funnels-file", type=Path, default=REPO / "deploy" / "funnels.example.toml"
    )
    parser.add_argument(
        "--bootstrap", default=os.environ.get("QUIP_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    )
    parser.add_argument(
        "--clickhouse",
        default="clickhouse://127.0.0.1:9000",
        help="server URL without database (bench_<nonce> is created)",
    )
    parser.add_argument(
        "--influx-url", default=os.environ.get("QUIP_INFLUX_URL", "http://127.0.0.1:8086")
    )
    parser.add_argument("--seed", type=int, default=None, help="workload seed (default random)")
    parser.add_argument(
        "--keep", action="store_true", help="keep the database, Faust topics and working directory"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="JSON path (default benchmarks/results/streams-<timestamp>.json)",
    )
    parser.add_argument("--label", default="", help="free text stored with the results")
    args = parser.parse_args(argv)
    args.rate = args.rate or [5_000.0]
    if args.events < 1 or args.users < 1:
        parser.error("--events and --users must be >= 1")
    if args.users > args.events:
        print(
            f"note: --users {args.users:,} > --events {args.events:,}: using {args.events:,} users",
            file=sys.stderr,
        )
    if args.seed is None:
        args.seed = secrets.randbelow(1 << 30)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    nonce = uuid.uuid4().hex[:10]
    database = f"bench_{nonce}"
    run = Run(
        args=args,
        nonce=nonce,
        project=f"bench_{nonce}",
        group=f"bench-{nonce}",
        database=database,
        clickhouse_url=f"{args.clickhouse.rstrip('/')}/{database}",
        workdir=Path(tempfile.mkdtemp(prefix=f"quip-bench-streams-{nonce}-")),
    )
    results: dict[str, Any] = {
        "benchmark": "streams",
        "label": args.label,
        "started_at": started.isoformat(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "git_commit": git_commit(),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "loadavg_start": os.getloadavg(),
        },
        "setup": {
            "database": database,
            "group": run.group,
            "project": run.project,
            "workdir": str(run.workdir),
            "funnels": not args.no_funnels,
        },
    }
    output: Path = args.output or (
        result_path("streams", started)
    )
    results["output"] = str(output)

    def save(complete: bool) -> None:
        """Written after each phase too, so a run killed later keeps what it measured."""
        results["complete"] = complete
        results["machine"]["loadavg_end"] = os.getloadavg()
        if POLL_ERRORS:  # ClickHouse did not answer some polls: figures around them are coarser
            results["clickhouse_poll_errors"] = dict(POLL_ERRORS)
        results["targets"] = evaluate_targets(results)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_bytes(
            orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
        )

    # SIGTERM (e.g. a timeout) unwinds through the cleanup below like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    failed = True
    try:
        print(f"setup: database {database}, group {run.group}, workdir {run.workdir}", flush=True)
        asyncio.run(apply_topics(args.bootstrap))
        clickhouse = ServerClickHouse(run.clickhouse_url)
        migrate(clickhouse)
        clickhouse.close()
        influx_query(args.influx_url, f'CREATE DATABASE "{database}"')
        partitions = asyncio.run(
            start_group_at_end(args.bootstrap, run.group, [ANALYTICS_EVENTS.name])
        ) + asyncio.run(
            start_group_at_end(args.bootstrap, services_group(run.group), list(SERVICE_TOPICS))
        )
        results["setup"]["group_partitions_committed"] = partitions
        if args.phase in ("throughput", "both"):
            results["throughput"] = measure_throughput(run)
            save(complete=False)
        if args.phase in ("freshness", "both"):
            results["freshness"] = measure_freshness(run)
        failed = False
    except BaseException as exc:
        results["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        raise
    finally:
        if run.sampler is not None:
            run.sampler.stop()
        more_workers = run.sampler.more_workers if run.sampler is not None else []
        for process in (run.gateway, run.worker, *more_workers):
            if process is not None:
                code = process.stop()
                results.setdefault("exit_status", {})[process.name] = code
                if failed:
                    print(
                        f"--- {process.name} log tail ({process.log}):\n{process.tail()}",
                        file=sys.stderr,
                    )
        if not args.keep:
            with contextlib.suppress(Exception):
                results["deleted_topics"] = asyncio.run(
                    delete_app_topics(args.bootstrap, run.group)
                )
            drop_run_databases(args.clickhouse, args.influx_url, database)
            if not failed:
                shutil.rmtree(run.workdir, ignore_errors=True)
        save(complete=not failed)
        if failed:
            print(f"partial results saved to {output}", file=sys.stderr)
    print_summary(results)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
