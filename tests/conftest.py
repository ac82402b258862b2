"""Shared fixtures. Tests marked `kafka`, `clickhouse` or `influxdb` need the real services
of `deploy/local/services.sh up`; when one is not reachable those tests fail with that
instruction (they are never skipped silently). Deselect them explicitly with
`-m "not kafka and not clickhouse and not influxdb"` to run only the rest."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sinks.clickhouse import ClickHouse, EmbeddedClickHouse, ServerClickHouse

KAFKA_BOOTSTRAP = os.environ.get("QUIP_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
CLICKHOUSE_URL = os.environ.get("QUIP_CLICKHOUSE_URL", "clickhouse://127.0.0.1:9000/quip")
INFLUX_URL = os.environ.get("QUIP_INFLUX_URL", "http://127.0.0.1:8086")

_SERVICES_SCRIPT = Path(__file__).resolve().parents[1] / "deploy" / "local" / "services.sh"


def services(*args: str) -> None:
    """`deploy/local/services.sh` (e.g. `services("stop", "kafka")`), for fault tests."""
    subprocess.run(["bash", str(_SERVICES_SCRIPT), *args], check=True, timeout=180)


_SERVICE_ADDRESSES = {
    "kafka": KAFKA_BOOTSTRAP.split(",")[0],
    "clickhouse": CLICKHOUSE_URL.split("://", 1)[1].split("/", 1)[0],
    "influxdb": INFLUX_URL.split("://", 1)[1].rstrip("/"),
}


def _reachable(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(autouse=True)
def _require_marked_services(request: pytest.FixtureRequest) -> None:
    for service, address in _SERVICE_ADDRESSES.items():
        if request.node.get_closest_marker(service) and not _reachable(address):
            pytest.fail(
                f"{service} is not reachable at {address}: start the local services with "
                "`deploy/local/services.sh up` (this test needs the real server)",
                pytrace=False,
            )


@pytest.fixture(scope="session")
def registry_topics() -> None:
    """The SPEC §3 topics as `quip topics create` makes them (idempotent); a fresh broker
    has none, and auto-created ones would get the wrong partitions and limits."""
    from quip.topics import apply_topics

    asyncio.run(apply_topics(KAFKA_BOOTSTRAP))


@pytest.fixture
def unique_name() -> str:
    """A name no other test (or earlier run) uses: topics, databases, consumer groups."""
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def server_clickhouse(unique_name: str) -> Iterator[ServerClickHouse]:
    base = CLICKHOUSE_URL.rsplit("/", 1)[0]
    clickhouse = ServerClickHouse(f"{base}/{unique_name}")
    yield clickhouse
    clickhouse.execute(f"DROP DATABASE IF EXISTS {unique_name}")
    clickhouse.close()


@pytest.fixture(
    params=[
        pytest.param("server_clickhouse", marks=pytest.mark.clickhouse, id="clickhouse-server"),
        pytest.param("embedded_clickhouse", marks=pytest.mark.chdb, id="chdb"),
    ]
)
def clickhouse(request: pytest.FixtureRequest) -> ClickHouse:
    """Each test using it runs twice: on clickhouse-server (18.16 here) and on chDB, in a
    database of its own, not migrated. A module that wants the schema overrides it with
    `def clickhouse(clickhouse)` that calls `sinks.migrate.migrate`."""
    engine: ClickHouse = request.getfixturevalue(request.param)
    return engine


@pytest.fixture(scope="session")
def chdb_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # chDB binds one data path per process: every embedded test shares it and isolates
    # itself with its own database.
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture
def embedded_clickhouse(chdb_path: Path, unique_name: str) -> Iterator[EmbeddedClickHouse]:
    clickhouse = EmbeddedClickHouse(chdb_path, unique_name)
    yield clickhouse
    clickhouse.execute(f"DROP DATABASE IF EXISTS {unique_name}")
