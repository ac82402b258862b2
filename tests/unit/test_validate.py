"""Native ingest validation (SPEC §2, §6): every limit, every reason code, clock skew,
context merging, typed props, and the event record / dead-letter wire format."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import msgspec
import orjson
import pytest

from common.settings import Settings
from ingest.validate import (
    REASON_CODES,
    BadBatch,
    Limits,
    Rejection,
    TooManyEvents,
    ValidatedBatch,
    validate_dicts,
    validate_native,
)
from schemas.events import (
    DeadLetter,
    Event,
    EventRecord,
    decode_dead_letter,
    decode_record,
    encode_dead_letter,
    encode_record,
    record_key,
)

NOW = 1_764_100_000_000  # the gateway clock (received_at) in every test
MINUTE = 60_000
DAY = 86_400_000
LIMITS = Limits()
DROP = object()  # an override that removes the field

EventFactory = Callable[..., dict[str, Any]]


@pytest.fixture
def event_factory() -> EventFactory:
    """A valid native event; keyword overrides replace fields (DROP removes one)."""
    ids = itertools.count()

    def make(**overrides: Any) -> dict[str, Any]:
        event: dict[str, Any] = {
            "event_id": f"ev-{next(ids)}",
            "type": "menu.open",
            "user_id": "u-42",
            "ts": NOW - 5_000,
            "props": {"menu": "main"},
        }
        event.update(overrides)
        return {key: value for key, value in event.items() if value is not DROP}

    return make


@pytest.fixture
def event(event_factory: EventFactory) -> dict[str, Any]:
    return event_factory()


def native_body(*events: Any, **envelope: Any) -> bytes:
    """A native body; an event given as bytes is spliced in as raw JSON text."""
    items = [item if isinstance(item, bytes) else orjson.dumps(item) for item in events]
    head = orjson.dumps(envelope)[:-1] + (b"," if envelope else b"")
    return head + b'"events":[' + b",".join(items) + b"]}"


def validate(*events: Any, **envelope: Any) -> ValidatedBatch:
    return validate_native(native_body(*events, **envelope), NOW, LIMITS)


def only_rejection(batch: ValidatedBatch) -> Rejection:
    assert len(batch.rejected) == 1, batch.rejected
    return batch.rejected[0]


def nested(levels: int) -> dict[str, Any]:
    """Props `levels` objects deep (the props object is level 1)."""
    props: dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 1):
        props = {"a": props}
    return props


# --- one bad event among good ones ------------------------------------------------------
# (code, overrides of a valid event, or a non-object item in place of the event)

EVENT_CASES = [
    pytest.param("not_an_object", [1, 2], id="array item"),
    pytest.param("not_an_object", "page_view", id="string item"),
    pytest.param("not_an_object", None, id="null item"),
    pytest.param("missing_field", {"event_id": DROP}, id="no event_id"),
    pytest.param("missing_field", {"type": DROP}, id="no type"),
    pytest.param("missing_field", {"user_id": DROP}, id="no user_id"),
    pytest.param("missing_field", {"ts": DROP}, id="no ts"),
    pytest.param("invalid_field", {"event_id": ""}, id="empty event_id"),
    pytest.param("invalid_field", {"event_id": "e" * 65}, id="event_id 65 chars"),
    pytest.param("invalid_field", {"event_id": 17}, id="event_id a number"),
    pytest.param("invalid_field", {"user_id": ""}, id="empty user_id"),
    pytest.param("invalid_field", {"user_id": "u" * 129}, id="user_id 129 chars"),
    pytest.param("invalid_field", {"user_id": None}, id="user_id null"),
    pytest.param("invalid_field", {"ts": "1764100000000"}, id="ts a string"),
    pytest.param("invalid_field", {"ts": 1764099995000.5}, id="ts a float"),
    pytest.param("invalid_field", {"ts": True}, id="ts a boolean"),
    pytest.param("invalid_field", {"session_id": 7}, id="session_id a number"),
    pytest.param("invalid_field", {"device_model": ["quest3"]}, id="device_model a list"),
    pytest.param("invalid_field", {"app_version": 3.0}, id="app_version a number"),
    pytest.param("invalid_field", {"os": {}}, id="os an object"),
    pytest.param("invalid_field", {"region": False}, id="region a boolean"),
    pytest.param("invalid_type", {"type": "Page_View"}, id="type uppercase"),
    pytest.param("invalid_type", {"type": "1st_launch"}, id="type starts with digit"),
    pytest.param("invalid_type", {"type": "menu open"}, id="type with space"),
    pytest.param("invalid_type", {"type": "menu.open\n"}, id="type trailing newline"),
    pytest.param("invalid_type", {"type": "a" * 65}, id="type 65 chars"),
    pytest.param("invalid_type", {"type": ""}, id="type empty"),
    pytest.param("invalid_type", {"type": 3}, id="type a number"),
    pytest.param("invalid_props", {"props": ["url"]}, id="props an array"),
    pytest.param("invalid_props", {"props": "url=x"}, id="props a string"),
    pytest.param("invalid_props", {"type": "page_view", "props": {}}, id="typed props missing"),
    pytest.param("props_too_large", {"props": {"k": "x" * 8185}}, id="props 8193 bytes"),
    pytest.param("too_deep", {"props": nested(33)}, id="props 33 levels"),
    pytest.param("too_deep", {"props": {"a": [[[[[[nested(28)]]]]]]}}, id="arrays count"),
    pytest.param("event_too_large", {"session_id": "s" * 32_800}, id="event over 32 KB"),
    pytest.param("too_old", {"ts": NOW - 30 * DAY - 1}, id="older than 30 days"),
    pytest.param("in_future", {"ts": NOW + 10 * MINUTE + 1}, id="more than 10 min ahead"),
]


def _item(event_factory: EventFactory, spec: Any) -> Any:
    return event_factory(**spec) if isinstance(spec, dict) else spec


def test_event_cases_cover_every_reason_code() -> None:
    assert {case.values[0] for case in EVENT_CASES} == set(REASON_CODES)


@pytest.mark.parametrize(("code", "spec"), EVENT_CASES)
def test_native_rejects_one_event_keeps_the_others(
    code: str, spec: Any, event_factory: EventFactory
) -> None:
    first, bad, last = event_factory(), _item(event_factory, spec), event_factory()

    batch = validate(first, bad, last)

    rejection = only_rejection(batch)
    assert (rejection.index, rejection.code) == (1, code)
    assert rejection.reason.startswith(f"{code}: ")
    assert rejection.raw == orjson.dumps(bad)
    assert [e.event_id for e in batch.accepted] == [first["event_id"], last["event_id"]]


@pytest.mark.parametrize(("code", "spec"), EVENT_CASES)
def test_dicts_follow_the_same_rules(code: str, spec: Any, event_factory: EventFactory) -> None:
    first, bad, last = event_factory(), _item(event_factory, spec), event_factory()
    native = only_rejection(validate(first, bad, last))

    batch = validate_dicts([first, bad, last], {}, None, NOW, LIMITS)

    rejection = only_rejection(batch)
    assert (rejection.index, rejection.reason) == (native.index, native.reason)
    assert orjson.loads(rejection.raw) == bad
    assert len(batch.accepted) == 2


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        pytest.param({"event_id": DROP}, "missing_field: event_id", id="missing"),
        pytest.param(
            {"event_id": "e" * 65},
            "invalid_field: event_id must be a string of 1..64 characters",
            id="event_id",
        ),
        pytest.param(
            {"type": "Bad"}, "invalid_type: type must match [a-z][a-z0-9_.]{0,63}", id="type"
        ),
        pytest.param({"ts": "now"}, "invalid_field: ts must be an integer (epoch ms)", id="ts"),
        pytest.param(
            {"ts": NOW - 31 * DAY}, "too_old: event time is more than 30 days ago", id="too old"
        ),
        pytest.param(
            {"ts": NOW + 11 * MINUTE},
            "in_future: event time is more than 10 min in the future",
            id="in future",
        ),
        pytest.param(
            {"props": {"k": "x" * 9000}},
            "props_too_large: 9008 bytes, limit 8192",
            id="props size",
        ),
        pytest.param(
            {"props": nested(40)}, "too_deep: props nested more than 32 levels", id="depth"
        ),
    ],
)
def test_reason_texts(overrides: dict[str, Any], reason: str, event_factory: EventFactory) -> None:
    assert only_rejection(validate(event_factory(**overrides))).reason == reason


def test_rejection_raw_is_the_event_text_as_sent(event: dict[str, Any]) -> None:
    spaced = b'{ "event_id": "e-1", "type": "Nope",\n  "user_id": "u", "ts": 1 }'

    rejection = only_rejection(validate(event, spaced))

    assert rejection.raw == spaced


# --- limits at their exact bounds ---------------------------------------------------------


def _sized_event(event_factory: EventFactory, size: int) -> dict[str, Any]:
    base = event_factory(session_id="")
    padding = size - len(orjson.dumps(base))
    return event_factory(session_id="s" * padding)


@pytest.mark.parametrize(
    ("size", "accepted"),
    [
        pytest.param(32_768, True, id="event exactly 32768 bytes"),
        pytest.param(32_769, False, id="event 32769 bytes"),
    ],
)
def test_event_size_bound(size: int, accepted: bool, event_factory: EventFactory) -> None:
    event = _sized_event(event_factory, size)
    assert len(orjson.dumps(event)) == size

    batch = validate(event)

    assert len(batch.accepted) == int(accepted)
    if not accepted:
        assert only_rejection(batch).reason == "event_too_large: 32769 bytes, limit 32768"


@pytest.mark.parametrize(
    ("padding", "accepted"),
    [
        pytest.param(8184, True, id="props exactly 8192 bytes"),
        pytest.param(8185, False, id="props 8193 bytes"),
    ],
)
def test_props_size_bound(padding: int, accepted: bool, event_factory: EventFactory) -> None:
    props = {"k": "x" * padding}
    assert len(orjson.dumps(props)) == padding + 8

    batch = validate(event_factory(props=props))

    assert len(batch.accepted) == int(accepted)


@pytest.mark.parametrize(
    ("levels", "accepted"),
    [
        pytest.param(32, True, id="props 32 levels"),
        pytest.param(33, False, id="props 33 levels"),
    ],
)
def test_props_depth_bound(levels: int, accepted: bool, event_factory: EventFactory) -> None:
    event = event_factory(props=nested(levels))

    for batch in (validate(event), validate_dicts([event], {}, None, NOW, LIMITS)):
        assert len(batch.accepted) == int(accepted)
        if accepted:
            assert batch.accepted[0].props == nested(levels)


def deep_props_text(levels: int) -> bytes:
    return b'{"a":' * (levels - 1) + b"[1]" + b"}" * (levels - 1)


def with_props_text(event: dict[str, Any], props: bytes) -> bytes:
    """The event's JSON with `props` spliced in as text (orjson stops at 255 levels)."""
    return orjson.dumps({**event, "props": {}})[:-3] + props + b"}"


