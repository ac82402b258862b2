from __future__ import annotations

import pytest

from schemas.topics import DAY_MS, HOUR_MS, TOPICS, TOPICS_BY_NAME
from sinks.capabilities import Capabilities
from sinks.migrate import discover
from sinks.migrations import v0006_events_by_type as resort_module


@pytest.mark.parametrize(
    ("name", "key", "retention_ms"),
    [
        pytest.param("analytics.events", "project:user_id", 7 * DAY_MS, id="events"),
        pytest.param("analytics.events.dlq", "project", 14 * DAY_MS, id="dlq"),
        pytest.param("social.notifications", "user_id", 24 * HOUR_MS, id="social"),
        pytest.param("cms.publish", "content_id", 7 * DAY_MS, id="cms"),
        pytest.param("video.encoding", "job_id", 7 * DAY_MS, id="video"),
        pytest.param("notifications.email", "user_id", 7 * DAY_MS, id="email"),
    ],
)
def test_registry_matches_spec_section_3(name: str, key: str, retention_ms: int) -> None:
    spec = TOPICS_BY_NAME[name]
    assert (spec.key, spec.retention_ms) == (key, retention_ms)
    assert spec.configs["retention.ms"] == str(retention_ms)


def test_registry_has_exactly_the_spec_topics() -> None:
    assert len(TOPICS) == len(TOPICS_BY_NAME) == 6
    assert all(topic.partitions >= 1 for topic in TOPICS)


@pytest.mark.parametrize(
    ("version", "ttl", "lightweight_delete"),
    [
        pytest.param((18, 16, 1), False, False, id="debian 18.16"),
        pytest.param((19, 6, 0), True, False, id="first with TTL"),
        pytest.param((26, 9, 2), True, True, id="chdb 26.9"),
    ],
)
def test_capabilities_gate_on_version(
    version: tuple[int, ...], ttl: bool, lightweight_delete: bool
) -> None:
    caps = Capabilities(version)
    assert (caps.supports_ttl, caps.supports_lightweight_delete) == (ttl, lightweight_delete)
    assert (caps.ttl("day + INTERVAL 1 DAY") != "") is ttl


def test_migrations_are_numbered_densely_from_one() -> None:
    versions = [migration.version for migration in discover()]
    assert versions == list(range(1, len(versions) + 1))


def test_events_migration_sql_differs_only_by_ttl() -> None:
    old, new = (discover()[0].statements(Capabilities(v)) for v in ((18, 16, 1), (26, 9, 2)))
    assert "TTL" not in old[0]
    assert "TTL day + INTERVAL 90 DAY" in new[0]
    assert old[0].replace(" ", "").replace("\n", "") == (
        new[0].replace("TTL day + INTERVAL 90 DAY", "").replace(" ", "").replace("\n", "")
    )


def test_events_resort_migration_moves_rows_in_apply_with_the_same_columns() -> None:
    resort = discover()[5]
    assert (resort.version, resort.name) == (6, "events_by_type")
    assert resort.statements(Capabilities((26, 9, 2))) == []
    assert resort.apply is not None
    created = resort_module.create_statement(Capabilities((26, 9, 2)), "t")
    original = discover()[0].statements(Capabilities((26, 9, 2)))[0]
    assert "ORDER BY (project, type, event_id)" in created
    squeeze = "".join(created.split()).replace("ORDERBY(project,type,event_id)", "")
    assert squeeze.replace("CREATETABLEt(", "") == "".join(original.split()).replace(
        "CREATETABLEIFNOTEXISTSevents(", ""
    ).replace("ORDERBY(project,event_id)", "")
    assert "TTL" not in resort_module.create_statement(Capabilities((18, 16, 1)), "t")
