"""`GET /v1/metrics/events` (SPEC §5): deduplicated event counts by time and type."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import TypeAdapter
from starlette.responses import Response

from api.deps import Context, Days, Fresh, ReadProject
from api.errors import ERROR_RESPONSES
from api.models import EventCount
from sinks.queries.events import EventInterval, event_counts

router = APIRouter(tags=["metrics"], responses=ERROR_RESPONSES)

ANSWER = TypeAdapter(list[EventCount])


@router.get("/v1/metrics/events", response_model=list[EventCount])
async def get_events(
    project: ReadProject,
    days: Days,
    context: Context,
    fresh: Fresh,
    interval: Annotated[EventInterval, Query(description="bucket size (UTC)")] = "day",
) -> Response:
    """Distinct events (by event_id) per (bucket, type), for buckets and types that have
    events, ordered by t then type."""
    return await context.results.respond(
        fresh=fresh,
        endpoint="events",
        project=project,
        params=(*days.key(), ("interval", interval)),
        first_day=days.day_from,
        last_day=days.day_to,
        adapter=ANSWER,
        query=lambda ch: event_counts(ch, project, days.day_from, days.day_to, interval),
    )
