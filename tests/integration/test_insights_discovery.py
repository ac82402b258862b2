"""Schema discovery (SPEC §5.1) through HTTP on both engines against the events as sent:
event types with counts, users and last time; properties with type, count and top
string values."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest

from sinks.changes import MARGIN_US, new_version, record_changes
from sinks.clickhouse import ClickHouse, ServerClickHouse
from sinks.migrations.v0012_discovery_summary import SUMMARY_TABLES
from sinks.queries.erasure import ERASURE_TARGETS, pending_mutations
from tests.conftest import CLICKHOUSE_URL
from tests.insight_data import (
    INSIGHT_DAYS,
    INSIGHT_LAST_DAY,
    INSIGHT_PROJECT,
    INSIGHT_READ,
    store,
    unique_events,
)
from tests.insight_reference import day_of, text

FIRST = INSIGHT_LAST_DAY - timedelta(days=INSIGHT_DAYS - 1)
FROM = FIRST + timedelta(days=2)
INSIGHT_ADMIN = {"Authorization": "Bearer ak"}
STANDARD = ("type", "device_model", "app_version", "os", "region", "source", "session_id")


def own_connection(clickhouse: ClickHouse) -> ClickHouse:
    """An engine for the test's queries while the app may run some of its own: a
    ServerClickHouse is one connection, which the app's pool uses."""
    if not isinstance(clickhouse, ServerClickHouse):
        return clickhouse
    return ServerClickHouse(f"{CLICKHOUSE_URL.rsplit('/', 1)[0]}/{clickhouse.database}")


def in_range(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in unique_events(events) if FROM <= day_of(e) <= INSIGHT_LAST_DAY]


def leaves(props: dict[str, Any], prefix: str = "props.") -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in props.items():
        if isinstance(value, dict):
            found.update(leaves(value, f"{prefix}{key}."))
        elif value is not None:
            found[f"{prefix}{key}"] = value
    return found


async def get(
    insight_api: httpx.AsyncClient, path: str, headers: dict[str, str] | None = None, **params: str
) -> Any:
    response = await insight_api.get(
        path,
        params={"project": INSIGHT_PROJECT, "from": FROM.isoformat(),
                "to": INSIGHT_LAST_DAY.isoformat(), **params},
        headers={**INSIGHT_READ, **(headers or {})},
    )  # fmt: skip
    assert response.status_code == 200, response.text
    return response.json()