@pytest.mark.parametrize(
    "levels",
    [
        pytest.param(1_000, id="1000 levels: past the decoder's stack"),
        pytest.param(1_300, id="1300 levels (7.8 KB of props)"),
    ],
)
def test_props_deeper_than_the_decoder_reject_only_their_event(
    levels: int, event_factory: EventFactory
) -> None:
    first, bad, last = event_factory(), event_factory(), event_factory()

    batch = validate(first, with_props_text(bad, deep_props_text(levels)), last)

    rejection = only_rejection(batch)
    assert (rejection.index, rejection.code) == (1, "too_deep")
    # The dead letter keeps the event as JSON, its props cut at the pruned depth.
    assert orjson.loads(rejection.raw)["event_id"] == bad["event_id"]
    assert [e.event_id for e in batch.accepted] == [first["event_id"], last["event_id"]]


def test_body_nested_too_deep_to_parse_is_a_bad_batch(event_factory: EventFactory) -> None:
    deep = with_props_text(event_factory(), deep_props_text(20_000))

    with pytest.raises(BadBatch, match="nested more than 16384 levels"):
        validate(event_factory(), deep)


@pytest.mark.parametrize(
    ("count", "accepted"),
    [
        pytest.param(0, True, id="empty batch"),
        pytest.param(1000, True, id="1000 events"),
        pytest.param(1001, False, id="1001 events"),
    ],
)
def test_batch_size_bound(count: int, accepted: bool, event_factory: EventFactory) -> None:
    events = [event_factory() for _ in range(count)]
    if accepted:
        assert len(validate(*events).accepted) == count
        assert len(validate_dicts(events, {}, None, NOW, LIMITS).accepted) == count
        return
    with pytest.raises(TooManyEvents, match="1001 events") as native:
        validate(*events)
    with pytest.raises(TooManyEvents):
        validate_dicts(events, {}, None, NOW, LIMITS)
    assert native.value.status == 413


