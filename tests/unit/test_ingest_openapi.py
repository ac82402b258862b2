"""The ingest routes in the gateway's OpenAPI document (ingest/openapi.py): every route
`add_ingest_routes` registers is described with its methods, and the request schemas
accept what the SDKs send."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jsonschema
import pytest
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from common.bus import OutgoingRecord
from common.settings import Settings
from ingest.app import Gateway, add_ingest_routes, create_app
from ingest.openapi import INGEST_ROUTES, describe_ingest_routes


class NoBus:
    ready = False
    last_error: str | None = None

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def publish(self, records: Sequence[OutgoingRecord]) -> None:
        raise AssertionError("not called")


@pytest.fixture
def document() -> dict[str, Any]:
    app = create_app(Settings(write_keys="p:wk"), publisher=NoBus())
    return app.openapi()


def test_every_registered_ingest_route_is_described_with_its_methods(
    document: dict[str, Any],
) -> None:
    app = FastAPI()
    paths = add_ingest_routes(app, Gateway(Settings(write_keys="p:wk"), NoBus()))
    registered = {
        route.path: {m.lower() for m in route.methods or () if m != "HEAD"}
        for route in app.routes
        if getattr(route, "path", None) in paths
    }

    described = {path: set(document["paths"][path]) for path in paths}

    assert described == registered
    for path in paths:
        for operation in document["paths"][path].values():
            assert operation["summary"] == INGEST_ROUTES[path].summary
            assert operation["responses"]


def test_a_route_without_an_entry_fails_the_document() -> None:
    async def endpoint(_: Request) -> Response:
        return Response()

    app = FastAPI()
    app.add_route("/v1/undocumented", endpoint, methods=["POST"])
    describe_ingest_routes(app, ["/v1/undocumented"])

    with pytest.raises(LookupError, match="/v1/undocumented"):
        app.openapi()


NOW = 1_764_100_000_000


@pytest.mark.parametrize(
    ("path", "media_type", "body"),
    [
        pytest.param(
            "/v1/events",
            "application/json",
            {
                "sent_at": NOW,
                "context": {"device_model": "quest3", "region": "eu"},
                "events": [
                    {
                        "event_id": "e1",
                        "type": "page_view",
                        "user_id": "u-42",
                        "ts": NOW,
                        "session_id": "s-1",
                        "props": {"url": "https://vr.example"},
                    }
                ],
            },
            id="native",
        ),
        pytest.param(
            "/v1/batch",
            "application/json",
            {
                "writeKey": "wk",
                "sentAt": "2026-11-25T10:00:00.000Z",
                "batch": [
                    {
                        "type": "track",
                        "event": "Video Played",
                        "messageId": "m1",
                        "anonymousId": "a1",
                        "timestamp": "2026-11-25T09:59:59Z",
                        "properties": {"x": 1},
                        "context": {"device": {"model": "quest3"}},
                    }
                ],
            },
            id="segment batch",
        ),
        pytest.param(
            "/batch/",
            "application/json",
            {
                "api_key": "wk",
                "batch": [
                    {
                        "event": "$pageview",
                        "distinct_id": "u",
                        "uuid": "0f0e",
                        "timestamp": "2026-11-25T09:59:59+00:00",
                        "properties": {"$current_url": "https://vr.example"},
                    }
                ],
            },
            id="posthog batch",
        ),
        pytest.param(
            "/e/",
            "application/json",
            [{"event": "x", "distinct_id": 42, "properties": {"token": "wk"}}],
            id="posthog array",
        ),
    ],
)
def test_request_schemas_accept_sdk_bodies(
    document: dict[str, Any], path: str, media_type: str, body: Any
) -> None:
    schema = document["paths"][path]["post"]["requestBody"]["content"][media_type]["schema"]

    jsonschema.validate(
        body,
        {**schema, "components": document["components"]},
        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
    )


def test_native_schema_states_the_event_limits(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    event = schemas["NativeEvent"]["properties"]

    assert schemas["NativeBatch"]["properties"]["events"]["maxItems"] == 1000
    assert event["event_id"]["maxLength"] == 64
    assert event["type"]["pattern"] == "^[a-z][a-z0-9_.]{0,63}$"
    assert set(schemas["NativeEvent"]["required"]) == {"event_id", "type", "user_id", "ts"}
