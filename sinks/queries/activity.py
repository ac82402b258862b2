"""Active users and retention (SPEC §4) from the activity bitmasks of migration 0002.

Days are handled as day numbers (days since 1970-01-01, what `toUInt16(Date)` gives) so
the arithmetic is the same on 18.16 and current servers. A user is active on day D when
bit D % 64 of its block D // 64 is set.

Active users: one row per user with one word per block in range (`groupBitOrMergeIf`);
a window [D-k+1, D] with k ≤ 30 lies in two adjacent blocks, so for each day and window
the query gets one constant mask per block, built here, and counts the users whose words
meet a mask (`sumForEach` over the days, one sum per block pair). At 10M events (186k
users, 30 days) that is 115 ms of chDB CPU and 150 ms of 18.16 server CPU per call; the
former ARRAY JOIN of every (user, block) row with the days took 700 ms | 2.9 s. Tried
and slower on 18.16: grouping users by identical words first (57k patterns, 243 ms) and
one scalar sum per (day, window) instead of the arrays (527 ms).

Retention: no join. Rows of `user_first_seen` and `user_activity` are finalized one by
one (`finalizeAggregation`, so unmerged parts need no GROUP BY of their own) and meet in
one GROUP BY user_hash over their UNION ALL; each user's active periods become offsets
from its cohort. 10M events: 93 ms of chDB CPU, 100-105 ms of 18.16 CPU per call, day or
week; the cohorts x activity join took 335-406 ms | 308-454 ms.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any, Literal

from sinks.clickhouse import ClickHouse
from sinks.migrations.v0002_activity import DAYS_PER_BLOCK

_EPOCH = date(1970, 1, 1)


def day_number(day: date) -> int:
    return (day - _EPOCH).days


def from_day_number(number: int) -> date:
    return _EPOCH + timedelta(days=number)


WINDOWS = (1, 7, 30)


def day_bits(lo: int, hi: int, block: int) -> int:
    """The bits of `block`'s word for the days of [lo, hi] (day numbers)."""
    first = max(lo, block * DAYS_PER_BLOCK)
    last = min(hi, block * DAYS_PER_BLOCK + DAYS_PER_BLOCK - 1)
    if last < first:
        return 0
    width = last - first + 1
    return ((1 << width) - 1) << (first - block * DAYS_PER_BLOCK)


