"""Concurrent viewers (SPEC §4) and the write batches of the live InfluxDB series: the
math by hand and by brute force over plays spanning minute and day boundaries, and the
plays processor's points read back the way InfluxDB keeps them (the last write per
measurement, tags and time) under shuffled, duplicated, replayed and late traffic."""

from __future__ import annotations

import itertools
import random
from collections import defaultdict
from typing import Any

import msgspec
import pytest

from common.concurrency import (
    LATE_BATCH_MS,
    LIVE,
    batch_of,
    concurrent_per_minute,
    extend,
    point_time,
    running_counts,
    stamp,
)
from common.qoe import DAY_MS, MINUTE_MS
from schemas.events import Event, EventRecord
from schemas.output import SeriesPoint
from streams.processors.base import Position
from streams.processors.plays import QOE_MEASUREMENT, PlaysProcessor, PointState

MIDNIGHT = 1_764_115_200_000  # 2025-11-26T00:00:00Z
IDLE = 300_000
HORIZON = 2 * IDLE
PROJECT = "p1"


def brute_force(spans: list[tuple[int, int]]) -> dict[int, int]:
    """Minute by minute: a play counts where first_ts // minute <= m <= last_ts // minute."""
    counts: dict[int, int] = defaultdict(int)
    for first_ts, last_ts in spans:
        for minute in range(first_ts // MINUTE_MS, last_ts // MINUTE_MS + 1):
            counts[minute * MINUTE_MS] += 1
    return dict(counts)


def test_concurrent_viewers_by_hand_across_midnight() -> None:
    spans = [
        (MIDNIGHT - 59_999, MIDNIGHT - 1),  # one minute: 23:59
        (MIDNIGHT - 1, MIDNIGHT),  # a millisecond, two minutes and two days
        (MIDNIGHT - 90_000, MIDNIGHT + 61_000),  # 23:58 .. 00:01
        (MIDNIGHT + 120_000, MIDNIGHT + 120_000),  # one event: 00:02
    ]
    assert concurrent_per_minute(spans) == {
        MIDNIGHT - 2 * MINUTE_MS: 1,
        MIDNIGHT - MINUTE_MS: 3,
        MIDNIGHT: 2,
        MIDNIGHT + MINUTE_MS: 1,
        MIDNIGHT + 2 * MINUTE_MS: 1,
    }
    assert concurrent_per_minute([]) == {}


@pytest.mark.parametrize("seed", range(5), ids=lambda seed: f"seed {seed}")
def test_concurrent_viewers_equal_a_minute_by_minute_count(seed: int) -> None:
    rng = random.Random(seed)
    spans = []
    for _ in range(300):
        first = MIDNIGHT + rng.randrange(-3 * 3_600_000, 3 * 3_600_000)
        spans.append((first, first + rng.choice([0, 1, 59_999, 60_000, rng.randrange(DAY_MS)])))
    assert concurrent_per_minute(spans) == brute_force(spans)
    # The same from (minute, change) pairs as SQL returns them: grouped, in any order.
    deltas: dict[int, int] = defaultdict(int)
    for first_ts, last_ts in spans:
        deltas[first_ts // MINUTE_MS * MINUTE_MS] += 1
        deltas[last_ts // MINUTE_MS * MINUTE_MS + MINUTE_MS] -= 1
    pairs = list(deltas.items())
    rng.shuffle(pairs)
    assert running_counts(pairs) == brute_force(spans)


def test_batches_live_within_the_horizon_late_after_it() -> None:
    minute = MIDNIGHT
    assert batch_of(minute, minute + MINUTE_MS + HORIZON, HORIZON) == LIVE
    late_at = minute + MINUTE_MS + HORIZON + 1
    assert batch_of(minute, late_at, HORIZON) == late_at // LATE_BATCH_MS + 1
    # A record bringing 20 minutes at once: the old ones late, the recent ones live.
    received = minute + 20 * MINUTE_MS
    runs = stamp(minute, minute + 19 * MINUTE_MS, received, HORIZON)
    late = received // LATE_BATCH_MS + 1
    assert runs == [
        (minute, minute + 8 * MINUTE_MS, late),
        (minute + 9 * MINUTE_MS, minute + 19 * MINUTE_MS, LIVE),
    ]
    live_minutes = range(runs[1][0], runs[1][1] + 1, MINUTE_MS)
    assert all(batch_of(m, received, HORIZON) == LIVE for m in live_minutes)
    assert batch_of(runs[0][1], received, HORIZON) == late
    # Growing keeps what was stamped; only new minutes take the new record's batch.
    grown = extend(tuple(runs), minute - MINUTE_MS, minute + 21 * MINUTE_MS, received + 1, HORIZON)
    assert grown == (
        (minute - MINUTE_MS, minute + 8 * MINUTE_MS, late),
        (minute + 9 * MINUTE_MS, minute + 21 * MINUTE_MS, LIVE),
    )
    # Late points stay inside their minute, one millisecond per batch, never on the live one.
    times = {point_time(minute, batch) for batch in (LIVE, late, late + 1)}
    assert len(times) == 3
    assert all(minute <= t < minute + MINUTE_MS for t in times)


@pytest.mark.parametrize("seed", range(3), ids=lambda seed: f"seed {seed}")
def test_growing_runs_keep_old_batches_and_stamp_new_minutes(seed: int) -> None:
    """`extend` minute by minute: a minute already stamped keeps its batch, a new one
    takes the batch of the record that brought it (batch_of)."""
    rng = random.Random(seed)
    for _ in range(300):
        first = MIDNIGHT + rng.randrange(-30, 30) * MINUTE_MS
        last = first + rng.randrange(0, 40) * MINUTE_MS
        received = first + rng.randrange(0, 60) * MINUTE_MS + rng.randrange(MINUTE_MS)
        runs = tuple(stamp(first, last, received, HORIZON))
        new_first = first - rng.choice([0, 0, 1, 5]) * MINUTE_MS
        new_last = last + rng.choice([0, 1, 1, 2, 30]) * MINUTE_MS
        later = received + rng.choice([0, 1_000, MINUTE_MS, 30 * MINUTE_MS])
        grown = extend(runs, new_first, new_last, later, HORIZON)
        before = {m: b for f, t, b in runs for m in range(f, t + 1, MINUTE_MS)}
        after = {m: b for f, t, b in grown for m in range(f, t + 1, MINUTE_MS)}
        expected = {
            m: before.get(m, batch_of(m, later, HORIZON))
            for m in range(new_first, new_last + 1, MINUTE_MS)
        }
        assert after == expected
        assert all(a[1] + MINUTE_MS == b[0] for a, b in itertools.pairwise(grown))
        assert all(a[2] != b[2] for a, b in itertools.pairwise(grown))  # merged


# ---------------------------------------------------------------- the processor


def play_events(rng: random.Random, start: int, plays: int) -> list[Event]:
    """Plays that run from a moment to 45 minutes, across minutes and midnight, on three
    contents and devices (one play changes content through a late earlier event)."""
    events = []
    for index in range(plays):
        first = start + rng.randrange(40 * MINUTE_MS)
        content = f"c{index % 3}"
        device = ("quest2", "quest3")[index % 2]
        times = [first]
        while len(times) < 12 and rng.random() < 0.9:
            times.append(times[-1] + rng.choice([1_000, 30_000, 61_000, 4 * MINUTE_MS]))
        for n, ts in enumerate(times):
            kind = "playback_request" if n == 0 else "playback_heartbeat"
            if n == len(times) - 1 and n > 0:
                kind = "playback_end"
            props: dict[str, Any] = {"play_id": f"play-{index}", "played_ms": 1_000}
            if n == 0:
                props["content_id"] = content
            events.append(
                Event(
                    event_id=f"e-{index}-{n}",
                    type=kind,
                    user_id=f"u{index % 5}",
                    ts=ts,
                    device_model=device,
                    props=props,
                )
            )
    return events


def stored(points: list[SeriesPoint]) -> dict[tuple[Any, ...], dict[str, Any]]:
    """What InfluxDB keeps: per measurement, tag set and time, each field's last write (a
    write replaces the fields it carries and keeps the others)."""
    kept: dict[tuple[Any, ...], dict[str, Any]] = {}
    for point in points:
        key = (point.measurement, tuple(sorted(point.tags.items())), point.time_ms)
        kept.setdefault(key, {}).update(point.fields)
    return kept


def per_minute(
    kept: dict[tuple[Any, ...], dict[str, Any]], measurement: str, field: str
) -> dict[int, int]:
    """A field summed over every point of each minute (all tags, every batch)."""
    sums: dict[int, int] = defaultdict(int)
    for (name, _, time_ms), fields in kept.items():
        if name == measurement and field in fields:
            sums[time_ms // MINUTE_MS * MINUTE_MS] += fields[field]
    return {minute: total for minute, total in sums.items() if total}


def expected(events: list[Event]) -> tuple[dict[int, int], dict[int, int]]:
    """(viewers per minute, plays per first-event minute) of the distinct events."""
    spans: dict[str, tuple[int, int]] = {}
    for event in events:
        play = str(event.props["play_id"])
        first, last = spans.get(play, (event.ts, event.ts))
        spans[play] = (min(first, event.ts), max(last, event.ts))
    plays: dict[int, int] = defaultdict(int)
    for first, _ in spans.values():
        plays[first // MINUTE_MS * MINUTE_MS] += 1
    return concurrent_per_minute(spans.values()), dict(plays)


def deliver(
    events: list[Event], seed: int, *, delay: int, late_share: float, replay: bool
) -> list[SeriesPoint]:
    """Events (a fifth of them twice) out of order, each arriving up to a minute after
    its ts, and the plays of `late_share` of the users `delay` later still; records of
    one to five events in arrival order, flushes in between; optionally a restart from
    the last taken state with the records after it replayed, as a runner does."""
    rng = random.Random(seed)
    late_users = {f"u{n}" for n in range(5) if rng.random() < late_share}
    sent = events + rng.sample(events, len(events) // 5)
    arrivals = sorted(
        (e.ts + rng.randrange(MINUTE_MS) + (delay if e.user_id in late_users else 0), n, e)
        for n, e in enumerate(sent)
    )
    records = []
    while arrivals:
        size = rng.randrange(1, 6)
        chunk, arrivals = arrivals[:size], arrivals[size:]
        chunk_events = [e for *_, e in chunk]
        records.append(EventRecord(project=PROJECT, received_at=chunk[-1][0], events=chunk_events))
    processor = PlaysProcessor(idle_timeout_ms=IDLE)
    points: list[SeriesPoint] = []
    saved: dict[str, bytes | None] = {}
    saved_at = offset = 0
    while offset < len(records):
        record = records[offset]
        processor.process(record, Position(0, offset))
        offset += 1
        if rng.random() < 0.3:
            points += processor.flush(record.received_at).points
            if rng.random() < 0.3:
                saved.update(processor.take_state_changes())
                saved_at = offset
        if replay and offset == len(records) // 2:
            replay = False
            processor = PlaysProcessor(idle_timeout_ms=IDLE)
            for key, value in saved.items():
                if value is not None:
                    processor.load_state(key, value)
            offset = saved_at  # the runner replays from the last commit
    points += processor.flush(records[-1].received_at + 30 * DAY_MS).points
    return points


@pytest.mark.parametrize(
    ("delay", "late_share"),
    [
        pytest.param(0, 0.0, id="live"),
        pytest.param(35 * DAY_MS, 1.0, id="backfill 35 days late"),
        pytest.param(3 * 3_600_000, 0.5, id="some headsets upload hours late"),
    ],
)
@pytest.mark.parametrize("seed", range(4), ids=lambda seed: f"seed {seed}")
@pytest.mark.parametrize("replay", [False, True], ids=["straight", "restart and replay"])
def test_sums_over_the_stored_points_are_exact(
    seed: int, delay: int, late_share: float, replay: bool
) -> None:
    start = MIDNIGHT - 30 * MINUTE_MS
    events = play_events(random.Random(seed), start, plays=60)
    kept = stored(deliver(events, seed, delay=delay, late_share=late_share, replay=replay))
    viewers, plays = expected(events)
    assert {name for name, _, _ in kept} == {QOE_MEASUREMENT}
    assert per_minute(kept, QOE_MEASUREMENT, "viewers") == viewers
    assert per_minute(kept, QOE_MEASUREMENT, "plays") == plays
    assert any(minute < MIDNIGHT for minute in viewers)
    assert any(minute >= MIDNIGHT for minute in viewers)
    late = {tags for (_, tags, _) in kept if ("late", "true") in tags}
    assert bool(late) == (delay > 0)


def test_a_late_play_gets_its_own_point_instead_of_overwriting_the_settled_one() -> None:
    """The issue's backfill: a minute's live point settles (its plays are forgotten), then
    a play of that minute arrives a day late: both points stay, the sums see both plays."""
    minute = MIDNIGHT
    processor = PlaysProcessor(idle_timeout_ms=IDLE)

    def send(offset: int, play: str, ts: int, received_at: int) -> list[SeriesPoint]:
        event = Event(
            event_id=play,
            type="playback_end",
            user_id="u",
            ts=ts,
            device_model="quest3",
            props={"play_id": play, "content_id": "c"},
        )
        record = EventRecord(project=PROJECT, received_at=received_at, events=[event])
        processor.process(record, Position(0, offset))
        return processor.flush(received_at).points

    live = send(0, "on-time", minute + 5_000, minute + 6_000)
    later = minute + DAY_MS
    send(1, "next-day", later, later)  # the clocks move on: "on-time" is forgotten
    assert processor.held_plays() == 1
    late = send(2, "a-day-late", minute + 7_000, later + 1_000)
    kept = stored(live + late)
    qoe = {key[2]: fields["plays"] for key, fields in kept.items() if key[2] < later}
    late_batch = (later + 1_000) // LATE_BATCH_MS + 1
    assert qoe == {minute: 1, point_time(minute, late_batch): 1}
    assert per_minute(kept, QOE_MEASUREMENT, "viewers") == {minute: 2}


def test_points_are_forgotten_once_settled_and_their_plays_gone() -> None:
    """What the live view holds is bounded: after the last play is forgotten and its
    batches settle, no point is held and the state deletes every key it wrote."""
    events = play_events(random.Random(3), MIDNIGHT, plays=30)
    processor = PlaysProcessor(idle_timeout_ms=IDLE)
    changelog: dict[str, bytes] = {}  # as a compacted changelog topic keeps it

    def keep_state() -> None:
        for key, value in processor.take_state_changes().items():
            if value is None:
                changelog.pop(key, None)
            else:
                changelog[key] = value

    for offset, event in enumerate(sorted(events, key=lambda e: e.ts)):
        record = EventRecord(project=PROJECT, received_at=event.ts + 500, events=[event])
        processor.process(record, Position(0, offset))
        processor.flush(event.ts + 500)
        keep_state()
    assert any(key.startswith("point:") for key in changelog)
    assert processor.held_points() > 0
    last = max(e.ts for e in events)
    for offset, later in enumerate((3 * HORIZON, 6 * HORIZON), start=len(events)):
        # Other traffic moves both clocks: every play idles out, is forgotten, and every
        # batch settles.
        tick = Event(event_id=f"tick-{offset}", type="page_view", user_id="v", ts=last + later)
        record = EventRecord(project=PROJECT, received_at=last + later, events=[tick])
        processor.process(record, Position(0, offset))
        output = processor.flush(last + later)
        keep_state()
    assert output.points == []
    assert processor.held_plays() == 0
    assert processor.held_points() == 0
    assert changelog == {}


def as_older_changelog(changelog: dict[str, bytes]) -> dict[str, bytes]:
    """The changelog as a worker from before one point per key kept it: a point's QoE
    plays under `qoe:` (the live batch left out of the key) and its viewers under
    `viewers:`, each part the point counts anything in."""
    older = {}
    for key, value in changelog.items():
        if not key.startswith("point:"):
            older[key] = value
            continue
        batch_key = msgspec.json.decode(key.removeprefix("point:"))
        point = msgspec.msgpack.decode(value, type=PointState)
        if point.plays:
            qoe_key = batch_key[:5] if batch_key[5] == LIVE else batch_key
            older["qoe:" + msgspec.json.encode(qoe_key).decode()] = msgspec.msgpack.encode(
                {"plays": point.plays}
            )
        if point.viewers or point.held_viewers:
            older["viewers:" + msgspec.json.encode(batch_key).decode()] = (
                msgspec.msgpack.encode([point.viewers, point.held_viewers])
            )
    return older


@pytest.mark.parametrize("seed", range(3), ids=lambda seed: f"seed {seed}")
@pytest.mark.parametrize("older", [False, True], ids=["", "from an older changelog"])
def test_a_restart_from_the_changelog_after_any_flush_writes_what_no_restart_writes(
    seed: int, older: bool
) -> None:
    """A point whose plays are all held has no changelog key (its restored plays count
    themselves back in): a processor restarted from the compacted changelog after every
    flush writes the same points and rows as one never restarted, hours-late plays and
    an erasure included, and the changelog gets point keys once plays are forgotten.
    Restarted from the older form of the changelog (a worker upgraded over it), it writes
    the same, and its next changes replace every older key with the point's."""
    rng = random.Random(seed)
    events = play_events(rng, MIDNIGHT - 30 * MINUTE_MS, plays=40)
    late_users = {"u1", "u3"}
    arrivals = sorted(
        (e.ts + rng.randrange(MINUTE_MS) + (3 * 3_600_000 if e.user_id in late_users else 0), n, e)
        for n, e in enumerate(events)
    )
    chunks = [arrivals[n : n + 3] for n in range(0, len(arrivals), 3)]
    records = [
        EventRecord(project=PROJECT, received_at=chunk[-1][0], events=[e for *_, e in chunk])
        for chunk in chunks
    ]
    straight = PlaysProcessor(idle_timeout_ms=IDLE)
    restarted = PlaysProcessor(idle_timeout_ms=IDLE)
    changelog: dict[str, bytes] = {}
    series_keys_written: set[str] = set()
    series_keys_while_all_held: set[str] = set()
    for offset, record in enumerate(records):
        for processor in (straight, restarted):
            processor.process(record, Position(0, offset))
            if offset == len(records) // 2:
                processor.erase(PROJECT, "u2")
        if rng.random() < 0.6:
            continue
        now = record.received_at
        expected_output, output = straight.flush(now), restarted.flush(now)
        seen = {e.props["play_id"] for *_, e in arrivals[: 3 * offset + 3]}
        all_held = straight.held_plays() == len(seen)
        assert output.points == expected_output.points
        assert output.tables == expected_output.tables
        straight.take_state_changes()
        for key, value in restarted.take_state_changes().items():
            if value is None:
                changelog.pop(key, None)
            else:
                changelog[key] = value
                if not key.startswith("play:"):
                    series_keys_written.add(key)
                    if all_held:
                        series_keys_while_all_held.add(key)
        assert not any(key.startswith(("qoe:", "viewers:")) for key in changelog)
        if older:
            changelog = as_older_changelog(changelog)
        restarted = PlaysProcessor(idle_timeout_ms=IDLE)
        for key, value in changelog.items():
            restarted.load_state(key, value)
    assert series_keys_while_all_held == set()
    assert {key.split(":", 1)[0] for key in series_keys_written} == {"point"}
