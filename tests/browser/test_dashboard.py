"""The dashboard page in a real headless Chromium against the real query API
(`api.app.create_app`) over embedded chDB seeded through the stream processors.

Each number the page shows is compared with what the API answers for the same parameters
(fetched here with httpx): the page must show the API's numbers, formatted, never its own.
A full-page screenshot goes to `$QUIP_TEST_ARTIFACTS/dashboard.png` (default
`test-artifacts/`) for CI to keep.
"""

from __future__ import annotations

import math
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from common.settings import Mode, Settings
from schemas.events import Event, EventRecord
from schemas.funnels import load_funnels
from sinks.clickhouse import EmbeddedClickHouse
from sinks.migrate import migrate
from streams.processors.base import Position
from streams.processors.events import EventsProcessor
from tests.browser.live_server import LiveServer
from tests.browser.seed import PROJECT, seed, write_funnels_file

pytestmark = [pytest.mark.browser, pytest.mark.chdb]

READ_KEY = "rk_dashboard_test"
OTHER_READ_KEY = "rk_other_project"
# {data-testid: text} of every element that has one, as the page shows it.
TEXTS_JS = """() => Object.fromEntries(Array.from(document.querySelectorAll('[data-testid]'),
    (node) => [node.dataset.testid, node.textContent.trim()]))"""
BUILDER_STEPS: list[dict[str, Any]] = [
    {"event": "session_start"},
    {"event": "gesture", "where": {"gesture": "pinch"}},
    {"event": "page_view"},
]
BUILDER_WINDOW = 3600
PREDEFINED = "pinch-after-start"


# ---------------------------------------------------------------- formatting, as the page does


