"""PlayTally: the live QoE counters' increments from the plays processor's rows, each play
counted once however often its row is written (streams/processors/plays/tally.py)."""

from __future__ import annotations

import random

import pytest
from prometheus_client import REGISTRY

from schemas.output import ProcessorOutput, TableRows
from schemas.plays import PLAY_COLUMNS, PLAYS_TABLE
from streams.play_metrics import PlayMetrics
from streams.processors.plays.tally import OTHER_DEVICE, TALLIED, PlayIncrements, PlayTally
from tests.unit.test_plays import T0, Feed, ev

HORIZON = 600_000


def totals(increments: PlayIncrements, device: str = "quest3") -> dict[str, int]:
    return dict(zip(TALLIED, increments.by_device.get(device, [0] * len(TALLIED)), strict=True))


def added(tally: PlayTally, output: ProcessorOutput, now_ms: int = T0) -> PlayIncrements:
    return tally.add(output.tables, now_ms)


def zero(**counts: int) -> dict[str, int]:
    return {name: counts.get(name, 0) for name in TALLIED}


# A: started, two heartbeats with frames, a rebuffer, a downshift and an upshift, ended.
PLAY_A = [
    ev("request", T0, "A", content_id="c-1"),
    ev("start", T0 + 1_000, "A", startup_ms=800, bitrate_kbps=4000),
    ev("heartbeat", T0 + 11_000, "A", played_ms=10_000, frames_rendered=700, frames_dropped=20),
    ev("rebuffer", T0 + 12_000, "A", duration_ms=500),
    ev("quality_change", T0 + 13_000, "A", from_kbps=4000, to_kbps=2000),
    ev("quality_change", T0 + 14_000, "A", from_kbps=2000, to_kbps=3000),
    ev("heartbeat", T0 + 18_000, "A", played_ms=5_000, frames_rendered=350, frames_dropped=5),
    ev("end", T0 + 19_000, "A", played_ms=0),
]
# B: a fatal error before start; C: ended without a start; D: started, then a fatal error.
PLAY_B = [ev("request", T0, "B"), ev("error", T0 + 2_000, "B", code="E_DRM", fatal=True)]
PLAY_C = [ev("request", T0, "C"), ev("end", T0 + 3_000, "C", played_ms=0)]
PLAY_D = [
    ev("start", T0 + 30_000, "D", startup_ms=1_200, bitrate_kbps=3000),
    ev("heartbeat", T0 + 33_000, "D", played_ms=3_000, bitrate_kbps=3000),
    ev("error", T0 + 34_000, "D", code="E_NET", fatal=True),
]


def test_closed_plays_counted_by_hand() -> None:
    feed = Feed()
    feed.send(*PLAY_A, *PLAY_B, *PLAY_C, *PLAY_D)
    increments = added(PlayTally(horizon_ms=HORIZON), feed.flush(T0 + 40_000))
    assert totals(increments) == {
        "plays": 4,
        "started": 2,  # A, D
        "video_start_failures": 1,  # B
        "exits_before_start": 1,  # C
        "playback_failures": 1,  # D
        "rebuffers": 1,
        "rebuffer_ms": 500,
        "watch_ms": (800 + 15_000 + 500) + (1_200 + 3_000),
        "frames_rendered": 1_050,
        "frames_dropped": 25,
        "frames_ms": 15_000,  # only A's heartbeats report frames
        "downshifts": 1,
        "upshifts": 1,
        "downshifted_plays": 1,
    }
    assert sorted(increments.startups_ms) == [800, 1_200]
    # B and C watched nothing: no ratio for them.
    assert sorted(increments.rebuffer_ratios) == [0.0, 500 / 16_300]


def test_a_play_written_again_adds_only_what_the_late_event_adds() -> None:
    feed, tally = Feed(), PlayTally(horizon_ms=HORIZON)
    feed.send(*PLAY_A)
    first = added(tally, feed.flush(T0 + 30_000))
    late = ev(
        "heartbeat", T0 + 15_000, "A", played_ms=2_000, frames_rendered=140, frames_dropped=1
    )
    feed.send(late, received_at=T0 + 200_000)
    output = feed.flush(T0 + 200_000)
    assert len(feed.rows(output)) == 1  # the play's row, written again
    second = added(tally, output, T0 + 200_000)
    assert totals(first)["plays"] == 1
    assert totals(second) == zero(
        watch_ms=2_000, frames_rendered=140, frames_dropped=1, frames_ms=2_000
    )
    assert (second.startups_ms, second.rebuffer_ratios) == ([], [])


