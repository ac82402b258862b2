"""Schema discovery (SPEC §5.1) through HTTP on both engines against the events as sent:
event types with counts, users and last time; properties with type, count and top
string values."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.insight_data import (
    INSIGHT_DAYS,
    INSIGHT_LAST_DAY,
    INSIGHT_PROJECT,
    INSIGHT_READ,
    unique_events,
)
from tests.insight_reference import day_of, text

FIRST = INSIGHT_LAST_DAY - timedelta(days=INSIGHT_DAYS - 1)
FROM = FIRST + timedelta(days=2)
STANDARD = ("type", "device_model", "app_version", "os", "region", "source", "session_id")


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


async def get(insight_api: httpx.AsyncClient, path: str, **params: str) -> Any:
    response = await insight_api.get(
        path,
        params={"project": INSIGHT_PROJECT, "from": FROM.isoformat(),
                "to": INSIGHT_LAST_DAY.isoformat(), **params},
        headers=INSIGHT_READ,
    )  # fmt: skip
    assert response.status_code == 200, response.text
    return response.json()


async def test_event_types(
    insight_api: httpx.AsyncClient, insight_events: list[dict[str, Any]]
) -> None:
    events = in_range(insight_events)
    by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        by_type[event["type"]].append(event)
    expected = sorted(
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
    assert await get(insight_api, "/v1/schema/events") == expected


@pytest.mark.parametrize("event", [None, "purchase", "video.play"])
async def test_properties(
    insight_api: httpx.AsyncClient, insight_events: list[dict[str, Any]], event: str | None
) -> None:
    events = [e for e in in_range(insight_events) if event is None or e["type"] == event]
    values: dict[str, list[Any]] = defaultdict(list)
    for row in events:
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
    params = {"event": event} if event else {}
    assert await get(insight_api, "/v1/schema/properties", **params) == expected
    assert any(row["property"] == "props.item.category" for row in expected) == (
        event in (None, "purchase")
    ), "nested props are listed by their dotted path"
