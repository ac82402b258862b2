"""The plays processor: feeds events to play states, closes and forgets plays, writes
rows and the live series (see the package docstring for the contract)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import msgspec

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
    _SERIES_PREFIX,
    _VIEWERS_PREFIX,
    _from_rest,
    _play_decoder,
    _play_encoder,
    _resting_decoder,
    _resting_series_decoder,
    _series_decoder,
    _to_rest,
    batch_key,
    play_state_key,
    series_state_key,
    viewers_state_key,
)
from streams.processors.plays.deadlines import _DEADLINE_BUCKET_MS, _Deadlines
from streams.processors.plays.state import (
    BatchKey,
    PlayState,
    SeriesKey,
    SeriesState,
    _apply,
    _new_state,
    play_id_of,
    track_batches,
)

# QUIP_PLAY_IDLE_TIMEOUT_S's default (SPEC §7); the worker and quip up pass the
# configured value.
DEFAULT_IDLE_TIMEOUT_MS: Final = 300_000

QOE_MEASUREMENT: Final = "playback_qoe"
VIEWERS_MEASUREMENT: Final = "concurrent_viewers"
UNKNOWN_TAG: Final = "unknown"  # InfluxDB tags cannot be empty


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
        """`live_series`: compute the InfluxDB series (`playback_qoe`, `concurrent_viewers`);
        without them (`quip up` has no InfluxDB) the processor holds and changelogs plays
        only, and drops series entries of an older state as it loads them."""
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
        # Series entries go to the changelog only once a play they count is forgotten
        # (`_release`), and from then on with every change: until then an entry is the
        # sum of held plays, and `load_state` rebuilds it from them (`_recount`). Most
        # entries never outlive their plays, so most are never written (benchmarks/
        # README.md, "Plays series entries out of the changelog").
        self._series: dict[BatchKey, SeriesState] = {}
        self._written_series: set[BatchKey] = set()
        self._pending_series: set[BatchKey] = set()
        self._changed_plays: set[tuple[str, str]] = set()
        self._changed_series: set[BatchKey] = set()
        # Concurrent viewers per batch of a minute: [plays counted, held plays among them,
        # 1 once in the changelog] (the entry is forgotten once no held play is in it and
        # its window has passed).
        self._viewers: dict[BatchKey, list[int]] = {}
        self._pending_viewers: set[BatchKey] = set()
        self._changed_viewers: set[BatchKey] = set()
        self._watermark = 0  # largest min(ts, received_at) seen
        self._received_watermark = 0  # largest received_at seen
        # Points by the arrival time at which their batch settles (`_settle`), so a flush
        # looks only at those due: a scan over every series cost a live worker dearly
        # (benchmarks/README.md, Soak: "QoE series expiry scanned every series").
        self._series_settling: _Deadlines[BatchKey] = _Deadlines()
        self._viewers_settling: _Deadlines[BatchKey] = _Deadlines()

    @property
    def watermark(self) -> int:
        return self._watermark

    def held_plays(self) -> int:
        return len(self._plays)

    def open_plays(self) -> int:
        return len(self._open)

    def held_points(self) -> int:
        """Live-view points still held (QoE and concurrent viewers)."""
        return len(self._series) + len(self._viewers)

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
                series = self._series.get(series_key)
                if series is not None and series.plays.pop(state.play_id, None) is not None:
                    self._pending_series.add(series_key)
                    if series_key in self._written_series:
                        self._changed_series.add(series_key)
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
        if series_key is not None and series_key in self._series:
            self._written_series.add(series_key)
            self._changed_series.add(series_key)
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
            old = self._series.get(old_batch_key)
            if old is not None and old.plays.pop(state.play_id, None) is not None:
                self._pending_series.add(old_batch_key)
                if old_batch_key in self._written_series:
                    self._changed_series.add(old_batch_key)
            state.series_key = None
            self._changed_plays.add((state.project, state.play_id))
        key: BatchKey = (*new_key, state.qoe_batch)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = SeriesState()
            self._series_settling.add(self._settles_at(key), key)
        if state.series_key != new_key:
            state.series_key = new_key
            state.series_batch = state.qoe_batch
            self._changed_plays.add((state.project, state.play_id))
        contribution = state.contribution()
        current = series.plays.get(state.play_id)
        if current == contribution or (
            current is not None and current.version > contribution.version
        ):
            return
        series.plays[state.play_id] = contribution
        self._pending_series.add(key)
        if key in self._written_series:
            self._changed_series.add(key)

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
        entry = self._viewers.get(key)
        if entry is None:
            entry = self._viewers[key] = [0, 0, 0]
            self._viewers_settling.add(self._settles_at(key), key)
        entry[0] += change
        entry[1] += change
        self._pending_viewers.add(key)
        if entry[2]:
            self._changed_viewers.add(key)

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
                entry = self._viewers.get(key)
                if entry is None:
                    continue
                entry[0] += change
                entry[1] -= 1
                if change:
                    self._pending_viewers.add(key)
                else:
                    entry[2] = 1
                if entry[2]:
                    self._changed_viewers.add(key)

    def _settles_at(self, key: BatchKey) -> int:
        """The arrival time after which no record can join the batch: its window plus
        the grace (records reach the bus out of arrival order by less than that)."""
        return window_end(key[2], key[5], self.series_horizon_ms) + self.grace_ms

    def _settle(self) -> None:
        """Forget the points whose batch has settled and holds no held play: what they
        wrote stays, nothing will change it. One still holding plays is looked at again
        a minute later."""
        self._settle_due(
            self._series_settling,
            self._series,
            lambda key: any((key[0], play) in self._plays for play in self._series[key].plays),
            self._forget_series,
        )
        self._settle_due(
            self._viewers_settling,
            self._viewers,
            lambda key: self._viewers[key][1] > 0,
            self._forget_viewers,
        )

    def _forget_series(self, key: BatchKey) -> None:
        del self._series[key]
        if key in self._written_series:
            self._written_series.discard(key)
            self._changed_series.add(key)

    def _forget_viewers(self, key: BatchKey) -> None:
        if self._viewers.pop(key)[2]:
            self._changed_viewers.add(key)

    def _settle_due(
        self,
        index: _Deadlines[BatchKey],
        points: dict[BatchKey, Any],
        holds_plays: Callable[[BatchKey], bool],
        forget: Callable[[BatchKey], None],
    ) -> None:
        clock = self._received_watermark
        for _, keys in index.take(clock - 1):
            for key in keys:
                if key not in points:
                    continue
                if self._settles_at(key) >= clock:
                    index.add(self._settles_at(key), key)
                elif holds_plays(key):
                    index.add(clock + MINUTE_MS, key)
                else:
                    forget(key)

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
        points = []
        # A QoE point and a viewers point of the same key share one tags dict (points
        # are read only): most plays have a key of their own, so both come together.
        tags_of: dict[BatchKey, dict[str, str]] = {}
        for key in sorted(self._pending_series):
            series = self._series.get(key)
            if series is None:
                continue
            tags = tags_of[key] = self._tags(key)
            fields = qoe_fields(series.plays.values())
            points.append(SeriesPoint(QOE_MEASUREMENT, tags, fields, point_time(key[2], key[5])))
            if not series.plays:
                self._forget_series(key)  # the zero point above replaces what was written
        self._pending_series.clear()
        for key in sorted(self._pending_viewers):
            entry = self._viewers.get(key)
            if entry is None:
                continue
            tags = tags_of.get(key) or self._tags(key)
            fields = {"viewers": entry[0]}
            points.append(
                SeriesPoint(VIEWERS_MEASUREMENT, tags, fields, point_time(key[2], key[5]))
            )
        self._pending_viewers.clear()
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
        # Series keys in set order: each comes once, so the changelog's order does not
        # matter, and a batch holds thousands of these 6-tuples to sort.
        series_entries, encode = self._series, _play_encoder.encode
        for key in self._changed_series:
            series = series_entries.get(key)
            changes[series_state_key(key)] = None if series is None else encode(series)
        viewers = self._viewers
        for key in self._changed_viewers:
            entry = viewers.get(key)
            changes[viewers_state_key(key)] = None if entry is None else encode(entry[:2])
        self._changed_plays.clear()
        self._changed_series.clear()
        self._changed_viewers.clear()
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
            if self.live_series:
                self._recount(state)
            self._watermark = max(self._watermark, min(state.last_ts, state.last_received_at))
            self._received_watermark = max(self._received_watermark, state.last_received_at)
        elif key.startswith(_SERIES_PREFIX):
            series_key = batch_key(key[len(_SERIES_PREFIX) :])
            series = _series_decoder.decode(value)
            if not self.live_series:
                self._changed_series.add(series_key)  # deleted at the next changes
                return
            if series_key not in self._series:
                self._series_settling.add(self._settles_at(series_key), series_key)
            self._series[series_key] = series  # in full: it replaces what `_recount` added
            self._written_series.add(series_key)
        elif key.startswith(_VIEWERS_PREFIX):
            count, held = _viewers_decoder.decode(value)
            viewers_key = batch_key(key[len(_VIEWERS_PREFIX) :])
            if not self.live_series:
                self._changed_viewers.add(viewers_key)
                return
            if viewers_key not in self._viewers:
                self._viewers_settling.add(self._settles_at(viewers_key), viewers_key)
            self._viewers[viewers_key] = [count, held, 1]  # as for the series above
        else:
            raise ValueError(f"not a plays state key: {key!r}")

    def _recount(self, state: PlayState) -> None:
        """Counts a restored play in its series entries again, as it was counted when its
        state was taken, where the changelog holds no entry in full (`__init__`)."""
        if state.series_key is not None:
            key: BatchKey = (*state.series_key, state.series_batch)
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = SeriesState()
                self._series_settling.add(self._settles_at(key), key)
            series.plays.setdefault(state.play_id, state.contribution())
        if state.viewed is None:
            return
        project, partition = state.project, state.partition
        content_id, device_model, runs = state.viewed
        for first, last, batch in runs:
            for minute in range(first, last + MINUTE_MS, MINUTE_MS):
                viewers_key = (project, partition, minute, content_id, device_model, batch)
                entry = self._viewers.get(viewers_key)
                if entry is None:
                    self._viewers[viewers_key] = [1, 1, 0]
                    self._viewers_settling.add(self._settles_at(viewers_key), viewers_key)
                elif not entry[2]:
                    entry[0] += 1
                    entry[1] += 1


_viewers_decoder = msgspec.msgpack.Decoder(tuple[int, int])


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
