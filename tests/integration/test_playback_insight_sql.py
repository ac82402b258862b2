"""`POST /v1/insights/playback` SQL (SPEC §5.1) on both engines: filters and breakdowns by
the properties of each play's first event, over the generated plays of
test_playback_sql.py (shuffled, duplicated, late, moved across midnight; rows inserted
unmerged), compared with a reading of the filter language written here from the events
alone, before and after the table is merged."""

from __future__ import annotations

from collections import defaultdict
from datetime import date, timedelta
from typing import Any

import pytest

from schemas.output import TableRows
from sinks.clickhouse import ClickHouse
from sinks.migrate import migrate
from sinks.queries.playback_insight import playback_insight
from sinks.queries.properties import Filter, PropertyError, Slice
from tests.integration.test_playback_sql import (
    BASE,
    BUCKETS,
    DAY,
    PROJECT,
    Generated,
    RefPlay,
    _day,
    _insert,
    _merge,
    blocks,
    generated,
    reference_metrics,
    reference_play,
)

__all__ = ["blocks", "generated"]  # module fixtures shared with test_playback_sql.py

OTHER, NONE = "$other", "$none"


@pytest.fixture
def clickhouse(clickhouse: ClickHouse) -> ClickHouse:
    """Both engines (tests/conftest.py), with the schema."""
    migrate(clickhouse)
    return clickhouse


# ---------------------------------------------------------------- reference


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def first_event_property(play: RefPlay, name: str) -> Any:
    """The value a filter sees on a play, None when missing: the first event's dimension
    ("" is missing), the record's source, or a props path where `content_id` is the
    play's content when the first event names none."""
    first = play.first
    if name == "source":
        return play.source or None
    if not name.startswith("props."):
        return getattr(first, name) or None
    value: Any = dict(first.props)
    if play.content_id and "content_id" not in value:
        value["content_id"] = play.content_id
    for part in name[len("props.") :].split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return None if isinstance(value, dict) else value


