"""Segment and PostHog bodies, shaped as the real SDKs build them (segment-analytics-python
2.4.0, analytics.js, posthog 7.91.1, posthog-js), through the normalizers and the shared
validation (SPEC §2 compatibility endpoints)."""

from __future__ import annotations

import base64
import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest

from ingest.normalize import (
    Normalized,
    decode_posthog_payload,
    normalize_posthog,
    normalize_segment,
    slugify_event_name,
)
from ingest.validate import BadBatch, Limits, Rejection, ValidatedBatch, validate_dicts
from schemas.events import Event

NOW = 1_764_100_000_000  # the gateway clock (received_at)
LIMITS = Limits()
DROP = object()  # an override that removes the field

Factory = Callable[..., dict[str, Any]]


def iso(ms: int, tz: timezone = UTC, timespec: str = "milliseconds") -> str:
    moment = datetime.fromtimestamp(ms / 1000, tz)
    return moment.isoformat(timespec=timespec)


def _apply(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = {**base, **overrides}
    return {key: value for key, value in merged.items() if value is not DROP}


def validated(normalized: Normalized) -> ValidatedBatch:
    return validate_dicts(normalized.events, normalized.context, normalized.sent_at, NOW, LIMITS)


def one_event(normalized: Normalized) -> Event:
    batch = validated(normalized)
    assert batch.rejected == []
    (event,) = batch.accepted
    return event


def only_rejection(normalized: Normalized) -> Rejection:
    batch = validated(normalized)
    assert len(batch.rejected) == 1, batch.rejected
    return batch.rejected[0]


# --- Segment --------------------------------------------------------------------------------


@pytest.fixture
def segment_message_factory() -> Factory:
    """A message as segment-analytics-python 2.4.0 queues it (`Client._enqueue`: ids
    stringified, timestamp isoformat with ms, userId/anonymousId kept even when None)."""
    ids = itertools.count()

    def make(**overrides: Any) -> dict[str, Any]:
        message = {
            "integrations": {},
            "anonymousId": None,
            "properties": {"content_id": "c-7"},
            "timestamp": iso(NOW - 5_000),
            "context": {"library": {"name": "analytics-python", "version": "2.4.0"}},
            "userId": "u-42",
            "type": "track",
            "event": "Video Played",
            "messageId": f"5d2a6c1e-0000-4000-8000-{next(ids):012d}",
        }
        return _apply(message, overrides)

    return make


def segment_batch(*messages: Any, **envelope: Any) -> dict[str, Any]:
    """The body `segment.analytics.request.post` sends to /v1/batch."""
    body = {"batch": list(messages), "sentAt": iso(NOW, timespec="microseconds")}
    body["writeKey"] = "wk_segment"
    return _apply(body, envelope)


def test_segment_track_from_python_client(segment_message_factory: Factory) -> None:
    message = segment_message_factory()

    normalized = normalize_segment(segment_batch(message))

    assert (normalized.write_key, normalized.sent_at) == ("wk_segment", NOW)
    assert one_event(normalized) == Event(
        event_id=message["messageId"],
        type="video_played",
        user_id="u-42",
        ts=NOW - 5_000,
        props={"content_id": "c-7"},
    )


def test_segment_page_from_analytics_js() -> None:
    message: dict[str, Any] = {
        "type": "page",
        "name": "Home",
        "properties": {"path": "/", "referrer": "", "search": "", "url": "https://q.test/"},
        "context": {
            "page": {"path": "/", "title": "Home", "url": "https://q.test/"},
            "userAgent": "Mozilla/5.0 (X11; Linux x86_64) OculusBrowser/35.0",
            "library": {"name": "analytics.js", "version": "next-1.70.0"},
            "locale": "en-US",
        },
        "anonymousId": "anon-1",
        "userId": None,
        "messageId": "ajs-next-6f1e2b5c0a",
        "timestamp": "2025-11-25T19:46:35.000Z",
        "integrations": {},
    }

    event = one_event(normalize_segment(segment_batch(message)))

    assert (event.type, event.user_id, event.ts) == ("page_view", "anon-1", NOW - 5_000)
    assert event.props == {**message["properties"], "title": "Home"}


@pytest.mark.parametrize(
    ("overrides", "event_type", "props"),
    [
        pytest.param({"event": "Order Completed!"}, "order_completed_", {"n": 1}, id="track"),
        pytest.param(
            {"type": "page", "name": "Lobby", "properties": {"url": "https://q.test/l"}},
            "page_view",
            {"url": "https://q.test/l", "title": "Lobby"},
            id="page name becomes title",
        ),
        pytest.param(
            {
                "type": "page",
                "name": "Lobby",
                "properties": {"title": "Own", "url": "https://q.test/l"},
            },
            "page_view",
            {"title": "Own", "url": "https://q.test/l"},
            id="page title kept",
        ),
        pytest.param(
            {
                "type": "page",
                "properties": {},
                "context": {"page": {"url": "https://q.test/from-context"}},
            },
            "page_view",
            {"url": "https://q.test/from-context"},
            id="page url from context.page",
        ),
        pytest.param(
            {"type": "screen", "name": "Settings", "properties": {}},
            "screen",
            {"name": "Settings"},
            id="screen",
        ),
        pytest.param(
            {"type": "identify", "traits": {"email": "a@q.test"}, "properties": DROP},
            "identify",
            {"email": "a@q.test"},
            id="identify traits",
        ),
        pytest.param(
            {"type": "group", "groupId": "g-1", "traits": {}, "properties": DROP},
            "group",
            {"group_id": "g-1"},
            id="group traits and groupId",
        ),
    ],
)
def test_segment_types(
    overrides: dict[str, Any],
    event_type: str,
    props: dict[str, Any],
    segment_message_factory: Factory,
) -> None:
    message = segment_message_factory(**{"event": DROP, "properties": {"n": 1}, **overrides})

    event = one_event(normalize_segment(segment_batch(message)))

    assert (event.type, event.props) == (event_type, props)


@pytest.mark.parametrize(
    "user_overrides",
    [
        pytest.param({"userId": None}, id="userId null"),
        pytest.param({"userId": DROP}, id="userId absent"),
        pytest.param({"userId": ""}, id="userId empty"),
    ],
)
def test_segment_anonymous_id_fallback(
    user_overrides: dict[str, Any], segment_message_factory: Factory
) -> None:
    message = segment_message_factory(anonymousId="anon-9", **user_overrides)

    assert one_event(normalize_segment(segment_batch(message))).user_id == "anon-9"


def test_segment_numeric_ids_become_strings(segment_message_factory: Factory) -> None:
    message = segment_message_factory(userId=42, messageId=1001)

    event = one_event(normalize_segment(segment_batch(message)))

    assert (event.user_id, event.event_id) == ("42", "1001")


def test_segment_context_mapping(segment_message_factory: Factory) -> None:
    message = segment_message_factory(
        context={
            "device": {"model": "Quest 3", "manufacturer": "Meta"},
            "app": {"name": "Qui", "version": "3.0.0", "build": "300"},
            "os": {"name": "Horizon OS", "version": "72"},
            "location": {"country": "DE"},
            "session_id": "s-ctx",
        },
    )

    event = one_event(normalize_segment(segment_batch(message)))

    assert (event.device_model, event.app_version, event.os, event.region) == (
        "Quest 3",
        "3.0.0",
        "Horizon OS",
        "DE",
    )
    assert event.session_id == "s-ctx"


@pytest.mark.parametrize(
    ("context", "properties", "region", "session_id"),
    [
        pytest.param(
            {"location": {"region": "Bavaria", "country": "DE"}},
            {},
            "Bavaria",
            "",
            id="region before country",
        ),
        pytest.param(
            {"session_id": "s-ctx"},
            {"session_id": "s-props"},
            "",
            "s-props",
            id="properties.session_id wins",
        ),
    ],
)
def test_segment_context_precedence(
    context: dict[str, Any],
    properties: dict[str, Any],
    region: str,
    session_id: str,
    segment_message_factory: Factory,
) -> None:
    message = segment_message_factory(context=context, properties=properties)

    event = one_event(normalize_segment(segment_batch(message)))

    assert (event.region, event.session_id, event.props) == (region, session_id, properties)


def test_segment_batch_context_merged_item_wins(segment_message_factory: Factory) -> None:
    own = segment_message_factory(context={"device": {"model": "Quest Pro"}})
    plain = segment_message_factory()
    body = segment_batch(
        own,
        plain,
        context={"device": {"model": "Quest 3"}, "app": {"version": "3.0.0"}},
    )

    batch = validated(normalize_segment(body))

    assert [(e.device_model, e.app_version) for e in batch.accepted] == [
        ("Quest Pro", "3.0.0"),
        ("Quest 3", "3.0.0"),
    ]


@pytest.mark.parametrize(
    ("time_fields", "ts"),
    [
        pytest.param({"timestamp": "2025-11-25T19:46:35.000Z"}, NOW - 5_000, id="Z"),
        pytest.param(
            {"timestamp": "2025-11-25T20:46:35.123+01:00"}, NOW - 4_877, id="offset +01:00"
        ),
        pytest.param({"timestamp": "2025-11-25T19:46:35"}, NOW - 5_000, id="naive is UTC"),
        pytest.param(
            {"timestamp": "2025-11-25T19:46:35.123456789Z"}, NOW - 4_877, id="nanoseconds"
        ),
        pytest.param({"timestamp": NOW - 5_000}, NOW - 5_000, id="epoch ms number"),
        pytest.param(
            {"timestamp": DROP, "originalTimestamp": "2025-11-25T19:46:36Z"},
            NOW - 4_000,
            id="originalTimestamp fallback",
        ),
        pytest.param(
            {"timestamp": None, "receivedAt": "2025-11-25T19:46:37Z"},
            NOW - 3_000,
            id="receivedAt fallback",
        ),
    ],
)
def test_segment_timestamps(
    time_fields: dict[str, Any], ts: int, segment_message_factory: Factory
) -> None:
    message = segment_message_factory(**time_fields)

    event = one_event(normalize_segment(segment_batch(message, sentAt=DROP)))

    assert event.ts == ts


def test_segment_sent_at_corrects_skew(segment_message_factory: Factory) -> None:
    # The headset clock runs 1 h behind the gateway.
    message = segment_message_factory(timestamp=iso(NOW - 3_600_000 - 2_000))
    body = segment_batch(message, sentAt=iso(NOW - 3_600_000, tz=timezone(timedelta(hours=2))))

    assert one_event(normalize_segment(body)).ts == NOW - 2_000


def test_segment_single_message(segment_message_factory: Factory) -> None:
    body = {**segment_message_factory(), "writeKey": "wk_single", "sentAt": iso(NOW)}

    normalized = normalize_segment(body)

    assert (normalized.write_key, normalized.sent_at) == ("wk_single", NOW)
    assert one_event(normalized).type == "video_played"


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        pytest.param({"messageId": DROP}, "missing_field: event_id", id="no messageId"),
        pytest.param({"userId": None, "anonymousId": None}, "missing_field: user_id", id="no user"),
        pytest.param({"event": DROP}, "missing_field: type", id="track without event"),
        pytest.param({"type": DROP}, "missing_field: type", id="no type"),
        pytest.param({"timestamp": DROP}, "missing_field: ts", id="no timestamp of any kind"),
        pytest.param(
            {"timestamp": "last tuesday"},
            "invalid_field: ts must be an integer (epoch ms)",
            id="unparseable timestamp",
        ),
        pytest.param(
            {"type": "page", "properties": {}},
            "invalid_props: page_view.url: missing, expected a string",
            id="page without url",
        ),
        pytest.param(
            {"context": {"device": {"model": 3}}},
            "invalid_field: device_model must be a string",
            id="device model a number",
        ),
    ],
)
def test_segment_rejections_at_their_index(
    overrides: dict[str, Any], reason: str, segment_message_factory: Factory
) -> None:
    good, bad = segment_message_factory(), segment_message_factory(**overrides)

    rejection = only_rejection(normalize_segment(segment_batch(good, bad, good)))

    assert (rejection.index, rejection.reason) == (1, reason)


