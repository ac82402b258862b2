"""Predefined funnels computed live (SPEC §4): per (project, user, funnel, start day), the
furthest step reached by a chain whose first step happened on that day.

Output: rows for `funnel_progress` (project, funnel, definition, user_id, start_day,
level). A funnel's answer for [from, to] is then, per user, the max level over start days
in the range — the same number the ad-hoc windowFunnel query gives (semantics in
sinks/queries/funnels.py: t1 ≤ … ≤ tk, tk - t1 ≤ W, equal times chain in step order, one
event may satisfy several consecutive steps).

Exactness under disorder. The result depends only on the *set* of times at which each
step matched, so per user and funnel the state is one sorted list of distinct event times
(ms) per step. A new time x for step 1 is a new start a = x; a new time x for a later step
can only change starts a in [x - W, x]. For every affected start the processor recomputes
its level greedily (the earliest next-step time ≥ the previous one, within a + W, which
is optimal for a fixed start) and raises the start day's level if it grew. Out-of-order,
late and duplicated events therefore give the same rows as in-order delivery: a duplicate
time changes nothing, and a late event re-evaluates exactly the chains it can touch.
Levels only grow, so rows are re-emitted only when a day's level rises; the sink keeps
the highest (ReplacingMergeTree(level), and readers take max()).

Replays: each user's state remembers the bus position it reflects; a record at or before
it (same partition) is ignored. Re-applying one would be harmless anyway (sets).

State, memory bound and the late-event trade-off. An event may arrive up to
`max_event_age_days` (QUIP_MAX_EVENT_AGE_DAYS) after it happened, and it can touch chains
that started up to one window earlier; so a step time must be kept for
horizon = lateness + window + `clock_slack_ms`, measured against the partition's
watermark (the highest gateway `received_at` seen on that partition, not the wall clock,
so a worker catching up on a backlog prunes by the backlog's time). Older times and older
start-day levels are pruned at flush; a user whose state empties is deleted (state change
None) — exact, since no event the gateway still accepts can reach those times. Memory per
(user, funnel) is therefore the number of that user's events matching some step within
the horizon (≈ 31 days by default) plus one level per start day, and never more than
`max_times_per_step` times per step: past that the oldest times are dropped, which can only
under-count, and only for chains that a very late event would have completed among those
dropped times. Lower `lateness_ms` to trade exactness for very late events against memory:
events later than it can still start or extend chains among the times kept, but chains
needing pruned times are missed (again only under-counting).

`flush(now_ms)` does not read `now_ms`: pruning follows the watermarks described above.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, date, datetime
from functools import cache
from itertools import accumulate, pairwise
from typing import Final

import msgspec

from schemas.events import EventRecord
from schemas.funnels import (
    DAY_MS,
    PROGRESS_COLUMNS,
    PROGRESS_TABLE,
    FunnelDefinition,
    FunnelStep,
)
from schemas.output import ProcessorOutput, TableRows
from streams.processors.base import Position

HOUR_MS: Final = 3_600_000
# Gateway replicas' clocks and produce delays: records on one partition are in received_at
# order give or take this much.
DEFAULT_CLOCK_SLACK_MS: Final = HOUR_MS
DEFAULT_MAX_TIMES_PER_STEP: Final = 4096
# A full pass over all users to delete idle ones, each time a partition's watermark has
# advanced this much since the last pass.
SWEEP_EVERY_MS: Final = HOUR_MS


class _FunnelState(msgspec.Struct, array_like=True, gc=False):
    definition: str  # the fingerprint the state was built for
    times: list[list[int]]  # per step: sorted distinct event times (epoch ms)
    levels: dict[int, int]  # start day (days since epoch) -> highest level emitted


class _UserState(msgspec.Struct, array_like=True, gc=False):
    project: str
    user_id: str
    partition: int = -1
    offset: int = -1  # last applied record offset on `partition`
    funnels: dict[str, _FunnelState] = {}


class _RestingFunnel(msgspec.Struct, array_like=True, gc=False):
    index: int  # of the funnel in the processor's definitions
    gaps: list[list[int]]  # per step: the first time, then the gaps between times
    levels: dict[int, int]


class _RestingUser(msgspec.Struct, array_like=True, gc=False):
    """A user's state at rest in memory, smaller than its changelog encoding: project and
    user_id are read back from its key, funnels are numbered instead of named and
    fingerprinted (the processor's definitions are fixed), and times are stored as gaps,
    which msgpack writes in 3 or 5 bytes instead of 9."""

    project_length: int  # the key is project:user_id, and a user id may hold a ':'
    partition: int
    offset: int
    funnels: list[_RestingFunnel]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(_UserState)
_resting_decoder = msgspec.msgpack.Decoder(_RestingUser)


def state_key(project: str, user_id: str) -> str:
    return f"{project}:{user_id}"


def _gaps(times: list[int]) -> list[int]:
    return times[:1] + [later - earlier for earlier, later in pairwise(times)]


def reached_level(times: list[list[int]], start: int, window_ms: int) -> int:
    """Furthest step of the chain starting at `start` (a step-1 time): greedy earliest
    next-step time ≥ the previous step's, all within start + window."""
    deadline = start + window_ms
    current, level = start, 1
    for step_times in times[1:]:
        index = bisect_left(step_times, current)
        if index == len(step_times) or step_times[index] > deadline:
            break
        current = step_times[index]
        level += 1
    return level


class FunnelsProcessor:
    """A StatefulProcessor for `analytics.events` (module docstring for the contract)."""

    def __init__(
        self,
        definitions: Sequence[FunnelDefinition],
        *,
        max_event_age_days: int = 30,
        lateness_ms: int | None = None,
        max_times_per_step: int = DEFAULT_MAX_TIMES_PER_STEP,
        clock_slack_ms: int = DEFAULT_CLOCK_SLACK_MS,
    ) -> None:
        names = [definition.name for definition in definitions]
        if len(set(names)) != len(names):
            raise ValueError(f"funnel names must be unique: {names}")
        if max_times_per_step < 1:
            raise ValueError("max_times_per_step must be >= 1")
        self._definitions = {definition.name: definition for definition in definitions}
        self._names = list(self._definitions)  # a funnel's number in the resting state
        self._numbers = {name: number for number, name in enumerate(self._names)}
        self._fingerprints = {d.name: d.fingerprint for d in definitions}
        # event type -> [(funnel name, step index, step)]
        self._steps_by_type: dict[str, list[tuple[str, int, FunnelStep]]] = defaultdict(list)
        for definition in definitions:
            for index, step in enumerate(definition.steps):
                self._steps_by_type[step.event].append((definition.name, index, step))
        lateness = max_event_age_days * DAY_MS if lateness_ms is None else lateness_ms
        longest_window = max((d.window_ms for d in definitions), default=0)
        self.horizon_ms = lateness + longest_window + clock_slack_ms
        self._max_times = max_times_per_step
        # A user's state rests encoded (`_RestingUser`: a few hundred bytes less per user
        # than the objects); it is decoded when one of the user's records arrives and
        # encoded again at the end of that flush.
        self._users: dict[str, _UserState | bytes] = {}
        self._decoded: set[str] = set()  # users held as objects until the next flush
        # Changelog encodings of changed users, made when they go back to rest.
        self._outbox: dict[str, bytes] = {}
        self._watermarks: dict[int, int] = {}  # partition -> highest received_at seen
        self._swept_at: dict[int, int] = {}  # partition -> watermark at the last sweep
        self._pending: dict[str, set[tuple[str, int]]] = {}  # user key -> (funnel, day) to emit
        self._touched: set[str] = set()  # users changed since the last flush
        self._changed: set[str] = set()  # users changed since take_state_changes

    # -- EventProcessor -------------------------------------------------------------

    def process(self, record: EventRecord, position: Position) -> None:
        if not self._definitions:
            return
        partition = position.partition
        if record.received_at > self._watermarks.get(partition, -1):
            self._watermarks[partition] = record.received_at
        # Matching first: a user's state is only read back from rest for a matching event.
        matched: dict[str, list[tuple[str, int, int]]] = {}  # user -> (funnel, step, time)
        steps_by_type = self._steps_by_type
        for event in record.events:
            candidates = steps_by_type.get(event.type)
            if candidates is None:
                continue
            for funnel, index, step in candidates:
                if step.matches(event.type, event.props):
                    matched.setdefault(event.user_id, []).append((funnel, index, event.ts))
        project = record.project
        for user_id, steps in matched.items():
            key = state_key(project, user_id)
            state = self._user(key)
            if state is None:
                state = self._users[key] = _UserState(project, user_id)
                self._decoded.add(key)
            elif state.partition == partition and position.offset <= state.offset:
                continue  # already reflected in the state: a replay
            if self._apply(key, state, steps):
                # Records that change nothing need no position: replaying them is a no-op.
                state.partition, state.offset = partition, position.offset
                self._touched.add(key)
                self._changed.add(key)

    def erase(self, project: str, user_id: str) -> None:
        key = state_key(project, user_id)
        if self._users.pop(key, None) is not None:
            self._changed.add(key)
        self._decoded.discard(key)
        self._touched.discard(key)
        self._pending.pop(key, None)

    def flush(self, now_ms: int) -> ProcessorOutput:
        # One pass over the users the batch decoded, each taken from memory once: its rows,
        # its pruning, its encodings (a pass per step cost a cache miss per user each).
        rows: list[tuple[object, ...]] = []
        pending, touched = self._pending, self._touched
        fingerprints = self._fingerprints
        for key in self._decoded:
            state = self._user(key)
            if state is None:
                continue
            for funnel, day in pending.get(key, ()):
                funnel_state = state.funnels.get(funnel)
                level = funnel_state.levels.get(day) if funnel_state is not None else None
                if level is None:
                    continue  # replaced by load_state since: that state's rows were written
                rows.append(
                    (state.project, funnel, fingerprints[funnel], state.user_id, _date(day), level)
                )
            if key in touched and not self._prune(key, state):
                continue
            self._put_to_rest(key, state)
        pending.clear()
        touched.clear()
        self._decoded.clear()
        self._sweep_idle_users()
        if not rows:
            return ProcessorOutput()
        return ProcessorOutput(tables=[TableRows(PROGRESS_TABLE, PROGRESS_COLUMNS, rows)])

    # -- StatefulProcessor ----------------------------------------------------------

    def take_state_changes(self) -> dict[str, bytes | None]:
        changes: dict[str, bytes | None] = {}
        for key in self._changed:
            state = self._users.get(key)
            if isinstance(state, bytes):
                encoded = self._outbox.get(key)
                changes[key] = encoded or _encoder.encode(self._from_rest(key, state))
            else:
                changes[key] = None if state is None else _encoder.encode(state)
        self._changed.clear()
        self._outbox.clear()
        return changes

    def load_state(self, key: str, value: bytes) -> None:
        """Restore one user's state. Funnels no longer configured, or whose definition
        changed (fingerprint), are dropped: their history restarts empty."""
        state = _decoder.decode(value)
        state.funnels = {
            name: funnel
            for name, funnel in state.funnels.items()
            if funnel.definition == self._fingerprints.get(name) and any(funnel.times)
        }
        self._users[key] = self._to_rest(state)
        self._outbox.pop(key, None)

    # -- internals ------------------------------------------------------------------

    def _user(self, key: str) -> _UserState | None:
        state = self._users.get(key)
        if isinstance(state, bytes):
            state = self._users[key] = self._from_rest(key, state)
            self._decoded.add(key)
        return state

    def _put_to_rest(self, key: str, state: _UserState) -> None:
        if key in self._changed:
            self._outbox[key] = _encoder.encode(state)
        self._users[key] = self._to_rest(state)

    def _to_rest(self, state: _UserState) -> bytes:
        """`_RestingUser`'s encoding, written from lists (the same msgpack arrays as the
        array-like structs, without building them)."""
        numbers = self._numbers
        return _encoder.encode(
            [
                len(state.project),
                state.partition,
                state.offset,
                [
                    # Most steps hold one time or none: no copy, no call.
                    [numbers[name], [t if len(t) < 2 else _gaps(t) for t in f.times], f.levels]
                    for name, f in state.funnels.items()
                ],
            ]
        )

    def _from_rest(self, key: str, blob: bytes) -> _UserState:
        rest = _resting_decoder.decode(blob)
        names, fingerprints = self._names, self._fingerprints
        funnels: dict[str, _FunnelState] = {}
        for funnel in rest.funnels:
            name = names[funnel.index]
            # The decoded lists are the state's own: one holding a single time is kept.
            times = [g if len(g) < 2 else list(accumulate(g)) for g in funnel.gaps]
            funnels[name] = _FunnelState(fingerprints[name], times, funnel.levels)
        length = rest.project_length
        return _UserState(key[:length], key[length + 1 :], rest.partition, rest.offset, funnels)

    def _apply(self, key: str, state: _UserState, steps: list[tuple[str, int, int]]) -> bool:
        """Add each matched step's time; True if any time was new."""
        added = False
        funnels = state.funnels
        for funnel, index, ts in steps:
            definition = self._definitions[funnel]
            funnel_state = funnels.get(funnel)
            if funnel_state is None:
                funnel_state = funnels[funnel] = _FunnelState(
                    self._fingerprints[funnel], [[] for _ in definition.steps], {}
                )
            if self._add_time(key, funnel, definition, funnel_state, index, ts):
                added = True
        return added

    def _add_time(
        self,
        key: str,
        funnel: str,
        definition: FunnelDefinition,
        state: _FunnelState,
        index: int,
        ts: int,
    ) -> bool:
        complete = len(definition.steps)
        levels = state.levels
        window = definition.window_ms
        # The time can only serve starts in [ts - window, ts] (itself, for the first step).
        # When every day those starts fall on is already complete, no event can make it
        # matter any more: it is not kept. Without this, a funnel ending in a frequent event
        # (playback_heartbeat) kept every one of them for the whole horizon.
        earliest_start = ts if index == 0 else ts - window
        if levels and all(
            levels.get(day, 0) == complete
            for day in range(earliest_start // DAY_MS, ts // DAY_MS + 1)
        ):
            return False
        step_times = state.times[index]
        position = bisect_left(step_times, ts)
        if position < len(step_times) and step_times[position] == ts:
            return False  # a duplicate time: no chain changes
        step_times.insert(position, ts)
        if len(step_times) > self._max_times:
            del step_times[0]
        starts = state.times[0]
        if index == 0:
            affected = [ts]
        else:
            affected = starts[bisect_left(starts, ts - window) : bisect_right(starts, ts)]
        for start in affected:
            day = start // DAY_MS
            current = levels.get(day, 0)
            if current == complete:
                continue
            level = reached_level(state.times, start, window)
            if level > current:
                levels[day] = level
                pending = self._pending.get(key)
                if pending is None:
                    pending = self._pending[key] = set()
                pending.add((funnel, day))
        return True

    def _prune(self, key: str, state: _UserState) -> bool:
        """Drops the user's times and levels past the horizon; False if nothing is left
        (the user is deleted)."""
        watermark = self._watermarks.get(state.partition)
        if watermark is None:
            return True
        cutoff = watermark - self.horizon_ms
        cutoff_day = cutoff // DAY_MS
        changed = False
        funnels = state.funnels
        emptied = []
        for name, funnel in funnels.items():
            pruned = False
            for step_times in funnel.times:
                if step_times and step_times[0] < cutoff:
                    del step_times[: bisect_left(step_times, cutoff)]
                    pruned = True
            levels = funnel.levels
            if levels and min(levels) < cutoff_day:
                for day in [day for day in levels if day < cutoff_day]:
                    del levels[day]
                changed = True
            # A funnel's state is created with a time, and only pruning empties it.
            if pruned:
                changed = True
                if not any(funnel.times):
                    emptied.append(name)
        for name in emptied:
            del funnels[name]
        if not funnels:
            del self._users[key]
            self._changed.add(key)
            return False
        if changed:
            self._changed.add(key)
        return True

    def _sweep_idle_users(self) -> None:
        """Deletes the users of partitions due for a sweep whose every time is past the
        horizon: pruning would leave them no funnel."""
        due = {
            partition
            for partition, watermark in self._watermarks.items()
            if watermark - self._swept_at.get(partition, -SWEEP_EVERY_MS) >= SWEEP_EVERY_MS
        }
        if not due:
            return
        for partition in due:
            self._swept_at[partition] = self._watermarks[partition]
        for key, held in list(self._users.items()):
            state = self._from_rest(key, held) if isinstance(held, bytes) else held
            if state.partition in due:
                cutoff = self._watermarks[state.partition] - self.horizon_ms
                newest = max(
                    (times[-1] for f in state.funnels.values() for times in f.times if times),
                    default=None,
                )
                if newest is None or newest < cutoff:
                    del self._users[key]
                    self._changed.add(key)


@cache  # a flush's rows fall on a few days
def _date(epoch_day: int) -> date:
    return datetime.fromtimestamp(epoch_day * 86_400, UTC).date()
