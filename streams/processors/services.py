"""Service topics → `service_messages` rows, per-minute InfluxDB points and the numbers the
worker exports to Prometheus (SPEC §3, §4 "Service metrics", §7).

Input: raw record values of the four service topics (`schemas/services.py`). A value that
does not decode, or a topic that is not a service topic, becomes a `ServiceDeadLetter` with
the reason; `process` never raises for bad input.

Outputs of `flush(now_ms)`:
- ClickHouse: one row per message in `service_messages` (migration 0005), the table of
  record for `GET /v1/metrics/services`. Correctness does not depend on this processor
  remembering anything: the table is a ReplacingMergeTree on (project, topic, message_id)
  and the query deduplicates regardless of merge state. Duplicates inside one flush are
  sent once; every other copy is sent again (re-sending is harmless, and a runner that
  re-feeds records after a failed insert must not lose them to a dedup memory).
- InfluxDB: per (project, topic, status, UTC minute) a point `service_metrics` with tags
  project/topic/status (status is the cms `action`) and fields `count` (int) and, for
  video succeeded, `encode_ms_p95` (float). Influx overwrites a point with the same series
  and time, so points carry the minute's *cumulative* count and each flush re-sends the
  minutes it touched. Minute state is kept for `series_window_ms` behind the last flush;
  a message for an older minute still gets its row but no point (counted in
  `late_for_series`) rather than overwrite a complete minute with a partial one. The
  series are a live view: after a restart, a minute that was half counted before it is
  rebuilt from the replayed records only. ClickHouse stays exact.
- Prometheus (read by the worker, not exported here): `delivered_total`
  (`social_messages_delivered`), `published_total`, `published_per_minute(now_ms)`
  (`content_creation_rate`), `totals()`. These and the series skip duplicates seen within
  the last `remember_at_most` messages (a bounded memory of 64-bit hashes: producer retries
  and short replays are not double counted; a long replay after a restart can be).

Quantiles use ClickHouse's `quantileExact` rule (common/qoe.py), so a minute's p95 here
and a day's p95 from the query follow the same definition.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field

import msgspec

from common.qoe import quantile_exact
from schemas.events import DeadLetter
from schemas.output import ProcessorOutput, SeriesPoint, TableRows
from schemas.services import (
    SERVICE_TOPICS,
    ContentPublished,
    EmailNotification,
    EncodingJob,
    ServiceMessage,
    SocialNotification,
    UnknownTopic,
    decode_message,
)
from schemas.topics import CMS_PUBLISH, HOUR_MS, SOCIAL_NOTIFICATIONS, VIDEO_ENCODING
from streams.processors.base import Position

MINUTE_MS = 60_000

SERVICE_TABLE = "service_messages"
SERVICE_COLUMNS = (
    "project",
    "topic",
    "message_id",
    "status",
    "kind",
    "key_id",
    "ts",
    "value_ms",
    "has_value",
)
SERIES_MEASUREMENT = "service_metrics"
P95 = 0.95


@dataclass(frozen=True, slots=True)
class ServiceDeadLetter:
    """A record that could not be used, with why. `raw` is the record value as received."""

    topic: str
    position: Position
    reason: str
    raw: bytes

    def dead_letter(self, consumer: str, received_at: int) -> DeadLetter:
        """The `analytics.events.dlq` value (its key: the topic); `consumer` names who read
        the record ("worker", "embedded") in its source."""
        return DeadLetter(
            project="unknown",
            received_at=received_at,
            index=-1,
            reason=self.reason[:500],
            raw=self.raw.decode("utf-8", "replace"),
            source=f"{consumer}:services:{self.topic}"
            f"@{self.position.partition}/{self.position.offset}",
        )


@dataclass(frozen=True, slots=True)
class ServiceFacts:
    """What a message contributes, whatever its topic. `status` is the social/video/email
    status or the cms action; `kind` the social kind, cms content_type, video profile ("" if
    unset) or email template; `key_id` the value of the topic's key field."""

    project: str
    topic: str
    message_id: str
    status: str
    kind: str
    key_id: str
    ts: int
    value_ms: float | None

    def row(self) -> tuple[str, str, str, str, str, str, int, float, int]:
        """The `service_messages` row, in SERVICE_COLUMNS order (day, minute and time are
        derived by the table)."""
        has_value = self.value_ms is not None
        return (
            self.project,
            self.topic,
            self.message_id,
            self.status,
            self.kind,
            self.key_id,
            self.ts,
            float(self.value_ms) if self.value_ms is not None else 0.0,
            int(has_value),
        )


def facts_of(topic: str, message: ServiceMessage) -> ServiceFacts:
    key_id: str = getattr(message, SERVICE_TOPICS[topic].key_field)
    status: str
    kind: str
    value_ms: float | None = None
    if isinstance(message, SocialNotification):
        status, kind = message.status, message.kind
    elif isinstance(message, ContentPublished):
        status, kind = message.action, message.content_type
    elif isinstance(message, EncodingJob):
        status, kind, value_ms = message.status, message.profile or "", message.encode_ms
    else:
        assert isinstance(message, EmailNotification)
        status, kind = message.status, message.template
    return ServiceFacts(
        message.project, topic, message.message_id, status, kind, key_id, message.ts, value_ms
    )


@dataclass(slots=True)
class _Minute:
    count: int = 0
    values: list[float] = field(default_factory=list)


SeriesKey = tuple[str, str, str, int]  # project, topic, status, minute start (epoch ms)