def matches(play: RefPlay, item: Filter) -> bool:
    value = first_event_property(play, item.property)
    if item.op == "is_set":
        return value is not None
    if item.op == "is_not_set":
        return value is None
    if item.op in ("neq", "not_in", "not_contains"):
        positive = {"neq": "eq", "not_in": "in", "not_contains": "contains"}[item.op]
        return not matches(play, Filter(item.property, positive, item.value))
    if value is None:
        return False
    if item.op == "eq":
        return _text(value) == _text(item.value)
    if item.op == "in":
        return _text(value) in {_text(v) for v in item.value}
    if item.op == "contains":
        return _text(item.value) in _text(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return {"gt": value > item.value, "gte": value >= item.value}[item.op]


def reference_insight(
    plays: list[RefPlay], where: Slice, interval: str | None
) -> list[dict[str, Any]]:
    chosen = [
        play
        for play in plays
        if where.day_from <= _day(play.first_ts) <= where.day_to
        and all(matches(play, item) for item in where.filters)
    ]
    properties = list(where.breakdown)

    def values_of(play: RefPlay) -> tuple[str, ...]:
        found = [first_event_property(play, name) for name in properties]
        return tuple(NONE if value is None else _text(value) for value in found)

    by_values: dict[tuple[str, ...], list[RefPlay]] = defaultdict(list)
    for play in chosen:
        by_values[values_of(play)].append(play)
    limit = where.breakdown_limit or 25
    ranked = sorted(by_values, key=lambda key: (-len(by_values[key]), key))
    if properties and len(ranked) > limit:
        folded: dict[tuple[str, ...], list[RefPlay]] = defaultdict(list)
        for key in ranked:
            target = key if key in ranked[:limit] else (OTHER,) * len(properties)
            folded[target].extend(by_values[key])
        by_values = folded
    if not properties:
        by_values = {(): chosen}
    rows = []
    for key, members in by_values.items():
        points = None
        if interval is not None:
            buckets: dict[str, list[RefPlay]] = defaultdict(list)
            for play in members:
                buckets[BUCKETS[interval](play.first_ts)].append(play)
            points = [{"t": t, **reference_metrics(buckets[t])} for t in sorted(buckets)]
        rows.append(
            (
                key,
                {
                    "breakdown": dict(zip(properties, key, strict=True)) if properties else None,
                    **reference_metrics(members),
                    "points": points,
                },
            )
        )
    rows.sort(key=lambda item: (set(item[0]) == {OTHER}, -item[1]["plays"], item[0]))
    return [row for _, row in rows]


# ---------------------------------------------------------------- tests

FIRST, LAST = _day(BASE), _day(BASE + 3 * DAY)

CASES = [
    pytest.param(Slice(FIRST, LAST, breakdown=["device_model"]), "day", id="by device, per day"),
    pytest.param(
        Slice(
            FIRST,
            LAST,
            filters=[Filter("props.content_id", "in", ["c-1", "c-2"])],
            breakdown=["props.autoplay"],
        ),
        "hour",
        id="content filter, breakdown by a bool prop with $none",
    ),
    pytest.param(
        Slice(
            FIRST,
            LAST,
            filters=[
                Filter("os", "neq", "horizon"),
                Filter("props.layout.fov", "gte", 110),
            ],
            breakdown=["source", "device_model"],
            breakdown_limit=2,
        ),
        None,
        id="nested numeric prop, two properties folded into $other",
    ),
    pytest.param(
        Slice(
            FIRST,
            FIRST + timedelta(days=1),
            filters=[
                Filter("session_id", "is_not_set"),
                Filter("type", "eq", "playback_request"),
            ],
        ),
        "minute",
        id="no breakdown, per minute",
    ),
    pytest.param(
        Slice(FIRST, LAST, filters=[Filter("region", "eq", "nowhere")]),
        None,
        id="nothing matches: one row of zeros",
    ),
    pytest.param(
        Slice(FIRST, LAST, filters=[Filter("region", "eq", "nowhere")], breakdown=["os"]),
        "day",
        id="nothing matches with a breakdown: no rows",
    ),
]


@pytest.mark.parametrize(("where", "interval"), CASES)
def test_playback_insight_matches_the_events(
    clickhouse: ClickHouse,
    generated: Generated,
    blocks: list[TableRows],
    where: Slice,
    interval: str | None,
) -> None:
    _insert(clickhouse, blocks)
    plays = [reference_play(events) for events in generated.plays.values()]
    want = reference_insight(plays, where, interval)
    if "nowhere" not in str(where.filters):
        assert want[0]["plays"] > 0  # the case selects plays
    for merged in (False, True):
        if merged:
            _merge(clickhouse)
        got = playback_insight(clickhouse, PROJECT, where, interval)
        assert got == want, merged


def test_a_filter_never_revives_a_play_hidden_by_its_tombstone(
    clickhouse: ClickHouse, generated: Generated, blocks: list[TableRows]
) -> None:
    """The midnight plays' old rows carry the same first-event properties as their new
    ones; their tombstones carry none. Counted once, on their first event's day."""
    _insert(clickhouse, blocks)
    day = generated.midnight_day
    later = day + timedelta(days=1)
    where = Slice(later, later, filters=[Filter("props.play_id", "contains", "midnight")])
    (row,) = playback_insight(clickhouse, PROJECT, where)
    assert row["plays"] == 0
    where = Slice(day, day, filters=[Filter("props.play_id", "contains", "midnight")])
    (row,) = playback_insight(clickhouse, PROJECT, where)
    assert row["plays"] == 4


@pytest.mark.parametrize(
    ("where", "interval", "message"),
    [
        pytest.param(Slice(date(2026, 1, 2), date(2026, 1, 1)), None, "after", id="from > to"),
        pytest.param(
            Slice(date(2026, 1, 1), date(2026, 1, 1), breakdown=["content_id"]),
            None,
            "unknown property",
            id="a play column that is not a property",
        ),
        pytest.param(
            Slice(date(2026, 1, 1), date(2026, 1, 1)), "week", "interval", id="bad interval"
        ),
    ],
)
def test_bad_insights_are_refused_before_any_sql(
    where: Slice, interval: str | None, message: str
) -> None:
    with pytest.raises(PropertyError, match=message):
        playback_insight(None, PROJECT, where, interval)  # type: ignore[arg-type]
