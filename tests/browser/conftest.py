"""Fixtures for tests that drive the dashboard in a real headless Chromium.

The browser is Debian's `chromium` (`deploy/local/install-browser.sh`), driven by the
`playwright` package's bundled driver with `executable_path`; no browser is downloaded.
When the binary is missing, tests marked `browser` fail with that instruction (never
skipped silently, like the service markers in tests/conftest.py); deselect them with
`-m "not browser"`.

Environment: `QUIP_CHROMIUM` (default /usr/bin/chromium) and `QUIP_TEST_ARTIFACTS`
(default `test-artifacts/`), where screenshots are written for CI to keep.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("QUIP_CHROMIUM", "/usr/bin/chromium")
# Read at import: tests/conftest.py clears QUIP_* before any fixture runs.
ARTIFACTS = Path(os.environ.get("QUIP_TEST_ARTIFACTS", "test-artifacts"))
# The machine's network is closed: without the background-networking flags Chromium keeps
# trying to reach Google's hosts.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1440, "height": 900}


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def chromium_path() -> str:
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)) and not shutil.which(
        CHROMIUM
    ):
        pytest.fail(
            f"Chromium is not installed at {CHROMIUM}: run deploy/local/install-browser.sh "
            "(Debian's chromium package), or set QUIP_CHROMIUM",
            pytrace=False,
        )
    return CHROMIUM


@pytest.fixture(scope="module")
def browser(chromium_path: str) -> Iterator[Any]:
    """Module-scoped on purpose: while Playwright's sync API is running, the main thread
    has a running event loop, and pytest-asyncio tests of later modules would fail."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest, artifacts_dir: Path) -> Iterator[Any]:
    """A fresh browser context (empty localStorage) per test; console errors and page
    exceptions are collected on `page.problems`, and a failing test leaves a screenshot
    `<test name>-failed.png` in the artifacts directory."""
    # Far from UTC on purpose: the page must count days in UTC whatever the browser's zone.
    context = browser.new_context(
        viewport=VIEWPORT, locale="en-US", timezone_id="Pacific/Kiritimati"
    )
    context.set_default_timeout(20_000)
    new_page = context.new_page()
    problems: list[str] = []
    new_page.on(
        "console",
        lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None,
    )
    new_page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    new_page.problems = problems
    yield new_page
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        name = request.node.name.replace("/", "_").replace("[", "-").replace("]", "")
        new_page.screenshot(path=str(artifacts_dir / f"{name}-failed.png"), full_page=True)
    context.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
