"""The query API end to end on both engines (clickhouse-server 18.16 and chDB).

Data: generated traffic (tests/traffic.py) plus hand-made plays, replayed in part, and
service messages, run through the real processors (events, activity, plays, funnels with a
definitions file, service metrics) whose outputs are inserted as the worker's sinks would.
Every endpoint is called through ASGI and compared with expectations computed here from
the generated inputs alone (tests/expectations.py and the reference functions of the SQL
tests), never with the query functions themselves.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi import FastAPI
from pydantic import TypeAdapter

from api.app import create_app
from api.pool import POOL_SIZE
from api.routes.playback import MAX_LIMIT, SERIES, SUMMARY
from common.settings import Settings
from schemas.events import Event, EventRecord
from schemas.funnels import FunnelDefinition, FunnelStep, load_funnels
from schemas.output import ProcessorOutput
from schemas.services import (
    EmailNotification,
    ServiceMessage,
    SocialNotification,
    encode_message,
    topic_for,
)
from sinks.clickhouse import ClickHouse, EmbeddedClickHouse, ServerClickHouse
from sinks.migrate import migrate
from sinks.queries.erasure import ERASURE_TARGETS, USER_KEYED_TOPICS, pending_mutations
from streams.processors.activity import ActivityProcessor, utc_day
from streams.processors.base import Position
from streams.processors.events import EventsProcessor
from streams.processors.funnels import FunnelsProcessor
from streams.processors.plays import PlaysProcessor
from streams.processors.services import ServiceMetricsProcessor
from tests.conftest import CLICKHOUSE_URL
from tests.expectations import (
    expected_active,
    expected_event_counts,
    expected_retention,
    without_times,
)
from tests.integration.test_playback_sql import (
    reference_play,
    reference_summary,
    reference_timeseries,
)
from tests.integration.test_services_bus import expected_metrics, make_messages
from tests.traffic import generate_batches
from tests.unit.test_funnels import RawEvent, brute_force_levels

PROJECT = "default"
OTHER = "other"
READ_KEY, OTHER_READ_KEY = "rk-default", "rk-other"
ADMIN_KEY, OTHER_ADMIN_KEY = "ak-default", "ak-other"
READ = {"Authorization": f"Bearer {READ_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}

MINUTE, HOUR, DAY = 60_000, 3_600_000, 86_400_000
NOW_MS = int(time.time() * 1000)
TODAY = utc_day(NOW_MS)
DAY_FROM, DAY_TO = TODAY - timedelta(days=27), TODAY
RANGE = {"from": DAY_FROM.isoformat(), "to": DAY_TO.isoformat()}
ERASED_USER = "user-3"

FUNNELS_TOML = """
[[funnels]]
name = "browse"
window_seconds = 3600
steps = [{ event = "session_start" }, { event = "page_view" }]

