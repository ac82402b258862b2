"""One play's state and what it folds from its events (see the package docstring for the
contract): a pure function of the set of distinct events, whatever their order."""

from __future__ import annotations

import hashlib
import math
from array import array
from bisect import bisect_left
from sys import intern
from typing import Any, Final

import msgspec

from common.concurrency import Run, batch_of, extend, minute_of, stamp
from common.qoe import (
    MINUTE_MS,
    QoeContribution,
    experience_score,
    hundredths,
    play_watch_ms,
    quality_score,
    smoothness_score,
    startup_score,
)
from schemas.events import Event
from schemas.props import FlatProps, flatten_props, prop_text

_UINT32_MAX: Final = 2**32 - 1
# Error codes kept per play: the smallest MAX_ERROR_CODES distinct codes (the same set
# whatever the order events arrive in), each cut to MAX_ERROR_CODE_LENGTH characters, so a
# player that invents a code per error cannot grow a held play without bound.
MAX_ERROR_CODES: Final = 16
MAX_ERROR_CODE_LENGTH: Final = 128
_PLAYBACK_PREFIX: Final = "playback_"
_PLAYBACK_PREFIX_LENGTH: Final = len(_PLAYBACK_PREFIX)

SeriesKey = tuple[str, int, int, str, str]  # project, partition, minute_ms, content, device
BatchKey = tuple[str, int, int, str, str, int]  # a SeriesKey and a write batch


class PlayState(msgspec.Struct, kw_only=True):
    """Everything known about one held play. Fields marked "(ts, event_id)" keep the key of
    the event that set them, so a later-arriving earlier event can take over."""

    project: str
    play_id: str
    partition: int
    first_ts: int
    first_event_id: str  # (ts, event_id) of the first event
    user_id: str
    device_model: str
    app_version: str
    region: str
    first_type: str = ""
    os: str = ""
    source: str = ""
    session_id: str = ""
    first_props: bytes = b""  # the first event's other props as JSON (_take_first_event)
    content_id: str = ""
    content_ts: int | None = None
    content_event_id: str = ""
    start_ts: int | None = None
    start_event_id: str = ""
    startup_ms: int = 0
    played_ms: int = 0
    rebuffer_ms: int = 0
    rebuffer_count: int = 0
    bitrate_switches: int = 0
    bitrate_weighted_sum: int = 0
    bitrate_weight_ms: int = 0
    downshifts: int = 0
    upshifts: int = 0
    # A tuple, not a list: most plays have no error and share the empty tuple.
    error_codes: tuple[str, ...] = ()
    frames_rendered: int = 0
    frames_dropped: int = 0
    frames_ms: int = 0  # played_ms of the heartbeats that report frames
    first_fatal_ts: int | None = None
    has_end: bool = False
    last_ts: int
    last_received_at: int
    event_count: int = 0
    # Sorted 64-bit hashes, 8 bytes each: a set of ints costs ~70 bytes an event, and an
    # open play (never at rest) of a long video collects hundreds of them.
    event_ids: array = msgspec.field(default_factory=lambda: array("Q"))  # type: ignore[type-arg]
    positions: dict[int, int] = msgspec.field(default_factory=dict)
    closed: bool = False
    emitted_version: int = 0
    emitted_first_ts: int | None = None
    series_key: SeriesKey | None = None
    # Write batches (concurrency.py): the one of `series_key`, the one the QoE
    # contribution goes to now, the minutes the play spans with theirs, and what of them
    # is counted in the concurrent viewers (content, device, runs).
    series_batch: int = 0
    qoe_batch: int = 0
    viewing: tuple[Run, ...] = ()
    viewed: tuple[str, str, tuple[Run, ...]] | None = None

    @property
    def version(self) -> int:
        return 2 * self.event_count

    @property
    def started(self) -> bool:
        return self.start_ts is not None

    @property
    def video_start_failure(self) -> bool:
        if self.first_fatal_ts is None:
            return False
        return self.start_ts is None or self.first_fatal_ts < self.start_ts

    @property
    def playback_failure(self) -> bool:
        return self.first_fatal_ts is not None and self.started and not self.video_start_failure

    @property
    def exit_before_start(self) -> bool:
        return self.closed and not self.started and self.first_fatal_ts is None

    @property
    def ends_itself(self) -> bool:
        """Has an event that closes it (end or fatal error), as opposed to idling out."""
        return self.has_end or self.first_fatal_ts is not None

    @property
    def watch_ms(self) -> int:
        startup = self.startup_ms if self.started else 0
        return play_watch_ms(startup, self.played_ms, self.rebuffer_ms)

    def contribution(self) -> QoeContribution:
        return QoeContribution(
            version=self.event_count,
            started=self.started,
            video_start_failure=self.video_start_failure,
            exit_before_start=self.exit_before_start,
            playback_failure=self.playback_failure,
            startup_ms=self.startup_ms if self.started else None,
            rebuffer_ms=self.rebuffer_ms,
            watch_ms=self.watch_ms,
        )

    def row(self) -> tuple[object, ...]:
        return (
            self.project,
            self.play_id,
            self.user_id,
            self.content_id,
            self.device_model,
            self.app_version,
            self.region,
            self.first_ts,
            self.last_ts,
            int(self.started),
            int(self.video_start_failure),
            int(self.exit_before_start),
            int(self.playback_failure),
            self.startup_ms if self.started else 0,
            self.played_ms,
            self.rebuffer_ms,
            self.rebuffer_count,
            self.bitrate_switches,
            self.bitrate_weighted_sum,
            self.bitrate_weight_ms,
            self.watch_ms,
            self.event_count,
            0,
            self.version,
            self.first_type,
            self.os,
            self.source,
            self.session_id,
            *self.first_event_props(),
            self.downshifts,
            self.upshifts,
            list(self.error_codes),
            self.frames_rendered,
            self.frames_dropped,
            self.frames_ms,
            *self.scores(),
        )

    def first_event_props(self) -> FlatProps:
        """The first event's props flattened as `events` stores them (schemas/props.py),
        with `content_id` set to the play's when that event names none: filters and
        breakdowns on `props.content_id` see the play's content."""
        props: dict[str, Any] = {"play_id": self.play_id}
        if self.first_props:
            props.update(_props_decoder.decode(self.first_props))
        if self.content_id and "content_id" not in props:
            props["content_id"] = self.content_id
        return flatten_props(props)

    def scores(self) -> tuple[int, int, int, int, int]:
        """(scored, experience, startup, smoothness, quality) for the row: scores in
        hundredths, 0 where undefined (`scored` = 0 for an exit before start; startup and
        smoothness need a start, quality frame data too)."""
        failed = self.video_start_failure or self.playback_failure
        started = self.started
        startup = startup_score(self.startup_ms) if started else 0.0
        smoothness = (
            smoothness_score(self.rebuffer_count, self.rebuffer_ms, self.watch_ms)
            if started
            else 0.0
        )
        quality = quality_score(self.frames_rendered, self.frames_dropped) if started else None
        overall = experience_score(failed, started, startup, smoothness, quality)
        return (
            int(overall is not None),
            hundredths(overall or 0.0),
            hundredths(startup),
            hundredths(smoothness),
            hundredths(quality or 0.0),
        )

    def tombstone(self, first_ts: int) -> tuple[object, ...]:
        """Hides the row previously written under the day of `first_ts` (same sorting key,
        version 2n - 1 > any earlier row's 2m with m < n)."""
        zeros = (0,) * 13
        return (
            self.project,
            self.play_id,
            self.user_id,
            "",
            "",
            "",
            "",
            first_ts,
            first_ts,
            *zeros,
            1,
            self.version - 1,
            *_TOMBSTONE_TAIL,
        )


