"""Dependencies of the query API routes, as `Annotated` aliases.

Authentication (SPEC §5): `Authorization: Bearer <key>`; keys are `project:key` entries of
QUIP_READ_KEYS and QUIP_ADMIN_KEYS, compared in constant time (common.auth.KeyRing).
- read endpoints accept a read key, or an admin key (it may do everything a read key
  does), of the requested project;
- `DELETE /v1/users/{user_id}` needs an admin key of the project.
Answers: no key, another scheme or an unknown key → 401 (with `WWW-Authenticate`); a
valid key of another project than `project` → 403; a read key on the admin endpoint →
403. Keys are checked before any other parameter, so callers without a key learn nothing
about the parameters. `project` defaults to "default".
"""

from __future__ import annotations

from typing import Annotated, Final, cast

from fastapi import Depends, Header, HTTPException, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.context import ApiContext
from api.params import BadRequest, DayRange, day_range, shown

DEFAULT_PROJECT: Final = "default"

read_bearer = HTTPBearer(
    scheme_name="readKey",
    description="a read key of QUIP_READ_KEYS (or an admin key of QUIP_ADMIN_KEYS)",
    auto_error=False,
)
admin_bearer = HTTPBearer(
    scheme_name="adminKey", description="an admin key of QUIP_ADMIN_KEYS", auto_error=False
)
Credentials = HTTPAuthorizationCredentials | None


async def get_context(request: Request) -> ApiContext:
    return cast(ApiContext, request.app.state.context)


Context = Annotated[ApiContext, Depends(get_context)]
ProjectParam = Annotated[str, Query(description="the project to read; the key must belong to it")]


def unauthorized(message: str) -> HTTPException:
    return HTTPException(401, message, headers={"WWW-Authenticate": "Bearer"})


def authorize(key_project: str, requested: str) -> str:
    if requested != key_project:
        raise HTTPException(403, f"this key does not give access to project {shown(requested)}")
    return requested


async def read_key_project(
    context: Context, credentials: Annotated[Credentials, Depends(read_bearer)]
) -> str:
    """The project of the presented read (or admin) key; 401 without a known one."""
    if credentials is None:
        raise unauthorized("missing Authorization: Bearer <read key>")
    token = credentials.credentials
    project = context.read_keys.project_for(token) or context.admin_keys.project_for(token)
    if project is None:
        raise unauthorized("unknown read key")
    return project


KeyProject = Annotated[str, Depends(read_key_project)]


async def read_project(key_project: KeyProject, project: ProjectParam = DEFAULT_PROJECT) -> str:
    return authorize(key_project, project)


ReadProject = Annotated[str, Depends(read_project)]


def body_project(key_project: str, in_body: str | None, in_query: str | None) -> str:
    """The project of a request that may name it in its body or its query string (both
    must then agree; default "default"), authorized for the key's project."""
    if in_body is not None and in_query is not None and in_body != in_query:
        raise BadRequest("project differs between the query string and the body")
    requested = in_body if in_body is not None else in_query
    return authorize(key_project, requested if requested is not None else DEFAULT_PROJECT)


async def admin_project(
    context: Context,
    credentials: Annotated[Credentials, Depends(admin_bearer)],
    project: ProjectParam = DEFAULT_PROJECT,
) -> str:
    if credentials is None:
        raise unauthorized("missing Authorization: Bearer <admin key>")
    token = credentials.credentials
    key_project = context.admin_keys.project_for(token)
    if key_project is None:
        if context.read_keys.project_for(token) is not None:
            raise HTTPException(403, "a read key cannot erase users; use an admin key")
        raise unauthorized("unknown admin key")
    return authorize(key_project, project)


AdminProject = Annotated[str, Depends(admin_project)]


async def requested_days(
    context: Context,
    from_: Annotated[
        str | None,
        Query(alias="from", description="YYYY-MM-DD, inclusive; default: `to` - 29 days"),
    ] = None,
    to: Annotated[
        str | None, Query(description="YYYY-MM-DD, inclusive; default: today (UTC)")
    ] = None,
) -> DayRange:
    return day_range(from_, to, context.today())


Days = Annotated[DayRange, Depends(requested_days)]


async def wants_fresh(
    cache_control: Annotated[
        str | None,
        Header(description="`no-cache`: answer from the stores, not from the API's cache"),
    ] = None,
) -> bool:
    """True when the request says `Cache-Control: no-cache` (or `no-store`, `max-age=0`)."""
    if not cache_control:
        return False
    directives = {part.strip().lower() for part in cache_control.split(",")}
    return bool(directives & {"no-cache", "no-store", "max-age=0"})


Fresh = Annotated[bool, Depends(wants_fresh)]