[[funnels]]
name = "pinch-menu"
window_seconds = 86400
steps = [
  { event = "page_view" },
  { event = "gesture", where = { gesture = "pinch" } },
  { event = "custom.menu_open" },
]
"""

# Every SPEC §5 path with its method and the response model its success returns.
SPEC_PATHS = [
    ("get", "/v1/metrics/active-users", "200", "ActiveUsersDay"),
    ("get", "/v1/metrics/retention", "200", "RetentionCohort"),
    ("post", "/v1/funnels/query", "200", "FunnelResult"),
    ("get", "/v1/funnels", "200", "FunnelDefinitionOut"),
    ("get", "/v1/funnels/{name}", "200", "FunnelResult"),
    ("get", "/v1/metrics/playback", "200", "PlaybackSummaryRow"),
    ("get", "/v1/metrics/playback/timeseries", "200", "PlaybackPoint"),
    ("get", "/v1/metrics/events", "200", "EventCount"),
    ("get", "/v1/metrics/services", "200", "ServiceMetrics"),
    ("delete", "/v1/users/{user_id}", "202", "ErasureScheduled"),
    # §5.1
    ("post", "/v1/insights/trends", "200", "TrendsResult"),
    ("post", "/v1/insights/active-users", "200", "ActiveUsersGroupDay"),
    ("post", "/v1/insights/retention", "200", "RetentionGroupCohort"),
    ("post", "/v1/funnels/query", "200", "FunnelBreakdownResult"),
    ("get", "/v1/insights/lifecycle", "200", "LifecyclePoint"),
    ("get", "/v1/insights/stickiness", "200", "StickinessPoint"),
    ("post", "/v1/insights/sessions", "200", "SessionsDay"),
    ("post", "/v1/insights/playback", "200", "PlaybackInsightResult"),
    ("get", "/v1/schema/events", "200", "SchemaEvent"),
    ("get", "/v1/schema/properties", "200", "SchemaProperty"),
]


# ---------------------------------------------------------------------------- data


def play_events() -> list[list[Event]]:
    """Plays of every kind (SPEC §4) on two days, on two devices, app versions and
    contents; user-3 (erased later) has one."""
    base = (NOW_MS // DAY - 2) * DAY + 10 * HOUR

    def play(
        play_id: str, user: str, device: str, app: str, steps: list[Any], session_id: str = ""
    ) -> list[Event]:
        return [
            Event(
                f"{play_id}-{number}",
                f"playback_{kind}",
                user,
                ts,
                session_id=session_id,
                device_model=device,
                app_version=app,
                props={"play_id": play_id, **props},
            )
            for number, (kind, ts, props) in enumerate(steps)
        ]

    t = base
    return [
        play(
            "p1",
            "user-1",
            "quest3",
            "3.0.0",
            [
                ("request", t, {"content_id": "c-1"}),
                ("start", t + 1_200, {"startup_ms": 1_200, "bitrate_kbps": 3_000}),
                ("heartbeat", t + 11_200, {"played_ms": 10_000, "bitrate_kbps": 3_000}),
                ("rebuffer", t + 11_700, {"duration_ms": 500}),
                ("quality_change", t + 11_701, {"from_kbps": 3_000, "to_kbps": 6_000}),
                ("heartbeat", t + 19_701, {"played_ms": 8_000, "bitrate_kbps": 6_000}),
                ("end", t + 21_701, {"played_ms": 2_000}),
            ],
        ),
        play(
            "p2",
            "user-2",
            "quest3",
            "3.0.0",
            [
                ("request", t + 5 * MINUTE, {"content_id": "c-1"}),
                ("error", t + 5 * MINUTE + 3_000, {"code": "E-START", "fatal": True}),
            ],
        ),
        play(
            "p3",
            "user-2",
            "quest3",
            "3.1.0",
            [
                ("request", t + HOUR, {"content_id": "c-2"}),
                ("end", t + HOUR + 4_000, {"played_ms": 0}),
            ],
        ),
        play(
            "p4",
            ERASED_USER,
            "pico4",
            "3.1.0",
            [
                ("request", t + 2 * HOUR, {"content_id": "c-2"}),
                ("start", t + 2 * HOUR + 800, {"startup_ms": 800, "bitrate_kbps": 1_500}),
                ("heartbeat", t + 2 * HOUR + 5_800, {"played_ms": 5_000, "bitrate_kbps": 1_500}),
                ("error", t + 2 * HOUR + 6_000, {"code": "E-PLAY", "fatal": True}),
            ],
            session_id="s-erased",  # the session summary holds rows of both users
        ),
        play(
            "p5",
            "user-4",
            "pico4",
            "3.1.0",
            [
                ("request", t + DAY, {}),
                (
                    "start",
                    t + DAY + 2_000,
                    {"startup_ms": 2_000, "content_id": "c-2", "bitrate_kbps": 6_000},
                ),
                ("heartbeat", t + DAY + 22_000, {"played_ms": 20_000, "bitrate_kbps": 6_000}),
                ("end", t + DAY + 23_000, {"played_ms": 1_000}),
            ],
            session_id="s-kept",
        ),
        play(
            "p6",
            "user-5",
            "quest3",
            "3.0.0",
            [  # never ends: closed by the idle timeout
                ("request", t + DAY + HOUR, {"content_id": "c-1"}),
                ("start", t + DAY + HOUR + 300, {"startup_ms": 300, "bitrate_kbps": 800}),
                ("heartbeat", t + DAY + HOUR + 4_300, {"played_ms": 4_000, "bitrate_kbps": 800}),
            ],
        ),
    ]


def service_messages() -> list[ServiceMessage]:
    generated = make_messages(random.Random(9), "svc", 160, NOW_MS - 6 * DAY, NOW_MS - HOUR)
    recent = NOW_MS - 2 * DAY
    return [
        *generated,
        SocialNotification(
            message_id="erased-social",
            user_id=ERASED_USER,
            kind="mention",
            status="delivered",
            ts=recent,
        ),
        EmailNotification(
            message_id="erased-email",
            user_id=ERASED_USER,
            template="welcome",
            status="sent",
            ts=recent,
        ),
    ]


@dataclass
class Seed:
    records: list[EventRecord]  # as delivered: replays included
    plays: list[list[Event]]
    messages: list[ServiceMessage]
    definitions: list[FunnelDefinition]
    funnels_file: Path


def build_seed(funnels_file: Path) -> Seed:
    batches = generate_batches(seed=5, users=60, days=26)
    records = [
        EventRecord(project=PROJECT, received_at=NOW_MS, events=[Event(**event) for event in batch])
        for batch in batches
    ]
    plays = play_events()
    records += [EventRecord(project=PROJECT, received_at=NOW_MS, events=play) for play in plays]
    records.append(
        EventRecord(
            project=OTHER,
            received_at=NOW_MS,
            events=[Event("o-1", "page_view", "user-1", NOW_MS - 2 * HOUR, props={"url": "x"})],
        )
    )
    records += records[:4]  # a replay after a worker restart
    funnels_file.write_text(FUNNELS_TOML)
    return Seed(records, plays, service_messages(), load_funnels(funnels_file), funnels_file)


def write(clickhouse: ClickHouse, output: ProcessorOutput) -> None:
    for table in output.tables:
        if table.rows:
            clickhouse.insert(table.table, table.columns, table.rows)


def load(clickhouse: ClickHouse, seed: Seed) -> None:
    """What the worker's processors would write, one flush per 25 records."""
    migrate(clickhouse)
    processors = [
        EventsProcessor(),
        ActivityProcessor(),
        PlaysProcessor(),
        FunnelsProcessor(seed.definitions),
    ]
    for start in range(0, len(seed.records), 25):
        for offset, record in enumerate(seed.records[start : start + 25]):
            for processor in processors:
                processor.process(record, Position(0, start + offset))
        for processor in processors:
            write(clickhouse, processor.flush(NOW_MS))
    for processor in processors:  # idle plays close a day later
        write(clickhouse, processor.flush(NOW_MS + DAY))
    services = ServiceMetricsProcessor()
    for offset, message in enumerate(seed.messages + seed.messages[:10]):
        services.process(topic_for(message).name, encode_message(message), Position(0, offset))
    write(clickhouse, services.flush(NOW_MS))


