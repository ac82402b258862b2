"""Ingest gateway benchmark: accepted events/s, request latency, and Kafka's own ceiling.

What must already be running (this script starts none of it):
  - a gateway with rate limiting off, e.g.
        QUIP_WRITE_KEYS=bench:wk_bench QUIP_RATE_LIMIT_IP_PER_MIN=0 quip gateway --workers 2
  - the Kafka broker that gateway writes to (deploy/local/services.sh up; 127.0.0.1:9092).

What it starts itself, and stops before exiting:
  - --processes load-generator processes (forks of this script);
  - one JVM running Kafka's producer performance tool
    (org.apache.kafka.tools.ProducerPerformance from the cached Kafka jars) against a
    private topic `quip-bench-ceiling-<nonce>` that it creates (12 partitions, like
    analytics.events) and deletes afterwards; skipped with --no-kafka-ceiling;
  - with --self-test only: a trivial HTTP server in a child process that answers every
    request at once (no gateway, no Kafka), to measure the load generator's own ceiling.

How it drives the gateway: N keep-alive HTTP/1.1 connections (a minimal asyncio client:
aiohttp and httpx cost several times more CPU per request), each posting one native batch
(SPEC §2) of B events at a time. Bodies are built once per run from realistic templates
(mixed event types, --users distinct users, batch context); per request only the event
ids (`<run nonce><process>-<request counter>-<index>`, unique across runs) and `ts` (now)
are patched in, with one `bytes.join`, so generating a 100-event body costs microseconds.
Without --rate each connection sends back to back (closed loop: maximum throughput); with
--rate R requests are scheduled open loop at R/B per second and latency is measured from
each request's scheduled time, so a stalled gateway shows up in the latency instead of
silently lowering the offered load.

Stats cover requests *started* in the measured window (after --warmup) and wait for them
to finish. Generator CPU per process comes from time.process_time(); when a process uses
most of a core the generator may be the bottleneck (the summary says so); --self-test
gives its ceiling in requests/s.

Kafka ceiling: the gateway writes one record per (user, request) whose value is an
EventRecord (schemas.events.encode_record) holding that user's events; the producer
performance tool runs with the mean size of those records (estimated from the very bodies
sent), acks=all + idempotence, and its records/s times events per record is the ceiling in
events/s. It runs after the HTTP phase, so the two do not compete for the CPU.

Usage (from the repo root):
  .venv/bin/python -m benchmarks.ingest --key wk_bench                  # B=100, max rate
  .venv/bin/python -m benchmarks.ingest --key wk_bench --rate 50000     # latency at 50k ev/s
  .venv/bin/python -m benchmarks.ingest --self-test                      # generator ceiling
Results: benchmarks/results/ingest-<timestamp>.json (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import math
import multiprocessing
import os
import platform
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from benchmarks._lib.http import HttpConnection, open_connection
from benchmarks._lib.procfs import (
    machine_cpu_times,
    process_command,
    process_cpu_s,
    process_tree,
    service_pids,
)
from benchmarks._lib.run import REPO, git_commit, result_path
from benchmarks._lib.stats import percentile

TARGET_EVENTS_PER_S = 100_000  # at B=100, maximum rate
TARGET_P99_MS = 100.0  # at 50,000 events/s
TARGET_P99_RATE = 50_000
TARGET_KAFKA_RATIO = 0.5  # gateway events/s ÷ Kafka producer ceiling (events/s)
BENCH_TOPIC_PARTITIONS = 12  # as analytics.events (schemas/topics.py)

# --------------------------------------------------------------------------- workload

DEVICES = (
    ("quest3", "horizon"),
    ("quest2", "horizon"),
    ("quest_pro", "horizon"),
    ("pico4", "pico_os"),
    ("vision_pro", "visionos"),
)
APP_VERSIONS = ("3.0.0", "3.0.1", "3.1.0", "3.1.2")
REGIONS = ("eu", "us", "apac", "latam")
PAGES = ("home", "library", "store", "settings", "social", "search", "title")
GESTURES = ("pinch", "grab", "swipe_left", "swipe_right", "point", "thumbs_up", "wave")
CUSTOM = (
    ("menu.open", lambda r: {"menu": r.choice(("settings", "friends", "store", "quick"))}),
    ("achievement_unlocked", lambda r: {"achievement": f"ach-{r.randrange(500):03d}", "tier": 2}),
    ("store.item_view", lambda r: {"item_id": f"sku-{r.randrange(90000):05d}", "price": 9.99}),
)


def _content(rng: random.Random) -> str:
    return f"c-{rng.randrange(20000):05d}"


def _play(rng: random.Random, user: str) -> str:
    return f"pl-{user[2:]}-{rng.randrange(1 << 24):06x}"


def make_event(rng: random.Random, user: str) -> dict[str, Any]:
    """One realistic native event without event_id and ts (patched in per request)."""
    roll = rng.random()
    props: dict[str, Any]
    if roll < 0.35:
        kind = "playback_heartbeat"
        props = {
            "play_id": _play(rng, user),
            "content_id": _content(rng),
            "played_ms": rng.randrange(1_000, 3_600_000),
            "bitrate_kbps": rng.choice((2500, 4500, 8000, 12000)),
        }
    elif roll < 0.55:
        kind = "gesture"
        props = {"gesture": rng.choice(GESTURES), "hand": rng.choice(("left", "right"))}
    elif roll < 0.70:
        kind = "page_view"
        page = rng.choice(PAGES)
        props = {
            "url": f"https://vr.quip.example/{page}/{rng.randrange(10000)}?ref={rng.choice(PAGES)}",
            "title": page.title(),
        }
    elif roll < 0.75:
        kind = "playback_start"
        props = {
            "play_id": _play(rng, user),
            "content_id": _content(rng),
            "startup_ms": rng.randrange(80, 4000),
            "bitrate_kbps": rng.choice((2500, 4500, 8000)),
        }
    elif roll < 0.80:
        kind = "playback_quality_change"
        props = {
            "play_id": _play(rng, user),
            "content_id": _content(rng),
            "from_kbps": 8000,
            "to_kbps": 4500,
        }
    elif roll < 0.83:
        kind = "playback_rebuffer"
        props = {"play_id": _play(rng, user), "duration_ms": rng.randrange(50, 5000)}
    elif roll < 0.86:
        kind = "session_start"
        props = {}
    elif roll < 0.88:
        kind = "session_end"
        props = {"duration_ms": rng.randrange(60_000, 7_200_000)}
    elif roll < 0.90:
        kind = "playback_end"
        props = {"play_id": _play(rng, user), "played_ms": rng.randrange(1_000, 7_200_000)}
    else:
        kind, make_props = rng.choice(CUSTOM)
        props = make_props(rng)
    return {
        "type": kind,
        "user_id": user,
        "session_id": f"s-{user[2:]}-{rng.randrange(1 << 16):04x}",
        "props": props,
    }


@dataclass(slots=True)
class Template:
    """A request body with holes: `sep.join(parts)` is the body, where `sep` carries the
    request's ts and event-id prefix (`<ts>,"event_id":"<prefix><counter>`); every event
    reads `{"ts":<sep>-<index>",...}`."""

    context: dict[str, str]
    events: list[dict[str, Any]]  # without ts and event_id
    parts: list[bytes]
    event_bytes: list[int]  # serialized size of each event, ts and id included


def compile_template(
    context: dict[str, str], events: list[dict[str, Any]], sep_len: int
) -> Template:
    parts = [b'{"context":' + orjson.dumps(context) + b',"events":[{"ts":']
    event_bytes = []
    for index, event in enumerate(events):
        tail = b"]}" if index == len(events) - 1 else b',{"ts":'
        rest = orjson.dumps(event)  # {"type":...}
        part = b'-%d",' % index + rest[1:]
        parts.append(part + tail)
        event_bytes.append(len(b'{"ts":') + sep_len + len(part))
    return Template(context, events, parts, event_bytes)


def build_templates(
    *, seed: int, batch: int, users: int, users_per_request: int, count: int, sep_len: int
) -> list[Template]:
    rng = random.Random(seed)  # noqa: S311 (test data, not secrets)
    user_ids = [f"u-{n:06d}" for n in range(users)]
    templates = []
    for _ in range(count):
        device, os_name = rng.choice(DEVICES)
        context = {
            "device_model": device,
            "app_version": rng.choice(APP_VERSIONS),
            "os": os_name,
            "region": rng.choice(REGIONS),
        }
        pool = rng.sample(user_ids, min(users_per_request, users)) if users_per_request else None
        events = [make_event(rng, rng.choice(pool or user_ids)) for _ in range(batch)]
        templates.append(compile_template(context, events, sep_len))
    return templates


def separator(ts_ms: int, id_prefix: bytes, counter: int) -> bytes:
    return b'%d,"event_id":"%s%010x' % (ts_ms, id_prefix, counter)


def id_prefix_for(run_nonce: str, process_index: int) -> bytes:
    return f"{run_nonce}{process_index:02d}-".encode()


def template_count(batch: int) -> int:
    """Enough distinct bodies to spread users, bounded to ~50k pre-built events."""
    return max(8, min(256, 50_000 // max(batch, 1)))


@dataclass(frozen=True, slots=True)
class RecordEstimate:
    mean_record_bytes: float
    events_per_record: float
    records_per_request: float
    method: str


def estimate_records(templates: Sequence[Template], project: str) -> RecordEstimate:
    """What the gateway produces for these bodies: one analytics.events record per user
    per request, holding that user's events (context merged in, as the gateway does)."""
    now = int(time.time() * 1000)
    sizes: list[int] = []
    events_total = 0
    method = "schemas.events.encode_record"
    try:
        import msgspec

        from schemas.events import Event, EventRecord, encode_record
    except ImportError:
        method = "orjson approximation (schemas.events not importable)"
    for t_index, template in enumerate(templates[:64]):
        by_user: dict[str, list[dict[str, Any]]] = {}
        for index, event in enumerate(template.events):
            merged = {**template.context, **event}
            merged["ts"] = now
            merged["event_id"] = f"bench0000000-{t_index:010x}-{index}"
            by_user.setdefault(event["user_id"], []).append(merged)
        for user_events in by_user.values():
            if method.startswith("schemas"):
                record = EventRecord(
                    project=project,
                    received_at=now,
                    events=[msgspec.convert(e, Event) for e in user_events],
                )
                sizes.append(len(encode_record(record)))
            else:
                value = {"v": 1, "project": project, "received_at": now, "events": user_events}
                sizes.append(len(orjson.dumps(value)))
            events_total += len(user_events)
    requests = min(len(templates), 64)
    return RecordEstimate(
        mean_record_bytes=sum(sizes) / len(sizes),
        events_per_record=events_total / len(sizes),
        records_per_request=len(sizes) / requests,
        method=method,
    )


