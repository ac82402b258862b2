"""The deployment files (Dockerfile, docker-compose.yml, Prometheus and Grafana provisioning)
checked without Docker: there is no engine on developer or CI machines, so a broken compose
file would otherwise only show up on the first real `docker compose up`."""

from __future__ import annotations

import re
import shlex
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from common.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
PROMETHEUS_FILE = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DATASOURCES_FILE = ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "datasources.yml"
KAFKA_POM = ROOT / "deploy" / "local" / "kafka" / "pom.xml"

PROJECT_SERVICES = ("migrate", "gateway", "worker", "api")
# Port each long-running quip process listens on inside its container.
PROCESS_PORTS = {"gateway": 8080, "worker": 6066, "api": 8000}

# `${NAME}`, `${NAME:-default}`, `${NAME:?message}` and their colon-less forms.
INTERPOLATION = re.compile(
    r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
)
SECRET_NAME = re.compile(r"(KEYS|TOKEN|PASSWORD|SECRET)$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def environment(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {str(name): "" if value is None else str(value) for name, value in raw.items()}


def interpolate(value: str) -> str:
    """What compose would substitute, with each variable standing for a recognisable marker
    (or its default): enough to compare values across services and to parse URLs."""

    def substitute(match: re.Match[str]) -> str:
        if match["op"] in (":-", "-"):
            return match["arg"]
        return f"__{match['name']}__"

    return INTERPOLATION.sub(substitute, value.replace("$$", "$"))


def command(service: dict[str, Any]) -> list[str]:
    raw = service.get("command") or []
    return shlex.split(raw) if isinstance(raw, str) else [str(part) for part in raw]


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("depends_on") or {}
    if isinstance(raw, list):
        return {name: "service_started" for name in raw}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in raw.items()}


