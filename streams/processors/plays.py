"""Plays: one row per play for ClickHouse (`plays`) and a live 1-minute QoE series for
InfluxDB (`playback_qoe`), with the SPEC §4 playback-quality semantics.

What belongs to a play
    An event whose type starts with `playback_` and whose props carry a non-empty string
    `play_id`; the play is `(project, play_id)`. Other events only advance the clock.

A play's row is a pure function of the set of its distinct events (by event_id), so the
order events arrive in, duplicates and replays never change it:
    - first event = the smallest `(ts, event_id)`; it gives `first_ts` (day/minute the
      play is attributed to), `user_id`, `device_model`, `app_version` and `region`;
    - `content_id` comes from the earliest event (same order) that carries one;
    - start = the earliest `playback_start`; "before start" compares event times: a fatal
      `playback_error` with `ts < start ts` (or with no start at all) is a
      video_start_failure, one at or after the start a playback_failure. The earliest fatal
      error decides, so the two are exclusive; `started` stays "has a playback_start";
    - exit_before_start = ended without a start and without a fatal error; only ended plays
      are written, so it is simply "no start and no fatal error" on a row;
    - durations, startup and bitrates are rounded to whole milliseconds / kbps on the way
      in, so every sum is an exact integer whatever the order;
    - `version` = 2 x the number of distinct events applied: a later row for the same play
      always carries more events and a higher version, a replay yields the identical row
      with the same version.

When a play is written (only closed plays appear in `plays`)
    A play closes at the first flush after it has a `playback_end`, a fatal error, or has
    been idle for `idle_timeout_ms`: `last ts + timeout < event-time watermark` or
    `last received_at + timeout < now_ms` (processing time, so a stream that stops still
    closes its plays). The watermark is the largest `min(ts, received_at)` seen, so a
    client clock running ahead cannot close everyone's plays early. Open plays are not
    written: the `plays` table holds settled plays, the Influx series is the live view.

Late events, duplicates, replays
    Closed plays are kept for a grace period (default 2 x idle timeout, in both event time
    and arrival time) with their event-id set. A late event merges into the kept state and
    the play is re-emitted with a higher version (an idle-closed play re-opens until it is
    idle again); ReplacingMergeTree(version) keeps the newest row per
    (project, play_id, day). When a late event moves a play to another (earlier) day, a
    tombstone row (`deleted = 1`, version 2n - 1, the previous row's first_ts) is written
    under the old day's key, so each play has exactly one live key and day-filtered queries
    stay exact whatever the merge state. Records at or before the last position applied
    to a play (per partition) are skipped: a replay after a crash cannot double count.
    Event ids are kept as 64-bit hashes while the play is held, closed or not, because a
    client retry of the batch that closed a play arrives after the close. An event for a
    play already purged starts a new state; its row has fewer events, hence a lower
    version, and loses to the full row under the same day key (the late data is lost).
    Known gap: if those stragglers begin on a later UTC day than the play (a play across
    midnight whose tail arrives more than the grace period late), they form a second row.

Live QoE series (InfluxDB, measurement `playback_qoe`)
    One point per (project, source partition, first-event minute, content_id,
    device_model), open plays included, rewritten whenever one of its plays changes;
    fields: plays, started, video_start_failures, exits_before_start, playback_failures,
    startup_ms_p50/p95 (only when a play started), rebuffer_ratio (only when watch_ms > 0),
    watch_ms. The partition tag keeps workers that own different partitions from
    overwriting each other's points; sum counts across it, and treat percentiles per tag.
    A minute's series is kept while any of its plays is held and for `series_horizon_ms`
    after the minute; a play first seen after that is left out of the live view (it is
    still written to `plays`) rather than overwrite the minute's point with partial data.

State (take_state_changes / load_state, msgpack): one key per held play
(`play:["project","play_id"]`) and one per live series (`qoe:[...]`); None deletes.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from array import array
from bisect import bisect_left
from collections.abc import Iterable
from sys import intern
from typing import Final

import msgspec

from quip.settings import Settings
from schemas.events import Event, EventRecord
from streams.processors.base import Position, ProcessorOutput, SeriesPoint, TableRows

MINUTE_MS: Final = 60_000
DAY_MS: Final = 86_400_000
HOUR_MS: Final = 3_600_000
DEFAULT_IDLE_TIMEOUT_MS: Final = int(Settings.model_fields["play_idle_timeout_s"].default) * 1000

PLAYS_TABLE: Final = "plays"
QOE_MEASUREMENT: Final = "playback_qoe"
UNKNOWN_TAG: Final = "unknown"  # InfluxDB tags cannot be empty

PLAY_COLUMNS: Final = (
    "project",
    "play_id",
    "user_id",
    "content_id",
    "device_model",
    "app_version",
    "region",
    "first_ts",
    "last_ts",
    "started",
    "video_start_failure",
    "exit_before_start",
    "playback_failure",
    "startup_ms",
    "played_ms",
    "rebuffer_ms",
    "rebuffer_count",
    "bitrate_switches",
    "bitrate_weighted_sum",
    "bitrate_weight_ms",
    "watch_ms",
    "event_count",
    "deleted",
    "version",
)

_UINT32_MAX: Final = 2**32 - 1
_PLAY_PREFIX: Final = "play:"
_SERIES_PREFIX: Final = "qoe:"


# ---------------------------------------------------------------- QoE math (SPEC §4)


def quantile_exact(values: Iterable[int], level: float) -> int | None:
    """ClickHouse `quantileExact(level)`: the element at index `floor(level * n)` of the
    sorted values (clamped to the last one), so the median of an even count is the upper
    of the two middle values. None when there are no values (ClickHouse returns 0)."""
    ordered = sorted(values)
    if not ordered:
        return None
    index = int(level * len(ordered)) if level < 1 else len(ordered) - 1
    return ordered[min(index, len(ordered) - 1)]


def play_watch_ms(startup_ms: int, played_ms: int, rebuffer_ms: int) -> int:
    """watch_ms of one play = startup_ms + Σ played_ms + Σ rebuffer duration_ms."""
    return startup_ms + played_ms + rebuffer_ms


def rebuffer_ratio(rebuffer_ms: int, watch_ms: int) -> float | None:
    """Σ rebuffer duration_ms / Σ watch_ms; None when nothing was watched."""
    return rebuffer_ms / watch_ms if watch_ms > 0 else None


def avg_bitrate_kbps(bitrate_weighted_sum: int, bitrate_weight_ms: int) -> float | None:
    """Mean heartbeat bitrate weighted by each heartbeat's played_ms (Σ kbps·ms / Σ ms);
    None without heartbeat play time."""
    return bitrate_weighted_sum / bitrate_weight_ms if bitrate_weight_ms > 0 else None


def watch_hours(watch_ms: int) -> float:
    return watch_ms / HOUR_MS


# ---------------------------------------------------------------- state


class QoeContribution(msgspec.Struct, frozen=True, array_like=True):
    """What one play adds to its minute's QoE point. `version` is the play's event count:
    a contribution only replaces one with a lower or equal count."""

    version: int
    started: bool
    video_start_failure: bool
    exit_before_start: bool
    playback_failure: bool
    startup_ms: int | None
    rebuffer_ms: int
    watch_ms: int


def qoe_fields(contributions: Iterable[QoeContribution]) -> dict[str, int | float]:
    """The `playback_qoe` fields for one series point. Counts and milliseconds are ints,
    the ratio a float; percentiles and the ratio are left out when undefined (InfluxDB
    fields keep one type per measurement, so no placeholder values)."""
    items = list(contributions)
    startups = [c.startup_ms for c in items if c.started and c.startup_ms is not None]
    rebuffer_total = sum(c.rebuffer_ms for c in items)
    watch_total = sum(c.watch_ms for c in items)
    fields: dict[str, int | float] = {
        "plays": len(items),
        "started": sum(c.started for c in items),
        "video_start_failures": sum(c.video_start_failure for c in items),
        "exits_before_start": sum(c.exit_before_start for c in items),
        "playback_failures": sum(c.playback_failure for c in items),
        "watch_ms": watch_total,
    }
    p50, p95 = quantile_exact(startups, 0.5), quantile_exact(startups, 0.95)
    if p50 is not None and p95 is not None:
        fields["startup_ms_p50"] = p50
        fields["startup_ms_p95"] = p95
    ratio = rebuffer_ratio(rebuffer_total, watch_total)
    if ratio is not None:
        fields["rebuffer_ratio"] = ratio
    return fields


SeriesKey = tuple[str, int, int, str, str]  # project, partition, minute_ms, content, device


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
        )


class SeriesState(msgspec.Struct):
    plays: dict[str, QoeContribution] = msgspec.field(default_factory=dict)


class _RestingPlay(msgspec.Struct, array_like=True):
    """A closed play at rest (this process only, so free to change): a msgpack array
    without what the key or the rest of the play already says. Project and play id come
    from the key, `closed` is always true, `series_key` is either None or the key the
    play's own fields give (`in_series`), an event id equal to the first event's is None,
    and times are offsets from `first_ts`, which msgpack writes in 1 to 5 bytes instead of
    9."""

    partition: int
    first_ts: int
    first_event_id: str
    user_id: str
    device_model: str
    app_version: str
    region: str
    content_id: str
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
    in_series: bool


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
            first_ts,
            first_event_id,
            state.user_id,
            state.device_model,
            state.app_version,
            state.region,
            state.content_id,
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
            state.series_key is not None,
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
            (project, rest.partition, _minute(first_ts), content_id, device_model)
            if rest.in_series
            else None
        ),
    )


_series_decoder = msgspec.msgpack.Decoder(SeriesState)
_json_encoder = msgspec.json.Encoder()


def play_state_key(project: str, play_id: str) -> str:
    return _PLAY_PREFIX + _json_encoder.encode([project, play_id]).decode()


def series_state_key(key: SeriesKey) -> str:
    return _SERIES_PREFIX + _json_encoder.encode(list(key)).decode()


def _event_hash(event_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "little")


def _whole(value: object, ceiling: int = 2**53) -> int:
    """A props number as whole units (ms, kbps); anything else counts as 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    if not math.isfinite(value) or value <= 0:
        return 0
    return min(round(value), ceiling)


