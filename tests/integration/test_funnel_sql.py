"""Funnels on both engines (clickhouse-server 18.16 and chDB): the ad-hoc windowFunnel
query over raw events, the predefined funnel read from what FunnelsProcessor wrote, and an
exhaustive Python reference of SPEC §4 must give the same numbers."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
import pytest

from schemas.funnels import (
    DAY_MS,
    PROGRESS_COLUMNS,
    PROGRESS_TABLE,
    FunnelDefinition,
    FunnelStep,
)
from sinks.clickhouse import ClickHouse
from sinks.migrate import migrate
from sinks.queries.funnel_insight import funnel_insight
from sinks.queries.funnels import StepResult, day_start_ms, predefined_funnel, step_results
from sinks.queries.properties import Slice
from streams.processors.events import EVENTS_COLUMNS, EVENTS_TABLE
from streams.processors.funnels import FunnelsProcessor
from tests.unit.test_funnels import Feeder, RawEvent, brute_force_levels, reference_matches

# Recent on purpose: the events table's 90-day TTL drops older rows at the first merge.
FIRST_DAY = datetime.now(UTC).date() - timedelta(days=10)
DAYS = 8
LAST_DAY = FIRST_DAY + timedelta(days=DAYS - 1)

DEFINITIONS = [
    FunnelDefinition(
        "store",
        [
            FunnelStep("session_start"),
            FunnelStep("page_view", {"url": "/store"}),
            FunnelStep("purchase"),
        ],
        window_seconds=1800,
    ),
    FunnelDefinition(
        "pinch",
        [
            FunnelStep("gesture", {"gesture": "pinch"}),
            FunnelStep("gesture", {"gesture": "pinch", "hand": "right"}),
            FunnelStep("signup", {"trial": True}),
        ],
        window_seconds=120,
    ),
    FunnelDefinition(
        "pages",
        [
            FunnelStep("page_view"),
            FunnelStep("page_view"),
            FunnelStep("signup", {"seats": 3}),
            FunnelStep("purchase", {"amount": 19}),
        ],
        window_seconds=2 * 86_400,
    ),
    FunnelDefinition(
        "sessions", [FunnelStep("session_start"), FunnelStep("session_start")], window_seconds=60
    ),
]
RANGES = [
    (FIRST_DAY, LAST_DAY + timedelta(days=2)),
    (FIRST_DAY + timedelta(days=2), FIRST_DAY + timedelta(days=4)),
    (FIRST_DAY + timedelta(days=3), FIRST_DAY + timedelta(days=3)),
    (FIRST_DAY, FIRST_DAY),
    (LAST_DAY, LAST_DAY),
    (LAST_DAY + timedelta(days=3), LAST_DAY + timedelta(days=5)),  # no data
]


@pytest.fixture
def clickhouse(clickhouse: ClickHouse) -> ClickHouse:
    """Both engines (tests/conftest.py), with the schema."""
    migrate(clickhouse)
    return clickhouse


def _props(rnd: random.Random, type_: str) -> dict[str, Any]:
    if type_ == "page_view":
        props: dict[str, Any] = {"url": rnd.choice(["/home", "/store", "/signup"])}
        if rnd.random() < 0.1:  # a nested url first: the filter sees that one
            props = {"ctx": {"url": rnd.choice(["/store", "/x"])}} | props
        return props
    if type_ == "gesture":
        return {"gesture": rnd.choice(["pinch", "pinch", "swipe"]), "hand": rnd.choice("lr")}
    if type_ == "gesture_r":
        return {"gesture": "pinch", "hand": "right"}
    if type_ == "signup":
        return {
            "plan": rnd.choice(["free", "pro"]),
            "trial": rnd.choice([True, False, "true", 1]),
            "seats": rnd.choice([1, 3, 3.0, "3", 30]),
        }
    if type_ == "purchase":
        return {"amount": rnd.choice([9.99, 19, 19.0, 19.5, "19"]), "currency": "EUR"}
    return {}


GAPS_MS = [0, 0, 1, 700, 5_000, 40_000, 90_000, 600_000, 1_900_000, 86_400_000, 180_000_000]
TYPES = ["session_start", "page_view", "page_view", "gesture", "gesture_r", "signup"]
TYPES += ["purchase", "noise"]


def build_events(seed: int, project: str, users: int) -> list[RawEvent]:
    """Sessions of bursty events: exact ties, events matching several steps, repeated
    first steps, sessions across midnight, gaps around every window."""
    rnd = random.Random(seed)
    events = []
    for user_number in range(users):
        user = f"{project}-user-{user_number}"
        for session in range(rnd.randint(1, 4)):
            day = day_start_ms(FIRST_DAY) + rnd.randrange(DAYS) * DAY_MS
            if rnd.random() < 0.15:
                ts = day + DAY_MS - rnd.randrange(1, 120_000)  # just before midnight
            else:
                ts = day + rnd.randrange(DAY_MS)
            for number in range(rnd.randint(1, 12)):
                type_ = "session_start" if number == 0 else rnd.choice(TYPES)
                props = _props(rnd, type_)
                type_ = "gesture" if type_ == "gesture_r" else type_
                event_id = f"{user}-{session}-{number}"
                events.append(RawEvent(user, event_id, ts, type_, props, project))
                ts += rnd.choice(GAPS_MS)
    return events


# event_row's columns: the flattened props arrays stay empty (funnel steps read `props`).
ROW_COLUMNS = EVENTS_COLUMNS[: EVENTS_COLUMNS.index("props") + 1]


def adhoc_funnel(
    clickhouse: ClickHouse,
    project: str,
    steps: Sequence[FunnelStep],
    window: int,
    day_from: date,
    day_to: date,
) -> list[StepResult]:
    """The ad-hoc funnel's counts (its times to convert: test_insights_funnels.py)."""
    [group] = funnel_insight(clickhouse, project, list(steps), window, Slice(day_from, day_to))
    return [
        {
            "event": step["event"],
            "users": step["users"],
            "conversion_from_start": step["conversion_from_start"],
            "conversion_from_previous": step["conversion_from_previous"],
        }
        for step in group["steps"]
    ]


