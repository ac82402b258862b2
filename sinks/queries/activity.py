"""Active users and retention (SPEC §4) from the activity bitmasks of migration 0002.

Days are handled as day numbers (days since 1970-01-01, what `toUInt16(Date)` gives) so
the arithmetic is the same on 18.16 and current servers. A user is active on day D when
bit D % 64 of its block D // 64 is set; a window [D-k+1, D] spans at most two blocks, so
each (user, block) row answers "any bit in the window" and the per-user answer is the max
over its rows.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any, Literal

from sinks.clickhouse import ClickHouse
from sinks.migrations.v0002_activity import DAYS_PER_BLOCK

_EPOCH = date(1970, 1, 1)
ALL_ONES = 2**64 - 1


def day_number(day: date) -> int:
    return (day - _EPOCH).days


def from_day_number(number: int) -> date:
    return _EPOCH + timedelta(days=number)


def _window_mask_sql(window_days: int) -> str:
    """SQL for the bits of block `block` that fall in [d - window_days + 1, d]. ClickHouse
    evaluates both branches of `if`, so shift amounts are clamped to 0..63 everywhere."""
    lo = f"greatest(toInt32(d) - {window_days - 1}, toInt32(block) * {DAYS_PER_BLOCK})"
    hi = f"least(toInt32(d), toInt32(block) * {DAYS_PER_BLOCK} + {DAYS_PER_BLOCK - 1})"
    width = f"({hi} - {lo} + 1)"
    ones = (
        f"if({width} >= 64, toUInt64({ALL_ONES}), "
        f"toUInt64(bitShiftLeft(toUInt64(1), toUInt8(greatest(least({width}, 63), 0))) - 1))"
    )
    shift = f"toUInt8(least({lo} - toInt32(block) * {DAYS_PER_BLOCK}, 63))"
    return f"if({width} <= 0, toUInt64(0), toUInt64(bitShiftLeft({ones}, {shift})))"


_ACTIVE_USERS_SQL = f"""
SELECT d, sum(a1) AS dau, sum(a7) AS wau, sum(a30) AS mau
FROM
(
    SELECT user_hash, d,
        max(bitAnd(mask, {_window_mask_sql(1)}) != 0) AS a1,
        max(bitAnd(mask, {_window_mask_sql(7)}) != 0) AS a7,
        max(bitAnd(mask, {_window_mask_sql(30)}) != 0) AS a30
    FROM
    (
        SELECT user_hash, block, groupBitOrMerge(days) AS mask
        FROM user_activity
        WHERE project = %(project)s AND block BETWEEN %(first_block)s AND %(last_block)s
        GROUP BY user_hash, block
    )
    ARRAY JOIN arrayMap(i -> toUInt32(i + %(first_day)s), range(%(day_count)s)) AS d
    WHERE toInt32(block) * {DAYS_PER_BLOCK} <= toInt32(d)
      AND toInt32(block) * {DAYS_PER_BLOCK} + {DAYS_PER_BLOCK - 1} >= toInt32(d) - 29
    GROUP BY user_hash, d
)
GROUP BY d
"""


def active_users(
    ch: ClickHouse, project: str, day_from: date, day_to: date
) -> list[dict[str, Any]]:
    """One entry per day of [day_from, day_to]: dau, wau, mau and stickiness = dau/mau
    (0.0 when mau is 0)."""
    first, last = day_number(day_from), day_number(day_to)
    rows = ch.execute(
        _ACTIVE_USERS_SQL,
        {
            "project": project,
            "first_block": (first - 29) // DAYS_PER_BLOCK,
            "last_block": last // DAYS_PER_BLOCK,
            "first_day": first,
            "day_count": last - first + 1,
        },
    )
    counts = {int(d): (int(dau), int(wau), int(mau)) for d, dau, wau, mau in rows}
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


_RETENTION_SQL = """
SELECT cohort, offset, count() AS users
FROM
(
    SELECT DISTINCT user_hash, cohort,
        intDiv(toInt32(active_period) - toInt32(cohort), %(period_days)s) AS offset
    FROM
    (
        SELECT user_hash, {cohort_expr} AS cohort
        FROM
        (
            SELECT user_hash, minMerge(first_day) AS first
            FROM user_first_seen
            WHERE project = %(project)s
            GROUP BY user_hash
        )
        WHERE first BETWEEN %(day_from)s AND %(day_to)s
    ) AS cohorts
    ALL INNER JOIN
    (
        SELECT user_hash, {active_expr} AS active_period
        FROM
        (
            SELECT user_hash, block, groupBitOrMerge(days) AS mask
            FROM user_activity
            WHERE project = %(project)s AND block >= %(first_block)s
            GROUP BY user_hash, block
        )
        ARRAY JOIN bitmaskToArray(mask) AS power
    ) AS active USING user_hash
    WHERE active_period >= cohort
)
GROUP BY cohort, offset
"""

# bitmaskToArray yields the set bits as powers of two; log2 of a power of two is exact.
_ACTIVE_DAY = f"toDate(toInt32(block) * {DAYS_PER_BLOCK} + toInt32(round(log2(power))))"
_PERIOD_EXPRESSIONS = {
    "day": ("first", _ACTIVE_DAY),
    "week": ("toMonday(first)", f"toMonday({_ACTIVE_DAY})"),
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
    cohort_expr, active_expr = _PERIOD_EXPRESSIONS[period]
    period_days = 1 if period == "day" else 7
    sql = _RETENTION_SQL.format(cohort_expr=cohort_expr, active_expr=active_expr)
    rows = ch.execute(
        sql,
        {
            "project": project,
            "day_from": day_from,
            "day_to": day_to,
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