# --------------------------------------------------------------------------- load process


@dataclass(frozen=True, slots=True)
class LoadPlan:
    url: str
    key: str
    connections: int
    batch: int
    rate_events_per_s: float  # this process's share; 0 = closed loop
    start_wall: float  # time.time() at which to start sending (all processes)
    warmup_s: float
    duration_s: float
    timeout_s: float
    use_gzip: bool
    gzip_level: int
    id_prefix: bytes


@dataclass(slots=True)
class LoadStats:
    requests: int = 0
    accepted: int = 0
    rejected: int = 0
    status: Counter[int] = field(default_factory=Counter)
    connection_errors: int = 0
    timeouts: int = 0  # requests given up after --timeout
    latencies_ms: array[float] = field(default_factory=lambda: array("d"))
    accepted_latencies_ms: array[float] = field(default_factory=lambda: array("d"))  # 200s
    queue_delays_ms: array[float] = field(default_factory=lambda: array("d"))
    per_second_events: list[int] = field(default_factory=list)  # by completion second
    last_done_s: float = 0.0  # last counted completion, seconds after the window start
    samples: list[str] = field(default_factory=list)
    wire_bytes: int = 0
    unsent_scheduled: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0

    def sample(self, text: str) -> None:
        if len(self.samples) < 5:
            self.samples.append(text[:500])


