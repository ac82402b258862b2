"""Playback reads across two month partitions of `plays` on both engines: one FINAL per
month (`PlayScans` on 18.16) and one FINAL over the range (chDB, current servers) keep the
same newest rows, and the endpoints answer what the generated events say, with unmerged
versions, a sink retry and tombstones written in the month after the live row."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest

from schemas.output import TableRows
from sinks.capabilities import Capabilities
from sinks.clickhouse import ClickHouse
from sinks.migrate import migrate
from sinks.queries.playback import (
    PlayScans,
    day_params,
    month_ranges,
    playback_summary,
    playback_timeseries,
)
from sinks.queries.playback_insight import playback_insight
from sinks.queries.properties import Slice
from tests.integration.test_playback_insight_sql import reference_insight
from tests.integration.test_playback_sql import (
    DAY,
    PROJECT,
    Generated,
    _day,
    _insert,
    _merge,
    _recent_midnight,
    generate,
    reference_play,
    reference_summary,
    reference_timeseries,
    run_processor,
)

# The plays begin on the two days before a month's first midnight and until noon after
# it; the late-first-event plays straddle that midnight.
MONTH_START = _recent_midnight(month_boundary=True)


@pytest.fixture
def clickhouse(clickhouse: ClickHouse) -> ClickHouse:
    """Both engines (tests/conftest.py), with the schema."""
    migrate(clickhouse)
    return clickhouse


@pytest.fixture(scope="module")
def generated() -> Generated:
    return generate(seed=20_261_205, n_plays=300, base=MONTH_START - 2 * DAY)


@pytest.fixture(scope="module")
def blocks(generated: Generated) -> list[TableRows]:
    return run_processor(generated)


def _newest_rows(
    clickhouse: ClickHouse, ranges: tuple[tuple[date, date], ...], day_from: date, day_to: date
) -> Any:
    scans = PlayScans(ranges)
    source = scans.latest_plays(("day", "version", "content_id", "error_codes"), ("play_id",))
    params = {**day_params(PROJECT, day_from, day_to), **scans.params()}
    return clickhouse.execute(
        f"SELECT * FROM ({source}) WHERE p_deleted = 0 ORDER BY play_id, p_day", params
    )


def test_one_final_per_month_keeps_the_newest_rows_and_the_answers(
    clickhouse: ClickHouse, generated: Generated, blocks: list[TableRows]
) -> None:
    _insert(clickhouse, blocks)
    plays = [reference_play(events) for events in generated.plays.values()]
    first, month_start = _day(MONTH_START - 2 * DAY), _day(MONTH_START)
    last = month_start + timedelta(days=1)
    (month_of_tombstones,) = {
        row[0]
        for row in clickhouse.execute(
            "SELECT toYYYYMM(day) FROM plays WHERE play_id LIKE 'midnight-%%' AND deleted = 1"
        )
    }
    assert month_of_tombstones == month_start.year * 100 + month_start.month
    unmerged = clickhouse.execute(
        "SELECT toYYYYMM(day) AS month, count(), uniqExact(play_id, day) FROM plays "
        "GROUP BY month ORDER BY month"
    )
    assert len(unmerged) == 2  # two partitions
    assert all(rows > keys for _, rows, keys in unmerged)  # unmerged versions in each
    assert sum(_day(play.first_ts) < month_start for play in plays) > 100
    assert sum(_day(play.first_ts) >= month_start for play in plays) > 20
    ranges = [(first, last), (first, month_start), (month_start - timedelta(days=1), last)]
    for merged in (False, True):
        if merged:
            _merge(clickhouse)
        for day_from, day_to in ranges:
            assert len(month_ranges(day_from, day_to)) == 2
            whole = _newest_rows(clickhouse, ((day_from, day_to),), day_from, day_to)
            split = _newest_rows(clickhouse, month_ranges(day_from, day_to), day_from, day_to)
            assert split == whole, (merged, day_from, day_to)
            assert len(whole) == sum(day_from <= _day(p.first_ts) <= day_to for p in plays)
            for group_by in ("none", "content_id", "device_model"):
                got = playback_summary(clickhouse, PROJECT, day_from, day_to, group_by)
                want = reference_summary(plays, day_from, day_to, group_by)
                assert got == want, (merged, day_from, day_to, group_by)
            top = playback_summary(clickhouse, PROJECT, day_from, day_to, "content_id", limit=3)
            assert top == reference_summary(plays, day_from, day_to, "content_id")[:3]
            for interval in ("hour", "day"):
                series = playback_timeseries(clickhouse, PROJECT, day_from, day_to, interval)
                assert series == reference_timeseries(plays, day_from, day_to, interval)
            where = Slice(day_from, day_to, breakdown=["device_model"])
            assert playback_insight(clickhouse, PROJECT, where, "day") == reference_insight(
                plays, where, "day"
            )


def test_the_split_is_gated_on_the_server_version(clickhouse: ClickHouse) -> None:
    day_from, day_to = _day(MONTH_START - 2 * DAY), _day(MONTH_START)
    scans = PlayScans.of(clickhouse, day_from, day_to)
    if Capabilities(clickhouse.server_version()).version[:2] == (18, 16):
        assert scans.ranges == month_ranges(day_from, day_to)
    else:
        assert scans.ranges == ((day_from, day_to),)