def test_segment_non_object_item_is_rejected_not_dropped(
    segment_message_factory: Factory,
) -> None:
    normalized = normalize_segment(segment_batch(segment_message_factory(), "oops"))

    rejection = only_rejection(normalized)

    assert (rejection.index, rejection.code, rejection.raw) == (1, "not_an_object", b'"oops"')


@pytest.mark.parametrize(
    "body",
    [
        pytest.param([], id="array body"),
        pytest.param("batch", id="string body"),
        pytest.param({"batch": {"type": "track"}}, id="batch an object"),
        pytest.param({"batch": [], "context": "eu"}, id="context a string"),
        pytest.param({"batch": [], "sentAt": "soon"}, id="sentAt not a time"),
    ],
)
def test_segment_bad_body(body: Any) -> None:
    with pytest.raises(BadBatch):
        normalize_segment(body)


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        pytest.param("video_played", "video_played", id="valid unchanged"),
        pytest.param("checkout.step_2", "checkout.step_2", id="dots kept"),
        pytest.param("Video Played", "video_played", id="lowercased, space"),
        pytest.param("Order -- Completed!", "order_completed_", id="runs collapse"),
        pytest.param("3D View", "e_3d_view", id="leading digit prefixed"),
        pytest.param("_internal", "e__internal", id="leading underscore prefixed"),
        pytest.param("Überblick", "e__berblick", id="non-ASCII replaced"),
        pytest.param("x" * 100, "x" * 64, id="cut to 64"),
        pytest.param("", "", id="empty stays invalid"),
    ],
)
def test_slugify_event_name(name: str, slug: str) -> None:
    assert slugify_event_name(name) == slug