class LoadProcess:
    def __init__(self, plan: LoadPlan, templates: Sequence[Template]) -> None:
        self.plan = plan
        self.templates = templates
        parts = urlsplit(plan.url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.path = (parts.path or "/v1/events") + (f"?{parts.query}" if parts.query else "")
        self.counter = 0
        self.jitter = random.Random(plan.id_prefix)  # noqa: S311 (timing, not secrets)
        self.stats = LoadStats()
        self.stopping = False
        self.win_start = self.win_end = 0.0  # perf_counter() bounds of the measured window
        # Body lengths are fixed per template (ts and the hex counter have fixed widths).
        sep = separator(int(time.time() * 1000), plan.id_prefix, 0)
        self.heads = [self._head(len(sep.join(t.parts))) for t in templates]

    def _head(self, length: int) -> bytes:
        lines = [
            f"POST {self.path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            f"Authorization: Bearer {self.plan.key}",
            "Content-Type: application/json",
        ]
        if self.plan.use_gzip:
            lines.append("Content-Encoding: gzip")
        else:
            lines.append(f"Content-Length: {length}")
        return ("\r\n".join(lines) + "\r\n").encode()

    def next_request(self) -> bytes:
        self.counter += 1
        index = self.counter % len(self.templates)
        sep = separator(int(time.time() * 1000), self.plan.id_prefix, self.counter)
        body = sep.join(self.templates[index].parts)
        head = self.heads[index]
        if self.plan.use_gzip:
            body = gzip.compress(body, self.plan.gzip_level, mtime=0)
            head += b"Content-Length: %d\r\n" % len(body)
        return head + b"\r\n" + body

    async def run(self) -> LoadStats:
        plan = self.plan
        t0 = time.perf_counter() + (plan.start_wall - time.time())
        self.win_start = t0 + plan.warmup_s
        self.win_end = self.win_start + plan.duration_s
        self.stats.per_second_events = [0] * (math.ceil(plan.duration_s) + 1)
        queue: asyncio.Queue[float] | None = None
        tasks: list[asyncio.Task[None]] = []
        if plan.rate_events_per_s > 0:
            queue = asyncio.Queue()
            tasks.append(asyncio.create_task(self._dispatch(queue, t0)))
        await asyncio.sleep(max(0.0, t0 - time.perf_counter()))
        workers = [asyncio.create_task(self._worker(queue)) for _ in range(plan.connections)]
        await asyncio.sleep(max(0.0, self.win_start - time.perf_counter()))
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(max(0.0, self.win_end - time.perf_counter()))
        self.stopping = True
        for task in tasks:
            task.cancel()
        if queue is not None:  # wake the workers waiting for a slot
            for _ in workers:
                queue.put_nowait(math.inf)
        # Requests started in the window are waited for (bounded by the request timeout).
        await asyncio.wait(workers, timeout=plan.timeout_s + 1)
        self.stats.cpu_s = time.process_time() - cpu0
        self.stats.wall_s = time.perf_counter() - wall0
        for task in workers:
            task.cancel()
        if queue is not None:
            self.stats.unsent_scheduled += sum(
                1 for _ in range(queue.qsize()) if queue.get_nowait() < self.win_end
            )
        return self.stats

    async def _dispatch(self, queue: asyncio.Queue[float], t0: float) -> None:
        interval = self.plan.batch / self.plan.rate_events_per_s
        index = 0
        while True:
            due = t0 + index * interval
            if due >= self.win_end:
                return
            now = time.perf_counter()
            if due > now:
                await asyncio.sleep(due - now)
            queue.put_nowait(due)
            index += 1

    async def _worker(self, queue: asyncio.Queue[float] | None) -> None:
        conn: HttpConnection | None = None
        stats, plan = self.stats, self.plan
        try:
            while not self.stopping:
                if queue is not None:
                    scheduled = await queue.get()
                    if self.stopping or scheduled >= self.win_end:
                        if scheduled < self.win_end:
                            stats.unsent_scheduled += 1
                        return
                if conn is None or conn.closed or not conn.reusable:
                    if conn is not None:
                        conn.close()
                    try:
                        conn = await open_connection(self.host, self.port)
                    except OSError as exc:
                        stats.connection_errors += 1
                        stats.sample(f"connect: {exc!r}")
                        conn = None
                        await asyncio.sleep(0.2)
                        continue
                data = self.next_request()
                sent = time.perf_counter()
                if queue is None:
                    scheduled = sent
                if scheduled >= self.win_end:
                    return
                try:
                    async with asyncio.timeout(plan.timeout_s):
                        status, body = await conn.request(data)
                except (OSError, TimeoutError) as exc:
                    if scheduled >= self.win_start:
                        if isinstance(exc, TimeoutError):
                            stats.timeouts += 1
                        else:
                            stats.connection_errors += 1
                        stats.sample(f"request: {exc!r}")
                    conn.close()
                    conn = None
                    continue
                done = time.perf_counter()
                if scheduled >= self.win_start:
                    self._record(scheduled, sent, done, status, body, len(data))
                if status in (429, 503) and conn.retry_after_s:
                    # As the SDKs do: a refused connection waits Retry-After before its next
                    # try, with jitter (up to twice as long) so that refused clients do not
                    # all come back in the same instant.
                    pause = conn.retry_after_s * (1 + self.jitter.random())
                    await asyncio.sleep(min(pause, max(0.0, self.win_end - done)))
        finally:
            if conn is not None:
                conn.close()

    def _record(
        self, scheduled: float, sent: float, done: float, status: int, body: bytes, size: int
    ) -> None:
        stats = self.stats
        stats.requests += 1
        stats.wire_bytes += size
        stats.status[status] += 1
        stats.last_done_s = max(stats.last_done_s, done - self.win_start)
        stats.latencies_ms.append((done - scheduled) * 1000)
        stats.queue_delays_ms.append((sent - scheduled) * 1000)
        if status == 200:
            stats.accepted_latencies_ms.append((done - scheduled) * 1000)
            answer = orjson.loads(body)
            accepted = int(answer.get("accepted", 0))
            stats.accepted += accepted
            second = int(done - self.win_start)
            per_second = stats.per_second_events
            if second >= len(per_second):
                per_second.extend([0] * (second + 1 - len(per_second)))
            per_second[second] += accepted
            if answer.get("rejected"):
                stats.rejected += int(answer["rejected"])
                stats.sample(f"200 with rejections: {body[:400]!r}")
        else:
            stats.sample(f"{status}: {body[:300]!r}")


def load_process_main(plan: LoadPlan, templates: Sequence[Template], results: Connection) -> None:
    """Entry point of one forked load-generator process."""
    try:
        stats = asyncio.run(LoadProcess(plan, templates).run())
        results.send(("ok", stats))
    except BaseException as exc:  # report, do not hang the parent
        results.send(("error", repr(exc)))
    finally:
        results.close()


# --------------------------------------------------------------------------- self-test sink


class SinkServer(asyncio.Protocol):
    """Answers every complete request with a fixed 200: the cheapest possible 'gateway'."""

    response = b""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            at = head.find(b"\r\ncontent-length:")
            eol = head.find(b"\r\n", at + 2)
            length = int(head[at + 17 : eol if eol >= 0 else len(head)]) if at >= 0 else 0
            total = end + 4 + length
            if len(buf) < total:
                return
            del buf[:total]
            assert self.transport is not None
            self.transport.write(self.response)


def sink_main(batch: int, control: Connection) -> None:
    body = orjson.dumps({"accepted": batch, "rejected": 0, "errors": []})
    SinkServer.response = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
        % (len(body), body)
    )

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(SinkServer, "127.0.0.1", 0, backlog=1024)
        control.send(server.sockets[0].getsockname()[1])
        stop = asyncio.Event()
        loop.add_reader(control.fileno(), stop.set)
        cpu0 = time.process_time()
        await stop.wait()
        loop.remove_reader(control.fileno())
        control.recv()
        control.send(time.process_time() - cpu0)
        server.close()

    asyncio.run(serve())