def expected_types(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        by_type[event["type"]].append(event)
    return sorted(
        (
            {
                "type": kind,
                "count": len(rows),
                "users": len({r["user_id"] for r in rows}),
                "last_seen": datetime.fromtimestamp(max(r["ts"] for r in rows) / 1000, UTC)
                .isoformat(timespec="milliseconds")
                .replace("+00:00", "Z"),
            }
            for kind, rows in by_type.items()
        ),
        key=lambda row: (-row["count"], row["type"]),
    )


async def test_event_types(
    insight_api: httpx.AsyncClient, insight_events: list[dict[str, Any]]
) -> None:
    assert await get(insight_api, "/v1/schema/events") == expected_types(in_range(insight_events))


async def fresh_types(insight_api: httpx.AsyncClient) -> Any:
    """/v1/schema/events from the stores, not from the API's cache."""
    return await get(insight_api, "/v1/schema/events", headers={"Cache-Control": "no-cache"})


def markers(clickhouse: ClickHouse, kind: str = "events") -> list[tuple[str, int]]:
    """(day, version) of the project's stored summaries of `kind`."""
    rows = clickhouse.execute(
        "SELECT toString(day), version FROM discovery_days "
        "WHERE project = %(p)s AND kind = %(kind)s ORDER BY day, version",
        {"p": INSIGHT_PROJECT, "kind": kind},
    )
    return [(str(day), int(version)) for day, version in rows]


def late_event(day: date, number: int) -> dict[str, Any]:
    """A new user's purchase at noon of `day`."""
    noon = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
    return {
        "event_id": f"late-{number}", "type": "purchase", "user_id": f"late-user-{number}",
        "ts": int(noon.timestamp() * 1000) + number, "session_id": "", "device_model": "quest3",
        "app_version": "3.0.0", "os": "horizon", "region": "eu", "source": "native",
        "props": {"price": 1},
    }  # fmt: skip


async def test_settled_days_are_read_from_summaries_until_a_write_is_recorded(
    insight_api: httpx.AsyncClient,
    insight_store: ClickHouse,
    insight_events: list[dict[str, Any]],
) -> None:
    events = in_range(insight_events)
    days = (INSIGHT_LAST_DAY - FROM).days + 1
    assert await fresh_types(insight_api) == expected_types(events)
    summarized = markers(insight_store)
    assert summarized == [((FROM + timedelta(days=n)).isoformat(), 0) for n in range(days)], (
        "the fixture's days have no data_changes row (version 0) and are all settled"
    )

    # Rows no writer has recorded yet: the summarized day is answered from its summary.
    late_day = FROM + timedelta(days=3)
    first_late = late_event(late_day, 1)
    store(insight_store, INSIGHT_PROJECT, [first_late])
    assert await fresh_types(insight_api) == expected_types(events)
    assert markers(insight_store) == summarized

    # Recorded now (within the margin): the day is counted from the events, not stored.
    record_changes(insight_store, [(INSIGHT_PROJECT, late_day)])
    assert await fresh_types(insight_api) == expected_types([*events, first_late])
    assert markers(insight_store) == summarized

    # A late event of another day whose record is older than the margin: that day is
    # summarized again at its new version.
    other_day = FROM + timedelta(days=5)
    second_late = late_event(other_day, 2)
    store(insight_store, INSIGHT_PROJECT, [second_late])
    settled = new_version() - MARGIN_US - 1_000_000
    record_changes(insight_store, [(INSIGHT_PROJECT, other_day)], settled)
    assert await fresh_types(insight_api) == expected_types([*events, first_late, second_late])
    assert sorted(set(markers(insight_store)) - set(summarized)) == [
        (other_day.isoformat(), settled)
    ]


async def test_an_erased_user_leaves_the_summaries(
    insight_api: httpx.AsyncClient,
    insight_store: ClickHouse,
    insight_events: list[dict[str, Any]],
) -> None:
    events = in_range(insight_events)
    assert await fresh_types(insight_api) == expected_types(events)
    assert await get(insight_api, "/v1/schema/properties") == expected_properties(events, None)
    before = {int(row[0]) for row in insight_store.execute(
        "SELECT computation FROM discovery_days WHERE project = %(p)s", {"p": INSIGHT_PROJECT}
    )}  # fmt: skip
    erased = events[0]["user_id"]
    response = await insight_api.delete(
        f"/v1/users/{erased}", params={"project": INSIGHT_PROJECT}, headers=INSIGHT_ADMIN
    )
    assert response.status_code == 202, response.text
    checker = own_connection(insight_store)
    deadline = time.monotonic() + 60
    while pending_mutations(checker, (*ERASURE_TARGETS, *SUMMARY_TABLES)):
        assert time.monotonic() < deadline, "erasure mutations did not finish"
        await asyncio.sleep(0.2)
    left = [event for event in events if event["user_id"] != erased]
    assert await fresh_types(insight_api) == expected_types(left)
    for table in SUMMARY_TABLES:
        stored = checker.execute(
            f"SELECT count() FROM {table} WHERE project = %(p)s AND computation IN %(before)s",
            {"p": INSIGHT_PROJECT, "before": tuple(before)},
        )
        assert int(stored[0][0]) == 0, f"{table}: the rows stored before the erasure are gone"


def expected_properties(events: list[dict[str, Any]], event: str | None) -> list[dict[str, Any]]:
    values: dict[str, list[Any]] = defaultdict(list)
    for row in events:
        if event is not None and row["type"] != event:
            continue
        found = {name: row[name] for name in STANDARD if row[name]}
        found.update(leaves(row["props"]))
        for name, value in found.items():
            values[name].append(value)
    expected = []
    for name, seen in values.items():
        if any(isinstance(v, int | float) and not isinstance(v, bool) for v in seen):
            kind = "number"
        elif all(text(v) in ("true", "false") for v in seen):
            kind = "bool"
        else:
            kind = "string"
        top: list[dict[str, Any]] = []
        if kind == "string":
            counts = Counter(text(v) for v in seen)
            ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:10]
            top = [{"value": value, "count": count} for value, count in ordered]
        expected.append({"property": name, "type": kind, "count": len(seen), "top_values": top})
    expected.sort(key=lambda row: (-row["count"], row["property"]))
    return expected


@pytest.mark.parametrize("event", [None, "purchase", "video.play"])
async def test_properties(
    insight_api: httpx.AsyncClient, insight_events: list[dict[str, Any]], event: str | None
) -> None:
    expected = expected_properties(in_range(insight_events), event)
    params = {"event": event} if event else {}
    assert await get(insight_api, "/v1/schema/properties", **params) == expected
    assert any(row["property"] == "props.item.category" for row in expected) == (
        event in (None, "purchase")
    ), "nested props are listed by their dotted path"


@pytest.mark.parametrize("event", [None, "purchase"])
async def test_properties_are_read_from_summaries_until_a_write_is_recorded(
    insight_api: httpx.AsyncClient,
    insight_store: ClickHouse,
    insight_events: list[dict[str, Any]],
    event: str | None,
) -> None:
    events = in_range(insight_events)
    params = {"event": event} if event else {}
    kind = "properties all" if event is None else f"properties type:{event}"

    async def fresh() -> Any:
        return await get(
            insight_api, "/v1/schema/properties", headers={"Cache-Control": "no-cache"}, **params
        )

    assert await fresh() == expected_properties(events, event)
    summarized = markers(insight_store, kind)
    assert len(summarized) == (INSIGHT_LAST_DAY - FROM).days + 1

    late = {**late_event(FROM + timedelta(days=4), 3), "props": {"item": {"category": "late"}}}
    store(insight_store, INSIGHT_PROJECT, [late])
    assert await fresh() == expected_properties(events, event), "answered from the summaries"

    settled = new_version() - MARGIN_US - 1_000_000
    record_changes(insight_store, [(INSIGHT_PROJECT, FROM + timedelta(days=4))], settled)
    assert await fresh() == expected_properties([*events, late], event)
    assert sorted(set(markers(insight_store, kind)) - set(summarized)) == [
        ((FROM + timedelta(days=4)).isoformat(), settled)
    ]