# ---------------------------------------------------------------------------- expectations


def raw_events(seed: Seed, without: str | None = None) -> list[RawEvent]:
    return [
        RawEvent(event.user_id, event.event_id, event.ts, event.type, event.props, record.project)
        for record in seed.records
        for event in record.events
        if event.user_id != without
    ]


def records_without(seed: Seed, user: str | None) -> list[EventRecord]:
    return [
        EventRecord(
            project=record.project,
            received_at=record.received_at,
            events=[event for event in record.events if event.user_id != user],
        )
        for record in seed.records
    ]


def expected_funnel(
    seed: Seed, steps: list[FunnelStep], window_s: int, without: str | None = None
) -> dict[str, Any]:
    """SPEC §5 funnel answer from the brute-force levels: users[k] = users whose furthest
    step is ≥ k; conversions are ratios to the first and previous step (0 for 0/0; the
    first step's "previous" is itself)."""
    levels = brute_force_levels(
        raw_events(seed, without), steps, window_s * 1000, DAY_FROM, DAY_TO, PROJECT
    )
    counts = [sum(level >= k for level in levels.values()) for k in range(1, len(steps) + 1)]

    def ratio(part: int, whole: int) -> float:
        return part / whole if whole else 0.0

    return {
        "steps": [
            {
                "event": step.event,
                "users": users,
                "conversion_from_start": ratio(users, counts[0]),
                "conversion_from_previous": ratio(users, counts[max(index - 1, 0)]),
                "median_time_to_convert_s": None,
                "avg_time_to_convert_s": None,
            }
            for index, (step, users) in enumerate(zip(steps, counts, strict=True))
        ]
    }


