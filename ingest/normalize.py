"""Segment and PostHog request bodies → native-shaped event dicts (SPEC §2 compatibility).

Pure mapping, no validation: the caller hands `Normalized.events` to
`ingest.validate.validate_dicts`, so compat events get exactly the native rules, reasons,
dedup and dead-lettering. Normalizers never drop an item: a field that cannot be mapped is
left out (validation then says `missing_field: ...`), a value of the wrong kind is passed
through (validation says `invalid_...`), and an item that is not an object is passed
through as is (`not_an_object`), so every rejection lands at the item's own index.
Only a body that is not a batch at all raises BadBatch.

Event names become native types with `slugify_event_name`. Ids that arrive as JSON
integers are turned into strings, as the official SDKs do themselves.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import msgspec

from ingest.validate import BadBatch


@dataclass(slots=True)
class Normalized:
    """`write_key` as found in the body (None if absent: the gateway also accepts header
    auth); `sent_at` in epoch ms; `context` the batch defaults with native names."""

    write_key: str | None
    sent_at: int | None
    context: dict[str, Any]
    events: list[Any]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_NOT_IN_TYPE = re.compile(r"[^a-z0-9_.]+")


def slugify_event_name(name: str) -> str:
    """Map a free-form event name to a native type (`[a-z][a-z0-9_.]{0,63}`).

    Lowercase; every run of characters outside `[a-z0-9_.]` becomes one `_`; a result not
    starting with a letter gets an `e_` prefix; cut to 64 characters. Valid native types
    are unchanged ("Video Played" → "video_played", "3d View" → "e_3d_view"). The empty
    name stays empty, so validation rejects it as `invalid_type`.
    """
    if not name:
        return name
    slug = _NOT_IN_TYPE.sub("_", name.lower())
    if not "a" <= slug[0] <= "z":
        slug = "e_" + slug
    return slug[:64]


def _epoch_ms(value: Any) -> Any:
    """Epoch ms from a number (ms) or an ISO-8601 string (naive means UTC); any other value
    is returned unchanged so validation reports it as an invalid `ts`."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) else value
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return value
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return (moment - _EPOCH) // _MS
    return value


