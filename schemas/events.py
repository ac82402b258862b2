"""The analytics event contract shared by the gateway and the stream consumers (SPEC §2, §6).

`Event` is one accepted event after validation and clock-skew correction. The gateway
produces `EventRecord`s to `analytics.events` and `DeadLetter`s to `analytics.events.dlq`;
consumers decode them with the helpers here, so the wire format is defined once.

Typed props (§6) are msgspec Structs used only to *check* props: a known event type's props
must convert into its struct, but the stored props stay the plain dict the client sent
(extra keys are allowed and kept). Numbers accept ints or floats; durations, bitrates and
played time must be >= 0. `content_id` is optional on every `playback_*` event.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

NonEmptyStr = Annotated[str, msgspec.Meta(min_length=1)]
# msgspec's float accepts JSON ints too (and rejects booleans), which is what
# "a number" means for a client.
NonNegativeNumber = Annotated[float, msgspec.Meta(ge=0)]


class PageViewProps(msgspec.Struct, kw_only=True):
    url: str
    title: str | None = None


class SessionStartProps(msgspec.Struct, kw_only=True):
    pass


class SessionEndProps(msgspec.Struct, kw_only=True):
    duration_ms: NonNegativeNumber


class GestureProps(msgspec.Struct, kw_only=True):
    gesture: NonEmptyStr
    hand: str | None = None


class _PlaybackProps(msgspec.Struct, kw_only=True):
    # play_id groups a play's events (SPEC §4), so an empty one would merge unrelated plays.
    play_id: NonEmptyStr
    content_id: str | None = None


class PlaybackRequestProps(_PlaybackProps, kw_only=True):
    pass


class PlaybackStartProps(_PlaybackProps, kw_only=True):
    startup_ms: NonNegativeNumber
    bitrate_kbps: NonNegativeNumber


class PlaybackHeartbeatProps(_PlaybackProps, kw_only=True):
    played_ms: NonNegativeNumber
    bitrate_kbps: NonNegativeNumber


class PlaybackRebufferProps(_PlaybackProps, kw_only=True):
    duration_ms: NonNegativeNumber


class PlaybackQualityChangeProps(_PlaybackProps, kw_only=True):
    from_kbps: NonNegativeNumber
    to_kbps: NonNegativeNumber


class PlaybackErrorProps(_PlaybackProps, kw_only=True):
    code: str | int
    fatal: bool


class PlaybackEndProps(_PlaybackProps, kw_only=True):
    played_ms: NonNegativeNumber


PROPS_TYPES: dict[str, type[msgspec.Struct]] = {
    "page_view": PageViewProps,
    "session_start": SessionStartProps,
    "session_end": SessionEndProps,
    "gesture": GestureProps,
    "playback_request": PlaybackRequestProps,
    "playback_start": PlaybackStartProps,
    "playback_heartbeat": PlaybackHeartbeatProps,
    "playback_rebuffer": PlaybackRebufferProps,
    "playback_quality_change": PlaybackQualityChangeProps,
    "playback_error": PlaybackErrorProps,
    "playback_end": PlaybackEndProps,
}


# omit_defaults keeps records small: most events carry no device/app fields of their own.
# gc=False is safe because an Event holds only JSON-derived values, which cannot form cycles.
class Event(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """One accepted event. `ts` is the event time in epoch ms after clock-skew correction;
    the string fields are "" when neither the event nor the batch context set them."""

    event_id: str
    type: str
    user_id: str
    ts: int
    session_id: str = ""
    device_model: str = ""
    app_version: str = ""
    os: str = ""
    region: str = ""
    props: dict[str, Any] = msgspec.field(default_factory=dict)


RECORD_VERSION = 1


# gc=False for the same reason as Event: the worker decodes one per Kafka record, and
# untracked they cost its cyclic GC nothing.
class EventRecord(msgspec.Struct, kw_only=True, gc=False):
    """The value of one Kafka record on `analytics.events`.

    Record layout: one record per (project, user_id) per request, keyed `project:user_id`
    (`record_key`). The key keeps each user's events ordered in one partition; grouping a
    request's events per user gives fewer, larger records, because per-record overhead in
    Kafka and Faust dominates throughput (FIELD-NOTES). `v` is the layout version;
    `decode_record` refuses one it does not know rather than guess.

    `source` is the endpoint family every event of the record came through ("native",
    "segment" or "posthog"), stored on each event row. It is an optional field of layout 1,
    not a new layout: records written before it existed decode with "" (unknown), and
    consumers that predate it ignore it.
    """

    v: int = RECORD_VERSION
    project: str
    received_at: int
    events: list[Event]
    source: str = ""


class DeadLetter(msgspec.Struct, kw_only=True):
    """The value of one record on `analytics.events.dlq` (key: project): one rejected event.

    `index` is the event's position in the request's batch, `reason` the same text the
    client got back, and `raw` the event's JSON text as sent (native endpoint) or as
    normalized to the native shape (Segment/PostHog endpoints).
    """

    project: str
    received_at: int
    index: int
    reason: str
    raw: str
    source: str  # the endpoint family: "native", "segment" or "posthog"


_encoder = msgspec.json.Encoder()
_record_decoder = msgspec.json.Decoder(EventRecord)
_dead_letter_decoder = msgspec.json.Decoder(DeadLetter)


def record_key(project: str, user_id: str) -> bytes:
    return f"{project}:{user_id}".encode()


# The type of the one event of an erasure record. Clients cannot send it: event types start
# with a lowercase letter (`validate`).
ERASURE_TYPE = "$erase"


def erasure_record(project: str, user_id: str, received_at: int) -> EventRecord:
    """A request to forget a user (`DELETE /v1/users/{id}`), published under the user's
    record key so it follows the user's earlier events in their partition: the processors
    drop the user's state and pending rows, and the sinks delete the user's rows once
    everything before it is stored."""
    event = Event(event_id=f"{ERASURE_TYPE}:{received_at}", type=ERASURE_TYPE, user_id=user_id,
                  ts=received_at)  # fmt: skip
    return EventRecord(project=project, received_at=received_at, events=[event])


def erased_user(record: EventRecord) -> str | None:
    """The user an erasure record erases; None for a record of events."""
    events = record.events
    if len(events) == 1 and events[0].type == ERASURE_TYPE:
        return events[0].user_id
    return None


def encode_record(record: EventRecord) -> bytes:
    return _encoder.encode(record)


def decode_record(data: bytes) -> EventRecord:
    """Raises msgspec.DecodeError (msgspec.ValidationError for a wrong shape or an unknown
    layout version)."""
    record = _record_decoder.decode(data)
    if record.v != RECORD_VERSION:
        raise msgspec.ValidationError(f"unknown event record version {record.v}")
    return record


def encode_dead_letter(dead_letter: DeadLetter) -> bytes:
    return _encoder.encode(dead_letter)


def decode_dead_letter(data: bytes) -> DeadLetter:
    """Raises msgspec.DecodeError (msgspec.ValidationError for a wrong shape)."""
    return _dead_letter_decoder.decode(data)