# --- PostHog --------------------------------------------------------------------------------


@pytest.fixture
def posthog_event_factory() -> Factory:
    """An event as posthog-python 7.91.1 queues it (`Client.capture` + `_enqueue`)."""
    ids = itertools.count()

    def make(**overrides: Any) -> dict[str, Any]:
        event = {
            "properties": {
                "plan": "pro",
                "$lib": "posthog-python",
                "$lib_version": "7.91.1",
                "$geoip_disable": True,
            },
            "timestamp": iso(NOW - 5_000, timespec="microseconds"),
            "distinct_id": "u-42",
            "event": "plan upgraded",
            "uuid": f"01937a1e-0000-7000-8000-{next(ids):012d}",
        }
        return _apply(event, overrides)

    return make


def posthog_batch(*events: Any, **envelope: Any) -> dict[str, Any]:
    """The body `posthog.request.batch_post` sends to /batch/."""
    body = {
        "batch": list(events),
        "historical_migration": False,
        "sent_at": iso(NOW, timespec="microseconds"),
        "api_key": "phc_server",
    }
    return _apply(body, envelope)


def posthog_js_pageview(**overrides: Any) -> dict[str, Any]:
    """A posthog-js $pageview (distinct id and token live in properties)."""
    event = {
        "uuid": "01937a1e-5c3b-7aa0-9d4e-2b0c6f1a9e11",
        "event": "$pageview",
        "properties": {
            "$os": "Android",
            "$browser": "Oculus Browser",
            "$device_type": "Desktop",
            "$current_url": "https://q.test/lobby",
            "$host": "q.test",
            "$pathname": "/lobby",
            "$lib": "web",
            "$lib_version": "1.200.0",
            "distinct_id": "anon-1",
            "$device_id": "anon-1",
            "$session_id": "sess-1",
            "$window_id": "win-1",
            "token": "phc_web",
            "title": "Lobby",
        },
        "timestamp": "2025-11-25T19:46:35.000Z",
    }
    return _apply(event, overrides)


