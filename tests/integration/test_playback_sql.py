"""Playback SQL (SPEC §4/§5) on both engines: clickhouse-server (18.16 here) and chDB.

A seeded generator makes realistic plays and a delivery schedule with network jitter,
out-of-order and duplicated events, late events after a play closed and plays whose first
event arrives late across midnight. The PlaysProcessor's output is inserted block by block
as a sink would (so several versions and tombstones sit unmerged), and every query answer
is compared with a pure-Python computation written here from the generated events alone,
before and after the table is merged.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from common.qoe import quantile_exact
from schemas.events import Event, EventRecord
from schemas.output import TableRows
from schemas.plays import PLAY_COLUMNS
from sinks.capabilities import Capabilities
from sinks.clickhouse import ClickHouse
from sinks.migrate import migrate
from sinks.queries.playback import playback_summary, playback_timeseries
from sinks.queries.playback_concurrency import (
    NOW_WINDOW_MS,
    concurrent_viewers_now,
    peak_concurrent,
    viewers_per_minute,
)
from streams.processors.base import Position
from streams.processors.events import EventsProcessor
from streams.processors.plays import PlaysProcessor
from tests.expectations import expected_scores, qoe_metrics

PROJECT = "p-play"
MINUTE = 60_000
HOUR = 3_600_000
DAY = 86_400_000
IDLE = 300_000
# Recent on purpose: TTLs drop old rows at the first merge.
BASE = (int(time.time() * 1000) // DAY - 3) * DAY
DEVICES = ["quest3", "quest2", "pico4"]
APPS = ["3.0.0", "3.1.0", "3.2.0"]
CONTENTS = [f"c-{index}" for index in range(6)]
BITRATES = [800, 1500, 3000, 6000, 12000]
OSES = ["horizon", "picoos", "visionos"]
SOURCES = ["native", "segment", "posthog"]


@pytest.fixture
def clickhouse(clickhouse: ClickHouse) -> ClickHouse:
    """Both engines (tests/conftest.py), with the schema."""
    migrate(clickhouse)
    return clickhouse


# ---------------------------------------------------------------- generator


@dataclass
class Generated:
    plays: dict[str, list[Event]] = field(default_factory=dict)  # distinct events per play
    deliveries: list[tuple[int, int, Event]] = field(default_factory=list)  # (at, seq, event)
    midnight_day: date = date.min

    def deliver(self, at: int, event: Event) -> None:
        self.deliveries.append((at, len(self.deliveries), event))


class PlayBuilder:
    def __init__(self, generated: Generated, rng: random.Random, play_id: str, user: str) -> None:
        self.generated, self.rng, self.play_id, self.user = generated, rng, play_id, user
        self.device, self.app = rng.choice(DEVICES), rng.choice(APPS)
        self.region = rng.choice(["eu", "us", "apac"])
        self.os = rng.choice(OSES)
        self.session = f"s-{play_id}" if rng.random() < 0.8 else ""
        # Render stats come from some players only; a Quest 2 drops more frames.
        self.frames = rng.random() < 0.6
        self.drop_rate = {"quest2": 0.04, "quest3": 0.01, "pico4": 0.02}[self.device]
        self.events: list[Event] = []
        generated.plays[play_id] = self.events

    def add(self, kind: str, ts: int, **props: Any) -> Event:
        device = self.device
        if self.events and self.rng.random() < 0.1:
            device = self.rng.choice(DEVICES)  # only the first event's device counts
        event = Event(
            event_id=f"{self.play_id}-{len(self.events)}",
            type=f"playback_{kind}",
            user_id=self.user,
            ts=ts,
            session_id=self.session,
            device_model=device,
            app_version=self.app,
            os=self.os if not self.events or self.rng.random() < 0.9 else "other",
            region=self.region,
            props={"play_id": self.play_id, **props},
        )
        self.events.append(event)
        return event


def _build_play(builder: PlayBuilder, start: int, scenario: str) -> None:
    rng = builder.rng
    content = rng.choice([*CONTENTS, None])
    on_request = rng.random() < 0.7
    t = start
    request_props: dict[str, Any] = {"content_id": content} if content and on_request else {}
    if rng.random() < 0.5:
        request_props["autoplay"] = rng.random() < 0.5
        request_props["layout"] = {"fov": rng.choice([90, 110, 180])}
    builder.add("request", t, **request_props)
    if scenario == "start_failure":
        if rng.random() < 0.5:
            t += rng.randint(100, 2_000)
            builder.add("error", t, code="W-1", fatal=False)
        builder.add("error", t + rng.randint(500, 8_000), code="E-START", fatal=True)
        return
    if scenario == "exit_end":
        builder.add("end", t + rng.randint(500, 9_000), played_ms=0)
        return
    if scenario == "exit_idle":
        if rng.random() < 0.3:
            builder.add("error", t + rng.randint(100, 2_000), code="W-2", fatal=False)
        return
    startup = rng.randint(200, 6_000)
    t += startup
    bitrate = rng.choice(BITRATES)
    start_props: dict[str, Any] = {"startup_ms": startup, "bitrate_kbps": bitrate}
    if content and not on_request:
        start_props["content_id"] = content
    builder.add("start", t, **start_props)
    for _ in range(rng.randint(1, 12)):
        if rng.random() < 0.2:
            duration = rng.randint(100, 5_000)
            t += duration
            builder.add("rebuffer", t, duration_ms=duration)
        if rng.random() < 0.15:
            new = rng.choice(BITRATES)
            t += 1
            builder.add("quality_change", t, from_kbps=bitrate, to_kbps=new)
            bitrate = new
        if rng.random() < 0.08:
            t += 1
            builder.add("error", t, code=rng.choice(["W-3", "W-3", 404, "W-5"]), fatal=False)
        played = rng.randint(5_000, 10_000)
        t += played
        beat: dict[str, Any] = {"played_ms": played, "bitrate_kbps": bitrate}
        if builder.frames:
            rendered = played * rng.choice([72, 90, 120]) // 1000
            beat["frames_rendered"] = rendered
            beat["frames_dropped"] = int(rendered * builder.drop_rate * rng.random() * 2)
        builder.add("heartbeat", t, **beat)
    if scenario == "normal":
        builder.add("end", t + rng.randint(100, 5_000), played_ms=rng.randint(0, 5_000))
    elif scenario == "playback_failure":
        builder.add("error", t + rng.randint(100, 5_000), code="E-PLAY", fatal=True)
    # "idle_after_start": the player just stops sending


def generate(seed: int, n_plays: int, base: int = BASE) -> Generated:
    """Plays over the 2.5 days from `base` (a UTC midnight), and plays that begin just
    before the midnight 2 days later."""
    rng = random.Random(seed)
    generated = Generated()
    hot_minutes = [base + rng.randrange(0, 2 * DAY) // MINUTE * MINUTE for _ in range(8)]
    scenarios = ["normal", "start_failure", "exit_end", "exit_idle", "playback_failure"]
    for index in range(n_plays):
        if rng.random() < 0.3:
            start = rng.choice(hot_minutes) + rng.randrange(0, 50_000)
        else:
            start = base + rng.randrange(0, 2 * DAY + 12 * HOUR)
        scenario = rng.choices([*scenarios, "idle_after_start"], [60, 10, 8, 7, 10, 5])[0]
        builder = PlayBuilder(generated, rng, f"play-{index}", f"u-{rng.randrange(80)}")
        _build_play(builder, start, scenario)
        _schedule(generated, rng, builder.events, late_first=False)
    # Plays that begin just before midnight, whose first event arrives after the rest.
    midnight = base + 2 * DAY
    generated.midnight_day = datetime.fromtimestamp(midnight / 1000 - 1, UTC).date()
    for index in range(4):
        builder = PlayBuilder(generated, rng, f"midnight-{index}", f"u-m{index}")
        _build_play(builder, midnight - rng.randint(50, 150), "normal")
        _schedule(generated, rng, builder.events, late_first=True)
    generated.deliveries.sort()
    return generated


def _schedule(
    generated: Generated, rng: random.Random, events: list[Event], *, late_first: bool
) -> None:
    """Network jitter, late stragglers, duplicates; everything within the grace period."""
    last_ts = events[-1].ts
    offline = rng.random() < 0.05  # the whole play uploaded in one go at its end
    for position, event in enumerate(events):
        if late_first and position == 0:
            at = last_ts + rng.randint(60_000, 120_000)
        elif offline:
            at = last_ts + 2_000
        elif position and rng.random() < 0.1:
            at = event.ts + rng.randint(20_000, 40_000)  # e.g. a heartbeat before the start
        else:
            at = event.ts + rng.randint(20, 3_000)
        if 0 < position < len(events) - 1 and rng.random() < 0.04:
            at = last_ts + rng.randint(360_000, 480_000)  # after the play closed
        generated.deliver(at, event)
        roll = rng.random()
        if roll < 0.05:
            generated.deliver(at + rng.randint(0, 30_000), event)  # a client retry
        elif roll < 0.06:
            generated.deliver(last_ts + rng.randint(360_000, 480_000), event)


def source_of(user_id: str) -> str:
    """Each user's SDK sends through one endpoint family."""
    return SOURCES[sum(map(ord, user_id)) % len(SOURCES)]


