"""The real browser SDKs in a real headless Chromium against `quip up` (SPEC §2 "Browser
SDKs"): a page loads the npm bundles of posthog-js and @segment/analytics-next
(`deploy/local/install-browser-sdks.sh`), served from another origin than the gateway
(so CORS per QUIP_CORS_ORIGINS is exercised), sends page views, custom events and an
identify with each, and every event must be counted once through the query API and stored
with its type, user and dimensions (`os`, `source`, device model and app version where the
SDK carries them).

No request may leave the machine: the browser context routes every request, lets through
only the page's and the gateway's origins, and the test asserts nothing else was tried.
posthog-js drops events from browsers that look automated, so the browser runs with a
Quest Browser user agent and without the AutomationControlled blink feature.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from tests.browser.conftest import CHROMIUM_ARGS
from tests.browser.live_server import LiveServer
from tests.integration.test_embedded import Embedded

pytestmark = [pytest.mark.browser, pytest.mark.chdb]

REPO = Path(__file__).resolve().parents[2]
SDK_DIR = REPO / "tests" / "browser" / "sdk"
POSTHOG_JS = SDK_DIR / "node_modules" / "posthog-js" / "dist" / "array.full.no-external.js"
ANALYTICS_NEXT_JS = SDK_DIR / "dist" / "analytics-next.js"
POSTHOG_ARRAY_JS = SDK_DIR / "node_modules" / "posthog-js" / "dist" / "array.js"
QUEST_BROWSER_UA = (
    "Mozilla/5.0 (Linux; Android 12; Quest 3) AppleWebKit/537.36 (KHTML, like Gecko) "
    "OculusBrowser/37.0.0.3.58 SamsungBrowser/4.0 Chrome/134.0.6998.88 Mobile VR Safari/537.36"
)
# (type, who): what the page sends, "anonymous" standing for the SDK's anonymous id.
POSTHOG_SENT = [
    ("page_view", "anonymous"),
    ("clicked_play", "anonymous"),
    ("ph_identify", "ph-user-1"),
    ("video_started", "ph-user-1"),
]
SEGMENT_SENT = [
    ("page_view", "anonymous"),
    ("video_played", "anonymous"),
    ("identify", "seg-user-1"),
    ("gesture_made", "seg-user-1"),
]
# The events table, read by another process once `quip up` has stopped (chDB binds one
# data directory per process, and this one may hold another).
READ_EVENTS = """
import json, sys
from pathlib import Path
from sinks.clickhouse import EmbeddedClickHouse
rows = EmbeddedClickHouse(Path(sys.argv[1])).execute(
    "SELECT event_id, type, user_id, source, os, device_model, app_version, session_id "
    "FROM events FINAL WHERE project = 'default'"
)
print(json.dumps(rows))
"""


@pytest.fixture(scope="module")
def sdk_scripts() -> None:
    bundles = (POSTHOG_JS, POSTHOG_ARRAY_JS, ANALYTICS_NEXT_JS)
    missing = [str(path) for path in bundles if not path.is_file()]
    if missing:
        pytest.fail(
            f"browser SDK bundles missing ({', '.join(missing)}): run "
            "deploy/local/install-browser-sdks.sh",
            pytrace=False,
        )


def file_endpoint(path: Path) -> Callable[[Request], Awaitable[Response]]:
    async def serve(_: Request) -> Response:
        return FileResponse(path)

    return serve


@pytest.fixture(scope="module")
def page_server(sdk_scripts: None) -> Iterator[LiveServer]:
    """The pages' own origin, another port than the gateway's."""
    files = {
        "/": SDK_DIR / "page.html",
        "/posthog.js": POSTHOG_JS,
        "/analytics-next.js": ANALYTICS_NEXT_JS,
        "/posthog-array.html": SDK_DIR / "posthog-array.html",
        "/posthog-array.js": POSTHOG_ARRAY_JS,
    }
    app = Starlette(routes=[Route(path, file_endpoint(file)) for path, file in files.items()])
    with LiveServer(app) as server:
        yield server


@pytest.fixture
def quip_up(page_server: LiveServer, tmp_path: Path) -> Iterator[Embedded]:
    up = Embedded(tmp_path, {"QUIP_CORS_ORIGINS": page_server.url})
    up.start()
    try:
        yield up
    finally:
        up.stop()


@pytest.fixture(scope="module")
def sdk_browser(chromium_path: str) -> Iterator[Any]:
    """Module-scoped like tests/browser/conftest.py's `browser`, with the one flag more
    that posthog-js needs to take the browser for a person's."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=chromium_path,
            args=[*CHROMIUM_ARGS, "--disable-blink-features=AutomationControlled"],
        )
        yield launched
        launched.close()


@dataclass
class LocalPage:
    """A page whose requests may go to the page's origin and the gateway only: any other
    is aborted and listed in `blocked`. `seen` lists every request the page made, and
    `problems` its console errors and uncaught exceptions."""

    page: Any
    allowed: tuple[str, ...]
    blocked: list[str] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def outside(self) -> list[str]:
        return self.blocked + [url for url in self.seen if not url.startswith(self.allowed)]


