"""PlaysProcessor (SPEC §4 playback quality): outcomes, sums, closing, late and duplicate
events, replays, state round trips, the live QoE series, and the QoE math."""

from __future__ import annotations

import itertools
import math
import random
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest

from common.qoe import (
    DAY_MS,
    MINUTE_MS,
    QoeContribution,
    avg_bitrate_kbps,
    avg_fps,
    dropped_frame_pct,
    experience_score,
    mean,
    mean_score,
    percent,
    play_watch_ms,
    qoe_fields,
    quality_score,
    quantile_exact,
    rebuffer_frequency,
    rebuffer_ratio,
    smoothness_score,
    startup_score,
    watch_hours,
)
from common.settings import Settings
from schemas.events import Event, EventRecord
from schemas.output import ProcessorOutput, SeriesPoint
from schemas.plays import PLAY_COLUMNS, PLAYS_TABLE
from streams.processors.base import Position
from streams.processors.plays import (
    DEFAULT_IDLE_TIMEOUT_MS,
    QOE_MEASUREMENT,
    PlaysProcessor,
    PlayState,
    play_state_key,
    rows_as_dicts,
)
from streams.processors.plays.codec import _from_rest, _to_rest

T0 = 1_764_100_020_000  # first event of most plays (second 20 of a minute)
IDLE = 300_000
PROJECT = "p1"

_ids = itertools.count()


def ev(
    kind: str, ts: int, play_id: str = "pl-1", event_id: str | None = None, **props: Any
) -> Event:
    """A playback event (`kind` without the `playback_` prefix), device quest3."""
    return Event(
        event_id=event_id or f"ev-{next(_ids)}",
        type=f"playback_{kind}",
        user_id="u-1",
        ts=ts,
        device_model="quest3",
        app_version="3.0.0",
        region="eu",
        props={"play_id": play_id, **props},
    )


@dataclass
class Feed:
    """Drives one processor like a runner: records get increasing offsets on partition 0."""

    processor: PlaysProcessor = field(default_factory=lambda: PlaysProcessor(idle_timeout_ms=IDLE))
    offset: int = 0
    outputs: list[ProcessorOutput] = field(default_factory=list)

    def send(self, *events: Event, received_at: int | None = None, partition: int = 0) -> Position:
        received = received_at if received_at is not None else max(e.ts for e in events) + 50
        record = EventRecord(project=PROJECT, received_at=received, events=list(events))
        position = Position(partition, self.offset)
        self.offset += 1
        self.processor.process(record, position)
        return position

    def flush(self, now_ms: int) -> ProcessorOutput:
        output = self.processor.flush(now_ms)
        self.outputs.append(output)
        return output

    def rows(self, output: ProcessorOutput | None = None) -> list[dict[str, object]]:
        outputs = [output] if output is not None else self.outputs
        return [
            row
            for out in outputs
            for table in out.tables
            if table.table == PLAYS_TABLE
            for row in rows_as_dicts(table)
        ]

    def final_rows(self) -> dict[str, dict[str, object]]:
        """The newest live row per play, as ReplacingMergeTree(version) would keep it."""
        newest: dict[str, dict[str, object]] = {}
        for row in self.rows():
            key = str(row["play_id"])
            if key not in newest or int(str(row["version"])) > int(str(newest[key]["version"])):
                newest[key] = row
        return {key: row for key, row in newest.items() if row["deleted"] == 0}


FAR = T0 + 10 * DAY_MS  # a processing time at which every play is idle


def closed_row(*events: Event, now_ms: int = FAR) -> dict[str, object]:
    feed = Feed()
    feed.send(*events)
    feed.flush(now_ms)
    rows = feed.final_rows()
    assert len(rows) == 1
    return next(iter(rows.values()))


# ---------------------------------------------------------------- outcomes


NORMAL = [
    ev("request", T0, content_id="c-1"),
    ev("start", T0 + 800, startup_ms=800, bitrate_kbps=3000),
    ev("heartbeat", T0 + 10_800, played_ms=10_000, bitrate_kbps=3000),
    ev("rebuffer", T0 + 11_000, duration_ms=500),
    ev("quality_change", T0 + 11_500, from_kbps=3000, to_kbps=6000),
    ev("heartbeat", T0 + 21_500, played_ms=10_000, bitrate_kbps=6000),
    ev("end", T0 + 23_500, played_ms=2_000),
]


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        pytest.param(
            NORMAL,
            {
                "started": 1,
                "video_start_failure": 0,
                "exit_before_start": 0,
                "playback_failure": 0,
                "startup_ms": 800,
                "played_ms": 22_000,
                "rebuffer_ms": 500,
                "rebuffer_count": 1,
                "bitrate_switches": 1,
                "bitrate_weighted_sum": 10_000 * 3000 + 10_000 * 6000,
                "bitrate_weight_ms": 20_000,
                "watch_ms": 800 + 22_000 + 500,
                "content_id": "c-1",
                "first_ts": T0,
                "last_ts": T0 + 23_500,
                "event_count": 7,
                "version": 14,
                "deleted": 0,
            },
            id="normal play",
        ),
        pytest.param(
            [ev("request", T0), ev("error", T0 + 3_000, code="E1", fatal=True)],
            {"started": 0, "video_start_failure": 1, "exit_before_start": 0, "playback_failure": 0},
            id="startup failure: fatal error before start",
        ),
        pytest.param(
            [ev("request", T0), ev("end", T0 + 4_000, played_ms=0)],
            {"started": 0, "video_start_failure": 0, "exit_before_start": 1, "playback_failure": 0},
            id="exit before start: end without start",
        ),
        pytest.param(
            [ev("request", T0)],
            {"started": 0, "video_start_failure": 0, "exit_before_start": 1, "watch_ms": 0},
            id="exit before start: idle without start",
        ),
        pytest.param(
            [
                ev("start", T0, startup_ms=400, bitrate_kbps=1000),
                ev("heartbeat", T0 + 10_000, played_ms=10_000, bitrate_kbps=1000),
                ev("error", T0 + 12_000, code=500, fatal=True),
            ],
            {"started": 1, "video_start_failure": 0, "exit_before_start": 0, "playback_failure": 1},
            id="playback failure: fatal error after start",
        ),
        pytest.param(
            [
                ev("start", T0, startup_ms=400, bitrate_kbps=1000),
                ev("error", T0 + 1_000, code="W1", fatal=False),
                ev("end", T0 + 9_000, played_ms=8_000),
            ],
            {"started": 1, "video_start_failure": 0, "exit_before_start": 0, "playback_failure": 0},
            id="non-fatal error ignored",
        ),
        pytest.param(
            [ev("request", T0), ev("error", T0 + 1_000, code="W1", fatal=False)],
            {"video_start_failure": 0, "exit_before_start": 1},
            id="non-fatal error before start is still an exit before start",
        ),
        pytest.param(
            [
                ev("error", T0, code="E1", fatal=True),
                ev("start", T0 + 2_000, startup_ms=900, bitrate_kbps=1000),
            ],
            {"started": 1, "video_start_failure": 1, "playback_failure": 0, "startup_ms": 900},
            id="the earliest fatal error decides: before start stays a start failure",
        ),
        pytest.param(
            [ev("start", T0, startup_ms=300, bitrate_kbps=1), ev("error", T0, fatal=True, code=1)],
            {"video_start_failure": 0, "playback_failure": 1},
            id="fatal error at the start's millisecond counts as after start",
        ),
        pytest.param(
            [
                ev("start", T0, startup_ms=250.4, bitrate_kbps=1000),
                ev("rebuffer", T0 + 1, duration_ms=99.6),
                ev("rebuffer", T0 + 2, duration_ms=100),
                ev("quality_change", T0 + 3, from_kbps=1, to_kbps=2),
                ev("quality_change", T0 + 4, from_kbps=2, to_kbps=1),
                ev("end", T0 + 5, played_ms=1000.5),
            ],
            {
                "startup_ms": 250,
                "rebuffer_ms": 200,
                "rebuffer_count": 2,
                "bitrate_switches": 2,
                "played_ms": 1000,
                "watch_ms": 250 + 1000 + 200,
            },
            id="rebuffers and quality changes counted; numbers rounded to whole ms",
        ),
        pytest.param(
            [
                ev("start", T0, startup_ms=100, bitrate_kbps=9999),
                ev("heartbeat", T0 + 1_000, played_ms=1_000, bitrate_kbps=1000),
                ev("heartbeat", T0 + 4_000, played_ms=3_000, bitrate_kbps=5000),
                ev("end", T0 + 9_000, played_ms=5_000),
            ],
            {
                "bitrate_weighted_sum": 1_000 * 1000 + 3_000 * 5000,
                "bitrate_weight_ms": 4_000,
                "played_ms": 9_000,
            },
            id="avg bitrate weights heartbeats by played_ms, ignores start and end",
        ),
    ],
)
def test_play_row(events: list[Event], expected: dict[str, object]) -> None:
    row = closed_row(*events)
    assert {key: row[key] for key in expected} == expected
    assert set(row) == set(PLAY_COLUMNS)