def run_processor(generated: Generated) -> list[TableRows]:
    """Feed the deliveries as a runner would: records of one user's consecutive events
    (at most 4, within a second), and a flush every 15 s of arrival time whether or not
    records came in. Returns each flush's `plays` block."""
    processor = PlaysProcessor(idle_timeout_ms=IDLE)
    blocks: list[TableRows] = []
    offset = 0
    pending: list[Event] = []
    pending_at = 0

    def send() -> None:
        nonlocal offset, pending
        if pending:
            record = EventRecord(
                project=PROJECT,
                received_at=pending_at,
                events=pending,
                source=source_of(pending[0].user_id),
            )
            processor.process(record, Position(0, offset))
            offset += 1
            pending = []

    def flush(now: int) -> None:
        blocks.extend(t for t in processor.flush(now).tables if t.table == "plays" and t.rows)

    last_flush = generated.deliveries[0][0]
    for at, _, event in generated.deliveries:
        if pending and (
            event.user_id != pending[0].user_id or len(pending) == 4 or at > pending_at + 1_000
        ):
            send()
        if at >= last_flush + 15_000:
            send()
            flush(at - 1)
            last_flush = at
        pending.append(event)
        pending_at = at
    send()
    flush(pending_at + DAY)
    return blocks


@pytest.fixture(scope="module")
def generated() -> Generated:
    return generate(seed=20_261_001, n_plays=400)


