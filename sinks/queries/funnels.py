"""Funnel queries (SPEC §4, §5): ad-hoc over raw `events`, predefined over `funnel_progress`.

Both return, per step, `{"event", "users", "conversion_from_start",
"conversion_from_previous"}` where `users` counts users whose furthest step is ≥ that
step. Conversions are floats in 0..1: from_start = users[k] / users[1], from_previous =
users[k] / users[k-1] (the first step's is users[1] / users[1]); a zero denominator gives
0.0, never an error.

Semantics (SPEC §4, ClickHouse windowFunnel in its default mode, as current servers and
chDB compute it): a user reaches step k if there are events matching s1..sk at times
t1 ≤ t2 ≤ … ≤ tk with tk - t1 ≤ W and t1 on a day in [from, to]. Equal timestamps chain
in step order, and one event may satisfy several consecutive steps (a `page_view` →
`page_view` funnel is reached by a single page view) — that is what windowFunnel does.

How the ad-hoc SQL gets exactly that on chDB and on clickhouse-server 18.16:
- 18.16's windowFunnel takes only UInt32/DateTime timestamps, keeps them in an Int32, and
  orders equal timestamps by arrival, not by step. So each event becomes one row per step
  it matches (arrayJoin), its time is milliseconds since the chunk start (`toUInt32`,
  below 2**31), and the rows reach windowFunnel in step order (`ORDER BY step`), which
  its stable sort by time keeps for equal timestamps. Servers since 21.2 sort by (time,
  step) themselves (`Capabilities.funnel_orders_ties_by_step`), so only older ones get
  the ORDER BY (without it 18.16 is not exact).
- Ranges whose span plus window exceeds 2**31 ms are cut into chunks of whole days; a
  user's level is the max over chunks (a chain belongs to the chunk holding its t1).
- The step-1 condition also requires `day` in the chunk; later steps are read up to
  chunk end + window. Events before `from` cannot belong to a chain whose t1 ≥ from, so a
  user's step-1 events before `from` are simply not seen.
- Events are not deduplicated: identical copies of an event (replays, producer and sink
  retries) add the same (time, step) rows, which cannot change windowFunnel's answer, so
  the result does not depend on merges. The former whole-row `LIMIT 1 BY event_id` cost
  1.0-1.4 s of 2.3 s at 10M events. Copies that differ (a client retry gets a new
  clock-skew correction, so its ts may move by the network latency) both count, as in the
  live processor, which keeps no event ids.
- `events` is sorted by (project, type, event_id) (migration 0006), so `type IN` reads only
  the steps' types; each step's string prop values are also looked for as plain text
  first (`_prefilter`), which skips the JSON functions on most rows.
- Prop filters use visitParamExtractString/Raw (the JSON functions 18.16 has; chDB has
  them too), with keys and values always passed as parameters. Semantics in
  schemas/funnels.py. Requirement on the writer of `events.props`: compact JSON, as
  orjson.dumps or msgspec.json.encode produce (visitParam looks for `"key":` literally,
  so `{"key" : 1}` or `{"key": "v"}` with spaces would not match); any string escaping
  is fine (`\\u00e9` and `é` both match "é").
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any, Final, TypedDict

from schemas.funnels import (
    DAY_MS,
    PROGRESS_TABLE,
    FunnelDefinition,
    FunnelStep,
    PropValue,
    check_funnel,
)
from sinks.capabilities import Capabilities
from sinks.clickhouse import ClickHouse

# windowFunnel on 18.16 compares timestamps as Int32.
MAX_RELATIVE_MS: Final = 2**31 - 1
_EPOCH: Final = date(1970, 1, 1)


class StepResult(TypedDict):
    event: str
    users: int
    conversion_from_start: float
    conversion_from_previous: float


def epoch_day(day: date) -> int:
    return (day - _EPOCH).days


def day_start_ms(day: date) -> int:
    return epoch_day(day) * DAY_MS


def chunk_days(window_ms: int) -> int:
    """Whole days per chunk such that (chunk span + window) ms fits below 2**31."""
    days = (MAX_RELATIVE_MS + 1 - window_ms) // DAY_MS
    if days < 1:
        raise ValueError("window too large for the windowFunnel timestamp range")
    return days


def chunks(
    day_from: date, day_to: date, window_ms: int, max_days: int | None = None
) -> list[tuple[date, date]]:
    """[from, to] cut into consecutive inclusive day ranges of at most chunk_days()."""
    size = chunk_days(window_ms)
    if max_days is not None:
        size = max(1, min(size, max_days))
    first, last = epoch_day(day_from), epoch_day(day_to)
    return [
        (_day(start), _day(min(start + size - 1, last))) for start in range(first, last + 1, size)
    ]


def _day(epoch_days: int) -> date:
    return datetime.fromtimestamp(epoch_days * 86_400, UTC).date()


def _condition(step: FunnelStep, index: int, params: dict[str, Any]) -> str:
    """SQL for "this row matches step `index`", all user values as parameters."""
    params[f"s{index}_type"] = step.event
    parts = [f"e_type = %(s{index}_type)s"]
    for number, (key, value) in enumerate(sorted(step.where.items())):
        key_param, value_param = f"s{index}_k{number}", f"s{index}_v{number}"
        params[key_param] = key
        raw = f"visitParamExtractRaw(e_props, %({key_param})s)"
        parts.append(_equality(raw, key_param, value_param, value, params))
    return " AND ".join(parts)


def _equality(
    raw: str, key_param: str, value_param: str, value: PropValue, params: dict[str, Any]
) -> str:
    if isinstance(value, bool):
        params[value_param] = "true" if value else "false"
        return f"{raw} = %({value_param})s"
    if isinstance(value, str):
        params[value_param] = value
        # visitParamExtractString unescapes whatever escaping the serializer chose; the
        # first-character check keeps numbers, bools and missing keys from matching "".
        return (
            f"(visitParamExtractString(e_props, %({key_param})s) = %({value_param})s "
            f"AND substring({raw}, 1, 1) = '\"')"
        )
    params[value_param] = float(value)
    # toFloat64OrNull is NULL for strings, bools, null, objects and a missing key.
    return f"ifNull(toFloat64OrNull({raw}) = toFloat64(%({value_param})s), 0)"


def _prefilter(steps: list[FunnelStep], params: dict[str, Any]) -> str:
    """A cheap WHERE condition that every row matching some step satisfies: the row's type
    is a step's, and for a step with string prop filters, each value appears as a JSON
    string (`"value"`) in props. Without a backslash in props every string token is the
    value's bytes, so the test is exact then; a props with any backslash is let through
    for the real test (`_condition`) to decide."""
    params["backslash"] = "\\"
    options = []
    for index, step in enumerate(steps):
        needles = [value for _, value in sorted(step.where.items()) if isinstance(value, str)]
        if not needles:
            options.append(f"type = %(s{index}_type)s")
            continue
        found = []
        for number, value in enumerate(needles):
            params[f"s{index}_needle{number}"] = f'"{value}"'
            found.append(f"position(props, %(s{index}_needle{number})s) > 0")
        options.append(
            f"(type = %(s{index}_type)s AND "
            f"({' AND '.join(found)} OR position(props, %(backslash)s) > 0))"
        )
    return " OR ".join(options)


def _chunk_sql(number: int, conditions: list[str], prefilter: str, order_ties: bool) -> str:
    p = f"c{number}"
    # Step numbers each row matches; step 1 only when the event's day is in the chunk.
    matched = [f"if(e_day >= %({p}_from)s AND e_day <= %({p}_to)s AND {conditions[0]}, 1, 0)"]
    matched += [f"if({condition}, {step}, 0)" for step, condition in enumerate(conditions, 1)][1:]
    funnel_args = ", ".join(f"step = {step}" for step in range(1, len(conditions) + 1))
    # Old servers sort each user's rows stably by time: arriving in step order, ties
    # stay in step order (cheaper than sorting by time here: 18.16, 10M events, 1.0 s
    # instead of 1.15 s of server CPU).
    order = "ORDER BY step" if order_ties else ""
    return f"""
        SELECT uh, windowFunnel(%(window_ms)s)(rel_ms, {funnel_args}) AS reached
        FROM (
            SELECT uh, toUInt32(e_ts - %({p}_base)s) AS rel_ms,
                   arrayJoin(arrayFilter(x -> x != 0, [{", ".join(matched)}])) AS step
            FROM (
                SELECT user_hash AS uh, ts AS e_ts, day AS e_day, type AS e_type,
                       props AS e_props
                FROM events
                WHERE project = %(project)s AND type IN %(types)s AND ({prefilter})
                  AND day >= %({p}_from)s AND day <= %({p}_scan_to)s
                  AND ts >= %({p}_base)s AND ts <= %({p}_scan_end)s
            )
            {order}
        )
        GROUP BY uh
    """


def adhoc_funnel_sql(
    project: str,
    steps: list[FunnelStep],
    window_seconds: int,
    day_from: date,
    day_to: date,
    *,
    max_chunk_days: int | None = None,
    caps: Capabilities | None = None,
) -> tuple[str, dict[str, Any]]:
    """The ad-hoc query text and its parameters (for EXPLAIN, logs and tests). Without
    `caps` the text suits every server (it sorts ties for windowFunnel itself)."""
    check_funnel(steps, window_seconds)
    if day_from > day_to:
        raise ValueError("from must not be after to")
    window_ms = window_seconds * 1000
    params: dict[str, Any] = {
        "project": project,
        "types": tuple(sorted({step.event for step in steps})),
        "window_ms": window_ms,
    }
    conditions = [_condition(step, index, params) for index, step in enumerate(steps)]
    prefilter = _prefilter(steps, params)
    order_ties = caps is None or not caps.funnel_orders_ties_by_step
    parts = []
    for number, (first, last) in enumerate(chunks(day_from, day_to, window_ms, max_chunk_days)):
        base = day_start_ms(first)
        scan_end = day_start_ms(last) + DAY_MS - 1 + window_ms
        params.update(
            {
                f"c{number}_from": first,
                f"c{number}_to": last,
                f"c{number}_base": base,
                f"c{number}_scan_end": scan_end,
                f"c{number}_scan_to": _day(scan_end // DAY_MS),
            }
        )
        parts.append(_chunk_sql(number, conditions, prefilter, order_ties))
    sql = f"""
        SELECT furthest, count() AS users
        FROM (
            SELECT uh, max(reached) AS furthest
            FROM ({" UNION ALL ".join(parts)})
            GROUP BY uh
        )
        WHERE furthest > 0
        GROUP BY furthest
    """
    return sql, params


def adhoc_funnel(
    ch: ClickHouse,
    project: str,
    steps: list[FunnelStep],
    window_seconds: int,
    day_from: date,
    day_to: date,
    *,
    max_chunk_days: int | None = None,
) -> list[StepResult]:
    """Funnel over raw events at query time. Raises ValueError for a bad funnel or range,
    ClickHouseError when the query fails. `max_chunk_days` only narrows chunks (tests)."""
    sql, params = adhoc_funnel_sql(
        project,
        steps,
        window_seconds,
        day_from,
        day_to,
        max_chunk_days=max_chunk_days,
        caps=Capabilities(ch.server_version()),
    )
    histogram = {int(level): int(users) for level, users in ch.execute(sql, params)}
    return step_results([step.event for step in steps], histogram)


def predefined_funnel(
    ch: ClickHouse, project: str, definition: FunnelDefinition, day_from: date, day_to: date
) -> list[StepResult]:
    """A predefined funnel from `funnel_progress`: per user, the max level over start days
    in [from, to]; exact whatever the merge state. Raises ValueError for from > to."""
    if day_from > day_to:
        raise ValueError("from must not be after to")
    rows = ch.execute(
        f"""
        SELECT furthest, count() AS users
        FROM (
            SELECT user_hash, max(level) AS furthest
            FROM {PROGRESS_TABLE}
            WHERE project = %(project)s AND funnel = %(funnel)s
              AND definition = %(definition)s
              AND start_day >= %(from)s AND start_day <= %(to)s
            GROUP BY user_hash
        )
        WHERE furthest > 0
        GROUP BY furthest
        """,
        {
            "project": project,
            "funnel": definition.name,
            "definition": definition.fingerprint,
            "from": day_from,
            "to": day_to,
        },
    )
    histogram = {int(level): int(users) for level, users in rows}
    return step_results([step.event for step in definition.steps], histogram)


def step_results(events: list[str], histogram: Mapping[int, int]) -> list[StepResult]:
    """Per-step results from {furthest level: users}."""
    results: list[StepResult] = []
    first = previous = 0
    for index, event in enumerate(events, start=1):
        users = sum(count for level, count in histogram.items() if level >= index)
        if index == 1:
            first = previous = users
        results.append(
            {
                "event": event,
                "users": users,
                "conversion_from_start": users / first if first else 0.0,
                "conversion_from_previous": users / previous if previous else 0.0,
            }
        )
        previous = users
    return results