def test_posthog_python_batch(posthog_event_factory: Factory) -> None:
    sent = posthog_event_factory()

    normalized = normalize_posthog(posthog_batch(sent))

    assert (normalized.write_key, normalized.sent_at) == ("phc_server", NOW)
    assert one_event(normalized) == Event(
        event_id=sent["uuid"],
        type="plan_upgraded",
        user_id="u-42",
        ts=NOW - 5_000,
        props=sent["properties"],
    )


def test_posthog_python_set_keeps_top_level_set(posthog_event_factory: Factory) -> None:
    # `Client.set()` sends $set beside, not inside, properties.
    sent = posthog_event_factory(event="$set", properties=DROP, **{"$set": {"plan": "pro"}})

    event = one_event(normalize_posthog(posthog_batch(sent)))

    assert (event.type, event.props) == ("ph_set", {"$set": {"plan": "pro"}})


def test_posthog_js_pageview_array() -> None:
    sent = posthog_js_pageview()

    normalized = normalize_posthog([sent], {"ip": "1", "_": str(NOW), "ver": "1.200.0"})

    assert (normalized.write_key, normalized.sent_at) == ("phc_web", NOW)
    event = one_event(normalized)
    assert (event.type, event.user_id, event.session_id, event.os) == (
        "page_view",
        "anon-1",
        "sess-1",
        "Android",
    )
    assert event.props == {**sent["properties"], "url": "https://q.test/lobby"}


