"""py-spy profiles of a running process and their reading: self and inclusive shares by
frame, package and thread."""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._lib.run import REPO


def start_profile(
    py_spy: Path, pid: int, seconds: float, rate: int, output: Path, gil_only: bool
) -> subprocess.Popen[bytes]:
    """py-spy record; with `gil_only`, only the thread holding the GIL is sampled: where
    the worker's Python CPU goes (idle threads parked in epoll/queues are left out)."""
    return subprocess.Popen(
        [
            str(py_spy),
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            str(rate),
            "--format",
            "raw",
            "--function",
            "--full-filenames",
            *(["--gil"] if gil_only else []),
            "--output",
            str(output),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def short_path(where: str) -> str:
    """`/long/path/site-packages/pkg/mod.py:12` -> `pkg/mod.py:12`; the project's files
    relative to the repo; the standard library as `stdlib/...`."""
    if "site-packages/" in where:
        return where.split("site-packages/", 1)[1]
    if f"{REPO}/" in where:
        return where.split(f"{REPO}/", 1)[1]
    if "/lib/python3." in where:
        return "stdlib/" + where.split("/lib/python3.", 1)[1].split("/", 1)[-1]
    return where


def _short_frame(frame: str) -> str:
    """`func (/long/path/pkg/mod.py:12)` -> `func (pkg/mod.py:12)`."""
    name, _, where = frame.partition(" (")
    return f"{name} ({short_path(where)}" if where else name


PACKAGES = (
    ("streams/processors/", "processors (streams/processors)"),
    ("streams/", "streams (pipeline, app)"),
    ("schemas/", "schemas (record decode)"),
    ("sinks/", "sinks (our code)"),
    ("clickhouse_driver/", "clickhouse_driver"),
    ("faust/", "faust"),
    ("mode/", "mode"),
    ("aiokafka/", "aiokafka"),
    ("kafka/", "kafka (aiokafka's vendored protocol)"),
    ("influxdb_client/", "influxdb_client"),
    ("urllib3/", "urllib3 (influxdb_client)"),
    ("prometheus_client/", "prometheus_client"),
    ("msgspec", "msgspec"),
    ("orjson", "orjson"),
    ("stdlib/asyncio/", "asyncio (event loop)"),
    ("stdlib/selectors.py", "asyncio (event loop)"),
    ("stdlib/", "stdlib (other)"),
)


def package_of(frame: str) -> str:
    for marker, name in PACKAGES:
        if marker in frame:
            return name
    return "other"


def thread_of(frames: Sequence[str]) -> str:
    text = ";".join(frames)
    if "concurrent/futures/thread.py" in text:
        return "to_thread workers (sink writes)"
    if "mode/threads.py" in text:
        return "faust consumer thread (aiokafka fetch)"
    if "Thread._bootstrap" in text:
        return "other threads"
    return "main event loop (agents)"


def parse_profile(raw: str, top: int = 30) -> dict[str, Any]:
    """Collapsed stacks (`f1;f2;...;leaf count`) -> self/inclusive shares of the samples
    (py-spy skips idle threads, so shares are of the time some thread was busy)."""
    self_counts: Counter[str] = Counter()
    total_counts: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short_frame(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += count
        self_counts[frames[-1]] += count
        packages[package_of(frames[-1])] += count
        threads[thread_of(frames)] += count
        for frame in set(frames):
            total_counts[frame] += count

    def share(counter: Counter[str], limit: int = top) -> list[dict[str, Any]]:
        if not total:
            return []
        return [
            {"frame": frame, "share_percent": round(100 * n / total, 1)}
            for frame, n in counter.most_common(limit)
        ]

    return {
        "samples": total,
        "self": share(self_counts),
        "inclusive": share(total_counts, 60),
        "self_by_package": share(packages),
        "by_thread": share(threads),
    }