@pytest.mark.parametrize(
    ("ts", "sent_at", "event_time"),
    [
        pytest.param(NOW - 1_000, None, NOW - 1_000, id="no sent_at: ts as is"),
        pytest.param(NOW + 10 * MINUTE, None, NOW + 10 * MINUTE, id="exactly 10 min ahead"),
        pytest.param(NOW - 30 * DAY, None, NOW - 30 * DAY, id="exactly 30 days old"),
        pytest.param(
            NOW - 3_600_000 - 5_000, NOW - 3_600_000, NOW - 5_000, id="client clock 1 h behind"
        ),
        pytest.param(
            NOW + 3_600_000 - 5_000, NOW + 3_600_000, NOW - 5_000, id="client clock 1 h ahead"
        ),
        pytest.param(
            NOW + 3_600_000 + 10 * MINUTE,
            NOW + 3_600_000,
            NOW + 10 * MINUTE,
            id="ahead clock, exactly 10 min after correction",
        ),
        pytest.param(
            NOW - 40 * DAY, NOW - 11 * DAY, NOW - 29 * DAY, id="queued offline, within age"
        ),
    ],
)
def test_clock_skew_correction(
    ts: int, sent_at: int | None, event_time: int, event_factory: EventFactory
) -> None:
    envelope = {} if sent_at is None else {"sent_at": sent_at}

    batch = validate(event_factory(ts=ts), **envelope)

    assert [e.ts for e in batch.accepted] == [event_time]