def event_row(event: RawEvent) -> tuple[Any, ...]:
    return (
        event.project,
        event.event_id,
        event.type,
        event.user_id,
        event.ts,
        event.ts + 40,
        "s-1",
        "quest3",
        "3.0.0",
        "horizon",
        "eu",
        "native",
        orjson.dumps(event.props).decode(),
    )


def feed_processor(
    clickhouse: ClickHouse, events: Sequence[RawEvent], duplicates: Sequence[RawEvent]
) -> None:
    """Run the events through FunnelsProcessor the way a runner would, in a shuffled
    order, with client retries, redelivered records and a restart from stored state."""
    rnd = random.Random(11)
    arrival = list(events) + list(duplicates)
    rnd.shuffle(arrival)
    feeder = Feeder(FunnelsProcessor(DEFINITIONS), partitions=4)
    restart_at = len(arrival) // 2
    for index in range(0, len(arrival), 20):
        batch = sorted(arrival[index : index + 20], key=lambda e: (e.project, e.user_id))
        for _, group in itertools.groupby(batch, key=lambda e: (e.project, e.user_id)):
            feeder.send(list(group))
        if rnd.random() < 0.2:
            feeder.replay(rnd.randrange(len(feeder.sent)))
        clickhouse.insert(PROGRESS_TABLE, PROGRESS_COLUMNS, feeder.flush())
        if index <= restart_at < index + 20:
            stored = feeder.processor.take_state_changes()
            feeder.processor = FunnelsProcessor(DEFINITIONS)
            for key, value in stored.items():
                if value is not None:
                    feeder.processor.load_state(key, value)
            for replayed in range(max(0, len(feeder.sent) - 5), len(feeder.sent)):
                feeder.replay(replayed)  # uncommitted records redelivered after a restart


