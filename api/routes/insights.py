"""Insights (SPEC §5.1): questions sliced by any property, over the raw events.

Bodies are checked in two steps: shapes by the models (api/models.py), the language
(properties, ops, values, breakdowns, maths) by sinks/queries/ before any SQL; both answer
400 with the reason. The answer depends on the events of [from, to] only (the cache
follows changes of those days).
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query
from pydantic import TypeAdapter
from starlette.responses import Response

from api.deps import Context, Days, Fresh, KeyProject, ReadProject, body_project
from api.errors import ERROR_RESPONSES
from api.models import (
    ActiveUsersBody,
    ActiveUsersGroupDay,
    InsightBody,
    LifecyclePoint,
    PropertyFilter,
    RetentionBody,
    RetentionGroupCohort,
    SchemaEvent,
    SchemaProperty,
    SessionsBody,
    SessionsDay,
    StickinessPoint,
    TrendsBody,
    TrendsResult,
)
from api.params import BadRequest, DayRange, day_range
from api.results import Query as ResultQuery
from sinks.queries.discovery import event_types, properties
from sinks.queries.engagement import LifecycleInterval, lifecycle, stickiness
from sinks.queries.insight_activity import active_users, retention
from sinks.queries.properties import Filter, PropertyError, Slice
from sinks.queries.sessions import sessions
from sinks.queries.trends import Series, TrendsQuery, check_trends, trends

router = APIRouter(tags=["insights"], responses=ERROR_RESPONSES)

TRENDS = TypeAdapter(TrendsResult)
SCHEMA_EVENTS = TypeAdapter(list[SchemaEvent])
SCHEMA_PROPERTIES = TypeAdapter(list[SchemaProperty])
LIFECYCLE = TypeAdapter(list[LifecyclePoint])
STICKINESS = TypeAdapter(list[StickinessPoint])
SESSIONS = TypeAdapter(list[SessionsDay])
ACTIVE = TypeAdapter(list[ActiveUsersGroupDay])
RETENTION = TypeAdapter(list[RetentionGroupCohort])
EventParam = Annotated[str | None, Query(description="activity means an event of this type")]
ProjectQuery = Annotated[
    str | None, Query(description="the project, unless the body names it; default: default")
]


def filters_of(items: list[PropertyFilter]) -> list[Filter]:
    return [Filter(item.property, item.op, item.value) for item in items]


def insight_days(body: InsightBody, context: Context) -> DayRange:
    return day_range(body.from_, body.to, context.today())


def insight_slice(body: InsightBody, context: Context) -> tuple[DayRange, Slice]:
    """The body's days and slice; 400 for a filter or breakdown the language refuses."""
    days = insight_days(body, context)
    where = Slice(
        days.day_from, days.day_to, filters_of(body.filters), body.breakdown, body.breakdown_limit
    )
    try:
        where.checked()
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    return days, where


def body_key(body: InsightBody, days: DayRange) -> tuple[tuple[str, str], ...]:
    """The cache key of a body: its days as resolved, and everything else it says."""
    return (*days.key(), ("body", body.model_dump_json(exclude={"project", "from_", "to"})))


async def respond_to_body(
    context: Context,
    *,
    fresh: bool,
    endpoint: str,
    project: str,
    body: InsightBody,
    days: DayRange,
    adapter: TypeAdapter[Any],
    query: ResultQuery,
    first_day: date | None = None,
    last_day: date | None = None,
) -> Response:
    """The answer to an insight body (api/results.py), cached under `body_key`; it depends
    on the stored rows of `first_day`..`last_day`, by default the body's days."""
    return await context.results.respond(
        fresh=fresh,
        endpoint=endpoint,
        project=project,
        params=body_key(body, days),
        first_day=days.day_from if first_day is None else first_day,
        last_day=days.day_to if last_day is None else last_day,
        adapter=adapter,
        query=query,
    )


@router.post("/v1/insights/trends", response_model=TrendsResult)
async def query_trends(
    key_project: KeyProject,
    context: Context,
    fresh: Fresh,
    body: Annotated[TrendsBody, Body()],
    project: ProjectQuery = None,
) -> Response:
    """Per series, a math over the matching events per interval of [from, to] (zeros
    included) and over the whole range, optionally per breakdown value (top
    `breakdown_limit`, the rest as `$other`)."""
    chosen = body_project(key_project, body.project, project)
    days = insight_days(body, context)
    query = TrendsQuery(
        day_from=days.day_from,
        day_to=days.day_to,
        interval=body.interval,
        series=[
            Series(spec.event, spec.math, spec.property, filters_of(spec.filters))
            for spec in body.series
        ],
        filters=filters_of(body.filters),
        breakdown=body.breakdown,
        breakdown_limit=body.breakdown_limit,
    )
    try:
        check_trends(query)
    except PropertyError as exc:
        raise BadRequest(str(exc)) from None
    return await respond_to_body(
        context,
        fresh=fresh,
        endpoint="insights-trends",
        project=chosen,
        body=body,
        days=days,
        adapter=TRENDS,
        query=lambda ch: {"series": trends(ch, chosen, query)},
    )