@pytest.mark.parametrize(
    ("ts", "sent_at", "code"),
    [
        pytest.param(NOW + 10 * MINUTE + 1, None, "in_future", id="1 ms past 10 min"),
        pytest.param(NOW - 30 * DAY - 1, None, "too_old", id="1 ms past 30 days"),
        pytest.param(
            NOW + 10 * MINUTE + 1 - 3_600_000,
            NOW - 3_600_000,
            "in_future",
            id="behind clock, 1 ms past 10 min after correction",
        ),
        pytest.param(NOW, NOW + 3_600_000, None, id="ahead clock corrected into the window"),
        pytest.param(NOW - DAY, NOW - 30 * DAY, "in_future", id="sent_at skew applies to ts"),
    ],
)
def test_time_window_after_correction(
    ts: int, sent_at: int | None, code: str | None, event_factory: EventFactory
) -> None:
    envelope = {} if sent_at is None else {"sent_at": sent_at}

    batch = validate(event_factory(ts=ts), **envelope)

    assert [r.code for r in batch.rejected] == ([] if code is None else [code])


def test_max_event_age_comes_from_settings(event_factory: EventFactory) -> None:
    limits = Limits.from_settings(Settings(max_event_age_days=7))
    assert limits == Limits(max_event_age_days=7)

    batch = validate_native(native_body(event_factory(ts=NOW - 8 * DAY)), NOW, limits)

    assert only_rejection(batch).reason == "too_old: event time is more than 7 days ago"


