"""Shared fixtures. Tests marked `kafka`, `clickhouse` or `influxdb` need the real services
of `deploy/local/services.sh up`; when one is not reachable those tests fail with that
instruction (they are never skipped silently). Deselect them explicitly with
`-m "not kafka and not clickhouse and not influxdb"` to run only the rest.

No QUIP_* variable of the caller's shell reaches a test (autouse fixtures remove them) or
a process a test starts (`clean_env`); the service addresses below are read first, and
passed on explicitly."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from sinks.clickhouse import ClickHouse, EmbeddedClickHouse, ServerClickHouse

KAFKA_BOOTSTRAP = os.environ.get("QUIP_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
CLICKHOUSE_URL = os.environ.get("QUIP_CLICKHOUSE_URL", "clickhouse://127.0.0.1:9000/quip")
INFLUX_URL = os.environ.get("QUIP_INFLUX_URL", "http://127.0.0.1:8086")
# Read above before `_clean_quip_environment` clears them: the service addresses are the
# only QUIP_* values of the caller's shell that the suite honours; they reach the code
# under test as explicit arguments or variables, never by inheritance.


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a subprocess: this process's minus every QUIP_* variable, plus
    exactly `extra` (what the test sets)."""
    base = {name: value for name, value in os.environ.items() if not name.startswith("QUIP_")}
    return {**base, **(extra or {})}


def _drop_quip_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("QUIP_")]:
        monkeypatch.delenv(name)


@pytest.fixture(scope="session", autouse=True)
def _clean_quip_session_environment() -> Iterator[None]:
    """Session and module fixtures (servers built before any test's own fixtures) see no
    QUIP_* variable of the caller's shell either."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        _drop_quip_variables(monkeypatch)
        yield


@pytest.fixture(autouse=True)
def _clean_quip_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts from no QUIP_* variable: in-process `Settings()` reads only what the
    test sets, whatever the shell exported or an earlier test (a CLI run in-process that
    exports its flags, say) left behind."""
    _drop_quip_variables(monkeypatch)


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
