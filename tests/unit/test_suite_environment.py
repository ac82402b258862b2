"""The test suite runs the same whatever the caller's shell exports: no QUIP_* variable
reaches a test or a process it starts (tests/conftest.py), and no test waits unbounded
(pytest-timeout's default deadline)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.settings import Mode, Settings

REPO = Path(__file__).resolve().parents[2]


def test_no_quip_variable_reaches_a_test() -> None:
    assert [name for name in os.environ if name.startswith("QUIP_")] == []
    settings = Settings()
    assert settings.mode is Mode.EMBEDDED
    assert settings.max_event_age_days == 30


def test_a_shell_exporting_quip_variables_runs_tests_as_a_clean_one() -> None:
    """With QUIP_MAX_EVENT_AGE_DAYS=60 exported, `quip simulate --days 31` was no longer
    refused and test_cli_refusals sent traffic to a closed port for its 300 s of retries."""
    shell = {
        **os.environ,
        "QUIP_MAX_EVENT_AGE_DAYS": "60",
        "QUIP_MODE": "cluster",
        "QUIP_WRITE_KEYS": "p:k",
    }
    result = subprocess.run(
        [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            f"{Path(__file__).relative_to(REPO)}::test_no_quip_variable_reaches_a_test",
            "tests/unit/test_simulate.py::test_cli_refusals",
        ],
        cwd=REPO,
        env=shell,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "6 passed" in result.stdout


def test_every_test_has_a_deadline(pytestconfig: pytest.Config) -> None:
    assert float(pytestconfig.getini("timeout")) > 0