@pytest.fixture(scope="module")
def blocks(generated: Generated) -> list[TableRows]:
    return run_processor(generated)


# ---------------------------------------------------------------- reference (from raw events)


@dataclass
class RefPlay:
    first_ts: int
    content_id: str
    device_model: str
    app_version: str
    started: bool
    video_start_failure: bool
    exit_before_start: bool
    playback_failure: bool
    startup_ms: int
    rebuffer_ms: int
    rebuffer_count: int
    bitrate_switches: int
    bitrate_kbps_ms: int
    heartbeat_ms: int
    watch_ms: int
    downshifts: int
    upshifts: int
    error_codes: set[str]
    frames_rendered: int
    frames_dropped: int
    frames_ms: int
    first: Event
    source: str
    # scores in hundredths; None where undefined
    experience: int | None
    startup_score: int | None
    smoothness_score: int | None
    quality_score: int | None


def reference_play(events: list[Event]) -> RefPlay:
    ordered = sorted(events, key=lambda e: (e.ts, e.event_id))
    first = ordered[0]
    content = next((e.props["content_id"] for e in ordered if e.props.get("content_id")), "")
    starts = [e for e in ordered if e.type == "playback_start"]
    fatal_times = [e.ts for e in ordered if e.type == "playback_error" and e.props["fatal"]]
    start_ts = starts[0].ts if starts else None
    failed_to_start = bool(fatal_times) and (start_ts is None or min(fatal_times) < start_ts)
    beats = [e for e in ordered if e.type == "playback_heartbeat"]
    played = sum(e.props["played_ms"] for e in beats)
    played += sum(e.props["played_ms"] for e in ordered if e.type == "playback_end")
    rebuffers = [e.props["duration_ms"] for e in ordered if e.type == "playback_rebuffer"]
    startup = starts[0].props["startup_ms"] if starts else 0
    shifts = [
        (e.props["from_kbps"], e.props["to_kbps"])
        for e in ordered
        if e.type == "playback_quality_change"
    ]
    framed = [e for e in beats if "frames_rendered" in e.props]
    rendered = sum(e.props["frames_rendered"] for e in framed)
    dropped = sum(e.props["frames_dropped"] for e in framed)
    watch = startup + played + sum(rebuffers)
    started = bool(starts)
    failed = bool(fatal_times)
    scores = expected_scores(
        started, failed, startup, len(rebuffers), sum(rebuffers), watch, rendered, dropped
    )
    return RefPlay(
        first_ts=first.ts,
        content_id=content,
        device_model=first.device_model,
        app_version=first.app_version,
        started=bool(starts),
        video_start_failure=failed_to_start,
        exit_before_start=not starts and not fatal_times,
        playback_failure=bool(starts) and bool(fatal_times) and not failed_to_start,
        startup_ms=startup,
        rebuffer_ms=sum(rebuffers),
        rebuffer_count=len(rebuffers),
        bitrate_switches=sum(e.type == "playback_quality_change" for e in ordered),
        bitrate_kbps_ms=sum(e.props["bitrate_kbps"] * e.props["played_ms"] for e in beats),
        heartbeat_ms=sum(e.props["played_ms"] for e in beats),
        watch_ms=watch,
        downshifts=sum(to < before for before, to in shifts),
        upshifts=sum(to > before for before, to in shifts),
        error_codes={str(e.props["code"]) for e in ordered if e.type == "playback_error"},
        frames_rendered=rendered,
        frames_dropped=dropped,
        frames_ms=sum(e.props["played_ms"] for e in framed),
        first=first,
        source=source_of(first.user_id),
        experience=scores[0],
        startup_score=scores[1],
        smoothness_score=scores[2],
        quality_score=scores[3],
    )


