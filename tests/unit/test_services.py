"""Service topics without infrastructure: message schemas, keys, the publisher's checks,
the service-metrics processor and the shape of the services query."""

from __future__ import annotations

from datetime import date
from typing import Any, cast

import msgspec
import orjson
import pytest

from schemas.publisher import ServicePublisher
from schemas.services import (
    SERVICE_TOPICS,
    ContentPublished,
    EmailNotification,
    EncodingJob,
    InvalidMessage,
    ServiceMessage,
    SocialNotification,
    UnknownTopic,
    decode_message,
    encode_message,
    message_key,
    topic_for,
)
from schemas.topics import TOPICS_BY_NAME
from sinks.queries.services import service_metrics
from streams.processors.base import Position
from streams.processors.services import (
    SERIES_MEASUREMENT,
    SERVICE_COLUMNS,
    SERVICE_TABLE,
    ServiceMetricsProcessor,
)

T0 = 1_764_100_800_000  # 2025-11-25T20:00:00Z, a minute boundary
MINUTE = 60_000
POS = Position(0, 0)

SOCIAL = "social.notifications"
CMS = "cms.publish"
VIDEO = "video.encoding"
EMAIL = "notifications.email"


def social(message_id: str = "s1", status: str = "delivered", **extra: Any) -> SocialNotification:
    fields: dict[str, Any] = {
        "user_id": "u1",
        "kind": "friend_request",
        "status": status,
        "ts": T0,
        **extra,
    }
    return SocialNotification(message_id=message_id, **fields)


def content(message_id: str = "c1", action: str = "published", **extra: Any) -> ContentPublished:
    fields: dict[str, Any] = {
        "content_id": "content-1",
        "content_type": "scene",
        "action": action,
        "ts": T0,
        **extra,
    }
    return ContentPublished(message_id=message_id, **fields)


def job(
    message_id: str = "j1",
    status: str = "succeeded",
    encode_ms: float | None = 1000.0,
    **extra: Any,
) -> EncodingJob:
    fields: dict[str, Any] = {
        "job_id": "job-1",
        "content_id": "content-1",
        "status": status,
        "ts": T0,
        "encode_ms": encode_ms,
        **extra,
    }
    return EncodingJob(message_id=message_id, **fields)


def email(message_id: str = "e1", status: str = "sent", **extra: Any) -> EmailNotification:
    fields: dict[str, Any] = {
        "user_id": "u2",
        "template": "welcome",
        "status": status,
        "ts": T0,
        **extra,
    }
    return EmailNotification(message_id=message_id, **fields)


def raw(**fields: Any) -> bytes:
    return orjson.dumps(fields)


# ---------------------------------------------------------------------- schemas
GOOD_SOCIAL: dict[str, Any] = {
    "message_id": "m",
    "user_id": "u",
    "kind": "mention",
    "status": "sent",
    "ts": T0,
}
GOOD_CMS: dict[str, Any] = {
    "message_id": "m",
    "content_id": "c",
    "action": "updated",
    "content_type": "video",
    "ts": T0,
}
GOOD_VIDEO: dict[str, Any] = {
    "message_id": "m",
    "job_id": "j",
    "content_id": "c",
    "status": "queued",
    "ts": T0,
}
GOOD_EMAIL: dict[str, Any] = {
    "message_id": "m",
    "user_id": "u",
    "template": "t",
    "status": "failed",
    "ts": T0,
}


