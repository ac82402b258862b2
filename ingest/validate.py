"""Pure validation of ingest batches (SPEC §2, §6): bytes or parsed dicts in, `Event`s and
per-event rejections out. No I/O; the gateway owns reading, auth, Kafka and responses.

Every event goes through one check (`_BatchCheck.check`), whichever endpoint it came from:
size cap → msgspec decode of the envelope fields (ids, type, ts, context fields) → props
size cap → props decode → props depth → typed props of known types → clock-skew correction
and the time window. The first failing step names the rejection; the rest of the batch is
unaffected.

A rejection reason is `"<code>: <detail>"` where `<code>` is one of `REASON_CODES` (use
`Rejection.code` as a metric label) and the detail is short, human-readable and stable for
a given input and `Limits`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, cast, get_args

import msgspec
import msgspec.inspect as mi

from ingest.nesting import NestingTooDeep, nesting_exceeds, prune_nesting
from schemas.events import PROPS_TYPES, Event
from schemas.topics import DAY_MS

if TYPE_CHECKING:
    from common.settings import Settings

ReasonCode = Literal[
    "not_an_object",  # the event is not a JSON object
    "missing_field",  # event_id, type, user_id or ts absent
    "invalid_field",  # an id, ts or context field has the wrong type or length
    "invalid_type",  # the event type name does not match TYPE_PATTERN
    "invalid_props",  # props not an object, or typed props (§6) of a known type are wrong
    "props_too_large",  # props serialized above Limits.max_props_bytes
    "too_deep",  # props nested more than Limits.max_props_depth levels
    "event_too_large",  # the event's JSON above Limits.max_event_bytes
    "too_old",  # event time older than Limits.max_event_age_days
    "in_future",  # event time beyond received_at + Limits.max_future_ms
]
REASON_CODES: tuple[ReasonCode, ...] = get_args(ReasonCode)

TYPE_PATTERN = "[a-z][a-z0-9_.]{0,63}"


@dataclass(frozen=True, slots=True)
class Limits:
    max_events_per_batch: int = 1000
    max_props_bytes: int = 8192
    # The props object is level 1; SPEC §2: deeper than 32 levels rejects the event.
    max_props_depth: int = 32
    max_event_bytes: int = 32768
    max_event_age_days: int = 30
    max_future_ms: int = 600_000

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(max_event_age_days=settings.max_event_age_days)


class BadBatch(ValueError):
    """The body as a whole is unusable (not JSON, wrong shape, bad batch context): nothing
    in it is accepted. The gateway answers `status` with `str(exc)` as the message."""

    status: ClassVar[int] = 400


class TooManyEvents(BadBatch):
    """More than `Limits.max_events_per_batch` events: the batch is too large as a whole
    (SPEC §2 limits), so the gateway answers 413 like for an oversized body."""

    status: ClassVar[int] = 413


@dataclass(slots=True)
class Rejection:
    """`raw` is the event's JSON as sent (native) or as normalized (compat endpoints)."""

    index: int
    reason: str
    raw: bytes

    @property
    def code(self) -> ReasonCode:
        return cast(ReasonCode, self.reason.partition(":")[0])


@dataclass(slots=True)
class ValidatedBatch:
    accepted: list[Event]
    rejected: list[Rejection]


class _Context(msgspec.Struct):
    # None means "not given", so a batch default applies; "" is a value and wins.
    session_id: str | None = None
    device_model: str | None = None
    app_version: str | None = None
    os: str | None = None
    region: str | None = None


class _WireEvent(_Context, kw_only=True):
    event_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    type: str  # TYPE_PATTERN is checked by _is_valid_type, which is cheaper per event
    user_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    ts: int
    # Kept raw so its size is known without re-encoding; empty when absent.
    props: msgspec.Raw = msgspec.Raw(b"")


