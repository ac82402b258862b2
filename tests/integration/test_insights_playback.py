"""`POST /v1/insights/playback` (SPEC §5.1) through HTTP on both engines: the answer for
filters, breakdowns and intervals equals the reference over the generated plays of
test_playback_sql.py, `/v1/metrics/playback` carries the same QoE fields, and bad bodies
are a 400 with a reason."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from api.app import create_app
from common.settings import Settings
from schemas.output import TableRows
from sinks.clickhouse import ClickHouse
from sinks.migrate import migrate
from sinks.queries.properties import Filter, Slice
from tests.integration.test_playback_insight_sql import FIRST, LAST, reference_insight
from tests.integration.test_playback_sql import (
    PROJECT,
    Generated,
    _insert,
    blocks,
    generated,
    reference_play,
    reference_summary,
)

__all__ = ["blocks", "generated"]  # module fixtures shared with test_playback_sql.py

READ = {"Authorization": "Bearer rk"}
PATH = "/v1/insights/playback"
RANGE = {"from": FIRST.isoformat(), "to": LAST.isoformat()}


@pytest.fixture
async def api(clickhouse: ClickHouse, blocks: list[TableRows]) -> AsyncIterator[httpx.AsyncClient]:
    migrate(clickhouse)
    _insert(clickhouse, blocks)
    application = create_app(Settings(read_keys=f"{PROJECT}:rk"), clickhouse)
    application.state.context.today = lambda: LAST
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        yield client


def _filters(body: dict[str, Any]) -> list[Filter]:
    return [Filter(f["property"], f["op"], f.get("value")) for f in body.get("filters", [])]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({}, id="everything, no interval"),
        pytest.param(
            {
                "filters": [{"property": "device_model", "op": "in", "value": ["quest2", "pico4"]}],
                "breakdown": ["props.content_id"],
                "breakdown_limit": 3,
                "interval": "day",
            },
            id="filter, breakdown by content with $other, per day",
        ),
        pytest.param(
            {
                "filters": [{"property": "props.autoplay", "op": "eq", "value": True}],
                "breakdown": ["app_version", "os"],
                "interval": "hour",
            },
            id="bool prop filter, two-property breakdown, per hour",
        ),
    ],
)
async def test_answer_equals_the_reference(
    api: httpx.AsyncClient, generated: Generated, body: dict[str, Any]
) -> None:
    response = await api.post(PATH, json={**RANGE, "project": PROJECT, **body}, headers=READ)
    assert response.status_code == 200, response.text
    plays = [reference_play(events) for events in generated.plays.values()]
    where = Slice(
        FIRST, LAST, _filters(body), body.get("breakdown", []), body.get("breakdown_limit")
    )
    assert response.json() == {"groups": reference_insight(plays, where, body.get("interval"))}


async def test_metrics_endpoint_carries_the_qoe_fields(
    api: httpx.AsyncClient, generated: Generated
) -> None:
    response = await api.get(
        "/v1/metrics/playback",
        params={**RANGE, "project": PROJECT, "group_by": "device_model"},
        headers=READ,
    )
    assert response.status_code == 200, response.text
    plays = [reference_play(events) for events in generated.plays.values()]
    assert response.json() == reference_summary(plays, FIRST, LAST, "device_model")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param({"breakdown": ["content_id"]}, "unknown property", id="not a property"),
        pytest.param(
            {"filters": [{"property": "os", "op": "like", "value": "x"}]},
            "unknown op",
            id="unknown op",
        ),
        pytest.param(
            {"filters": [{"property": "props.fov", "op": "gt", "value": "wide"}]},
            "needs a number",
            id="numeric op with text",
        ),
        pytest.param({"interval": "week"}, "interval", id="unknown interval"),
        pytest.param({"breakdown_limit": 0}, "breakdown_limit", id="breakdown_limit 0"),
        pytest.param({"from": "2026-01-02", "to": "2026-01-01"}, "after", id="from after to"),
        pytest.param({"colour": "red"}, "colour", id="unknown field"),
        pytest.param({"filters": "os=horizon"}, "filters", id="filters not a list"),
        pytest.param(
            {"from": "2026-01-01", "to": "2026-01-31", "interval": "minute"},
            "at most",
            id="minutes over more than 7 days",
        ),
    ],
)
async def test_bad_bodies_are_a_400_with_the_reason(
    api: httpx.AsyncClient, body: dict[str, Any], reason: str
) -> None:
    response = await api.post(
        PATH, json={**RANGE, **body}, headers=READ, params={"project": PROJECT}
    )
    assert response.status_code == 400, response.text
    assert reason in response.json()["detail"]


async def test_a_read_key_is_required(api: httpx.AsyncClient) -> None:
    response = await api.post(PATH, json=RANGE, params={"project": PROJECT})
    assert response.status_code == 401