def test_avg_bitrate_of_the_weighting_example() -> None:
    row = closed_row(
        ev("heartbeat", T0, played_ms=1_000, bitrate_kbps=1000),
        ev("heartbeat", T0 + 3_000, played_ms=3_000, bitrate_kbps=5000),
    )
    weighted, weight = int(str(row["bitrate_weighted_sum"])), int(str(row["bitrate_weight_ms"]))
    assert avg_bitrate_kbps(weighted, weight) == 4000.0


def test_first_event_gives_dimensions_and_content_comes_from_any_event() -> None:
    first = Event(
        event_id="a",
        type="playback_request",
        user_id="u-7",
        ts=T0,
        device_model="pico4",
        app_version="2.9.0",
        region="us",
        props={"play_id": "pl-1"},
    )
    later = ev("start", T0 + 500, startup_ms=500, bitrate_kbps=1, content_id="c-9")
    row = closed_row(later, first)
    assert (row["user_id"], row["device_model"], row["app_version"], row["region"]) == (
        "u-7",
        "pico4",
        "2.9.0",
        "us",
    )
    assert row["content_id"] == "c-9"


def test_only_playback_events_with_a_play_id_belong_to_plays() -> None:
    feed = Feed()
    other = Event(event_id="x", type="page_view", user_id="u-1", ts=T0, props={"play_id": "pl-1"})
    no_id = Event(event_id="y", type="playback_start", user_id="u-1", ts=T0, props={})
    custom = ev("seek", T0 + 10, to_ms=5)
    feed.send(other, no_id, custom)
    feed.flush(FAR)
    (row,) = feed.final_rows().values()
    assert (row["event_count"], row["first_ts"]) == (1, T0 + 10)


# ---------------------------------------------------------------- closing


def test_play_stays_open_until_end_and_only_closed_plays_are_written() -> None:
    feed = Feed()
    feed.send(*NORMAL[:-1])
    assert feed.rows(feed.flush(T0 + 30_000)) == []
    assert feed.processor.open_plays() == 1
    feed.send(NORMAL[-1])
    (row,) = feed.rows(feed.flush(T0 + 30_000))
    assert row["played_ms"] == 22_000
    assert feed.processor.open_plays() == 0


@pytest.mark.parametrize(
    ("other_play_ts", "closed"),
    [
        pytest.param(T0 + IDLE + 1, True, id="watermark past last ts + timeout closes"),
        pytest.param(T0 + IDLE, False, id="watermark at last ts + timeout does not"),
    ],
)
def test_idle_close_by_event_time_watermark(other_play_ts: int, closed: bool) -> None:
    feed = Feed()
    feed.send(ev("start", T0, startup_ms=100, bitrate_kbps=1))
    feed.send(ev("request", other_play_ts, play_id="pl-2"), received_at=other_play_ts)
    rows = feed.rows(feed.flush(now_ms=T0 + 1_000))  # processing time says nothing is idle
    assert [row["play_id"] for row in rows] == (["pl-1"] if closed else [])


@pytest.mark.parametrize(
    ("now_ms", "closed"),
    [
        pytest.param(T0 + 50 + IDLE + 1, True, id="received_at + timeout < now closes"),
        pytest.param(T0 + 50 + IDLE, False, id="received_at + timeout = now does not"),
    ],
)
def test_idle_close_by_processing_time_when_the_stream_stops(now_ms: int, closed: bool) -> None:
    feed = Feed()
    feed.send(ev("start", T0, startup_ms=100, bitrate_kbps=1), received_at=T0 + 50)
    assert len(feed.rows(feed.flush(now_ms))) == int(closed)


def test_future_client_clock_does_not_advance_the_watermark() -> None:
    feed = Feed()
    feed.send(ev("start", T0, startup_ms=100, bitrate_kbps=1), received_at=T0)
    skewed = ev("request", T0 + 9 * MINUTE_MS, play_id="pl-2")
    feed.send(skewed, received_at=T0 + 1_000)
    assert feed.rows(feed.flush(T0 + 2_000)) == []
    assert feed.processor.watermark == T0 + 1_000


def test_idle_timeout_defaults_to_settings() -> None:
    setting_default_s = Settings.model_fields["play_idle_timeout_s"].default
    assert DEFAULT_IDLE_TIMEOUT_MS == setting_default_s * 1000 == 300_000
    assert PlaysProcessor().idle_timeout_ms == DEFAULT_IDLE_TIMEOUT_MS
    processor = PlaysProcessor(idle_timeout_ms=42_000)
    assert (processor.idle_timeout_ms, processor.grace_ms) == (42_000, 84_000)


# ---------------------------------------------------------------- order, duplicates, replays


