"""The plays processor: feeds events to play states, closes and forgets plays, writes
rows and the live series (see the package docstring for the contract)."""

from __future__ import annotations

from typing import Final

from common.concurrency import (
    LIVE,
    Run,
    minute_of,
    point_time,
    window_end,
)
from common.qoe import DAY_MS, MINUTE_MS, qoe_fields
from schemas.events import Event, EventRecord
from schemas.output import ProcessorOutput, SeriesPoint, TableRows
from schemas.plays import PLAY_COLUMNS, PLAYS_TABLE
from streams.processors.base import Position
from streams.processors.plays.codec import (
    _PLAY_PREFIX,
    _POINT_PREFIX,
    _QOE_PREFIX,
    _VIEWERS_PREFIX,
    _from_rest,
    _play_decoder,
    _play_encoder,
    _point_decoder,
    _resting_decoder,
    _resting_series_decoder,
    _to_rest,
    _viewers_decoder,
    batch_key,
    play_state_key,
    point_state_key,
    qoe_state_key,
    viewers_state_key,
)
from streams.processors.plays.deadlines import _DEADLINE_BUCKET_MS, _Deadlines
from streams.processors.plays.state import (
    BatchKey,
    PlayState,
    PointState,
    SeriesKey,
    _apply,
    _new_state,
    play_id_of,
    track_batches,
)

# QUIP_PLAY_IDLE_TIMEOUT_S's default (SPEC §7); the worker and quip up pass the
# configured value.
DEFAULT_IDLE_TIMEOUT_MS: Final = 300_000

QOE_MEASUREMENT: Final = "playback_qoe"
UNKNOWN_TAG: Final = "unknown"  # InfluxDB tags cannot be empty
# The parts of a point: its QoE fields, its `viewers` field.
_QOE: Final = 1
_VIEWERS: Final = 2