def expected_events(seed: Seed, interval: str) -> list[dict[str, Any]]:
    if interval == "day":
        counts = expected_event_counts(seed.records, PROJECT)
    else:
        first: dict[str, tuple[str, str]] = {}
        for record in seed.records:
            if record.project == PROJECT:
                for event in record.events:
                    hour = datetime.fromtimestamp(event.ts // HOUR * HOUR / 1000, UTC)
                    first.setdefault(
                        event.event_id, (hour.strftime("%Y-%m-%dT%H:%M:%SZ"), event.type)
                    )
        counts = defaultdict(int)
        for bucket in first.values():
            counts[bucket] += 1
    in_range = {
        (t, type_): n for (t, type_), n in counts.items() if RANGE["from"] <= t[:10] <= RANGE["to"]
    }
    return [{"t": t, "type": type_, "count": in_range[(t, type_)]} for t, type_ in sorted(in_range)]


def expected_plays(seed: Seed, without: str | None = None) -> list[Any]:
    return [reference_play(events) for events in seed.plays if events[0].user_id != without]


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(
    params=[
        pytest.param("server_clickhouse", marks=pytest.mark.clickhouse, id="clickhouse-server"),
        pytest.param("embedded_clickhouse", marks=pytest.mark.chdb, id="chdb"),
    ]
)
def clickhouse(request: pytest.FixtureRequest) -> ClickHouse:
    engine: ClickHouse = request.getfixturevalue(request.param)
    return engine


@pytest.fixture
def seed(tmp_path: Path) -> Seed:
    return build_seed(tmp_path / "funnels.toml")


def api_settings(seed: Seed, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "read_keys": f"{PROJECT}:{READ_KEY},{OTHER}:{OTHER_READ_KEY}",
        "admin_keys": f"{PROJECT}:{ADMIN_KEY},{OTHER}:{OTHER_ADMIN_KEY}",
        "funnels_file": seed.funnels_file,
        **overrides,
    }
    return Settings(**values)


@pytest.fixture
async def app(clickhouse: ClickHouse, seed: Seed) -> AsyncIterator[FastAPI]:
    load(clickhouse, seed)
    application = create_app(api_settings(seed), clickhouse)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
        yield http


async def get(client: httpx.AsyncClient, path: str, **params: str) -> Any:
    response = await client.get(path, params={**RANGE, **params}, headers=READ)
    assert response.status_code == 200, response.text
    return response.json()


# ---------------------------------------------------------------------------- answers


async def test_active_users(client: httpx.AsyncClient, seed: Seed) -> None:
    got = await get(client, "/v1/metrics/active-users")
    assert got == expected_active(seed.records, DAY_FROM, DAY_TO, PROJECT)
    assert any(day["dau"] for day in got)


@pytest.mark.parametrize("period", ["day", "week"])
async def test_retention(client: httpx.AsyncClient, seed: Seed, period: str) -> None:
    got = await get(client, "/v1/metrics/retention", period=period)
    # The API lists the periods started by its own clock: a run may cross midnight UTC.
    today = utc_day(int(time.time() * 1000))
    assert got == expected_retention(seed.records, DAY_FROM, DAY_TO, period, today, PROJECT)
    assert got


@pytest.mark.parametrize("interval", ["day", "hour"])
async def test_events_are_counted_once(
    client: httpx.AsyncClient, seed: Seed, interval: str
) -> None:
    got = await get(client, "/v1/metrics/events", interval=interval)
    assert got == expected_events(seed, interval)
    assert {row["type"] for row in got} >= {"page_view", "playback_start"}


async def test_adhoc_funnel_with_string_and_object_steps(
    client: httpx.AsyncClient, seed: Seed
) -> None:
    body = {
        "steps": [
            "page_view",
            {"event": "gesture", "where": {"gesture": "pinch"}},
            "custom.menu_open",
        ],
        "window_seconds": 86_400,
        **RANGE,
    }
    response = await client.post("/v1/funnels/query", json=body, headers=READ)
    assert response.status_code == 200, response.text
    steps = [
        FunnelStep("page_view"),
        FunnelStep("gesture", {"gesture": "pinch"}),
        FunnelStep("custom.menu_open"),
    ]
    expected = expected_funnel(seed, steps, 86_400)
    assert without_times(response.json()["steps"]) == without_times(expected["steps"])
    times = [step["median_time_to_convert_s"] for step in response.json()["steps"]]
    assert times[0] is None
    assert all(time is not None and time >= 0 for time in times[1:])
    assert expected["steps"][-1]["users"] > 0, "the data reaches the last step"


async def test_predefined_funnels_list_and_read(client: httpx.AsyncClient, seed: Seed) -> None:
    listed = await get(client, "/v1/funnels")
    assert listed == [
        {
            "name": "browse",
            "steps": [{"event": "session_start", "where": {}}, {"event": "page_view", "where": {}}],
            "window_seconds": 3600,
        },
        {
            "name": "pinch-menu",
            "steps": [
                {"event": "page_view", "where": {}},
                {"event": "gesture", "where": {"gesture": "pinch"}},
                {"event": "custom.menu_open", "where": {}},
            ],
            "window_seconds": 86400,
        },
    ]
    for definition in seed.definitions:
        live = await get(client, f"/v1/funnels/{definition.name}")
        assert live == expected_funnel(seed, definition.steps, definition.window_seconds)
        adhoc = await client.post(
            "/v1/funnels/query",
            json={
                "steps": [{"event": s.event, "where": s.where} for s in definition.steps],
                "window_seconds": definition.window_seconds,
                **RANGE,
            },
            headers=READ,
        )
        assert without_times(adhoc.json()["steps"]) == without_times(live["steps"]), (
            "the same definition gives the same numbers both ways"
        )


@pytest.mark.parametrize("group_by", ["none", "content_id", "device_model", "app_version"])
async def test_playback_summary(client: httpx.AsyncClient, seed: Seed, group_by: str) -> None:
    got = await get(client, "/v1/metrics/playback", group_by=group_by)
    assert got == reference_summary(expected_plays(seed), DAY_FROM, DAY_TO, group_by)


@pytest.mark.parametrize("group_by", ["content_id", "device_model"])
async def test_playback_summary_limit_keeps_the_groups_with_most_plays(
    client: httpx.AsyncClient, seed: Seed, group_by: str
) -> None:
    full = reference_summary(expected_plays(seed), DAY_FROM, DAY_TO, group_by)
    assert len(full) >= 2
    for limit in (1, 2, len(full), MAX_LIMIT):
        got = await get(client, "/v1/metrics/playback", group_by=group_by, limit=str(limit))
        assert got == full[:limit], limit
    none = await get(client, "/v1/metrics/playback", group_by="none", limit="1")
    assert none == reference_summary(expected_plays(seed), DAY_FROM, DAY_TO, "none")


@pytest.mark.parametrize(
    ("path", "params"),
    [
        pytest.param("/v1/metrics/playback", {"group_by": "content_id"}, id="summary"),
        pytest.param("/v1/metrics/playback/timeseries", {"interval": "hour"}, id="series"),
    ],
)
async def test_playback_bytes_are_what_the_response_model_would_send(
    client: httpx.AsyncClient, seed: Seed, path: str, params: dict[str, str]
) -> None:
    """These endpoints skip pydantic for speed: their bytes must still be the model's."""
    response = await client.get(path, params={**RANGE, **params}, headers=READ)
    assert response.status_code == 200
    adapter: TypeAdapter[Any] = SUMMARY if path.endswith("playback") else SERIES
    assert response.content == adapter.dump_json(adapter.validate_python(response.json()))


@pytest.mark.parametrize("interval", ["minute", "hour", "day"])
async def test_playback_timeseries(client: httpx.AsyncClient, seed: Seed, interval: str) -> None:
    params = {"from": (TODAY - timedelta(days=6)).isoformat()} if interval == "minute" else {}
    got = await get(client, "/v1/metrics/playback/timeseries", interval=interval, **params)
    day_from = TODAY - timedelta(days=6) if interval == "minute" else DAY_FROM
    assert got == reference_timeseries(expected_plays(seed), day_from, DAY_TO, interval)
    assert len(got) >= 2


async def test_services(client: httpx.AsyncClient, seed: Seed) -> None:
    got = await get(client, "/v1/metrics/services")
    assert got == expected_metrics(seed.messages, PROJECT, DAY_FROM, DAY_TO)
    assert got["totals"]["social_delivered"] > 0


async def test_health_ready_metrics_and_cache(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).json() == {"status": "ok"}
    ready = await client.get("/ready")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "checks": {"clickhouse": "ok"}}
    closed = {"from": DAY_FROM.isoformat(), "to": (TODAY - timedelta(days=1)).isoformat()}
    first = await client.get("/v1/metrics/active-users", params=closed, headers=READ)
    second = await client.get("/v1/metrics/active-users", params=closed, headers=READ)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
    assert first.content == second.content
    metrics = (await client.get("/metrics")).text
    assert "cache_hit_ratio " in metrics
    assert (
        'http_requests_total{method="GET",route="/v1/metrics/active-users",status="200"}' in metrics
    )


