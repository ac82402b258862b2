"""Lifecycle and stickiness (SPEC §4, §5.1). With `event`, activity means an event of that
type (and "first-ever" the first such event), read from the raw `events` table; without,
any event, read from the activity tables of migration 0002 (each user's first-seen day and
day bitmasks, written from every event as `events` is, and keyed by the same `user_hash`
as ACTOR): a user-day is a bit there, not a scan of its events.

Lifecycle, for each period P (a UTC day, or an ISO week by its Monday) of [from, to]:
- `new`: actors whose first-ever event is in P;
- `returning`: active in P and in P-1, not new;
- `resurrecting`: active in P, not in P-1, first-ever event before P-1;
- `dormant`: active in P-1 and not in P (a positive count).
First-ever events are looked up over all stored history up to `to`.

Stickiness, for [from, to] of n days: `users[k]` (k = 1..n) = actors active on exactly k
distinct days of the range, zeros included.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Final, Literal, TypedDict, get_args

from sinks.clickhouse import ClickHouse
from sinks.migrations.v0002_activity import DAYS_PER_BLOCK
from sinks.queries.activity import day_bits, day_number, from_day_number
from sinks.queries.actor import ACTOR
from sinks.queries.properties import SqlParams

LifecycleInterval = Literal["day", "week"]
LIFECYCLE_INTERVALS: Final[tuple[str, ...]] = get_args(LifecycleInterval)
_STEP: Final = {"day": 1, "week": 7}


class LifecyclePeriod(TypedDict):
    t: str
    new: int
    returning: int
    resurrecting: int
    dormant: int


class StickinessRow(TypedDict):
    days: int
    users: int


def _checked(day_from: date, day_to: date) -> None:
    if day_from > day_to:
        raise ValueError(f"from ({day_from}) is after to ({day_to})")


def period_starts(interval: str, day_from: date, day_to: date) -> list[date]:
    starts: list[date] = []
    day = day_from
    while day <= day_to:
        start = day - timedelta(days=day.weekday()) if interval == "week" else day
        if not starts or starts[-1] != start:
            starts.append(start)
        day += timedelta(days=1)
    return starts


def lifecycle(
    ch: ClickHouse,
    project: str,
    day_from: date,
    day_to: date,
    interval: str,
    event: str | None,
) -> list[LifecyclePeriod]:
    """One row per period of [day_from, day_to], zeros included. Raises ValueError for an
    unknown interval or from > to, ClickHouseError when the query fails."""
    _checked(day_from, day_to)
    if interval not in LIFECYCLE_INTERVALS:
        raise ValueError(f"interval must be one of {', '.join(LIFECYCLE_INTERVALS)}")
    step = _STEP[interval]
    starts = period_starts(interval, day_from, day_to)
    params = SqlParams("l")
    before = starts[0] - timedelta(days=step)
    source = (
        _actors_from_activity(project, before, day_to, interval, params)
        if event is None
        else _actors_from_events(project, before, day_to, interval, event, params)
    )
    # Each active period p counts towards p itself (new, returning, resurrecting) and
    # towards p + step, where the actor is dormant unless active then too.
    first, last = params(day_number(starts[0])), params(day_number(starts[-1]))
    counts = {
        from_day_number(int(t)).isoformat(): (int(new), int(returning), int(back), int(gone))
        for t, new, returning, back, gone in ch.execute(
            f"""
            SELECT t,
                   countIf(t = p AND first_period = p) AS new,
                   countIf(t = p AND first_period < p AND has(periods, p - {step})) AS returning,
                   countIf(t = p AND first_period < p - {step}
                           AND NOT has(periods, p - {step})) AS resurrecting,
                   countIf(t != p AND NOT has(periods, t)) AS dormant
            FROM (
                SELECT p, arrayJoin([p, p + {step}]) AS t, first_period, periods
                FROM ({source}) ARRAY JOIN periods AS p
            )
            WHERE t >= {first} AND t <= {last}
            GROUP BY t
            """,
            params.values,
        )
    }
    rows: list[LifecyclePeriod] = []
    for start in starts:
        new, returning, resurrecting, dormant = counts.get(start.isoformat(), (0, 0, 0, 0))
        rows.append(
            {
                "t": start.isoformat(),
                "new": new,
                "returning": returning,
                "resurrecting": resurrecting,
                "dormant": dormant,
            }
        )
    return rows


def _period_of(day_number_sql: str, interval: str) -> str:
    """The period of a day number as a day number: itself, or its ISO week's Monday (day
    0, 1970-01-01, was a Thursday)."""
    if interval == "week":
        return f"({day_number_sql} - modulo({day_number_sql} + 3, 7))"
    return day_number_sql


def _actors_from_events(
    project: str, since: date, day_to: date, interval: str, event: str, params: SqlParams
) -> str:
    """Per actor with an `event` by `day_to`: the period of its first one (`first_period`)
    and its active periods from the one of `since` on (`periods`), as day numbers."""
    period = _period_of("toInt32(toUInt16(day))", interval)
    return f"""
        SELECT {ACTOR} AS actor, min({period}) AS first_period,
               groupUniqArrayIf({period}, day >= toDate({params(since)})) AS periods
        FROM events
        WHERE project = {params(project)} AND day <= toDate({params(day_to)})
          AND type = {params(event)}
        GROUP BY actor
    """


def _actors_from_activity(
    project: str, since: date, day_to: date, interval: str, params: SqlParams
) -> str:
    """What `_actors_from_events` gives for any event, from the activity tables (migration
    0002, written from every event as `events` is): each user's first-seen day and the
    day bits of the blocks of [since, day_to], met in one GROUP BY over their UNION ALL
    (as sinks/queries/activity.py's retention). A user first seen after `day_to` has no
    period and counts nowhere."""
    lo, hi = day_number(since), day_number(day_to)
    project_param = params(project)
    return f"""
        SELECT actor, {_period_of("first", interval)} AS first_period,
               arrayDistinct(arrayMap(d -> {_period_of("toInt32(d)", interval)},
                   arrayFilter(d -> d >= {lo} AND d <= {hi}, days))) AS periods
        FROM (
            SELECT user_hash AS actor, toInt32(min(first_day)) AS first,
                   groupArrayArray(active_days) AS days
            FROM (
                SELECT user_hash, toUInt16(finalizeAggregation(first_day)) AS first_day,
                       emptyArrayUInt16() AS active_days
                FROM user_first_seen
                WHERE project = {project_param}
                UNION ALL
                SELECT user_hash, toUInt16(65535) AS first_day,
                       arrayMap(power -> toUInt16(block * {DAYS_PER_BLOCK}
                                + toUInt16(round(log2(power)))),
                                bitmaskToArray(finalizeAggregation(days))) AS active_days
                FROM user_activity
                WHERE project = {project_param}
                  AND block >= {lo // DAYS_PER_BLOCK} AND block <= {hi // DAYS_PER_BLOCK}
            )
            GROUP BY user_hash
        )
    """


def stickiness(
    ch: ClickHouse, project: str, day_from: date, day_to: date, event: str | None
) -> list[StickinessRow]:
    """users[k] for k = 1..n, n the days of [day_from, day_to]. Raises ValueError for
    from > to, ClickHouseError when the query fails."""
    _checked(day_from, day_to)
    params = SqlParams("s")
    if event is None:
        source = _active_days_from_activity(project, day_from, day_to, params)
    else:
        source = f"""
            SELECT {ACTOR} AS actor, uniqExact(day) AS days FROM events
            WHERE project = {params(project)} AND day >= toDate({params(day_from)})
              AND day <= toDate({params(day_to)}) AND type = {params(event)}
            GROUP BY actor
        """
    rows = ch.execute(
        f"SELECT days, count() FROM ({source}) WHERE days > 0 GROUP BY days", params.values
    )
    users = {int(days): int(n) for days, n in rows}
    span = (day_to - day_from).days + 1
    return [{"days": k, "users": users.get(k, 0)} for k in range(1, span + 1)]


def _active_days_from_activity(
    project: str, day_from: date, day_to: date, params: SqlParams
) -> str:
    """Per user: its active days in [day_from, day_to], counted in the activity words of
    the range's blocks (each word masked to the range's bits)."""
    lo, hi = day_number(day_from), day_number(day_to)
    blocks = list(range(lo // DAYS_PER_BLOCK, hi // DAYS_PER_BLOCK + 1))
    masks = [day_bits(lo, hi, block) for block in blocks]
    return f"""
        SELECT user_hash AS actor,
               sum(length(bitmaskToArray(bitAnd(word, transform(block,
                   CAST({params(blocks)} AS Array(UInt16)),
                   CAST({params(masks)} AS Array(UInt64)), toUInt64(0)))))) AS days
        FROM (
            SELECT user_hash, block, groupBitOrMerge(days) AS word
            FROM user_activity
            WHERE project = {params(project)}
              AND block >= {blocks[0]} AND block <= {blocks[-1]}
            GROUP BY user_hash, block
        )
        GROUP BY user_hash
    """