def _deliver(events: list[Event], chunking: list[int], seed: int) -> dict[str, object]:
    """Send `events` shuffled, in records of the given sizes, flushing between records."""
    shuffled = list(events)
    random.Random(seed).shuffle(shuffled)
    feed = Feed()
    start = 0
    for size in itertools.cycle(chunking):
        chunk = shuffled[start : start + size]
        if not chunk:
            break
        feed.send(*chunk, received_at=T0 + 60_000 + start)
        feed.flush(T0 + 60_000 + start)
        start += size
    feed.flush(FAR)
    (row,) = feed.final_rows().values()
    return row


@pytest.mark.parametrize("seed", range(8), ids=lambda seed: f"shuffle {seed}")
def test_out_of_order_events_give_the_same_row(seed: int) -> None:
    events = [
        *NORMAL[:-1],
        ev("error", T0 + 12_000, code="W", fatal=False),
        ev("end", T0 + 23_500, played_ms=2_000),
    ]
    in_order = closed_row(*events)
    assert _deliver(events, [1], seed) == in_order
    assert _deliver(events, [2, 3], seed) == in_order


def test_heartbeat_before_start_arriving_late_gives_the_same_row() -> None:
    start = ev("start", T0, startup_ms=700, bitrate_kbps=2000, content_id="c-1")
    beat = ev("heartbeat", T0 + 10_000, played_ms=10_000, bitrate_kbps=2000)
    end = ev("end", T0 + 11_000, played_ms=1_000)
    expected = closed_row(start, beat, end)
    feed = Feed()
    feed.send(beat)
    feed.send(end)
    feed.send(start)
    feed.flush(FAR)
    assert feed.final_rows()["pl-1"] == expected


def test_duplicates_and_replayed_positions_do_not_double_count() -> None:
    feed = Feed()
    first = feed.send(*NORMAL[:3])
    # A client retry: the same events (same event_ids) in a new record.
    feed.send(*NORMAL[:3])
    # A replay after a crash: the same record at the same position.
    feed.processor.process(
        EventRecord(project=PROJECT, received_at=T0 + 99, events=[NORMAL[3], NORMAL[4]]), first
    )
    feed.send(*NORMAL[3:])
    feed.send(NORMAL[-1])  # the closing event again, after the play closed
    feed.flush(FAR)
    feed.send(NORMAL[-1], NORMAL[2])
    feed.flush(FAR)
    assert [row["version"] for row in feed.rows()] == [14]
    assert feed.final_rows()["pl-1"] == closed_row(*NORMAL)


def test_positions_are_compared_per_partition() -> None:
    feed = Feed()
    feed.send(NORMAL[0], partition=1)  # offset 0 on partition 1
    feed.offset = 0
    feed.send(NORMAL[1], partition=0)  # offset 0 on another partition is not a replay
    feed.send(*NORMAL[2:])
    feed.flush(FAR)
    assert feed.final_rows()["pl-1"]["event_count"] == len(NORMAL)


# ---------------------------------------------------------------- late events


def test_late_event_after_close_re_emits_the_same_play_with_a_higher_version() -> None:
    feed = Feed()
    feed.send(*NORMAL)
    (first,) = feed.rows(feed.flush(T0 + 30_000))
    late = ev("heartbeat", T0 + 15_000, played_ms=5_000, bitrate_kbps=3000)
    feed.send(late, received_at=T0 + 200_000)
    (second,) = feed.rows(feed.flush(T0 + 200_000))
    assert (second["play_id"], second["deleted"]) == (first["play_id"], 0)
    assert int(str(second["version"])) > int(str(first["version"]))
    assert second["played_ms"] == int(str(first["played_ms"])) + 5_000
    assert second == closed_row(*NORMAL, late)


def test_a_closed_play_at_rest_takes_a_late_event_like_a_held_one() -> None:
    """Taking the state changes puts closed plays at rest (compact bytes); a late event,
    a replayed record and the forgetting all see the same play as before."""
    feed = Feed()
    closing = feed.send(*NORMAL)
    (first,) = feed.rows(feed.flush(T0 + 30_000))
    feed.processor.take_state_changes()
    feed.processor.process(  # the closing record again: a replay changes nothing
        EventRecord(project=PROJECT, received_at=T0 + 40_000, events=list(NORMAL)), closing
    )
    assert feed.rows(feed.flush(T0 + 40_000)) == []
    late = ev("heartbeat", T0 + 15_000, played_ms=5_000, bitrate_kbps=3000)
    feed.send(late, received_at=T0 + 200_000)
    (second,) = feed.rows(feed.flush(T0 + 200_000))
    assert second == closed_row(*NORMAL, late)
    assert int(str(second["version"])) > int(str(first["version"]))
    feed.processor.take_state_changes()
    later = T0 + 200_000 + 2 * IDLE + 1
    feed.send(ev("request", later, play_id="pl-2"), received_at=later)
    feed.flush(later)
    assert feed.processor.held_plays() == 1  # pl-1 forgotten from rest, pl-2 held


def test_a_play_that_keeps_going_stays_open_and_idles_out_after_its_last_event() -> None:
    feed = Feed()
    feed.send(ev("start", T0, startup_ms=100, bitrate_kbps=1), received_at=T0)
    at = T0
    for _ in range(40):  # a heartbeat every 10 s, flushed each time: 400 s > IDLE
        at += 10_000
        feed.send(ev("heartbeat", at, played_ms=10_000, bitrate_kbps=1), received_at=at)
        assert feed.rows(feed.flush(at + 1)) == []
    assert feed.processor.open_plays() == 1
    # One idle entry per index however often it was touched: it goes back in when it
    # comes up early, it is not indexed again at each flush.
    assert len(feed.processor._idle_by_ts) == len(feed.processor._idle_by_received) == 1
    assert feed.rows(feed.flush(at + IDLE)) == []
    (row,) = feed.rows(feed.flush(at + IDLE + 2))
    assert (row["event_count"], row["played_ms"]) == (41, 400_000)


def test_idle_closed_play_re_opens_when_it_turns_out_not_to_be_over() -> None:
    feed = Feed()
    feed.send(ev("start", T0, startup_ms=100, bitrate_kbps=1), received_at=T0)
    (idle_row,) = feed.rows(feed.flush(T0 + IDLE + 1))
    assert idle_row["event_count"] == 1
    resumed = T0 + IDLE + 10_000
    feed.send(ev("heartbeat", resumed, played_ms=10_000, bitrate_kbps=1), received_at=resumed)
    assert feed.processor.open_plays() == 1
    assert feed.rows(feed.flush(resumed + 1_000)) == []
    feed.send(ev("end", resumed + 1_000, played_ms=1_000), received_at=resumed + 1_000)
    (final,) = feed.rows(feed.flush(resumed + 2_000))
    assert (final["event_count"], final["played_ms"], final["version"]) == (3, 11_000, 6)