def _pairs(first: int, last: int) -> dict[int, list[int]]:
    """Days of [first, last] by the lower of the two blocks that hold their 30-day window."""
    pairs: dict[int, list[int]] = {}
    for day in range(first, last + 1):
        pairs.setdefault((day - WINDOWS[-1] + 1) // DAYS_PER_BLOCK, []).append(day)
    return pairs


def active_users_sql(first: int, last: int) -> tuple[str, dict[str, Any]]:
    """One row per user with one activity word per block of [first - 29, last], and per
    pair of adjacent blocks one `sumForEach` over that pair's days: for each (day, window)
    a constant mask per block, built here, says which bits fall in the window."""
    pairs = _pairs(first, last)
    blocks = sorted({block for lower in pairs for block in (lower, lower + 1)})
    params: dict[str, Any] = {"first_block": blocks[0], "last_block": blocks[-1]}
    words = [f"groupBitOrMergeIf(days, block = {block}) AS w{block}" for block in blocks]
    sums = []
    for lower, days in pairs.items():
        for block in (lower, lower + 1):
            params[f"m{lower}_{block}"] = [
                day_bits(day - window + 1, day, block) for day in days for window in WINDOWS
            ]
        sums.append(
            "sumForEach(arrayMap((a, b) -> toUInt32("
            f"bitAnd(w{lower}, a) != 0 OR bitAnd(w{lower + 1}, b) != 0), "
            f"CAST(%(m{lower}_{lower})s AS Array(UInt64)), "
            f"CAST(%(m{lower}_{lower + 1})s AS Array(UInt64))))"
        )
    # 18.16 drops subquery columns used only inside a lambda: the WHERE uses every word.
    sql = f"""
        SELECT {", ".join(sums)}
        FROM (
            SELECT user_hash, {", ".join(words)}
            FROM user_activity
            WHERE project = %(project)s
              AND block >= %(first_block)s AND block <= %(last_block)s
            GROUP BY user_hash
        )
        WHERE {" OR ".join(f"w{block} != 0" for block in blocks)}
    """
    return sql, params


def active_users(
    ch: ClickHouse, project: str, day_from: date, day_to: date
) -> list[dict[str, Any]]:
    """One entry per day of [day_from, day_to]: dau, wau, mau and stickiness = dau/mau
    (0.0 when mau is 0)."""
    if day_from > day_to:
        raise ValueError(f"day_from {day_from} is after day_to {day_to}")
    first, last = day_number(day_from), day_number(day_to)
    sql, params = active_users_sql(first, last)
    rows = ch.execute(sql, {**params, "project": project})
    counts: dict[int, tuple[int, ...]] = {}
    if rows:
        for days, sums in zip(_pairs(first, last).values(), rows[0], strict=True):
            flat = [int(value) for value in sums] or [0] * (len(days) * len(WINDOWS))
            for index, day in enumerate(days):
                counts[day] = tuple(flat[index * len(WINDOWS) : (index + 1) * len(WINDOWS)])
    result = []
    for number in range(first, last + 1):
        dau, wau, mau = counts.get(number, (0, 0, 0))
        result.append(
            {
                "day": from_day_number(number).isoformat(),
                "dau": dau,
                "wau": wau,
                "mau": mau,
                "stickiness": dau / mau if mau else 0.0,
            }
        )
    return result


# One row per user without a join: first-seen days and active days meet in a GROUP BY
# user_hash over their UNION ALL; each user's active periods become offsets from its cohort.
_RETENTION_SQL = f"""
SELECT cohort, offset, count() AS users
FROM
(
    SELECT cohort,
        arrayJoin(arrayDistinct(arrayMap(
            d -> intDiv(toInt32({{period_of_d}}) - toInt32(cohort), %(period_days)s),
            arrayFilter(d -> toInt32({{period_of_d}}) >= toInt32(cohort), active)
        ))) AS offset
    FROM
    (
        SELECT user_hash, min(first) AS first_day, {{cohort_expr}} AS cohort,
            groupArrayArray(active_days) AS active
        FROM
        (
            SELECT user_hash, toUInt16(finalizeAggregation(first_day)) AS first,
                emptyArrayUInt16() AS active_days
            FROM user_first_seen
            WHERE project = %(project)s
            UNION ALL
            SELECT user_hash, toUInt16(65535) AS first,
                arrayMap(
                    power -> toUInt16(block * {DAYS_PER_BLOCK} + toUInt16(round(log2(power)))),
                    bitmaskToArray(finalizeAggregation(days))
                ) AS active_days
            FROM user_activity
            WHERE project = %(project)s AND block >= %(first_block)s
        )
        GROUP BY user_hash
        HAVING first_day >= %(day_from)s AND first_day <= %(day_to)s
    )
)
GROUP BY cohort, offset
"""

# Day numbers to periods: days themselves, or the Monday of their ISO week (day 0,
# 1970-01-01, was a Thursday). bitmaskToArray yields powers of two, whose log2 is exact.
_PERIOD_EXPRESSIONS = {
    "day": ("first_day", "d"),
    "week": ("first_day - modulo(first_day + 3, 7)", "d - modulo(d + 3, 7)"),
}


def retention(
    ch: ClickHouse,
    project: str,
    day_from: date,
    day_to: date,
    period: Literal["day", "week"],
    today: date,
) -> list[dict[str, Any]]:
    """Cohorts by first-ever day (or ISO week, Monday) within [day_from, day_to]:
    `retained[k]` = users of the cohort active in period cohort+k, for every period that
    has started by `today`; `retained[0]` is the cohort size."""
    cohort_expr, period_of_d = _PERIOD_EXPRESSIONS[period]
    period_days = 1 if period == "day" else 7
    sql = _RETENTION_SQL.format(cohort_expr=cohort_expr, period_of_d=period_of_d)
    rows = ch.execute(
        sql,
        {
            "project": project,
            "day_from": day_number(day_from),
            "day_to": day_number(day_to),
            "first_block": day_number(day_from) // DAYS_PER_BLOCK,
            "period_days": period_days,
        },
    )
    by_cohort: dict[date, dict[int, int]] = {}
    for cohort, offset, users in rows:
        by_cohort.setdefault(_as_date(cohort), {})[int(offset)] = int(users)
    current = today if period == "day" else today - timedelta(days=today.weekday())
    result = []
    for cohort in sorted(by_cohort):
        started = (current - cohort).days // period_days + 1
        counts = by_cohort[cohort]
        retained = [counts.get(k, 0) for k in range(max(started, 1))]
        result.append({"cohort": cohort.isoformat(), "size": retained[0], "retained": retained})
    return result


def _as_date(value: Any) -> date:
    if isinstance(value, date):
        return value
    return from_day_number(int(value))