@router.get("/v1/schema/events", response_model=list[SchemaEvent])
async def schema_events(
    project: ReadProject, days: Days, context: Context, fresh: Fresh
) -> Response:
    """The event types of [from, to], most events first: what a query builder offers."""
    return await context.results.respond(
        fresh=fresh,
        endpoint="schema-events",
        project=project,
        params=days.key(),
        first_day=days.day_from,
        last_day=days.day_to,
        adapter=SCHEMA_EVENTS,
        query=lambda ch: event_types(ch, project, days.day_from, days.day_to),
    )


@router.get("/v1/schema/properties", response_model=list[SchemaProperty])
async def schema_properties(
    project: ReadProject,
    days: Days,
    context: Context,
    fresh: Fresh,
    event: Annotated[str | None, Query(description="only events of this type")] = None,
) -> Response:
    """The properties of the events of [from, to] with their type, most events first, and
    the 10 most frequent values of string properties."""
    return await context.results.respond(
        fresh=fresh,
        endpoint="schema-properties",
        project=project,
        params=(*days.key(), ("event", event or "")),
        first_day=days.day_from,
        last_day=days.day_to,
        adapter=SCHEMA_PROPERTIES,
        query=lambda ch: properties(ch, project, days.day_from, days.day_to, event),
    )


@router.get("/v1/insights/lifecycle", response_model=list[LifecyclePoint])
async def get_lifecycle(
    project: ReadProject,
    days: Days,
    context: Context,
    fresh: Fresh,
    interval: Annotated[LifecycleInterval, Query(description="UTC days or ISO weeks")] = "day",
    event: EventParam = None,
) -> Response:
    """New, returning, resurrecting and dormant users per period of [from, to]."""
    return await context.results.respond(
        fresh=fresh,
        endpoint="lifecycle",
        project=project,
        params=(*days.key(), ("interval", interval), ("event", event or "")),
        last_day=days.day_to,  # first-ever events: every earlier day counts
        adapter=LIFECYCLE,
        query=lambda ch: lifecycle(ch, project, days.day_from, days.day_to, interval, event),
    )


@router.get("/v1/insights/stickiness", response_model=list[StickinessPoint])
async def get_stickiness(
    project: ReadProject, days: Days, context: Context, fresh: Fresh, event: EventParam = None
) -> Response:
    """Users active on exactly k distinct days of [from, to], for k = 1..n."""
    return await context.results.respond(
        fresh=fresh,
        endpoint="stickiness",
        project=project,
        params=(*days.key(), ("event", event or "")),
        first_day=days.day_from,
        last_day=days.day_to,
        adapter=STICKINESS,
        query=lambda ch: stickiness(ch, project, days.day_from, days.day_to, event),
    )


@router.post("/v1/insights/sessions", response_model=list[SessionsDay])
async def query_sessions(
    key_project: KeyProject,
    context: Context,
    fresh: Fresh,
    body: Annotated[SessionsBody, Body()],
    project: ProjectQuery = None,
) -> Response:
    """Sessions per day of their first event (and per breakdown value of that event):
    count, users, duration, events per session, bounce rate."""
    chosen = body_project(key_project, body.project, project)
    days, where = insight_slice(body, context)
    return await respond_to_body(
        context,
        fresh=fresh,
        endpoint="insights-sessions",
        project=chosen,
        body=body,
        days=days,
        first_day=days.day_from - timedelta(days=1),
        last_day=days.day_to + timedelta(days=1),
        adapter=SESSIONS,
        query=lambda ch: sessions(ch, chosen, where),
    )


@router.post("/v1/insights/active-users", response_model=list[ActiveUsersGroupDay])
async def query_active_users(
    key_project: KeyProject,
    context: Context,
    fresh: Fresh,
    body: Annotated[ActiveUsersBody, Body()],
    project: ProjectQuery = None,
) -> Response:
    """DAU, WAU and MAU counting only matching events, per day of [from, to] (and per
    breakdown value: a user counts in every group it had a matching event in)."""
    chosen = body_project(key_project, body.project, project)
    days, where = insight_slice(body, context)
    return await respond_to_body(
        context,
        fresh=fresh,
        endpoint="insights-active-users",
        project=chosen,
        body=body,
        days=days,
        first_day=days.day_from - timedelta(days=29),
        adapter=ACTIVE,
        query=lambda ch: active_users(ch, chosen, where),
    )


@router.post("/v1/insights/retention", response_model=list[RetentionGroupCohort])
async def query_retention(
    key_project: KeyProject,
    context: Context,
    fresh: Fresh,
    body: Annotated[RetentionBody, Body()],
    project: ProjectQuery = None,
) -> Response:
    """Cohorts by the period of each user's first-ever matching start event (in [from,
    to]), and how many of them came back with a matching return event in each later
    period that has started."""
    chosen = body_project(key_project, body.project, project)
    days, where = insight_slice(body, context)
    today = context.today()
    return await context.results.respond(
        fresh=fresh,
        endpoint="insights-retention",
        project=chosen,
        params=(*body_key(body, days), ("today", today.isoformat())),
        last_day=today,  # first-ever events and every later return count
        adapter=RETENTION,
        query=lambda ch: retention(
            ch, chosen, where, body.period, today, body.start_event, body.return_event
        ),
    )