@pytest.fixture
def local_page(sdk_browser: Any, page_server: LiveServer, quip_up: Embedded) -> Iterator[LocalPage]:
    context = sdk_browser.new_context(user_agent=QUEST_BROWSER_UA, locale="en-US")
    context.set_default_timeout(30_000)
    local = LocalPage(context.new_page(), (page_server.url + "/", quip_up.url + "/"))

    def only_local(route: Any) -> None:
        if route.request.url.startswith(local.allowed):
            route.continue_()
        else:
            local.blocked.append(route.request.url)
            route.abort()

    context.route("**/*", only_local)
    local.page.on("request", lambda request: local.seen.append(request.url))
    local.page.on("console", lambda m: local.problems.append(m.text) if m.type == "error" else None)
    local.page.on("pageerror", lambda e: local.problems.append(str(e)))
    yield local
    context.close()


def event_counts(up: Embedded, day_from: str, day_to: str) -> Counter[str]:
    response = httpx.get(
        f"{up.url}/v1/metrics/events",
        params={"project": "default", "from": day_from, "to": day_to, "interval": "day"},
        headers={"Authorization": f"Bearer {up.key('read_keys')}", "Cache-Control": "no-cache"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    counts: Counter[str] = Counter()
    for row in response.json():
        counts[row["type"]] += row["count"]
    return counts


def stored_events(up: Embedded) -> list[list[Any]]:
    done = subprocess.run(
        [sys.executable, "-c", READ_EVENTS, str(up.workdir / ".quip" / "chdb")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows: list[list[Any]] = json.loads(done.stdout)
    return rows


def wait_for_counts(local: LocalPage, up: Embedded, expected: Counter[str]) -> None:
    """Until the query API counts exactly `expected` (60 s at most), then 4 s more to see
    that nothing else arrives (a repeated send would be counted). The waits are the
    page's, so that Playwright keeps serving the route handler meanwhile."""
    today = datetime.now(UTC).date()
    day_from, day_to = str(today - timedelta(days=1)), str(today + timedelta(days=1))
    deadline = time.monotonic() + 60
    while (counts := event_counts(up, day_from, day_to)) != expected:
        assert time.monotonic() < deadline, counts
        local.page.wait_for_timeout(500)
    local.page.wait_for_timeout(4_000)
    assert event_counts(up, day_from, day_to) == expected


def test_posthog_js_and_analytics_next_events_are_stored_once_with_dimensions(
    local_page: LocalPage, page_server: LiveServer, quip_up: Embedded
) -> None:
    local_page.page.goto(page_server.url + "/")
    sent = local_page.page.evaluate(
        "([gateway, key]) => window.sendWithBothSdks(gateway, key)",
        [quip_up.url, quip_up.key("write_keys")],
    )

    # posthog-js flushes its queue every few seconds.
    wait_for_counts(local_page, quip_up, Counter(kind for kind, _ in POSTHOG_SENT + SEGMENT_SENT))

    assert sent["flags"] == [], sent  # /flags/ answered in a shape posthog-js takes
    assert local_page.outside() == []
    assert any(url.startswith(quip_up.url + "/array/") for url in local_page.seen)
    assert any(url.startswith(quip_up.url + "/flags/") for url in local_page.seen)
    assert local_page.problems == []

    quip_up.stop()
    rows = stored_events(quip_up)
    assert len({row[0] for row in rows}) == len(rows)
    stored = Counter(tuple(row[1:]) for row in rows)
    posthog_user = {"anonymous": sent["posthogAnonymousId"]}
    segment_user = {"anonymous": sent["segmentAnonymousId"]}
    session = sent["posthogSessionId"]
    assert session
    assert stored == Counter(
        [
            (kind, posthog_user.get(who, who), "posthog", "Android", "Quest 3", "3.1.0", session)
            for kind, who in POSTHOG_SENT
        ]
        + [
            (
                kind,
                segment_user.get(who, who),
                "segment",
                "Android",  # the client hints' platform analytics.js sends
                "Quest 3" if kind == "video_played" else "",  # given on that call only
                "3.1.0" if kind == "video_played" else "",
                "",
            )
            for kind, who in SEGMENT_SENT
        ]
    )


def test_posthog_js_default_build_takes_its_config_script(
    local_page: LocalPage, page_server: LiveServer, quip_up: Embedded
) -> None:
    """posthog-js's `array.js` build fetches `/array/<token>/config.js` as a script instead
    of the JSON config; it must run, store the config, and let the page capture."""
    key = quip_up.key("write_keys")
    local_page.page.goto(page_server.url + "/posthog-array.html")
    local_page.page.evaluate("([gateway, key]) => window.captureWithArrayBuild(gateway, key)",
                             [quip_up.url, key])  # fmt: skip

    wait_for_counts(local_page, quip_up, Counter({"store_opened": 1}))

    config = local_page.page.evaluate("(key) => window._POSTHOG_REMOTE_CONFIG[key].config", key)
    assert (config["token"], config["hasFeatureFlags"]) == (key, False)
    assert f"{quip_up.url}/array/{key}/config.js" in local_page.seen
    assert local_page.outside() == []
    assert local_page.problems == []