def test_posthog_js_identify() -> None:
    sent = posthog_js_pageview(
        event="$identify",
        properties={
            "distinct_id": "u-42",
            "$anon_distinct_id": "anon-1",
            "token": "phc_web",
            "$set": {"email": "a@q.test"},
        },
    )

    event = one_event(normalize_posthog([sent], {"_": str(NOW)}))

    assert (event.type, event.user_id) == ("ph_identify", "u-42")
    assert event.props["$anon_distinct_id"] == "anon-1"


@pytest.mark.parametrize(
    ("name", "event_type"),
    [
        pytest.param("$pageview", "page_view", id="$pageview"),
        pytest.param("$identify", "ph_identify", id="$identify"),
        pytest.param("$autocapture", "ph_autocapture", id="$autocapture"),
        pytest.param("$feature_flag_called", "ph_feature_flag_called", id="$feature flag"),
        pytest.param("$Screen View", "ph_screen_view", id="$ name slugified"),
        pytest.param("Signed Up", "signed_up", id="plain name slugified"),
        pytest.param("playback_start", "playback_start", id="native name kept"),
    ],
)
def test_posthog_event_names(name: str, event_type: str) -> None:
    normalized = normalize_posthog({"event": name, "distinct_id": "u", "uuid": "e"})

    assert normalized.events[0]["type"] == event_type


def test_posthog_single_event_capture_api() -> None:
    body = {
        "api_key": "phc_single",
        "event": "request",
        "properties": {"distinct_id": "test-user-python"},
        "uuid": "e-1",
        "timestamp": NOW - 1_000,
    }

    normalized = normalize_posthog(body)

    assert normalized.write_key == "phc_single"
    event = one_event(normalized)
    assert (event.type, event.user_id, event.ts) == ("request", "test-user-python", NOW - 1_000)


@pytest.mark.parametrize(
    ("event", "user_id"),
    [
        pytest.param({"distinct_id": "top"}, "top", id="distinct_id"),
        pytest.param({"properties": {"distinct_id": "prop"}}, "prop", id="properties"),
        pytest.param(
            {"distinct_id": "top", "properties": {"distinct_id": "prop"}},
            "prop",
            id="properties before top level, as PostHog capture",
        ),
        pytest.param(
            {"$distinct_id": "dollar", "distinct_id": "top"}, "dollar", id="$distinct_id first"
        ),
        pytest.param({"distinct_id": 42}, "42", id="number stringified"),
    ],
)
def test_posthog_distinct_id(event: dict[str, Any], user_id: str) -> None:
    sent = {"uuid": "e", "event": "x", "timestamp": NOW, **event}

    assert one_event(normalize_posthog([sent])).user_id == user_id


