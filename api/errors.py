"""How the query API answers failures: always JSON `{"detail": "<message>"}`.

- `BadRequest` (api/params.py) and FastAPI's request validation errors → 400 with every
  problem in one message (`query.period: Input should be 'day' or 'week'`); FastAPI's
  default would be a 422 with a nested list, which the SPEC does not use.
- `HTTPException` (401/403/404 from the routes) keeps its status, message and headers.
- `ClickHouseError` → 503 with `Retry-After`: the analytics store is down or refused the
  query. The engine's text goes to the log, not to the client.
- `BusUnavailable` → 503 with the bus's `Retry-After`: an erasure could not be put on the
  bus (Kafka down), so nothing of it was done.
Anything else is a bug and stays a 500.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api.models import ErrorResponse
from api.params import BadRequest
from common.bus import BusUnavailable
from sinks.clickhouse import ClickHouseError

log = logging.getLogger(__name__)

RETRY_AFTER_S: Final = 5
MAX_DETAIL_CHARS: Final = 1000

ERROR_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    400: {"model": ErrorResponse, "description": "a parameter is malformed or out of range"},
    401: {"model": ErrorResponse, "description": "missing or unknown key"},
    403: {"model": ErrorResponse, "description": "the key does not give access to this"},
    503: {"model": ErrorResponse, "description": "ClickHouse or Kafka is unavailable; retry later"},
}


def validation_message(exc: RequestValidationError) -> str:
    problems = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error.get("loc", ()))
        problems.append(f"{location}: {error.get('msg', 'invalid')}" if location else error["msg"])
    message = "; ".join(problems) or "invalid request"
    return message if len(message) <= MAX_DETAIL_CHARS else message[:MAX_DETAIL_CHARS] + "..."


async def _bad_request(_: Request, exc: Exception) -> Response:
    return JSONResponse({"detail": str(exc)}, status_code=400)


async def _invalid_request(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"detail": validation_message(exc)}, status_code=400)


async def _store_unavailable(request: Request, exc: Exception) -> Response:
    log.warning("ClickHouse failed on %s %s: %s", request.method, request.url.path, exc)
    return JSONResponse(
        {"detail": "the analytics store is unavailable or failed the query; retry later"},
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


async def _bus_unavailable(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BusUnavailable)
    log.warning("the bus refused %s %s: %s", request.method, request.url.path, exc)
    return JSONResponse(
        {"detail": "the event bus is unavailable; retry later"},
        status_code=503,
        headers={"Retry-After": str(exc.retry_after_s)},
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(BadRequest, _bad_request)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(ClickHouseError, _store_unavailable)
    app.add_exception_handler(BusUnavailable, _bus_unavailable)
