"""`GET /v1/metrics/playback`, `/v1/metrics/playback/timeseries` (SPEC §4 "Playback
quality" and "QoE beyond the counts", §5) and `POST /v1/insights/playback` (§5.1: the same
fields filtered and broken down by the properties of each play's first event). Plays count
on the UTC day/minute of their first event.

Concurrent viewers (SPEC §4): `GET /v1/metrics/playback/concurrent` (`peak_concurrent`
per bucket, from the settled plays, cached like the other reads) and
`GET /v1/metrics/playback/concurrent/now` (open plays seen in the last minute, from the
stored events). "Now" depends on the clock as much as on the data, so it never goes
through the cache: every request reads the stores (`X-Cache: miss`), within the
freshness target by construction."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Annotated

import orjson
from fastapi import APIRouter, Body, Query
from pydantic import TypeAdapter
from starlette.responses import Response

from api.deps import Context, Days, Fresh, KeyProject, ReadProject, body_project
from api.errors import ERROR_RESPONSES
from api.models import (
    ConcurrencyPoint,
    ConcurrentNow,
    PlaybackInsightBody,
    PlaybackInsightResult,
    PlaybackPoint,
    PlaybackSummaryRow,
)
from api.params import MAX_MINUTE_RANGE_DAYS, DayRange, limit_range
from api.results import JSONBytes
from api.routes.insights import ProjectQuery, insight_slice, respond_to_body
from sinks.queries.playback import GroupBy, Interval, playback_summary, playback_timeseries
from sinks.queries.playback_concurrency import (
    LOOKBACK_DAYS,
    concurrent_viewers_now,
    peak_concurrent,
)
from sinks.queries.playback_insight import playback_insight

router = APIRouter(tags=["playback"], responses=ERROR_RESPONSES)

SUMMARY = TypeAdapter(list[PlaybackSummaryRow])
SERIES = TypeAdapter(list[PlaybackPoint])
INSIGHT = TypeAdapter(PlaybackInsightResult)
CONCURRENCY = TypeAdapter(list[ConcurrencyPoint])
NOW = TypeAdapter(ConcurrentNow)
MAX_LIMIT = 100_000
BucketInterval = Annotated[
    Interval,
    Query(description=f"bucket size (UTC); minute covers ≤ {MAX_MINUTE_RANGE_DAYS} days"),
]


def bucketed_range(days: DayRange, interval: Interval | None) -> DayRange:
    """The days an answer in `interval` buckets covers: minute buckets cover at most
    MAX_MINUTE_RANGE_DAYS (a defaulted `from` moves up to fit; else BadRequest, a 400)."""
    if interval == "minute":
        return limit_range(days, MAX_MINUTE_RANGE_DAYS, "interval=minute")
    return days


@router.get("/v1/metrics/playback", response_model=list[PlaybackSummaryRow])
async def get_playback(
    project: ReadProject,
    days: Days,
    context: Context,
    fresh: Fresh,
    group_by: Annotated[GroupBy, Query(description="one row per value, or one row 'all'")] = (
        "none"
    ),
    limit: Annotated[
        int | None,
        Query(ge=1, le=MAX_LIMIT, description="only the N groups with most plays; all if absent"),
    ] = None,
) -> Response:
    """Playback quality of the plays that started in [from, to]: one row with group "all"
    for group_by=none (zeros without plays), else one row per value, most plays first
    (only the first `limit` when given)."""
    # playback_summary builds exactly the model's fields and types: orjson writes the
    # bytes pydantic would, without validating ~20k content rows again.
    return await context.results.respond(
        fresh=fresh,
        endpoint="playback",
        project=project,
        params=(*days.key(), ("group_by", group_by), ("limit", str(limit or ""))),
        first_day=days.day_from,
        last_day=days.day_to,
        adapter=SUMMARY,
        query=lambda ch: playback_summary(ch, project, days.day_from, days.day_to, group_by, limit),
        encode=orjson.dumps,
    )


@router.get("/v1/metrics/playback/timeseries", response_model=list[PlaybackPoint])
async def get_playback_timeseries(
    project: ReadProject,
    days: Days,
    context: Context,
    fresh: Fresh,
    interval: BucketInterval = "hour",
) -> Response:
    """The playback metrics per bucket of the plays' first events, for buckets that have
    plays, in time order."""
    days = bucketed_range(days, interval)
    return await context.results.respond(
        fresh=fresh,
        endpoint="playback-timeseries",
        project=project,
        params=(*days.key(), ("interval", interval)),
        first_day=days.day_from,
        last_day=days.day_to,
        adapter=SERIES,
        query=lambda ch: playback_timeseries(ch, project, days.day_from, days.day_to, interval),
        encode=orjson.dumps,
    )


@router.get("/v1/metrics/playback/concurrent", response_model=list[ConcurrencyPoint])
async def get_playback_concurrent(
    project: ReadProject,
    days: Days,
    context: Context,
    fresh: Fresh,
    interval: BucketInterval = "hour",
) -> Response:
    """Peak concurrent viewers per bucket of [from, to] that has any, in time order, from
    the plays that have ended or idled out (the last idle timeout is still open: see
    `/concurrent/now` and InfluxDB's `concurrent_viewers` for the live view)."""
    days = bucketed_range(days, interval)
    return await context.results.respond(
        fresh=fresh,
        endpoint="playback-concurrent",
        project=project,
        params=(*days.key(), ("interval", interval)),
        # Plays are stored under their first event's day: the day before counts too.
        first_day=days.day_from - timedelta(days=LOOKBACK_DAYS),
        last_day=days.day_to,
        adapter=CONCURRENCY,
        query=lambda ch: peak_concurrent(ch, project, days.day_from, days.day_to, interval),
    )


@router.get("/v1/metrics/playback/concurrent/now", response_model=ConcurrentNow)
async def get_playback_concurrent_now(project: ReadProject, context: Context) -> Response:
    """Plays with an event in the last 60 s that no `playback_end` or fatal
    `playback_error` ended, read from the stores on every request (never cached)."""
    now_ms = int(time.time() * 1000)
    viewers = await context.results.pool.run(
        lambda ch: concurrent_viewers_now(ch, project, now_ms)
    )
    moment = datetime.fromtimestamp(now_ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    body = NOW.dump_json(ConcurrentNow(t=moment, concurrent_viewers=viewers))
    return JSONBytes(body, headers={"X-Cache": "miss", "Cache-Control": "no-store"})


@router.post("/v1/insights/playback", response_model=PlaybackInsightResult, tags=["insights"])
async def query_playback(
    key_project: KeyProject,
    context: Context,
    fresh: Fresh,
    body: Annotated[PlaybackInsightBody, Body()],
    project: ProjectQuery = None,
) -> Response:
    """The playback and QoE fields of the plays whose first event is in [from, to] and
    matches the filters, per breakdown value of that event (top `breakdown_limit`, the
    rest as `$other`), over the range and, with `interval`, per bucket that has plays."""
    chosen = body_project(key_project, body.project, project)
    days, where = insight_slice(body, context)
    days = bucketed_range(days, body.interval)
    where = replace(where, day_from=days.day_from)  # a defaulted `from` may move up
    return await respond_to_body(
        context,
        fresh=fresh,
        endpoint="insights-playback",
        project=chosen,
        body=body,
        days=days,
        adapter=INSIGHT,
        query=lambda ch: {"groups": playback_insight(ch, chosen, where, body.interval)},
    )
