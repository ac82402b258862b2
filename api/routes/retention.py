"""`GET /v1/metrics/retention` (SPEC §4 "Retention / cohorts", §5)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import TypeAdapter
from starlette.responses import Response

from api.deps import Context, Days, Fresh, ReadProject
from api.errors import ERROR_RESPONSES
from api.models import RetentionCohort
from sinks.queries.activity import retention

router = APIRouter(tags=["metrics"], responses=ERROR_RESPONSES)

ANSWER = TypeAdapter(list[RetentionCohort])


@router.get("/v1/metrics/retention", response_model=list[RetentionCohort])
async def get_retention(
    project: ReadProject,
    days: Days,
    context: Context,
    fresh: Fresh,
    period: Annotated[
        Literal["day", "week"], Query(description="cohort and retention period (ISO weeks)")
    ] = "day",
) -> Response:
    """Cohorts whose first-ever day (or week) starts in [from, to]. `retained` grows with
    every period that starts and counts today's activity, so the answer is always cached
    as an open range (5 s)."""
    today = context.today()
    return await context.results.respond(
        fresh=fresh,
        endpoint="retention",
        project=project,
        params=(*days.key(), ("period", period), ("today", today.isoformat())),
        last_day=today,
        adapter=ANSWER,
        query=lambda ch: retention(ch, project, days.day_from, days.day_to, period, today),
    )
