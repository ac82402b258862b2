"""Funnels (SPEC §4, §5): the step matchers every funnel query uses, and predefined funnels
over `funnel_progress` (computed live by the worker). Ad-hoc funnels with filters,
breakdowns and time to convert are in sinks/queries/funnel_insight.py.

Both return, per step, `{"event", "users", "conversion_from_start",
"conversion_from_previous"}` where `users` counts users whose furthest step is ≥ that
step. Conversions are floats in 0..1: from_start = users[k] / users[1], from_previous =
users[k] / users[k-1] (the first step's is users[1] / users[1]); a zero denominator gives
0.0, never an error.

Step matchers (`step_condition`, `step_prefilter`), over a row's `e_type` and `e_props`:
- prop filters use visitParamExtractString/Raw (the JSON functions 18.16 has; chDB has
  them too), with keys and values always passed as parameters. Semantics in
  schemas/funnels.py (the same as the live processor's, so both ways give one answer).
  Requirement on the writer of `events.props`: compact JSON, as orjson.dumps or
  msgspec.json.encode produce (visitParam looks for `"key":` literally, so `{"key" : 1}`
  or `{"key": "v"}` with spaces would not match); any string escaping is fine (`\\u00e9`
  and `é` both match "é").
- `events` is sorted by (project, type, event_id) (migration 0006), so `type IN` reads only
  the steps' types; each step's string prop values are also looked for as plain text
  first (`step_prefilter`), which skips the JSON functions on most rows.
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
)
from sinks.clickhouse import ClickHouse

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


def _day(epoch_days: int) -> date:
    return datetime.fromtimestamp(epoch_days * 86_400, UTC).date()


def day_of_ms(ts_ms: int) -> date:
    """The UTC day of an epoch-milliseconds time."""
    return _day(ts_ms // DAY_MS)


def step_condition(step: FunnelStep, index: int, params: dict[str, Any]) -> str:
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


def step_prefilter(steps: list[FunnelStep], params: dict[str, Any]) -> str:
    """A cheap WHERE condition that every row matching some step satisfies: the row's type
    is a step's, and for a step with string prop filters, each value appears as a JSON
    string (`"value"`) in props. Without a backslash in props every string token is the
    value's bytes, so the test is exact then; a props with any backslash is let through
    for the real test (`step_condition`) to decide."""
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
