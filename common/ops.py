"""What every process serves for operations (SPEC §7): `/health`, `/ready`, `/metrics`,
and the HTTP metrics `http_request_duration_seconds` / `http_requests_total`.

Metric objects are created once per process here; with several uvicorn workers,
`PROMETHEUS_MULTIPROC_DIR` makes `/metrics` aggregate every worker's files.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HTTP_REQUEST_DURATION = Histogram(
    "http_request_duration_seconds",
    "HTTP request latency by route",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
)
HTTP_REQUESTS = Counter(
    "http_requests_total", "HTTP requests by route and status", ["method", "route", "status"]
)


class HttpMetricsMiddleware:
    """Pure ASGI (not BaseHTTPMiddleware, which costs a task per request). Routes are
    labelled by template; paths outside `known_routes` become "other" so scanners cannot
    blow up label cardinality."""

    def __init__(self, app: ASGIApp, known_routes: Iterable[str]) -> None:
        self.app = app
        self.known_routes = frozenset(known_routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or scope["path"]
            label = template if template in self.known_routes else "other"
            method = scope["method"]
            HTTP_REQUEST_DURATION.labels(method, label).observe(time.perf_counter() - started)
            HTTP_REQUESTS.labels(method, label, str(status)).inc()


def metrics_response(_: Request) -> Response:
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def health_response(_: Request) -> Response:
    return JSONResponse({"status": "ok"})


ReadinessCheck = Callable[[], Awaitable[dict[str, Any]]]


def readiness_endpoint(check: ReadinessCheck) -> Callable[[Request], Awaitable[Response]]:
    """`check` returns {"dependency": "ok" | "<why not>"}; 200 when all are ok, else 503."""

    async def ready(_: Request) -> Response:
        details = await check()
        ok = all(value == "ok" for value in details.values())
        return JSONResponse({"ready": ok, "checks": details}, status_code=200 if ok else 503)

    return ready