# ---------------------------------------------------------------------------- erasure


def rows_of(clickhouse: ClickHouse, user: str) -> dict[str, int]:
    params = {"project": PROJECT, "user_id": user, "user_topics": USER_KEYED_TOPICS}
    return {
        table: int(
            clickhouse.execute(f"SELECT count() FROM {table} WHERE {condition}", params)[0][0]
        )
        for table, condition in ERASURE_TARGETS.items()
    }


async def wait_for_mutations(clickhouse: ClickHouse) -> None:
    deadline = time.monotonic() + 60
    while pending_mutations(clickhouse):
        assert time.monotonic() < deadline, "erasure mutations did not finish"
        await asyncio.sleep(0.2)


@pytest.fixture
def checker(clickhouse: ClickHouse) -> Iterator[ClickHouse]:
    """An engine for the test's own queries while the app runs: a ServerClickHouse is one
    connection, and the app's pool (and its erasure watcher) already uses that one."""
    if not isinstance(clickhouse, ServerClickHouse):
        yield clickhouse
        return
    own = ServerClickHouse(f"{CLICKHOUSE_URL.rsplit('/', 1)[0]}/{clickhouse.database}")
    yield own
    own.close()


async def test_erasure_removes_the_user_everywhere(
    client: httpx.AsyncClient, checker: ClickHouse, seed: Seed
) -> None:
    clickhouse = checker
    keyed_by_user = clickhouse.execute(
        "SELECT DISTINCT table FROM system.columns WHERE database = %(db)s "
        "AND name IN ('user_id', 'user_hash') AND table IN (SELECT name FROM system.tables "
        "WHERE database = %(db)s AND engine NOT IN ('Null', 'MaterializedView'))",
        {"db": clickhouse.database},
    )
    assert {str(table) for (table,) in keyed_by_user} <= set(ERASURE_TARGETS)
    before = rows_of(clickhouse, ERASED_USER)
    assert all(before.values()), f"the user has rows in every table: {before}"
    untouched = rows_of(clickhouse, "user-4")
    cached = await get(client, "/v1/metrics/active-users")

    response = await client.delete(f"/v1/users/{ERASED_USER}", headers=ADMIN)
    assert response.status_code == 202
    assert response.json() == {"status": "scheduled"}
    await wait_for_mutations(clickhouse)
    assert rows_of(clickhouse, ERASED_USER) == dict.fromkeys(ERASURE_TARGETS, 0)
    assert rows_of(clickhouse, "user-4") == untouched

    remaining = records_without(seed, ERASED_USER)
    active = await get(client, "/v1/metrics/active-users")
    assert active == expected_active(remaining, DAY_FROM, DAY_TO, PROJECT)
    assert active != cached, "the cached answer was dropped"
    for period in ("day", "week"):
        got = await get(client, "/v1/metrics/retention", period=period)
        today = utc_day(int(time.time() * 1000))  # the API's clock, as in test_retention
        assert got == expected_retention(remaining, DAY_FROM, DAY_TO, period, today, PROJECT)
    playback = await get(client, "/v1/metrics/playback", group_by="none")
    assert playback == reference_summary(
        expected_plays(seed, ERASED_USER), DAY_FROM, DAY_TO, "none"
    )
    definition = seed.definitions[1]
    live = await get(client, f"/v1/funnels/{definition.name}")
    assert live == expected_funnel(seed, definition.steps, definition.window_seconds, ERASED_USER)
    services = await get(client, "/v1/metrics/services")
    kept = [m for m in seed.messages if m.message_id not in ("erased-social", "erased-email")]
    assert services == expected_metrics(kept, PROJECT, DAY_FROM, DAY_TO)

    again = await client.delete(f"/v1/users/{ERASED_USER}", headers=ADMIN)
    assert (again.status_code, again.json()) == (202, {"status": "scheduled"})
    unknown = await client.delete("/v1/users/never-seen", headers=ADMIN)
    assert unknown.status_code == 202


