"""CPU time and memory of processes and of the machine, from Linux /proc; the pids of the
local services that deploy/local/services.sh started."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from benchmarks._lib.run import REPO


def machine_cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies over all CPUs from /proc/stat, or None off Linux."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except OSError:
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (Linux /proc; uvicorn workers are children of `quip`)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def process_cpu_s(pid: int) -> float | None:
    """User+system CPU seconds of one process so far (Linux /proc), None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_command(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()[:120]


def status_kb(pid: int, field_name: str) -> int | None:
    """A `kB` field of /proc/<pid>/status (VmRSS, VmHWM), None if the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field_name}:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def tree_rss_mb(pid: int) -> float:
    return sum(status_kb(p, "VmRSS") or 0 for p in process_tree(pid)) / 1024


def tree_cpu_s(pid: int) -> float:
    return sum(process_cpu_s(p) or 0.0 for p in process_tree(pid))


def machine_busy_s() -> float:
    """CPU seconds all cores spent busy (not idle/iowait) since boot, from /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def service_pids() -> dict[str, int]:
    """Kafka, ClickHouse and InfluxDB started by deploy/local/services.sh (pid files)."""
    run = Path(os.environ.get("QUIP_SERVICES_DIR", REPO / ".services")) / "run"
    found: dict[str, int] = {}
    for name in ("kafka", "clickhouse", "influxdb"):
        with contextlib.suppress(OSError, ValueError):
            pid = int((run / f"{name}.pid").read_text().strip())
            if process_cpu_s(pid) is not None:
                found[name] = pid
    return found