# --- context ------------------------------------------------------------------------------

CONTEXT = {
    "device_model": "quest3",
    "app_version": "3.0.0",
    "os": "horizon",
    "region": "eu",
    "session_id": "s-batch",
}


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        pytest.param({}, CONTEXT, id="batch context applies"),
        pytest.param(
            {"device_model": "quest2", "session_id": "s-own"},
            {**CONTEXT, "device_model": "quest2", "session_id": "s-own"},
            id="event value wins",
        ),
        pytest.param({"region": ""}, {**CONTEXT, "region": ""}, id="empty event value wins"),
        pytest.param({"os": None}, CONTEXT, id="null event value defers to batch"),
    ],
)
def test_context_merging(
    overrides: dict[str, Any], expected: dict[str, str], event_factory: EventFactory
) -> None:
    (accepted,) = validate(event_factory(**overrides), context=CONTEXT).accepted

    assert {field: getattr(accepted, field) for field in CONTEXT} == expected


def test_context_defaults_to_empty(event: dict[str, Any]) -> None:
    (accepted,) = validate(event).accepted

    assert {field: getattr(accepted, field) for field in CONTEXT} == dict.fromkeys(CONTEXT, "")


def test_dicts_merge_their_context(event_factory: EventFactory) -> None:
    events = [event_factory(), event_factory(os="android")]

    batch = validate_dicts(events, {"os": "horizon"}, None, NOW, LIMITS)

    assert [e.os for e in batch.accepted] == ["horizon", "android"]


# --- typed props (§6) ---------------------------------------------------------------------

PLAY = {"play_id": "p-1", "content_id": "c-7"}


@pytest.mark.parametrize(
    ("event_type", "props"),
    [
        pytest.param("page_view", {"url": "https://q/home", "title": "Home"}, id="page_view"),
        pytest.param("page_view", {"url": "https://q/home"}, id="page_view no title"),
        pytest.param("session_start", {}, id="session_start"),
        pytest.param("session_end", {"duration_ms": 61_000}, id="session_end"),
        pytest.param("gesture", {"gesture": "pinch", "hand": "left"}, id="gesture"),
        pytest.param("gesture", {"gesture": "swipe"}, id="gesture no hand"),
        pytest.param("playback_request", PLAY, id="playback_request"),
        pytest.param(
            "playback_start",
            {**PLAY, "startup_ms": 850, "bitrate_kbps": 4500.5},
            id="playback_start",
        ),
        pytest.param(
            "playback_heartbeat",
            {"play_id": "p-1", "played_ms": 10_000, "bitrate_kbps": 4500},
            id="playback_heartbeat without content_id",
        ),
        pytest.param(
            "playback_rebuffer", {"play_id": "p-1", "duration_ms": 0}, id="playback_rebuffer"
        ),
        pytest.param(
            "playback_quality_change",
            {"play_id": "p-1", "from_kbps": 4500, "to_kbps": 2500},
            id="playback_quality_change",
        ),
        pytest.param(
            "playback_error",
            {"play_id": "p-1", "code": "DRM_FAIL", "fatal": True},
            id="playback_error code string",
        ),
        pytest.param(
            "playback_error",
            {"play_id": "p-1", "code": 4012, "fatal": False},
            id="playback_error code number",
        ),
        pytest.param("playback_end", {**PLAY, "played_ms": 1_200_000}, id="playback_end"),
        pytest.param("checkout.step_2", {"anything": [1, {"x": None}]}, id="custom type"),
    ],
)
def test_typed_props_accepted(
    event_type: str, props: dict[str, Any], event_factory: EventFactory
) -> None:
    extra = {**props, "extra_key": "kept"}

    (accepted,) = validate(event_factory(type=event_type, props=extra)).accepted

    assert (accepted.type, accepted.props) == (event_type, extra)


