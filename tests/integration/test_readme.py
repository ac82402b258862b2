"""The README's first command, as a newcomer runs it: a fresh clone, a fresh venv, the
install, then `quip up` — and the dashboard answers. (The second command is `.ci/run`,
which is what runs this test.)"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.gateway_process import free_port

pytestmark = pytest.mark.chdb

REPO = Path(__file__).resolve().parents[2]


def first_command() -> list[str]:
    readme = (REPO / "README.md").read_text()
    block = re.search(r"## The two commands.*?```sh\n(.+?)\n```", readme, re.S)
    assert block, "README lost its two commands"
    return [part.strip() for part in block.group(1).split("&&")]


# A fresh venv installs every dependency (chDB, pyarrow, faust...) from the registry.
@pytest.mark.timeout(1800)
def test_readme_first_command_serves_the_dashboard(tmp_path: Path) -> None:
    *install, run = first_command()
    assert run.endswith("quip up")
    checkout = tmp_path / "quip"
    subprocess.run(["git", "clone", "-q", str(REPO), str(checkout)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QUIP_", "VIRTUAL_ENV"))}
    for step in install:
        subprocess.run(shlex.split(step), cwd=checkout, env=env, check=True, timeout=600)

    port = free_port()
    with (tmp_path / "up.log").open("wb") as log:
        process = subprocess.Popen(
            shlex.split(run),
            cwd=checkout,
            env={**env, "QUIP_PORT": str(port)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 90
        page = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                page = httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.5)
        assert page is not None, (tmp_path / "up.log").read_text()[-2000:]
        assert page.status_code == 200
        assert "Qui Pipeline" in page.text
        printed = (tmp_path / "up.log").read_text()
        assert f"http://127.0.0.1:{port}/" in printed
        assert "QUIP_READ_KEYS=default:dev_" in printed
    finally:
        process.terminate()
        process.wait(timeout=30)