def test_adhoc_predefined_and_reference_agree(clickhouse: ClickHouse) -> None:
    events = build_events(1, "p1", users=300) + build_events(2, "p2", users=40)
    duplicates = random.Random(5).sample(events, len(events) // 20)
    rows = [event_row(event) for event in events]
    for index in range(0, len(rows), 1000):
        clickhouse.insert(EVENTS_TABLE, ROW_COLUMNS, rows[index : index + 1000])
    clickhouse.insert(EVENTS_TABLE, ROW_COLUMNS, [event_row(event) for event in duplicates])
    feed_processor(clickhouse, events, duplicates)

    mismatches = []
    reached_last_step = {}
    for project, definition, (day_from, day_to) in itertools.product(
        ("p1", "p2"), DEFINITIONS, RANGES
    ):
        levels = brute_force_levels(
            events, definition.steps, definition.window_ms, day_from, day_to, project
        )
        histogram: dict[int, int] = {}
        for level in levels.values():
            histogram[level] = histogram.get(level, 0) + 1
        expected = step_results([step.event for step in definition.steps], histogram)
        steps, window = definition.steps, definition.window_seconds
        answers = {
            "adhoc": adhoc_funnel(clickhouse, project, steps, window, day_from, day_to),
            "predefined": predefined_funnel(clickhouse, project, definition, day_from, day_to),
        }
        for name, answer in answers.items():
            if answer != expected:
                mismatches.append((project, definition.name, str(day_from), str(day_to), name))
        if (day_from, day_to) == RANGES[0] and project == "p1":
            reached_last_step[definition.name] = expected[-1]["users"]
    assert mismatches == [], f"differs from the reference: {mismatches}"
    # The data set exercises every funnel to its end.
    assert all(users > 0 for users in reached_last_step.values()), reached_last_step


PROBES: list[dict[str, Any]] = [
    {"g": "pinch", "n": 3, "b": True},
    {"g": "pinch", "n": 3.0, "b": False},
    {"g": "swipe", "n": "3", "b": "true"},
    {"g": 'qu"ote\\back', "n": 3e0, "b": 1},
    {"g": "café 😀", "n": -0.0, "b": None},
    {"g": "", "n": [3], "b": {"b": True}},
    {"x": {"g": "pinch"}, "g": "swipe", "n": 0},
    {"list": [{"g": "pinch", "n": 3}], "b": True},
    {"gg": "pinch", "nn": 3},
    {},
]
FILTERS: list[dict[str, Any]] = [
    {"g": "pinch"},
    {"g": 'qu"ote\\back'},
    {"g": "café 😀"},
    {"g": ""},
    {"n": 3},
    {"n": 3.0},
    {"n": 0},
    {"b": True},
    {"b": False},
    {"g": "pinch", "n": 3, "b": True},
]


def test_prop_filters_match_like_python(clickhouse: ClickHouse) -> None:
    """One project per props document: the SQL filter and FunnelStep.matches both agree
    with the reference's own matching on every (filter, document) pair, on both engines."""
    ts = day_start_ms(FIRST_DAY) + 3_600_000
    rows = []
    for number, props in enumerate(PROBES):
        start = RawEvent("u", f"s{number}", ts, "start", {}, f"doc{number}")
        probe = RawEvent("u", f"p{number}", ts + 1, "probe", props, f"doc{number}")
        rows += [event_row(start), event_row(probe)]
    clickhouse.insert(EVENTS_TABLE, ROW_COLUMNS, rows)
    wrong = []
    for where, (number, props) in itertools.product(FILTERS, enumerate(PROBES)):
        steps = [FunnelStep("start"), FunnelStep("probe", where)]
        result = adhoc_funnel(clickhouse, f"doc{number}", steps, 60, FIRST_DAY, FIRST_DAY)
        expected = reference_matches(steps[1], "probe", props)
        if (result[1]["users"] == 1) != expected:
            wrong.append(("sql", where, props))
        if steps[1].matches("probe", props) != expected:
            wrong.append(("python", where, props))
    assert wrong == []


# (props as the writer stored them, filter value, matches): other serializers escape
# differently, and the plain-text prefilter must never hide a match.
RAW_PROPS: list[tuple[str, str, bool]] = [
    ('{"g":"caf\\u00e9"}', "café", True),
    ('{"g":"café"}', "café", True),
    ('{"g":"a\\/b"}', "a/b", True),
    ('{"g":"x\\"y"}', 'x"y', True),
    ('{"g":"it\'s"}', "it's", True),
    ('{"g":"%(project)s"}', "%(project)s", True),
    ('{"h":"pinch","g":"swipe"}', "pinch", False),
    ('{"g":"pinch!"}', "pinch", False),
    ('{"g":["pinch"]}', "pinch", False),
    ('{"g":"😀"}', "😀", True),
    ('{"g":"\\ud83d\\ude00"}', "😀", True),
]


def test_prop_filters_see_through_any_string_escaping(clickhouse: ClickHouse) -> None:
    ts = day_start_ms(FIRST_DAY) + 3_600_000
    rows = []
    for number, (props, _, _) in enumerate(RAW_PROPS):
        start = RawEvent("u", f"s{number}", ts, "start", {}, f"raw{number}")
        probe = event_row(RawEvent("u", f"p{number}", ts + 1, "probe", {}, f"raw{number}"))
        rows += [event_row(start), (*probe[:-1], props)]
    clickhouse.insert(EVENTS_TABLE, ROW_COLUMNS, rows)
    got = []
    for number, (props, value, _) in enumerate(RAW_PROPS):
        steps = [FunnelStep("start"), FunnelStep("probe", {"g": value})]
        result = adhoc_funnel(clickhouse, f"raw{number}", steps, 60, FIRST_DAY, FIRST_DAY)
        got.append((props, value, result[1]["users"] == 1))
    assert got == RAW_PROPS


def test_equal_timestamps_chain_whatever_the_insert_order(clickhouse: ClickHouse) -> None:
    """18.16 orders equal timestamps by arrival; the query must not depend on it."""
    ts = day_start_ms(FIRST_DAY) + 7_200_000
    steps = [FunnelStep("a"), FunnelStep("b"), FunnelStep("c")]
    events = []
    for user in range(50):
        for number, type_ in enumerate("cbacb"):  # later steps first, each its own part
            events.append(RawEvent(f"u{user}", f"{user}-{number}", ts + user, type_))
    for event in events:
        clickhouse.insert(EVENTS_TABLE, ROW_COLUMNS, [event_row(event)])
    result = adhoc_funnel(clickhouse, "p1", steps, 1, FIRST_DAY, FIRST_DAY)
    assert [step["users"] for step in result] == [50, 50, 50]


def test_predefined_funnel_reads_only_its_definition(clickhouse: ClickHouse) -> None:
    """Rows are tagged with the definition's fingerprint; re-sent rows with a lower level
    (at-least-once delivery) do not lower the answer, merged or not."""
    definition = DEFINITIONS[0]
    edited = FunnelDefinition(definition.name, definition.steps, definition.window_seconds + 1)
    row = ("p1", definition.name, edited.fingerprint, "u1", FIRST_DAY, 3)
    clickhouse.insert(PROGRESS_TABLE, PROGRESS_COLUMNS, [row])
    clickhouse.insert(PROGRESS_TABLE, PROGRESS_COLUMNS, [(*row[:-1], 1)])

    def users(funnel: FunnelDefinition) -> list[int]:
        result = predefined_funnel(clickhouse, "p1", funnel, FIRST_DAY, FIRST_DAY)
        return [step["users"] for step in result]

    assert users(edited) == [1, 1, 1]
    assert users(definition) == [0, 0, 0]
    clickhouse.execute(f"OPTIMIZE TABLE {PROGRESS_TABLE} FINAL")
    assert users(edited) == [1, 1, 1]