class _Defaults(msgspec.Struct, frozen=True):
    """A batch's context with "" for fields it does not set, as `Event` stores them."""

    session_id: str
    device_model: str
    app_version: str
    os: str
    region: str


class _Envelope(msgspec.Struct):
    # Raw items: one malformed event must not fail the decode of the whole batch.
    events: list[msgspec.Raw]
    sent_at: int | None = None
    context: _Context | None = None


_envelope_decoder = msgspec.json.Decoder(_Envelope)
_event_decoder = msgspec.json.Decoder(_WireEvent)
_props_decoder = msgspec.json.Decoder(dict[str, Any] | None)
_encoder = msgspec.json.Encoder()

# \Z rather than $: `$` also matches before a trailing newline.
_TYPE_RE = re.compile(f"{TYPE_PATTERN}\\Z")
# A regex per event costs about a fifth of the whole check (msgspec's `pattern` as well),
# while a project uses a few dozen types: remember valid ones, up to a bound so that
# clients inventing names cannot grow it without limit.
_valid_types: set[str] = set(PROPS_TYPES)
_VALID_TYPES_MAX = 10_000


def _is_valid_type(name: str) -> bool:
    if name in _valid_types:
        return True
    if _TYPE_RE.match(name) is None:
        return False
    if len(_valid_types) < _VALID_TYPES_MAX:
        _valid_types.add(name)
    return True


_MISSING_FIELD = re.compile(r"missing required field `([^`]+)`")
_AT_FIELD = re.compile(r" - at `\$\.([^.`\[]+)")

_FIELD_REASONS: dict[str, str] = {
    "event_id": "invalid_field: event_id must be a string of 1..64 characters",
    "type": f"invalid_type: type must match {TYPE_PATTERN}",
    "user_id": "invalid_field: user_id must be a string of 1..128 characters",
    "ts": "invalid_field: ts must be an integer (epoch ms)",
    **{name: f"invalid_field: {name} must be a string" for name in _Context.__struct_fields__},
}


def _describe(field_type: mi.Type) -> str:
    if isinstance(field_type, mi.UnionType):
        return " or ".join(
            _describe(member) for member in field_type.types if not isinstance(member, mi.NoneType)
        )
    if isinstance(field_type, mi.StrType):
        return "a non-empty string" if field_type.min_length else "a string"
    if isinstance(field_type, mi.FloatType):
        return "a number" if field_type.ge is None else f"a number >= {field_type.ge:g}"
    if isinstance(field_type, mi.IntType):
        return "an integer"
    if isinstance(field_type, mi.BoolType):
        return "true or false"
    # Fails at import, so a new kind of props field cannot ship without a description.
    raise TypeError(f"no description for props field type {field_type!r}")


def _props_expectations(schema: type[msgspec.Struct]) -> dict[str, str]:
    info = mi.type_info(schema)
    if not isinstance(info, mi.StructType):
        raise TypeError(f"{schema!r} is not a Struct")
    return {field.name: _describe(field.type) for field in info.fields}


_PROPS_EXPECTED: dict[str, dict[str, str]] = {
    type_name: _props_expectations(schema) for type_name, schema in PROPS_TYPES.items()
}


def _wire_reason(error: msgspec.ValidationError) -> str:
    message = str(error)
    at = _AT_FIELD.search(message)
    if at is not None:
        return _FIELD_REASONS[at.group(1)]
    missing = _MISSING_FIELD.search(message)
    if missing is not None:
        return f"missing_field: {missing.group(1)}"
    return "not_an_object: an event must be a JSON object"


def _props_reason(error: msgspec.ValidationError) -> str:
    # Props are already known to be valid JSON, so the only error below the top level
    # of an untyped object is a number msgspec cannot represent (e.g. 1e400).
    if " - at " in str(error):
        return "invalid_props: props contain a number out of range"
    return "invalid_props: props must be an object"


