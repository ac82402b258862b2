"""How a play is kept: the changelog value (msgpack of the whole state, read back by
any later version) and the compact resting form of a closed play (this process only)."""

from __future__ import annotations

from array import array
from sys import intern
from typing import Final

import msgspec

from common.concurrency import LIVE, Run, minute_of
from streams.processors.plays.state import (
    _PLAYBACK_PREFIX,
    _PLAYBACK_PREFIX_LENGTH,
    BatchKey,
    PlayState,
    PointState,
)

_PLAY_PREFIX: Final = "play:"
_POINT_PREFIX: Final = "point:"
# Before a key's QoE and viewers were one point, each had an entry of its own: a worker
# upgraded over such a changelog loads them, and replaces them at its next changes.
_QOE_PREFIX: Final = "qoe:"
_VIEWERS_PREFIX: Final = "viewers:"


class _RestingPlay(msgspec.Struct, array_like=True):
    """A closed play at rest (this process only, so free to change): a msgpack array
    without what the key or the rest of the play already says. Project and play id come
    from the key, `closed` is always true, `series_key` is either None or the key the
    play's own fields give (`in_series`), an event id equal to the first event's is None,
    and times are offsets from `first_ts`, which msgpack writes in 1 to 5 bytes instead of
    9. What gives the play's series entries comes first: `_RestingSeries` reads just that."""

    partition: int
    viewed: tuple[str, str, tuple[Run, ...]] | None
    in_series: bool
    series_batch: int
    first_ts: int
    content_id: str
    device_model: str
    first_event_id: str
    user_id: str
    app_version: str
    region: str
    content_ts: int | None
    content_event_id: str | None
    start_ts: int | None
    start_event_id: str | None
    startup_ms: int
    played_ms: int
    rebuffer_ms: int
    rebuffer_count: int
    bitrate_switches: int
    bitrate_weighted_sum: int
    bitrate_weight_ms: int
    first_fatal_ts: int | None
    has_end: bool
    last_ts: int
    last_received_at: int
    event_count: int
    event_ids: bytes
    positions: dict[int, int]
    emitted_version: int
    emitted_first_ts: int | None
    first_type: str | None
    os: str
    source: str
    session_id: str
    first_props: bytes
    downshifts: int
    upshifts: int
    error_codes: tuple[str, ...]
    frames_rendered: int
    frames_dropped: int
    frames_ms: int
    qoe_batch: int
    viewing: tuple[Run, ...]


class _RestingSeries(msgspec.Struct, array_like=True):
    """The head of a `_RestingPlay`: the play's series entries (what forgetting the play
    needs), decoded without the rest."""

    partition: int
    viewed: tuple[str, str, tuple[Run, ...]] | None
    in_series: bool
    series_batch: int
    first_ts: int
    content_id: str
    device_model: str

    def series_key(self, project: str) -> BatchKey | None:
        """The QoE entry the play counts in (PlayState.series_key and series_batch)."""
        if not self.in_series:
            return None
        minute = minute_of(self.first_ts)
        return (project, self.partition, minute, self.content_id, self.device_model,
                self.series_batch)


def _ids_as_list(value: object) -> list[int]:
    """The changelog keeps event ids as a msgpack array of integers."""
    if isinstance(value, array):
        return value.tolist()
    raise NotImplementedError(type(value))


def _ids_from(kind: type, value: object) -> array:  # type: ignore[type-arg]
    if kind is not array:
        raise NotImplementedError(kind)
    ids = array("Q")
    if isinstance(value, list) and all(isinstance(item, int) for item in value):
        ids.extend(sorted(value))  # an older state's set came out in any order
    else:
        raise msgspec.ValidationError(f"event ids: expected an array of integers, got {value!r}")
    return ids


_play_encoder = msgspec.msgpack.Encoder(enc_hook=_ids_as_list)
_play_decoder = msgspec.msgpack.Decoder(PlayState, dec_hook=_ids_from)
_resting_encoder = msgspec.msgpack.Encoder()
_resting_decoder = msgspec.msgpack.Decoder(_RestingPlay)
_resting_series_decoder = msgspec.msgpack.Decoder(_RestingSeries)


def _offset(ts: int | None, first_ts: int) -> int | None:
    return None if ts is None else ts - first_ts


def _time(offset: int | None, first_ts: int) -> int | None:
    return None if offset is None else first_ts + offset


