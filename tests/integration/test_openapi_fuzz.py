"""Fuzzing the OpenAPI documents with schemathesis: bad input never answers 5xx.

- The gateway: a real `quip gateway` process in front of the real Kafka, fuzzed through
  its /openapi.json (every ingest route, valid and invalid bodies, with a valid write key
  so requests get past authentication).
- The query API: the app in-process over chDB (an empty, migrated database), fuzzed
  through its /openapi.json with a key that reads and erases.

And `quip up`'s single app documents the same ingest routes next to the API's.

Each operation gets MAX_EXAMPLES generated cases, derandomized (a failure reproduces on
the next run and in CI). Answers must not be 5xx, and their status codes and JSON must be
the documented ones. The API's 503 for a failing store is on purpose and cannot happen
on a healthy chDB, so every 5xx here is a bug.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import CheckFunction, GenerationMode
from schemathesis.checks import (
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app as create_api_app
from common.bus import OutgoingRecord
from common.settings import Settings
from ingest.app import create_app as create_gateway_app
from sinks.clickhouse import EmbeddedClickHouse
from sinks.migrate import migrate
from tests.gateway_process import running_gateway
from tests.integration.test_embedded import Embedded

MAX_EXAMPLES = 40
WRITE_KEY = "wk_fuzz"
API_KEY = "ak_fuzz"
GATEWAY_CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]
# Not status codes: Starlette's router answers an undocumented 404 to a path it cannot
# match (a newline in `/v1/users/{user_id:path}`), which is right.
API_CHECKS = [not_a_server_error, response_schema_conformance]
FUZZ = settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def gateway_schema(registry_topics: None) -> Iterator[schemathesis.BaseSchema]:
    env = {"QUIP_WRITE_KEYS": f"fuzz:{WRITE_KEY}", "QUIP_RATE_LIMIT_IP_PER_MIN": "0"}
    with running_gateway(env) as gateway:
        yield schemathesis.openapi.from_url(f"{gateway.url}/openapi.json")


@pytest.fixture
def api_schema(embedded_clickhouse: EmbeddedClickHouse) -> schemathesis.BaseSchema:
    migrate(embedded_clickhouse)
    keys = f"default:{API_KEY}"
    app = create_api_app(Settings(read_keys=keys, admin_keys=keys), embedded_clickhouse)
    return schemathesis.openapi.from_asgi("/openapi.json", app)


class NoBus:
    """A publisher for an app that is only asked for its OpenAPI document."""

    ready = False
    last_error: str | None = None

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def publish(self, records: Sequence[OutgoingRecord]) -> None:
        raise AssertionError("no request is sent to this app")


def fuzz(
    schema: schemathesis.BaseSchema, headers: dict[str, str], checks: list[CheckFunction]
) -> list[str]:
    """Run every operation of `schema` with valid and invalid generated requests; the
    failures found, one line per operation and generation mode."""
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert operations
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @FUZZ
            @given(case=operation.as_strategy(mode, headers=headers))
            def run(case: schemathesis.Case) -> None:
                case.call_and_validate(checks=checks)

            try:
                run()
            except Unsatisfiable:
                pass  # no invalid request exists for an operation without inputs
            except Exception as exc:  # every failing operation is reported, not the first
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    return failures


@pytest.mark.kafka
def test_gateway_never_answers_5xx(gateway_schema: schemathesis.BaseSchema) -> None:
    operations = {operation.ok().label for operation in gateway_schema.get_all_operations()}
    assert "POST /v1/events" in operations

    auth = {"Authorization": f"Bearer {WRITE_KEY}"}
    assert fuzz(gateway_schema, auth, GATEWAY_CHECKS) == []


@pytest.mark.chdb
def test_api_never_answers_5xx(api_schema: schemathesis.BaseSchema) -> None:
    assert fuzz(api_schema, {"Authorization": f"Bearer {API_KEY}"}, API_CHECKS) == []


@pytest.mark.chdb
def test_quip_up_documents_the_ingest_routes_and_the_api(tmp_path: Path) -> None:
    gateway_app = create_gateway_app(Settings(write_keys=f"p:{WRITE_KEY}"), publisher=NoBus())
    ingest_paths = gateway_app.openapi()["paths"]
    up = Embedded(tmp_path)
    up.start()
    try:
        document = httpx.get(f"{up.url}/openapi.json", timeout=30).json()
    finally:
        up.stop()

    assert {path: document["paths"].get(path) for path in ingest_paths} == ingest_paths
    assert "/v1/metrics/active-users" in document["paths"]
    assert "NativeBatch" in document["components"]["schemas"]
