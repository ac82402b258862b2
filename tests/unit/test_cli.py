from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SPEC_COMMANDS = ["up", "gateway", "worker", "api", "migrate", "topics", "simulate"]


def quip(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quip", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        check=False,
        timeout=120,
    )


def test_help_lists_spec_commands() -> None:
    result = quip("--help")
    assert result.returncode == 0
    listed = {
        line.split()[0] for line in result.stdout.split("Commands:")[1].splitlines() if line.strip()
    }
    assert listed == set(SPEC_COMMANDS)
    assert "create" in quip("topics", "--help").stdout


@pytest.mark.chdb
def test_migrate_embedded_twice(tmp_path: Path) -> None:
    first = quip("migrate", "--engine", "chdb", "--data-dir", str(tmp_path / "data"))
    assert first.returncode == 0, first.stderr
    assert "0001_events" in first.stdout
    second = quip("migrate", "--engine", "chdb", "--data-dir", str(tmp_path / "data"))
    assert second.returncode == 0
    assert "nothing pending" in second.stdout


def test_unreachable_server_is_a_clear_error() -> None:
    import os

    env = {**os.environ, "QUIP_CLICKHOUSE_URL": "clickhouse://127.0.0.1:1/quip"}
    result = subprocess.run(
        [sys.executable, "-m", "quip", "migrate", "--engine", "server"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )
    assert result.returncode == 1
    assert "migration failed on server" in result.stderr
    assert "Traceback" not in result.stderr
