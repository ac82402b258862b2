"""`POST /v1/services/{topic}`: the service bus over HTTP, for `quip up` (which has no Kafka).

The social, CMS and video services publish their messages (schemas/services.py) here with
`schemas.publisher.HttpServicePublisher`; each accepted message becomes one bus record of
its topic, keyed as on Kafka (SPEC §3: user_id, content_id, job_id, user_id), its value the
message's JSON as the Kafka publisher would send it, so the consumers cannot tell the two
paths apart.

Contract:
- Auth: `Authorization: Bearer <write key>` (QUIP_WRITE_KEYS). The key's project is every
  message's project: a message without `project` gets it, one naming another project is
  invalid (a key writes to its own project only, as for events).
- Body: one message (a JSON object) or a batch (a JSON array of them), at most
  `MAX_MESSAGES_PER_REQUEST` messages and 1 MB after gzip.
- All or nothing: every message is checked with the decoder the consumer uses; if any is
  invalid, the answer is 400 with each invalid message's index and reason, and nothing of
  the request is published. Otherwise the messages are written to the bus as one frame
  (fsync'ed) before the 200 `{"accepted": n}`; a retry of the same request is harmless
  because consumers count each (project, topic, message_id) once.
- Other answers: 404 unknown topic, 401 bad key, 413 too large, 429 rate limited and 503
  overloaded or bus unavailable (both with Retry-After; nothing kept, retry the request),
  as the event endpoints answer them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import orjson
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from common.auth import key_from_authorization
from common.bus import BusUnavailable, OutgoingRecord
from ingest.app import Gateway, Refusal, error_response, request_body
from ingest.metrics import REQUESTS_SHED
from schemas.services import (
    MAX_MESSAGES_PER_REQUEST,
    SERVICE_TOPICS,
    encode_message,
    message_key,
)

SERVICES_PATH = "/v1/services/{topic}"
_json = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class InvalidServiceMessage:
    index: int
    reason: str


class BadServiceBatch(Refusal):
    """The request is refused as a whole (nothing published); `invalid` lists the messages
    that made it so, when it is their fault rather than the body's."""

    def __init__(
        self, status: int, message: str, invalid: Sequence[InvalidServiceMessage] = ()
    ) -> None:
        super().__init__(status, message)
        self.invalid = list(invalid)


def service_records(topic_name: str, body: bytes, project: str) -> list[OutgoingRecord]:
    """The bus records of a request's body, every message checked. Raises BadServiceBatch
    (404 unknown topic, 413 too many messages, 400 anything else)."""
    topic = SERVICE_TOPICS.get(topic_name)
    if topic is None:
        raise BadServiceBatch(
            404, f"unknown service topic {topic_name!r}; one of {', '.join(SERVICE_TOPICS)}"
        )
    try:
        document = msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise BadServiceBatch(400, f"body is not UTF-8 JSON: {exc}") from exc
    except RecursionError as exc:
        raise BadServiceBatch(400, "body is nested too deeply to parse") from exc
    items: list[Any] = document if isinstance(document, list) else [document]
    if len(items) > MAX_MESSAGES_PER_REQUEST:
        raise BadServiceBatch(
            413, f"{len(items)} messages; at most {MAX_MESSAGES_PER_REQUEST} per request"
        )
    records: list[OutgoingRecord] = []
    invalid: list[InvalidServiceMessage] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            invalid.append(InvalidServiceMessage(index, "not a JSON object"))
            continue
        claimed = item.get("project", project)
        if claimed != project:
            invalid.append(
                InvalidServiceMessage(
                    index, f"project {claimed!r} is not the write key's project {project!r}"
                )
            )
            continue
        try:
            # The consumer's own decoder (schemas/services.py) is the validation.
            message = topic.decoder.decode(_json.encode({**item, "project": project}))
        except msgspec.DecodeError as exc:
            invalid.append(InvalidServiceMessage(index, f"invalid {topic.name} message: {exc}"))
            continue
        records.append(OutgoingRecord(topic.name, message_key(message), encode_message(message)))
    if invalid:
        raise BadServiceBatch(
            400,
            f"{len(invalid)} of {len(items)} messages invalid; nothing was published",
            invalid,
        )
    return records


class ServiceEndpoint:
    """The handler, sharing the gateway's keys, limits, admission and bus."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def handle(self, request: Request) -> Response:
        gateway = self.gateway
        if retry_after_s := gateway.admission.enter():
            REQUESTS_SHED.labels("services").inc()
            return error_response(Refusal(503, "gateway overloaded, retry later", retry_after_s))
        try:
            accepted = await self._publish(request)
        except BadServiceBatch as refusal:
            if not refusal.invalid:
                return error_response(refusal)
            return Response(
                orjson.dumps(
                    {
                        "error": str(refusal),
                        "errors": [{"index": i.index, "reason": i.reason} for i in refusal.invalid],
                    }
                ),
                status_code=refusal.status,
                media_type="application/json",
            )
        except Refusal as refusal:
            return error_response(refusal)
        finally:
            gateway.admission.leave()
        return Response(orjson.dumps({"accepted": accepted}), media_type="application/json")

    async def _publish(self, request: Request) -> int:
        gateway = self.gateway
        client_ip = request.client.host if request.client else "unknown"
        if wait := gateway.ip_limiter.allow(client_ip):
            raise Refusal(429, "too many requests from this address", wait)
        key = key_from_authorization(request.headers.get("authorization"))
        project = gateway.keys.project_for(key)
        if key is None or project is None:
            raise Refusal(401, "missing or unknown write key")
        body = await request_body(request)
        records = service_records(request.path_params["topic"], body, project)
        if wait := gateway.key_limiter.allow(key):
            raise Refusal(429, "too many requests for this write key", wait)
        if records:
            try:
                await gateway.publisher.publish(records)
            except BusUnavailable as exc:
                raise Refusal(
                    503, f"bus unavailable, retry the whole request: {exc}", exc.retry_after_s
                ) from exc
        return len(records)


def add_service_routes(app: FastAPI, gateway: Gateway) -> list[str]:
    """The service publish endpoint on `app`; returns its path (for the OpenAPI table)."""
    app.add_route(SERVICES_PATH, ServiceEndpoint(gateway).handle, methods=["POST"])
    return [SERVICES_PATH]
