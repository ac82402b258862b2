from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import clean_env
from tests.gateway_process import free_port

SPEC_COMMANDS = ["up", "gateway", "worker", "api", "migrate", "topics", "simulate"]


def quip(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quip", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=clean_env(),
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
    env = clean_env({"QUIP_CLICKHOUSE_URL": "clickhouse://127.0.0.1:1/quip"})
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


def quip_with(
    env: dict[str, str], *args: str, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quip", *args],
        capture_output=True,
        text=True,
        env=clean_env(env),
        check=False,
        timeout=timeout_s,
    )


@pytest.mark.parametrize(
    "variable",
    [
        pytest.param(("QUIP_CLICKHOUSE_URL", "clickhouse://127.0.0.1:1/quip"), id="clickhouse"),
        pytest.param(("QUIP_KAFKA_BOOTSTRAP", "127.0.0.1:1"), id="kafka"),
    ],
)
def test_embedded_api_given_cluster_variables_is_refused(
    variable: tuple[str, str], tmp_path: Path
) -> None:
    name, value = variable
    result = quip_with(
        {name: value, "QUIP_DATA_DIR": str(tmp_path)}, "api", "--port", str(free_port())
    )
    assert result.returncode == 2, result.stderr
    assert f"{name} is set but QUIP_MODE is embedded" in result.stderr
    assert "set QUIP_MODE=cluster" in result.stderr
    assert not (tmp_path / "chdb").exists()


@pytest.mark.chdb
def test_embedded_migrate_given_a_server_url_needs_an_engine(tmp_path: Path) -> None:
    env = {"QUIP_CLICKHOUSE_URL": "clickhouse://127.0.0.1:1/quip", "QUIP_DATA_DIR": str(tmp_path)}
    refused = quip_with(env, "migrate")
    assert refused.returncode == 2, refused.stderr
    assert "pass --engine server" in refused.stderr
    assert not (tmp_path / "chdb").exists()

    chosen = quip_with(env, "migrate", "--engine", "chdb", timeout_s=120)
    assert chosen.returncode == 0, chosen.stderr
    assert f"quip migrate: mode embedded · ClickHouse chDB at {tmp_path.resolve()}/chdb" in (
        chosen.stderr.splitlines()
    )