# The 0010 columns of a tombstone: empty, so no filter can tell it from another.
_TOMBSTONE_TAIL: Final[tuple[object, ...]] = (
    "",
    "",
    "",
    "",
    [],
    [],
    [],
    [],
    0,
    0,
    [],
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
)


class PointState(msgspec.Struct):
    """One point of the live series, a batch of a (minute, content, device) key: the QoE
    contributions of the plays whose first event is in the minute, and the concurrent
    viewers of the minute (plays counted, held plays among them). The changelog form too:
    a `qoe:` value from before the two were one point decodes as one with no viewers."""

    plays: dict[str, QoeContribution] = msgspec.field(default_factory=dict)
    viewers: int = 0
    held_viewers: int = 0


_props_encoder = msgspec.json.Encoder()
_props_decoder = msgspec.json.Decoder(dict[str, Any])


def _event_hash(event_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "little")


def _whole(value: object, ceiling: int = 2**53) -> int:
    """A props number as whole units (ms, kbps); anything else counts as 0."""
    if type(value) is int:  # the common case first: one call per numeric prop read
        return min(value, ceiling) if value > 0 else 0
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    if not math.isfinite(value) or value <= 0:
        return 0
    return min(round(value), ceiling)


def play_id_of(event: Event) -> str | None:
    if not event.type.startswith(_PLAYBACK_PREFIX):
        return None
    play_id = event.props.get("play_id")
    return play_id if isinstance(play_id, str) and play_id else None


def _new_state(project: str, play_id: str, partition: int, event: Event, source: str) -> PlayState:
    """A state whose first event is `event`; `_apply` then counts it like any other."""
    state = PlayState(
        project=intern(project),
        play_id=play_id,
        partition=partition,
        first_ts=event.ts,
        first_event_id=event.event_id,
        user_id=event.user_id,
        device_model="",
        app_version="",
        region="",
        last_ts=event.ts,
        last_received_at=0,
    )
    _take_first_event(state, event, source)
    return state


def _take_first_event(state: PlayState, event: Event, source: str) -> None:
    """The dimensions a play takes from its first event (filters and breakdowns)."""
    state.user_id = event.user_id
    state.device_model = intern(event.device_model)
    state.app_version = intern(event.app_version)
    state.region = intern(event.region)
    state.os = intern(event.os)
    state.source = intern(source)
    state.first_type = intern(event.type)
    state.session_id = event.session_id
    # Kept without what the play already says: play_id (its key) and a content_id that
    # is a non-empty string (then it is the play's; `first_event_props` puts it back).
    props = event.props
    content_id = props.get("content_id")
    implied = 1 + (isinstance(content_id, str) and content_id != "")
    if len(props) > implied or "play_id" not in props:
        rest = {
            key: value
            for key, value in props.items()
            if key != "play_id" and (key != "content_id" or implied == 1)
        }
        state.first_props = _props_encoder.encode(rest)
    else:
        state.first_props = b""


