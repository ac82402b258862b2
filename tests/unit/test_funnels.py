"""Funnels: definitions and config loading, prop matching, the live FunnelsProcessor
against an exhaustive reference of SPEC §4, and the pure parts of the funnel queries."""

from __future__ import annotations

import itertools
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import msgspec
import pytest

from schemas.events import Event, EventRecord
from schemas.funnels import (
    DAY_MS,
    MAX_WINDOW_SECONDS,
    PROGRESS_COLUMNS,
    PROGRESS_TABLE,
    FunnelConfigError,
    FunnelDefinition,
    FunnelStep,
    load_funnels,
    parse_funnels,
)
from sinks.queries.funnel_insight import funnel_insight_sql
from sinks.queries.funnels import day_start_ms, step_results
from sinks.queries.properties import Slice
from streams.processors.base import Position
from streams.processors.funnels import FunnelsProcessor, state_key

REPO = Path(__file__).resolve().parents[2]
DAY0 = date(2026, 3, 2)
T0 = day_start_ms(DAY0) + 12 * 3_600_000  # noon on DAY0
S = 1000  # one second in ms


# -- the reference: SPEC §4 by exhaustive search ------------------------------------------


@dataclass(frozen=True)
class RawEvent:
    """An event as stored: what both the reference and the SQL see."""

    user_id: str
    event_id: str
    ts: int
    type: str
    props: dict[str, Any] = field(default_factory=dict)
    project: str = "p1"


_ABSENT = object()


