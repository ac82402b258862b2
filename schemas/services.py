"""Message contracts of the service topics (SPEC §3, §4 "Service metrics").

The social, CMS and video services (and any service sending e-mail) publish these Structs
with `schemas.publisher.ServicePublisher`; the service-metrics processor decodes them with
`decode_message`. The wire format is JSON, one message per Kafka record, keyed by the
topic's key field from the registry in `schemas/topics.py` (see `SERVICE_TOPICS`).

Contract, common to every message:
- `message_id` (1 to 128 chars) is the deduplication key: a producer retry or a consumer
  replay of the same message is counted once. Send a *new* message_id for a new fact (a
  job going from "queued" to "succeeded" is two messages). Reusing a message_id for
  different content is a producer bug; which copy is counted is then unspecified.
- `ts` is the time of the fact, epoch milliseconds (UTC days are derived from it).
- `project` is optional and defaults to "default": messages on Kafka have no write key, so
  a multi-project install tags them itself; `GET /v1/metrics/services?project=` filters on it.
  Over HTTP (`quip up`, ingest/services.py) the write key's project is the message's.
- Unknown fields are ignored on decode, so producers may add fields before consumers know
  them; a missing required field, a wrong type or an unknown status is a validation error.

Which messages count (SPEC §4): social `status == "delivered"`, cms `action == "published"`,
video `status` queued/succeeded/failed with p95 of `encode_ms` over succeeded jobs that carry
it, e-mail `status` sent/failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import msgspec

from schemas.topics import (
    CMS_PUBLISH,
    NOTIFICATIONS_EMAIL,
    SOCIAL_NOTIFICATIONS,
    VIDEO_ENCODING,
    TopicSpec,
)

DEFAULT_PROJECT = "default"
# Per request of the HTTP transport (`POST /v1/services/{topic}`), as for events (SPEC §2).
MAX_MESSAGES_PER_REQUEST = 1000

MessageId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Identifier = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Label = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
EpochMs = Annotated[int, msgspec.Meta(ge=0)]
# msgspec's float accepts JSON ints too and refuses booleans, as in schemas/events.py.
Milliseconds = Annotated[float, msgspec.Meta(ge=0)]
Project = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]

SocialStatus = Literal["sent", "delivered", "failed"]
PublishAction = Literal["published", "updated", "unpublished"]
EncodingStatus = Literal["queued", "succeeded", "failed"]
EmailStatus = Literal["sent", "failed"]


# omit_defaults keeps records small (unset optional fields are not sent); forbid nothing
# unknown, so the contract can grow without breaking older consumers.
class SocialNotification(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """`social.notifications` (key: user_id, the recipient). `kind` is free text, e.g.
    "friend_request", "message", "mention"."""

    message_id: MessageId
    user_id: Identifier
    kind: Label
    status: SocialStatus
    ts: EpochMs
    sender_id: Identifier | None = None
    project: Project = DEFAULT_PROJECT


class ContentPublished(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """`cms.publish` (key: content_id). `content_type` is free text, e.g. "video", "scene"."""

    message_id: MessageId
    content_id: Identifier
    action: PublishAction
    content_type: Label
    ts: EpochMs
    author_id: Identifier | None = None
    project: Project = DEFAULT_PROJECT


class EncodingJob(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """`video.encoding` (key: job_id). `encode_ms` is the encoding time of a finished job
    (succeeded or failed); a queued job cannot carry it. `profile` names the encoding
    ladder, e.g. "1080p-h264"."""

    message_id: MessageId
    job_id: Identifier
    content_id: Identifier
    status: EncodingStatus
    ts: EpochMs
    encode_ms: Milliseconds | None = None
    profile: Label | None = None
    project: Project = DEFAULT_PROJECT

    def __post_init__(self) -> None:
        # Raised as msgspec.ValidationError when decoding.
        if self.status == "queued" and self.encode_ms is not None:
            raise ValueError("encode_ms is only allowed on a finished job (succeeded or failed)")


class EmailNotification(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """`notifications.email` (key: user_id, the recipient). `error` says why a send failed."""

    message_id: MessageId
    user_id: Identifier
    template: Label
    status: EmailStatus
    ts: EpochMs
    error: Annotated[str, msgspec.Meta(max_length=1024)] | None = None
    project: Project = DEFAULT_PROJECT


ServiceMessage = SocialNotification | ContentPublished | EncodingJob | EmailNotification


@dataclass(frozen=True, slots=True)
class ServiceTopic:
    """One service topic: its registry entry, message schema and key field."""

    spec: TopicSpec
    schema: type[ServiceMessage]
    decoder: msgspec.json.Decoder[ServiceMessage]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def key_field(self) -> str:
        return self.spec.key


def _service_topic(spec: TopicSpec, schema: type[ServiceMessage]) -> ServiceTopic:
    if spec.key not in schema.__struct_fields__:
        raise RuntimeError(f"{schema.__name__} has no field {spec.key!r}, the key of {spec.name}")
    return ServiceTopic(spec, schema, msgspec.json.Decoder(schema))


SERVICE_TOPICS: dict[str, ServiceTopic] = {
    topic.name: topic
    for topic in (
        _service_topic(SOCIAL_NOTIFICATIONS, SocialNotification),
        _service_topic(CMS_PUBLISH, ContentPublished),
        _service_topic(VIDEO_ENCODING, EncodingJob),
        _service_topic(NOTIFICATIONS_EMAIL, EmailNotification),
    )
}
"""Topic name → schema and key field; the only place a service topic is tied to its Struct."""

TOPIC_BY_SCHEMA: dict[type[object], ServiceTopic] = {
    topic.schema: topic for topic in SERVICE_TOPICS.values()
}


class UnknownTopic(ValueError):
    """The topic is not a service topic of the registry."""


class InvalidMessage(ValueError):
    """A message does not satisfy its topic's schema (or is not a service message at all)."""