def _percentile(values: list[int], level: float) -> int | None:
    """quantileExact: sorted[floor(level * n)] (written here, independent of the code)."""
    if not values:
        return None
    return sorted(values)[min(int(level * len(values)), len(values) - 1)]


def reference_metrics(plays: list[RefPlay]) -> dict[str, Any]:
    startups = [p.startup_ms for p in plays if p.started]
    watch = sum(p.watch_ms for p in plays)
    rebuffer = sum(p.rebuffer_ms for p in plays)
    beat_ms = sum(p.heartbeat_ms for p in plays)
    return {
        "plays": len(plays),
        "started": sum(p.started for p in plays),
        "video_start_failures": sum(p.video_start_failure for p in plays),
        "exits_before_start": sum(p.exit_before_start for p in plays),
        "playback_failures": sum(p.playback_failure for p in plays),
        "startup_ms_p50": _percentile(startups, 0.5),
        "startup_ms_p95": _percentile(startups, 0.95),
        "rebuffer_ratio": rebuffer / watch if watch else None,
        "rebuffer_count": sum(p.rebuffer_count for p in plays),
        "bitrate_switches": sum(p.bitrate_switches for p in plays),
        "avg_bitrate_kbps": sum(p.bitrate_kbps_ms for p in plays) / beat_ms if beat_ms else None,
        "watch_hours": watch / 3_600_000,
        **qoe_metrics([vars(play) for play in plays]),
    }


def _day(ts: int) -> date:
    return datetime.fromtimestamp(ts / 1000, UTC).date()