@pytest.mark.parametrize(
    ("topic", "fields", "expected"),
    [
        pytest.param(SOCIAL, GOOD_SOCIAL, SocialNotification(**GOOD_SOCIAL), id="social minimal"),
        pytest.param(
            SOCIAL,
            {**GOOD_SOCIAL, "sender_id": "u9", "project": "p2"},
            SocialNotification(**GOOD_SOCIAL, sender_id="u9", project="p2"),
            id="social with sender and project",
        ),
        pytest.param(CMS, GOOD_CMS, ContentPublished(**GOOD_CMS), id="cms minimal"),
        pytest.param(
            CMS,
            {**GOOD_CMS, "author_id": "a1"},
            ContentPublished(**GOOD_CMS, author_id="a1"),
            id="cms with author",
        ),
        pytest.param(VIDEO, GOOD_VIDEO, EncodingJob(**GOOD_VIDEO), id="video queued"),
        pytest.param(
            VIDEO,
            {**GOOD_VIDEO, "status": "succeeded", "encode_ms": 1520, "profile": "1080p"},
            EncodingJob(**{**GOOD_VIDEO, "status": "succeeded"}, encode_ms=1520.0, profile="1080p"),
            id="video succeeded with int encode_ms",
        ),
        pytest.param(
            VIDEO,
            {**GOOD_VIDEO, "status": "failed", "encode_ms": 12.5},
            EncodingJob(**{**GOOD_VIDEO, "status": "failed"}, encode_ms=12.5),
            id="video failed with float encode_ms",
        ),
        pytest.param(EMAIL, GOOD_EMAIL, EmailNotification(**GOOD_EMAIL), id="email minimal"),
        pytest.param(
            EMAIL,
            {**GOOD_EMAIL, "error": "mailbox full", "later_field": [1, 2]},
            EmailNotification(**GOOD_EMAIL, error="mailbox full"),
            id="unknown fields are ignored",
        ),
    ],
)
def test_valid_messages_decode(
    topic: str, fields: dict[str, Any], expected: ServiceMessage
) -> None:
    message = decode_message(topic, orjson.dumps(fields))
    assert message == expected
    assert message.project == fields.get("project", "default")


@pytest.mark.parametrize(
    ("topic", "value", "error"),
    [
        pytest.param(SOCIAL, b"{not json", "malformed", id="not JSON"),
        pytest.param(SOCIAL, b"[1, 2]", "Expected `object`", id="array instead of object"),
        pytest.param(
            SOCIAL, raw(**{**GOOD_SOCIAL, "status": "read"}), "status", id="social unknown status"
        ),
        pytest.param(
            SOCIAL,
            raw(**{k: v for k, v in GOOD_SOCIAL.items() if k != "user_id"}),
            "user_id",
            id="social missing user_id",
        ),
        pytest.param(SOCIAL, raw(**{**GOOD_SOCIAL, "message_id": ""}), "length", id="empty id"),
        pytest.param(SOCIAL, raw(**{**GOOD_SOCIAL, "ts": -1}), ">= 0", id="negative ts"),
        pytest.param(SOCIAL, raw(**{**GOOD_SOCIAL, "ts": "now"}), "int", id="ts as string"),
        pytest.param(CMS, raw(**{**GOOD_CMS, "action": "deleted"}), "action", id="cms bad action"),
        pytest.param(
            CMS,
            raw(**{k: v for k, v in GOOD_CMS.items() if k != "content_type"}),
            "content_type",
            id="cms missing content_type",
        ),
        pytest.param(
            VIDEO, raw(**{**GOOD_VIDEO, "encode_ms": 5}), "finished job", id="queued with time"
        ),
        pytest.param(
            VIDEO,
            raw(**{**GOOD_VIDEO, "status": "succeeded", "encode_ms": -5}),
            ">= 0",
            id="negative encode_ms",
        ),
        pytest.param(
            VIDEO,
            raw(**{**GOOD_VIDEO, "status": "succeeded", "encode_ms": True}),
            "float",
            id="boolean encode_ms",
        ),
        pytest.param(VIDEO, raw(**{**GOOD_VIDEO, "status": "running"}), "status", id="video bad"),
        pytest.param(
            EMAIL, raw(**{**GOOD_EMAIL, "status": "delivered"}), "status", id="email bad status"
        ),
        pytest.param(
            EMAIL,
            raw(**{k: v for k, v in GOOD_EMAIL.items() if k != "template"}),
            "template",
            id="email missing template",
        ),
    ],
)
def test_invalid_messages_are_refused(topic: str, value: bytes, error: str) -> None:
    with pytest.raises(msgspec.DecodeError, match=error):
        decode_message(topic, value)


def test_unknown_topic_is_refused() -> None:
    with pytest.raises(UnknownTopic, match=r"analytics\.events"):
        decode_message("analytics.events", raw(**GOOD_SOCIAL))