def play_id_of(event: Event) -> str | None:
    if not event.type.startswith("playback_"):
        return None
    play_id = event.props.get("play_id")
    return play_id if isinstance(play_id, str) and play_id else None


def _minute(ts: int) -> int:
    return ts // MINUTE_MS * MINUTE_MS


# ---------------------------------------------------------------- processor


_PlayKey = tuple[str, str]
_DEADLINE_BUCKET_MS: Final = 1_000


class _Deadlines:
    """Play keys by a time, for "which are due": buckets of `_DEADLINE_BUCKET_MS` in a
    dict of lists, plus a heap of the bucket numbers. A key costs a list slot (8 bytes)
    where a heap of (time, key) entries cost 64 (the tuple and its slot), once per index
    for every held play. The time itself is not kept: the caller reads it from the play,
    and puts back what is not due yet."""

    def __init__(self) -> None:
        self._buckets: dict[int, list[_PlayKey]] = {}
        self._order: list[int] = []

    def __len__(self) -> int:
        return sum(len(keys) for keys in self._buckets.values())

    def add(self, time: int, key: _PlayKey) -> None:
        bucket = time // _DEADLINE_BUCKET_MS
        keys = self._buckets.get(bucket)
        if keys is None:
            self._buckets[bucket] = [key]
            heapq.heappush(self._order, bucket)
        else:
            keys.append(key)

    def take(self, latest: int) -> list[tuple[int, list[_PlayKey]]]:
        """Removes and returns (bucket, keys) for every bucket that may hold a time at or
        before `latest`; the last may also hold later times."""
        taken = []
        order, buckets = self._order, self._buckets
        while order and order[0] * _DEADLINE_BUCKET_MS <= latest:
            bucket = heapq.heappop(order)
            taken.append((bucket, buckets.pop(bucket)))
        return taken