def test_a_play_started_again_after_an_erasure_idles_out_on_its_own_times() -> None:
    """The erased play's idle entries are still queued, with later times than the new
    play's; they must not hold it open past its own idle timeout."""
    arrived = T0 + 100_000
    feed = Feed()
    feed.send(ev("start", arrived, startup_ms=100, bitrate_kbps=1), received_at=arrived)
    feed.flush(arrived)
    feed.processor.erase(PROJECT, "u-1")
    feed.send(ev("request", T0), received_at=arrived)
    assert feed.rows(feed.flush(arrived)) == []
    later = T0 + IDLE + 1  # past the new play's last ts + timeout, not the erased one's
    feed.send(ev("request", later, play_id="pl-2"), received_at=later)
    (row,) = feed.rows(feed.flush(later))
    assert (row["play_id"], row["event_count"], row["exit_before_start"]) == ("pl-1", 1, 1)


def test_late_earlier_event_moving_the_play_to_another_day_writes_a_tombstone() -> None:
    midnight = (T0 // DAY_MS + 1) * DAY_MS
    feed = Feed()
    feed.send(ev("start", midnight + 1_000, startup_ms=1_000, bitrate_kbps=1), received_at=midnight)
    feed.send(ev("end", midnight + 5_000, played_ms=4_000))
    (first,) = feed.rows(feed.flush(midnight + 10_000))
    feed.send(ev("request", midnight - 2_000, content_id="c-1"), received_at=midnight + 20_000)
    tombstone, second = feed.rows(feed.flush(midnight + 20_000))
    assert (first["first_ts"], first["version"]) == (midnight + 1_000, 4)
    assert (tombstone["deleted"], tombstone["first_ts"], tombstone["version"]) == (
        1,
        midnight + 1_000,
        5,
    )
    assert (second["deleted"], second["first_ts"], second["version"]) == (0, midnight - 2_000, 6)


def test_closed_plays_are_forgotten_after_the_grace_period() -> None:
    feed = Feed()
    feed.send(*NORMAL)
    feed.flush(T0 + 30_000)
    feed.processor.take_state_changes()
    grace = 2 * IDLE
    later = T0 + 23_500 + grace + 1
    feed.send(ev("request", later, play_id="pl-2"), received_at=later)
    feed.flush(later)
    assert feed.processor.held_plays() == 2  # arrival time: last received + grace not passed
    feed.send(ev("request", later + 1_000, play_id="pl-3"), received_at=T0 + 23_550 + grace + 1)
    feed.flush(later + 1_000)
    assert feed.processor.held_plays() == 2
    assert feed.processor.take_state_changes()[play_state_key(PROJECT, "pl-1")] is None


def test_plays_closed_within_the_same_second_are_each_forgotten_on_time() -> None:
    """The deadline indexes group plays by second: the one not due yet stays queued."""
    feed = Feed()
    ends = {"pl-a": T0 + 23_100, "pl-b": T0 + 23_900}
    for play, at in ends.items():
        feed.send(ev("end", at, play_id=play, played_ms=1), received_at=at)
    feed.flush(T0 + 24_000)
    feed.processor.take_state_changes()
    grace = 2 * IDLE
    forgotten = []
    for play, at in [("pl-c", ends["pl-a"] + grace + 1), ("pl-d", ends["pl-b"] + grace + 1)]:
        feed.send(ev("request", at, play_id=play), received_at=at)
        feed.flush(at)
        changes = feed.processor.take_state_changes()
        forgotten.append(
            [gone for gone in ends if changes.get(play_state_key(PROJECT, gone), 0) is None]
        )
    assert forgotten == [["pl-a"], ["pl-b"]]


# ---------------------------------------------------------------- state


def _records(events: list[Event], per_record: int) -> Iterator[list[Event]]:
    for start in range(0, len(events), per_record):
        yield events[start : start + per_record]


def _many_plays() -> list[Event]:
    events = []
    for index in range(4):
        base = T0 + index * 7_000
        play = f"pl-{index}"
        events += [
            ev("request", base, play_id=play, content_id=f"c-{index % 2}"),
            ev("start", base + 300, play_id=play, startup_ms=300 + index, bitrate_kbps=1000),
            ev("heartbeat", base + 10_300, play_id=play, played_ms=10_000, bitrate_kbps=2000),
            ev("rebuffer", base + 10_500, play_id=play, duration_ms=200 * index),
        ]
        if index % 2:
            events.append(ev("end", base + 12_000, play_id=play, played_ms=1_500))
    return sorted(events, key=lambda event: event.ts)


def test_state_round_trip_mid_play_gives_identical_output() -> None:
    records = list(_records(_many_plays(), 3))
    half = len(records) // 2
    now = T0 + 20_000

    straight = Feed()
    for chunk in records[:half]:
        straight.send(*chunk, received_at=now)
    straight.flush(now)
    changes = straight.processor.take_state_changes()
    assert changes
    assert all(value is not None for value in changes.values())

    restored = Feed(offset=straight.offset)
    for key, value in changes.items():
        assert value is not None
        restored.processor.load_state(key, value)
    # The runner replays from the last commit: these positions are already in the state.
    replay = Feed(processor=restored.processor)
    for chunk in records[:half]:
        replay.send(*chunk, received_at=now)

    for feed in (straight, restored):
        for chunk in records[half:]:
            feed.send(*chunk, received_at=now + 1_000)
        feed.flush(now + 1_000)
        feed.flush(FAR)
    assert straight.outputs[1:] == restored.outputs
    assert straight.final_rows() == restored.final_rows()
    assert len(straight.final_rows()) == 4


@pytest.mark.parametrize(
    "state",
    [
        pytest.param(
            PlayState(
                project=PROJECT,
                play_id="pl-1",
                partition=3,
                first_ts=T0,
                first_event_id="ev-first",
                user_id="u-1",
                device_model="quest3",
                app_version="3.0.0",
                region="eu",
                content_id="c-1",
                content_ts=T0 + 5,
                content_event_id="ev-content",
                start_ts=T0 + 800,
                start_event_id="ev-start",
                startup_ms=800,
                played_ms=22_000,
                rebuffer_ms=500,
                rebuffer_count=1,
                bitrate_switches=2,
                bitrate_weighted_sum=90_000_000,
                bitrate_weight_ms=20_000,
                first_type="playback_request",
                os="horizon",
                source="segment",
                session_id="s-1",
                first_props=b'{"content_id":"c-1","layout":{"fov":110}}',
                downshifts=2,
                upshifts=1,
                error_codes=("500", "E-NET"),
                frames_rendered=1_770,
                frames_dropped=30,
                frames_ms=20_000,
                first_fatal_ts=T0 + 30_000,
                has_end=True,
                last_ts=T0 + 31_000,
                last_received_at=T0 - 5_000,  # a client clock running ahead
                event_count=3,
                event_ids=array("Q", [1, 2**63, 2**64 - 1]),
                positions={3: 17, 4: 2},
                closed=True,
                emitted_version=4,
                emitted_first_ts=T0 + DAY_MS,
                series_key=(PROJECT, 3, T0 // MINUTE_MS * MINUTE_MS, "c-1", "quest3"),
                series_batch=5_880_334,
                qoe_batch=5_880_335,
                viewing=((T0 - 60_020, T0 - 20, 5_880_335), (T0 + 39_980, T0 + 39_980, 0)),
                viewed=("c-1", "quest3", ((T0 - 20, T0 - 20, 0),)),
            ),
            id="every field set, event ids other than the first event's",
        ),
        pytest.param(
            PlayState(
                project=PROJECT,
                play_id="pl-2",
                partition=0,
                first_ts=T0,
                first_event_id="ev-1",
                user_id="u-1",
                device_model="",
                app_version="",
                region="",
                content_id="c-1",
                content_ts=T0,
                content_event_id="ev-1",
                start_ts=T0,
                start_event_id="ev-1",
                last_ts=T0,
                last_received_at=T0 + 50,
                event_count=1,
                event_ids=array("Q", [7]),
                positions={0: 1},
                closed=True,
            ),
            id="one event: start and content from the first event, never written",
        ),
        pytest.param(
            PlayState(
                project=PROJECT,
                play_id="pl-3",
                partition=1,
                first_ts=T0,
                first_event_id="ev-1",
                user_id="u-1",
                device_model="quest3",
                app_version="3.0.0",
                region="eu",
                last_ts=T0 + 1,
                last_received_at=T0 + 50,
                event_count=2,
                event_ids=array("Q", [7, 8]),
                positions={1: 1},
                closed=True,
                emitted_version=4,
                emitted_first_ts=T0,
            ),
            id="no start, no content, out of the live view",
        ),
    ],
)
def test_a_closed_play_comes_back_from_rest_unchanged(state: PlayState) -> None:
    blob = _to_rest(state, bytearray())
    assert _from_rest((state.project, state.play_id), blob) == state
    assert state.play_id.encode() not in blob  # the key says it
    assert blob.count(state.first_event_id.encode()) == 1


def test_load_state_refuses_unknown_keys() -> None:
    with pytest.raises(ValueError, match="not a plays state key"):
        PlaysProcessor().load_state("funnel:x", b"")


def _run_with_state(processor: PlaysProcessor) -> tuple[Feed, dict[str, bytes | None]]:
    feed = Feed(processor=processor)
    changes: dict[str, bytes | None] = {}
    for chunk in _records(_many_plays(), 3):
        feed.send(*chunk, received_at=T0 + 20_000)
        feed.flush(T0 + 20_000)
        changes.update(feed.processor.take_state_changes())
    # Other traffic moves both clocks past the grace: every play idles out, is written
    # and forgotten, and its series entries (still settling) go to the changelog.
    later = T0 + 15 * MINUTE_MS
    feed.send(Event(event_id="tick", type="page_view", user_id="u-2", ts=later), received_at=later)
    feed.flush(later)
    changes.update(feed.processor.take_state_changes())
    return feed, changes


def test_without_live_series_the_rows_are_the_same_and_no_series_is_held() -> None:
    """quip up has no InfluxDB: its processor computes no series, holds no series state
    and changelogs plays only; the rows are the worker's."""
    with_series, series_changes = _run_with_state(PlaysProcessor(idle_timeout_ms=IDLE))
    without, changes = _run_with_state(PlaysProcessor(idle_timeout_ms=IDLE, live_series=False))
    assert without.rows() == with_series.rows()
    assert len(without.final_rows()) == 4
    assert any(output.points for output in with_series.outputs)
    assert not any(output.points for output in without.outputs)
    assert {key.split(":", 1)[0] for key in series_changes} == {"play", "point"}
    assert {key.split(":", 1)[0] for key in changes} == {"play"}
    assert without.processor.held_points() == 0


def test_without_live_series_an_older_states_series_entries_are_deleted() -> None:
    _, changes = _run_with_state(PlaysProcessor(idle_timeout_ms=IDLE))
    stored = {key: value for key, value in changes.items() if value is not None}
    series_keys = {key for key in stored if not key.startswith("play:")}
    assert series_keys

    restored = PlaysProcessor(idle_timeout_ms=IDLE, live_series=False)
    for key, value in stored.items():
        restored.load_state(key, value)
    assert restored.held_points() == 0
    output = restored.flush(T0 + 20_000)
    assert output.points == []
    changes = restored.take_state_changes()
    assert {key for key, value in changes.items() if value is None} == series_keys


# ---------------------------------------------------------------- live QoE series


def _points(outputs: list[ProcessorOutput]) -> dict[tuple[int, str, str], SeriesPoint]:
    """The last point with QoE fields written per (time, content, device), without its
    `viewers` (tests/unit/test_play_concurrency.py checks the concurrent viewers)."""
    latest: dict[tuple[int, str, str], SeriesPoint] = {}
    for output in outputs:
        for point in output.points:
            assert point.measurement == QOE_MEASUREMENT
            qoe = {name: value for name, value in point.fields.items() if name != "viewers"}
            if qoe:
                key = (point.time_ms, point.tags["content_id"], point.tags["device_model"])
                latest[key] = SeriesPoint(point.measurement, point.tags, qoe, point.time_ms)
    return latest


def test_qoe_minute_series_values() -> None:
    minute = T0 // MINUTE_MS * MINUTE_MS
    feed = Feed()
    feed.send(
        ev("start", T0, play_id="a", content_id="c-1", startup_ms=100, bitrate_kbps=1),
        ev("rebuffer", T0 + 1_000, play_id="a", duration_ms=400),
        ev("end", T0 + 2_000, play_id="a", played_ms=1_500),
        ev("start", T0 + 5_000, play_id="b", content_id="c-1", startup_ms=300, bitrate_kbps=1),
        ev("heartbeat", T0 + 6_000, play_id="b", played_ms=1_000, bitrate_kbps=1),
        ev("error", T0 + 7_000, play_id="b", code="E", fatal=True),
        ev("request", T0 + 8_000, play_id="c", content_id="c-1"),
        ev("error", T0 + 9_000, play_id="c", code="E", fatal=True),
        ev("request", T0 + 10_000, play_id="d", content_id="c-1"),
        ev("request", T0 + 30_000, play_id="e", content_id="c-2"),
        ev("request", T0 + 70_000, play_id="f", content_id="c-1"),
        received_at=T0 + 70_000,
    )
    live = _points([feed.flush(T0 + 71_000)])
    first = live[(minute, "c-1", "quest3")]
    assert first.tags == {
        "project": PROJECT,
        "partition": "0",
        "content_id": "c-1",
        "device_model": "quest3",
    }
    # d is still open: counted as a play, not (yet) as an exit before start.
    assert first.fields == {
        "plays": 4,
        "started": 2,
        "video_start_failures": 1,
        "exits_before_start": 0,
        "playback_failures": 1,
        "startup_ms_p50": 300,
        "startup_ms_p95": 300,
        "rebuffer_ratio": 400 / (100 + 1_500 + 400 + 300 + 1_000),
        "watch_ms": 100 + 1_500 + 400 + 300 + 1_000,
    }
    assert set(live) == {
        (minute, "c-1", "quest3"),
        (minute, "c-2", "quest3"),
        (minute + MINUTE_MS, "c-1", "quest3"),
    }
    assert "startup_ms_p50" not in live[(minute, "c-2", "quest3")].fields

    settled = _points([feed.flush(FAR)])
    assert settled[(minute, "c-1", "quest3")].fields["exits_before_start"] == 1
    assert settled[(minute, "c-2", "quest3")].fields == {
        "plays": 1,
        "started": 0,
        "video_start_failures": 0,
        "exits_before_start": 1,
        "playback_failures": 0,
        "watch_ms": 0,
    }


def test_play_moving_to_another_minute_leaves_its_old_point() -> None:
    minute = T0 // MINUTE_MS * MINUTE_MS
    feed = Feed()
    feed.send(ev("start", T0, content_id="c-1", startup_ms=100, bitrate_kbps=1))
    feed.flush(T0 + 1_000)
    feed.send(ev("request", T0 - MINUTE_MS, content_id="c-1"))
    moved = _points([feed.flush(T0 + 2_000)])
    assert moved[(minute, "c-1", "quest3")].fields["plays"] == 0
    assert moved[(minute - MINUTE_MS, "c-1", "quest3")].fields["plays"] == 1


def test_empty_dimensions_get_a_placeholder_tag() -> None:
    feed = Feed()
    feed.send(
        Event(event_id="z", type="playback_request", user_id="u", ts=T0, props={"play_id": "x"})
    )
    points = feed.flush(T0).points
    assert [(p.measurement, p.fields["plays"], p.fields["viewers"]) for p in points] == [
        (QOE_MEASUREMENT, 1, 1)
    ]
    for point in points:
        assert (point.tags["content_id"], point.tags["device_model"]) == ("unknown", "unknown")


# ---------------------------------------------------------------- QoE math


@pytest.mark.parametrize(
    ("values", "level", "expected"),
    [
        pytest.param([], 0.5, None, id="empty"),
        pytest.param([7], 0.95, 7, id="one value"),
        pytest.param([4, 1, 3, 2], 0.5, 3, id="even count: upper middle (quantileExact)"),
        pytest.param([5, 1, 3], 0.5, 3, id="odd count: middle"),
        pytest.param([1, 2, 3, 4], 0.95, 4, id="p95 of four: floor(3.8) = index 3"),
        pytest.param(list(range(20)), 0.95, 19, id="p95 of twenty: index 19"),
        pytest.param(list(range(100)), 0.95, 95, id="p95 of a hundred: index 95"),
        pytest.param([3, 1, 2], 1.0, 3, id="level 1 is the maximum"),
        pytest.param([2.5, 2.5, 0.5], 0.0, 0.5, id="level 0 is the minimum"),
    ],
)
def test_quantile_exact_matches_clickhouse(
    values: list[float], level: float, expected: float | None
) -> None:
    assert quantile_exact(values, level) == expected


@pytest.mark.parametrize(
    ("function", "args", "expected"),
    [
        pytest.param(rebuffer_ratio, (500, 10_000), 0.05, id="rebuffer ratio"),
        pytest.param(rebuffer_ratio, (0, 0), None, id="rebuffer ratio without watch time"),
        pytest.param(avg_bitrate_kbps, (16_000_000, 4_000), 4000.0, id="avg bitrate"),
        pytest.param(avg_bitrate_kbps, (0, 0), None, id="avg bitrate without heartbeats"),
        pytest.param(watch_hours, (5_400_000,), 1.5, id="watch hours"),
        pytest.param(play_watch_ms, (800, 22_000, 500), 23_300, id="watch ms of a play"),
    ],
)
def test_qoe_math(function: Callable[..., object], args: tuple[int, ...], expected: object) -> None:
    assert function(*args) == expected


def test_qoe_fields_leave_out_undefined_values() -> None:
    idle = QoeContribution(1, False, False, True, False, None, 0, 0)
    assert qoe_fields([idle]) == {
        "plays": 1,
        "started": 0,
        "video_start_failures": 0,
        "exits_before_start": 1,
        "playback_failures": 0,
        "watch_ms": 0,
    }
    assert qoe_fields([])["plays"] == 0


def test_event_ids_from_an_older_changelog_still_deduplicate() -> None:
    """Older states stored event ids as a set, i.e. a msgpack array in any order; they are
    kept sorted now, so a loaded list must be sorted for a retry to be recognised."""
    feed = Feed()
    feed.send(*NORMAL[:-1])
    feed.flush(T0 + 30_000)
    key = play_state_key(PROJECT, "pl-1")
    value = feed.processor.take_state_changes()[key]
    assert value is not None
    state = msgspec.msgpack.decode(value)
    state["event_ids"] = sorted(state["event_ids"], reverse=True)
    assert len(state["event_ids"]) == len(NORMAL) - 1

    restored = Feed(offset=feed.offset)
    restored.processor.load_state(key, msgspec.msgpack.encode(state))
    restored.send(*NORMAL[:-1])  # a client retry of everything already applied
    restored.send(NORMAL[-1])
    restored.flush(FAR)
    assert restored.final_rows()["pl-1"] == closed_row(*NORMAL)


def test_long_play_counts_each_event_once_whatever_the_order() -> None:
    beats = [
        ev("heartbeat", T0 + 1_000 + n * 10_000, played_ms=10_000, bitrate_kbps=3000)
        for n in range(400)
    ]
    shuffled = random.Random(11).sample(beats, len(beats))
    feed = Feed()
    feed.send(NORMAL[0])
    for chunk in range(0, len(shuffled), 7):
        feed.send(*shuffled[chunk : chunk + 7])
    feed.flush(T0 + 60_000)
    feed.processor.take_state_changes()  # nothing rests while open: objects stay objects
    for chunk in range(0, len(beats), 50):
        feed.send(*beats[chunk : chunk + 50])  # every one of them again
    feed.flush(FAR)
    assert feed.final_rows()["pl-1"]["event_count"] == len(beats) + 1
    assert feed.final_rows()["pl-1"]["played_ms"] == len(beats) * 10_000


# ---------------------------------------------------------------- QoE beyond the counts


def test_row_carries_the_first_events_properties_for_filters() -> None:
    first = Event(
        event_id="a",
        type="playback_request",
        user_id="u-7",
        ts=T0,
        session_id="s-9",
        device_model="quest3",
        os="horizon",
        props={"play_id": "pl-1", "autoplay": True, "layout": {"fov": 110}},
    )
    later = Event(
        event_id="b",
        type="playback_start",
        user_id="u-7",
        ts=T0 + 500,
        session_id="s-other",
        os="android",
        props={"play_id": "pl-1", "content_id": "c-9", "startup_ms": 500, "bitrate_kbps": 1},
    )
    feed = Feed()
    feed.processor.process(
        EventRecord(project=PROJECT, received_at=T0 + 600, events=[later], source="posthog"),
        Position(0, 0),
    )
    feed.processor.process(
        EventRecord(project=PROJECT, received_at=T0 + 700, events=[first], source="segment"),
        Position(0, 1),
    )
    feed.flush(FAR)
    row = feed.final_rows()["pl-1"]
    assert (row["type"], row["os"], row["source"], row["session_id"]) == (
        "playback_request",
        "horizon",
        "segment",
        "s-9",
    )
    # The first event's props as `events` flattens them; content_id is the play's.
    flat = dict(zip(row["props_keys"], row["props_values"], strict=True))  # type: ignore[call-overload]
    assert flat == {
        "play_id": "pl-1",
        "autoplay": "true",
        "layout.fov": "110",
        "content_id": "c-9",
    }
    assert dict(zip(row["props_num_keys"], row["props_num_values"], strict=True)) == {  # type: ignore[call-overload]
        "layout.fov": 110.0
    }


VR_PLAY = [
    ev("request", T0, content_id="c-1"),
    ev("start", T0 + 1_000, startup_ms=1_000, bitrate_kbps=3000),
    ev(
        "heartbeat",
        T0 + 11_000,
        played_ms=10_000,
        bitrate_kbps=3000,
        frames_rendered=900,
        frames_dropped=0,
    ),
    ev("quality_change", T0 + 11_001, from_kbps=3000, to_kbps=6000),
    ev(
        "heartbeat",
        T0 + 21_000,
        played_ms=10_000,
        bitrate_kbps=6000,
        frames_rendered=870,
        frames_dropped=30,
    ),
    ev("quality_change", T0 + 21_001, from_kbps=6000, to_kbps=1500),
    ev("quality_change", T0 + 21_002, from_kbps=1500, to_kbps=1500),
    ev("error", T0 + 22_000, code=500, fatal=False),
    ev("error", T0 + 23_000, code="E-NET", fatal=False),
    ev("error", T0 + 24_000, code=500, fatal=False),
    ev("heartbeat", T0 + 34_000, played_ms=10_000, bitrate_kbps=1500),
    ev("end", T0 + 34_100, played_ms=0),
]


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        pytest.param(
            VR_PLAY,
            {
                "downshifts": 1,
                "upshifts": 1,
                "bitrate_switches": 3,
                "error_codes": ["500", "E-NET"],
                "frames_rendered": 1_770,
                "frames_dropped": 30,
                "frames_ms": 20_000,  # the heartbeat without frames is not in it
                "scored": 1,
                # 8 / (8 + 1) x 100 = 88.89; no rebuffer: 100; 100 e^(-10 x 30/1800) = 84.65
                "startup_score": 8_889,
                "smoothness_score": 10_000,
                "quality_score": 8_465,
                "experience_score": 9_095,  # (88.889 x 100 x 84.648)^(1/3) = 90.954
            },
            id="VR play: shifts, error codes, frames, every sub-score",
        ),
        pytest.param(
            NORMAL,
            {
                "frames_ms": 0,
                "quality_score": 0,
                "startup_score": 9_091,  # 8 / 8.8 x 100
                # (100 / sqrt(1.25) + 100 e^(-10 x 500 / 23,300)) / 2 = (89.443 + 80.687) / 2
                "smoothness_score": 8_506,
                "experience_score": 8_794,  # sqrt(90.909 x 85.065): no frames, two parts
                "upshifts": 1,
                "downshifts": 0,
            },
            id="no frame data: the score of startup and smoothness",
        ),
        pytest.param(
            [
                ev("request", T0),
                ev("error", T0 + 3_000, code="E-START", fatal=True),
                ev("error", T0 + 3_001, code="E-START", fatal=True),
            ],
            {
                "scored": 1,
                "experience_score": 0,
                "startup_score": 0,
                "error_codes": ["E-START"],
            },
            id="start failure: scored, 0",
        ),
        pytest.param(
            [
                ev("start", T0, startup_ms=0, bitrate_kbps=1),
                ev("error", T0 + 1, code="E-PLAY", fatal=True),
            ],
            {"scored": 1, "experience_score": 0, "startup_score": 10_000},
            id="playback failure: sub-scores kept, the play scores 0",
        ),
        pytest.param(
            [ev("request", T0), ev("end", T0 + 4_000, played_ms=0)],
            {"scored": 0, "experience_score": 0, "error_codes": []},
            id="exit before start: not scored",
        ),
        pytest.param(
            [
                ev("start", T0, startup_ms=8_000, bitrate_kbps=1),
                ev("rebuffer", T0 + 1, duration_ms=1_000),
                ev("rebuffer", T0 + 2, duration_ms=1_000),
                ev("end", T0 + 3, played_ms=10_000),
            ],
            {
                "startup_score": 5_000,
                # (100 / sqrt(2) + 100 e^(-10 x 2,000 / 20,000)) / 2 = (70.711 + 36.788) / 2
                "smoothness_score": 5_375,
                "experience_score": 5_184,  # sqrt(50 x 53.749) = 51.841
            },
            id="slow start and two rebuffers",
        ),
        pytest.param(
            [
                ev("start", T0, startup_ms=100, bitrate_kbps=1),
                ev("heartbeat", T0 + 1, played_ms=1_000, bitrate_kbps=1, frames_rendered="x"),
                ev("quality_change", T0 + 2, from_kbps="fast", to_kbps=1),
            ],
            {"frames_ms": 0, "frames_rendered": 0, "downshifts": 0, "upshifts": 0},
            id="non-numeric frames and kbps are no data",
        ),
    ],
)
def test_qoe_fields_of_a_play(events: list[Event], expected: dict[str, object]) -> None:
    row = closed_row(*events)
    assert {key: row[key] for key in expected} == expected


