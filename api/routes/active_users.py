"""`GET /v1/metrics/active-users` (SPEC §4 "Active", §5)."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter
from pydantic import TypeAdapter
from starlette.responses import Response

from api.deps import Context, Days, Fresh, ReadProject
from api.errors import ERROR_RESPONSES
from api.models import ActiveUsersDay
from sinks.queries.activity import WINDOWS, active_users

router = APIRouter(tags=["metrics"], responses=ERROR_RESPONSES)

ANSWER = TypeAdapter(list[ActiveUsersDay])


@router.get("/v1/metrics/active-users", response_model=list[ActiveUsersDay])
async def get_active_users(
    project: ReadProject, days: Days, context: Context, fresh: Fresh
) -> Response:
    """DAU, WAU, MAU and stickiness for every day of [from, to] (UTC), zeros included."""
    return await context.results.respond(
        fresh=fresh,
        endpoint="active-users",
        project=project,
        params=days.key(),
        first_day=days.day_from - timedelta(days=max(WINDOWS) - 1),
        last_day=days.day_to,
        adapter=ANSWER,
        query=lambda ch: active_users(ch, project, days.day_from, days.day_to),
    )
