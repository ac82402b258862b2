"""`DELETE /v1/users/{user_id}` (SPEC §5): erase a user's events and derived rows (GDPR).

Needs an admin key of the project. Answers 202 {"status": "scheduled"} once every table's
deletion is issued: immediate on engines with lightweight DELETE (chDB, ClickHouse ≥ 22.8),
a background mutation on 18.16 (see sinks/queries/erasure.py). Idempotent: erasing an
erased (or unknown) user answers the same. The project's cached answers are dropped at
once and again when the engine reports the mutations done.

Not covered (worker side): the worker's in-memory/changelogged state for the user (open
plays, funnel progress) and raw events still in Kafka; see sinks/queries/erasure.py.
The user id is the path remainder, so ids containing "/" work when URL-encoded.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from api.deps import AdminProject, Context
from api.errors import ERROR_RESPONSES
from api.models import ErasureScheduled
from api.params import check_user_id
from sinks.queries.erasure import erase_user

router = APIRouter(tags=["users"], responses=ERROR_RESPONSES)


@router.delete("/v1/users/{user_id:path}", status_code=202, response_model=ErasureScheduled)
async def delete_user(
    project: AdminProject,
    context: Context,
    user_id: Annotated[str, Path(description="the user_id events were sent with")],
) -> ErasureScheduled:
    """Erase every row of the user in the project: raw events, plays, funnel progress,
    activity, first-seen and the user's social/e-mail service messages."""
    check_user_id(user_id)
    await context.pool.run(lambda ch: erase_user(ch, project, user_id))
    context.erased(project)
    return ErasureScheduled()