def test_error_codes_keep_the_smallest_sixteen_whatever_the_order() -> None:
    errors = [ev("error", T0 + n, code=f"E-{n:02d}", fatal=False) for n in range(20)]
    expected = [f"E-{n:02d}" for n in range(16)]
    for seed in range(3):
        shuffled = random.Random(seed).sample(errors, len(errors))
        assert closed_row(ev("request", T0 - 1), *shuffled)["error_codes"] == expected
    long = closed_row(ev("error", T0, code="x" * 500, fatal=False))["error_codes"]
    assert long == ["x" * 128]


@pytest.mark.parametrize("seed", range(6), ids=lambda seed: f"shuffle {seed}")
def test_shuffled_duplicated_and_replayed_vr_traffic_gives_the_same_row(seed: int) -> None:
    in_order = closed_row(*VR_PLAY)
    assert _deliver(VR_PLAY, [1], seed) == in_order
    assert _deliver([*VR_PLAY, *VR_PLAY[3:7]], [2, 3], seed) == in_order  # duplicates
    feed = Feed()
    position = feed.send(*VR_PLAY[:6])
    feed.processor.take_state_changes()  # nothing rests: the play is open
    feed.processor.process(  # a replay of the record at its position
        EventRecord(project=PROJECT, received_at=T0 + 50_000, events=VR_PLAY[:6]), position
    )
    feed.send(*VR_PLAY[6:])
    feed.flush(FAR)
    feed.processor.take_state_changes()  # closed: at rest now
    feed.send(*random.Random(seed).sample(VR_PLAY, 5))  # late copies of a rested play
    feed.flush(FAR + 1)
    assert feed.final_rows()["pl-1"] == in_order