def track_batches(
    state: PlayState,
    before: tuple[int, int, str, str] | None,
    received_at: int,
    horizon_ms: int,
) -> None:
    """Stamps what a record changed of the play's minutes and tags with the record's
    batches (common/concurrency.py); `before` = (first_ts, last_ts, content_id,
    device_model) before the record, None for a new play."""
    first_ts, last_ts = state.first_ts, state.last_ts
    if before is not None and before[2] == state.content_id and before[3] == state.device_model:
        first_moved = before[0] // MINUTE_MS != first_ts // MINUTE_MS
        if not first_moved and before[1] // MINUTE_MS == last_ts // MINUTE_MS:
            return  # the usual event: the same minutes and tags
        first_minute, last_minute = minute_of(first_ts), minute_of(last_ts)
        if first_moved:
            state.qoe_batch = batch_of(first_minute, received_at, horizon_ms)
        state.viewing = extend(state.viewing, first_minute, last_minute, received_at, horizon_ms)
        return
    first_minute, last_minute = minute_of(first_ts), minute_of(last_ts)
    state.qoe_batch = batch_of(first_minute, received_at, horizon_ms)
    state.viewing = tuple(stamp(first_minute, last_minute, received_at, horizon_ms))


def _add_error_code(codes: tuple[str, ...], value: object) -> tuple[str, ...]:
    """The play's codes with `value`'s text: sorted, distinct, the smallest
    MAX_ERROR_CODES (a set that does not depend on arrival order)."""
    if isinstance(value, dict | list) or value is None:
        return codes
    code = prop_text(value)[:MAX_ERROR_CODE_LENGTH]
    if code in codes:
        return codes
    return tuple(sorted((*codes, code))[:MAX_ERROR_CODES])


_NUMBER_TYPES: Final = frozenset((int, float))  # exact types: a bool is no number here


def _number(value: object) -> float | None:
    if type(value) not in _NUMBER_TYPES:
        return None
    number = float(value)  # type: ignore[arg-type]
    return number if math.isfinite(number) else None


def _apply(state: PlayState, event: Event, received_at: int, source: str) -> bool:
    """Fold one event into the play; False when it was already applied (same event_id)."""
    event_hash = _event_hash(event.event_id)
    ids = state.event_ids
    index = bisect_left(ids, event_hash)
    if index < len(ids) and ids[index] == event_hash:
        return False
    ids.insert(index, event_hash)
    state.event_count += 1
    state.last_ts = max(state.last_ts, event.ts)
    state.last_received_at = max(state.last_received_at, received_at)
    order = (event.ts, event.event_id)
    if order < (state.first_ts, state.first_event_id):
        state.first_ts, state.first_event_id = order
        _take_first_event(state, event, source)
    props = event.props
    content_id = props.get("content_id")
    if (
        isinstance(content_id, str)
        and content_id
        and (state.content_ts is None or order < (state.content_ts, state.content_event_id))
    ):
        state.content_id = intern(content_id)
        state.content_ts, state.content_event_id = order

    kind = event.type
    if kind == "playback_start":
        if state.start_ts is None or order < (state.start_ts, state.start_event_id):
            state.start_ts, state.start_event_id = order
            state.startup_ms = _whole(props.get("startup_ms"), _UINT32_MAX)
    elif kind == "playback_heartbeat":
        played = _whole(props.get("played_ms"))
        state.played_ms += played
        state.bitrate_weighted_sum += _whole(props.get("bitrate_kbps")) * played
        state.bitrate_weight_ms += played
        rendered, dropped = props.get("frames_rendered"), props.get("frames_dropped")
        # Optional props: a heartbeat reports frames when either is a number.
        if type(rendered) in _NUMBER_TYPES or type(dropped) in _NUMBER_TYPES:
            state.frames_rendered += _whole(rendered)
            state.frames_dropped += _whole(dropped)
            state.frames_ms += played
    elif kind == "playback_end":
        state.played_ms += _whole(props.get("played_ms"))
        state.has_end = True
    elif kind == "playback_rebuffer":
        state.rebuffer_ms += _whole(props.get("duration_ms"))
        state.rebuffer_count += 1
    elif kind == "playback_quality_change":
        state.bitrate_switches += 1
        before, after = _number(props.get("from_kbps")), _number(props.get("to_kbps"))
        if before is not None and after is not None:
            state.downshifts += after < before
            state.upshifts += after > before
    elif kind == "playback_error":
        state.error_codes = _add_error_code(state.error_codes, props.get("code"))
        if props.get("fatal") is True:
            previous = state.first_fatal_ts
            state.first_fatal_ts = event.ts if previous is None else min(previous, event.ts)
    return True