@pytest.mark.parametrize(
    ("event_type", "props", "reason"),
    [
        pytest.param(
            "page_view",
            {"title": "Home"},
            "invalid_props: page_view.url: missing, expected a string",
            id="page_view no url",
        ),
        pytest.param(
            "session_start",
            ["started"],
            "invalid_props: props must be an object",
            id="session_start props not an object",
        ),
        pytest.param(
            "session_end",
            {"duration_ms": -1},
            "invalid_props: session_end.duration_ms: expected a number >= 0",
            id="session_end negative duration",
        ),
        pytest.param(
            "gesture",
            {"gesture": "pinch", "hand": 2},
            "invalid_props: gesture.hand: expected a string",
            id="gesture hand a number",
        ),
        pytest.param(
            "playback_request",
            {"content_id": "c-7"},
            "invalid_props: playback_request.play_id: missing, expected a non-empty string",
            id="playback_request no play_id",
        ),
        pytest.param(
            "playback_start",
            {**PLAY, "startup_ms": "fast", "bitrate_kbps": 4500},
            "invalid_props: playback_start.startup_ms: expected a number >= 0",
            id="playback_start startup_ms a string",
        ),
        pytest.param(
            "playback_heartbeat",
            {"play_id": "p-1", "played_ms": 10, "bitrate_kbps": True},
            "invalid_props: playback_heartbeat.bitrate_kbps: expected a number >= 0",
            id="playback_heartbeat bitrate a boolean",
        ),
        pytest.param(
            "playback_rebuffer",
            {"play_id": "p-1"},
            "invalid_props: playback_rebuffer.duration_ms: missing, expected a number >= 0",
            id="playback_rebuffer no duration",
        ),
        pytest.param(
            "playback_quality_change",
            {"play_id": "p-1", "from_kbps": 4500, "to_kbps": None},
            "invalid_props: playback_quality_change.to_kbps: expected a number >= 0",
            id="playback_quality_change to_kbps null",
        ),
        pytest.param(
            "playback_error",
            {"play_id": "p-1", "code": 1.5, "fatal": True},
            "invalid_props: playback_error.code: expected a string or an integer",
            id="playback_error code a float",
        ),
        pytest.param(
            "playback_error",
            {"play_id": "p-1", "code": "E1", "fatal": "yes"},
            "invalid_props: playback_error.fatal: expected true or false",
            id="playback_error fatal a string",
        ),
        pytest.param(
            "playback_end",
            {"play_id": "", "played_ms": 5},
            "invalid_props: playback_end.play_id: expected a non-empty string",
            id="playback_end empty play_id",
        ),
        pytest.param(
            "playback_end",
            {"play_id": "p-1", "content_id": 7, "played_ms": 5},
            "invalid_props: playback_end.content_id: expected a string",
            id="playback_end content_id a number",
        ),
    ],
)
def test_typed_props_rejected(
    event_type: str, props: Any, reason: str, event_factory: EventFactory
) -> None:
    rejection = only_rejection(validate(event_factory(type=event_type, props=props)))

    assert rejection.reason == reason


@pytest.mark.parametrize(
    "props_text",
    [
        pytest.param(b"null", id="null"),
        pytest.param(None, id="absent"),
    ],
)
def test_props_null_or_absent_are_empty(props_text: bytes | None) -> None:
    props = b"" if props_text is None else b',"props":' + props_text
    raw = b'{"event_id":"e","type":"session_start","user_id":"u","ts":%d%s}' % (NOW, props)

    (accepted,) = validate(raw).accepted

    assert accepted.props == {}