@pytest.mark.parametrize(
    ("function", "args", "expected"),
    [
        pytest.param(percent, (1, 8), 12.5, id="percent"),
        pytest.param(percent, (0, 0), None, id="percent of nothing"),
        pytest.param(rebuffer_frequency, (3, 120_000), 1.5, id="rebuffers per minute"),
        pytest.param(rebuffer_frequency, (0, 0), None, id="frequency without watch time"),
        pytest.param(mean, (900, 2), 450.0, id="mean rebuffer duration"),
        pytest.param(mean, (0, 0), None, id="no play rebuffered"),
        pytest.param(avg_fps, (1_800, 20_000), 90.0, id="fps"),
        pytest.param(avg_fps, (0, 0), None, id="fps without frames"),
        pytest.param(dropped_frame_pct, (990, 10), 1.0, id="dropped %"),
        pytest.param(dropped_frame_pct, (0, 0), None, id="dropped % without frames"),
        pytest.param(startup_score, (400,), 8 / 8.4 * 100, id="Mux startup: 400 ms about 95"),
        pytest.param(startup_score, (2_000,), 80.0, id="Mux startup: 2 s is 80"),
        pytest.param(startup_score, (8_000,), 50.0, id="Mux startup: 8 s is 50"),
        pytest.param(smoothness_score, (0, 0, 0), 100.0, id="no rebuffer, no watch time"),
        pytest.param(quality_score, (0, 0), None, id="quality without frames"),
        pytest.param(quality_score, (100, 0), 100.0, id="no dropped frame"),
        pytest.param(mean_score(0, 0) is None, (), True, id="mean score of nothing"),
    ],
)
def test_qoe_math_by_hand(
    function: Callable[..., object] | bool, args: tuple[int, ...], expected: object
) -> None:
    got = function(*args) if callable(function) else function
    assert got == pytest.approx(expected) if isinstance(expected, float) else got == expected


