"""Migration 0011 summarizes the sessions of the events stored before it and, through its
materialized view, of every event stored after, on both engines; run again, it changes
nothing (its states are idempotent)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sinks.capabilities import Capabilities
from sinks.clickhouse import ClickHouse
from sinks.migrate import migrate
from sinks.migrations import v0011_session_summary as v0011
from tests.insight_data import store
from tests.insight_reference import day_of
from tests.integration.test_insights_sessions import edge_events, expected_summary, summary_rows

PROJECT = "p_summary"


def test_events_before_and_after_are_summarized(clickhouse: ClickHouse) -> None:
    migrate(clickhouse, up_to=10)
    first = datetime.now(UTC).date() - timedelta(days=10)
    before, *after = edge_events(first, first + timedelta(days=3))
    store(clickhouse, PROJECT, before)
    store(clickhouse, PROJECT, before[:5])  # replayed copies

    assert [m.version for m in migrate(clickhouse, up_to=11)] == [11]
    assert summary_rows(clickhouse, PROJECT) == expected_summary([before])
    sessionless = clickhouse.execute(
        "SELECT DISTINCT toString(day) AS d FROM sessionless_days WHERE project = %(p)s "
        "ORDER BY d",
        {"p": PROJECT},
    )
    assert [str(day) for (day,) in sessionless] == sorted(
        {day_of(event).isoformat() for event in before if not event["session_id"]}
    )

    for chunk in after:  # copies of summarized events, and new ones, through the view
        store(clickhouse, PROJECT, chunk)
    everything = expected_summary([before, *after])
    assert summary_rows(clickhouse, PROJECT) == everything
    # Run again (a deploy re-running it after a stop): the same sessions.
    v0011.apply(clickhouse, Capabilities(clickhouse.server_version()))
    assert summary_rows(clickhouse, PROJECT) == everything