# --------------------------------------------------------------------------- Kafka ceiling

SUMMARY_RE = re.compile(
    r"(?P<records>\d+) records sent, (?P<rps>[\d.]+) records/sec \((?P<mbps>[\d.]+) MB/sec\), "
    r"(?P<avg>[\d.]+) ms avg latency, (?P<max>[\d.]+) ms max latency, (?P<p50>\d+) ms 50th, "
    r"(?P<p95>\d+) ms 95th, (?P<p99>\d+) ms 99th, (?P<p999>\d+) ms 99\.9th"
)


def kafka_version() -> str:
    pom = (REPO / "deploy/local/kafka/pom.xml").read_text()
    found = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", pom)
    if found is None:
        raise RuntimeError("no <kafka.version> in deploy/local/kafka/pom.xml")
    return found.group(1)


def kafka_libs() -> Path:
    cache = Path(os.environ.get("QUIP_CACHE_DIR", "~/.cache/quip")).expanduser()
    return cache / f"kafka-{kafka_version()}" / "libs"


async def _create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


async def _delete_topic(bootstrap: str, topic: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topic])
    finally:
        await admin.close()


def parse_producer_summary(output: str) -> dict[str, float] | None:
    matches = list(SUMMARY_RE.finditer(output))
    if not matches:
        return None
    found = matches[-1]
    return {
        "records": float(found["records"]),
        "records_per_s": float(found["rps"]),
        "mb_per_s": float(found["mbps"]),
        "latency_avg_ms": float(found["avg"]),
        "latency_max_ms": float(found["max"]),
        "latency_p50_ms": float(found["p50"]),
        "latency_p95_ms": float(found["p95"]),
        "latency_p99_ms": float(found["p99"]),
        "latency_p999_ms": float(found["p999"]),
    }


def measure_kafka_ceiling(
    args: argparse.Namespace, estimate: RecordEstimate, run_nonce: str
) -> dict[str, Any]:
    """Run ProducerPerformance --kafka-runs times on a private topic; the best run is the
    ceiling (the box is shared, so a slow run says more about the neighbours than Kafka)."""
    java = shutil.which("java")
    if java is None:
        return {"skipped": "java not found on PATH"}
    libs = kafka_libs()
    if not libs.is_dir():
        return {"skipped": f"{libs} missing (deploy/local/services.sh install)"}
    record_size = max(1, round(estimate.mean_record_bytes))
    topic = f"quip-bench-ceiling-{run_nonce}"
    producer_props = [
        f"bootstrap.servers={args.bootstrap}",
        "acks=all",
        "enable.idempotence=true",
        "linger.ms=5",
        "batch.size=1048576",
    ]
    result: dict[str, Any] = {
        "tool": "org.apache.kafka.tools.ProducerPerformance",
        "kafka_version": kafka_version(),
        "topic": f"{topic} (deleted)",
        "partitions": BENCH_TOPIC_PARTITIONS,
        "record_size": record_size,
        "num_records": args.kafka_records,
        "producer_props": producer_props,
        "transaction_duration_ms": args.kafka_transaction_ms or None,
        "note": "null keys (sticky partitioner) where the gateway keys by project:user_id",
        "runs": [],
    }
    print(
        f"kafka ceiling: topic {topic} ({BENCH_TOPIC_PARTITIONS} partitions), "
        f"{args.kafka_runs} x {args.kafka_records:,} records of {record_size} B ...",
        flush=True,
    )
    time.sleep(2.0)  # let the broker settle after the HTTP phase
    with tempfile.TemporaryDirectory(prefix="quip-bench-kafka-") as logs:
        command = [
            java,
            "-Xmx1g",
            f"-Dlog4j2.configurationFile={REPO / 'deploy/local/kafka/log4j2.properties'}",
            f"-Dkafka.logs.dir={logs}",
            "-cp",
            f"{libs}/*",
            "org.apache.kafka.tools.ProducerPerformance",
            "--topic",
            topic,
            "--num-records",
            str(args.kafka_records),
            "--record-size",
            str(record_size),
            "--throughput",
            "-1",
        ]
        if args.kafka_transaction_ms:
            command += ["--transaction-duration-ms", str(args.kafka_transaction_ms)]
        command += ["--producer-props", *producer_props]
        asyncio.run(_create_topic(args.bootstrap, topic, BENCH_TOPIC_PARTITIONS))
        try:
            for _ in range(args.kafka_runs):
                result["runs"].append(_producer_performance(command, args.kafka_timeout))
        finally:
            try:
                asyncio.run(_delete_topic(args.bootstrap, topic))
            except Exception as exc:
                print(f"warning: could not delete {topic}: {exc!r}", file=sys.stderr)
    measured = [run for run in result["runs"] if "summary" in run]
    if not measured:
        result["error"] = "; ".join(run.get("error", "?") for run in result["runs"])
        return result
    best = max(measured, key=lambda run: run["summary"]["records_per_s"])
    result["summary"] = best["summary"]
    result["events_per_record"] = estimate.events_per_record
    result["events_per_s"] = best["summary"]["records_per_s"] * estimate.events_per_record
    return result


