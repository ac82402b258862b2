"""A `python -m quip <command>` child process for a benchmark: free port, own environment
and log, ready when `/ready` answers 200; diagnostic launchers for GC and tracemalloc."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from benchmarks._lib.profile import short_path
from benchmarks._lib.run import REPO, free_port

# Diagnostic launchers (--worker-gc): the same `quip` entry point with CPython's cyclic
# garbage collector changed first, to measure what GC costs the worker.
GC_LAUNCHERS = {
    "off": "import gc; gc.disable()",
    "relaxed": "import gc; gc.set_threshold(100_000, 50, 1_000)",
}


# Diagnostic (--worker-tracemalloc N): trace allocations with N frames; a thread writes a
# summary to TRACE_OUT when TRACE_REQUEST appears. Each allocation is charged to the most
# recent frame in the project's own code (streams/, schemas/, sinks/), so memory that a
# library allocates on behalf of a processor is counted there; else to its own frame.
TRACEMALLOC_LAUNCHER = r"""
import os, threading, time, tracemalloc
tracemalloc.start({frames})
def _dump(request, output, ours):
    while True:
        time.sleep(0.5)
        if not os.path.exists(request):
            continue
        snapshot = tracemalloc.take_snapshot()
        sizes, counts = {{}}, {{}}
        for stat in snapshot.statistics("traceback"):
            frames = list(reversed(stat.traceback))
            chosen = next((f for f in frames if any(m in f.filename for m in ours)), frames[0])
            key = chosen.filename + ":" + str(chosen.lineno)
            sizes[key] = sizes.get(key, 0) + stat.size
            counts[key] = counts.get(key, 0) + stat.count
        lines = ["total\t%d\t%d" % (sum(sizes.values()), sum(counts.values()))]
        for key in sorted(sizes, key=sizes.get, reverse=True)[:40]:
            lines.append("%s\t%d\t%d" % (key, sizes[key], counts[key]))
        with open(output + ".tmp", "w") as handle:
            handle.write("\n".join(lines))
        os.replace(output + ".tmp", output)
        os.remove(request)
threading.Thread(target=_dump, args=({request!r}, {output!r}, {ours!r}), daemon=True).start()
"""


class QuipProcess:
    """`python -m quip <command> --port <free>` with its own environment, working
    directory and log file."""

    def __init__(
        self,
        command: str,
        env: dict[str, str],
        workdir: Path,
        extra_args: Sequence[str] = (),
        gc_mode: str = "default",
        tracemalloc_frames: int = 0,
        name: str | None = None,
    ) -> None:
        self.command = command
        self.name = name or command  # its log file and its key in the results
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.log = workdir / f"{self.name}.log"
        pythonpath = os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))
        self.env = {**os.environ, "PYTHONPATH": pythonpath, **env}
        self.trace_request = workdir / f"{self.name}.tracemalloc.request"
        self.trace_output = workdir / f"{self.name}.tracemalloc.txt"
        entry = ["-m", "quip"]
        if gc_mode in GC_LAUNCHERS or tracemalloc_frames:
            prelude = GC_LAUNCHERS.get(gc_mode, "")
            if tracemalloc_frames:
                prelude += TRACEMALLOC_LAUNCHER.format(
                    frames=tracemalloc_frames,
                    request=str(self.trace_request),
                    output=str(self.trace_output),
                    ours=tuple(f"{REPO}/{d}/" for d in ("streams", "schemas", "sinks")),
                )
            entry = [
                "-c",
                f"{prelude}\nimport runpy, sys\nsys.argv[0] = 'quip'\n"
                "runpy.run_module('quip', run_name='__main__', alter_sys=True)",
            ]
        self.args = [sys.executable, *entry, command, "--port", str(self.port), *extra_args]
        self.process: subprocess.Popen[bytes] | None = None
        self.spawned_at = 0.0
        self.ready_at = 0.0

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, ready_timeout_s: float = 90) -> None:
        self.spawned_at = time.monotonic()
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.args, env=self.env, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = self.spawned_at + ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.command} exited {self.process.returncode}:\n{self.tail()}"
                )
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/ready", timeout=1).status_code == 200:
                    self.ready_at = time.monotonic()
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.command} not ready in {ready_timeout_s:g} s:\n{self.tail()}")

    def allocation_summary(self, timeout_s: float = 300) -> dict[str, Any] | None:
        """Ask a --worker-tracemalloc process for its allocation summary."""
        self.trace_output.unlink(missing_ok=True)
        self.trace_request.touch()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self.trace_output.exists():
            time.sleep(0.5)
        if not self.trace_output.exists():
            return None
        rows = [line.split("\t") for line in self.trace_output.read_text().splitlines()]
        total = int(rows[0][1])
        return {
            "traced_mb": round(total / 2**20, 1),
            "top": [
                {
                    "where": short_path(where),
                    "mb": round(int(size) / 2**20, 1),
                    "share_percent": round(100 * int(size) / max(total, 1), 1),
                    "blocks": int(count),
                }
                for where, size, count in rows[1:]
            ],
        }

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode
