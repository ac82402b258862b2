"""Active users and retention from the activity tables equal a brute-force computation of
SPEC §4 over the same generated events, on both engines."""

from __future__ import annotations

import random
import time
from datetime import timedelta

import pytest

from schemas.events import Event, EventRecord
from sinks.clickhouse import ClickHouse
from sinks.migrate import migrate
from sinks.queries.activity import active_users, retention
from streams.processors.activity import ActivityProcessor, utc_day
from streams.processors.base import Position
from tests.expectations import expected_active, expected_retention

DAY_MS = 86_400_000


@pytest.fixture
def clickhouse(clickhouse: ClickHouse) -> ClickHouse:
    """Both engines (tests/conftest.py), with the schema."""
    migrate(clickhouse)
    return clickhouse


def generated_events(seed: int, users: int, days: int) -> list[EventRecord]:
    """Users with irregular habits over the last `days` days, across a 64-day block edge
    for most runs, with duplicates and out-of-order delivery."""
    rng = random.Random(seed)
    today_ms = (int(time.time() * 1000) // DAY_MS) * DAY_MS
    records = []
    for user in range(users):
        first = rng.randrange(days)
        habit = rng.choice([0.05, 0.3, 0.8])
        for back in range(first, -1, -1):
            if back != first and rng.random() > habit:
                continue
            ts = today_ms - back * DAY_MS + rng.randrange(DAY_MS)
            events = [
                Event(event_id=f"{user}-{back}-{i}", type="gesture", user_id=f"u{user}", ts=ts + i)
                for i in range(rng.randint(1, 3))
            ]
            records.append(EventRecord(project="p", received_at=ts, events=events))
    # Noise in another project must not leak into "p".
    records.append(
        EventRecord(
            project="other",
            received_at=today_ms,
            events=[Event(event_id="x", type="gesture", user_id="u1", ts=today_ms)],
        )
    )
    rng.shuffle(records)
    return records + records[: len(records) // 5]  # replayed duplicates


def load(clickhouse: ClickHouse, records: list[EventRecord], batch: int = 50) -> None:
    processor = ActivityProcessor(remember_at_most=200)  # small: forces re-emission
    for start in range(0, len(records), batch):
        for offset, record in enumerate(records[start : start + batch]):
            processor.process(record, Position(0, start + offset))
        for table in processor.flush(int(time.time() * 1000)).tables:
            clickhouse.insert(table.table, table.columns, table.rows)


@pytest.mark.parametrize("seed", [pytest.param(1, id="seed 1"), pytest.param(7, id="seed 7")])
def test_active_users_match_brute_force(clickhouse: ClickHouse, seed: int) -> None:
    records = generated_events(seed, users=300, days=75)
    load(clickhouse, records)
    today = utc_day(int(time.time() * 1000))
    day_from = today - timedelta(days=40)
    assert active_users(clickhouse, "p", day_from, today) == expected_active(
        records, day_from, today
    )


@pytest.mark.parametrize("period", ["day", "week"])
def test_retention_matches_brute_force(clickhouse: ClickHouse, period: str) -> None:
    records = generated_events(3, users=300, days=75)
    load(clickhouse, records)
    today = utc_day(int(time.time() * 1000))
    day_from, day_to = today - timedelta(days=70), today - timedelta(days=2)
    got = retention(clickhouse, "p", day_from, day_to, period, today)  # type: ignore[arg-type]
    assert got == expected_retention(records, day_from, day_to, period, today)
    assert got, "the generated data has cohorts"


@pytest.mark.parametrize(
    ("days_back", "length"),
    [
        pytest.param(0, 1, id="one day"),
        pytest.param(3, 64, id="one block long"),
        pytest.param(0, 200, id="200 days, four blocks"),
        pytest.param(150, 366, id="366 days, most without data"),
    ],
)
def test_active_users_over_long_and_short_ranges(
    clickhouse: ClickHouse, days_back: int, length: int
) -> None:
    """The per-block masks hold for any range the API allows (≤ 366 days), across 64-day
    block edges, and days without data are zeros."""
    records = generated_events(11, users=120, days=240)
    load(clickhouse, records)
    day_to = utc_day(int(time.time() * 1000)) - timedelta(days=days_back)
    day_from = day_to - timedelta(days=length - 1)
    got = active_users(clickhouse, "p", day_from, day_to)
    assert got == expected_active(records, day_from, day_to)
    assert len(got) == length


def test_active_users_and_retention_of_a_project_without_data(clickhouse: ClickHouse) -> None:
    load(clickhouse, generated_events(5, users=20, days=10))
    today = utc_day(int(time.time() * 1000))
    got = active_users(clickhouse, "nobody", today - timedelta(days=40), today)
    assert [(d["dau"], d["wau"], d["mau"], d["stickiness"]) for d in got] == [(0, 0, 0, 0.0)] * 41
    assert retention(clickhouse, "nobody", today - timedelta(days=40), today, "week", today) == []


@pytest.mark.parametrize("period", ["day", "week"])
def test_retention_ranges_ending_on_every_weekday(clickhouse: ClickHouse, period: str) -> None:
    """Cohort weeks start on Monday whatever day the range and `today` fall on."""
    records = generated_events(2, users=120, days=40)
    load(clickhouse, records)
    today = utc_day(int(time.time() * 1000))
    for weekday in range(7):
        day_to = today - timedelta(days=(today.weekday() - weekday) % 7)
        day_from = day_to - timedelta(days=17 + weekday)
        got = retention(clickhouse, "p", day_from, day_to, period, day_to)  # type: ignore[arg-type]
        assert got == expected_retention(records, day_from, day_to, period, day_to), weekday
        assert got
