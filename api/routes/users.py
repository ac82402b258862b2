"""`DELETE /v1/users/{user_id}` (SPEC §5): erase a user's events and derived rows (GDPR).

Needs an admin key of the project. Answers 202 {"status": "scheduled"} once every table's
deletion is issued: immediate on engines with lightweight DELETE (chDB, ClickHouse ≥ 22.8),
a background mutation on 18.16 (see sinks/queries/erasure.py). Idempotent: erasing an
erased (or unknown) user answers the same. The project's cached answers are dropped at
once and again when the engine reports the mutations done.

The erasure is first put on the bus (`schemas.events.erasure_record`, under the user's
record key, so after the user's earlier events): the worker that owns the user's partition
drops their state (open plays, funnel progress) and deletes their rows again once
everything before it is stored, so rows of events still in flight go too. If the bus
cannot take it, the answer is 503 and nothing is deleted. Raw events stay in Kafka until
its retention (7 days) removes them.
The user id is the path remainder, so ids containing "/" work when URL-encoded.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Path

from api.deps import AdminProject, Context
from api.errors import ERROR_RESPONSES
from api.models import ErasureScheduled
from api.params import check_user_id
from common.bus import OutgoingRecord
from schemas.events import encode_record, erasure_record, record_key
from schemas.topics import ANALYTICS_EVENTS
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
    if context.publisher is not None:
        record = erasure_record(project, user_id, int(time.time() * 1000))
        key = record_key(project, user_id)
        await context.publisher.publish(
            [OutgoingRecord(ANALYTICS_EVENTS.name, key, encode_record(record))]
        )
    await context.pool.run(lambda ch: erase_user(ch, project, user_id))
    context.erased(project)
    return ErasureScheduled()