# ---------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        pytest.param("GET", "/v1/metrics/events", {}, 401, id="no key"),
        pytest.param("GET", "/v1/metrics/events", {"Authorization": "Bearer x"}, 401, id="bad key"),
        pytest.param(
            "GET", "/v1/metrics/events?project=other", READ, 403, id="another project's data"
        ),
        pytest.param(
            "GET",
            "/v1/metrics/events",
            {"Authorization": f"Bearer {OTHER_READ_KEY}"},
            403,
            id="key of another project, default project",
        ),
        pytest.param("DELETE", "/v1/users/user-1", READ, 403, id="read key erasing"),
        pytest.param("DELETE", "/v1/users/user-1", {}, 401, id="erasing without a key"),
        pytest.param(
            "DELETE",
            "/v1/users/user-1",
            {"Authorization": f"Bearer {OTHER_ADMIN_KEY}"},
            403,
            id="admin key of another project",
        ),
        pytest.param("GET", "/v1/funnels/no-such-funnel", READ, 404, id="unknown funnel"),
        pytest.param("GET", "/v1/metrics/nothing", READ, 404, id="unknown path"),
        pytest.param("GET", "/v1/metrics/events?from=2026-02-30", READ, 400, id="bad date"),
        pytest.param(
            "GET",
            "/v1/metrics/events?from=2026-10-02&to=2026-10-01",
            READ,
            400,
            id="from after to",
        ),
        pytest.param(
            "GET",
            "/v1/metrics/events?from=2024-01-01&to=2026-01-01",
            READ,
            400,
            id="range too long",
        ),
        pytest.param(
            "GET", "/v1/metrics/playback?group_by=user_id", READ, 400, id="unknown group_by"
        ),
        pytest.param("GET", "/v1/metrics/playback?limit=0", READ, 400, id="limit 0"),
        pytest.param("GET", "/v1/metrics/playback?limit=ten", READ, 400, id="limit not a number"),
        pytest.param("GET", "/v1/metrics/events?interval=week", READ, 400, id="unknown interval"),
        pytest.param("GET", "/v1/metrics/retention?period=month", READ, 400, id="unknown period"),
    ],
)
async def test_refusals(
    client: httpx.AsyncClient, method: str, path: str, headers: dict[str, str], status: int
) -> None:
    response = await client.request(method, path, headers=headers)
    assert response.status_code == status
    assert isinstance(response.json()["detail"], str)