class PlaysProcessor:
    """Pure `StatefulProcessor` for SPEC §4 playback quality (see the module docstring for
    the full contract). Not thread-safe: one runner task owns an instance."""

    def __init__(
        self,
        *,
        idle_timeout_ms: int = DEFAULT_IDLE_TIMEOUT_MS,
        grace_ms: int | None = None,
        series_horizon_ms: int | None = None,
        live_series: bool = True,
    ) -> None:
        """`live_series`: compute the InfluxDB series (`playback_qoe`); without it (`quip
        up` has no InfluxDB) the processor holds and changelogs plays only, and drops
        series entries of an older state as it loads them."""
        if idle_timeout_ms <= 0:
            raise ValueError("idle_timeout_ms must be positive")
        self.idle_timeout_ms = idle_timeout_ms
        self.grace_ms = 2 * idle_timeout_ms if grace_ms is None else grace_ms
        self.series_horizon_ms = self.grace_ms if series_horizon_ms is None else series_horizon_ms
        self.live_series = live_series
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
        self._idle_by_ts: _Deadlines[tuple[str, str]] = _Deadlines()
        self._idle_by_received: _Deadlines[tuple[str, str]] = _Deadlines()
        self._opened: list[tuple[str, str]] = []
        self._expiry_by_received: _Deadlines[tuple[str, str]] = _Deadlines()
        self._expiry_by_ts: _Deadlines[tuple[str, str]] = _Deadlines()
        self._touched: set[tuple[str, str]] = set()
        # The live series' points, QoE and concurrent viewers of a key in one entry (one
        # point, one changelog entry: benchmarks/README.md, "One point per key").
        # Entries go to the changelog only once a play they count is forgotten
        # (`_release`), and from then on with every change: until then an entry is the
        # sum of held plays, and `load_state` rebuilds it from them (`_recount`). Most
        # entries never outlive their plays, so most are never written (benchmarks/
        # README.md, "Plays series entries out of the changelog").
        self._points: dict[BatchKey, PointState] = {}
        self._written_points: set[BatchKey] = set()
        # The parts of a point (_QOE, _VIEWERS) changed since it was last written out.
        self._pending_points: dict[BatchKey, int] = {}
        self._changed_plays: set[tuple[str, str]] = set()
        self._changed_points: set[BatchKey] = set()
        # Entries loaded from an older changelog's `qoe:` / `viewers:` keys: the parts
        # they hold in full; the next changes replace those keys with the entry's own.
        self._older_entries: dict[BatchKey, int] = {}
        self._watermark = 0  # largest min(ts, received_at) seen
        self._received_watermark = 0  # largest received_at seen
        # Points by the arrival time at which their batch settles (`_settle`), so a flush
        # looks only at those due: a scan over every series cost a live worker dearly
        # (benchmarks/README.md, Soak: "QoE series expiry scanned every series").
        self._settling: _Deadlines[BatchKey] = _Deadlines()

    @property
    def watermark(self) -> int:
        return self._watermark

    def held_plays(self) -> int:
        return len(self._plays)

    def open_plays(self) -> int:
        return len(self._open)

    def held_points(self) -> int:
        """Live-view points still held."""
        return len(self._points)

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
            before: tuple[int, int, str, str] | None = None
            if state is None:
                state = _new_state(
                    record.project, play_id, position.partition, events[0], record.source
                )
                state.last_received_at = received_at
                self._plays[key] = state
                self._open.add(key)
                self._opened.append(key)
            elif state.positions.get(position.partition, -1) >= position.offset:
                continue  # a replay of what this state already reflects
            else:
                before = (state.first_ts, state.last_ts, state.content_id, state.device_model)
            applied = False
            for event in events:
                applied |= _apply(state, event, received_at, record.source)
            state.positions[position.partition] = position.offset
            self._changed_plays.add(key)
            if not applied:
                continue
            if self.live_series:
                track_batches(state, before, received_at, self.series_horizon_ms)
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
            if state.series_key is not None:
                series_key: BatchKey = (*state.series_key, state.series_batch)
                point = self._points.get(series_key)
                if point is not None and point.plays.pop(state.play_id, None) is not None:
                    self._changed(series_key, _QOE)
            self._count_viewers(state.project, state.partition, state.viewed, -1)

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
        live_series = self.live_series
        for key in sorted(self._touched):
            state = self._held(key)
            if live_series:
                self._sync_series(state)
                self._sync_viewers(state)
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

        points = self._series_points() if live_series else []
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

    def _release(self, key: tuple[str, str]) -> None:
        """The held play `key` is being forgotten: it stays counted in its series entries,
        which no longer wait for it and go to the changelog (its state no longer rebuilds
        them)."""
        state = self._plays.get(key)
        if isinstance(state, bytes):
            rest = _resting_series_decoder.decode(state)
            series_key = rest.series_key(key[0])
            partition, viewed = rest.partition, rest.viewed
        elif state is not None:
            series_key = (
                None if state.series_key is None else (*state.series_key, state.series_batch)
            )
            partition, viewed = state.partition, state.viewed
        else:
            return
        if series_key is not None and series_key in self._points:
            self._written_points.add(series_key)
            self._changed_points.add(series_key)
        self._count_viewers(key[0], partition, viewed, 0)

    def _close(self, key: tuple[str, str], state: PlayState) -> None:
        state.closed = True
        self._open.discard(key)
        self._touched.add(key)
        self._changed_plays.add(key)
        self._expiry_by_received.add(state.last_received_at, key)

    def _close_idle(self, index: _Deadlines[tuple[str, str]], field: str, clock: int) -> None:
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
                    if self.live_series:
                        self._release(key)
                    del self._plays[key]
                    self._changed_plays.add(key)

    def _sync_series(self, state: PlayState) -> None:
        """Moves the play's QoE contribution to the point of its minute, tags and batch."""
        new_key: SeriesKey = (
            state.project,
            state.partition,
            minute_of(state.first_ts),
            state.content_id,
            state.device_model,
        )
        old_key = state.series_key
        if old_key is not None and (old_key != new_key or state.series_batch != state.qoe_batch):
            old_batch_key: BatchKey = (*old_key, state.series_batch)
            old = self._points.get(old_batch_key)
            if old is not None and old.plays.pop(state.play_id, None) is not None:
                self._changed(old_batch_key, _QOE)
            state.series_key = None
            self._changed_plays.add((state.project, state.play_id))
        key: BatchKey = (*new_key, state.qoe_batch)
        point = self._points.get(key)
        if point is None:
            point = self._new_point(key)
        if state.series_key != new_key:
            state.series_key = new_key
            state.series_batch = state.qoe_batch
            self._changed_plays.add((state.project, state.play_id))
        contribution = state.contribution()
        current = point.plays.get(state.play_id)
        if current == contribution or (
            current is not None and current.version > contribution.version
        ):
            return
        point.plays[state.play_id] = contribution
        self._changed(key, _QOE)

    def _sync_viewers(self, state: PlayState) -> None:
        """Counts the play in the concurrent viewers of the minutes it spans, each in its
        batch, and takes it out of the minutes and batches it no longer belongs to."""
        runs, counted = state.viewing, state.viewed
        content_id, device_model = state.content_id, state.device_model
        if (
            counted is not None
            and counted[2] is runs
            and counted[0] is content_id
            and counted[1] is device_model
        ):
            return  # nothing changed since the last sync (the same objects)
        if counted is not None and counted[2] == runs and counted[:2] == (content_id, device_model):
            return  # nothing changed
        project, partition = state.project, state.partition
        tags = (content_id, device_model)
        add = self._add_viewer
        if (
            counted is not None
            and counted[:2] == (content_id, device_model)
            and counted[2]
            and _clipped(runs, counted[2][0][0], counted[2][-1][1]) == counted[2]
        ):
            # The span grew, the minutes already counted kept their batches (the usual
            # case, once a minute for a play that goes on): count the new minutes only.
            low, high = counted[2][0][0], counted[2][-1][1]
            for first, last, batch in runs:
                for minute in range(first, min(last, low - MINUTE_MS) + MINUTE_MS, MINUTE_MS):
                    add((project, partition, minute, *tags, batch), 1)
                for minute in range(max(first, high + MINUTE_MS), last + MINUTE_MS, MINUTE_MS):
                    add((project, partition, minute, *tags, batch), 1)
        else:
            self._count_viewers(project, partition, counted, -1)
            for first, last, batch in runs:
                for minute in range(first, last + MINUTE_MS, MINUTE_MS):
                    add((project, partition, minute, *tags, batch), 1)
        state.viewed = (*tags, runs)
        self._changed_plays.add((project, state.play_id))

    def _add_viewer(self, key: BatchKey, change: int) -> None:
        point = self._points.get(key)
        if point is None:
            point = self._new_point(key)
        point.viewers += change
        point.held_viewers += change
        self._changed(key, _VIEWERS)

    def _new_point(self, key: BatchKey) -> PointState:
        point = self._points[key] = PointState()
        self._settling.add(self._settles_at(key), key)
        return point

    def _changed(self, key: BatchKey, part: int) -> None:
        """The point's `part` is to be written again (and its entry, once in the
        changelog)."""
        pending = self._pending_points
        pending[key] = pending.get(key, 0) | part
        if key in self._written_points:
            self._changed_points.add(key)

    def _count_viewers(
        self,
        project: str,
        partition: int,
        viewed: tuple[str, str, tuple[Run, ...]] | None,
        change: int,
    ) -> None:
        """A play leaves the held plays of its viewer entries: forgotten (change 0, it
        still counts in the written points) or erased or moved (-1, it no longer
        counts there)."""
        if viewed is None:
            return
        content_id, device_model, runs = viewed
        for first, last, batch in runs:
            for minute in range(first, last + MINUTE_MS, MINUTE_MS):
                key = (project, partition, minute, content_id, device_model, batch)
                point = self._points.get(key)
                if point is None:
                    continue
                point.viewers += change
                point.held_viewers -= 1
                if change:
                    self._changed(key, _VIEWERS)
                else:
                    self._written_points.add(key)
                    self._changed_points.add(key)

    def _settles_at(self, key: BatchKey) -> int:
        """The arrival time after which no record can join the batch: its window plus
        the grace (records reach the bus out of arrival order by less than that)."""
        return window_end(key[2], key[5], self.series_horizon_ms) + self.grace_ms

    def _settle(self) -> None:
        """Forget the points whose batch has settled and holds no held play: what they
        wrote stays, nothing will change it. One still holding plays is looked at again
        a minute later."""
        clock = self._received_watermark
        points, plays, index = self._points, self._plays, self._settling
        for _, keys in index.take(clock - 1):
            for key in keys:
                point = points.get(key)
                if point is None:
                    continue
                if self._settles_at(key) >= clock:
                    index.add(self._settles_at(key), key)
                elif point.held_viewers > 0 or any((key[0], play) in plays for play in point.plays):
                    index.add(clock + MINUTE_MS, key)
                else:
                    self._forget_point(key)

    def _forget_point(self, key: BatchKey) -> None:
        del self._points[key]
        if key in self._written_points:
            self._written_points.discard(key)
            self._changed_points.add(key)

    @staticmethod
    def _tags(key: BatchKey) -> dict[str, str]:
        project, partition, _, content_id, device_model, batch = key
        tags = {
            "project": project,
            "partition": str(partition),
            "content_id": content_id or UNKNOWN_TAG,
            "device_model": device_model or UNKNOWN_TAG,
        }
        if batch != LIVE:
            tags["late"] = "true"
        return tags

    def _series_points(self) -> list[SeriesPoint]:
        """One point per changed key, with the fields of the parts that changed (InfluxDB
        keeps a point's other fields when a write to it leaves them out)."""
        points = []
        entries, pending = self._points, self._pending_points
        for key in sorted(pending):
            point = entries.get(key)
            if point is None:
                continue
            parts = pending[key]
            fields = qoe_fields(point.plays.values()) if parts & _QOE else {}
            if parts & _VIEWERS:
                fields["viewers"] = point.viewers
            points.append(
                SeriesPoint(QOE_MEASUREMENT, self._tags(key), fields, point_time(key[2], key[5]))
            )
            if not (point.plays or point.viewers or point.held_viewers):
                self._forget_point(key)  # the zero point above replaces what was written
        pending.clear()
        self._settle()
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
        # Point keys in set order: each comes once, so the changelog's order does not
        # matter, and a batch holds thousands of these 6-tuples to sort.
        points, encode = self._points, _play_encoder.encode
        for key in self._changed_points:
            point = points.get(key)
            changes[point_state_key(key)] = None if point is None else encode(point)
        for key, parts in self._older_entries.items():
            if parts & _QOE:
                changes[qoe_state_key(key)] = None
            if parts & _VIEWERS:
                changes[viewers_state_key(key)] = None
        self._changed_plays.clear()
        self._changed_points.clear()
        self._older_entries.clear()
        return changes

    def load_state(self, key: str, value: bytes) -> None:
        """Restore one entry written by `take_state_changes` (or an older changelog's
        `qoe:` or `viewers:` entry). Raises ValueError for a key this processor did not
        write, msgspec.DecodeError for a corrupt value."""
        if key.startswith(_PLAY_PREFIX):
            state = _play_decoder.decode(value)
            play_key = (state.project, state.play_id)
            self._plays[play_key] = state
            if not state.closed:
                self._open.add(play_key)
                self._opened.append(play_key)
            self._touched.add(play_key)  # re-sync its series, write it if still unwritten
            if self.live_series:
                self._recount(state)
            self._watermark = max(self._watermark, min(state.last_ts, state.last_received_at))
            self._received_watermark = max(self._received_watermark, state.last_received_at)
        elif key.startswith(_POINT_PREFIX):
            point_key = batch_key(key[len(_POINT_PREFIX) :])
            point = _point_decoder.decode(value)
            if not self.live_series:
                self._changed_points.add(point_key)  # deleted at the next changes
                return
            if point_key not in self._points:
                self._settling.add(self._settles_at(point_key), point_key)
            self._points[point_key] = point  # in full: it replaces what `_recount` added
            self._written_points.add(point_key)
        elif key.startswith(_QOE_PREFIX):
            point_key = batch_key(key[len(_QOE_PREFIX) :])
            older = _point_decoder.decode(value)
            self._load_older(point_key, _QOE).plays = older.plays
        elif key.startswith(_VIEWERS_PREFIX):
            point_key = batch_key(key[len(_VIEWERS_PREFIX) :])
            count, held = _viewers_decoder.decode(value)
            point = self._load_older(point_key, _VIEWERS)
            point.viewers, point.held_viewers = count, held
        else:
            raise ValueError(f"not a plays state key: {key!r}")

    def _load_point(self, key: BatchKey) -> PointState:
        point = self._points.get(key)
        return self._new_point(key) if point is None else point

    def _load_older(self, key: BatchKey, part: int) -> PointState:
        """The entry an older changelog's key fills `part` of in full (it replaces what
        `_recount` added): the entry goes to the changelog under its own key at the next
        changes, the older key is deleted. Without live series a scratch entry."""
        self._older_entries[key] = self._older_entries.get(key, 0) | part
        if not self.live_series:
            return PointState()
        self._written_points.add(key)
        self._changed_points.add(key)
        return self._load_point(key)

    def _full(self, key: BatchKey, part: int) -> bool:
        """Whether the changelog gave this part of the entry in full (`_recount`)."""
        if key not in self._written_points:
            return False
        older = self._older_entries.get(key)
        return older is None or bool(older & part)

    def _recount(self, state: PlayState) -> None:
        """Counts a restored play in its points again, as it was counted when its state
        was taken, where the changelog holds no entry in full (`__init__`)."""
        if state.series_key is not None:
            key: BatchKey = (*state.series_key, state.series_batch)
            point = self._load_point(key)
            if not self._full(key, _QOE):
                point.plays.setdefault(state.play_id, state.contribution())
        if state.viewed is None:
            return
        project, partition = state.project, state.partition
        content_id, device_model, runs = state.viewed
        for first, last, batch in runs:
            for minute in range(first, last + MINUTE_MS, MINUTE_MS):
                viewers_key = (project, partition, minute, content_id, device_model, batch)
                point = self._load_point(viewers_key)
                if not self._full(viewers_key, _VIEWERS):
                    point.viewers += 1
                    point.held_viewers += 1


def _clipped(runs: tuple[Run, ...], low: int, high: int) -> tuple[Run, ...]:
    """The runs' minutes within [low, high]."""
    return tuple(
        (max(first, low), min(last, high), batch)
        for first, last, batch in runs
        if first <= high and last >= low
    )


def rows_as_dicts(table: TableRows) -> list[dict[str, object]]:
    """TableRows as column → value dicts (for tests and debugging)."""
    return [dict(zip(table.columns, row, strict=True)) for row in table.rows]
