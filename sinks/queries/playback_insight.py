"""Playback insight (SPEC §5.1 `POST /v1/insights/playback`): the SPEC §4 playback and
QoE fields of the plays whose first event is on a day of [from, to], filtered and broken
down by the properties of each play's first event, over the whole range and optionally
per interval.

A play row carries its first event's properties under the names `events` uses (migration
0010), so the filter language and breakdowns of sinks/queries/properties.py apply to it
unchanged; `props.content_id` is the play's content (processor: `first_event_props`).
Exactness is that of sinks/queries/playback.py: the newest row per key from `plays
FINAL`, tombstones dropped, and the filter applied to those newest rows in the same outer
WHERE (after FINAL on both engines: a filter that ran before it could drop a tombstone
and bring back the row it hides).

Breakdown: the top `breakdown_limit` combinations by plays over the range one by one,
the rest as one `$other` group computed as a group (its percentiles and top errors are
those of its plays, not a merge of the listed ones). Groups are ordered by plays, highest
first, `$other` last. Points (with `interval`) are sparse like
`/v1/metrics/playback/timeseries`: buckets that have plays, in time order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, cast

from sinks.clickhouse import ClickHouse, Row
from sinks.queries.playback import (
    AGGREGATES,
    BUCKETS,
    INTERVAL_VALUES,
    PlaybackMetrics,
    PlaybackPoint,
    PlayScans,
    day_params,
    format_bucket,
    metrics,
)
from sinks.queries.properties import (
    OTHER,
    PropertyError,
    Slice,
    SqlParams,
    breakdown_sql,
    filter_sql,
    grouped_breakdown_sql,
)

# What a filter or breakdown may read of a play: its first event's properties.
FIRST_EVENT_COLUMNS: Final = (
    "type",
    "device_model",
    "app_version",
    "os",
    "region",
    "source",
    "session_id",
    "props_keys",
    "props_values",
    "props_num_keys",
    "props_num_values",
)


class PlaybackGroup(PlaybackMetrics):
    breakdown: dict[str, str] | None
    points: list[PlaybackPoint] | None


def check_interval(interval: str | None) -> None:
    if interval is not None and interval not in INTERVAL_VALUES:
        raise PropertyError(f"interval must be one of {', '.join(INTERVAL_VALUES)}")


def playback_insight(
    ch: ClickHouse, project: str, where: Slice, interval: str | None = None
) -> list[PlaybackGroup]:
    """One group per breakdown combination (one with breakdown null without a breakdown,
    zeros when there are no plays). Raises PropertyError (a ValueError) for a slice or
    interval the language does not have, ClickHouseError when a query fails."""
    properties, limit = where.checked()
    check_interval(interval)
    params = SqlParams("b")
    params.values.update(day_params(project, where.day_from, where.day_to))
    scans = PlayScans.of(ch, where.day_from, where.day_to)
    params.values.update(scans.params())
    dims = breakdown_sql(properties, params)
    names = [f"b{n}" for n in range(len(dims))]
    carried = ", ".join(f"{dim} AS {name}" for dim, name in zip(dims, names, strict=True))
    plays = scans.latest_plays(("minute", "day", "error_codes"), FIRST_EVENT_COLUMNS)
    source = (
        f"SELECT {carried + ', ' if carried else ''}* FROM ({plays}) "
        f"WHERE p_deleted = 0 AND {filter_sql(where.filters, params)}"
    )
    # Without a breakdown there is one combination: nothing to rank.
    kept = _top(_plays_per_combination(ch, source, names, params), limit) if names else None
    grouped = names if kept is None else grouped_breakdown_sql(names, kept, params)
    # Without a breakdown, the totals' aggregate has one row even without plays (zeros).
    totals = _aggregate(ch, source, grouped, params, len(grouped))
    series_of: dict[tuple[Any, ...], list[PlaybackPoint]] = {}
    if interval is not None:
        point_keys = [*grouped, BUCKETS[interval][1]]
        points = _aggregate(ch, source, point_keys, params, len(grouped))
        for (*group_key, bucket), point in sorted(points.items(), key=lambda item: item[0][-1]):
            series_of.setdefault(tuple(group_key), []).append(
                cast(PlaybackPoint, {"t": format_bucket(interval, bucket), **point})
            )
    groups: list[tuple[tuple[str, ...], PlaybackGroup]] = []
    for key, values in totals.items():
        series = series_of.get(key, []) if interval is not None else None
        breakdown = dict(zip(properties, key, strict=True)) if properties else None
        groups.append(
            (key, cast(PlaybackGroup, {"breakdown": breakdown, **values, "points": series}))
        )
    groups.sort(
        key=lambda item: (
            bool(item[0]) and set(item[0]) == {OTHER},
            -item[1]["plays"],
            item[0],
        )
    )
    return [group for _, group in groups]


def _plays_per_combination(
    ch: ClickHouse, source: str, names: Sequence[str], params: SqlParams
) -> list[Row]:
    """(breakdown values..., plays) of the plays of `source` per breakdown combination."""
    keys = ", ".join(names)
    return ch.execute(f"SELECT {keys}, count() FROM ({source}) GROUP BY {keys}", params.values)


def _top(counted: Sequence[Row], limit: int) -> list[tuple[str, ...]] | None:
    """The top `limit` breakdown combinations by plays, ties by value (byte order, as the
    engines sort), as top_grouped ranks them; None when there are no more than `limit`."""
    plays = {tuple(str(value) for value in row[:-1]): int(row[-1]) for row in counted}
    if len(plays) <= limit:
        return None
    ranked = sorted(plays, key=lambda key: (-plays[key], [value.encode() for value in key]))
    return ranked[:limit]


def _aggregate(
    ch: ClickHouse,
    source: str,
    keys: Sequence[str],
    params: SqlParams,
    breakdown_width: int,
) -> dict[tuple[Any, ...], PlaybackMetrics]:
    """The metrics per value of `keys` (the `breakdown_width` breakdown columns, then the
    bucket if any)."""
    names = [f"g{n}" for n in range(len(keys))]
    selected = ", ".join(f"{key} AS {name}" for key, name in zip(keys, names, strict=True))
    sql = f"SELECT {selected + ', ' if selected else ''}{AGGREGATES} FROM ({source})"
    if names:
        sql += f" GROUP BY {', '.join(names)}"
    rows: list[Row] = ch.execute(sql, params.values)
    width = len(keys)
    return {_key(row[:width], breakdown_width): metrics(row[width:]) for row in rows}


def _key(values: Sequence[Any], breakdown_width: int) -> tuple[Any, ...]:
    """Breakdown values as text (the bucket, last, stays as the engine returned it)."""
    return (
        *(str(value) for value in values[:breakdown_width]),
        *values[breakdown_width:],
    )