def healthcheck_text(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    return test if isinstance(test, str) else " ".join(test)


def quip_invocations(service: dict[str, Any]) -> list[list[str]]:
    """The `quip ...` argument lists a service runs: its command after the image's
    `quip` entrypoint, or each `quip ...` step of a shell entrypoint."""
    entrypoint = service.get("entrypoint")
    if entrypoint is None:
        return [command(service)]
    script = " ".join(command(service))
    return [shlex.split(step)[1:] for step in re.split(r"&&|;|\n", script) if step.strip()]


def volume_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    mounts = []
    for volume in service.get("volumes") or []:
        source, target = volume.split(":")[:2]
        mounts.append((source, target))
    return mounts


def dockerfile_instructions() -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    instructions = []
    for line in joined.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


# ---------------------------------------------------------------- compose structure


def test_every_depends_on_target_is_a_service(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        missing = set(depends_on(service)) - set(services)
        assert not missing, f"{name} depends on unknown services {sorted(missing)}"


def test_depends_on_conditions_can_be_met(services: dict[str, dict[str, Any]]) -> None:
    # A service_healthy dependency without a healthcheck never becomes healthy, and a
    # restarting service never "completes": both would hang `docker compose up`.
    checked = 0
    for name, service in services.items():
        for target, condition in depends_on(service).items():
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target}'s health"
            elif condition == "service_completed_successfully":
                restart = str(services[target].get("restart", "no"))
                assert restart in ("no", "False"), f"{target} is waited on to finish but restarts"
            checked += 1
    assert checked >= len(PROJECT_SERVICES)


@pytest.mark.parametrize(
    ("service_name", "probe"),
    [
        pytest.param("kafka", "/opt/kafka/bin/kafka-broker-api-versions.sh", id="kafka"),
        pytest.param("clickhouse", ":8123/ping", id="clickhouse"),
        pytest.param("influxdb", "influx ping", id="influxdb"),
    ],
)
def test_infrastructure_has_a_healthcheck(
    services: dict[str, dict[str, Any]], service_name: str, probe: str
) -> None:
    assert probe in healthcheck_text(services[service_name])


@pytest.mark.parametrize(
    ("service_name", "expected"),
    [
        pytest.param("gateway", [["gateway", "--host", "0.0.0.0"]], id="gateway"),  # noqa: S104
        pytest.param("worker", [["worker", "--host", "0.0.0.0"]], id="worker"),  # noqa: S104
        pytest.param("api", [["api", "--host", "0.0.0.0"]], id="api"),  # noqa: S104
        pytest.param("migrate", [["migrate"], ["topics", "create"]], id="migrate"),
    ],
)
def test_project_service_builds_the_image_and_runs_its_command(
    services: dict[str, dict[str, Any]], service_name: str, expected: list[list[str]]
) -> None:
    service = services[service_name]
    build = service["build"]
    assert (ROOT / build["context"] / build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE
    assert quip_invocations(service) == expected


def test_compose_commands_are_quip_cli_commands(services: dict[str, dict[str, Any]]) -> None:
    import click

    from quip.cli import main

    for name in PROJECT_SERVICES:
        for argv in quip_invocations(services[name]):
            group: click.Command = main
            for word in (arg for arg in argv if not arg.startswith("-")):
                if not isinstance(group, click.Group):
                    break
                assert word in group.commands, f"{name}: `quip {' '.join(argv)}` is not a command"
                group = group.commands[word]


@pytest.mark.parametrize(
    ("service_name", "port"),
    [pytest.param(name, port, id=name) for name, port in PROCESS_PORTS.items()],
)
def test_project_service_healthcheck_probes_health_on_its_port(
    services: dict[str, dict[str, Any]], service_name: str, port: int
) -> None:
    service = services[service_name]
    # The slim image has no curl: the probe must be the image's own Python.
    assert service["healthcheck"]["test"][:2] == ["CMD", "python"]
    assert f"127.0.0.1:{port}/health" in healthcheck_text(service)
    for published in service.get("ports") or []:
        assert str(published).rsplit(":", 1)[-1] == str(port)


# ---------------------------------------------------------------- environment and secrets


def test_quip_variables_are_settings_fields(services: dict[str, dict[str, Any]]) -> None:
    used = {
        variable
        for service in services.values()
        for variable in environment(service)
        if variable.startswith("QUIP_")
    }
    assert {"QUIP_MODE", "QUIP_KAFKA_BOOTSTRAP", "QUIP_CLICKHOUSE_URL"} <= used
    unknown = {
        variable
        for variable in used
        if variable != "QUIP_MODE"
        and variable.removeprefix("QUIP_").lower() not in Settings.model_fields
    }
    assert not unknown, f"not fields of common.settings.Settings: {sorted(unknown)}"


def test_project_services_run_in_cluster_mode(services: dict[str, dict[str, Any]]) -> None:
    for name in PROJECT_SERVICES:
        assert environment(services[name])["QUIP_MODE"] == "cluster"


def test_secrets_are_required_interpolations(services: dict[str, dict[str, Any]]) -> None:
    secrets_seen = set()
    for name, service in services.items():
        for variable, value in environment(service).items():
            if SECRET_NAME.search(variable):
                match = INTERPOLATION.fullmatch(value)
                assert match, f"{name}.{variable} must be a ${{...}} interpolation"
                assert match["op"] == ":?", f"{name}.{variable} must be required (${{VAR:?...}})"
                secrets_seen.add(variable)
            elif "://" in value and "@" in value:
                password = urlsplit(interpolate(value)).password or ""
                assert re.fullmatch(r"__\w+__", password), f"{name}.{variable} embeds a password"
    assert {
        "QUIP_WRITE_KEYS",
        "QUIP_READ_KEYS",
        "QUIP_ADMIN_KEYS",
        "QUIP_INFLUX_TOKEN",
    } <= secrets_seen


@pytest.mark.parametrize(
    ("service_name", "keys"),
    [
        pytest.param("gateway", {"QUIP_WRITE_KEYS"}, id="gateway-writes"),
        pytest.param("api", {"QUIP_READ_KEYS", "QUIP_ADMIN_KEYS"}, id="api-reads-and-erases"),
        pytest.param("worker", set(), id="worker-none"),
        pytest.param("migrate", set(), id="migrate-none"),
    ],
)
def test_each_process_gets_only_its_keys(
    services: dict[str, dict[str, Any]], service_name: str, keys: set[str]
) -> None:
    given = {
        variable for variable in environment(services[service_name]) if variable.endswith("_KEYS")
    }
    assert given == keys


def strings_in(node: object) -> list[str]:
    if isinstance(node, dict):
        return [text for value in node.values() for text in strings_in(value)]
    if isinstance(node, list):
        return [text for value in node for text in strings_in(value)]
    return [node] if isinstance(node, str) else []


def test_required_variables_are_documented_with_placeholders(compose: dict[str, Any]) -> None:
    # From the parsed file, not its text: comments may show the syntax.
    required = {
        match["name"]
        for text in strings_in(compose)
        for match in INTERPOLATION.finditer(text)
        if match["op"] == ":?"
    }
    documented = dict(
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    assert required, "compose requires no variable: secrets would have literal values"
    assert required <= set(documented), (
        f"missing from .env.example: {sorted(required - set(documented))}"
    )
    for variable in required:
        assert "CHANGE_ME" in documented[variable], (
            f"{variable} in .env.example looks like a real value"
        )


def test_clickhouse_url_matches_the_server_user(services: dict[str, dict[str, Any]]) -> None:
    server = {
        name: interpolate(value) for name, value in environment(services["clickhouse"]).items()
    }
    for name in PROJECT_SERVICES:
        url = urlsplit(interpolate(environment(services[name])["QUIP_CLICKHOUSE_URL"]))
        assert url.scheme == "clickhouse"
        assert (url.hostname, url.port) == ("clickhouse", 9000)
        assert url.username == server["CLICKHOUSE_USER"]
        assert url.password == server["CLICKHOUSE_PASSWORD"]
        assert url.path.lstrip("/") == server["CLICKHOUSE_DB"]


def test_influxdb_token_org_and_bucket_agree(services: dict[str, dict[str, Any]]) -> None:
    influx = {name: interpolate(value) for name, value in environment(services["influxdb"]).items()}
    datasource = next(
        source
        for source in yaml.safe_load(DATASOURCES_FILE.read_text())["datasources"]
        if source["type"] == "influxdb"
    )
    assert (
        interpolate(environment(services["grafana"])["QUIP_INFLUX_TOKEN"])
        == influx["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"]
    )
    assert datasource["jsonData"]["organization"] == influx["DOCKER_INFLUXDB_INIT_ORG"]
    assert datasource["jsonData"]["defaultBucket"] == influx["DOCKER_INFLUXDB_INIT_BUCKET"]
    for name in ("worker", "api", "gateway"):
        env = {
            variable: interpolate(value) for variable, value in environment(services[name]).items()
        }
        assert env["QUIP_INFLUX_TOKEN"] == influx["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"]
        assert env["QUIP_INFLUX_ORG"] == influx["DOCKER_INFLUXDB_INIT_ORG"]
        assert env["QUIP_INFLUX_BUCKET"] == influx["DOCKER_INFLUXDB_INIT_BUCKET"]
        assert urlsplit(env["QUIP_INFLUX_URL"]).hostname == "influxdb"


# ---------------------------------------------------------------- kafka


def test_kafka_image_major_matches_the_local_broker(services: dict[str, dict[str, Any]]) -> None:
    # The integration tests run against the broker that deploy/local resolves from this pom;
    # the deployed broker must be of the same major version for those tests to speak for it.
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    pom = ET.parse(KAFKA_POM).getroot()  # noqa: S314  (our own file, not untrusted input)
    local_version = pom.findtext("m:properties/m:kafka.version", namespaces=ns)
    assert local_version
    image, _, tag = services["kafka"]["image"].partition(":")
    assert image == "apache/kafka"
    assert tag.split(".")[0] == local_version.split(".")[0]


def test_kafka_kraft_single_node_is_consistent(services: dict[str, dict[str, Any]]) -> None:
    env = environment(services["kafka"])
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    assert [voter.split("@")[0] for voter in voters] == [env["KAFKA_NODE_ID"]]

    protocols = dict(
        item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    listeners = {item.split("://")[0]: item for item in env["KAFKA_LISTENERS"].split(",")}
    assert set(listeners) <= set(protocols)
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] in listeners
    assert (
        voters[0].split(":")[-1] == listeners[env["KAFKA_CONTROLLER_LISTENER_NAMES"]].split(":")[-1]
    )

    advertised = {
        item.split("://")[0]: item.split("://")[1]
        for item in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    }
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] not in advertised
    for name in PROJECT_SERVICES:
        assert environment(services[name])["QUIP_KAFKA_BOOTSTRAP"] in advertised.values()

    for variable in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ):
        assert env[variable] == "1", f"{variable} must be 1 on a single broker"


# ---------------------------------------------------------------- volumes and mounts


def test_volumes_are_declared_or_exist(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for source, _target in volume_mounts(service):
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in declared, f"{name} uses undeclared volume {source}"


@pytest.mark.parametrize(
    ("service_name", "source", "target"),
    [
        pytest.param(
            "prometheus",
            "./deploy/prometheus/prometheus.yml",
            "/etc/prometheus/prometheus.yml",
            id="prometheus-config",
        ),
        pytest.param(
            "grafana",
            "./deploy/grafana/provisioning",
            "/etc/grafana/provisioning",
            id="grafana-provisioning",
        ),
    ],
)
def test_monitoring_config_is_mounted(
    services: dict[str, dict[str, Any]], service_name: str, source: str, target: str
) -> None:
    assert (source, target) in volume_mounts(services[service_name])


# ---------------------------------------------------------------- dockerfile


def test_dockerfile_is_multi_stage_on_python_311() -> None:
    instructions = dockerfile_instructions()
    stages = [rest for keyword, rest in instructions if keyword == "FROM"]
    assert len(stages) >= 2
    builder = stages[0].split()[-1]
    assert any(keyword == "COPY" and f"--from={builder}" in rest for keyword, rest in instructions)
    base = next(
        rest
        for keyword, rest in instructions
        if keyword == "ARG" and rest.startswith("PYTHON_IMAGE=")
    )
    assert base == "PYTHON_IMAGE=python:3.11-slim"


def test_dockerfile_runs_as_a_non_root_user() -> None:
    instructions = dockerfile_instructions()
    last_from = max(index for index, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    users = [rest for keyword, rest in instructions[last_from:] if keyword == "USER"]
    assert users, "the runtime stage sets no USER"
    assert users[-1].split(":")[0] not in ("root", "0")


def test_dockerfile_entrypoint_and_ports() -> None:
    instructions = dict(dockerfile_instructions())
    assert instructions["ENTRYPOINT"] == '["quip"]'
    assert instructions["CMD"] == '["--help"]'
    assert {str(port) for port in PROCESS_PORTS.values()} <= set(instructions["EXPOSE"].split())


@pytest.mark.parametrize(
    "pattern",
    [
        pytest.param(".git", id="git"),
        pytest.param(".env", id="env-secrets"),
        pytest.param(".venv", id="venv"),
        pytest.param(".services", id="local-services"),
        pytest.param(".quip", id="embedded-data"),
        pytest.param("benchmarks/results", id="benchmark-results"),
    ],
)
def test_dockerignore_keeps_local_state_out_of_the_context(pattern: str) -> None:
    lines = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert pattern in lines


# ---------------------------------------------------------------- prometheus and grafana


def test_prometheus_scrapes_every_quip_process(services: dict[str, dict[str, Any]]) -> None:
    config = yaml.safe_load(PROMETHEUS_FILE.read_text())
    assert config["global"]["scrape_interval"] == "15s"
    targets = set()
    for job in config["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics"
        for static in job["static_configs"]:
            targets.update(static["targets"])
    assert targets == {f"{name}:{port}" for name, port in PROCESS_PORTS.items()}
    assert {target.split(":")[0] for target in targets} <= set(services)


@pytest.mark.parametrize(
    ("source_type", "url"),
    [
        pytest.param("prometheus", "http://prometheus:9090", id="prometheus"),
        pytest.param("influxdb", "http://influxdb:8086", id="influxdb"),
    ],
)
def test_grafana_datasource_points_at_compose_service(
    services: dict[str, dict[str, Any]], source_type: str, url: str
) -> None:
    datasources = yaml.safe_load(DATASOURCES_FILE.read_text())["datasources"]
    matching = [source for source in datasources if source["type"] == source_type]
    assert len(matching) == 1
    assert matching[0]["url"] == url
    assert urlsplit(url).hostname in services


def test_grafana_influx_datasource_uses_flux_and_the_env_token(
    services: dict[str, dict[str, Any]],
) -> None:
    source = next(
        source
        for source in yaml.safe_load(DATASOURCES_FILE.read_text())["datasources"]
        if source["type"] == "influxdb"
    )
    assert source["jsonData"]["version"] == "Flux"
    assert source["secureJsonData"]["token"] in ("$QUIP_INFLUX_TOKEN", "${QUIP_INFLUX_TOKEN}")
    # Grafana expands the token from its own environment, so its container must have it.
    assert "QUIP_INFLUX_TOKEN" in environment(services["grafana"])