def _typed_props_reason(type_name: str, error: msgspec.ValidationError) -> str:
    message = str(error)
    expected = _PROPS_EXPECTED[type_name]
    at = _AT_FIELD.search(message)
    if at is not None:
        field = at.group(1)
        return f"invalid_props: {type_name}.{field}: expected {expected[field]}"
    missing = _MISSING_FIELD.search(message)
    if missing is None:  # convert() only sees dicts, so only field errors can occur
        raise error
    field = missing.group(1)
    return f"invalid_props: {type_name}.{field}: missing, expected {expected[field]}"


def _span(ms: int) -> str:
    return f"{ms // 60_000} min" if ms % 60_000 == 0 else f"{ms} ms"


class _BatchCheck:
    """Per-batch state (context defaults, skew, time window) for the one per-event check."""

    __slots__ = (
        "_defaults",
        "_in_future",
        "_max_event_bytes",
        "_max_props_bytes",
        "_max_props_depth",
        "_newest",
        "_oldest",
        "_skew",
        "_too_old",
    )

    def __init__(
        self, context: _Context, sent_at: int | None, received_at_ms: int, limits: Limits
    ) -> None:
        self._defaults = _Defaults(
            session_id=context.session_id or "",
            device_model=context.device_model or "",
            app_version=context.app_version or "",
            os=context.os or "",
            region=context.region or "",
        )
        self._skew = 0 if sent_at is None else received_at_ms - sent_at
        self._newest = received_at_ms + limits.max_future_ms
        self._oldest = received_at_ms - limits.max_event_age_days * DAY_MS
        self._max_event_bytes = limits.max_event_bytes
        self._max_props_bytes = limits.max_props_bytes
        self._max_props_depth = limits.max_props_depth
        self._too_old = f"too_old: event time is more than {limits.max_event_age_days} days ago"
        self._in_future = (
            f"in_future: event time is more than {_span(limits.max_future_ms)} in the future"
        )

    def run(self, raws: Sequence[msgspec.Raw]) -> ValidatedBatch:
        accepted: list[Event] = []
        rejected: list[Rejection] = []
        for index, raw in enumerate(raws):
            result = self.check(raw)
            if isinstance(result, Event):
                accepted.append(result)
            else:
                rejected.append(Rejection(index, result, bytes(raw)))
        return ValidatedBatch(accepted, rejected)

    def check(self, raw: msgspec.Raw) -> Event | str:
        """The event, or the reason it is rejected."""
        size = len(raw)
        if size > self._max_event_bytes:
            return f"event_too_large: {size} bytes, limit {self._max_event_bytes}"
        try:
            wire = _event_decoder.decode(raw)
        except msgspec.ValidationError as exc:
            return _wire_reason(exc)
        if not _is_valid_type(wire.type):
            return _FIELD_REASONS["type"]

        props_size = len(wire.props)
        if props_size > self._max_props_bytes:
            return f"props_too_large: {props_size} bytes, limit {self._max_props_bytes}"
        props: dict[str, Any] | None = None
        if props_size:
            try:
                props = _props_decoder.decode(wire.props)
            except msgspec.ValidationError as exc:
                return _props_reason(exc)
            # Each level takes at least two bytes, so small props need no walk.
            if props_size > 2 * self._max_props_depth and nesting_exceeds(
                props, self._max_props_depth
            ):
                return f"too_deep: props nested more than {self._max_props_depth} levels"
        if props is None:
            props = {}
        schema = PROPS_TYPES.get(wire.type)
        if schema is not None:
            try:
                msgspec.convert(props, schema)
            except msgspec.ValidationError as exc:
                return _typed_props_reason(wire.type, exc)

        ts = wire.ts + self._skew
        if ts > self._newest:
            return self._in_future
        if ts < self._oldest:
            return self._too_old

        batch = self._defaults
        return Event(
            event_id=wire.event_id,
            type=wire.type,
            user_id=wire.user_id,
            ts=ts,
            session_id=batch.session_id if wire.session_id is None else wire.session_id,
            device_model=batch.device_model if wire.device_model is None else wire.device_model,
            app_version=batch.app_version if wire.app_version is None else wire.app_version,
            os=batch.os if wire.os is None else wire.os,
            region=batch.region if wire.region is None else wire.region,
            props=props,
        )