# ---------------------------------------------------------------------- keys and encoding
@pytest.mark.parametrize(
    ("message", "topic", "key"),
    [
        pytest.param(social(), SOCIAL, b"u1", id="social by user_id"),
        pytest.param(content(), CMS, b"content-1", id="cms by content_id"),
        pytest.param(job(), VIDEO, b"job-1", id="video by job_id"),
        pytest.param(email(), EMAIL, b"u2", id="email by user_id"),
    ],
)
def test_topic_and_key_follow_the_registry(message: ServiceMessage, topic: str, key: bytes) -> None:
    assert topic_for(message).name == topic
    assert SERVICE_TOPICS[topic].key_field == TOPICS_BY_NAME[topic].key
    assert message_key(message) == key
    assert decode_message(topic, encode_message(message)) == message


def test_registry_maps_every_service_topic() -> None:
    assert {name: topic.key_field for name, topic in SERVICE_TOPICS.items()} == {
        SOCIAL: "user_id",
        CMS: "content_id",
        VIDEO: "job_id",
        EMAIL: "user_id",
    }


def test_unset_optional_fields_are_not_sent() -> None:
    assert orjson.loads(encode_message(job(status="queued", encode_ms=None))) == {
        "message_id": "j1",
        "job_id": "job-1",
        "content_id": "content-1",
        "status": "queued",
        "ts": T0,
    }


@pytest.mark.parametrize(
    ("message", "error"),
    [
        pytest.param({"message_id": "m"}, "not a service message: dict", id="a dict"),
        pytest.param(social(status="read"), "status", id="status outside the literal"),
        pytest.param(social(message_id=""), "length", id="empty message_id"),
        pytest.param(content(ts=-5), ">= 0", id="negative ts"),
        pytest.param(email(ts="yesterday"), "int", id="ts of the wrong type"),
        pytest.param(
            job(encode_ms=cast(Any, object())), "Encoding objects of type object", id="unencodable"
        ),
    ],
)
def test_encode_refuses_what_consumers_would_refuse(message: Any, error: str) -> None:
    with pytest.raises(InvalidMessage, match=error):
        encode_message(message)


async def test_publisher_checks_messages_before_needing_kafka() -> None:
    publisher = ServicePublisher("127.0.0.1:1", client_id="test", topic_prefix="t_x.")
    assert publisher.topic_name(job()) == "t_x.video.encoding"
    with pytest.raises(InvalidMessage, match="not a service message"):
        await publisher.publish({"message_id": "m"})  # type: ignore[arg-type]
    with pytest.raises(InvalidMessage, match="status"):
        await publisher.publish_many([social(), social(status="read")])
    with pytest.raises(RuntimeError, match="not started"):
        await publisher.publish(social())


# ---------------------------------------------------------------------- processor
def feed(processor: ServiceMetricsProcessor, *messages: ServiceMessage) -> None:
    for offset, message in enumerate(messages):
        processor.process(topic_for(message).name, encode_message(message), Position(0, offset))


def test_processor_emits_one_row_per_message_with_its_facts() -> None:
    processor = ServiceMetricsProcessor()
    feed(
        processor,
        social(),
        content(author_id="a1"),
        job(profile="4k", encode_ms=2500.0),
        job("j0", status="queued", encode_ms=None),
        email(status="failed", error="bounce", project="p2"),
    )
    output = processor.flush(T0 + MINUTE)
    [table] = output.tables
    assert (table.table, table.columns) == (SERVICE_TABLE, SERVICE_COLUMNS)
    assert table.rows == [
        ("default", SOCIAL, "s1", "delivered", "friend_request", "u1", T0, 0.0, 0),
        ("default", CMS, "c1", "published", "scene", "content-1", T0, 0.0, 0),
        ("default", VIDEO, "j1", "succeeded", "4k", "job-1", T0, 2500.0, 1),
        ("default", VIDEO, "j0", "queued", "", "job-1", T0, 0.0, 0),
        ("p2", EMAIL, "e1", "failed", "welcome", "u2", T0, 0.0, 0),
    ]
    assert processor.flush(T0 + MINUTE).is_empty()