def _sent_at(value: Any, name: str) -> int | None:
    """A batch's send time in epoch ms. Digit strings follow PostHog's capture rule (more
    than 11 digits: ms, else seconds); a value that is not a time fails the batch, like a
    non-integer `sent_at` on the native endpoint."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value) if len(value) > 11 else int(value) * 1000
    ms = _epoch_ms(value)
    if isinstance(ms, int) and not isinstance(ms, bool):
        return ms
    raise BadBatch(f"{name} must be an ISO-8601 time or epoch ms, got {value!r}")


def _id(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _first_given(mapping: Mapping[str, Any], *keys: str) -> Any:
    """The first value that is neither absent, null nor ""."""
    for key in keys:
        value = mapping.get(key)
        if value is not None and value != "":
            return value
    return None


def _sub(mapping: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = mapping.get(key)
    return value if isinstance(value, dict) else {}


# The standard dimensions of SPEC §2, by their native names.
_DIMENSIONS = ("session_id", "device_model", "app_version", "os", "region")


def _own_dimensions(event: dict[str, Any], properties: Any) -> None:
    """Give the event the dimensions its properties set under their native names: the
    event's own values, which win over the SDK's context. Only strings count: these are
    free-form properties, and an odd value there must not reject the event."""
    if isinstance(properties, dict):
        for name in _DIMENSIONS:
            value = properties.get(name)
            if isinstance(value, str):
                event[name] = value


# Segment ------------------------------------------------------------------------------

# Other message types (screen, identify, group, alias, ...) keep their name as the type.
_SEGMENT_TYPES = {"page": "page_view"}
# The message's own fields that group and alias calls carry outside `traits`/`properties`.
_SEGMENT_ID_PROPS = {"group": ("groupId", "group_id"), "alias": ("previousId", "previous_id")}


def _segment_context(context: Mapping[str, Any]) -> dict[str, Any]:
    """Native context fields from a Segment `context` object (only those present)."""
    mapped: dict[str, Any] = {}
    # analytics.js in a browser sends no `os`, but the client hints' platform.
    os_name = _first_given(_sub(context, "os"), "name")
    if os_name is None:
        os_name = _first_given(_sub(context, "userAgentData"), "platform")
    for native, value in (
        ("device_model", _sub(context, "device").get("model")),
        ("app_version", _sub(context, "app").get("version")),
        ("os", os_name),
        ("region", _first_given(_sub(context, "location"), "region", "country")),
        ("session_id", context.get("session_id")),
    ):
        if value is not None:
            mapped[native] = value
    return mapped


def _segment_event(item: Any) -> Any:
    if not isinstance(item, dict):
        return item
    kind = item.get("type")
    event: dict[str, Any] = {}
    if item.get("messageId") is not None:
        event["event_id"] = _id(item["messageId"])
    user_id = _first_given(item, "userId", "anonymousId")
    if user_id is not None:
        event["user_id"] = _id(user_id)
    if kind == "track":
        type_name = item.get("event")
    elif isinstance(kind, str):
        type_name = _SEGMENT_TYPES.get(kind, kind)
    else:
        type_name = kind
    if type_name is not None:
        event["type"] = slugify_event_name(type_name) if isinstance(type_name, str) else type_name
    timestamp = _first_given(item, "timestamp", "originalTimestamp", "receivedAt")
    if timestamp is not None:
        event["ts"] = _epoch_ms(timestamp)

    properties = item.get("properties")
    source = item.get("traits") if kind in ("identify", "group") else properties
    props: Any = dict(source) if isinstance(source, dict) else source
    if props is None:
        props = {}
    if isinstance(props, dict) and kind in _SEGMENT_ID_PROPS:
        field, prop = _SEGMENT_ID_PROPS[kind]
        if item.get(field) is not None:
            props.setdefault(prop, _id(item[field]))
    context = _sub(item, "context")
    if isinstance(props, dict):
        name = item.get("name")
        if kind == "page":
            if name is not None:
                props.setdefault("title", name)
            # analytics.js puts the URL in context.page; server libraries in properties.
            page_url = _sub(context, "page").get("url")
            if page_url is not None:
                props.setdefault("url", page_url)
        elif kind == "screen" and name is not None:
            props.setdefault("name", name)
    event["props"] = props

    event.update(_segment_context(context))
    _own_dimensions(event, properties)
    return event


def normalize_segment(body: Any) -> Normalized:
    """Map a Segment HTTP API body to native-shaped events.

    Accepts `/v1/batch` (`{"batch": [...], "writeKey"?, "sentAt"?, "context"?}`) and a
    single message carrying its own `type` (`normalize_segment_call` is for the
    single-call endpoints, where the path names the type). Mapping per message:
    messageId → event_id; userId, else anonymousId → user_id; type track → slugified
    `event`, page → page_view, screen, identify, group and alias → their name, any other
    type → its slugified name; properties → props (identify and group: traits); a page's
    `name` becomes props.title and `context.page.url` props.url when those are absent, a
    screen's `name` props.name, a group's `groupId` props.group_id, an alias's
    `previousId` props.previous_id; timestamp (else originalTimestamp, else receivedAt)
    → ts.

    Dimensions, first given: the native name in `properties` when it is a string (the
    event's own value: `properties.os`, ...); else the message's context:
    context.device.model, app.version, os.name (else userAgentData.platform, what
    analytics.js sends), location.region (else .country), session_id → device_model,
    app_version, os, region, session_id; else the batch-level `context`, which becomes
    `Normalized.context` with the same mapping and which validation merges field by
    field under each message's own values.
    Raises BadBatch if the body is not an object, `batch` is not an array, `context` is
    not an object, or `sentAt` is not a time.
    """
    if not isinstance(body, dict):
        raise BadBatch("Segment body must be a JSON object")
    if "batch" in body:
        items = body["batch"]
        if not isinstance(items, list):
            raise BadBatch("batch must be an array")
        batch_context = body.get("context")
        if batch_context is None:
            batch_context = {}
        elif not isinstance(batch_context, dict):
            raise BadBatch("context must be an object")
    else:
        items = [body]
        batch_context = {}
    write_key = body.get("writeKey")
    return Normalized(
        write_key=write_key if isinstance(write_key, str) else None,
        sent_at=_sent_at(body.get("sentAt"), "sentAt"),
        context=_segment_context(batch_context),
        events=[_segment_event(item) for item in items],
    )


def normalize_segment_call(body: Any, call: str) -> Normalized:
    """Map one message of a Segment single-call endpoint (analytics.js's `/v1/t`, `/v1/p`,
    ..., the HTTP API's `/v1/track`, `/v1/page`, ...) whose path names the message type
    `call` (track, page, screen, identify, group or alias), like a `normalize_segment`
    message of that type: the path decides the type whatever the body's `type` says.
    `writeKey` and `sentAt` come from the body. Raises BadBatch if the body is not an
    object or `sentAt` is not a time."""
    if not isinstance(body, dict):
        raise BadBatch("Segment body must be a JSON object")
    write_key = body.get("writeKey")
    return Normalized(
        write_key=write_key if isinstance(write_key, str) else None,
        sent_at=_sent_at(body.get("sentAt"), "sentAt"),
        context={},
        events=[_segment_event({**body, "type": call})],
    )


# PostHog ------------------------------------------------------------------------------

_PH_CONTEXT = (
    ("$session_id", "session_id"),
    ("$device_model", "device_model"),
    ("$app_version", "app_version"),
    ("$os", "os"),
)


def _posthog_type(name: Any) -> Any:
    if not isinstance(name, str):
        return name
    if name == "$pageview":
        return "page_view"
    if name.startswith("$"):
        return slugify_event_name("ph_" + name[1:])
    return slugify_event_name(name)


def _posthog_event(item: Any, sent_at: int | None) -> Any:
    if not isinstance(item, dict):
        return item
    properties = item.get("properties")
    props: Any = dict(properties) if isinstance(properties, dict) else properties
    if props is None:
        props = {}
    event: dict[str, Any] = {}
    if item.get("uuid") is not None:
        event["event_id"] = item["uuid"]
    # PostHog capture's own lookup order.
    user_id = _first_given(item, "$distinct_id")
    if user_id is None and isinstance(props, dict):
        user_id = _first_given(props, "distinct_id")
    if user_id is None:
        user_id = _first_given(item, "distinct_id")
    if user_id is not None:
        event["user_id"] = _id(user_id)
    if item.get("event") is not None:
        event["type"] = _posthog_type(item["event"])

    timestamp = item.get("timestamp")
    if timestamp is not None:
        event["ts"] = _epoch_ms(timestamp)
    elif sent_at is not None:
        # PostHog stamps such events "now - offset"; sent_at is corrected to receive
        # time by the skew rule, so sent_at - offset lands on the same instant.
        offset = item.get("offset")
        if isinstance(offset, int) and not isinstance(offset, bool):
            event["ts"] = sent_at - offset
        else:
            event["ts"] = sent_at

    if isinstance(props, dict):
        # posthog-python's set()/set_once() send these at the top level; PostHog's own
        # v1 capture moves them into properties.
        for key in ("$set", "$set_once"):
            if key in item and key not in props:
                props[key] = item[key]
        if event.get("type") == "page_view" and "url" not in props and "$current_url" in props:
            props["url"] = props["$current_url"]
        for posthog_key, native in _PH_CONTEXT:
            if props.get(posthog_key) is not None:
                event[native] = props[posthog_key]
        _own_dimensions(event, props)
    event["props"] = props
    return event


def _posthog_write_key(body: Any, items: list[Any]) -> str | None:
    candidates: list[Any] = []
    if isinstance(body, dict):
        candidates += [body.get("api_key"), body.get("token"), body.get("$token")]
    if items and isinstance(items[0], dict):
        first = items[0]
        candidates += [first.get("api_key"), first.get("token"), first.get("$token")]
        candidates.append(_sub(first, "properties").get("token"))
    for candidate in candidates:
        if isinstance(candidate, str) and candidate:
            return candidate
    return None


def normalize_posthog(body: Any, query_params: Mapping[str, str] | None = None) -> Normalized:
    """Map a PostHog capture body (already decoded, see `decode_posthog_payload`) to
    native-shaped events.

    The body is a batch `{"api_key"|"token", "batch": [...], "sent_at"?}` (posthog-python,
    posthog-node), an array of events, or one event. Mapping: uuid → event_id;
    `$distinct_id`, else properties.distinct_id, else distinct_id → user_id; event
    `$pageview` → page_view (props.url from `$current_url` when absent), other `$name` →
    slugified `ph_name`, other names slugified; properties → props (no key dropped;
    top-level `$set`/`$set_once` are added); timestamp (ISO or epoch ms) → ts. An event
    without timestamp is stamped `sent_at - offset` when the batch has a sent_at (PostHog
    stamps it with the receive time minus `offset`).

    Dimensions: a property under the native name when it is a string (`os`, ...: the
    event's own value), else `$session_id`, `$device_model`, `$app_version`, `$os` →
    session_id, device_model, app_version, os (posthog-js sets `$os` and `$session_id`;
    mobile SDKs also the device model and app version). PostHog bodies have no batch
    context.

    sent_at comes from the `_` query parameter (posthog-js), else `sent_at`/`sentAt` in
    the body or, for a single event, in the event. The write key is `api_key`, `token` or
    `$token` at the top level, else in the first event or its properties.
    Raises BadBatch when the body is not an object or array, `batch` is not an array, or
    sent_at is not a time.
    """
    items: list[Any]
    if isinstance(body, list):
        items = body
    elif isinstance(body, dict):
        if "batch" in body:
            batch = body["batch"]
            if not isinstance(batch, list):
                raise BadBatch("batch must be an array")
            items = batch
        else:
            items = [body]
    else:
        raise BadBatch("PostHog body must be a JSON object or array")

    raw_sent_at = (query_params or {}).get("_")
    if not raw_sent_at and isinstance(body, dict):
        raw_sent_at = _first_given(body, "sent_at", "sentAt")
    sent_at = _sent_at(raw_sent_at, "sent_at")
    return Normalized(
        write_key=_posthog_write_key(body, items),
        sent_at=sent_at,
        context={},
        events=[_posthog_event(item, sent_at) for item in items],
    )


_FORM = "application/x-www-form-urlencoded"


def _base64(data: bytes) -> bytes:
    # Form decoding turns "+" into " " (PostHog's capture undoes it the same way), and
    # some clients send URL-safe base64 or drop the padding.
    text = data.strip().replace(b" ", b"+").replace(b"-", b"+").replace(b"_", b"/")
    try:
        return base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
    except binascii.Error:
        raise BadBatch("body is neither JSON nor base64-encoded JSON") from None


def decode_posthog_payload(body: bytes, content_type: str, compression: str | None) -> Any:
    """Decode an already-decompressed PostHog capture body into JSON values: the JSON text
    `posthog_json` finds, decoded. Raises BadBatch as that does, and when the text is not
    JSON."""
    payload = posthog_json(body, content_type, compression)
    try:
        return msgspec.json.decode(payload)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise BadBatch(f"body is not valid JSON: {exc}") from None


def posthog_json(body: bytes, content_type: str, compression: str | None) -> bytes:
    """The JSON text inside an already-decompressed PostHog capture body.

    Handles a JSON body; base64 of JSON (`compression=base64`, or a body not starting with
    `{`/`[`); and `application/x-www-form-urlencoded` with a `data` field holding either
    (its `compression` field counts when the query has none), as posthog-js sends to /e/.
    Gzip is the gateway's job (magic bytes, `?compression=gzip-js`): a gzip body reaching
    this function, lz-string (`lz64`) and anything else undecodable raise BadBatch.
    """
    if body[:2] == b"\x1f\x8b":
        raise BadBatch("gzip body was not decompressed")
    payload = body
    if content_type.split(";", 1)[0].strip().lower() == _FORM:
        try:
            form = parse_qs(body.decode("ascii"), keep_blank_values=True, errors="strict")
        except UnicodeDecodeError:
            raise BadBatch("form body is not URL-encoded text") from None
        if "data" not in form:
            raise BadBatch("form body has no data field")
        payload = form["data"][0].encode()
        if compression is None and "compression" in form:
            compression = form["compression"][0]
    if compression == "lz64":
        raise BadBatch("compression=lz64 is not supported; use gzip-js or base64")
    if compression == "base64" or payload.lstrip()[:1] not in (b"{", b"["):
        payload = _base64(payload)
    return payload
