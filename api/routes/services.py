"""`GET /v1/metrics/services` (SPEC §4 "Service metrics", §5)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import TypeAdapter
from starlette.responses import Response

from api.deps import Context, Days, Fresh, ReadProject
from api.errors import ERROR_RESPONSES
from api.models import ServiceMetrics
from sinks.queries.services import service_metrics

router = APIRouter(tags=["metrics"], responses=ERROR_RESPONSES)

ANSWER = TypeAdapter(ServiceMetrics)


@router.get("/v1/metrics/services", response_model=ServiceMetrics)
async def get_services(
    project: ReadProject, days: Days, context: Context, fresh: Fresh
) -> Response:
    """Social messages delivered, content published, encoding jobs and p95 encode time,
    e-mails sent/failed: per day of [from, to] and in total."""
    return await context.results.respond(
        fresh=fresh,
        endpoint="services",
        project=project,
        params=days.key(),
        first_day=days.day_from,
        last_day=days.day_to,
        adapter=ANSWER,
        query=lambda ch: service_metrics(ch, project, days.day_from, days.day_to),
    )