def _producer_performance(command: list[str], timeout_s: float) -> dict[str, Any]:
    children_cpu0, machine0 = _children_cpu(), machine_cpu_times()
    wall0 = time.perf_counter()
    try:
        proc = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"ProducerPerformance did not finish in {timeout_s}s"}
    wall = time.perf_counter() - wall0
    machine1 = machine_cpu_times()
    run: dict[str, Any] = {
        "exit_code": proc.returncode,
        "jvm_wall_s": round(wall, 2),
        "jvm_cpu_s": round(_children_cpu() - children_cpu0, 2),
        "output_tail": proc.stdout.strip().splitlines()[-2:],
    }
    if machine0 and machine1 and machine1[1] > machine0[1]:
        run["machine_busy_percent"] = round(
            100.0 * (machine1[0] - machine0[0]) / (machine1[1] - machine0[1]), 1
        )
    summary = parse_producer_summary(proc.stdout)
    if summary is None:
        run["error"] = "no summary line in the tool's output"
        run["stderr_tail"] = proc.stderr.strip().splitlines()[-10:]
    else:
        run["summary"] = summary
    return run


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --------------------------------------------------------------------------- orchestration


def default_watch_pids() -> dict[int, str]:
    """The local Kafka broker started by deploy/local/services.sh, if it runs."""
    pid = service_pids().get("kafka")
    return {} if pid is None else {pid: "kafka broker"}


class CpuWatch:
    """CPU% of chosen processes (with their children) over the measured window."""

    def __init__(self, roots: dict[int, str]) -> None:
        self.roots = roots
        self.trees = {root: process_tree(root) for root in roots}
        self.start = {pid: process_cpu_s(pid) for tree in self.trees.values() for pid in tree}
        self.wall0 = time.perf_counter()

    def finish(self) -> list[dict[str, Any]]:
        wall = time.perf_counter() - self.wall0
        report = []
        for root, tree in self.trees.items():
            members: list[dict[str, Any]] = []
            for pid in tree:
                before, after = self.start.get(pid), process_cpu_s(pid)
                if before is None or after is None:
                    continue
                members.append(
                    {
                        "pid": pid,
                        "command": process_command(pid),
                        "cpu_percent_of_one_core": round(100 * (after - before) / wall, 1),
                    }
                )
            report.append(
                {
                    "pid": root,
                    "name": self.roots[root],
                    "cpu_percent_of_one_core": round(
                        sum(m["cpu_percent_of_one_core"] for m in members), 1
                    ),
                    "processes": members,
                }
            )
        return report