@pytest.mark.parametrize(
    ("failed", "started", "quality", "expected"),
    [
        pytest.param(True, False, None, 0.0, id="start failure"),
        pytest.param(True, True, 90.0, 0.0, id="playback failure gates the rest"),
        pytest.param(False, False, None, None, id="exit before start: no score"),
        pytest.param(False, True, None, math.sqrt(80 * 100), id="no frame data: two parts"),
        pytest.param(False, True, 12.5, (80 * 100 * 12.5) ** (1 / 3), id="three parts"),
    ],
)
def test_experience_score_edge_cases(
    failed: bool, started: bool, quality: float | None, expected: float | None
) -> None:
    got = experience_score(failed, started, 80.0, 100.0, quality)
    assert got == (pytest.approx(expected) if expected is not None else None)


def test_group_scores_without_started_plays_and_with_only_failures() -> None:
    """A group of two start failures: success 0, experience 0, startup and smoothness
    undefined (no start); a group of exits before start only: nothing scored."""
    failures = [
        closed_row(
            ev("request", T0, play_id=f"f{n}"),
            ev("error", T0 + 1, play_id=f"f{n}", code="E", fatal=True),
        )
        for n in range(2)
    ]
    scored = sum(int(str(row["scored"])) for row in failures)
    total = sum(int(str(row["experience_score"])) for row in failures)
    starts = sum(int(str(row["started"])) for row in failures)
    assert (mean_score(total, scored), mean_score(0, starts)) == (0.0, None)
    exits = closed_row(ev("request", T0), ev("end", T0 + 1, played_ms=0))
    assert mean_score(int(str(exits["experience_score"])), int(str(exits["scored"]))) is None