class ServiceMetricsProcessor:
    def __init__(
        self,
        *,
        remember_at_most: int = 200_000,
        series_window_ms: int = 2 * HOUR_MS,
        rate_window_minutes: int = 5,
    ) -> None:
        if rate_window_minutes * MINUTE_MS > series_window_ms:
            raise ValueError("the rate window must fit in the series window")
        self.remember_at_most = remember_at_most
        self.series_window_ms = series_window_ms
        self.rate_window_minutes = rate_window_minutes
        self.dead_letters: list[ServiceDeadLetter] = []
        self.processed = 0
        self.duplicates = 0
        self.late_for_series = 0
        self._rows: dict[tuple[str, str, str], ServiceFacts] = {}
        # hash() of (project, topic, message_id): a false "seen" needs a 64-bit collision
        # among the remembered entries (~1e-9 at 200k); it only affects the live numbers.
        self._seen: OrderedDict[int, None] = OrderedDict()
        self._totals: Counter[tuple[str, str, str]] = Counter()
        self._minutes: dict[SeriesKey, _Minute] = {}
        self._dirty: set[SeriesKey] = set()
        self._horizon_ms: int | None = None  # minutes before this get no points

    # ------------------------------------------------------------------ input
    def process(self, topic: str, value: bytes, position: Position) -> None:
        """Take one record value of a service topic. Never raises for bad input."""
        try:
            message = decode_message(topic, value)
        except UnknownTopic as exc:
            self._dead_letter(topic, position, str(exc), value)
            return
        except msgspec.DecodeError as exc:  # ValidationError included
            self._dead_letter(topic, position, f"invalid {topic} message: {exc}", value)
            return
        self.processed += 1
        facts = facts_of(topic, message)
        self._rows[(facts.project, topic, facts.message_id)] = facts
        minute_ms = facts.ts - facts.ts % MINUTE_MS
        series_key = (facts.project, topic, facts.status, minute_ms)
        seen_key = hash((facts.project, topic, facts.message_id))
        if seen_key in self._seen:
            self.duplicates += 1
            if series_key in self._minutes:
                # Re-send the minute: the copy may come from a runner retrying after a
                # failed sink write, and the cumulative point makes that harmless.
                self._dirty.add(series_key)
            return
        self._seen[seen_key] = None
        if len(self._seen) > self.remember_at_most:
            self._seen.popitem(last=False)
        self._totals[(facts.project, topic, facts.status)] += 1
        if self._horizon_ms is not None and minute_ms < self._horizon_ms:
            self.late_for_series += 1
            return
        minute = self._minutes.setdefault(series_key, _Minute())
        minute.count += 1
        if facts.value_ms is not None and topic == VIDEO_ENCODING.name:
            minute.values.append(facts.value_ms)
        self._dirty.add(series_key)

    def _dead_letter(self, topic: str, position: Position, reason: str, raw: bytes) -> None:
        self.dead_letters.append(ServiceDeadLetter(topic, position, reason, raw))

    def take_dead_letters(self) -> list[ServiceDeadLetter]:
        """The dead letters recorded since the last call (the runner sends them on)."""
        taken, self.dead_letters = self.dead_letters, []
        return taken

    # ------------------------------------------------------------------ output
    def flush(self, now_ms: int) -> ProcessorOutput:
        output = ProcessorOutput()
        if self._rows:
            rows = [facts.row() for facts in self._rows.values()]
            output.tables.append(TableRows(SERVICE_TABLE, SERVICE_COLUMNS, rows))
            self._rows = {}
        for key in sorted(self._dirty):
            output.points.append(self._point(key, self._minutes[key]))
        self._dirty = set()
        horizon = now_ms - now_ms % MINUTE_MS - self.series_window_ms
        self._horizon_ms = horizon if self._horizon_ms is None else max(horizon, self._horizon_ms)
        for key in [key for key in self._minutes if key[3] < self._horizon_ms]:
            del self._minutes[key]
        return output

    @staticmethod
    def _point(key: SeriesKey, minute: _Minute) -> SeriesPoint:
        project, topic, status, minute_ms = key
        fields: dict[str, float | int] = {"count": minute.count}
        if topic == VIDEO_ENCODING.name and status == "succeeded":
            p95 = quantile_exact(minute.values, P95)
            if p95 is not None:
                fields["encode_ms_p95"] = float(p95)
        return SeriesPoint(
            SERIES_MEASUREMENT,
            {"project": project, "topic": topic, "status": status},
            fields,
            minute_ms,
        )

    # ------------------------------------------------------------------ live numbers
    def totals(self) -> dict[tuple[str, str, str], int]:
        """Messages counted since start per (project, topic, status), duplicates skipped."""
        return dict(self._totals)

    def _total(self, topic: str, status: str) -> int:
        return sum(n for (_, t, s), n in self._totals.items() if (t, s) == (topic, status))

    @property
    def delivered_total(self) -> int:
        """Social messages delivered since start (Prometheus `social_messages_delivered`)."""
        return self._total(SOCIAL_NOTIFICATIONS.name, "delivered")

    @property
    def published_total(self) -> int:
        """Content published since start."""
        return self._total(CMS_PUBLISH.name, "published")

    def published_per_minute(self, now_ms: int, project: str | None = None) -> float:
        """Content published per minute (Prometheus `content_creation_rate`): published
        messages with event time in the last `rate_window_minutes` complete UTC minutes
        before now_ms, divided by that many minutes; all projects when project is None."""
        end = now_ms - now_ms % MINUTE_MS
        start = end - self.rate_window_minutes * MINUTE_MS
        published = sum(
            minute.count
            for (p, topic, status, minute_ms), minute in self._minutes.items()
            if topic == CMS_PUBLISH.name
            and status == "published"
            and start <= minute_ms < end
            and (project is None or p == project)
        )
        return published / self.rate_window_minutes