def js_fixed(value: float, digits: int) -> str:
    """Number.prototype.toFixed: the exact binary value rounded half up."""
    return str(Decimal(value).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def pct(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{js_fixed(value * 100, digits)}%"


def count(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def ms(value: float | None) -> str:
    return "—" if value is None else f"{math.floor(value + 0.5):,} ms"


def kbps(value: float | None) -> str:
    return "—" if value is None else f"{math.floor(value + 0.5):,} kbps"


def fixed(value: float | None, digits: int) -> str:
    return "—" if value is None else js_fixed(value, digits)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def store(chdb_path: Path) -> Iterator[EmbeddedClickHouse]:
    database = f"t_{uuid.uuid4().hex[:12]}"
    clickhouse = EmbeddedClickHouse(chdb_path, database)
    migrate(clickhouse)
    yield clickhouse
    clickhouse.execute(f"DROP DATABASE IF EXISTS {database}")


@pytest.fixture(scope="module")
def api_server(
    store: EmbeddedClickHouse, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    from api.app import create_app  # the query API under test (not the dashboard's own code)

    clickhouse = store
    funnels_file = write_funnels_file(tmp_path_factory.mktemp("dashboard"))
    seed(clickhouse, load_funnels(funnels_file))
    settings = Settings(
        mode=Mode.EMBEDDED,
        read_keys=SecretStr(f"{PROJECT}:{READ_KEY},other:{OTHER_READ_KEY}"),
        write_keys=SecretStr(""),
        admin_keys=SecretStr(""),
        funnels_file=funnels_file,
        cors_origins="",
    )
    with LiveServer(create_app(settings, clickhouse)) as server:
        yield server


@pytest.fixture
def api(api_server: LiveServer) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {READ_KEY}"}
    with httpx.Client(base_url=api_server.url, headers=headers, timeout=30) as client:
        yield client


def get(api: httpx.Client, path: str, **params: str) -> Any:
    response = api.get(path, params=params)
    assert response.status_code == 200, f"{path}: {response.status_code} {response.text}"
    return response.json()


def open_dashboard(page: Any, url: str, key: str) -> None:
    page.goto(url)
    page.get_by_test_id("read-key-input").fill(key)
    page.get_by_test_id("read-key-save").click()
    page.wait_for_selector("body[data-state=ready], body[data-state=error]")


def wait_ready(page: Any, section: str) -> None:
    page.wait_for_selector(f"#{section}[data-state=ready]:not([aria-busy])")


def texts(page: Any) -> dict[str, str]:
    result: dict[str, str] = page.evaluate(TEXTS_JS)
    return result


# ---------------------------------------------------------------- checks, one per section


def check_active(shown: dict[str, str], rows: list[dict[str, Any]]) -> None:
    latest = rows[-1]
    assert latest["dau"] > 0, "the seeded data has users on the last day"
    assert shown["active-latest-day"] == latest["day"]
    assert shown["dau-latest"] == count(latest["dau"])
    assert shown["wau-latest"] == count(latest["wau"])
    assert shown["mau-latest"] == count(latest["mau"])
    assert shown["stickiness-latest"] == pct(latest["stickiness"])


def check_retention(shown: dict[str, str], cohorts: list[dict[str, Any]]) -> None:
    assert cohorts, "the seeded data has cohorts"
    listed = {
        key.removeprefix("retention-cohort-")
        for key in shown
        if key.startswith("retention-cohort-")
    }
    assert listed == {cohort["cohort"] for cohort in cohorts}
    for cohort in cohorts:
        name, size = cohort["cohort"], cohort["size"]
        assert shown[f"retention-size-{name}"] == count(size)
        for k, users in enumerate(cohort["retained"]):
            assert shown[f"retention-users-{name}-{k}"] == count(users), (name, k)
            assert shown[f"retention-pct-{name}-{k}"] == pct(users / size), (name, k)
        assert f"retention-cell-{name}-{len(cohort['retained'])}" not in shown


def check_funnel(shown: dict[str, str], result: dict[str, Any]) -> None:
    steps = result["steps"]
    assert steps[0]["users"] > 0, "the seeded data reaches the funnel's first step"
    for n, step in enumerate(steps, start=1):
        assert shown[f"funnel-step-name-{n}"] == step["event"]
        assert shown[f"funnel-step-users-{n}"] == count(step["users"])
        assert shown[f"funnel-step-conv-start-{n}"] == pct(step["conversion_from_start"])
        assert shown[f"funnel-step-conv-prev-{n}"] == pct(step["conversion_from_previous"])
    assert f"funnel-step-users-{len(steps) + 1}" not in shown


def check_playback_summary(shown: dict[str, str], summary: list[dict[str, Any]]) -> None:
    (row,) = summary
    assert row["group"] == "all"
    assert row["started"] > 0
    assert shown["playback-plays"] == count(row["plays"])
    assert shown["playback-started"] == count(row["started"])
    assert shown["playback-video-start-failures"] == count(row["video_start_failures"])
    assert shown["playback-exits-before-start"] == count(row["exits_before_start"])
    assert shown["playback-playback-failures"] == count(row["playback_failures"])
    assert shown["playback-startup-p50"] == ms(row["startup_ms_p50"])
    assert shown["playback-startup-p95"] == ms(row["startup_ms_p95"])
    assert shown["playback-rebuffer-ratio"] == pct(row["rebuffer_ratio"], 2)
    assert shown["playback-avg-bitrate"] == kbps(row["avg_bitrate_kbps"])
    assert shown["playback-watch-hours"] == fixed(row["watch_hours"], 2)


def check_playback_groups(shown: dict[str, str], rows: list[dict[str, Any]]) -> None:
    assert rows
    listed = {
        key.removeprefix("playback-group-row-")
        for key in shown
        if key.startswith("playback-group-row-")
    }
    assert listed == {row["group"] or "_" for row in rows}
    for row in rows:
        g = row["group"] or "_"
        assert shown[f"playback-group-{g}-plays"] == count(row["plays"])
        assert shown[f"playback-group-{g}-started"] == count(row["started"])
        assert shown[f"playback-group-{g}-video_start_failures"] == count(
            row["video_start_failures"]
        )
        assert shown[f"playback-group-{g}-playback_failures"] == count(row["playback_failures"])
        assert shown[f"playback-group-{g}-startup_ms_p50"] == count(row["startup_ms_p50"])
        assert shown[f"playback-group-{g}-startup_ms_p95"] == count(row["startup_ms_p95"])
        assert shown[f"playback-group-{g}-rebuffer_ratio"] == pct(row["rebuffer_ratio"], 2)
        assert shown[f"playback-group-{g}-watch_hours"] == fixed(row["watch_hours"], 2)


def service_text(field: str, value: float | None) -> str:
    return ms(value) if field.endswith("_ms_p95") else count(value)  # type: ignore[arg-type]


def check_services(shown: dict[str, str], data: dict[str, Any]) -> None:
    totals = data["totals"]
    assert totals["social_delivered"] > 0
    for field, value in totals.items():
        assert shown[f"services-total-{field}"] == service_text(field, value), field
        assert shown[f"services-table-total-{field}"] == service_text(field, value), field
    for day in data["days"]:
        for field, value in day.items():
            if field != "day":
                assert shown[f"services-{day['day']}-{field}"] == service_text(field, value)


def check_events(shown: dict[str, str], rows: list[dict[str, Any]]) -> None:
    totals: Counter[str] = Counter()
    for row in rows:
        totals[row["type"]] += row["count"]
    assert totals["page_view"] > 0
    assert totals["playback_start"] > 0
    listed = {key.removeprefix("events-total-") for key in shown if key.startswith("events-total-")}
    assert listed == set(totals)
    for event_type, total in totals.items():
        assert shown[f"events-total-{event_type}"] == count(total)


# ---------------------------------------------------------------- tests


def test_dashboard_shows_the_api_numbers(
    page: Any, api_server: LiveServer, api: httpx.Client, artifacts_dir: Path
) -> None:
    from playwright.sync_api import expect

    page.goto(f"{api_server.url}/")
    expect(page.get_by_test_id("read-key-input")).to_be_visible()
    open_dashboard(page, f"{api_server.url}/", READ_KEY)
    assert page.evaluate("document.body.dataset.state") == "ready", texts(page).get("error-banner")
    expect(page.get_by_test_id("error-banner")).to_be_hidden()
    expect(page.get_by_test_id("read-key-saved")).to_be_visible()

    project = page.get_by_test_id("project-input").input_value()
    day_from = page.get_by_test_id("date-from").input_value()
    day_to = page.get_by_test_id("date-to").input_value()
    assert project == PROJECT
    today = datetime.now(UTC).date()  # the browser runs at UTC+14: its days must be UTC's
    assert day_to == today.isoformat()
    assert day_from == (today - timedelta(days=29)).isoformat()
    params = {"project": project, "from": day_from, "to": day_to}

    # Default view: every section against the API's answer for the same parameters.
    shown = texts(page)
    active = get(api, "/v1/metrics/active-users", **params)
    check_active(shown, active)
    expect(page.get_by_test_id("dau-latest")).to_have_text(count(active[-1]["dau"]))
    check_retention(shown, get(api, "/v1/metrics/retention", **params, period="day"))
    check_playback_summary(shown, get(api, "/v1/metrics/playback", **params, group_by="none"))
    check_playback_groups(shown, get(api, "/v1/metrics/playback", **params, group_by="content_id"))
    check_services(shown, get(api, "/v1/metrics/services", **params))
    check_events(shown, get(api, "/v1/metrics/events", **params, interval="day"))
    # The default builder funnel (session_start → page_view) ran on load.
    default_funnel = {"steps": ["session_start", "page_view"], "window_seconds": 86400}
    response = api.post(
        "/v1/funnels/query",
        params={"project": project},
        json={**default_funnel, "from": day_from, "to": day_to},
    )
    assert response.status_code == 200, response.text
    check_funnel(shown, response.json())

    # Predefined funnel: listed from GET /v1/funnels, shown on click.
    assert PREDEFINED in [item["name"] for item in get(api, "/v1/funnels", project=project)]
    page.get_by_test_id(f"funnel-predefined-{PREDEFINED}").click()
    expect(page.get_by_test_id("funnel-result-title")).to_contain_text(f"Predefined: {PREDEFINED}")
    wait_ready(page, "funnels")
    check_funnel(texts(page), get(api, f"/v1/funnels/{PREDEFINED}", **params))

    # Builder funnel: three steps, a prop filter on the second, a one-hour window.
    page.get_by_test_id("funnel-step-event-2").fill("gesture")
    page.get_by_test_id("funnel-step-add-filter-2").click()
    page.get_by_test_id("funnel-filter-key-2-1").fill("gesture")
    page.get_by_test_id("funnel-filter-value-2-1").fill("pinch")
    page.get_by_test_id("funnel-add-step").click()
    page.get_by_test_id("funnel-step-event-3").fill("page_view")
    page.get_by_test_id("funnel-window").fill(str(BUILDER_WINDOW))
    page.get_by_test_id("funnel-run").click()
    expect(page.get_by_test_id("funnel-result-title")).to_contain_text(
        "Builder: session_start → gesture → page_view"
    )
    wait_ready(page, "funnels")
    response = api.post(
        "/v1/funnels/query",
        params={"project": project},
        json={
            "steps": BUILDER_STEPS,
            "window_seconds": BUILDER_WINDOW,
            "from": day_from,
            "to": day_to,
        },
    )
    assert response.status_code == 200, response.text
    builder_result = response.json()
    check_funnel(texts(page), builder_result)
    expect(page.get_by_test_id("funnel-step-users-2")).to_have_text(
        count(builder_result["steps"][1]["users"])
    )

    # Week cohorts.
    page.locator("#retention label.seg", has_text="Week").click()
    page.wait_for_selector("#retention-table[data-period=week]")
    wait_ready(page, "retention")
    check_retention(texts(page), get(api, "/v1/metrics/retention", **params, period="week"))

    # Playback by device model, hourly series.
    page.get_by_test_id("playback-group-by").select_option("device_model")
    page.get_by_test_id("playback-interval").select_option("hour")
    page.wait_for_selector("#playback-group-table[data-group-by=device_model]")
    wait_ready(page, "playback")
    shown = texts(page)
    check_playback_groups(
        shown, get(api, "/v1/metrics/playback", **params, group_by="device_model")
    )
    check_playback_summary(shown, get(api, "/v1/metrics/playback", **params, group_by="none"))

    # Back to day cohorts and daily series for the screenshot.
    page.locator("#retention label.seg", has_text="Day").click()
    page.wait_for_selector("#retention-table[data-period=day]")
    wait_ready(page, "retention")
    page.get_by_test_id("playback-interval").select_option("day")
    wait_ready(page, "playback")
    expect(page.get_by_test_id("error-banner")).to_be_hidden()
    page.evaluate("window.scrollTo(0, 0)")  # the sticky header belongs at the top
    page.mouse.move(0, 0)  # no hover labels or chart toolbars in the picture
    page.wait_for_timeout(300)  # let plotly finish its transitions
    page.screenshot(path=str(artifacts_dir / "dashboard.png"), full_page=True)
    assert page.problems == []

    # The key was entered once: a reload loads straight away, without asking again.
    page.reload()
    page.wait_for_selector("body[data-state=ready]")
    expect(page.get_by_test_id("read-key-saved")).to_be_visible()
    expect(page.get_by_test_id("read-key-input")).to_be_hidden()
    assert page.url.endswith(f"?project={project}&from={day_from}&to={day_to}")


def test_load_button_asks_for_the_stores_numbers(page: Any, api_server: LiveServer) -> None:
    """The Load button's requests say `Cache-Control: no-cache` (SPEC §5: answered from the
    stores); a section's own reload afterwards may be answered from the cache."""
    open_dashboard(page, f"{api_server.url}/", READ_KEY)
    sent: list[tuple[str, str | None]] = []

    def record(request: Any) -> None:
        if "/v1/" in request.url:
            sent.append((request.url, request.headers.get("cache-control")))

    page.on("request", record)
    page.get_by_test_id("load-button").click()
    page.wait_for_selector("body[data-state=ready]")
    loaded = list(sent)
    assert len(loaded) >= 7, loaded  # every section asked
    assert {header for _, header in loaded} == {"no-cache"}, loaded
    sent.clear()
    # The radio is drawn as its label (a segmented control); a person clicks the label.
    page.locator("label:has([data-testid=retention-period-week])").click()
    wait_ready(page, "retention")
    assert [header for url, header in sent if "/v1/metrics/retention" in url] == [None], sent


def test_errors_show_in_a_banner_not_a_blank_page(
    page: Any, api_server: LiveServer, artifacts_dir: Path
) -> None:
    from playwright.sync_api import expect

    # 401: a wrong key. Every section says so once, and the key can be entered again.
    open_dashboard(page, f"{api_server.url}/dashboard", "not-a-key")
    banner = page.get_by_test_id("error-banner")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("401")
    expect(banner).to_contain_text("read key")
    assert page.evaluate("document.body.dataset.state") == "error"
    expect(page.get_by_role("heading", name="Active users")).to_be_visible()
    expect(page.get_by_test_id("read-key-input")).to_be_visible()
    page.screenshot(path=str(artifacts_dir / "dashboard-401.png"), full_page=False)

    # 403: a valid key of another project.
    page.get_by_test_id("read-key-input").fill(OTHER_READ_KEY)
    page.get_by_test_id("read-key-save").click()
    page.wait_for_selector("body[data-state=error]")
    expect(banner).to_contain_text("403")

    # The right key: everything loads and the banner goes away.
    page.get_by_test_id("read-key-forget").click()
    page.get_by_test_id("read-key-input").fill(READ_KEY)
    page.get_by_test_id("read-key-save").click()
    page.wait_for_selector("body[data-state=ready]")
    expect(banner).to_be_hidden()

    # 400 from the API: a funnel window longer than 14 days; the message is the API's.
    page.get_by_test_id("funnel-window").fill("2000000")
    page.get_by_test_id("funnel-run").click()
    page.wait_for_selector("#funnels[data-state=error]")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("Funnel")
    expect(banner).to_contain_text("400")
    expect(page.locator('[data-section-error="funnel"]')).to_contain_text("window_seconds")
    # The other sections keep their numbers.
    expect(page.get_by_test_id("dau-latest")).not_to_have_text("—")

    # A range the page itself refuses: from after to.
    page.get_by_test_id("date-from").fill("2026-02-10")
    page.get_by_test_id("date-to").fill("2026-02-01")
    page.get_by_test_id("load-button").click()
    expect(banner).to_contain_text("is after")
    page.screenshot(path=str(artifacts_dir / "dashboard-errors.png"), full_page=False)
    assert [p for p in page.problems if "401" not in p and "403" not in p and "400" not in p] == []


# ---------------------------------------------------------------- insight builder and panels

BREAKDOWN_TEXT = {"$none": "(none)", "$other": "(other)"}
# Built through the controls below: two series (a count, a percentile of a numeric prop),
# a prop filter and a breakdown, weekly.
INSIGHT: dict[str, Any] = {
    "series": [
        {"event": "gesture", "math": "total"},
        {"event": "playback_start", "math": "p90", "property": "props.startup_ms"},
    ],
    "filters": [{"property": "props.gesture", "op": "neq", "value": "swipe"}],
    "breakdown": ["device_model"],
    "interval": "week",
}


def number(value: float | None) -> str:
    """Intl.NumberFormat('en-US', {maximumFractionDigits: 2})."""
    if value is None:
        return "—"
    text = f"{Decimal(value).quantize(Decimal('0.01'), rounding=ROUND_HALF_UP):,}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{js_fixed(seconds, 1)} s"
    if seconds < 3600:
        return f"{js_fixed(seconds / 60, 1)} min"
    return f"{js_fixed(seconds / 3600, 1)} h"


def post(api: httpx.Client, path: str, project: str, body: dict[str, Any]) -> Any:
    response = api.post(path, params={"project": project}, json=body)
    assert response.status_code == 200, f"{path}: {response.status_code} {response.text}"
    return response.json()


def insight_label(series: dict[str, Any], body: dict[str, Any]) -> str:
    spec = body["series"][series["index"]]
    math = (
        f"{series['math']}({spec['property']})"
        if spec.get("property")
        else series["math"].replace("_", " ")
    )
    parts = [chr(ord("A") + series["index"]), series["event"] or "any event", math]
    if series["breakdown"]:
        parts.append(" / ".join(BREAKDOWN_TEXT.get(v, v) for v in series["breakdown"].values()))
    return " · ".join(parts)


def check_insight_legend(
    shown: dict[str, str], result: dict[str, Any], body: dict[str, Any]
) -> None:
    """One legend entry per series and breakdown value, with its total over the range."""
    series = result["series"]
    assert len(series) > len(body["series"]), "the breakdown splits the series"
    for k, item in enumerate(series):
        assert shown[f"insight-name-{k}"] == insight_label(item, body), k
        assert shown[f"insight-total-{k}"] == number(item["total"]), k
    assert f"insight-legend-{len(series)}" not in shown


def check_insight_table(
    shown: dict[str, str], result: dict[str, Any], body: dict[str, Any]
) -> None:
    series = result["series"]
    times = sorted({point["t"] for item in series for point in item["points"]})
    assert [shown[f"insight-t-{j}"] for j in range(len(times))] == times
    assert f"insight-t-{len(times)}" not in shown
    for k, item in enumerate(series):
        assert shown[f"insight-col-{k}"] == insight_label(item, body)
        values = {point["t"]: point["value"] for point in item["points"]}
        for j, t in enumerate(times):
            assert shown[f"insight-cell-{k}-{j}"] == number(values.get(t)), (k, t)
        assert shown[f"insight-table-total-{k}"] == number(item["total"])
    assert any(p["value"] for item in series for p in item["points"]), "the data has values"


def check_lifecycle(shown: dict[str, str], rows: list[dict[str, Any]]) -> None:
    assert any(row["new"] for row in rows)
    assert any(row["dormant"] for row in rows)
    listed = {k.removeprefix("lifecycle-row-") for k in shown if k.startswith("lifecycle-row-")}
    assert listed == {row["t"] for row in rows}
    for row in rows:
        for field in ("new", "returning", "resurrecting", "dormant"):
            assert shown[f"lifecycle-{row['t']}-{field}"] == count(row[field]), (row["t"], field)


def check_stickiness(shown: dict[str, str], rows: list[dict[str, Any]]) -> None:
    assert rows
    assert rows[0]["users"] > 0
    listed = {k.removeprefix("stickiness-row-") for k in shown if k.startswith("stickiness-row-")}
    assert listed == {str(row["days"]) for row in rows}
    for row in rows:
        assert shown[f"stickiness-users-{row['days']}"] == count(row["users"])


def check_sessions(shown: dict[str, str], rows: list[dict[str, Any]]) -> None:
    assert rows
    ids = [
        f"{row['day']}-{' / '.join(row['breakdown'].values()) if row['breakdown'] else 'all'}"
        for row in rows
    ]
    listed = {k.removeprefix("sessions-row-") for k in shown if k.startswith("sessions-row-")}
    assert listed == set(ids)
    for row, row_id in zip(rows, ids, strict=True):
        assert shown[f"sessions-{row_id}-sessions"] == count(row["sessions"])
        assert shown[f"sessions-{row_id}-users"] == count(row["users"])
        assert shown[f"sessions-{row_id}-duration_s_avg"] == duration(row["duration_s_avg"])
        assert shown[f"sessions-{row_id}-duration_s_median"] == duration(row["duration_s_median"])
        assert shown[f"sessions-{row_id}-events_per_session"] == number(row["events_per_session"])
        assert shown[f"sessions-{row_id}-bounce_rate"] == pct(row["bounce_rate"])


def check_funnel_times(shown: dict[str, str], steps: list[dict[str, Any]], prefix: str) -> None:
    assert steps[1]["median_time_to_convert_s"] is not None
    for n, step in enumerate(steps, start=1):
        assert shown[f"{prefix}-users-{n}"] == count(step["users"])
        assert shown[f"{prefix}-conv-start-{n}"] == pct(step["conversion_from_start"])
        assert shown[f"{prefix}-median-{n}"] == duration(step["median_time_to_convert_s"])
        assert shown[f"{prefix}-avg-{n}"] == duration(step["avg_time_to_convert_s"])


def chart_traces(page: Any, chart: str) -> list[dict[str, Any]]:
    traces: list[dict[str, Any]] = page.evaluate(
        f"Array.from(document.getElementById('{chart}').data || [],"
        " (t) => ({type: t.type, name: t.name, y: Array.from(t.y)}))"
    )
    return traces


def test_insight_builder_and_panels(
    page: Any, api_server: LiveServer, api: httpx.Client, artifacts_dir: Path
) -> None:
    from playwright.sync_api import expect

    open_dashboard(page, f"{api_server.url}/", READ_KEY)
    assert page.evaluate("document.body.dataset.state") == "ready", texts(page).get("error-banner")
    project = page.get_by_test_id("project-input").input_value()
    day_from = page.get_by_test_id("date-from").input_value()
    day_to = page.get_by_test_id("date-to").input_value()
    params = {"project": project, "from": day_from, "to": day_to}
    days = {"from": day_from, "to": day_to}

    # The panels' defaults: any event, daily lifecycle, no breakdown.
    shown = texts(page)
    check_lifecycle(shown, get(api, "/v1/insights/lifecycle", **params, interval="day"))
    check_stickiness(shown, get(api, "/v1/insights/stickiness", **params))
    check_sessions(shown, post(api, "/v1/insights/sessions", project, {**days, "breakdown": []}))

    # The insight, through the controls; events and properties come from discovery.
    offered = page.eval_on_selector_all(
        "[data-testid=insight-series-event-1] option", "(nodes) => nodes.map((n) => n.value)"
    )
    assert {row["type"] for row in get(api, "/v1/schema/events", **params)} <= set(offered)
    page.get_by_test_id("insight-series-event-1").select_option("gesture")
    page.get_by_test_id("insight-add-series").click()
    page.get_by_test_id("insight-series-event-2").select_option("playback_start")
    page.get_by_test_id("insight-series-math-2").select_option("p90")
    page.get_by_test_id("insight-series-property-2").select_option("props.startup_ms")
    numeric = page.eval_on_selector_all(
        "[data-testid=insight-series-property-2] option", "(nodes) => nodes.map((n) => n.value)"
    )
    schema = get(api, "/v1/schema/properties", **params, event="playback_start")
    assert set(numeric) - {""} == {row["property"] for row in schema if row["type"] == "number"}
    page.get_by_test_id("insight-add-filter").click()
    page.get_by_test_id("insight-filter-property-1").select_option("props.gesture")
    page.get_by_test_id("insight-filter-op-1").select_option("neq")
    page.get_by_test_id("insight-filter-value-1").fill("swipe")
    page.get_by_test_id("insight-breakdown-1").select_option("device_model")
    page.get_by_test_id("insight-interval").select_option("week")
    page.get_by_test_id("insight-run").click()
    expect(page.get_by_test_id("insight-name-0")).to_contain_text("A · gesture · total · ")
    wait_ready(page, "insight")
    result = post(api, "/v1/insights/trends", project, {**INSIGHT, **days})
    series = result["series"]
    check_insight_legend(texts(page), result, INSIGHT)
    assert {item["index"] for item in series} == {0, 1}
    traces = chart_traces(page, "insight-chart")
    assert [(t["type"], t["name"]) for t in traces] == [
        ("scatter", insight_label(item, INSIGHT)) for item in series
    ]
    assert [t["y"] for t in traces] == [[p["value"] for p in item["points"]] for item in series]

    # Line → bar → table: the same answer, drawn again (no new query).
    page.locator("#insight label.seg", has_text="Bar").click()
    page.wait_for_selector("#insight[data-display=bar]")
    assert {t["type"] for t in chart_traces(page, "insight-chart")} == {"bar"}
    page.locator("#insight label.seg", has_text="Table").click()
    page.wait_for_selector("#insight[data-display=table]")
    expect(page.get_by_test_id("insight-table")).to_be_visible()
    expect(page.locator("#insight-chart")).to_be_hidden()
    shown = texts(page)
    check_insight_legend(shown, result, INSIGHT)
    check_insight_table(shown, result, INSIGHT)

    # Panels' own controls.
    page.get_by_test_id("lifecycle-interval").select_option("week")
    page.get_by_test_id("lifecycle-event").select_option("page_view")
    page.wait_for_selector("#lifecycle-table[data-interval=week][data-event=page_view]")
    wait_ready(page, "lifecycle")
    lifecycle_week = get(
        api, "/v1/insights/lifecycle", **params, interval="week", event="page_view"
    )
    check_lifecycle(texts(page), lifecycle_week)
    page.get_by_test_id("stickiness-event").select_option("gesture")
    page.wait_for_selector("#stickiness-table[data-event=gesture]")
    wait_ready(page, "stickiness")
    stickiness = get(api, "/v1/insights/stickiness", **params, event="gesture")
    check_stickiness(texts(page), stickiness)
    page.get_by_test_id("sessions-breakdown").select_option("device_model")
    page.wait_for_selector("#sessions-table[data-breakdown=device_model]")
    wait_ready(page, "sessions")
    sessions = post(api, "/v1/insights/sessions", project, {**days, "breakdown": ["device_model"]})
    assert {tuple(row["breakdown"]) for row in sessions} == {("device_model",)}
    check_sessions(texts(page), sessions)

    # Funnel: times to convert per step, then broken down by device model.
    check_funnel_times(
        texts(page),
        post(
            api,
            "/v1/funnels/query",
            project,
            {"steps": ["session_start", "page_view"], "window_seconds": 86400, **days},
        )["steps"],
        "funnel-step",
    )
    page.get_by_test_id("funnel-breakdown").select_option("device_model")
    page.get_by_test_id("funnel-run").click()
    expect(page.get_by_test_id("funnel-result-title")).to_contain_text("by device_model")
    wait_ready(page, "funnels")
    funnel = post(
        api,
        "/v1/funnels/query",
        project,
        {
            "steps": ["session_start", "page_view"],
            "window_seconds": 86400,
            "breakdown": ["device_model"],
            **days,
        },
    )
    shown = texts(page)
    groups = funnel["breakdown"]
    values = {group["breakdown"]["device_model"] for group in groups}
    assert len(values) == len(groups) > 1
    for group in groups:
        value = group["breakdown"]["device_model"]
        check_funnel_times(shown, group["steps"], f"funnel-group-{value}")
    listed = {k for k in shown if k.startswith("funnel-group-") and k.endswith("-users-1")}
    assert listed == {f"funnel-group-{value}-users-1" for value in values}
    assert "funnel-step-users-1" not in shown

    page.mouse.move(0, 0)  # no hover labels or chart toolbars in the picture
    page.wait_for_timeout(300)  # let plotly finish its transitions
    page.locator("#insight").screenshot(path=str(artifacts_dir / "insight-builder.png"))
    page.evaluate("window.scrollTo(0, 0)")  # the sticky header belongs at the top
    page.screenshot(path=str(artifacts_dir / "dashboard-insights.png"), full_page=True)
    assert page.problems == []

    # The URL holds the view: a copied link opened in a new tab shows the same insight
    # (as a table) and the same panels.
    link = page.url
    assert "#view=" in link
    assert f"?project={project}&from={day_from}&to={day_to}#" in link
    copy = page.context.new_page()
    errors: list[str] = []
    copy.on("pageerror", lambda e: errors.append(str(e)))
    copy.goto(link)
    copy.wait_for_selector("body[data-state=ready]")
    expect(copy.get_by_test_id("insight-series-property-2")).to_have_value("props.startup_ms")
    expect(copy.get_by_test_id("insight-filter-value-1")).to_have_value("swipe")
    expect(copy.get_by_test_id("insight-breakdown-1")).to_have_value("device_model")
    expect(copy.get_by_test_id("insight-interval")).to_have_value("week")
    expect(copy.get_by_test_id("insight-table")).to_be_visible()
    shown = texts(copy)
    check_insight_legend(shown, result, INSIGHT)
    check_insight_table(shown, result, INSIGHT)
    check_lifecycle(shown, lifecycle_week)
    check_stickiness(shown, stickiness)
    check_sessions(shown, sessions)
    assert copy.url == link
    assert errors == []
    copy.close()


def test_viewers_now_follow_the_stores_without_a_reload(
    page: Any, api_server: LiveServer, api: httpx.Client, store: EmbeddedClickHouse
) -> None:
    """The "Watching now" tile shows the API's `/concurrent/now` and keeps polling it: a
    play stored after the page loaded shows up, and an ended one goes, on the same page."""
    from playwright.sync_api import expect

    open_dashboard(page, f"{api_server.url}/", READ_KEY)
    tile = page.get_by_test_id("playback-concurrent-now")
    now_path = "/v1/metrics/playback/concurrent/now"
    before = get(api, now_path, project=PROJECT)["concurrent_viewers"]
    expect(tile).to_have_attribute("data-value", str(before), timeout=10_000)
    expect(tile).to_have_text(count(before))
    page.evaluate("window.loadedOnce = true")  # gone if the page reloads

    def store_play(play_id: str, *kinds: str) -> None:
        now_ms = int(datetime.now(UTC).timestamp() * 1000)
        events = [
            Event(
                event_id=f"{play_id}-{kind}",
                type=f"playback_{kind}",
                user_id="u-watching",
                ts=now_ms - 2_000 + n,
                device_model="quest3",
                props={"play_id": play_id, "content_id": "c-live"},
            )
            for n, kind in enumerate(kinds)
        ]
        processor = EventsProcessor()
        record = EventRecord(project=PROJECT, received_at=now_ms, events=events)
        processor.process(record, Position(0, 0))
        (table,) = processor.flush(now_ms).tables
        store.insert(table.table, table.columns, table.rows)

    try:
        store_play("watching-now", "request", "start")
        store_play("over-now", "start", "end")
        # Polled every 5 s: the next poll shows the open play, not the ended one.
        expect(tile).to_have_attribute("data-value", str(before + 1), timeout=15_000)
        assert get(api, now_path, project=PROJECT)["concurrent_viewers"] == before + 1
        expect(tile).to_have_text(count(before + 1))
        assert page.evaluate("window.loadedOnce") is True
        assert page.get_by_test_id("playback-concurrent-at").text_content().endswith("UTC")
        store_play("watching-now", "end")
        expect(tile).to_have_attribute("data-value", str(before), timeout=15_000)
        assert page.evaluate("window.loadedOnce") is True
    finally:
        store.execute(
            "ALTER TABLE events DELETE WHERE user_id = 'u-watching' SETTINGS mutations_sync = 2"
        )
    assert page.problems == []
