"""Embedded mode benchmark: events/s that one `quip up` process ingests *and* processes end
to end (gateway 200 → bus → processors → rows in chDB), and its memory.

What it starts itself, and stops before exiting:
  - `quip up` (a subprocess) with a fresh data directory (a temp dir unless --data-dir),
    write/read keys of its own, rate limiting off, on a free port;
  - one load-generator process (fork of this script) that posts --events events as native
    batches of --batch events over --connections keep-alive connections, closed loop
    (each connection sends its next request when the previous one is answered). Bodies
    come from benchmarks/ingest.py's templates (mixed event types, --users users,
    --users-per-request distinct users per request), with unique event ids and ts = now;
  - with --profile S: py-spy (`pip install py-spy`) recording the `quip up` process for S
    seconds once the load has run for --profile-at seconds.

What it measures, sampling every --interval seconds: accepted events (the load generator),
processed events (`analytics_events_processed_total{agent="events"}` from /metrics: the
events pipeline counts a batch once its rows are in chDB and its position is committed), the
server's RSS (VmRSS of the process tree) and CPU time, the bus log on disk. Figures:
  - ingest events/s = accepted / load time;
  - end-to-end events/s = accepted / (time from the first request until every accepted
    event is processed): the sustainable rate of the whole process, the target figure;
  - processing events/s over the load window (processed / load time) and the backlog
    left when the load stops;
  - RSS: peak during the run, and after (--settle seconds after the last event was
    processed); CPU seconds of the server per million events;
  - a final check that the API counts exactly the accepted events (GET /v1/metrics/events).
The machine is shared: os.getloadavg() before and after and the server's CPU time are
saved with the wall-clock figures.

Usage (from the repo root):
  .venv/bin/python -m benchmarks.embedded --events 1000000
  .venv/bin/python -m benchmarks.embedded --events 10000000 --profile 30
Results: benchmarks/results/embedded-<UTC timestamp>.json (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families

from benchmarks._lib.http import HttpConnection, open_connection
from benchmarks._lib.procfs import tree_cpu_s, tree_rss_mb
from benchmarks._lib.profile import parse_profile, start_profile
from benchmarks._lib.run import REPO, RESULTS_DIR, free_port, git_commit
from quip.simulate import Batch, Historical, historical_items

TARGET_EVENTS_PER_S = 30_000
TARGET_RSS_MB = 1024
PROJECT, WRITE_KEY, READ_KEY = "bench", "wk_bench_embedded", "rk_bench_embedded"


# --------------------------------------------------------------------------- traffic


def generate_bodies(args: argparse.Namespace, path: Path) -> dict[str, Any]:
    """The simulator's historical traffic (quip/simulate/, --users over --days ending
    now), cut at --events, as request bodies in send order in `path` (`<I I` body length,
    events, then the body). Consecutive requests are merged up to --per-request events
    (context copied into each event), as a backend forwarding headsets' batches would;
    --per-request 0 keeps the simulator's own requests (one user's session each)."""
    now = int(time.time() * 1000)
    plan = Historical(seed=args.seed, users=args.users, days=args.days, end_ms=now, now_ms=now)
    started, events, requests = time.monotonic(), 0, 0
    pending: list[dict[str, Any]] = []
    with path.open("wb") as out:

        def emit(batch_events: list[dict[str, Any]], context: dict[str, str] | None) -> None:
            nonlocal requests
            body = orjson.dumps(
                {"events": batch_events, **({"context": context} if context else {})}
            )
            out.write(_FRAME.pack(len(body), len(batch_events)) + body)
            requests += 1

        for item in historical_items(plan):
            if not isinstance(item, Batch):
                continue  # service messages go to Kafka, not to the gateway
            take = item.events[: args.events - events]
            events += len(take)
            if args.per_request == 0:
                emit(take, item.context)
            else:
                pending += [{**event, **item.context} for event in take]
                if len(pending) >= args.per_request:
                    emit(pending[: args.per_request], None)
                    pending = pending[args.per_request :]
            if events >= args.events:
                break
        while pending:
            emit(pending[: args.per_request], None)
            pending = pending[args.per_request :]
    return {
        "events": events,
        "requests": requests,
        "events_per_request": round(events / max(requests, 1), 1),
        "generate_s": round(time.monotonic() - started, 1),
        "body_mb": round(path.stat().st_size / 1e6, 1),
    }


_FRAME = struct.Struct("<II")


def read_bodies(path: Path) -> Iterator[tuple[bytes, int]]:
    with path.open("rb") as source:
        while header := source.read(_FRAME.size):
            length, events = _FRAME.unpack(header)
            yield source.read(length), events


def load_main(
    port: int,
    bodies: Path,
    connections: int,
    accepted: Synchronized[int],
    results: Connection,
) -> None:
    """Entry point of the forked load generator: every body in `bodies`, closed loop."""

    async def run() -> dict[str, Any]:
        head = (
            f"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {WRITE_KEY}\r\nContent-Type: application/json\r\n"
        ).encode()
        source = read_bodies(bodies)
        stats: dict[str, Any] = {"requests": 0, "status": {}, "rejected": 0, "errors": []}

        async def worker() -> None:
            conn: HttpConnection | None = None
            for body, _ in source:
                data = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
                while True:  # retried until answered 200 (same event ids: deduplicated)
                    try:
                        if conn is None or conn.closed or not conn.reusable:
                            conn = await open_connection("127.0.0.1", port)
                        status, answer = await asyncio.wait_for(conn.request(data), 60)
                    except (OSError, TimeoutError) as exc:
                        if len(stats["errors"]) < 5:
                            stats["errors"].append(repr(exc))
                        conn = None
                        await asyncio.sleep(0.2)
                        continue
                    stats["requests"] += 1
                    stats["status"][status] = stats["status"].get(status, 0) + 1
                    if status == 200:
                        reply = orjson.loads(answer)
                        with accepted.get_lock():
                            accepted.value += int(reply["accepted"])
                        stats["rejected"] += int(reply["rejected"])
                        break
                    if len(stats["errors"]) < 5:
                        stats["errors"].append(f"{status}: {answer[:200]!r}")
                    await asyncio.sleep(0.2)
            if conn is not None:
                conn.close()

        cpu0 = time.process_time()
        await asyncio.gather(*(worker() for _ in range(connections)))
        stats["cpu_s"] = round(time.process_time() - cpu0, 2)
        return stats

    results.send(asyncio.run(run()))
    results.close()


# --------------------------------------------------------------------------- server


def start_up(data_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUIP_")}
    env |= {
        "QUIP_WRITE_KEYS": f"{PROJECT}:{WRITE_KEY}",
        "QUIP_READ_KEYS": f"{PROJECT}:{READ_KEY}",
        "QUIP_RATE_LIMIT_IP_PER_MIN": "0",
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "quip", "up", "--port", str(port), "--data-dir", str(data_dir)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"quip up exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as reply:
                if reply.status == 200:
                    return process
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit("quip up did not become ready in 120 s")


def processed(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (
                sample.name == "analytics_events_processed_total"
                and sample.labels.get("agent") == "events"
            ):
                return float(sample.value)
    return 0.0


def api_event_count(port: int, days: int) -> int:
    day_to = datetime.now(UTC).date()
    day_from = day_to - timedelta(days=days)
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/metrics/events?project={PROJECT}"
        f"&from={day_from}&to={day_to}&interval=day",
        headers={"Authorization": f"Bearer {READ_KEY}"},
    )
    with urllib.request.urlopen(request, timeout=300) as reply:  # noqa: S310 (http URL above)
        return sum(int(row["count"]) for row in orjson.loads(reply.read()))


def disk_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


# --------------------------------------------------------------------------- run


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="quip-bench-embedded-"))
    data_dir = args.data_dir or workdir / "data"
    port = free_port()
    print(f"generating {args.events:,} events of simulated traffic ...", flush=True)
    traffic = generate_bodies(args, workdir / "bodies.bin")
    print(f"  {traffic}", flush=True)
    loadavg_before = os.getloadavg()
    server = start_up(data_dir, port, workdir / "up.log")
    samples: list[dict[str, float]] = []
    profile: dict[str, Any] | None = None
    try:
        accepted = multiprocessing.Value("q", 0)
        receive, send = multiprocessing.Pipe(duplex=False)
        loader = multiprocessing.Process(
            target=load_main,
            args=(port, workdir / "bodies.bin", args.connections, accepted, send),
        )
        cpu0 = tree_cpu_s(server.pid)
        t0 = time.monotonic()
        loader.start()
        profiler: subprocess.Popen[bytes] | None = None
        load_end: float | None = None
        done_at: float | None = None
        while True:
            time.sleep(args.interval)
            now = time.monotonic() - t0
            sample = {
                "t": round(now, 2),
                "accepted": accepted.value,
                "processed": processed(port),
                "rss_mb": round(tree_rss_mb(server.pid), 1),
                "cpu_s": round(tree_cpu_s(server.pid) - cpu0, 2),
                "bus_mb": round(disk_mb(data_dir / "bus"), 1),
            }
            samples.append(sample)
            print(
                f"{now:7.1f}s accepted {sample['accepted']:>11,} processed "
                f"{int(sample['processed']):>11,} rss {sample['rss_mb']:7.1f} MB "
                f"cpu {sample['cpu_s']:7.1f}s bus {sample['bus_mb']:7.1f} MB",
                flush=True,
            )
            if args.profile and profiler is None and now >= args.profile_at:
                profiler = start_profile(
                    args.py_spy, server.pid, args.profile, 97, workdir / "profile.txt", False
                )
            if load_end is None and not loader.is_alive():
                load_end = now
            if load_end is not None and sample["processed"] >= sample["accepted"]:
                done_at = now
                break
            if load_end is not None and now - load_end > args.drain_timeout:
                break
        load_stats = receive.recv() if receive.poll(5) else {}
        loader.join(10)
        settle_until = time.monotonic() + args.settle
        rss_after = []
        while time.monotonic() < settle_until:
            rss_after.append(tree_rss_mb(server.pid))
            time.sleep(1)
        if profiler is not None:
            _, err = profiler.communicate(timeout=args.profile + 60)
            raw = (
                (workdir / "profile.txt").read_text() if (workdir / "profile.txt").exists() else ""
            )
            profile = parse_profile(raw, top=25) if raw else {"error": err.decode()[-500:]}
        total_accepted = int(accepted.value)
        counted = api_event_count(port, args.days)
        server_cpu = tree_cpu_s(server.pid) - cpu0
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
    loadavg_after = os.getloadavg()
    assert load_end is not None
    load_window = [s for s in samples if s["t"] <= load_end]
    results: dict[str, Any] = {
        "benchmark": "embedded",
        "utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git_commit": git_commit(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_before": loadavg_before,
            "loadavg_after": loadavg_after,
        },
        "traffic": traffic,
        "events_accepted": total_accepted,
        "events_counted_by_api": counted,
        "exactly_once": counted == total_accepted,
        "load_s": round(load_end, 2),
        "all_processed_s": round(done_at, 2) if done_at is not None else None,
        "ingest_events_per_s": round(total_accepted / load_end),
        "end_to_end_events_per_s": round(total_accepted / done_at) if done_at else None,
        "processed_during_load_events_per_s": round(
            (load_window[-1]["processed"] if load_window else 0) / load_end
        ),
        "backlog_at_load_end": int(
            (load_window[-1]["accepted"] - load_window[-1]["processed"]) if load_window else 0
        ),
        "rss_peak_mb": max(s["rss_mb"] for s in samples),
        "rss_after_mb": round(max(rss_after), 1) if rss_after else None,
        "server_cpu_s": round(server_cpu, 1),
        "server_cpu_s_per_million_events": round(server_cpu / max(total_accepted, 1) * 1e6, 1),
        "load_generator": load_stats,
        "samples": samples,
        "profile": profile,
        "data_dir_mb_at_end": round(disk_mb(data_dir), 1),
    }
    results["targets"] = {
        "end_to_end_events_per_s": {
            "target": TARGET_EVENTS_PER_S,
            "met": bool(done_at) and results["end_to_end_events_per_s"] >= TARGET_EVENTS_PER_S,
        },
        "rss_after_mb": {
            "target": TARGET_RSS_MB,
            "met": results["rss_after_mb"] is not None
            and results["rss_after_mb"] < TARGET_RSS_MB
            and results["rss_peak_mb"] < TARGET_RSS_MB,
        },
    }
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        results["workdir"] = str(workdir)
    return results


def print_summary(results: dict[str, Any]) -> None:
    print()
    print(f"embedded benchmark ({results['events_accepted']:,} events accepted)")
    rows = [
        ("ingest (gateway 200)", f"{results['ingest_events_per_s']:,} events/s "
                                 f"over {results['load_s']} s"),
        ("processed during load", f"{results['processed_during_load_events_per_s']:,} events/s, "
                                  f"backlog {results['backlog_at_load_end']:,} at load end"),
        ("end to end (all queryable)", f"{results['end_to_end_events_per_s'] or 'not reached':,} "
                                       f"events/s ({results['all_processed_s']} s)"),
        ("RSS", f"peak {results['rss_peak_mb']} MB, after {results['rss_after_mb']} MB"),
        ("server CPU", f"{results['server_cpu_s']} s "
                       f"({results['server_cpu_s_per_million_events']} s per million events)"),
        ("API count", f"{results['events_counted_by_api']:,} "
                      f"({'exact' if results['exactly_once'] else 'MISMATCH'})"),
        ("loadavg", f"{results['machine']['loadavg_before']} -> "
                    f"{results['machine']['loadavg_after']}"),
    ]  # fmt: skip
    for name, value in rows:
        print(f"  {name:28} {value}")
    for name, target in results["targets"].items():
        print(f"  target {name}: {target['target']:,} -> {'met' if target['met'] else 'NOT met'}")
    if results.get("profile") and results["profile"].get("self_by_package"):
        print("  profile (self time by package):")
        for row in results["profile"]["self_by_package"][:10]:
            print(f"    {row['share_percent']:5.1f}%  {row['frame']}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=25_000, help="simulated users")
    parser.add_argument("--days", type=int, default=28, help="simulated days (ending now)")
    parser.add_argument(
        "--per-request",
        type=int,
        default=100,
        help="merge the simulator's requests up to this many events (0: as simulated)",
    )
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--interval", type=float, default=2.0, help="sampling period, s")
    parser.add_argument("--settle", type=float, default=10.0, help="RSS sampling after, s")
    parser.add_argument("--drain-timeout", type=float, default=600.0)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, data)")
    parser.add_argument("--profile", type=float, default=0, help="py-spy seconds (0: off)")
    parser.add_argument("--profile-at", type=float, default=10.0)
    parser.add_argument("--py-spy", type=Path, default=Path(sys.executable).parent / "py-spy")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results = run(args)
    print_summary(results)
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / f"embedded-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"  saved {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