@pytest.mark.parametrize(
    ("body", "write_key"),
    [
        pytest.param({"api_key": "k1", "batch": []}, "k1", id="api_key"),
        pytest.param({"token": "k2", "batch": []}, "k2", id="token"),
        pytest.param({"batch": [{"api_key": "k3"}]}, "k3", id="first event api_key"),
        pytest.param([{"properties": {"token": "k4"}}], "k4", id="first event properties"),
        pytest.param({"event": "x", "$token": "k5"}, "k5", id="$token"),
        pytest.param({"batch": [{"event": "x"}]}, None, id="none: header auth"),
    ],
)
def test_posthog_write_key(body: Any, write_key: str | None) -> None:
    assert normalize_posthog(body).write_key == write_key


def test_posthog_context_properties(posthog_event_factory: Factory) -> None:
    properties = {"$device_model": "Quest 3", "$app_version": "3.0.0", "$os": "Horizon OS"}
    sent = posthog_event_factory(properties=properties)

    event = one_event(normalize_posthog(posthog_batch(sent)))

    assert (event.device_model, event.app_version, event.os) == ("Quest 3", "3.0.0", "Horizon OS")
    assert event.props == properties


@pytest.mark.parametrize(
    ("overrides", "sent_at", "ts"),
    [
        pytest.param({"timestamp": NOW - 5_000}, None, NOW - 5_000, id="epoch ms timestamp"),
        pytest.param(
            {"timestamp": DROP, "offset": 1_500}, iso(NOW), NOW - 1_500, id="sent_at minus offset"
        ),
        pytest.param({"timestamp": DROP}, iso(NOW - 60_000), NOW, id="no timestamp: receive time"),
        pytest.param(
            {"timestamp": iso(NOW - 3_600_000 - 5_000)},
            iso(NOW - 3_600_000),
            NOW - 5_000,
            id="skew corrected",
        ),
    ],
)
def test_posthog_timestamps(
    overrides: dict[str, Any], sent_at: str | None, ts: int, posthog_event_factory: Factory
) -> None:
    body = posthog_batch(posthog_event_factory(**overrides), sent_at=sent_at or DROP)

    assert one_event(normalize_posthog(body)).ts == ts