def test_processor_counts_per_project_topic_and_status() -> None:
    processor = ServiceMetricsProcessor()
    feed(
        processor,
        social("s1"),
        social("s2"),
        social("s3", status="sent"),
        social("s4", project="p2"),
        content("c1"),
        content("c2", action="updated"),
        content("c3", action="unpublished"),
        email("e1"),
        email("e2", status="failed"),
    )
    assert processor.delivered_total == 3
    assert processor.published_total == 1
    assert processor.totals() == {
        ("default", SOCIAL, "delivered"): 2,
        ("default", SOCIAL, "sent"): 1,
        ("p2", SOCIAL, "delivered"): 1,
        ("default", CMS, "published"): 1,
        ("default", CMS, "updated"): 1,
        ("default", CMS, "unpublished"): 1,
        ("default", EMAIL, "sent"): 1,
        ("default", EMAIL, "failed"): 1,
    }
    assert processor.processed == 9


@pytest.mark.parametrize(
    "same_flush",
    [
        pytest.param(True, id="copy in the same flush"),
        pytest.param(False, id="copy in a later flush"),
    ],
)
def test_duplicates_count_once(same_flush: bool) -> None:
    processor = ServiceMetricsProcessor()
    feed(processor, social("s1"), content("c1"))
    first = processor.flush(T0 + MINUTE) if not same_flush else None
    feed(processor, social("s1"), content("c1"), social("s2"))
    last = processor.flush(T0 + MINUTE)
    assert processor.delivered_total == 2
    assert processor.published_total == 1
    assert processor.duplicates == 2
    rows = [row for output in (first, last) if output for row in output.tables[0].rows]
    # The table deduplicates; copies in one flush are sent once, later copies again.
    assert sorted(row[2] for row in rows) == (
        ["c1", "s1", "s2"] if same_flush else ["c1", "c1", "s1", "s1", "s2"]
    )
    counts = {(p.tags["topic"], p.tags["status"]): p.fields["count"] for p in last.points}
    assert counts == {(SOCIAL, "delivered"): 2, (CMS, "published"): 1}


def test_dedup_memory_is_bounded() -> None:
    processor = ServiceMetricsProcessor(remember_at_most=2)
    feed(processor, social("s1"), social("s2"), social("s3"), social("s1"))
    # s1 was forgotten when s3 arrived: the live counter takes the replay (the table won't).
    assert processor.delivered_total == 4
    feed(processor, social("s3"))
    assert processor.delivered_total == 4


@pytest.mark.parametrize(
    ("topic", "value", "reason"),
    [
        pytest.param(
            SOCIAL, b"\x00\x01binary", "invalid social.notifications message", id="binary garbage"
        ),
        pytest.param(CMS, b"", "invalid cms.publish message", id="empty value"),
        pytest.param(
            VIDEO,
            raw(**{**GOOD_VIDEO, "status": "done"}),
            "Invalid enum value 'done'",
            id="status outside the schema",
        ),
        pytest.param(
            EMAIL,
            raw(**GOOD_SOCIAL),
            "missing required field `template`",
            id="another topic's message",
        ),
        pytest.param(
            "analytics.events", raw(**GOOD_SOCIAL), "not a service topic", id="not a service topic"
        ),
    ],
)
def test_undecodable_records_become_dead_letters(topic: str, value: bytes, reason: str) -> None:
    processor = ServiceMetricsProcessor()
    processor.process(topic, value, Position(2, 41))
    [dead] = processor.dead_letters
    assert (dead.topic, dead.position, dead.raw) == (topic, Position(2, 41), value)
    assert reason in dead.reason
    assert processor.flush(T0).is_empty()
    assert processor.processed == 0
    assert processor.take_dead_letters() == [dead]
    assert processor.dead_letters == []