class PlaysProcessor:
    """Pure `StatefulProcessor` for SPEC §4 playback quality (see the module docstring for
    the full contract). Not thread-safe: one runner task owns an instance."""

    def __init__(
        self,
        *,
        idle_timeout_ms: int = DEFAULT_IDLE_TIMEOUT_MS,
        grace_ms: int | None = None,
        series_horizon_ms: int | None = None,
    ) -> None:
        if idle_timeout_ms <= 0:
            raise ValueError("idle_timeout_ms must be positive")
        self.idle_timeout_ms = idle_timeout_ms
        self.grace_ms = 2 * idle_timeout_ms if grace_ms is None else grace_ms
        self.series_horizon_ms = self.grace_ms if series_horizon_ms is None else series_horizon_ms
        # Closed plays that nothing has changed since their state was taken rest as bytes
        # (`_to_rest`): in a backlog, every play is held for the grace period after it
        # closes, and that is most of the processor's memory.
        self._plays: dict[tuple[str, str], PlayState | bytes] = {}
        self._resting_buffer = bytearray()
        self._open: set[tuple[str, str]] = set()
        # Deadline indexes, so a flush looks only at plays that are due, not at every held
        # play: open plays by last ts and by last received_at (idle closing), closed plays
        # by last received_at, then by last ts (forgetting needs both past the grace).
        # An index holds keys only (`_Deadlines`); the time is read from the play. A play
        # gets its idle entries at the flush after it opens (`_opened`, a list emptied at
        # each flush: a set of every indexed play kept its peak size for good); an entry
        # that comes up before the play is due goes back in under the play's current
        # time, one for a play no longer open is dropped. A play that re-opens while an
        # old entry is still queued has two for a while: the first to come due closes
        # it, the other finds it closed.
        self._idle_by_ts = _Deadlines()
        self._idle_by_received = _Deadlines()
        self._opened: list[tuple[str, str]] = []
        self._expiry_by_received = _Deadlines()
        self._expiry_by_ts = _Deadlines()
        self._touched: set[tuple[str, str]] = set()
        self._series: dict[SeriesKey, SeriesState] = {}
        self._pending_series: set[SeriesKey] = set()
        self._changed_plays: set[tuple[str, str]] = set()
        self._changed_series: set[SeriesKey] = set()
        self._watermark = 0  # largest min(ts, received_at) seen
        self._received_watermark = 0  # largest received_at seen
        # Series are per minute: looking for expired ones once per watermark minute is
        # enough (the scan over every series at each flush was 11 % of a live worker's CPU).
        self._series_swept_minute = -1

    @classmethod
    def from_settings(cls, settings: Settings) -> PlaysProcessor:
        return cls(idle_timeout_ms=settings.play_idle_timeout_s * 1000)

    @property
    def watermark(self) -> int:
        return self._watermark

    def held_plays(self) -> int:
        return len(self._plays)

    def open_plays(self) -> int:
        return len(self._open)

    # ------------------------------------------------------------ input

    def process(self, record: EventRecord, position: Position) -> None:
        received_at = record.received_at
        self._received_watermark = max(self._received_watermark, received_at)
        by_play: dict[str, list[Event]] = {}
        for event in record.events:
            self._watermark = max(self._watermark, min(event.ts, received_at))
            play_id = play_id_of(event)
            if play_id is not None:
                by_play.setdefault(play_id, []).append(event)
        for play_id, events in by_play.items():
            key = (record.project, play_id)
            state = self._play(key)
            if state is None:
                state = _new_state(record.project, play_id, position.partition, events[0])
                state.last_received_at = received_at
                self._plays[key] = state
                self._open.add(key)
                self._opened.append(key)
            elif state.positions.get(position.partition, -1) >= position.offset:
                continue  # a replay of what this state already reflects
            applied = False
            for event in events:
                applied |= _apply(state, event, received_at)
            state.positions[position.partition] = position.offset
            self._changed_plays.add(key)
            if not applied:
                continue
            self._touched.add(key)
            if state.closed and not state.ends_itself:
                state.closed = False  # idle-closed, and it turns out not to be over
                self._open.add(key)
                self._opened.append(key)

    def erase(self, project: str, user_id: str) -> None:
        """Drops the user's plays and their contributions to the QoE series (re-sent
        without them). Scans every held play: erasures are rare."""
        for key in [key for key in self._plays if key[0] == project]:
            state = self._peek(key)
            if state is None or state.user_id != user_id:
                continue
            del self._plays[key]
            self._open.discard(key)
            self._touched.discard(key)
            self._changed_plays.add(key)
            series_key = state.series_key
            series = self._series.get(series_key) if series_key is not None else None
            if series is not None and series.plays.pop(state.play_id, None) is not None:
                assert series_key is not None
                self._pending_series.add(series_key)
                self._changed_series.add(series_key)

    # ------------------------------------------------------------ output

    def flush(self, now_ms: int) -> ProcessorOutput:
        """Close what is due, return rows for closed plays that changed since they were
        last written (plus tombstones), and points for the series that changed; then forget
        plays past their grace period and series past their horizon."""
        for key in list(self._touched):  # new or changed since the last flush: index them
            state = self._held(key)
            if state.closed:
                self._expiry_by_received.add(state.last_received_at, key)
            elif state.ends_itself:
                self._close(key, state)
        for key in self._opened:
            opened = self._plays.get(key)  # open plays never rest as bytes
            if isinstance(opened, PlayState) and not opened.closed:
                self._idle_by_ts.add(opened.last_ts, key)
                self._idle_by_received.add(opened.last_received_at, key)
        self._opened.clear()
        self._close_idle(self._idle_by_ts, "last_ts", self._watermark)
        self._close_idle(self._idle_by_received, "last_received_at", now_ms)

        rows: list[tuple[object, ...]] = []
        for key in sorted(self._touched):
            state = self._held(key)
            self._sync_series(state)
            if state.closed and state.emitted_version != state.version:
                previous = state.emitted_first_ts
                if previous is not None and previous // DAY_MS != state.first_ts // DAY_MS:
                    rows.append(state.tombstone(previous))
                rows.append(state.row())
                state.emitted_version = state.version
                state.emitted_first_ts = state.first_ts
                self._changed_plays.add(key)
        self._touched.clear()
        self._forget_expired()

        points = self._series_points()
        output = ProcessorOutput(points=points)
        if rows:
            output.tables.append(TableRows(PLAYS_TABLE, PLAY_COLUMNS, rows))
        return output

    def _play(self, key: tuple[str, str]) -> PlayState | None:
        """The held play, as an object from now on (it is about to change)."""
        state = self._plays.get(key)
        if isinstance(state, bytes):
            state = self._plays[key] = _from_rest(key, state)
        return state

    def _held(self, key: tuple[str, str]) -> PlayState:
        state = self._play(key)
        assert state is not None
        return state

    def _peek(self, key: tuple[str, str]) -> PlayState | None:
        """The held play, read only (a resting play stays at rest)."""
        state = self._plays.get(key)
        return _from_rest(key, state) if isinstance(state, bytes) else state

    def _closed_times(self, key: tuple[str, str]) -> tuple[int, int] | None:
        """(last ts, last received_at) of a closed play, None if it is not held or open."""
        state = self._plays.get(key)
        if isinstance(state, bytes):
            rest = _resting_decoder.decode(state)
            return rest.first_ts + rest.last_ts, rest.first_ts + rest.last_received_at
        if state is None or not state.closed:
            return None
        return state.last_ts, state.last_received_at

    def _close(self, key: tuple[str, str], state: PlayState) -> None:
        state.closed = True
        self._open.discard(key)
        self._touched.add(key)
        self._changed_plays.add(key)
        self._expiry_by_received.add(state.last_received_at, key)

    def _close_idle(self, index: _Deadlines, field: str, clock: int) -> None:
        """Close the open plays whose `field` + idle timeout is before `clock`."""
        timeout = self.idle_timeout_ms
        for _, keys in index.take(clock - timeout - 1):
            for key in keys:
                state = self._plays.get(key)  # open plays never rest as bytes
                if not isinstance(state, PlayState) or state.closed:
                    continue
                time = getattr(state, field)
                if time + timeout < clock:
                    self._close(key, state)
                else:  # not due yet, or it moved on since it was indexed
                    index.add(time, key)

    def _forget_expired(self) -> None:
        """Forget closed plays past the grace period in both event and arrival time."""
        grace = self.grace_ms
        by_received, by_ts = self._expiry_by_received, self._expiry_by_ts
        # An entry whose play's time is no longer in its bucket is stale: the play changed
        # and was indexed again under its new time. A play due in event time but no longer
        # in arrival time took a late event: it is back in `by_received`.
        received_watermark, watermark = self._received_watermark, self._watermark
        for bucket, keys in by_received.take(received_watermark - grace - 1):
            for key in keys:
                times = self._closed_times(key)
                if times is None or times[1] // _DEADLINE_BUCKET_MS != bucket:
                    continue
                if times[1] + grace < received_watermark:
                    by_ts.add(times[0], key)
                else:
                    by_received.add(times[1], key)
        for bucket, keys in by_ts.take(watermark - grace - 1):
            for key in keys:
                times = self._closed_times(key)
                if times is None or times[0] // _DEADLINE_BUCKET_MS != bucket:
                    continue
                if times[0] + grace >= watermark:
                    by_ts.add(times[0], key)
                elif times[1] + grace < received_watermark:
                    del self._plays[key]
                    self._changed_plays.add(key)

    def _sync_series(self, state: PlayState) -> None:
        new_key: SeriesKey = (
            state.project,
            state.partition,
            _minute(state.first_ts),
            state.content_id,
            state.device_model,
        )
        old_key = state.series_key
        if old_key is not None and old_key != new_key:
            old = self._series.get(old_key)
            if old is not None and old.plays.pop(state.play_id, None) is not None:
                self._pending_series.add(old_key)
                self._changed_series.add(old_key)
            state.series_key = None
            self._changed_plays.add((state.project, state.play_id))
        series = self._series.get(new_key)
        if series is None:
            if new_key[2] + MINUTE_MS + self.series_horizon_ms < self._watermark:
                return  # too old for the live view; never overwrite a settled point
            series = self._series[new_key] = SeriesState()
        if state.series_key != new_key:
            state.series_key = new_key
            self._changed_plays.add((state.project, state.play_id))
        contribution = state.contribution()
        current = series.plays.get(state.play_id)
        if current == contribution or (
            current is not None and current.version > contribution.version
        ):
            return
        series.plays[state.play_id] = contribution
        self._pending_series.add(new_key)
        self._changed_series.add(new_key)

    def _series_points(self) -> list[SeriesPoint]:
        points = []
        for key in sorted(self._pending_series):
            series = self._series.get(key)
            if series is None:
                continue
            project, partition, minute_ms, content_id, device_model = key
            tags = {
                "project": project,
                "partition": str(partition),
                "content_id": content_id or UNKNOWN_TAG,
                "device_model": device_model or UNKNOWN_TAG,
            }
            points.append(
                SeriesPoint(QOE_MEASUREMENT, tags, qoe_fields(series.plays.values()), minute_ms)
            )
            if not series.plays:
                del self._series[key]  # the zero point above replaces what was written
        self._pending_series.clear()

        minute = self._watermark // MINUTE_MS
        if minute == self._series_swept_minute:
            return points
        self._series_swept_minute = minute
        for key, series in list(self._series.items()):
            project, _, minute_ms, _, _ = key
            if minute_ms + MINUTE_MS + self.series_horizon_ms >= self._watermark:
                continue
            if any((project, play_id) in self._plays for play_id in series.plays):
                continue
            del self._series[key]
            self._changed_series.add(key)
        return points

    # ------------------------------------------------------------ state

    def take_state_changes(self) -> dict[str, bytes | None]:
        changes: dict[str, bytes | None] = {}
        for project, play_id in sorted(self._changed_plays):
            play_key = (project, play_id)
            state = self._play(play_key)
            changes[play_state_key(project, play_id)] = (
                None if state is None else _play_encoder.encode(state)
            )
            if state is not None and state.closed and play_key not in self._touched:
                self._plays[play_key] = _to_rest(state, self._resting_buffer)
        for key in sorted(self._changed_series):
            series = self._series.get(key)
            changes[series_state_key(key)] = (
                None if series is None else _play_encoder.encode(series)
            )
        self._changed_plays.clear()
        self._changed_series.clear()
        return changes

    def load_state(self, key: str, value: bytes) -> None:
        """Restore one entry written by `take_state_changes`. Raises ValueError for a key
        this processor did not write, msgspec.DecodeError for a corrupt value."""
        if key.startswith(_PLAY_PREFIX):
            state = _play_decoder.decode(value)
            play_key = (state.project, state.play_id)
            self._plays[play_key] = state
            if not state.closed:
                self._open.add(play_key)
                self._opened.append(play_key)
            self._touched.add(play_key)  # re-sync its series, write it if still unwritten
            self._watermark = max(self._watermark, min(state.last_ts, state.last_received_at))
            self._received_watermark = max(self._received_watermark, state.last_received_at)
        elif key.startswith(_SERIES_PREFIX):
            raw = msgspec.json.decode(key[len(_SERIES_PREFIX) :].encode())
            project, partition, minute_ms, content_id, device_model = raw
            series_key: SeriesKey = (
                str(project),
                int(partition),
                int(minute_ms),
                str(content_id),
                str(device_model),
            )
            self._series[series_key] = _series_decoder.decode(value)
        else:
            raise ValueError(f"not a plays state key: {key!r}")