def latency_summary(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {}
    return {
        "p50": round(percentile(ordered, 0.50), 3),
        "p95": round(percentile(ordered, 0.95), 3),
        "p99": round(percentile(ordered, 0.99), 3),
        "p999": round(percentile(ordered, 0.999), 3),
        "max": round(ordered[-1], 3),
        "mean": round(sum(ordered) / len(ordered), 3),
    }


def preflight(url: str, key: str, body: bytes, timeout_s: float) -> tuple[int, str]:
    """One real batch before the run, so a wrong key or a rejecting validator fails fast."""
    request = urllib.request.Request(  # noqa: S310 (the URL is the operator's --url)
        url,
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            return int(response.status), response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def run_load(
    args: argparse.Namespace,
    url: str,
    key: str,
    templates: list[Template],
    run_nonce: str,
    first_process_index: int = 0,
) -> tuple[list[LoadStats], dict[str, Any]]:
    """One load level: `args.connections` connections. Event ids stay unique across levels
    of one run when each level starts its process indexes after the previous one's."""
    context = multiprocessing.get_context("fork")
    start_wall = time.time() + 1.0 + 0.2 * args.processes
    share_rate = args.rate / args.processes if args.rate else 0.0
    children = []
    for index, connections in enumerate(split(args.connections, args.processes)):
        plan = LoadPlan(
            url=url,
            key=key,
            connections=connections,
            batch=args.batch,
            rate_events_per_s=share_rate,
            start_wall=start_wall,
            warmup_s=args.warmup,
            duration_s=args.duration,
            timeout_s=args.timeout,
            use_gzip=args.gzip,
            gzip_level=args.gzip_level,
            id_prefix=id_prefix_for(run_nonce, first_process_index + index),
        )
        receiver, sender = context.Pipe(duplex=False)
        process = context.Process(
            target=load_process_main, args=(plan, templates, sender), name=f"bench-load-{index}"
        )
        process.start()
        sender.close()
        children.append((process, receiver))

    watched = {pid: f"pid {pid} (--watch-pid)" for pid in args.watch_pid or ()}
    watched.update(default_watch_pids())
    time.sleep(max(0.0, start_wall + args.warmup - time.time()))
    cpu0 = machine_cpu_times()
    watch = CpuWatch(watched)
    time.sleep(max(0.0, start_wall + args.warmup + args.duration - time.time()))
    cpu1 = machine_cpu_times()
    machine: dict[str, Any] = {"watched_cpu": watch.finish()}
    if cpu0 and cpu1 and cpu1[1] > cpu0[1]:
        machine["busy_percent_of_all_cores"] = round(
            100.0 * (cpu1[0] - cpu0[0]) / (cpu1[1] - cpu0[1]), 1
        )
    machine["loadavg"] = os.getloadavg()

    stats: list[LoadStats] = []
    for process, receiver in children:
        if not receiver.poll(args.timeout + 30):
            process.kill()
            raise RuntimeError(f"{process.name} did not report")
        outcome, payload = receiver.recv()
        process.join(10)
        if outcome != "ok":
            raise RuntimeError(f"{process.name} failed: {payload}")
        stats.append(payload)
    return stats, machine


def summarize_load(args: argparse.Namespace, stats: list[LoadStats]) -> dict[str, Any]:
    """Rates are over the time the counted requests took to complete: the window, or
    longer when requests started in it finished late (an overloaded open-loop run)."""
    window_s = max([args.duration, *(s.last_done_s for s in stats)])
    status: Counter[int] = Counter()
    for s in stats:
        status.update(s.status)
    requests = sum(s.requests for s in stats)
    accepted = sum(s.accepted for s in stats)
    latencies = [v for s in stats for v in s.latencies_ms]
    accepted_latencies = [v for s in stats for v in s.accepted_latencies_ms]
    timeouts = sum(s.timeouts for s in stats)
    sent = requests + timeouts
    queue_delays = [v for s in stats for v in s.queue_delays_ms]
    width = max(len(s.per_second_events) for s in stats)
    per_second = [
        sum(s.per_second_events[i] for s in stats if i < len(s.per_second_events))
        for i in range(width)
    ]
    per_second = per_second[: max(1, int(window_s))]  # drop the partial last second
    result: dict[str, Any] = {
        "window_s": round(window_s, 3),
        "requests": requests,
        "requests_per_s": round(requests / window_s, 1),
        "accepted_events": accepted,
        "accepted_events_per_s": round(accepted / window_s, 1),
        "rejected_events": sum(s.rejected for s in stats),
        "status": {
            "200": status.get(200, 0),
            "429": status.get(429, 0),
            "503": status.get(503, 0),
            "other": sum(n for code, n in status.items() if code not in (200, 429, 503)),
            "connection_errors": sum(s.connection_errors for s in stats),
            "client_timeouts": timeouts,
        },
        # Of the requests sent in the window (answered or timed out): refused 503 (shed, or
        # the bus down) and given up by the client.
        "share_503": round(status.get(503, 0) / sent, 4) if sent else None,
        "share_timeouts": round(timeouts / sent, 4) if sent else None,
        "other_status_codes": {str(c): n for c, n in status.items() if c not in (200, 429, 503)},
        "latency_ms": latency_summary(latencies),
        "accepted_latency_ms": latency_summary(accepted_latencies),
        "accepted_events_per_second_timeline": per_second,
        "mean_wire_bytes_per_request": round(sum(s.wire_bytes for s in stats) / requests, 1)
        if requests
        else None,
        "samples": [text for s in stats for text in s.samples][:10],
    }
    if args.rate:
        result["target_events_per_s"] = args.rate
        result["offered_fraction"] = round(accepted / window_s / args.rate, 3)
        result["unsent_scheduled_requests"] = sum(s.unsent_scheduled for s in stats)
        result["generator_queue_delay_ms"] = latency_summary(queue_delays)
    return result


def summarize_generator(stats: list[LoadStats]) -> dict[str, Any]:
    processes = []
    for index, s in enumerate(stats):
        processes.append(
            {
                "process": index,
                "cpu_s": round(s.cpu_s, 3),
                "wall_s": round(s.wall_s, 3),
                "cpu_percent_of_one_core": round(100 * s.cpu_s / s.wall_s, 1) if s.wall_s else None,
                "requests": s.requests,
                "cpu_us_per_request": round(1e6 * s.cpu_s / s.requests, 1) if s.requests else None,
            }
        )
    busiest = max((p["cpu_percent_of_one_core"] or 0.0 for p in processes), default=0.0)
    return {
        "processes": processes,
        "max_cpu_percent": busiest,
        "possible_bottleneck": busiest >= 85.0,
        "cpu_source": "time.process_time() over the measured window",
    }


def evaluate_targets(args: argparse.Namespace, results: dict[str, Any]) -> dict[str, Any]:
    load = results["load"]
    targets: dict[str, Any] = {}
    if not args.rate and args.batch == 100:
        targets["events_per_s_at_b100"] = {
            "target": f">= {TARGET_EVENTS_PER_S:,}",
            "value": load["accepted_events_per_s"],
            "met": load["accepted_events_per_s"] >= TARGET_EVENTS_PER_S,
        }
    if args.rate and abs(args.rate - TARGET_P99_RATE) / TARGET_P99_RATE < 0.01:
        p99 = load["latency_ms"].get("p99", float("inf"))
        sustained = load["offered_fraction"] >= 0.98
        targets["p99_ms_at_50k"] = {
            "target": f"< {TARGET_P99_MS:g} ms with the rate sustained",
            "value": p99,
            "rate_sustained_fraction": load["offered_fraction"],
            "met": p99 < TARGET_P99_MS and sustained,
        }
    ratio = results.get("ratio_gateway_to_kafka")
    if ratio is not None and not args.rate:
        targets["fraction_of_kafka_ceiling"] = {
            "target": f">= {TARGET_KAFKA_RATIO:.0%}",
            "value": round(ratio, 3),
            "met": ratio >= TARGET_KAFKA_RATIO,
        }
    return targets


def print_summary(results: dict[str, Any]) -> None:
    load, workload, gen = results["load"], results["workload"], results["generator"]
    lat = load["latency_ms"]
    if "target_events_per_s" in load:
        mode = f"open loop at {load['target_events_per_s']:,.0f} events/s"
    else:
        mode = "closed loop (max rate)"
    st = load["status"]
    lines = [
        "",
        f"== ingest benchmark{' [' + results['label'] + ']' if results['label'] else ''} "
        f"-> {results['target_url']}",
        f"workload   B={workload['batch']} events/request, {workload['connections']} connections, "
        f"{workload['processes']} generator process(es), {mode}, "
        f"{'gzip' if workload['gzip'] else 'identity'}",
        f"           mean event {workload['mean_event_bytes']:.0f} B, body "
        f"{workload['mean_body_bytes']:.0f} B, {workload['users']:,} users, "
        f"{workload['records_per_request']:.1f} Kafka records/request "
        f"({workload['events_per_record']:.2f} events, {workload['mean_record_bytes']:.0f} B each)",
        f"throughput {load['accepted_events_per_s']:,.0f} accepted events/s, "
        f"{load['requests_per_s']:,.0f} requests/s over {load['window_s']:.1f} s",
        f"status     200={st['200']:,} 429={st['429']:,} 503={st['503']:,} other={st['other']:,} "
        f"conn-errors={st['connection_errors']:,} timeouts={st['client_timeouts']:,} "
        f"rejected-events={load['rejected_events']:,}",
    ]
    if lat:
        lines.append(
            f"latency    p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms, "
            f"p99 {lat['p99']:.1f} ms, max {lat['max']:.1f} ms"
        )
    accepted_lat = load["accepted_latency_ms"]
    if accepted_lat:
        lines.append(
            f"200s       p50 {accepted_lat['p50']:.1f} ms, p95 {accepted_lat['p95']:.1f} ms, "
            f"p99 {accepted_lat['p99']:.1f} ms; 503 share {load['share_503']:.2%}"
        )
    if "offered_fraction" in load:
        qd = load.get("generator_queue_delay_ms") or {}
        lines.append(
            f"pacing     {load['offered_fraction']:.1%} of the target rate accepted, "
            f"{load['unsent_scheduled_requests']} scheduled requests never sent, "
            f"generator queue delay p99 {qd.get('p99', float('nan')):.1f} ms"
        )
    timeline = load["accepted_events_per_second_timeline"]
    if timeline:
        lines.append(f"per second min {min(timeline):,} / max {max(timeline):,} accepted events")
    for p in gen["processes"]:
        lines.append(
            f"generator  process {p['process']}: {p['cpu_percent_of_one_core']}% of a core, "
            f"{p['cpu_us_per_request']} us CPU/request"
            + (
                f" (~{1e6 / p['cpu_us_per_request']:,.0f} requests/s/core)"
                if p["cpu_us_per_request"]
                else ""
            )
        )
    if gen["possible_bottleneck"] and not results["self_test"]:
        lines.append(
            "           WARNING: a generator process is near a full core; "
            "add --processes or compare with --self-test"
        )
    if "busy_percent_of_all_cores" in results["machine"]:
        lines.append(
            f"machine    {results['machine']['busy_percent_of_all_cores']}% of "
            f"{results['machine']['cpu_count']} cores busy during the window"
        )
    for watched in results["machine"].get("watched_cpu", []):
        parts = ", ".join(
            f"{m['pid']}: {m['cpu_percent_of_one_core']}%" for m in watched["processes"]
        )
        lines.append(
            f"cpu        {watched['name']}: {watched['cpu_percent_of_one_core']}% of a "
            f"core ({parts})"
        )
    kafka = results.get("kafka_ceiling")
    if kafka:
        if "summary" in kafka:
            s = kafka["summary"]
            lines.append(
                f"kafka      ceiling {s['records_per_s']:,.0f} records/s ({s['mb_per_s']} MB/s) of "
                f"{kafka['record_size']} B = {kafka['events_per_s']:,.0f} events/s; "
                f"latency avg {s['latency_avg_ms']} ms, p99 {s['latency_p99_ms']:.0f} ms"
            )
            runs = [
                f"{r['summary']['records_per_s']:,.0f}" for r in kafka["runs"] if "summary" in r
            ]
            lines.append(
                f"           best of {len(kafka['runs'])} runs (records/s: {', '.join(runs)})"
            )
            ratio = results["ratio_gateway_to_kafka"]
            lines.append(f"ratio      gateway / Kafka ceiling = {ratio:.1%}")
        else:
            lines.append(f"kafka      {kafka.get('skipped') or kafka.get('error')}")
    for name, target in results["targets"].items():
        lines.append(
            f"target     {name}: {target['value']} (want {target['target']}) "
            f"-> {'MET' if target['met'] else 'NOT MET'}"
        )
    for sample in load["samples"][:3]:
        lines.append(f"sample     {sample}")
    lines.append(f"saved      {results['output']}")
    print("\n".join(lines))


def connection_levels(text: str) -> list[int]:
    levels = [int(part) for part in text.split(",") if part.strip()]
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("connections: positive integers, comma-separated")
    return levels


def print_levels(levels: Sequence[dict[str, Any]]) -> None:
    """One line per --connections level: accepted throughput, latency of the accepted
    requests, and what was refused or lost."""
    print(
        f"\n{'connections':>11} {'accepted ev/s':>13} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'p99 ms':>8} {'503 share':>9} {'timeouts':>8} {'conn err':>8}"
    )
    for level in levels:
        load = level["load"]
        lat = load["accepted_latency_ms"] or {"p50": math.nan, "p95": math.nan, "p99": math.nan}
        print(
            f"{level['connections']:>11,} {load['accepted_events_per_s']:>13,.0f} "
            f"{lat['p50']:>8.1f} {lat['p95']:>8.1f} {lat['p99']:>8.1f} "
            f"{(load['share_503'] or 0):>9.2%} {load['status']['client_timeouts']:>8,} "
            f"{load['status']['connection_errors']:>8,}"
        )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Drive a running ingest gateway and compare with Kafka's producer ceiling.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--url",
        default="http://127.0.0.1:8080",
        help="gateway base URL (or full URL of the native endpoint)",
    )
    parser.add_argument(
        "--key", default=os.environ.get("QUIP_BENCH_KEY", "wk_bench"), help="write key (Bearer)"
    )
    parser.add_argument(
        "--project", default="bench", help="the key's project, only used to size Kafka records"
    )
    parser.add_argument(
        "--connections",
        type=connection_levels,
        default=[32],
        help="keep-alive connections; a comma list (32,1000,5000) measures each level in "
        "turn, same workload, and prints a line per level",
    )
    parser.add_argument("--batch", type=int, default=100, help="events per request (B)")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds (T)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="target events/s, paced open loop (0 = as fast as possible)",
    )
    parser.add_argument("--users", type=int, default=10_000, help="distinct user ids")
    parser.add_argument(
        "--users-per-request",
        type=int,
        default=0,
        help="users per request (0 = each event picks any of --users; "
        "1 = one device per batch, like a headset SDK)",
    )
    parser.add_argument("--gzip", action="store_true", help="gzip bodies (per request)")
    parser.add_argument("--gzip-level", type=int, default=1)
    parser.add_argument("--processes", type=int, default=1, help="load generator processes")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request timeout, s")
    parser.add_argument(
        "--watch-pid",
        type=int,
        action="append",
        help="also report the CPU%% of this process and its children (e.g. the "
        "`quip gateway` pid: its uvicorn workers); repeatable. The local "
        "Kafka broker (.services/run/kafka.pid) is watched when present",
    )
    parser.add_argument(
        "--self-test",
        action="store_true",
        help="drive a trivial in-script HTTP server to measure the generator",
    )
    parser.add_argument(
        "--no-kafka-ceiling", action="store_true", help="skip the ProducerPerformance run"
    )
    parser.add_argument(
        "--bootstrap", default=os.environ.get("QUIP_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    )
    parser.add_argument(
        "--kafka-records", type=int, default=1_000_000, help="records per ProducerPerformance run"
    )
    parser.add_argument(
        "--kafka-runs",
        type=int,
        default=2,
        help="ProducerPerformance runs; the best is the ceiling",
    )
    parser.add_argument(
        "--kafka-transaction-ms",
        type=int,
        default=0,
        help="run the ceiling transactionally (commit every N ms), like the "
        "gateway's group commits; 0 = plain idempotent producer",
    )
    parser.add_argument("--kafka-timeout", type=float, default=300.0)
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="JSON path (default benchmarks/results/ingest-<timestamp>.json)",
    )
    parser.add_argument("--label", default="", help="free text stored with the results")
    args = parser.parse_args(argv)
    if not 1 <= args.batch <= 1000:
        parser.error("--batch must be 1..1000 (SPEC §2)")
    if args.processes < 1 or min(args.connections) < args.processes:
        parser.error("need --processes >= 1 and --connections >= --processes")
    if args.processes * len(args.connections) > 99:  # id_prefix_for's two digits
        parser.error("--processes x --connections levels must be <= 99")
    if args.users < 1:
        parser.error("--users must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    run_nonce = uuid.uuid4().hex[:8]
    sep_len = len(separator(int(time.time() * 1000), id_prefix_for(run_nonce, 0), 0))
    built0 = time.perf_counter()
    templates = build_templates(
        seed=int(run_nonce, 16),
        batch=args.batch,
        users=args.users,
        users_per_request=args.users_per_request,
        count=template_count(args.batch),
        sep_len=sep_len,
    )
    build_s = time.perf_counter() - built0
    estimate = estimate_records(templates, args.project)
    preflight_prefix = f"{run_nonce}pf-".encode()
    sample_body = separator(int(time.time() * 1000), preflight_prefix, 0).join(templates[0].parts)
    parsed = orjson.loads(sample_body)
    assert len(parsed["events"]) == args.batch, "template does not round-trip"
    event_sizes = [n for t in templates for n in t.event_bytes]

    sink: tuple[multiprocessing.process.BaseProcess, Connection] | None = None
    url = args.url.rstrip("/")
    if not urlsplit(url).path:
        url += "/v1/events"
    key = args.key
    if args.self_test:
        context = multiprocessing.get_context("fork")
        control, child_end = context.Pipe()
        process = context.Process(target=sink_main, args=(args.batch, child_end), name="bench-sink")
        process.start()
        port = control.recv()
        sink = (process, control)
        url, key = f"http://127.0.0.1:{port}/v1/events", "self-test"

    status, text = preflight(url, key, sample_body, args.timeout)
    if status != 200:
        print(f"preflight POST {url} answered {status}: {text[:500]}", file=sys.stderr)
        if sink:
            sink[0].kill()
        return 2
    answer = json.loads(text)
    if answer.get("rejected"):
        print(
            f"warning: the gateway rejected {answer['rejected']} of {args.batch} preflight "
            f"events: {text[:600]}",
            file=sys.stderr,
        )
    levels: list[dict[str, Any]] = []
    for number, connections in enumerate(args.connections):
        level_args = argparse.Namespace(**{**vars(args), "connections": connections})
        print(
            f"load: {connections} connections x B={args.batch} for {args.warmup:g}+"
            f"{args.duration:g} s against {url} ...",
            flush=True,
        )
        stats, machine = run_load(
            level_args, url, key, templates, run_nonce, number * args.processes
        )
        levels.append(
            {
                "connections": connections,
                "load": summarize_load(level_args, stats),
                "generator": summarize_generator(stats),
                "machine": machine,
            }
        )
    sink_cpu = None
    if sink is not None:
        sink[1].send("stop")
        sink_cpu = sink[1].recv()
        sink[0].join(10)

    results: dict[str, Any] = {
        "benchmark": "ingest",
        "label": args.label,
        "started_at": started.isoformat(),
        "target_url": url,
        "self_test": args.self_test,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "git_commit": git_commit(),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "implementation": platform.python_implementation(),
            **levels[-1]["machine"],
        },
        "workload": {
            "batch": args.batch,
            "connections": args.connections[0] if len(args.connections) == 1 else args.connections,
            "processes": args.processes,
            "users": args.users,
            "users_per_request": args.users_per_request,
            "gzip": args.gzip,
            "templates": len(templates),
            "template_build_s": round(build_s, 3),
            "mean_event_bytes": round(sum(event_sizes) / len(event_sizes), 1),
            "mean_body_bytes": round(len(sample_body), 1),
            "events_per_record": round(estimate.events_per_record, 3),
            "records_per_request": round(estimate.records_per_request, 2),
            "mean_record_bytes": round(estimate.mean_record_bytes, 1),
            "record_size_method": estimate.method,
        },
        "load": levels[-1]["load"],
        "generator": levels[-1]["generator"],
    }
    if len(levels) > 1:
        # Per level; `load`, `generator` and `machine` above are the last level's.
        results["levels"] = levels
    if sink_cpu is not None:
        results["self_test_server_cpu_percent_of_one_core"] = round(
            100 * sink_cpu / (args.warmup + args.duration), 1
        )
    if not args.no_kafka_ceiling and not args.self_test:
        kafka = measure_kafka_ceiling(args, estimate, run_nonce)
        results["kafka_ceiling"] = kafka
        if kafka.get("events_per_s"):
            results["ratio_gateway_to_kafka"] = (
                results["load"]["accepted_events_per_s"] / kafka["events_per_s"]
            )
    results["targets"] = (
        {} if args.self_test or len(levels) > 1 else evaluate_targets(args, results)
    )

    output: Path = args.output or (
        result_path("ingest", started)
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    results["output"] = str(output)
    output.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    print_summary(results)
    if len(levels) > 1:
        print_levels(levels)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
