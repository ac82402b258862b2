"""Regenerates docs/img/dashboard.png (the README tour's screenshot): `quip up` in a temp
directory with the example funnels, filled by `quip simulate`, photographed by Debian's
headless Chromium (deploy/local/install-browser.sh) through Playwright.

    .venv/bin/python docs/img/make_dashboard_png.py
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("QUIP_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/ready", timeout=2):  # noqa: S310 (http)
                return
        except OSError:
            time.sleep(0.3)
    raise SystemExit("quip up did not start")


def main() -> None:
    from playwright.sync_api import sync_playwright

    workdir = Path(tempfile.mkdtemp(prefix="quip-screenshot-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUIP_")}
    env["QUIP_FUNNELS_FILE"] = str(REPO / "deploy" / "funnels.example.toml")
    up = subprocess.Popen(  # noqa: S603 (our own command)
        [sys.executable, "-m", "quip", "up", "--port", str(port)],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_ready(url, up)
        keys = json.loads((workdir / ".quip" / "dev-keys.json").read_text())
        subprocess.run(  # noqa: S603 (our own command)
            [sys.executable, "-m", "quip", "simulate", "--url", url, "--users", "400",
             "--days", "21", "--seed", "2026", "--no-progress"],
            env={**env, "QUIP_WRITE_KEYS": keys["write_keys"]},
            check=True,
        )  # fmt: skip
        time.sleep(10)  # the runner catches up in batches
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.set_default_timeout(60_000)
            page.goto(url)
            page.get_by_test_id("read-key-input").fill(keys["read_keys"].split(":", 1)[1])
            page.get_by_test_id("read-key-save").click()
            page.wait_for_selector("body[data-state=ready]")
            page.get_by_test_id("funnel-predefined-video-start").click()
            for section in ("active", "retention", "funnels", "playback", "events", "services"):
                page.wait_for_selector(f"#{section}[data-state=ready]:not([aria-busy])")
            page.evaluate("window.scrollTo(0, 0)")
            page.mouse.move(0, 0)
            page.wait_for_timeout(500)
            target = REPO / "docs" / "img" / "dashboard.png"
            page.screenshot(path=str(target), full_page=True)
            browser.close()
        print(f"saved {target.relative_to(REPO)}")
    finally:
        up.terminate()
        up.wait(timeout=60)


if __name__ == "__main__":
    main()