async def test_other_project_is_separate(client: httpx.AsyncClient) -> None:
    response = await client.get(
        "/v1/metrics/events",
        params={**RANGE, "project": OTHER},
        headers={"Authorization": f"Bearer {OTHER_READ_KEY}"},
    )
    assert response.status_code == 200
    assert [(row["type"], row["count"]) for row in response.json()] == [("page_view", 1)]


# ---------------------------------------------------------------------------- OpenAPI


async def test_openapi_lists_every_spec_path_with_its_response_schema(
    client: httpx.AsyncClient,
) -> None:
    document = (await client.get("/openapi.json")).json()
    schemas = document["components"]["schemas"]
    for method, path, status, model in SPEC_PATHS:
        operation = document["paths"][path][method]
        content = operation["responses"][status]["content"]["application/json"]["schema"]
        shape = content.get("items", content)
        references = [option["$ref"] for option in shape.get("anyOf", [shape])]
        assert f"#/components/schemas/{model}" in references, (method, path)
        assert "400" in operation["responses"], (method, path)
        assert operation["security"], (method, path)
    fields = {
        "ActiveUsersDay": {"day", "dau", "wau", "mau", "stickiness"},
        "RetentionCohort": {"cohort", "size", "retained"},
        "FunnelStepResult": {
            "event",
            "users",
            "conversion_from_start",
            "conversion_from_previous",
            "median_time_to_convert_s",
            "avg_time_to_convert_s",
        },
        "PlaybackSummaryRow": {
            "group",
            "plays",
            "started",
            "video_start_failures",
            "exits_before_start",
            "playback_failures",
            "startup_ms_p50",
            "startup_ms_p95",
            "rebuffer_ratio",
            "rebuffer_count",
            "bitrate_switches",
            "avg_bitrate_kbps",
            "watch_hours",
            *QOE_FIELDS,
        },
        "EventCount": {"t", "type", "count"},
        "ServiceMetrics": {"days", "totals"},
    }
    for model, names in fields.items():
        assert set(schemas[model]["properties"]) == names, model
    assert document["paths"]["/v1/funnels/{name}"]["get"]["responses"]["404"]
    assert document["paths"]["/v1/funnels/query"]["post"]["requestBody"]


# SPEC §4 "QoE beyond the counts" (issue 17) and the experience sub-scores.
QOE_FIELDS = (
    "video_start_failure_pct",
    "exit_before_start_pct",
    "playback_failure_pct",
    "startup_ms_p90",
    "startup_ms_p99",
    "rebuffer_frequency",
    "rebuffer_duration_ms_avg",
    "downshifts",
    "upshifts",
    "downshift_pct",
    "errors",
    "avg_fps",
    "dropped_frame_pct",
    "experience_score",
    "success_score",
    "startup_score",
    "smoothness_score",
    "quality_score",
)


# ---------------------------------------------------------------------------- garbage