@pytest.mark.parametrize(
    ("content_id", "text", "number"),
    [
        pytest.param("c-1", "c-1", None, id="the play's content, kept once on the play"),
        pytest.param(7, "7", 7.0, id="a numeric content_id stays the first event's prop"),
    ],
)
def test_first_event_content_id_survives_rest(
    content_id: object, text: str, number: float | None
) -> None:
    feed = Feed()
    feed.send(
        ev("request", T0, content_id=content_id, quality="4k"), ev("end", T0 + 1, played_ms=0)
    )
    feed.flush(FAR)
    feed.processor.take_state_changes()  # at rest
    feed.send(ev("error", T0 + 2, code="late", fatal=False))  # re-emitted from rest
    feed.flush(FAR + 1)
    row = feed.final_rows()["pl-1"]
    props = dict(zip(row["props_keys"], row["props_values"], strict=True))  # type: ignore[call-overload]
    numbers = dict(zip(row["props_num_keys"], row["props_num_values"], strict=True))  # type: ignore[call-overload]
    assert props == {"play_id": "pl-1", "quality": "4k", "content_id": text}
    assert numbers.get("content_id") == number
    assert (row["error_codes"], row["type"]) == (["late"], "playback_request")


def test_a_state_from_before_the_qoe_fields_loads_and_keeps_counting() -> None:
    """A changelog value written before migration 0010's fields: they read as empty, the
    play goes on, and what arrives from then on is counted."""
    feed = Feed()
    feed.send(*VR_PLAY[:4])
    feed.flush(T0 + 30_000)
    key = play_state_key(PROJECT, "pl-1")
    value = feed.processor.take_state_changes()[key]
    assert value is not None
    state = msgspec.msgpack.decode(value)
    new_fields = {
        "first_type",
        "os",
        "source",
        "session_id",
        "first_props",
        "downshifts",
        "upshifts",
        "error_codes",
        "frames_rendered",
        "frames_dropped",
        "frames_ms",
    }
    assert new_fields <= set(state)
    old = {name: item for name, item in state.items() if name not in new_fields}

    restored = Feed(offset=feed.offset)
    restored.processor.load_state(key, msgspec.msgpack.encode(old))
    restored.send(*VR_PLAY[4:])
    restored.flush(FAR)
    restored.processor.take_state_changes()  # at rest and back: the empty type survives
    restored.send(ev("error", T0 + 99_000, code="late", fatal=False))
    restored.flush(FAR + 1)
    row = restored.final_rows()["pl-1"]
    assert (row["type"], row["os"], row["upshifts"], row["downshifts"]) == ("", "", 0, 1)
    assert row["error_codes"] == ["500", "E-NET", "late"]
    assert row["frames_rendered"] == 870  # the heartbeat before the upgrade is not in it