def test_points_are_cumulative_per_minute_with_exact_p95() -> None:
    processor = ServiceMetricsProcessor()
    times = [float(v) for v in range(100, 2100, 100)]  # 20 values: p95 is the largest
    feed(processor, *(job(f"j{i}", encode_ms=t, ts=T0 + i) for i, t in enumerate(times[:10])))
    feed(processor, job("q1", status="queued", encode_ms=None, ts=T0 + MINUTE + 5))
    first = processor.flush(T0 + 2 * MINUTE)
    assert [(p.tags["status"], p.time_ms, p.fields) for p in first.points] == [
        ("queued", T0 + MINUTE, {"count": 1}),
        ("succeeded", T0, {"count": 10, "encode_ms_p95": 1000.0}),
    ]
    point = first.points[0]
    assert point.measurement == SERIES_MEASUREMENT
    assert point.tags == {"project": "default", "topic": VIDEO, "status": "queued"}

    feed(processor, *(job(f"j{i}", encode_ms=times[i], ts=T0 + i) for i in range(10, 20)))
    [second] = processor.flush(T0 + 2 * MINUTE).points
    assert (second.time_ms, second.fields) == (T0, {"count": 20, "encode_ms_p95": 2000.0})


def test_minutes_older_than_the_window_get_rows_but_no_points() -> None:
    processor = ServiceMetricsProcessor(series_window_ms=10 * MINUTE)
    processor.flush(T0 + 30 * MINUTE)
    feed(processor, social("old", ts=T0), social("new", ts=T0 + 25 * MINUTE))
    output = processor.flush(T0 + 30 * MINUTE)
    assert [row[2] for row in output.tables[0].rows] == ["old", "new"]
    assert [p.time_ms for p in output.points] == [T0 + 25 * MINUTE]
    assert processor.late_for_series == 1
    assert processor.delivered_total == 2


def test_published_per_minute_averages_the_last_complete_minutes() -> None:
    processor = ServiceMetricsProcessor(rate_window_minutes=5)
    now = T0 + 10 * MINUTE + 30_000
    feed(
        processor,
        *(content(f"c{i}", ts=T0 + (5 + i % 5) * MINUTE) for i in range(10)),  # in window
        content("current", ts=T0 + 10 * MINUTE + 1),  # the minute in progress
        content("old", ts=T0 + 4 * MINUTE),  # before the window
        content("upd", action="updated", ts=T0 + 6 * MINUTE),
        content("other", ts=T0 + 6 * MINUTE, project="p2"),
    )
    assert processor.published_per_minute(now) == pytest.approx(11 / 5)
    assert processor.published_per_minute(now, project="default") == pytest.approx(10 / 5)
    assert processor.published_per_minute(now + 60 * MINUTE) == 0.0


# ---------------------------------------------------------------------- query shape
class CannedClickHouse:
    database = "canned"

    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self.rows = rows
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def execute(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        self.calls.append((sql, dict(params or {})))
        return self.rows

    def insert(self, table: str, columns: Any, rows: Any) -> int:
        raise AssertionError("the query never inserts")

    def server_version(self) -> tuple[int, ...]:
        return (26, 9, 2)

    def close(self) -> None:
        pass


def test_service_metrics_fills_every_day_and_nulls_p95_without_timings() -> None:
    ch = CannedClickHouse(
        [
            ("2026-10-02", 5, 1, 3, 2, 1, 7, 0, 2, 1500.0),
            ("", 5, 1, 3, 2, 1, 7, 0, 2, 1500.0),
        ]
    )
    result = service_metrics(ch, "p1", date(2026, 10, 1), date(2026, 10, 3))
    zero = {
        "social_delivered": 0,
        "content_published": 0,
        "encoding_queued": 0,
        "encoding_succeeded": 0,
        "encoding_failed": 0,
        "encode_ms_p95": None,
        "emails_sent": 0,
        "emails_failed": 0,
    }
    filled = {
        "social_delivered": 5,
        "content_published": 1,
        "encoding_queued": 3,
        "encoding_succeeded": 2,
        "encoding_failed": 1,
        "encode_ms_p95": 1500.0,
        "emails_sent": 7,
        "emails_failed": 0,
    }
    assert result == {
        "days": [
            {"day": "2026-10-01", **zero},
            {"day": "2026-10-02", **filled},
            {"day": "2026-10-03", **zero},
        ],
        "totals": filled,
    }
    assert list(result["days"][1]) == ["day", *zero]
    assert ch.calls[0][1]["project"] == "p1"


def test_service_metrics_refuses_an_inverted_range() -> None:
    with pytest.raises(ValueError, match="after"):
        service_metrics(CannedClickHouse([]), "p1", date(2026, 10, 2), date(2026, 10, 1))