@pytest.mark.parametrize(
    ("body", "query", "sent_at"),
    [
        pytest.param({"batch": []}, {"_": str(NOW)}, NOW, id="posthog-js _ in ms"),
        pytest.param({"batch": []}, {"_": str(NOW // 1000)}, NOW // 1000 * 1000, id="_ in s"),
        pytest.param({"batch": [], "sent_at": iso(NOW)}, {"_": str(NOW - 9)}, NOW - 9, id="_ wins"),
        pytest.param({"batch": [], "sentAt": iso(NOW)}, None, NOW, id="sentAt"),
        pytest.param({"batch": [], "sent_at": NOW}, None, NOW, id="sent_at in ms"),
        pytest.param({"batch": []}, None, None, id="none"),
    ],
)
def test_posthog_sent_at(body: Any, query: dict[str, str] | None, sent_at: int | None) -> None:
    assert normalize_posthog(body, query).sent_at == sent_at


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        pytest.param({"uuid": DROP}, "missing_field: event_id", id="no uuid"),
        pytest.param({"distinct_id": DROP}, "missing_field: user_id", id="no distinct_id"),
        pytest.param({"distinct_id": ""}, "missing_field: user_id", id="empty distinct_id"),
        pytest.param({"event": DROP}, "missing_field: type", id="no event"),
        pytest.param({"timestamp": DROP}, "missing_field: ts", id="no timestamp and no sent_at"),
        pytest.param({"properties": [1]}, "invalid_props: props must be an object", id="props"),
    ],
)
def test_posthog_rejections_at_their_index(
    item: dict[str, Any], reason: str, posthog_event_factory: Factory
) -> None:
    good, bad = posthog_event_factory(), posthog_event_factory(**item)

    rejection = only_rejection(normalize_posthog(posthog_batch(good, good, bad, sent_at=DROP)))

    assert (rejection.index, rejection.reason) == (2, reason)


def test_posthog_non_object_item_is_rejected_not_dropped(
    posthog_event_factory: Factory,
) -> None:
    rejection = only_rejection(normalize_posthog([42, posthog_event_factory()]))

    assert (rejection.index, rejection.code) == (0, "not_an_object")


@pytest.mark.parametrize(
    ("body", "query"),
    [
        pytest.param("event", None, id="string body"),
        pytest.param(7, None, id="number body"),
        pytest.param({"batch": "x"}, None, id="batch a string"),
        pytest.param({"batch": [], "sent_at": "whenever"}, None, id="sent_at not a time"),
        pytest.param({"batch": []}, {"_": "abc"}, id="_ not a time"),
    ],
)
def test_posthog_bad_body(body: Any, query: dict[str, str] | None) -> None:
    with pytest.raises(BadBatch):
        normalize_posthog(body, query)


# --- PostHog payload decoding -----------------------------------------------------------------

PAYLOAD = [{"event": "$pageview", "properties": {"x": "~~~>>>"}}]
PAYLOAD_JSON = orjson.dumps(PAYLOAD)
PAYLOAD_B64 = base64.b64encode(PAYLOAD_JSON)
FORM = "application/x-www-form-urlencoded"


def test_payload_base64_holds_a_plus() -> None:
    # The form cases below rely on these characters being mangled by URL decoding.
    assert b"+" in PAYLOAD_B64


@pytest.mark.parametrize(
    ("body", "content_type", "compression"),
    [
        pytest.param(PAYLOAD_JSON, "application/json", None, id="JSON"),
        pytest.param(b"  \n" + PAYLOAD_JSON, "text/plain", None, id="JSON after whitespace"),
        pytest.param(PAYLOAD_JSON, "application/json", "gzip-js", id="JSON already inflated"),
        pytest.param(PAYLOAD_B64, "text/plain", "base64", id="base64 by parameter"),
        pytest.param(PAYLOAD_B64, "application/json", None, id="base64 by content"),
        pytest.param(
            base64.urlsafe_b64encode(PAYLOAD_JSON).rstrip(b"="),
            "text/plain",
            "base64",
            id="url-safe base64 without padding",
        ),
        pytest.param(
            urlencode({"data": PAYLOAD_JSON.decode()}).encode(),
            f"{FORM}; charset=UTF-8",
            None,
            id="form with JSON",
        ),
        pytest.param(
            urlencode({"data": PAYLOAD_B64.decode(), "compression": "base64"}).encode(),
            FORM,
            None,
            id="form with base64 and compression field",
        ),
        pytest.param(
            b"data=" + PAYLOAD_B64,
            FORM,
            "base64",
            id="form with unescaped base64 (+ read as space)",
        ),
    ],
)
def test_decode_posthog_payload(body: bytes, content_type: str, compression: str | None) -> None:
    assert decode_posthog_payload(body, content_type, compression) == PAYLOAD


@pytest.mark.parametrize(
    ("body", "content_type", "compression"),
    [
        pytest.param(b"\x1f\x8b\x08\x00rest", "application/json", "gzip-js", id="still gzip"),
        pytest.param(b"{not json", "application/json", None, id="broken JSON"),
        pytest.param(b"%%%%", "text/plain", None, id="neither JSON nor base64"),
        pytest.param(base64.b64encode(b"plain words"), "text/plain", "base64", id="base64 text"),
        pytest.param(b"ip=1&ver=1", FORM, None, id="form without data"),
        pytest.param(b"data=\xff", FORM, None, id="form not text"),
        pytest.param(PAYLOAD_B64, "text/plain", "lz64", id="lz-string"),
        pytest.param(b'["\xff"]', "application/json", None, id="invalid UTF-8"),
    ],
)
def test_decode_posthog_payload_refuses(
    body: bytes, content_type: str, compression: str | None
) -> None:
    with pytest.raises(BadBatch):
        decode_posthog_payload(body, content_type, compression)
