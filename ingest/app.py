"""The ingest gateway: native, Segment and PostHog endpoints → one validation path → Kafka.

Request path, cheapest refusals first: admission (503 with Retry-After while the process
already works on QUIP_INGEST_MAX_IN_FLIGHT requests: shed, not queued) → per-IP rate
limit → header key (401) → body read
under the 1 MB decompressed limit (413) → parse and normalize (400) → body key (401) →
per-key rate limit (429) → per-event validation → one all-or-nothing publish of the
accepted events and the dead letters (503 on failure) → 200 with per-event errors.

The ingest routes are plain Starlette routes on the FastAPI app: the body is decoded by
msgspec in one pass, so FastAPI's per-request model validation would only add cost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import orjson
from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response

from common.auth import KeyRing, key_from_authorization
from common.bus import BusUnavailable, OutgoingRecord, Publisher
from common.ops import HttpMetricsMiddleware, health_response, metrics_response, readiness_endpoint
from common.producer import GroupCommitProducer
from common.settings import Settings
from ingest.admission import Admission
from ingest.body import BadEncoding, BodyTooLarge, read_body
from ingest.metrics import EVENTS_ACCEPTED, EVENTS_REJECTED, REQUESTS_SHED
from ingest.normalize import (
    Normalized,
    normalize_posthog,
    normalize_segment,
    normalize_segment_call,
    posthog_json,
)
from ingest.openapi import describe_ingest_routes
from ingest.posthog_config import flags, remote_config, remote_config_js
from ingest.ratelimit import RateLimiter
from ingest.validate import (
    BadBatch,
    Limits,
    ValidatedBatch,
    pruned_body,
    validate_dicts,
    validate_native,
)
from schemas.events import DeadLetter, EventRecord, encode_dead_letter, encode_record, record_key
from schemas.topics import ANALYTICS_EVENTS, ANALYTICS_EVENTS_DLQ

log = logging.getLogger(__name__)

NATIVE_PATH = "/v1/events"
SEGMENT_PATHS = ("/v1/batch",)
POSTHOG_PATHS = ("/batch/", "/capture/", "/e/", "/i/v0/e/")
# One message each: analytics.js's short paths and the Segment HTTP API's; path → type.
SEGMENT_CALL_PATHS = {
    f"/v1/{path}": call
    for call in ("track", "page", "screen", "identify", "group", "alias")
    for path in (call, call[0])
}
# posthog-js's calls besides capture (ingest/posthog_config.py); GET and POST.
POSTHOG_FLAGS_PATHS = ("/decide/", "/flags/")
POSTHOG_CONFIG_PATH = "/array/{token}/config"
POSTHOG_CONFIG_JS_PATH = "/array/{token}/config.js"


class Refusal(Exception):
    """A request refused as a whole, with its HTTP status."""

    def __init__(self, status: int, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


def error_response(refusal: Refusal) -> Response:
    headers = {"Retry-After": str(refusal.retry_after_s)} if refusal.retry_after_s else None
    return Response(
        orjson.dumps({"error": str(refusal)}),
        status_code=refusal.status,
        media_type="application/json",
        headers=headers,
    )


async def request_body(request: Request) -> bytes:
    """The body, inflated if gzip, read under the 1 MB limit. Raises Refusal: 413 past the
    limit, 400 for a bad encoding."""
    try:
        return await read_body(
            request.stream(), content_encoding=request.headers.get("content-encoding", "")
        )
    except BodyTooLarge as exc:
        raise Refusal(413, str(exc)) from exc
    except BadEncoding as exc:
        raise Refusal(400, str(exc)) from exc


Parser = Callable[[Request, bytes, int], tuple[str | None, ValidatedBatch]]


class Gateway:
    def __init__(self, settings: Settings, publisher: Publisher) -> None:
        self.settings = settings
        self.publisher = publisher
        self.keys = KeyRing(settings.write_key_projects)
        self.limits = Limits.from_settings(settings)
        self.ip_limiter = RateLimiter(settings.rate_limit_ip_per_min)
        self.key_limiter = RateLimiter(settings.rate_limit_key_per_min)
        self.admission = Admission(settings.ingest_max_in_flight)

    def endpoint(self, source: str, parse: Parser) -> Callable[[Request], Awaitable[Response]]:
        """The handler of one ingest route. Past QUIP_INGEST_MAX_IN_FLIGHT concurrent
        requests it answers 503 at once, before the body is read, and keeps nothing of that
        request; its Retry-After grows with the overload (ingest/admission.py). Clients
        retry it like a 503 from the bus."""

        async def handle(request: Request) -> Response:
            if retry_after_s := self.admission.enter():
                REQUESTS_SHED.labels(source).inc()
                return error_response(
                    Refusal(503, "gateway overloaded, retry later", retry_after_s)
                )
            try:
                return await self._ingest(request, source, parse)
            except Refusal as refusal:
                return error_response(refusal)
            finally:
                self.admission.leave()

        return handle

    async def _ingest(self, request: Request, source: str, parse: Parser) -> Response:
        client_ip = request.client.host if request.client else "unknown"
        if wait := self.ip_limiter.allow(client_ip):
            raise Refusal(429, "too many requests from this address", wait)

        header_key = key_from_authorization(request.headers.get("authorization"))
        project = self.keys.project_for(header_key)
        if header_key and project is None:
            raise Refusal(401, "unknown write key")

        body = await request_body(request)

        received_at = int(time.time() * 1000)
        try:
            body_key, batch = parse(request, body, received_at)
        except BadBatch as exc:  # TooManyEvents carries 413
            raise Refusal(exc.status, str(exc)) from exc

        if project is None:
            project = self.keys.project_for(body_key)
            if project is None:
                raise Refusal(401, "missing or unknown write key")
            header_key = body_key
        if wait := self.key_limiter.allow(header_key or ""):
            raise Refusal(429, "too many requests for this write key", wait)

        try:
            await self.publisher.publish(self._records(project, received_at, source, batch))
        except BusUnavailable as exc:
            raise Refusal(
                503, f"event bus unavailable, retry the whole batch: {exc}", exc.retry_after_s
            ) from exc

        EVENTS_ACCEPTED.labels(source).inc(len(batch.accepted))
        for rejection in batch.rejected:
            EVENTS_REJECTED.labels(source, rejection.code).inc()
        return Response(
            orjson.dumps(
                {
                    "accepted": len(batch.accepted),
                    "rejected": len(batch.rejected),
                    "errors": [{"index": r.index, "reason": r.reason} for r in batch.rejected],
                }
            ),
            media_type="application/json",
        )

    @staticmethod
    def _records(
        project: str, received_at: int, source: str, batch: ValidatedBatch
    ) -> list[OutgoingRecord]:
        by_user: dict[str, list[Any]] = {}
        for event in batch.accepted:
            by_user.setdefault(event.user_id, []).append(event)
        records = [
            OutgoingRecord(
                ANALYTICS_EVENTS.name,
                record_key(project, user_id),
                encode_record(
                    EventRecord(
                        project=project, received_at=received_at, events=events, source=source
                    )
                ),
            )
            for user_id, events in by_user.items()
        ]
        records.extend(
            OutgoingRecord(
                ANALYTICS_EVENTS_DLQ.name,
                project.encode(),
                encode_dead_letter(
                    DeadLetter(
                        project=project,
                        received_at=received_at,
                        index=rejection.index,
                        reason=rejection.reason,
                        raw=rejection.raw.decode("utf-8", "replace"),
                        source=source,
                    )
                ),
            )
            for rejection in batch.rejected
        )
        return records

    # ------------------------------------------------------------------ parsers
    def parse_native(
        self, _: Request, body: bytes, received_at: int
    ) -> tuple[str | None, ValidatedBatch]:
        return None, validate_native(body, received_at, self.limits)

    def parse_segment(
        self, _: Request, body: bytes, received_at: int
    ) -> tuple[str | None, ValidatedBatch]:
        return self._parse_compat(body, normalize_segment, received_at)

    def segment_call_parser(self, call: str) -> Parser:
        """The parser of a Segment single-call endpoint whose path names the type `call`."""

        def parse(_: Request, body: bytes, received_at: int) -> tuple[str | None, ValidatedBatch]:
            return self._parse_compat(
                body, lambda document: normalize_segment_call(document, call), received_at
            )

        return parse

    def parse_posthog(
        self, request: Request, body: bytes, received_at: int
    ) -> tuple[str | None, ValidatedBatch]:
        query = dict(request.query_params)
        text = posthog_json(body, request.headers.get("content-type", ""), query.get("compression"))
        return self._parse_compat(
            text, lambda document: normalize_posthog(document, query), received_at
        )

    def _parse_compat(
        self, text: bytes, normalize: Callable[[Any], Normalized], received_at: int
    ) -> tuple[str | None, ValidatedBatch]:
        """Decode, normalize and validate JSON text; text nested too deep for the decoders'
        stack is handled pruned, as `validate_native` does (deep props: `too_deep`)."""
        try:
            return self._decode_compat(text, normalize, received_at)
        except RecursionError:
            pass
        return self._decode_compat(pruned_body(text), normalize, received_at)

    def _decode_compat(
        self, text: bytes, normalize: Callable[[Any], Normalized], received_at: int
    ) -> tuple[str | None, ValidatedBatch]:
        try:
            # msgspec, not orjson: integers beyond 64 bits must not fail a whole batch.
            document = msgspec.json.decode(text)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise BadBatch(f"body is not UTF-8 JSON: {exc}") from exc
        normalized = normalize(document)
        return normalized.write_key, validate_dicts(
            normalized.events, normalized.context, normalized.sent_at, received_at, self.limits
        )


def add_ingest_routes(app: FastAPI, gateway: Gateway) -> list[str]:
    """The native and compatibility endpoints, on the gateway's own app or on `quip up`'s
    single app; returns their paths (for the HTTP metrics' route labels)."""
    app.add_route(NATIVE_PATH, gateway.endpoint("native", gateway.parse_native), methods=["POST"])
    for path in SEGMENT_PATHS:
        app.add_route(path, gateway.endpoint("segment", gateway.parse_segment), methods=["POST"])
    for path, call in SEGMENT_CALL_PATHS.items():
        parse = gateway.segment_call_parser(call)
        app.add_route(path, gateway.endpoint("segment", parse), methods=["POST"])
    for path in POSTHOG_PATHS:
        app.add_route(path, gateway.endpoint("posthog", gateway.parse_posthog), methods=["POST"])
    for path in POSTHOG_FLAGS_PATHS:
        app.add_route(path, flags, methods=["GET", "POST"])
    app.add_route(POSTHOG_CONFIG_PATH, remote_config, methods=["GET"])
    app.add_route(POSTHOG_CONFIG_JS_PATH, remote_config_js, methods=["GET"])
    return [
        NATIVE_PATH,
        *SEGMENT_PATHS,
        *SEGMENT_CALL_PATHS,
        *POSTHOG_PATHS,
        *POSTHOG_FLAGS_PATHS,
        POSTHOG_CONFIG_PATH,
        POSTHOG_CONFIG_JS_PATH,
    ]


def create_app(settings: Settings | None = None, publisher: Publisher | None = None) -> FastAPI:
    """The gateway ASGI app. `quip gateway` runs it under uvicorn (a factory, so each
    worker process builds its own producer)."""
    settings = settings or Settings()
    settings.require_keys("write_keys")
    if publisher is None:
        publisher = GroupCommitProducer(settings.kafka_bootstrap)
    gateway = Gateway(settings, publisher)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await publisher.start()
        try:
            yield
        finally:
            await publisher.stop()

    async def readiness() -> dict[str, Any]:
        return {"kafka": "ok" if publisher.ready else (publisher.last_error or "not ready")}

    app = FastAPI(
        title="Qui Pipeline ingest gateway", lifespan=lifespan, docs_url=None, redoc_url=None
    )
    routes = add_ingest_routes(app, gateway)
    describe_ingest_routes(app, routes)
    app.add_route("/health", health_response, methods=["GET"])
    app.add_route("/ready", readiness_endpoint(readiness), methods=["GET"])
    app.add_route("/metrics", metrics_response, methods=["GET"])
    routes += ["/health", "/ready", "/metrics"]

    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            # GET: posthog-js's config and flags calls.
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "Content-Encoding"],
            max_age=600,
        )
    app.add_middleware(HttpMetricsMiddleware, known_routes=routes)
    return app
