"""Service metrics (SPEC §4, §5 `GET /v1/metrics/services`) from `service_messages`
(migration 0005).

Response shape (`service_metrics`)::

    {"days": [{"day": "2026-10-01",
               "social_delivered": 0,      # social.notifications with status "delivered"
               "content_published": 0,     # cms.publish with action "published"
               "encoding_queued": 0,       # video.encoding by status
               "encoding_succeeded": 0,
               "encoding_failed": 0,
               "encode_ms_p95": null,      # float; null when no succeeded job carries encode_ms
               "emails_sent": 0,           # notifications.email by status
               "emails_failed": 0}, ...],  # every day of [from, to], oldest first, zeros kept
     "totals": {same fields without "day"}}

Semantics: UTC days of the message's `ts`; one project (messages without a project belong
to "default"); each (project, topic, message_id) counted once. `encode_ms_p95` is exact,
ClickHouse `quantileExact(0.95)`: the sorted value at 0-based index floor(0.95 * n), no
interpolation, over succeeded jobs that carry encode_ms; the totals p95 is over the whole
range (not a mean of daily values).

Deduplication reads with FINAL, which is exact whatever the merge state because copies of
a message share their `day` partition (FINAL does not merge across partitions). It streams
in key order, so unlike a GROUP BY on message_id its memory does not grow with the range.
One scan serves days and totals: each row is counted into its day and into the "" bucket.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from schemas.topics import CMS_PUBLISH, NOTIFICATIONS_EMAIL, SOCIAL_NOTIFICATIONS, VIDEO_ENCODING
from sinks.clickhouse import ClickHouse

COUNT_FIELDS = (
    "social_delivered",
    "content_published",
    "encoding_queued",
    "encoding_succeeded",
    "encoding_failed",
    "emails_sent",
    "emails_failed",
)

_TIMED = "topic = %(video)s AND status = 'succeeded' AND has_value = 1"

_SERVICE_METRICS_SQL = f"""
SELECT
    bucket,
    countIf(topic = %(social)s AND status = 'delivered'),
    countIf(topic = %(cms)s AND status = 'published'),
    countIf(topic = %(video)s AND status = 'queued'),
    countIf(topic = %(video)s AND status = 'succeeded'),
    countIf(topic = %(video)s AND status = 'failed'),
    countIf(topic = %(email)s AND status = 'sent'),
    countIf(topic = %(email)s AND status = 'failed'),
    countIf({_TIMED}),
    quantileExactIf(0.95)(value_ms, {_TIMED})
FROM service_messages FINAL
ARRAY JOIN [toString(day), ''] AS bucket
WHERE project = %(project)s
  AND day >= toDate(%(day_from)s) AND day <= toDate(%(day_to)s)
  AND topic IN (%(social)s, %(cms)s, %(video)s, %(email)s)
GROUP BY bucket
"""


def _entry(row: tuple[Any, ...] | None) -> dict[str, Any]:
    if row is None:
        return {**dict.fromkeys(COUNT_FIELDS, 0), "encode_ms_p95": None}
    counts = row[1 : 1 + len(COUNT_FIELDS)]
    timed, p95 = row[1 + len(COUNT_FIELDS)], row[2 + len(COUNT_FIELDS)]
    entry: dict[str, Any] = {name: int(n) for name, n in zip(COUNT_FIELDS, counts, strict=True)}
    entry["encode_ms_p95"] = float(p95) if int(timed) else None
    # Keep the documented key order: the p95 sits after the encoding counts.
    order = (*COUNT_FIELDS[:5], "encode_ms_p95", *COUNT_FIELDS[5:])
    return {name: entry[name] for name in order}


def service_metrics(ch: ClickHouse, project: str, day_from: date, day_to: date) -> dict[str, Any]:
    """Per-day and total service metrics for [day_from, day_to] (inclusive); see the module
    docstring for the shape. Raises ValueError when day_from > day_to."""
    if day_from > day_to:
        raise ValueError(f"from ({day_from}) is after to ({day_to})")
    rows = ch.execute(
        _SERVICE_METRICS_SQL,
        {
            "project": project,
            "day_from": day_from.isoformat(),
            "day_to": day_to.isoformat(),
            "social": SOCIAL_NOTIFICATIONS.name,
            "cms": CMS_PUBLISH.name,
            "video": VIDEO_ENCODING.name,
            "email": NOTIFICATIONS_EMAIL.name,
        },
    )
    by_bucket = {str(row[0]): row for row in rows}
    days = []
    for offset in range((day_to - day_from).days + 1):
        day = (day_from + timedelta(days=offset)).isoformat()
        days.append({"day": day, **_entry(by_bucket.get(day))})
    return {"days": days, "totals": _entry(by_bucket.get(""))}