def _to_rest(state: PlayState, buffer: bytearray) -> bytes:
    """`buffer` is scratch space: `encode` would return bytes that keep the spare room of
    its growing buffer (a fifth to a half more than the play), a copy out of the buffer
    has the exact size."""
    first_ts, first_event_id = state.first_ts, state.first_event_id
    _resting_encoder.encode_into(
        (
            state.partition,
            state.viewed,
            state.series_key is not None,
            state.series_batch,
            first_ts,
            state.content_id,
            state.device_model,
            first_event_id,
            state.user_id,
            state.app_version,
            state.region,
            _offset(state.content_ts, first_ts),
            None if state.content_event_id == first_event_id else state.content_event_id,
            _offset(state.start_ts, first_ts),
            None if state.start_event_id == first_event_id else state.start_event_id,
            state.startup_ms,
            state.played_ms,
            state.rebuffer_ms,
            state.rebuffer_count,
            state.bitrate_switches,
            state.bitrate_weighted_sum,
            state.bitrate_weight_ms,
            _offset(state.first_fatal_ts, first_ts),
            state.has_end,
            state.last_ts - first_ts,
            state.last_received_at - first_ts,
            state.event_count,
            state.event_ids.tobytes(),
            state.positions,
            state.emitted_version,
            _offset(state.emitted_first_ts, first_ts),
            # Every play's events have the prefix; None: a state from before 0010.
            state.first_type[_PLAYBACK_PREFIX_LENGTH:] if state.first_type else None,
            state.os,
            state.source,
            state.session_id,
            state.first_props,
            state.downshifts,
            state.upshifts,
            state.error_codes,
            state.frames_rendered,
            state.frames_dropped,
            state.frames_ms,
            state.qoe_batch,
            state.viewing,
        ),
        buffer,
    )
    return bytes(buffer)


def _from_rest(key: tuple[str, str], blob: bytes) -> PlayState:
    rest = _resting_decoder.decode(blob)
    project, play_id = key
    first_ts, first_event_id = rest.first_ts, rest.first_event_id
    content_id, device_model = intern(rest.content_id), intern(rest.device_model)
    event_ids = array("Q")
    event_ids.frombytes(rest.event_ids)
    return PlayState(
        project=project,
        play_id=play_id,
        partition=rest.partition,
        first_ts=first_ts,
        first_event_id=first_event_id,
        user_id=rest.user_id,
        device_model=device_model,
        app_version=intern(rest.app_version),
        region=intern(rest.region),
        first_type="" if rest.first_type is None else intern(_PLAYBACK_PREFIX + rest.first_type),
        os=intern(rest.os),
        source=intern(rest.source),
        session_id=rest.session_id,
        first_props=rest.first_props,
        content_id=content_id,
        content_ts=_time(rest.content_ts, first_ts),
        content_event_id=(
            first_event_id if rest.content_event_id is None else rest.content_event_id
        ),
        start_ts=_time(rest.start_ts, first_ts),
        start_event_id=first_event_id if rest.start_event_id is None else rest.start_event_id,
        startup_ms=rest.startup_ms,
        played_ms=rest.played_ms,
        rebuffer_ms=rest.rebuffer_ms,
        rebuffer_count=rest.rebuffer_count,
        bitrate_switches=rest.bitrate_switches,
        bitrate_weighted_sum=rest.bitrate_weighted_sum,
        bitrate_weight_ms=rest.bitrate_weight_ms,
        downshifts=rest.downshifts,
        upshifts=rest.upshifts,
        error_codes=rest.error_codes,
        frames_rendered=rest.frames_rendered,
        frames_dropped=rest.frames_dropped,
        frames_ms=rest.frames_ms,
        first_fatal_ts=_time(rest.first_fatal_ts, first_ts),
        has_end=rest.has_end,
        last_ts=first_ts + rest.last_ts,
        last_received_at=first_ts + rest.last_received_at,
        event_count=rest.event_count,
        event_ids=event_ids,
        positions=rest.positions,
        closed=True,
        emitted_version=rest.emitted_version,
        emitted_first_ts=_time(rest.emitted_first_ts, first_ts),
        series_key=(
            (project, rest.partition, minute_of(first_ts), content_id, device_model)
            if rest.in_series
            else None
        ),
        series_batch=rest.series_batch,
        qoe_batch=rest.qoe_batch,
        viewing=rest.viewing,
        viewed=rest.viewed,
    )


_point_decoder = msgspec.msgpack.Decoder(PointState)
_viewers_decoder = msgspec.msgpack.Decoder(tuple[int, int])
_json_encoder = msgspec.json.Encoder()


def play_state_key(project: str, play_id: str) -> str:
    return _PLAY_PREFIX + _json_encoder.encode([project, play_id]).decode()


def point_state_key(key: BatchKey) -> str:
    return _POINT_PREFIX + _json_encoder.encode(key).decode()  # a tuple encodes as an array


def qoe_state_key(key: BatchKey) -> str:
    """An older changelog's QoE entry: the live batch's key leaves the batch out."""
    parts = key if key[5] != LIVE else key[:5]
    return _QOE_PREFIX + _json_encoder.encode(parts).decode()


def viewers_state_key(key: BatchKey) -> str:
    return _VIEWERS_PREFIX + _json_encoder.encode(key).decode()


def batch_key(encoded: str) -> BatchKey:
    """The BatchKey of a state key's JSON part (an older live QoE entry's has five).
    Raises ValueError for anything else."""
    raw = msgspec.json.decode(encoded.encode())
    if not isinstance(raw, list) or len(raw) not in (5, 6):
        raise ValueError(f"not a series key: {encoded!r}")
    project, partition, minute_ms, content_id, device_model, *batch = raw
    return (
        str(project),
        int(partition),
        int(minute_ms),
        str(content_id),
        str(device_model),
        int(batch[0]) if batch else LIVE,
    )