def _keys_in_document_order(node: Any) -> Iterable[tuple[str, Any]]:
    """Every (key, value) of every object in a decoded JSON document, in the order the
    keys appear in its text: an object's key, then everything inside its value, then the
    next key."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from _keys_in_document_order(value)
    elif isinstance(node, list):
        for item in node:
            yield from _keys_in_document_order(item)


def _typed_equal(found: Any, wanted: Any) -> bool:
    """JSON equality by type: a bool only equals that bool, a string that string, a number
    any number of the same value (1 equals 1.0); null, arrays and objects equal nothing."""
    if type(wanted) is bool:
        return type(found) is bool and found == wanted
    if type(wanted) is str:
        return type(found) is str and found == wanted
    return type(found) in (int, float) and found == wanted


def reference_matches(step: FunnelStep, event_type: str, props: dict[str, Any]) -> bool:
    """SPEC §4's step, read from the definition alone (not `FunnelStep.matches`): the event
    type, and for every `where` key the first occurrence of that key at any depth of the
    props, in document order, equal to the filter value."""
    if event_type != step.event:
        return False
    for key, wanted in step.where.items():
        found = next((v for k, v in _keys_in_document_order(props) if k == key), _ABSENT)
        if found is _ABSENT or not _typed_equal(found, wanted):
            return False
    return True


def brute_force_levels(
    events: Iterable[RawEvent],
    steps: Sequence[FunnelStep],
    window_ms: int,
    day_from: date,
    day_to: date,
    project: str = "p1",
) -> dict[str, int]:
    """Furthest step per user by trying every chain: events matching s1..sk at
    t1 ≤ … ≤ tk, tk - t1 ≤ W, t1 on a day in [from, to]; events deduplicated on
    (project, event_id) (first copy wins); one event may fill several steps."""
    unique: dict[str, RawEvent] = {}
    for event in events:
        if event.project == project:
            unique.setdefault(event.event_id, event)
    by_user: dict[str, list[RawEvent]] = defaultdict(list)
    for event in unique.values():
        by_user[event.user_id].append(event)
    low, high = day_start_ms(day_from), day_start_ms(day_to) + DAY_MS
    levels = {}
    for user, user_events in by_user.items():
        matching = [
            [e.ts for e in user_events if reference_matches(step, e.type, e.props)]
            for step in steps
        ]

        @cache
        def extend(next_step: int, previous: int, first: int, matching: Any = matching) -> int:
            if next_step == len(steps):
                return 0
            return max(
                (
                    1 + extend(next_step + 1, ts, first)
                    for ts in matching[next_step]
                    if previous <= ts <= first + window_ms
                ),
                default=0,
            )

        level = max(
            (1 + extend(1, first, first) for first in matching[0] if low <= first < high),
            default=0,
        )
        if level:
            levels[user] = level
    return levels


def levels_from_progress(
    rows: Iterable[Sequence[Any]], funnel: str, day_from: date, day_to: date, project: str = "p1"
) -> dict[str, int]:
    """What predefined_funnel computes from funnel_progress rows, per user."""
    levels: dict[str, int] = {}
    for row in rows:
        values = dict(zip(PROGRESS_COLUMNS, row, strict=True))
        if values["project"] != project or values["funnel"] != funnel:
            continue
        if day_from <= values["start_day"] <= day_to:
            user = values["user_id"]
            levels[user] = max(levels.get(user, 0), values["level"])
    return levels


# -- feeding the processor ----------------------------------------------------------------


class Feeder:
    """Plays records into a processor like a runner: positions per partition, a flush per
    batch, output rows collected."""

    def __init__(self, processor: FunnelsProcessor, partitions: int = 1) -> None:
        self.processor = processor
        self.partitions = partitions
        self.offsets = [0] * partitions
        self.rows: list[tuple[Any, ...]] = []
        self.sent: list[tuple[EventRecord, Position]] = []

    def partition_of(self, user_id: str) -> int:
        return sum(user_id.encode()) % self.partitions

    def send(self, events: Sequence[RawEvent], received_at: int | None = None) -> Position:
        """One record (all events of one project and user)."""
        partition = self.partition_of(events[0].user_id)
        position = Position(partition, self.offsets[partition])
        self.offsets[partition] += 1
        record = EventRecord(
            project=events[0].project,
            received_at=received_at if received_at is not None else max(e.ts for e in events),
            events=[
                Event(event_id=e.event_id, type=e.type, user_id=e.user_id, ts=e.ts, props=e.props)
                for e in events
            ],
        )
        self.processor.process(record, position)
        self.sent.append((record, position))
        return position

    def replay(self, index: int) -> None:
        record, position = self.sent[index]
        self.processor.process(record, position)

    def flush(self) -> list[tuple[Any, ...]]:
        output = self.processor.flush(0)
        rows = [row for table in output.tables for row in table.rows]
        for table in output.tables:
            assert (table.table, table.columns) == (PROGRESS_TABLE, PROGRESS_COLUMNS)
        self.rows.extend(rows)
        return rows


_counter = itertools.count()


def ev(
    offset_ms: int, type_: str, props: dict[str, Any] | None = None, user: str = "u1"
) -> RawEvent:
    return RawEvent(user, f"e{next(_counter)}", T0 + offset_ms, type_, props or {})


ABC = FunnelDefinition(
    "abc", [FunnelStep("a"), FunnelStep("b"), FunnelStep("c")], window_seconds=60
)


def run_batches(
    definition: FunnelDefinition, batches: Sequence[Sequence[RawEvent]]
) -> tuple[Feeder, dict[str, int]]:
    feeder = Feeder(FunnelsProcessor([definition]))
    for batch in batches:
        for event in batch:
            feeder.send([event])
        feeder.flush()
    return feeder, levels_from_progress(feeder.rows, definition.name, DAY0, DAY0)


# -- scenarios ------------------------------------------------------------------------------

A0, B10, C20 = ev(0, "a"), ev(10 * S, "b"), ev(20 * S, "c")
PINCH = FunnelDefinition(
    "pinch",
    [
        FunnelStep("gesture", {"gesture": "pinch"}),
        FunnelStep("purchase", {"amount": 20, "trial": False}),
    ],
    window_seconds=60,
)
PAGE_TWICE = FunnelDefinition(
    "pages", [FunnelStep("page_view"), FunnelStep("page_view")], window_seconds=60
)

SCENARIOS = [
    pytest.param(ABC, [[A0, B10, C20]], 3, id="in order"),
    pytest.param(ABC, [[C20, A0, B10]], 3, id="out of order arrival"),
    pytest.param(ABC, [[C20], [B10], [A0]], 3, id="out of order across flushes"),
    pytest.param(
        ABC, [[A0, ev(30 * S, "b"), ev(61 * S, "c")]], 2, id="last step beyond the window"
    ),
    pytest.param(ABC, [[A0, ev(30 * S, "b"), ev(60 * S, "c")]], 3, id="window end is inclusive"),
    pytest.param(ABC, [[A0, ev(61 * S, "b")]], 1, id="second step beyond the window"),
    pytest.param(ABC, [[ev(5, "c"), ev(5, "b"), ev(5, "a")]], 3, id="equal timestamps chain"),
    pytest.param(ABC, [[ev(5, "b"), ev(4, "a"), ev(3, "c")]], 2, id="a step before the previous"),
    pytest.param(
        ABC,
        [[A0, ev(1, "x"), ev(2, "a"), B10, ev(11 * S, "b"), ev(12 * S, "x"), C20]],
        3,
        id="events between steps",
    ),
    pytest.param(
        ABC,
        [[ev(0, "a"), ev(50 * S, "a"), ev(55 * S, "b"), ev(100 * S, "c")]],
        3,
        id="a later repeat of step 1 completes",
    ),
    pytest.param(PAGE_TWICE, [[ev(0, "page_view")]], 2, id="one event fills two steps"),
    pytest.param(
        PINCH,
        [
            [
                ev(0, "gesture", {"gesture": "pinch"}),
                ev(S, "purchase", {"amount": 20.0, "trial": False}),
            ]
        ],
        2,
        id="prop filters match (20 == 20.0)",
    ),
    pytest.param(
        PINCH,
        [
            [
                ev(0, "gesture", {"gesture": "swipe"}),
                ev(S, "gesture", {"gesture": "pinch"}),
                ev(2 * S, "purchase", {"amount": "20", "trial": False}),
                ev(3 * S, "purchase", {"amount": 20, "trial": 0}),
                ev(4 * S, "purchase", {"amount": 20}),
            ]
        ],
        1,
        id="prop filters are typed",
    ),
    pytest.param(
        PINCH,
        [[ev(0, "gesture", {"meta": {"gesture": "swipe"}, "gesture": "pinch"})]],
        0,
        id="first occurrence of a key wins, nested included",
    ),
    pytest.param(ABC, [[A0, B10, C20], [A0, B10, C20, B10]], 3, id="duplicates"),
]


@pytest.mark.parametrize(("definition", "batches", "expected"), SCENARIOS)
def test_processor_matches_reference(
    definition: FunnelDefinition, batches: list[list[RawEvent]], expected: int
) -> None:
    _, levels = run_batches(definition, batches)
    all_events = [event for batch in batches for event in batch]
    reference = brute_force_levels(all_events, definition.steps, definition.window_ms, DAY0, DAY0)
    assert levels.get("u1", 0) == reference.get("u1", 0) == expected


def test_duplicates_emit_no_new_rows() -> None:
    feeder = Feeder(FunnelsProcessor([ABC]))
    for event in (A0, B10, C20):
        feeder.send([event])
    assert len(feeder.flush()) == 1
    for event in (A0, B10, C20):
        feeder.send([event])  # re-sent by a client: new positions, same events
    assert feeder.flush() == []


def test_replayed_positions_are_skipped() -> None:
    processor = FunnelsProcessor([ABC])
    feeder = Feeder(processor)
    feeder.send([A0])
    feeder.send([B10])
    feeder.flush()
    # A record at or before the applied position is a replay; even one that (as cannot
    # happen on a real bus) carries new content is ignored.
    processor.process(
        EventRecord(project="p1", received_at=T0, events=[_event(C20)]), Position(0, 1)
    )
    assert feeder.flush() == []
    # The same record on another partition (after a repartition) is applied.
    processor.process(
        EventRecord(project="p1", received_at=T0, events=[_event(C20)]), Position(1, 0)
    )
    assert [row[-1] for row in feeder.flush()] == [3]


def _event(raw: RawEvent) -> Event:
    return Event(event_id=raw.event_id, type=raw.type, user_id=raw.user_id, ts=raw.ts)


def test_late_event_completes_a_chain_and_rows_only_grow() -> None:
    feeder = Feeder(FunnelsProcessor([ABC]))
    feeder.send([A0])
    feeder.send([C20])
    first = feeder.flush()
    feeder.send([B10], received_at=T0 + 20 * DAY_MS)  # 20 days late: still accepted
    late = feeder.flush()
    assert [row[-1] for row in first] == [1]
    assert [row[-1] for row in late] == [3]
    assert late[0][:5] == ("p1", "abc", ABC.fingerprint, "u1", DAY0)


def test_chain_whose_first_step_is_before_from_is_not_counted() -> None:
    midnight = day_start_ms(DAY0 + timedelta(days=1))
    events = [
        RawEvent("u1", "x1", midnight - 10 * S, "a"),  # t1 on DAY0
        RawEvent("u1", "x2", midnight + 5 * S, "b"),
        RawEvent("u1", "x3", midnight + 7 * S, "a"),  # t1 on DAY0+1, but b came before
        RawEvent("u1", "x4", midnight + 10 * S, "c"),
    ]
    feeder = Feeder(FunnelsProcessor([ABC]))
    for event in events:
        feeder.send([event])
    feeder.flush()
    day1 = DAY0 + timedelta(days=1)
    for day_from, day_to, expected in ((day1, day1, 1), (DAY0, day1, 3), (DAY0, DAY0, 3)):
        reference = brute_force_levels(events, ABC.steps, ABC.window_ms, day_from, day_to)
        assert levels_from_progress(feeder.rows, "abc", day_from, day_to) == reference
        assert reference == {"u1": expected}


def test_state_round_trip_mid_stream() -> None:
    definitions = [ABC, PINCH, PAGE_TWICE]
    rnd = random.Random(3)
    events = random_events(rnd, users=30, count=600, types=("a", "b", "c", "page_view", "x"))
    rnd.shuffle(events)
    whole = Feeder(FunnelsProcessor(definitions))
    for event in events:
        whole.send([event])
    whole.flush()

    first = FunnelsProcessor(definitions)
    feeder = Feeder(first)
    for event in events[:300]:
        feeder.send([event])
    feeder.flush()
    stored = {key: value for key, value in first.take_state_changes().items() if value}
    restarted = FunnelsProcessor(definitions)
    for key, value in stored.items():
        restarted.load_state(key, value)
    feeder.processor = restarted
    for index in range(280, 300):
        feeder.replay(index)  # uncommitted records redelivered after the restart
    for event in events[300:]:
        feeder.send([event])
    feeder.flush()
    for definition in definitions:
        assert levels_from_progress(feeder.rows, definition.name, DAY0, DAY0) == (
            levels_from_progress(whole.rows, definition.name, DAY0, DAY0)
        )


def random_events(
    rnd: random.Random,
    users: int,
    count: int,
    types: Sequence[str],
    span_ms: int = 3 * 60 * S,
    start: int = T0,
) -> list[RawEvent]:
    """Bursty events: clustered times with many exact ties."""
    events = []
    for _ in range(count):
        ts = start + rnd.choice((rnd.randrange(span_ms), rnd.randrange(10) * 10 * S))
        events.append(
            RawEvent(f"u{rnd.randrange(users)}", f"r{next(_counter)}", ts, rnd.choice(types))
        )
    return events


@pytest.mark.parametrize("seed", range(6))
def test_random_streams_match_the_reference(seed: int) -> None:
    rnd = random.Random(seed)
    window = rnd.choice((1, 10, 60, 3600))
    definition = FunnelDefinition(
        "rnd",
        [FunnelStep(rnd.choice("abc")) for _ in range(rnd.randint(2, 5))],
        window_seconds=window,
    )
    events = random_events(
        rnd, users=25, count=500, types="abcx", span_ms=3 * DAY_MS, start=day_start_ms(DAY0)
    )
    arrival = events + rnd.sample(events, 50)  # client retries
    rnd.shuffle(arrival)
    feeder = Feeder(FunnelsProcessor([definition]), partitions=3)
    for index in range(0, len(arrival), 7):
        batch = arrival[index : index + 7]
        for _, group in itertools.groupby(sorted(batch, key=_user), key=_user):
            feeder.send(list(group))
        if index % 35 == 0:
            feeder.replay(rnd.randrange(len(feeder.sent)))
            feeder.flush()
    feeder.flush()
    for offset_from, offset_to in ((0, 2), (1, 1), (1, 2), (2, 2), (0, 0)):
        day_from, day_to = DAY0 + timedelta(offset_from), DAY0 + timedelta(offset_to)
        expected = brute_force_levels(events, definition.steps, window * 1000, day_from, day_to)
        assert levels_from_progress(feeder.rows, "rnd", day_from, day_to) == expected


def _user(event: RawEvent) -> str:
    return event.user_id


# -- state pruning --------------------------------------------------------------------------


def test_idle_users_are_dropped_after_the_horizon() -> None:
    processor = FunnelsProcessor([ABC], max_event_age_days=30)
    feeder = Feeder(processor)
    feeder.send([ev(0, "a", user="idle")])
    feeder.send([ev(0, "a", user="busy")])
    feeder.flush()
    assert set(processor.take_state_changes()) == {"p1:idle", "p1:busy"}
    # The partition's received_at watermark moves past the horizon: no event the gateway
    # still accepts can reach the idle user's times.
    later = T0 + processor.horizon_ms + DAY_MS
    feeder.send([RawEvent("busy", "late", later, "a")], received_at=later)
    feeder.flush()
    changes = processor.take_state_changes()
    assert changes["p1:idle"] is None
    assert changes["p1:busy"] is not None
    assert processor.horizon_ms == 30 * DAY_MS + ABC.window_ms + 3_600_000


def test_state_times_within_the_horizon_are_kept() -> None:
    processor = FunnelsProcessor([ABC], lateness_ms=DAY_MS)
    feeder = Feeder(processor)
    feeder.send([A0])
    feeder.send([ev(DAY_MS, "x")], received_at=T0 + DAY_MS)  # watermark +1 day: within
    feeder.flush()
    feeder.send([B10], received_at=T0 + DAY_MS)
    feeder.send([C20], received_at=T0 + DAY_MS)
    assert [row[-1] for row in feeder.flush()] == [3]


def test_a_changed_definition_starts_over() -> None:
    processor = FunnelsProcessor([ABC])
    feeder = Feeder(processor)
    feeder.send([A0])
    feeder.send([B10])
    feeder.flush()
    stored = processor.take_state_changes()
    changed = FunnelDefinition("abc", ABC.steps, window_seconds=5)
    restarted = FunnelsProcessor([changed])
    for key, value in stored.items():
        assert value is not None
        restarted.load_state(key, value)
    feeder.processor = restarted
    feeder.send([C20])
    assert feeder.flush() == []  # the old a, b belonged to the old definition


def test_processor_without_definitions_is_inert() -> None:
    processor = FunnelsProcessor([])
    Feeder(processor).send([A0])
    assert processor.flush(0).is_empty()
    assert processor.take_state_changes() == {}


# -- definitions and config -----------------------------------------------------------------


def test_example_config_loads() -> None:
    definitions = load_funnels(REPO / "deploy" / "funnels.example.toml")
    assert len(definitions) >= 2
    assert all(len(d.steps) >= 2 for d in definitions)


JSON_DOC = b"""{"funnels": [{"name": "onboarding", "window_seconds": 3600, "steps": [
  {"event": "session_start"},
  {"event": "gesture", "where": {"gesture": "pinch", "count": 2, "ok": true, "x": 1.5}}]}]}"""

TOML_DOC = b"""
[[funnels]]
name = "onboarding"
window_seconds = 3600
steps = [
  { event = "session_start" },
  { event = "gesture", where = { gesture = "pinch", count = 2, ok = true, x = 1.5 } },
]
"""


def test_json_and_toml_give_the_same_definitions(tmp_path: Path) -> None:
    (tmp_path / "f.json").write_bytes(JSON_DOC)
    (tmp_path / "f.toml").write_bytes(TOML_DOC)
    from_json, from_toml = load_funnels(tmp_path / "f.json"), load_funnels(tmp_path / "f.toml")
    assert from_json == from_toml
    assert from_json[0].steps[1].where == {"gesture": "pinch", "count": 2, "ok": True, "x": 1.5}
    assert from_json[0].fingerprint == from_toml[0].fingerprint


def _funnel(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "f1",
        "window_seconds": 60,
        "steps": [{"event": "a"}, {"event": "b"}],
    }
    return base | changes


@pytest.mark.parametrize(
    ("document", "message"),
    [
        pytest.param({"funnels": [_funnel(), _funnel()]}, "used twice", id="duplicate names"),
        pytest.param({"funnels": [_funnel(steps=[{"event": "a"}])]}, "length >= 2", id="1 step"),
        pytest.param(
            {"funnels": [_funnel(steps=[{"event": "a"}] * 11)]}, "length <= 10", id="11 steps"
        ),
        pytest.param({"funnels": [_funnel(name="Bad Name")]}, "name", id="name not a slug"),
        pytest.param({"funnels": [_funnel(name="a/b")]}, "name", id="name with a slash"),
        pytest.param(
            {"funnels": [_funnel(steps=[{"event": "A!"}, {"event": "b"}])]},
            "steps[0].event",
            id="bad event type",
        ),
        pytest.param(
            {"funnels": [_funnel(steps=[{"event": "a", "where": {"x'y": 1}}, {"event": "b"}])]},
            "where",
            id="bad prop key",
        ),
        pytest.param(
            {"funnels": [_funnel(steps=[{"event": "a", "where": {"k": None}}, {"event": "b"}])]},
            "where",
            id="null filter value",
        ),
        pytest.param(
            {"funnels": [_funnel(steps=[{"event": "a", "where": {"k": 2**60}}, {"event": "b"}])]},
            "2**53",
            id="integer beyond float precision",
        ),
        pytest.param({"funnels": [_funnel(window_seconds=0)]}, "window_seconds", id="window 0"),
        pytest.param(
            {"funnels": [_funnel(window_seconds=MAX_WINDOW_SECONDS + 1)]},
            "window_seconds",
            id="window too long",
        ),
        pytest.param({"funnels": [_funnel(extra=1)]}, "extra", id="unknown field"),
        pytest.param({"funnel": []}, "funnel", id="wrong top-level key"),
    ],
)
def test_bad_configs_are_refused_with_the_field(document: dict[str, Any], message: str) -> None:
    with pytest.raises(FunnelConfigError, match=r"cfg\.json") as error:
        parse_funnels(msgspec.json.encode(document), "json", "cfg.json")
    assert message in str(error.value)


def test_non_finite_numbers_in_toml_are_refused() -> None:
    document = TOML_DOC.replace(b"x = 1.5", b"x = inf")
    with pytest.raises(FunnelConfigError, match="finite"):
        parse_funnels(document, "toml", "cfg.toml")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        pytest.param("f.yaml", b"funnels: []", "use .json or .toml", id="yaml"),
        pytest.param("f.json", b"{not json", "f.json", id="broken json"),
        pytest.param("f.toml", b"funnels = [", "f.toml", id="broken toml"),
    ],
)
def test_unreadable_files_are_refused(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(FunnelConfigError, match=message):
        load_funnels(tmp_path / name)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FunnelConfigError, match="cannot read"):
        load_funnels(tmp_path / "none.json")


def test_fingerprint_follows_steps_and_window_not_name_or_key_order() -> None:
    one = FunnelDefinition("x", [FunnelStep("a", {"k": 1, "j": "v"}), FunnelStep("b")], 60)
    same = FunnelDefinition("y", [FunnelStep("a", {"j": "v", "k": 1}), FunnelStep("b")], 60)
    assert one.fingerprint == same.fingerprint
    assert one.fingerprint != FunnelDefinition("x", one.steps, 61).fingerprint
    assert one.fingerprint != FunnelDefinition("x", one.steps[::-1], 60).fingerprint


@pytest.mark.parametrize(
    ("where", "props", "expected"),
    [
        pytest.param({"g": "pinch"}, {"g": "pinch"}, True, id="string"),
        pytest.param({"g": "pinch"}, {"g": "swipe"}, False, id="other string"),
        pytest.param({"g": ""}, {}, False, id="missing key is not the empty string"),
        pytest.param({"n": 1}, {"n": 1.0}, True, id="int filter, float prop"),
        pytest.param({"n": 1.5}, {"n": 1.5}, True, id="float"),
        pytest.param({"n": 1}, {"n": "1"}, False, id="number is not a string"),
        pytest.param({"n": 1}, {"n": True}, False, id="number is not a bool"),
        pytest.param({"b": True}, {"b": 1}, False, id="bool is not a number"),
        pytest.param({"b": False}, {"b": False}, True, id="bool"),
        pytest.param({"s": "1"}, {"s": 1}, False, id="string is not a number"),
        pytest.param({"n": 1}, {"n": None}, False, id="null never matches"),
        pytest.param({"n": 1}, {"n": [1]}, False, id="array never matches"),
        pytest.param({"k": "v"}, {"o": {"k": "v"}}, True, id="nested key is found"),
        pytest.param({"k": "v"}, {"o": [{"k": "v"}]}, True, id="key in an array"),
        pytest.param({"k": "v"}, {"o": {"k": "w"}, "k": "v"}, False, id="first occurrence"),
        pytest.param({"k": "v", "n": 2}, {"k": "v", "n": 2}, True, id="all filters"),
        pytest.param({"k": "v", "n": 2}, {"k": "v", "n": 3}, False, id="all filters must match"),
    ],
)
def test_step_matching(where: dict[str, Any], props: dict[str, Any], expected: bool) -> None:
    assert FunnelStep("t", where).matches("t", props) is expected
    assert FunnelStep("t", where).matches("u", props) is False
    # The brute-force reference reads the same cases the same way, by its own code.
    assert reference_matches(FunnelStep("t", where), "t", props) is expected
    assert reference_matches(FunnelStep("t", where), "u", props) is False


# -- query helpers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("histogram", "users", "from_start", "from_previous"),
    [
        pytest.param({}, [0, 0, 0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], id="nobody"),
        pytest.param(
            {1: 5, 2: 3, 3: 2}, [10, 5, 2], [1.0, 0.5, 0.2], [1.0, 0.5, 0.4], id="some convert"
        ),
        pytest.param({1: 4}, [4, 0, 0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0], id="nobody converts"),
    ],
)
def test_step_results(
    histogram: dict[int, int], users: list[int], from_start: list[float], from_previous: list[float]
) -> None:
    results = step_results(["a", "b", "c"], histogram)
    assert [r["event"] for r in results] == ["a", "b", "c"]
    assert [r["users"] for r in results] == users
    assert [r["conversion_from_start"] for r in results] == pytest.approx(from_start)
    assert [r["conversion_from_previous"] for r in results] == pytest.approx(from_previous)


def test_adhoc_sql_passes_user_values_only_as_parameters() -> None:
    hostile = "x') OR 1=1 --"
    steps = [FunnelStep("a", {"k.$-_1": hostile}), FunnelStep("b", {"n": 2, "ok": True})]
    sql, params = funnel_insight_sql(hostile, steps, 60, Slice(DAY0, DAY0))
    assert hostile not in sql
    assert "k.$-_1" not in sql
    assert hostile in params.values.values()
    assert "k.$-_1" in params.values.values()
    assert ("a", "b") in params.values.values()


@pytest.mark.parametrize(
    ("steps", "window", "day_from", "day_to"),
    [
        pytest.param([FunnelStep("a")], 60, DAY0, DAY0, id="one step"),
        pytest.param([FunnelStep("a")] * 11, 60, DAY0, DAY0, id="eleven steps"),
        pytest.param([FunnelStep("a")] * 2, 0, DAY0, DAY0, id="window 0"),
        pytest.param([FunnelStep("a")] * 2, MAX_WINDOW_SECONDS + 1, DAY0, DAY0, id="long window"),
        pytest.param([FunnelStep("a")] * 2, 60, DAY0, DAY0 - timedelta(1), id="from after to"),
    ],
)
def test_adhoc_sql_refuses_bad_input(
    steps: list[FunnelStep], window: int, day_from: date, day_to: date
) -> None:
    with pytest.raises(ValueError, match=r"steps|window|from"):
        funnel_insight_sql("p1", steps, window, Slice(day_from, day_to))


def test_adhoc_sql_prefilters_string_values_as_parameters() -> None:
    """Each string value is looked for as a JSON string, and a props holding any
    backslash (escaped text) is always left to the real test."""
    steps = [FunnelStep("a"), FunnelStep("b", {"k": 'it\'s "x"', "n": 3}), FunnelStep("a")]
    sql, params = funnel_insight_sql("p1", steps, 60, Slice(DAY0, DAY0))
    needles = {key: value for key, value in params.values.items() if "needle" in key}
    assert needles == {"s1_needle0": '"it\'s "x""'}
    assert "position(props, %(s1_needle0)s) > 0 OR position(props, %(backslash)s) > 0" in sql
    assert params.values["backslash"] == "\\"
    assert "it's" not in sql
    assert "LIMIT 1 BY" not in sql


def test_times_only_complete_days_could_use_are_not_kept() -> None:
    """A funnel ending in a frequent event (heartbeats): once a day is complete, later
    times whose possible starts all fall on complete days change nothing and are not
    stored, so the state stops growing; a time that can still serve an incomplete day is."""
    processor = FunnelsProcessor([ABC])
    feeder = Feeder(processor)
    for event in (A0, B10, C20):
        feeder.send([event])
    feeder.flush()
    complete_size = len(processor.take_state_changes()[state_key("p1", "u1")] or b"")
    for n in range(1, 300):
        feeder.send([ev(20 * S + n * S, "c")])
    assert feeder.flush() == []
    assert processor.take_state_changes() == {}  # nothing new to keep
    # The next day is not complete: its first step is kept, and completes it later.
    next_day = 24 * 3600 * S
    feeder.send([ev(next_day, "a")])
    feeder.send([ev(next_day + 5 * S, "b")])
    feeder.send([ev(next_day + 9 * S, "c")])
    assert [row[5] for row in feeder.flush()] == [3]
    assert len(processor.take_state_changes()[state_key("p1", "u1")] or b"") < 2 * complete_size


def test_state_at_rest_round_trips_exactly() -> None:
    """Between flushes a user's state rests in a compact form of its own (times as gaps,
    funnels by number, project and user id from the key, where the user id may hold ':').
    Resting between two records must not change the changelog value or the rows."""
    user = "tenant:7:u1"
    events = [ev(n * S, "a", user=user) for n in range(0, 40, 4)]
    events += [ev(n * S, "b", user=user) for n in range(1, 40, 4)]
    events += [ev(41 * S, "c", user=user), ev(3 * 86_400 * S, "page_view", user=user)]
    rnd = random.Random(5)
    rnd.shuffle(events)
    definitions = [ABC, PINCH, PAGE_TWICE]

    straight = Feeder(FunnelsProcessor(definitions))
    for event in events:
        straight.send([event])
    straight.flush()
    resting = Feeder(FunnelsProcessor(definitions))
    for event in events:
        resting.send([event])
        resting.flush()  # back to rest after every record

    key = state_key("p1", user)
    value = straight.processor.take_state_changes()[key]
    assert value is not None
    assert resting.processor.take_state_changes()[key] == value
    assert {(row[0], row[3]) for row in resting.rows} == {("p1", user)}
    assert levels_from_progress(resting.rows, "abc", DAY0, DAY0) == {user: 3}
    held = resting.processor._users[key]
    assert isinstance(held, bytes)
    assert len(held) < len(value) * 2 / 3