_encoder = msgspec.json.Encoder()


def topic_for(message: object) -> ServiceTopic:
    """The topic a message belongs to, by its exact type. Raises InvalidMessage for anything
    that is not one of the four service Structs (dicts and subclasses included)."""
    topic = TOPIC_BY_SCHEMA.get(type(message))
    if topic is None:
        raise InvalidMessage(
            f"not a service message: {type(message).__name__} "
            f"(expected one of {', '.join(t.schema.__name__ for t in SERVICE_TOPICS.values())})"
        )
    return topic


def encode_message(message: ServiceMessage) -> bytes:
    """The JSON value of a message, checked against its schema.

    msgspec does not check constraints (lengths, literals, `ge`) when encoding, so the
    encoded bytes are decoded again with the topic's decoder: a message that would be
    refused by consumers is refused here instead. Raises InvalidMessage."""
    topic = topic_for(message)
    try:
        data = _encoder.encode(message)
        topic.decoder.decode(data)
    except (msgspec.ValidationError, msgspec.EncodeError, TypeError) as exc:
        raise InvalidMessage(f"{topic.schema.__name__}: {exc}") from exc
    return data


def message_key(message: ServiceMessage) -> bytes:
    """The Kafka key: the value of the topic's key field (SPEC §3), UTF-8."""
    value: str = getattr(message, topic_for(message).key_field)
    return value.encode()


def decode_message(topic: str, data: bytes) -> ServiceMessage:
    """Decode one record value of a service topic.

    Raises UnknownTopic, or msgspec.DecodeError (msgspec.ValidationError, a subclass, for
    well-formed JSON of the wrong shape)."""
    service_topic = SERVICE_TOPICS.get(topic)
    if service_topic is None:
        raise UnknownTopic(f"not a service topic: {topic!r}")
    return service_topic.decoder.decode(data)