def test_out_of_range_number_in_props_is_rejected_alone(event: dict[str, Any]) -> None:
    raw = b'{"event_id":"e","type":"x","user_id":"u","ts":%d,"props":{"n":1e400}}' % NOW

    batch = validate(event, raw)

    assert only_rejection(batch).reason == "invalid_props: props contain a number out of range"
    assert len(batch.accepted) == 1


def test_accepted_event_fields(event_factory: EventFactory) -> None:
    sent = event_factory(
        event_id="0f8fad5b-d9cb-469f-a165-70867728950e",
        type="page_view",
        user_id="u-7",
        ts=NOW - 1_000,
        session_id="s-1",
        props={"url": "https://q/home"},
        unknown_field="ignored",
    )

    (accepted,) = validate(sent, context={"region": "eu"}).accepted

    assert accepted == Event(
        event_id="0f8fad5b-d9cb-469f-a165-70867728950e",
        type="page_view",
        user_id="u-7",
        ts=NOW - 1_000,
        session_id="s-1",
        region="eu",
        props={"url": "https://q/home"},
    )


# --- whole-body problems ------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty body"),
        pytest.param(b'{"events": [', id="truncated JSON"),
        pytest.param(b'{"events": ["\xff"]}', id="invalid UTF-8"),
        pytest.param(b"[]", id="array body"),
        pytest.param(b"{}", id="no events"),
        pytest.param(b'{"events": {}}', id="events an object"),
        pytest.param(b'{"events": [], "sent_at": "yesterday"}', id="sent_at a string"),
        pytest.param(b'{"events": [], "context": []}', id="context an array"),
        pytest.param(b'{"events": [], "context": {"os": 1}}', id="context value a number"),
    ],
)
def test_bad_body(body: bytes) -> None:
    with pytest.raises(BadBatch) as raised:
        validate_native(body, NOW, LIMITS)

    assert raised.type is BadBatch
    assert raised.value.status == 400
    assert str(raised.value)


def test_bad_context_for_dicts(event: dict[str, Any]) -> None:
    with pytest.raises(BadBatch, match="context"):
        validate_dicts([event], {"device_model": 3}, None, NOW, LIMITS)


def test_dicts_apply_sent_at(event_factory: EventFactory) -> None:
    events = [event_factory(ts=NOW - 3_600_000)]

    batch = validate_dicts(events, {}, NOW - 3_600_000, NOW, LIMITS)

    assert [e.ts for e in batch.accepted] == [NOW]


# --- wire format --------------------------------------------------------------------------


def test_event_record_round_trip(event_factory: EventFactory) -> None:
    batch = validate(
        event_factory(type="gesture", props={"gesture": "pinch", "nested": {"a": [1, 2.5]}}),
        event_factory(device_model="quest3"),
        context={"app_version": "3.0.0"},
    )
    record = EventRecord(project="default", received_at=NOW, events=batch.accepted)

    data = encode_record(record)

    assert decode_record(data) == record
    assert orjson.loads(data)["v"] == 1
    assert record_key("default", "u-42") == b"default:u-42"


def test_event_record_omits_unset_fields(event: dict[str, Any]) -> None:
    record = EventRecord(project="p", received_at=NOW, events=validate(event).accepted)

    (sent,) = orjson.loads(encode_record(record))["events"]

    assert set(sent) == {"event_id", "type", "user_id", "ts", "props"}


def test_event_record_of_unknown_version_is_refused() -> None:
    data = orjson.dumps({"v": 2, "project": "p", "received_at": NOW, "events": []})

    with pytest.raises(msgspec.ValidationError, match="version 2"):
        decode_record(data)


def test_dead_letter_round_trip(event_factory: EventFactory) -> None:
    (rejection,) = validate(event_factory(type="Bad Type")).rejected
    dead = DeadLetter(
        project="default",
        received_at=NOW,
        index=rejection.index,
        reason=rejection.reason,
        raw=rejection.raw.decode(),
        source="native",
    )

    assert decode_dead_letter(encode_dead_letter(dead)) == dead
