"""Funnels (SPEC §4 "Funnel", §5): ad-hoc at query time over raw events, and the
predefined funnels of QUIP_FUNNELS_FILE that the worker computes live.

`POST /v1/funnels/query` takes steps as event type strings or `{"event", "where"}`
objects (both may be mixed); they become `schemas.funnels.FunnelStep`s through the same
msgspec validation as the funnels file, and `check_funnel` bounds steps and window.
`project` may be given in the body or as the query parameter (both must then agree).

A funnel's later steps may fall up to `window_seconds` after `to`, so its answer is cached
as closed only once to + window has passed.
"""

from __future__ import annotations

import math
from datetime import date, timedelta
from typing import Annotated

import msgspec
from fastapi import APIRouter, Body, HTTPException, Path, Query
from pydantic import TypeAdapter
from starlette.responses import Response

from api.deps import Context, Days, Fresh, KeyProject, ReadProject, body_project
from api.errors import ERROR_RESPONSES
from api.models import (
    ErrorResponse,
    FunnelBreakdownResult,
    FunnelDefinitionOut,
    FunnelQuery,
    FunnelResult,
    FunnelStepSpec,
    PropertyFilter,
)
from api.params import BadRequest, DayRange, day_range, shown
from schemas.funnels import FunnelStep
from sinks.queries.funnel_insight import FunnelGroup, check_funnel_insight, funnel_insight
from sinks.queries.funnels import predefined_funnel
from sinks.queries.properties import Filter, Slice

router = APIRouter(tags=["funnels"], responses=ERROR_RESPONSES)

ANSWER = TypeAdapter(FunnelResult)
QUERY_ANSWER = TypeAdapter(FunnelResult | FunnelBreakdownResult)
DAY_S = 86_400


def to_funnel_steps(raw_steps: list[str | FunnelStepSpec]) -> list[FunnelStep]:
    steps = []
    for index, raw in enumerate(raw_steps):
        spec = {"event": raw} if isinstance(raw, str) else raw.model_dump()
        try:
            steps.append(msgspec.convert(spec, FunnelStep))
        except (msgspec.ValidationError, ValueError) as exc:
            raise BadRequest(f"steps[{index}]: {exc}") from None
    return steps


def settles_on(days: DayRange, window_seconds: int) -> date:
    """The last day whose events can change the answer: a chain's later steps may follow
    `to` by up to the window."""
    return days.day_to + timedelta(days=math.ceil(window_seconds / DAY_S))


def _canonical_steps(steps: list[FunnelStep]) -> str:
    return msgspec.json.encode(steps, order="sorted").decode()


def _funnel_result(steps: object) -> dict[str, object]:
    return {"steps": steps}


def _query_result(groups: list[FunnelGroup], broken_down: bool) -> dict[str, object]:
    """`{"steps"}` for one group, `{"breakdown": [{"breakdown", "steps"}]}` with one."""
    return {"breakdown": groups} if broken_down else {"steps": groups[0]["steps"]}


def _filters(items: list[PropertyFilter]) -> list[Filter]:
    return [Filter(item.property, item.op, item.value) for item in items]


@router.post("/v1/funnels/query", response_model=FunnelResult | FunnelBreakdownResult)
async def query_funnel(
    key_project: KeyProject,
    context: Context,
    fresh: Fresh,
    body: Annotated[FunnelQuery, Body()],
    project: Annotated[
        str | None, Query(description="the project, unless the body names it; default: default")
    ] = None,
) -> Response:
    """An ad-hoc funnel over raw events: per step, the users whose furthest step (a chain
    t1 ≤ … ≤ tk within window_seconds, t1 on a day of [from, to]) is at least that step,
    and their times to convert; every step's events match `filters`; with a breakdown,
    one funnel per value of the user's earliest step-1 event in range."""
    chosen = body_project(key_project, body.project, project)
    days = day_range(body.from_, body.to, context.today())
    steps = to_funnel_steps(body.steps)
    window = body.window_seconds
    where = Slice(
        days.day_from, days.day_to, _filters(body.filters), body.breakdown, body.breakdown_limit
    )
    try:
        check_funnel_insight(steps, window, where)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    key = body.model_dump_json(exclude={"project", "from_", "to"})
    return await context.results.respond(
        fresh=fresh,
        endpoint="funnel-query",
        project=chosen,
        params=(*days.key(), ("body", key)),
        first_day=days.day_from,
        last_day=settles_on(days, window),
        adapter=QUERY_ANSWER,
        query=lambda ch: _query_result(
            funnel_insight(ch, chosen, steps, window, where), bool(body.breakdown)
        ),
    )


@router.get("/v1/funnels", response_model=list[FunnelDefinitionOut])
async def list_funnels(project: ReadProject, context: Context) -> list[FunnelDefinitionOut]:
    """The predefined funnels of QUIP_FUNNELS_FILE (the same for every project)."""
    del project  # authorized; definitions apply to every project
    return [
        FunnelDefinitionOut(
            name=definition.name,
            steps=[FunnelStepSpec(event=s.event, where=dict(s.where)) for s in definition.steps],
            window_seconds=definition.window_seconds,
        )
        for definition in context.funnels.values()
    ]


@router.get(
    "/v1/funnels/{name}",
    response_model=FunnelResult,
    responses={404: {"model": ErrorResponse, "description": "no predefined funnel of that name"}},
)
async def get_funnel(
    project: ReadProject,
    days: Days,
    context: Context,
    fresh: Fresh,
    name: Annotated[str, Path(description="a funnel name of QUIP_FUNNELS_FILE")],
) -> Response:
    """A predefined funnel as computed live by the worker, for chains starting on a day of
    [from, to]; the same numbers as the ad-hoc query with the same definition."""
    definition = context.funnels.get(name)
    if definition is None:
        raise HTTPException(404, f"no predefined funnel named {shown(name)}")
    return await context.results.respond(
        fresh=fresh,
        endpoint="funnel",
        project=project,
        params=(*days.key(), ("name", name), ("definition", definition.fingerprint)),
        first_day=days.day_from,
        last_day=settles_on(days, definition.window_seconds),
        adapter=ANSWER,
        query=lambda ch: _funnel_result(
            predefined_funnel(ch, project, definition, days.day_from, days.day_to)
        ),
    )