GARBAGE = [
    "",
    "garbage",
    "2026-02-30",
    "9999-99-99",
    "-1",
    "1e309",
    "0x10",
    "NaN",
    "' OR 1=1 --",
    "%(project)s",
    "\x00",
    "ü" * 50,
    "x" * 5000,
    "2026-10-01T00:00:00Z",
]
# (method, path with {} for the path parameter, parameters to garble)
ENDPOINTS: list[tuple[str, str, list[str]]] = [
    ("GET", "/v1/metrics/active-users", ["from", "to", "project"]),
    ("GET", "/v1/metrics/retention", ["from", "to", "period", "project"]),
    ("GET", "/v1/funnels", ["project"]),
    ("GET", "/v1/funnels/{}", ["name", "from", "to", "project"]),
    ("POST", "/v1/funnels/query", ["steps", "window_seconds", "from", "to", "project", "body"]),
    ("GET", "/v1/metrics/playback", ["from", "to", "group_by", "limit", "project"]),
    ("GET", "/v1/metrics/playback/timeseries", ["from", "to", "interval", "project"]),
    ("GET", "/v1/metrics/events", ["from", "to", "interval", "project"]),
    ("GET", "/v1/metrics/services", ["from", "to", "project"]),
    ("DELETE", "/v1/users/{}", ["user_id", "project"]),
]
CASES = [
    pytest.param(method, path, param, id=f"{method} {path.replace('{}', '{..}')} {param}")
    for method, path, params in ENDPOINTS
    for param in params
]


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("server", marks=pytest.mark.clickhouse, id="clickhouse-server"),
        pytest.param("chdb", marks=pytest.mark.chdb, id="chdb"),
    ],
)
def migrated_engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ClickHouse]:
    """One empty, migrated database per engine for the garbage cases (nothing to seed)."""
    name = f"t_api_garbage_{int(time.time() * 1000)}"
    if request.param == "server":
        engine: ClickHouse = ServerClickHouse(f"{CLICKHOUSE_URL.rsplit('/', 1)[0]}/{name}")
    else:
        engine = EmbeddedClickHouse(request.getfixturevalue("chdb_path"), name)
    migrate(engine)
    yield engine
    engine.execute(f"DROP DATABASE IF EXISTS {name}")
    engine.close()


@pytest.mark.parametrize(("method", "path", "param"), CASES)
async def test_garbage_is_never_a_server_error(
    migrated_engine: ClickHouse, tmp_path: Path, method: str, path: str, param: str
) -> None:
    funnels_file = tmp_path / "funnels.toml"
    funnels_file.write_text(FUNNELS_TOML)
    settings = Settings(
        read_keys=f"{PROJECT}:{READ_KEY}",
        admin_keys=f"{PROJECT}:{ADMIN_KEY}",
        funnels_file=funnels_file,
    )
    application = create_app(settings, migrated_engine)
    headers = ADMIN if method == "DELETE" else READ
    failures = []
    statuses: set[int] = set()
    transport = httpx.ASGITransport(app=application)
    async with (
        application.router.lifespan_context(application),
        httpx.AsyncClient(transport=transport, base_url="http://api") as http,
    ):
        for value in GARBAGE:
            query: dict[str, str] = {}
            segment = "browse"
            body: Any = {"steps": ["page_view", "gesture"], "window_seconds": 60}
            if param in ("name", "user_id"):
                segment = value
            elif method == "POST" and param == "body":
                body = value
            elif method == "POST" and param != "project":
                body[param] = value
            else:
                query[param] = value
            url = path.replace("{}", quote(segment, safe=""))
            kwargs: dict[str, Any] = {"params": query, "headers": headers}
            if method == "POST":
                kwargs["json"] = body
            response = await http.request(method, url, **kwargs)
            statuses.add(response.status_code)
            detail = response.json().get("detail") if response.status_code >= 400 else None
            if response.status_code >= 500 or (response.status_code >= 400 and not detail):
                failures.append((value[:20], response.status_code, response.text[:200]))
    assert failures == []
    assert 401 not in statuses, "the key was accepted: the parameter itself was judged"
    assert statuses & {400, 403, 404}, f"some value was refused: {statuses}"


# ---------------------------------------------------------------------------- server pool


@pytest.mark.clickhouse
async def test_server_pool_answers_concurrent_requests(
    server_clickhouse: ServerClickHouse, seed: Seed
) -> None:
    """Cluster mode: the app opens its own connections, at most POOL_SIZE, one per
    concurrent query, and every concurrent answer is right."""
    load(server_clickhouse, seed)
    url = f"{CLICKHOUSE_URL.rsplit('/', 1)[0]}/{server_clickhouse.database}"
    application = create_app(api_settings(seed, mode="cluster", clickhouse_url=url))
    expected = expected_active(seed.records, DAY_FROM, DAY_TO, PROJECT)
    transport = httpx.ASGITransport(app=application)
    async with application.router.lifespan_context(application):
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
            days = [(DAY_FROM + timedelta(days=n)).isoformat() for n in range(20)]
            responses = await asyncio.gather(
                *(
                    http.get(
                        "/v1/metrics/active-users",
                        params={"from": d, "to": RANGE["to"]},
                        headers=READ,
                    )
                    for d in days
                )
            )
        pool = application.state.context.pool
        assert 1 <= pool.opened <= POOL_SIZE
    for day, response in zip(days, responses, strict=True):
        assert response.status_code == 200
        assert response.json() == [row for row in expected if row["day"] >= day]