def _check_count(count: int, limits: Limits) -> None:
    if count > limits.max_events_per_batch:
        raise TooManyEvents(f"{count} events in one batch, limit {limits.max_events_per_batch}")


def validate_native(body: bytes, received_at_ms: int, limits: Limits) -> ValidatedBatch:
    """Validate a decompressed native body `{"sent_at"?, "context"?, "events": [...]}`.

    Raises BadBatch when the body is not UTF-8 JSON or not of that shape (including a
    `context` field that is not a string) or nests more than MAX_PARSE_DEPTH levels,
    TooManyEvents above the batch limit. An empty `events` list is a valid batch with
    nothing accepted. `received_at_ms` is the gateway's clock, the reference for clock-skew
    correction and the time window. A body too deep for the decoder's stack is validated
    pruned (`prune_nesting`): deep props are `too_deep` either way, and the raw text of a
    rejected event holds `null` in place of the pruned levels.
    """
    try:
        # JSON is UTF-8 (RFC 8259); msgspec checks it only for values it decodes, and
        # rejected events' raw text must decode as UTF-8 for the dead-letter record.
        body.decode()
    except UnicodeDecodeError as exc:
        raise BadBatch(f"body is not valid UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        return _validate_native(body, received_at_ms, limits)
    except RecursionError:
        pass
    return _validate_native(pruned_body(body), received_at_ms, limits)


def pruned_body(body: bytes) -> bytes:
    """`prune_nesting(body)`, for a body a decoder refused for its depth; raises BadBatch
    past `MAX_PARSE_DEPTH` levels (SPEC §2: nested too deeply to parse at all)."""
    try:
        return prune_nesting(body)
    except NestingTooDeep as exc:
        raise BadBatch(str(exc)) from None


def _validate_native(body: bytes, received_at_ms: int, limits: Limits) -> ValidatedBatch:
    try:
        envelope = _envelope_decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise BadBatch(f"body has the wrong shape: {exc}") from None
    except msgspec.DecodeError as exc:
        raise BadBatch(f"body is not valid JSON: {exc}") from None
    _check_count(len(envelope.events), limits)
    context = _Context() if envelope.context is None else envelope.context
    return _BatchCheck(context, envelope.sent_at, received_at_ms, limits).run(envelope.events)


def validate_dicts(
    events: list[Any],
    context: dict[str, Any],
    sent_at: int | None,
    received_at_ms: int,
    limits: Limits,
) -> ValidatedBatch:
    """Validate already-parsed native-shaped events (from the Segment/PostHog normalizers)
    with exactly the rules of `validate_native`; `context` holds batch defaults with the
    native names (session_id, device_model, app_version, os, region).

    Items must be JSON-derived values (what a JSON decoder returns); anything else is a
    programming error and raises TypeError. Raises BadBatch when a `context` value is not
    a string, TooManyEvents above the batch limit, RecursionError for an item nested
    nearly as deep as the decoder's stack allows (decode the body again through
    `pruned_body`). A rejection's raw is the item's JSON.
    """
    _check_count(len(events), limits)
    try:
        batch_context = msgspec.convert(context, _Context)
    except msgspec.ValidationError as exc:
        raise BadBatch(f"context has the wrong shape: {exc}") from None
    # Encoding and decoding again keeps one validation path and yields the raw text
    # needed for the size cap and the dead-letter record anyway.
    raws = [msgspec.Raw(_encoder.encode(item)) for item in events]
    return _BatchCheck(batch_context, sent_at, received_at_ms, limits).run(raws)