def _new_state(project: str, play_id: str, partition: int, event: Event) -> PlayState:
    """A state whose first event is `event`; `_apply` then counts it like any other."""
    return PlayState(
        project=intern(project),
        play_id=play_id,
        partition=partition,
        first_ts=event.ts,
        first_event_id=event.event_id,
        user_id=event.user_id,
        device_model=intern(event.device_model),
        app_version=intern(event.app_version),
        region=intern(event.region),
        last_ts=event.ts,
        last_received_at=0,
    )


def _apply(state: PlayState, event: Event, received_at: int) -> bool:
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
        state.user_id = event.user_id
        state.device_model = intern(event.device_model)
        state.app_version = intern(event.app_version)
        state.region = intern(event.region)
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
    elif kind == "playback_end":
        state.played_ms += _whole(props.get("played_ms"))
        state.has_end = True
    elif kind == "playback_rebuffer":
        state.rebuffer_ms += _whole(props.get("duration_ms"))
        state.rebuffer_count += 1
    elif kind == "playback_quality_change":
        state.bitrate_switches += 1
    elif kind == "playback_error" and props.get("fatal") is True:
        previous = state.first_fatal_ts
        state.first_fatal_ts = event.ts if previous is None else min(previous, event.ts)
    return True


def rows_as_dicts(table: TableRows) -> list[dict[str, object]]:
    """TableRows as column → value dicts (for tests and debugging)."""
    return [dict(zip(table.columns, row, strict=True)) for row in table.rows]
