"""Lifecycle and stickiness (SPEC §4, §5.1), from the raw `events` table; with `event`,
activity means an event of that type (and "first-ever" the first such event).

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
from sinks.queries.actor import ACTOR
from sinks.queries.properties import SqlParams

LifecycleInterval = Literal["day", "week"]
LIFECYCLE_INTERVALS: Final[tuple[str, ...]] = get_args(LifecycleInterval)
_PERIOD: Final = {"day": ("day", 1), "week": ("toMonday(day)", 7)}


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
    period, step = _PERIOD[interval]
    starts = period_starts(interval, day_from, day_to)
    params = SqlParams("l")
    kind = f"AND type = {params(event)}" if event is not None else ""
    first, last = params(starts[0]), params(starts[-1])
    before = params(starts[0] - timedelta(days=step))
    # Per actor: the period of its first-ever event, and its active periods from the one
    # before the range on (dormancy in the first period looks at it).
    actors = f"""
        SELECT {ACTOR} AS actor, min({period}) AS first_period,
               groupUniqArrayIf({period}, {period} >= toDate({before})) AS periods
        FROM events
        WHERE project = {params(project)} AND day <= toDate({params(day_to)}) {kind}
        GROUP BY actor
    """
    active = f"""
        SELECT p AS t,
               countIf(first_period = p) AS new,
               countIf(first_period < p AND has(periods, p - {step})) AS returning,
               countIf(first_period < p - {step} AND NOT has(periods, p - {step})) AS resurrecting
        FROM ({actors}) ARRAY JOIN periods AS p
        WHERE p >= toDate({first}) AND p <= toDate({last})
        GROUP BY t
    """
    dormant = f"""
        SELECT p + {step} AS t, countIf(NOT has(periods, p + {step})) AS dormant
        FROM ({actors}) ARRAY JOIN periods AS p
        WHERE p + {step} >= toDate({first}) AND p + {step} <= toDate({last})
        GROUP BY t
    """
    counts: dict[str, dict[str, int]] = {}
    for t, new, returning, resurrecting in ch.execute(active, params.values):
        counts[str(t)] = {"new": int(new), "returning": int(returning)}
        counts[str(t)]["resurrecting"] = int(resurrecting)
    dormancy = {str(t): int(n) for t, n in ch.execute(dormant, params.values)}
    rows: list[LifecyclePeriod] = []
    for start in starts:
        found = counts.get(start.isoformat(), {})
        rows.append(
            {
                "t": start.isoformat(),
                "new": found.get("new", 0),
                "returning": found.get("returning", 0),
                "resurrecting": found.get("resurrecting", 0),
                "dormant": dormancy.get(start.isoformat(), 0),
            }
        )
    return rows


def stickiness(
    ch: ClickHouse, project: str, day_from: date, day_to: date, event: str | None
) -> list[StickinessRow]:
    """users[k] for k = 1..n, n the days of [day_from, day_to]. Raises ValueError for
    from > to, ClickHouseError when the query fails."""
    _checked(day_from, day_to)
    params = SqlParams("s")
    kind = f"AND type = {params(event)}" if event is not None else ""
    rows = ch.execute(
        f"""
        SELECT days, count() FROM (
            SELECT {ACTOR} AS actor, uniqExact(day) AS days FROM events
            WHERE project = {params(project)} AND day >= toDate({params(day_from)})
              AND day <= toDate({params(day_to)}) {kind}
            GROUP BY actor
        ) GROUP BY days
        """,
        params.values,
    )
    users = {int(days): int(n) for days, n in rows}
    span = (day_to - day_from).days + 1
    return [{"days": k, "users": users.get(k, 0)} for k in range(1, span + 1)]
