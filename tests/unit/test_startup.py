"""What each process says it uses at start, and the embedded/cluster mismatches refused
(quip/startup.py), against a real clickhouse-server where the detection probes one."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.settings import Mode, Settings
from quip.startup import (
    ModeMismatch,
    redacted_url,
    refuse_embedded_mismatch,
    refuse_empty_store_beside_cluster,
    server_has_quip_schema,
    uses_line,
)
from sinks.clickhouse import ServerClickHouse
from sinks.migrate import migrate
from tests.conftest import CLICKHOUSE_URL
from tests.gateway_process import free_port


def test_each_process_names_its_mode_engine_and_bus(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        clickhouse_url="clickhouse://quip:s3cret@ch.example:9000/quip",
        kafka_bootstrap="kafka.example:9092",
    )
    chdb, bus = tmp_path.resolve() / "chdb", tmp_path.resolve() / "bus"
    server = "ClickHouse server clickhouse://quip:***@ch.example:9000/quip"
    lines = {
        "up": uses_line("up", settings, embedded_store=True),
        "gateway": uses_line("gateway", settings, embedded_store=False),
        "worker": uses_line("worker", settings, embedded_store=False),
        "api embedded": uses_line("api", settings, embedded_store=True),
        "api cluster": uses_line("api", settings, embedded_store=False),
        "migrate": uses_line("migrate", settings, embedded_store=True),
    }
    assert lines == {
        "up": f"quip up: mode embedded · ClickHouse chDB at {chdb} · bus local log at {bus}",
        "gateway": "quip gateway: mode embedded · Kafka kafka.example:9092",
        "worker": f"quip worker: mode embedded · {server} · Kafka kafka.example:9092 · "
        "InfluxDB http://127.0.0.1:8086 (quip)",
        "api embedded": f"quip api: mode embedded · ClickHouse chDB at {chdb} · "
        "no bus (erasures delete rows)",
        "api cluster": f"quip api: mode embedded · {server} · Kafka kafka.example:9092",
        "migrate": f"quip migrate: mode embedded · ClickHouse chDB at {chdb}",
    }
    assert all("s3cret" not in line for line in lines.values())


def test_redacted_url_keeps_urls_without_a_password() -> None:
    assert redacted_url("clickhouse://127.0.0.1:9000/quip") == "clickhouse://127.0.0.1:9000/quip"
    assert redacted_url("clickhouse://u:p@h/quip") == "clickhouse://u:***@h/quip"


@pytest.mark.parametrize("command", ["api", "migrate"])
@pytest.mark.parametrize(
    ("given", "named"),
    [
        pytest.param({"clickhouse_url": "clickhouse://h:9000/q"}, "QUIP_CLICKHOUSE_URL", id="url"),
        pytest.param({"kafka_bootstrap": "h:9092"}, "QUIP_KAFKA_BOOTSTRAP", id="kafka"),
    ],
)
def test_cluster_variables_given_to_an_embedded_process_are_refused(
    command: str, given: dict[str, str], named: str, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path, **given)  # type: ignore[arg-type]
    with pytest.raises(ModeMismatch, match=f"{named} is set but QUIP_MODE is embedded") as raised:
        refuse_embedded_mismatch(command, settings)  # type: ignore[arg-type]
    assert "QUIP_MODE=cluster" in str(raised.value)
    assert f"unset {named}" in str(raised.value)
    cluster = Settings(mode=Mode.CLUSTER, data_dir=tmp_path, **given)  # type: ignore[arg-type]
    refuse_embedded_mismatch(command, cluster)  # type: ignore[arg-type]


def test_nothing_listening_is_no_cluster(tmp_path: Path) -> None:
    url = f"clickhouse://127.0.0.1:{free_port()}/quip"
    assert not server_has_quip_schema(url)
    refuse_empty_store_beside_cluster("api", Settings(data_dir=tmp_path, clickhouse_url=url))


@pytest.mark.clickhouse
def test_an_empty_store_beside_a_migrated_server_is_refused(
    server_clickhouse: ServerClickHouse, unique_name: str, tmp_path: Path
) -> None:
    url = f"{CLICKHOUSE_URL.rsplit('/', 1)[0]}/{unique_name}"
    settings = Settings(data_dir=tmp_path, clickhouse_url=url)
    assert not server_has_quip_schema(url)  # the database exists, not yet migrated
    refuse_empty_store_beside_cluster("api", settings)

    migrate(server_clickhouse)
    assert server_has_quip_schema(url)
    with pytest.raises(ModeMismatch, match="has a quip schema") as api:
        refuse_empty_store_beside_cluster("api", settings)
    assert "QUIP_MODE=cluster" in str(api.value)
    assert "quip migrate --engine chdb" in str(api.value)
    with pytest.raises(ModeMismatch, match="pass --engine server"):
        refuse_empty_store_beside_cluster("migrate", settings)

    # Once the embedded store has data, embedded mode is what the caller chose.
    (tmp_path / "chdb").mkdir()
    (tmp_path / "chdb" / "metadata").mkdir()
    refuse_empty_store_beside_cluster("api", settings)
