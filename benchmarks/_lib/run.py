"""Where a benchmark run is: the repository, its commit, a free port, the results file."""

from __future__ import annotations

import socket
import subprocess
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO / "benchmarks" / "results"


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def result_path(benchmark: str, started: datetime) -> Path:
    """benchmarks/results/<benchmark>-<UTC start, compact ISO>.json"""
    return RESULTS_DIR / f"{benchmark}-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