def _stamp(ts: int) -> str:
    return datetime.fromtimestamp(ts / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


BUCKETS: dict[str, Callable[[int], str]] = {
    "minute": lambda ts: _stamp(ts // MINUTE * MINUTE),
    "hour": lambda ts: _stamp(ts // HOUR * HOUR),
    "day": lambda ts: _day(ts).isoformat(),
}


def reference_summary(
    plays: Iterable[RefPlay], day_from: date, day_to: date, group_by: str
) -> list[dict[str, Any]]:
    groups: dict[str, list[RefPlay]] = defaultdict(list)
    for play in plays:
        if day_from <= _day(play.first_ts) <= day_to:
            key = "all" if group_by == "none" else str(getattr(play, group_by))
            groups[key].append(play)
    if group_by == "none":
        return [{"group": "all", **reference_metrics(groups["all"])}]
    rows = [{"group": key, **reference_metrics(members)} for key, members in groups.items()]
    return sorted(rows, key=lambda row: (-row["plays"], row["group"]))


def reference_timeseries(
    plays: Iterable[RefPlay], day_from: date, day_to: date, interval: str
) -> list[dict[str, Any]]:
    buckets: dict[str, list[RefPlay]] = defaultdict(list)
    for play in plays:
        if day_from <= _day(play.first_ts) <= day_to:
            buckets[BUCKETS[interval](play.first_ts)].append(play)
    return [{"t": t, **reference_metrics(buckets[t])} for t in sorted(buckets)]


# ---------------------------------------------------------------- tests


PLAY_COLUMN_INDEX = {name: index for index, name in enumerate(PLAY_COLUMNS)}


def test_generator_covers_every_case(generated: Generated, blocks: list[TableRows]) -> None:
    plays = [reference_play(events) for events in generated.plays.values()]
    totals = reference_metrics(plays)
    for name in ("video_start_failures", "exits_before_start", "playback_failures"):
        assert totals[name] >= 5, name
    for name in ("downshifts", "upshifts"):
        assert totals[name] >= 5, name
    assert {error["code"] for error in totals["errors"]} >= {"E-START", "E-PLAY", "W-3", "404"}
    started = [play for play in plays if play.started]
    assert any(play.quality_score is not None for play in started)
    assert any(play.quality_score is None for play in started), "every play reported frames"
    assert totals["dropped_frame_pct"]
    assert totals["experience_score"]
    rows = [row for block in blocks for row in block.rows]
    deleted = PLAY_COLUMN_INDEX["deleted"]
    assert len(rows) > len(plays), "no play was re-emitted with a higher version"
    assert sum(row[deleted] for row in rows) >= 1, "no play moved to another day"
    assert len(generated.deliveries) > sum(len(events) for events in generated.plays.values())


def _insert(clickhouse: ClickHouse, blocks: list[TableRows]) -> None:
    """Insert block by block with merges stopped, so queries see every version and
    tombstone side by side until the test merges explicitly (`_merge`)."""
    clickhouse.execute("SYSTEM STOP MERGES plays")
    # A sink batches several flushes per insert; 18.16 refuses a 300th unmerged part.
    per_insert = len(blocks) // 40 + 1
    for start in range(0, len(blocks), per_insert):
        rows = [row for block in blocks[start : start + per_insert] for row in block.rows]
        clickhouse.insert("plays", PLAY_COLUMNS, rows)
    clickhouse.insert("plays", PLAY_COLUMNS, blocks[0].rows)  # a sink retry


def _merge(clickhouse: ClickHouse) -> None:
    clickhouse.execute("SYSTEM START MERGES plays")
    clickhouse.execute("OPTIMIZE TABLE plays FINAL")


def test_summary_and_timeseries_match_the_events(
    clickhouse: ClickHouse, generated: Generated, blocks: list[TableRows]
) -> None:
    _insert(clickhouse, blocks)
    plays = [reference_play(events) for events in generated.plays.values()]
    stored = clickhouse.execute("SELECT count() FROM plays")[0][0]
    assert stored > len(plays)  # unmerged versions and tombstones are really there

    first_day, last_day = _day(BASE), _day(BASE + 3 * DAY)
    ranges = [
        (first_day, last_day),
        (generated.midnight_day, generated.midnight_day),
        (generated.midnight_day + timedelta(days=1), last_day),
        (last_day + timedelta(days=1), last_day + timedelta(days=2)),
    ]
    for merged in (False, True):
        if merged:
            _merge(clickhouse)
        for day_from, day_to in ranges:
            for group_by in ("none", "content_id", "device_model", "app_version"):
                got = playback_summary(clickhouse, PROJECT, day_from, day_to, group_by)  # type: ignore[arg-type]
                want = reference_summary(plays, day_from, day_to, group_by)
                assert got == want, (merged, day_from, day_to, group_by)
            for interval in ("minute", "hour", "day"):
                got_series = playback_timeseries(clickhouse, PROJECT, day_from, day_to, interval)  # type: ignore[arg-type]
                want_series = reference_timeseries(plays, day_from, day_to, interval)
                assert got_series == want_series, (merged, day_from, day_to, interval)


def test_midnight_plays_count_once_on_their_first_events_day(
    clickhouse: ClickHouse, generated: Generated, blocks: list[TableRows]
) -> None:
    _insert(clickhouse, blocks)
    day = generated.midnight_day
    later = day + timedelta(days=1)
    tombstones = clickhouse.execute(
        "SELECT toString(day), count() FROM plays WHERE play_id LIKE 'midnight-%%' "
        "AND deleted = 1 GROUP BY day"
    )
    assert tombstones == [(later.isoformat(), 4)]
    plays = [reference_play(events) for events in generated.plays.values()]
    assert sum(_day(play.first_ts) == day for play in plays) >= 4
    for merged in (False, True):
        if merged:
            _merge(clickhouse)
        for one_day in (day, later):
            summary = playback_summary(clickhouse, PROJECT, one_day, one_day, "none")
            assert summary == reference_summary(plays, one_day, one_day, "none"), (merged, one_day)


def _recent_midnight(month_boundary: bool) -> int:
    """A recent UTC midnight: the start of a month, or the start of a day inside one."""
    today = datetime.now(UTC).date()
    if month_boundary:
        day = today.replace(day=1) if today.day > 2 else (today - timedelta(days=3)).replace(day=1)
    else:
        day = today - timedelta(days=2)
        if day.day == 1:
            day -= timedelta(days=1)
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)


@pytest.mark.parametrize("merged", [False, True], ids=["unmerged", "merged"])
@pytest.mark.parametrize("month_boundary", [False, True], ids=["same month", "across months"])
def test_play_moving_to_an_earlier_day_is_counted_once(
    clickhouse: ClickHouse, merged: bool, month_boundary: bool
) -> None:
    """Each insert holds only this play's rows, so parts have one-day min/max ranges and
    chDB's insert-time optimization sees the tombstone and the new row in one block."""
    midnight = _recent_midnight(month_boundary)

    def event(kind: str, ts: int, **props: Any) -> Event:
        return Event(f"m-{kind}", f"playback_{kind}", "u-1", ts, props={"play_id": "m-1", **props})

    processor = PlaysProcessor(idle_timeout_ms=IDLE)
    processor.process(
        EventRecord(
            project=PROJECT,
            received_at=midnight + 10_000,
            events=[
                event("start", midnight + 1_000, startup_ms=900, bitrate_kbps=1000),
                event("end", midnight + 9_000, played_ms=8_000),
            ],
        ),
        Position(0, 0),
    )
    (first,) = processor.flush(midnight + 10_000).tables
    late = event("request", midnight - 1_000, content_id="c-1")
    processor.process(
        EventRecord(project=PROJECT, received_at=midnight + 20_000, events=[late]), Position(0, 1)
    )
    (second,) = processor.flush(midnight + 20_000).tables
    assert [row[PLAY_COLUMN_INDEX["deleted"]] for row in second.rows] == [1, 0]
    clickhouse.execute("SYSTEM STOP MERGES plays")
    clickhouse.insert("plays", first.columns, first.rows)
    clickhouse.insert("plays", second.columns, second.rows)
    if merged:
        _merge(clickhouse)
    before, after = _day(midnight - 1_000), _day(midnight)
    counts = [
        playback_summary(clickhouse, PROJECT, d_from, d_to, "content_id")
        for d_from, d_to in ((before, before), (after, after), (before, after))
    ]
    assert [[(row["group"], row["plays"]) for row in rows] for rows in counts] == [
        [("c-1", 1)],
        [],
        [("c-1", 1)],
    ]
    series = playback_timeseries(clickhouse, PROJECT, before, after, "day")
    assert [(point["t"], point["plays"]) for point in series] == [(before.isoformat(), 1)]


def test_quantile_exact_semantics_match_the_engine(clickhouse: ClickHouse) -> None:
    rng = random.Random(7)
    for size in [*range(1, 25), 40, 99, 100, 101]:
        values = [rng.randrange(0, 10_000) for _ in range(size)]
        ((got,),) = clickhouse.execute(
            "SELECT quantilesExact(0.5, 0.95)(x) FROM (SELECT arrayJoin(%(values)s) AS x)",
            {"values": values},
        )
        assert list(got) == [quantile_exact(values, 0.5), quantile_exact(values, 0.95)], size


def test_empty_range_and_hostile_parameters(
    clickhouse: ClickHouse, blocks: list[TableRows]
) -> None:
    _insert(clickhouse, blocks)
    today = datetime.now(UTC).date()
    (row,) = playback_summary(clickhouse, "p-play' OR '1'='1", today - timedelta(days=9), today)
    assert row == {
        "group": "all",
        "plays": 0,
        "started": 0,
        "video_start_failures": 0,
        "exits_before_start": 0,
        "playback_failures": 0,
        "startup_ms_p50": None,
        "startup_ms_p95": None,
        "rebuffer_ratio": None,
        "rebuffer_count": 0,
        "bitrate_switches": 0,
        "avg_bitrate_kbps": None,
        "watch_hours": 0.0,
        "video_start_failure_pct": None,
        "exit_before_start_pct": None,
        "playback_failure_pct": None,
        "startup_ms_p90": None,
        "startup_ms_p99": None,
        "rebuffer_frequency": None,
        "rebuffer_duration_ms_avg": None,
        "downshifts": 0,
        "upshifts": 0,
        "downshift_pct": None,
        "errors": [],
        "avg_fps": None,
        "dropped_frame_pct": None,
        "experience_score": None,
        "success_score": None,
        "startup_score": None,
        "smoothness_score": None,
        "quality_score": None,
    }
    assert playback_timeseries(clickhouse, "nobody", today, today, "minute") == []


def test_plays_table_ttl_follows_server_version(clickhouse: ClickHouse) -> None:
    create = str(clickhouse.execute("SHOW CREATE TABLE plays")[0][0])
    assert "ReplacingMergeTree" in create
    assert ("TTL" in create) is Capabilities(clickhouse.server_version()).supports_ttl


@pytest.mark.parametrize(
    ("call", "message"),
    [
        pytest.param(
            lambda: playback_summary(None, "p", date(2026, 1, 2), date(2026, 1, 1)),  # type: ignore[arg-type]
            "after",
            id="from after to",
        ),
        pytest.param(
            lambda: playback_summary(None, "p", date(2026, 1, 1), date(2026, 1, 1), "region"),  # type: ignore[arg-type]
            "group_by",
            id="group_by outside the whitelist",
        ),
        pytest.param(
            lambda: playback_timeseries(None, "p", date(2026, 1, 1), date(2026, 1, 1), "week"),  # type: ignore[arg-type]
            "interval",
            id="unknown interval",
        ),
    ],
)
def test_bad_arguments_are_refused_before_any_sql(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


# ---------------------------------------------------------------- concurrent viewers


def reference_viewers(generated: Generated) -> dict[int, int]:
    """minute → plays whose [first event, last event] covers it, minute by minute from
    the generated events."""
    counts: dict[int, int] = defaultdict(int)
    for events in generated.plays.values():
        first, last = min(e.ts for e in events), max(e.ts for e in events)
        for minute in range(first // MINUTE, last // MINUTE + 1):
            counts[minute * MINUTE] += 1
    return dict(counts)


def test_concurrent_viewers_match_the_events(
    clickhouse: ClickHouse, generated: Generated, blocks: list[TableRows]
) -> None:
    _insert(clickhouse, blocks)
    spans = [(min(e.ts for e in v), max(e.ts for e in v)) for v in generated.plays.values()]
    assert any(first // DAY < last // DAY for first, last in spans)  # across midnight
    assert sum(first // MINUTE < last // MINUTE for first, last in spans) > 100
    viewers = reference_viewers(generated)
    first_day, last_day = _day(BASE), _day(BASE + 3 * DAY)
    ranges = [
        (first_day, last_day),
        (generated.midnight_day, generated.midnight_day),
        (generated.midnight_day + timedelta(days=1), generated.midnight_day + timedelta(days=1)),
        (last_day + timedelta(days=1), last_day + timedelta(days=2)),
    ]
    for merged in (False, True):
        if merged:
            _merge(clickhouse)
        for day_from, day_to in ranges:
            want = {m: n for m, n in viewers.items() if day_from <= _day(m) <= day_to}
            got = viewers_per_minute(clickhouse, PROJECT, day_from, day_to)
            assert got == want, (merged, day_from, day_to)
            for interval, size in (("minute", MINUTE), ("hour", HOUR), ("day", DAY)):
                peaks: dict[int, int] = {}
                for minute, n in want.items():
                    peaks[minute // size * size] = max(peaks.get(minute // size * size, 0), n)
                expected = [
                    {
                        "t": _day(t).isoformat() if interval == "day" else _stamp(t),
                        "peak_concurrent": peaks[t],
                    }
                    for t in sorted(peaks)
                ]
                got_peaks = peak_concurrent(clickhouse, PROJECT, day_from, day_to, interval)  # type: ignore[arg-type]
                assert got_peaks == expected, (merged, day_from, day_to, interval)
    # The day after midnight counts the plays that began the evening before.
    after = generated.midnight_day + timedelta(days=1)
    midnight_ms = (BASE // DAY) * DAY + (after - _day(BASE)).days * DAY
    assert viewers_per_minute(clickhouse, PROJECT, after, after).get(midnight_ms, 0) > sum(
        _day(first) == after and first // MINUTE == midnight_ms // MINUTE for first, _ in spans
    )


def test_concurrent_viewers_now_are_open_plays_seen_in_the_last_minute(
    clickhouse: ClickHouse,
) -> None:
    now = BASE + 3 * DAY + 30_000  # half a minute after a midnight: yesterday is read too

    def play(play_id: str, *steps: tuple[str, int, dict[str, Any]]) -> list[Event]:
        return [
            Event(
                event_id=f"{play_id}-{n}",
                type=f"playback_{kind}",
                user_id="u-now",
                ts=now - ago,
                device_model="quest3",
                props={"play_id": play_id, **props},
            )
            for n, (kind, ago, props) in enumerate(steps)
        ]

    events = [
        *play("watching", ("request", 200_000, {}), ("heartbeat", 10_000, {"played_ms": 1})),
        *play("since-yesterday", ("start", 40_000, {}), ("heartbeat", 35_000, {})),
        *play("just-started", ("request", 0, {})),
        *play("silent", ("request", 200_000, {}), ("heartbeat", NOW_WINDOW_MS + 1, {})),
        *play("ended", ("start", 50_000, {}), ("end", 20_000, {"played_ms": 1})),
        *play("ended-earlier", ("end", 600_000, {}), ("heartbeat", 5_000, {})),
        *play("failed", ("start", 50_000, {}), ("error", 5_000, {"code": "E", "fatal": True})),
        *play("warned", ("start", 50_000, {}), ("error", 5_000, {"code": "W", "fatal": False})),
        *play("future", ("request", -1, {})),
        Event(event_id="no-play", type="playback_request", user_id="u", ts=now, props={}),
        Event(event_id="gesture", type="gesture", user_id="u", ts=now, props={"play_id": "g"}),
    ]
    processor = EventsProcessor()
    # Every event twice, as replays and retries store them.
    for offset, copy in enumerate((events, events)):
        record = EventRecord(project=PROJECT, received_at=now, events=copy)
        processor.process(record, Position(0, offset))
    (table,) = processor.flush(now).tables
    clickhouse.insert(table.table, table.columns, table.rows)
    # watching, since-yesterday, just-started, warned
    assert concurrent_viewers_now(clickhouse, PROJECT, now) == 4
    assert concurrent_viewers_now(clickhouse, "other", now) == 0
    assert concurrent_viewers_now(clickhouse, PROJECT, now + 600_000) == 0