def test_a_replayed_row_adds_nothing() -> None:
    feed, tally = Feed(), PlayTally(horizon_ms=HORIZON)
    feed.send(*PLAY_D)
    output = feed.flush(T0 + 40_000)
    assert totals(added(tally, output))["plays"] == 1
    again = added(tally, output, T0 + 1_000)  # the same output observed again
    assert again.by_device == {}
    assert (again.startups_ms, again.rebuffer_ratios) == ([], [])


def test_a_tombstone_is_not_a_play() -> None:
    midnight = (T0 // 86_400_000 + 1) * 86_400_000
    feed, tally = Feed(), PlayTally(horizon_ms=HORIZON)
    feed.send(ev("start", midnight + 1_000, startup_ms=1_000, bitrate_kbps=1), received_at=midnight)
    feed.send(ev("end", midnight + 5_000, played_ms=4_000))
    added(tally, feed.flush(midnight + 10_000), midnight)
    feed.send(ev("request", midnight - 2_000, content_id="c-1"), received_at=midnight + 20_000)
    output = feed.flush(midnight + 20_000)
    assert [row["deleted"] for row in feed.rows(output)] == [1, 0]
    assert added(tally, output, midnight + 20_000).by_device == {}  # same play, nothing new


def test_an_outcome_revised_by_a_late_start_counts_both_and_observes_startup_once() -> None:
    # Counters only rise: the exit before start counted at the first close stays counted.
    feed, tally = Feed(), PlayTally(horizon_ms=HORIZON)
    feed.send(ev("request", T0, "E"), ev("end", T0 + 9_000, "E", played_ms=4_000))
    first = added(tally, feed.flush(T0 + 10_000))
    feed.send(ev("start", T0 + 5_000, "E", startup_ms=700), received_at=T0 + 20_000)
    second = added(tally, feed.flush(T0 + 20_000), T0 + 20_000)
    assert totals(first) == zero(plays=1, exits_before_start=1, watch_ms=4_000)
    assert totals(second) == zero(started=1, watch_ms=700)
    assert (first.startups_ms, second.startups_ms) == ([], [700])
    assert (first.rebuffer_ratios, second.rebuffer_ratios) == ([0.0], [])


def test_a_play_is_forgotten_after_the_horizon_and_then_counts_again() -> None:
    feed, tally = Feed(), PlayTally(horizon_ms=HORIZON)
    feed.send(*PLAY_C)
    output = feed.flush(T0 + 10_000)
    added(tally, output, T0)
    assert added(tally, output, T0 + HORIZON).by_device == {}  # within the horizon
    assert tally.remembered() == 1
    # The replay at T0 + HORIZON refreshed the play's time: it is kept until then + HORIZON.
    assert totals(added(tally, ProcessorOutput(), T0 + 2 * HORIZON + 1))["plays"] == 0
    assert tally.remembered() == 0
    assert totals(added(tally, output, T0 + 2 * HORIZON + 2))["plays"] == 1


def test_at_most_remember_at_most_plays_are_remembered_oldest_first() -> None:
    feed, tally = Feed(), PlayTally(horizon_ms=HORIZON, remember_at_most=2)
    outputs = []
    for play in "FGH":
        feed.send(ev("request", T0, play), ev("end", T0 + 1_000, play, played_ms=0))
        outputs.append(feed.flush(T0 + 2_000))
    for output in outputs:
        added(tally, output)
    assert tally.remembered() == 2
    assert totals(added(tally, outputs[2]))["plays"] == 0  # H is remembered
    assert totals(added(tally, outputs[0]))["plays"] == 1  # F was forgotten first


def _row(play_id: str, device_model: str) -> tuple[object, ...]:
    feed = Feed()
    feed.send(ev("request", T0, play_id), ev("end", T0 + 1_000, play_id, played_ms=0))
    (table,) = feed.flush(T0 + 2_000).tables
    (row,) = table.rows
    column = PLAY_COLUMNS.index("device_model")
    return (*row[:column], device_model, *row[column + 1 :])


def test_device_labels_are_bounded() -> None:
    tally = PlayTally(horizon_ms=HORIZON, max_devices=2)
    rows = [_row("P1", "quest3"), _row("P2", "quest2"), _row("P3", "pico4"), _row("P4", "")]
    rows.append(_row("P5", "quest3"))
    increments = tally.add([TableRows(PLAYS_TABLE, PLAY_COLUMNS, rows)], T0)
    plays = {device: counts[0] for device, counts in increments.by_device.items()}
    assert plays == {"quest3": 2, "quest2": 1, OTHER_DEVICE: 1, "unknown": 1}


def test_other_tables_are_ignored() -> None:
    (row,) = [_row("P1", "quest3")]
    other = TableRows("events", PLAY_COLUMNS, [row])
    assert PlayTally(horizon_ms=HORIZON).add([other], T0).by_device == {}


@pytest.mark.parametrize("seed", range(5))
def test_batches_in_any_order_count_each_play_once(seed: int) -> None:
    # Plays whose events only add (no outcome revised): the tally over every written row
    # equals the sums over the final rows, however the events were batched and flushed.
    rng = random.Random(seed)
    events = [event for play in (PLAY_A, PLAY_D) for event in play]
    events += [
        ev("heartbeat", T0 + 20_000 + n, "A", played_ms=100, frames_rendered=7) for n in range(5)
    ]
    head, tail = events[:2] + events[8:9], events[2:8] + events[9:]
    rng.shuffle(tail)  # the starts first: later events never revise an outcome
    feed, tally = Feed(), PlayTally(horizon_ms=HORIZON)
    sums = [0] * len(TALLIED)
    received = T0 + 40_000
    feed.send(*head, received_at=received)
    while tail:
        count = rng.randint(1, 4)
        batch, tail = tail[:count], tail[count:]
        received += 1_000
        feed.send(*batch, received_at=received)
        increments = added(tally, feed.flush(received + 400_000), received)
        for device_sums in increments.by_device.values():
            sums = [a + b for a, b in zip(sums, device_sums, strict=True)]
    final = feed.final_rows()
    assert dict(zip(TALLIED, sums, strict=True)) == {
        name: sum(_final_total(row, name) for row in final.values()) for name in TALLIED
    }


def _final_total(row: dict[str, object], name: str) -> int:
    column = {
        "plays": None,
        "video_start_failures": "video_start_failure",
        "exits_before_start": "exit_before_start",
        "playback_failures": "playback_failure",
        "rebuffers": "rebuffer_count",
        "downshifted_plays": None,
    }.get(name, name)
    if name == "plays":
        return 1
    if name == "downshifted_plays":
        return int(bool(row["started"] and row["downshifts"]))
    assert column is not None
    value = row[column]
    assert isinstance(value, int)
    return value


def test_play_metrics_adds_the_increments_in_seconds_and_hours() -> None:
    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    device = {"device_model": "quest3"}
    before = {
        "plays": value("video_plays_total", **device),
        "watch": value("video_watch_seconds_total", **device),
        "rebuffer": value("video_rebuffer_seconds_total", **device),
        "down": value("video_quality_shifts_total", **device, direction="down"),
        "hours": value("video_hours_watched_total"),
        "startups": value("video_playback_quality_count", measure="startup_seconds"),
    }
    feed = Feed()
    feed.send(*PLAY_A)
    PlayMetrics(horizon_ms=HORIZON, clock=lambda: T0 / 1000).observe(feed.flush(T0 + 30_000))
    watch_ms = 800 + 15_000 + 500
    assert value("video_plays_total", **device) - before["plays"] == 1
    watched = value("video_watch_seconds_total", **device) - before["watch"]
    assert watched == pytest.approx(watch_ms / 1000)
    rebuffered = value("video_rebuffer_seconds_total", **device) - before["rebuffer"]
    assert rebuffered == pytest.approx(0.5)
    assert value("video_quality_shifts_total", **device, direction="down") - before["down"] == 1
    assert value("video_hours_watched_total") - before["hours"] == pytest.approx(
        watch_ms / 3_600_000
    )
    startups = value("video_playback_quality_count", measure="startup_seconds")
    assert startups - before["startups"] == 1
