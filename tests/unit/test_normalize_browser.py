"""The browser SDKs' calls (SPEC §2): Segment single calls as analytics.js
(@segment/analytics-next 1.84) and the HTTP API send them, the standard dimensions'
fallbacks for Segment and PostHog bodies, and the answers posthog-js gets before it
captures (ingest/posthog_config.py)."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest
from starlette.requests import Request

from ingest.app import SEGMENT_CALL_PATHS
from ingest.normalize import normalize_posthog, normalize_segment, normalize_segment_call
from ingest.posthog_config import flags, remote_config, remote_config_js
from ingest.validate import BadBatch
from schemas.events import Event
from tests.unit.test_normalize import NOW, iso, one_event, only_rejection, validated

UA = "Mozilla/5.0 (Linux; Android 12; Quest 3) OculusBrowser/37.0 Chrome/134.0 Mobile VR"


def analytics_js(call: str, **fields: Any) -> dict[str, Any]:
    """A message as analytics-next posts it to /v1/<letter> (recorded from 1.84.3, with
    `type` and `writeKey` in the text/plain JSON body)."""
    message: dict[str, Any] = {
        "timestamp": iso(NOW - 2_000),
        "integrations": {},
        "type": call,
        "context": {
            "page": {"path": "/lobby", "title": "Lobby", "url": "https://q.test/lobby"},
            "userAgent": UA,
            "userAgentData": {"brands": [], "mobile": False, "platform": "Android"},
            "locale": "en-US",
            "library": {"name": "analytics.js", "version": "npm:next-1.84.3"},
            "timezone": "UTC",
        },
        "messageId": f"ajs-next-{call}",
        "anonymousId": "anon-1",
        "writeKey": "wk_browser",
        "userId": None,
        "sentAt": iso(NOW),
        "_metadata": {"bundled": ["Segment.io"], "unbundled": [], "bundledIds": []},
    }
    message.update(fields)
    return message


def test_every_single_call_path_names_its_type() -> None:
    assert SEGMENT_CALL_PATHS == {
        "/v1/track": "track",
        "/v1/t": "track",
        "/v1/page": "page",
        "/v1/p": "page",
        "/v1/screen": "screen",
        "/v1/s": "screen",
        "/v1/identify": "identify",
        "/v1/i": "identify",
        "/v1/group": "group",
        "/v1/g": "group",
        "/v1/alias": "alias",
        "/v1/a": "alias",
    }


@pytest.mark.parametrize(
    ("call", "fields", "event_type", "user_id", "props"),
    [
        pytest.param(
            "track",
            {"event": "Video Played", "properties": {"content_id": "c-2"}},
            "video_played",
            "anon-1",
            {"content_id": "c-2"},
            id="t: track",
        ),
        pytest.param(
            "page",
            {"name": "Lobby", "properties": {"path": "/lobby", "url": "https://q.test/lobby"}},
            "page_view",
            "anon-1",
            {"path": "/lobby", "url": "https://q.test/lobby", "title": "Lobby"},
            id="p: page",
        ),
        pytest.param(
            "screen",
            {"name": "Settings", "properties": {}},
            "screen",
            "anon-1",
            {"name": "Settings"},
            id="s: screen",
        ),
        pytest.param(
            "identify",
            {"userId": "u-7", "traits": {"plan": "pro"}},
            "identify",
            "u-7",
            {"plan": "pro"},
            id="i: identify, traits as props",
        ),
        pytest.param(
            "group",
            {"userId": "u-7", "groupId": "g-1", "traits": {"name": "Team"}},
            "group",
            "u-7",
            {"name": "Team", "group_id": "g-1"},
            id="g: group, traits and groupId",
        ),
        pytest.param(
            "alias",
            {"userId": "u-7", "previousId": "anon-1"},
            "alias",
            "u-7",
            {"previous_id": "anon-1"},
            id="a: alias, previousId",
        ),
    ],
)
def test_analytics_js_single_calls(
    call: str, fields: dict[str, Any], event_type: str, user_id: str, props: dict[str, Any]
) -> None:
    normalized = normalize_segment_call(analytics_js(call, **fields), call)

    assert (normalized.write_key, normalized.sent_at) == ("wk_browser", NOW)
    assert one_event(normalized) == Event(
        event_id=f"ajs-next-{call}",
        type=event_type,
        user_id=user_id,
        ts=NOW - 2_000,
        os="Android",
        props=props,
    )


def test_the_path_decides_the_type() -> None:
    message = analytics_js("track", event="Clicked", properties={"url": "https://q.test/"})

    assert one_event(normalize_segment_call(message, "page")).type == "page_view"


def test_http_api_message_without_type_or_write_key() -> None:
    # Segment's HTTP API: the type is the path's, the key is in Basic auth.
    message = {
        "userId": 42,
        "event": "Purchase",
        "properties": {"price": 3},
        "messageId": "m-1",
        "timestamp": NOW - 1_000,
    }

    normalized = normalize_segment_call(message, "track")

    assert (normalized.write_key, normalized.sent_at) == (None, None)
    event = one_event(normalized)
    assert (event.type, event.user_id, event.props) == ("purchase", "42", {"price": 3})


@pytest.mark.parametrize(
    "body",
    [
        pytest.param([analytics_js("track")], id="array"),
        pytest.param("track", id="string"),
        pytest.param({**analytics_js("track"), "sentAt": "later"}, id="sentAt not a time"),
    ],
)
def test_single_call_bad_body(body: Any) -> None:
    with pytest.raises(BadBatch):
        normalize_segment_call(body, "track")


def test_single_call_rejection_keeps_the_index_and_reason() -> None:
    message = analytics_js("track", event="Clicked", messageId=None)

    rejection = only_rejection(normalize_segment_call(message, "track"))

    assert (rejection.index, rejection.reason) == (0, "missing_field: event_id")


# --- dimensions: the event's own value, else the batch context, else the SDK's context ----


@pytest.mark.parametrize(
    ("properties", "context", "expected"),
    [
        pytest.param(
            {},
            {"os": {"name": "Horizon OS"}, "userAgentData": {"platform": "Android"}},
            {"os": "Horizon OS"},
            id="os.name before the client hints",
        ),
        pytest.param(
            {},
            {"userAgentData": {"platform": "Android"}},
            {"os": "Android"},
            id="client hints platform when no os.name",
        ),
        pytest.param(
            {"os": "horizon", "device_model": "quest3", "app_version": "3.1", "region": "eu"},
            {
                "os": {"name": "Android"},
                "device": {"model": "Quest"},
                "app": {"version": "1.0"},
                "location": {"country": "DE"},
            },
            {"os": "horizon", "device_model": "quest3", "app_version": "3.1", "region": "eu"},
            id="native names in properties win",
        ),
        pytest.param(
            {"os": 12, "session_id": ["s"]},
            {"os": {"name": "Android"}, "session_id": "s-ctx"},
            {"os": "Android", "session_id": "s-ctx"},
            id="a property that is not a string is only a property",
        ),
    ],
)
def test_segment_dimensions(
    properties: dict[str, Any], context: dict[str, Any], expected: dict[str, str]
) -> None:
    message = analytics_js("track", event="Clicked", properties=properties, context=context)

    event = one_event(normalize_segment_call(message, "track"))

    assert {name: getattr(event, name) for name in expected} == expected
    assert event.props == properties


def test_segment_dimensions_batch_context_between_message_and_nothing() -> None:
    own_property = analytics_js("track", event="A", messageId="m1", properties={"os": "mine"})
    own_context = analytics_js("track", event="A", messageId="m2")
    bare = analytics_js("track", event="A", messageId="m3", context={})
    body = {"batch": [own_property, own_context, bare], "context": {"os": {"name": "Batch OS"}}}

    batch = validated(normalize_segment(body))

    assert batch.rejected == []
    assert [event.os for event in batch.accepted] == ["mine", "Android", "Batch OS"]


def posthog_js_event(**properties: Any) -> dict[str, Any]:
    """A posthog-js 1.449 event as it sends it in a gzip-js `/e/` batch (trimmed)."""
    return {
        "uuid": "01a246f1-60c7-7a39-85f0-3845f464e01f",
        "event": "clicked_play",
        "properties": {
            "$os": "Android",
            "$browser": "Oculus Browser",
            "$device": "Android",
            "$device_type": "Mobile",
            "$lib": "web",
            "$lib_version": "1.449.2",
            "distinct_id": "anon-ph",
            "$session_id": "01a246f1-609d-77e9-b1d6-6c3a49edf09e",
            "token": "phc_web",
            **properties,
        },
        "timestamp": iso(NOW - 3_000),
    }


@pytest.mark.parametrize(
    ("properties", "expected"),
    [
        pytest.param(
            {},
            ("Android", "", "", "01a246f1-609d-77e9-b1d6-6c3a49edf09e"),
            id="posthog-js gives $os and $session_id",
        ),
        pytest.param(
            {"$device_model": "Quest 3", "$app_version": "3.1.0"},
            ("Android", "Quest 3", "3.1.0", "01a246f1-609d-77e9-b1d6-6c3a49edf09e"),
            id="registered $device_model and $app_version",
        ),
        pytest.param(
            {"os": "horizon", "device_model": "quest3", "session_id": "s-app"},
            ("horizon", "quest3", "", "s-app"),
            id="native names in properties win",
        ),
        pytest.param(
            {"os": None, "app_version": 3},
            ("Android", "", "", "01a246f1-609d-77e9-b1d6-6c3a49edf09e"),
            id="a property that is not a string is only a property",
        ),
    ],
)
def test_posthog_dimensions(properties: dict[str, Any], expected: tuple[str, ...]) -> None:
    body = {"api_key": "phc_web", "batch": [posthog_js_event(**properties)], "sent_at": iso(NOW)}

    event = one_event(normalize_posthog(body))

    assert (event.os, event.device_model, event.app_version, event.session_id) == expected


# --- what posthog-js gets before it captures -------------------------------------------------


def get(path_params: dict[str, str] | None = None) -> Request:
    return Request({"type": "http", "method": "GET", "headers": [], "path_params": path_params})


async def test_flags_says_no_flags() -> None:
    answer = await flags(get())

    assert answer.status_code == 200
    body = orjson.loads(answer.body)
    assert (body["flags"], body["featureFlags"], body["featureFlagPayloads"]) == ({}, {}, {})
    assert body["errorsWhileComputingFlags"] is False


async def test_remote_config_turns_every_remote_feature_off() -> None:
    config = orjson.loads((await remote_config(get({"token": "phc_web"}))).body)

    assert config["token"] == "phc_web"
    assert config["hasFeatureFlags"] is False
    assert config["supportedCompression"][0] == "gzip-js"
    assert config["siteApps"] == []
    assert not any(config[key] for key in ("sessionRecording", "surveys", "heatmaps"))


async def test_remote_config_script_stores_the_same_config() -> None:
    token = 'phc_"];alert(1);x="'
    answer = await remote_config_js(get({"token": token}))

    assert answer.media_type == "application/javascript"
    # The token only ever appears as a JSON string: the script is one assignment.
    match = re.fullmatch(
        r"\(function\(\)\{var all=window\._POSTHOG_REMOTE_CONFIG="
        r"window\._POSTHOG_REMOTE_CONFIG\|\|\{\};all\[(.+?)\]=(\{.*\});\}\)\(\);\n",
        bytes(answer.body).decode(),
    )
    assert match is not None, answer.body
    assert orjson.loads(match[1]) == token
    config = orjson.loads((await remote_config(get({"token": token}))).body)
    assert orjson.loads(match[2]) == {"config": config, "siteApps": []}
