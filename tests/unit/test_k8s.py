"""The Kubernetes manifests (deploy/k8s) checked without a cluster: every resource against
the Kubernetes OpenAPI schemas (the `kubernetes-validate` package ships them), and against
the code they run — probe paths in the apps' route tables, probe ports where the processes
listen, environment variables that are `Settings` fields, the worker's autoscaler bounded
by the partitions of analytics.events, the image docker-compose.yml builds.

Most checks read the base's files directly. The rendered output (base and overlay after
kustomize: generated names, patches, references) is rendered by `kubectl kustomize` (no
cluster needed) or, without kubectl, the standalone `kustomize build`
(deploy/local/install-kustomize.sh provides one); with neither, those tests fail.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import click
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from pydantic import SecretStr

from common.settings import Mode, Settings
from schemas.topics import ANALYTICS_EVENTS

ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = ROOT / "deploy" / "k8s"
BASE_DIR = K8S_DIR / "base"
PRODUCTION_DIR = K8S_DIR / "overlays" / "production"
KUSTOMIZATION_DIRS = (BASE_DIR, PRODUCTION_DIR)
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

# The oldest Kubernetes minor these manifests promise to apply on (autoscaling/v2,
# policy/v1 and the PDB's unhealthyPodEvictionPolicy are all there by 1.30), and the
# newest the schema package knows.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())

COMPONENTS = ("gateway", "worker", "api")
# The guide's per-service resources (its Kubernetes deployment example).
GUIDE_RESOURCES = {
    "requests": {"cpu": "500m", "memory": "512Mi"},
    "limits": {"cpu": "1000m", "memory": "1Gi"},
}
SECRET_NAME = "quip-secrets"
CONFIG_NAME = "quip-config"
# Which secret each process is given (the rest of its settings come from the ConfigMap).
SECRETS_OF = {
    "gateway": {"QUIP_WRITE_KEYS"},
    "worker": {"QUIP_CLICKHOUSE_URL", "QUIP_INFLUX_TOKEN"},
    "api": {"QUIP_CLICKHOUSE_URL", "QUIP_READ_KEYS", "QUIP_ADMIN_KEYS"},
    "migrate": {"QUIP_CLICKHOUSE_URL"},
    "topics": set(),
}


# ------------------------------------------------------------------ reading the files


def load_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def kustomization(directory: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((directory / "kustomization.yaml").read_text())
    return loaded


def env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as kustomize's `envs:` reads them (comments and blanks skipped)."""
    entries = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            entries[name.strip()] = value
    return entries


@cache
def base_resources() -> tuple[dict[str, Any], ...]:
    found: list[dict[str, Any]] = []
    for entry in kustomization(BASE_DIR)["resources"]:
        found += load_documents(BASE_DIR / entry)
    return tuple(found)


def of_kind(kind: str, resources: tuple[dict[str, Any], ...] | None = None) -> dict[str, Any]:
    return {
        doc["metadata"]["name"]: doc for doc in resources or base_resources() if doc["kind"] == kind
    }


def deployment(component: str) -> dict[str, Any]:
    found: dict[str, Any] = of_kind("Deployment")[f"quip-{component}"]
    return found


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def workloads() -> list[dict[str, Any]]:
    return [*of_kind("Deployment").values(), *of_kind("Job").values()]


def all_containers() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for workload in workloads():
        for container in containers(workload):
            yield workload["metadata"]["name"], workload, container


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def named_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    matching = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    assert len(matching) == 1, f"{container['name']} has no single port named {port!r}"
    return int(matching[0])


def compose_image() -> str:
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    images = {services[name]["image"] for name in ("gateway", "worker", "api", "migrate")}
    assert len(images) == 1, images
    return str(images.pop()).split(":")[0]


def dockerfile_user() -> tuple[int, int]:
    users = re.findall(r"^USER\s+(\d+):(\d+)\s*$", DOCKERFILE.read_text(), re.M)
    assert users, "the Dockerfile sets no numeric USER uid:gid"
    uid, gid = users[-1]
    return int(uid), int(gid)


# ------------------------------------------------------------------ what the code serves


def listen_ports() -> dict[str, int]:
    """The port each process listens on by default: `settings.listen_port(N)` in its CLI
    command, and the Faust web port for the worker."""
    from streams.app import WORKER_WEB_PORT

    ports = {"worker": WORKER_WEB_PORT}
    tree = ast.parse((ROOT / "quip" / "cli.py").read_text())
    for function in tree.body:
        if not isinstance(function, ast.FunctionDef) or function.name not in COMPONENTS:
            continue
        for node in ast.walk(function):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "listen_port"
            ):
                ports[function.name] = ast.literal_eval(node.args[0])
    assert set(ports) == set(COMPONENTS), ports
    return ports


def route_table(component: str) -> set[str]:
    """Paths the process serves, from the app objects themselves (nothing is started)."""
    settings = Settings(
        mode=Mode.CLUSTER,
        write_keys=SecretStr("p:write-key"),
        read_keys=SecretStr("p:read-key"),
        admin_keys=SecretStr("p:admin-key"),
        # Nothing listens there: building the apps must not need their stores.
        kafka_bootstrap="127.0.0.1:9",
        clickhouse_url="clickhouse://127.0.0.1:9/quip",
        influx_url="http://127.0.0.1:9",
    )
    if component == "worker":
        from streams.app import create_worker_app

        worker, _ = create_worker_app(settings)
        return set(worker.web.views)
    if component == "gateway":
        from ingest.app import create_app as create_gateway

        application = create_gateway(settings)
    else:
        from api.app import create_app as create_api

        application = create_api(settings)
    return {path for route in application.routes if (path := getattr(route, "path", None))}


def quip_command(args: list[str]) -> tuple[click.Command, dict[str, Any]]:
    """The CLI command a container's args run, and its parsed parameters."""
    from quip.cli import main

    command: click.Command = main
    rest = list(args)
    while isinstance(command, click.Group):
        assert rest, f"`quip {' '.join(args)}` names no subcommand"
        assert rest[0] in command.commands, f"`quip {' '.join(args)}` is no command"
        command = command.commands[rest.pop(0)]
    context = command.make_context(command.name, rest)
    return command, context.params


# ------------------------------------------------------------------ YAML and schemas


@pytest.mark.parametrize(
    "path",
    [pytest.param(path, id=str(path.relative_to(K8S_DIR))) for path in K8S_DIR.rglob("*.yaml")],
)
def test_every_manifest_parses_into_objects(path: Path) -> None:
    documents = load_documents(path)
    assert documents
    for document in documents:
        assert isinstance(document, dict)
        assert {"apiVersion", "kind"} <= set(document), path


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(
    "resource",
    [pytest.param(doc, id=f"{doc['kind']}/{doc['metadata']['name']}") for doc in base_resources()],
)
def test_base_resource_matches_the_kubernetes_schema(
    resource: dict[str, Any], version: str
) -> None:
    # Strict: a misspelt or misplaced field is an error, not a silently ignored key.
    kubernetes_validate.validate(resource, version, strict=True)


def test_schema_validation_catches_a_misspelt_field() -> None:
    broken = yaml.safe_load(yaml.safe_dump(deployment("gateway")))
    container = pod_spec(broken)["containers"][0]
    container["livenesProbe"] = container.pop("livenessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="livenesProbe"):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


# ------------------------------------------------------------------ kustomizations


@pytest.mark.parametrize("directory", [pytest.param(d, id=d.name) for d in KUSTOMIZATION_DIRS])
def test_kustomization_lists_every_file(directory: Path) -> None:
    spec = kustomization(directory)
    listed = [entry for entry in spec.get("resources", []) if not entry.startswith("..")]
    for generator in [*spec.get("configMapGenerator", []), *spec.get("secretGenerator", [])]:
        listed += generator.get("envs", []) + generator.get("files", [])
    listed += [patch["path"] for patch in spec.get("patches", []) if "path" in patch]
    assert len(set(listed)) == len(listed), "a file is listed twice"
    present = {
        path.name
        for path in directory.iterdir()
        if path.is_file()
        and path.name != "kustomization.yaml"
        and not path.name.endswith(".example")
    }
    # The secrets file is the one file that is meant to be absent from the repository.
    generated_from_secrets = {
        env for generator in spec.get("secretGenerator", []) for env in generator.get("envs", [])
    }
    assert set(listed) - generated_from_secrets <= present, "listed but missing"
    assert present - generated_from_secrets <= set(listed), "present but not listed"
    for entry in spec.get("resources", []):
        if entry.startswith(".."):
            assert (directory / entry / "kustomization.yaml").is_file(), entry


@pytest.mark.parametrize("directory", [pytest.param(d, id=d.name) for d in KUSTOMIZATION_DIRS])
def test_secret_files_have_a_placeholder_example_and_are_ignored(directory: Path) -> None:
    for generator in kustomization(directory).get("secretGenerator", []):
        for env in generator["envs"]:
            example = directory / f"{env}.example"
            assert example.is_file(), f"{example.name} documents {env}"
            for name, value in env_file(example).items():
                assert "CHANGE_ME" in value, f"{name} in {example.name} looks like a real value"
            ignored = subprocess.run(
                ["git", "check-ignore", "--quiet", "--no-index", str(directory / env)],
                cwd=ROOT,
                check=False,
                timeout=60,
            )
            assert ignored.returncode == 0, f"{directory / env} is not git-ignored"


def test_one_namespace_everywhere() -> None:
    (namespace,) = of_kind("Namespace").values()
    for directory in KUSTOMIZATION_DIRS:
        assert kustomization(directory)["namespace"] == namespace["metadata"]["name"]
    for resource in base_resources():
        # kustomize sets it; a namespace written in a file would be overridden silently.
        assert "namespace" not in resource["metadata"], resource["metadata"]["name"]


def test_image_is_the_one_compose_builds() -> None:
    image = compose_image()
    for name, _, container in all_containers():
        assert container["image"] == image, f"{name}/{container['name']}"
    for directory in KUSTOMIZATION_DIRS:
        assert [entry["name"] for entry in kustomization(directory)["images"]] == [image]


# ------------------------------------------------------------------ workloads


@pytest.mark.parametrize("component", COMPONENTS)
def test_deployment_runs_its_quip_command_on_all_interfaces(component: str) -> None:
    (container,) = pod_spec(deployment(component))["containers"]
    assert container["name"] == component
    command, params = quip_command(container["args"])
    assert command.name == component
    # Probes and Services reach the pod's address, not its loopback.
    assert params["host"] == "0.0.0.0"  # noqa: S104
    assert params["port"] is None, "the port is the process default, as in compose"


@pytest.mark.parametrize("component", COMPONENTS)
def test_probes_reach_health_and_ready_where_the_process_listens(component: str) -> None:
    (container,) = pod_spec(deployment(component))["containers"]
    port = listen_ports()[component]
    assert [p["containerPort"] for p in container["ports"]] == [port]
    routes = route_table(component)
    for probe, path in (("livenessProbe", "/health"), ("readinessProbe", "/ready")):
        http = container[probe]["httpGet"]
        assert http["path"] == path
        assert http["path"] in routes, f"{component} serves no {path}"
        assert named_port(container, http["port"]) == port
    # The guide's probe timing.
    assert container["livenessProbe"]["initialDelaySeconds"] == 30
    assert container["livenessProbe"]["periodSeconds"] == 10
    assert container["readinessProbe"]["initialDelaySeconds"] == 20
    assert container["readinessProbe"]["periodSeconds"] == 5


@pytest.mark.parametrize("component", COMPONENTS)
def test_deployment_has_the_guides_resources(component: str) -> None:
    (container,) = pod_spec(deployment(component))["containers"]
    assert container["resources"] == GUIDE_RESOURCES


def test_every_container_sets_requests_and_limits() -> None:
    for name, _, container in all_containers():
        resources = container.get("resources", {})
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources.get(kind, {})), f"{name}/{container['name']}"


def test_migrate_job_migrates_the_server_then_creates_topics() -> None:
    (job,) = of_kind("Job").values()
    spec = pod_spec(job)
    assert spec["restartPolicy"] in ("OnFailure", "Never")
    (migrate,) = spec["initContainers"]
    (topics,) = spec["containers"]
    command, params = quip_command(migrate["args"])
    assert command.name == "migrate"
    assert params["engine"] == "server"
    command, params = quip_command(topics["args"])
    assert command.name == "create"
    assert params["replication_factor"] >= 1


def test_pods_run_as_the_images_non_root_user_on_a_read_only_root() -> None:
    uid, gid = dockerfile_user()
    for workload in workloads():
        name = workload["metadata"]["name"]
        spec = pod_spec(workload)
        security = spec["securityContext"]
        assert security["runAsNonRoot"] is True, name
        assert (security["runAsUser"], security["runAsGroup"]) == (uid, gid), name
        assert security["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec["automountServiceAccountToken"] is False, name
        volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
        for container in containers(workload):
            where = f"{name}/{container['name']}"
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
            assert set(mounts.values()) <= set(volumes), where
            # Python's tempfile, uvicorn's multiprocess metrics and Faust's data directory
            # (streams/app.py) need a writable temp directory.
            assert "emptyDir" in volumes[mounts["/tmp"]], where  # noqa: S108


# ------------------------------------------------------------------ configuration


def container_env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def config_settings() -> dict[str, str]:
    (generator,) = kustomization(BASE_DIR)["configMapGenerator"]
    assert generator["name"] == CONFIG_NAME
    (env,) = generator["envs"]
    return env_file(BASE_DIR / env)


def secret_settings() -> dict[str, str]:
    (generator,) = kustomization(PRODUCTION_DIR)["secretGenerator"]
    assert generator["name"] == SECRET_NAME
    (env,) = generator["envs"]
    return env_file(PRODUCTION_DIR / f"{env}.example")


def test_every_variable_is_a_settings_field() -> None:
    names = set(config_settings()) | set(secret_settings())
    names |= {name for _, _, container in all_containers() for name in container_env(container)}
    for literal in kustomization(PRODUCTION_DIR)["configMapGenerator"][0]["literals"]:
        names.add(literal.split("=", 1)[0])
    unknown = {
        name
        for name in names
        if not name.startswith("QUIP_")
        or name.removeprefix("QUIP_").lower() not in Settings.model_fields
    }
    assert not unknown, f"not fields of common.settings.Settings: {sorted(unknown)}"


def test_settings_load_in_cluster_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    # What a pod's environment amounts to: the ConfigMap plus every secret.
    for name, value in {**config_settings(), **secret_settings()}.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.mode is Mode.CLUSTER
    settings.require_keys("write_keys", "read_keys", "admin_keys")


def test_secrets_are_references_and_each_process_gets_only_its_own() -> None:
    secrets = secret_settings()
    assert not set(secrets) & set(config_settings()), "a secret is also in the ConfigMap"
    for name, _, container in all_containers():
        env = container_env(container)
        assert all("value" not in entry for entry in env.values()), f"{name}: literal env"
        refs = {
            variable: entry["valueFrom"]["secretKeyRef"]
            for variable, entry in env.items()
            if "secretKeyRef" in entry.get("valueFrom", {})
        }
        assert set(refs) == SECRETS_OF[container["name"]], name
        for variable, ref in refs.items():
            assert ref["name"] == SECRET_NAME
            assert ref["key"] == variable
            assert ref["key"] in secrets, f"{variable} is not in the secrets example"
        assert container["envFrom"] == [{"configMapRef": {"name": CONFIG_NAME}}], name


# ------------------------------------------------------------------ services, autoscaling


def test_selectors_match_their_pods() -> None:
    deployments = of_kind("Deployment")
    for name, workload in deployments.items():
        selector = workload["spec"]["selector"]["matchLabels"]
        assert selects(selector, workload["spec"]["template"]["metadata"]["labels"]), name
    for kind, path in (("Service", ("spec", "selector")), ("PodDisruptionBudget", None)):
        for name, resource in of_kind(kind).items():
            selector = (
                resource["spec"]["selector"]
                if path
                else resource["spec"]["selector"]["matchLabels"]
            )
            chosen = [
                workload
                for workload in deployments.values()
                if selects(selector, workload["spec"]["template"]["metadata"]["labels"])
            ]
            assert len(chosen) == 1, f"{kind}/{name} selects {len(chosen)} deployments"
            assert chosen[0]["metadata"]["name"] == name


@pytest.mark.parametrize("component", COMPONENTS)
def test_service_targets_the_process_port(component: str) -> None:
    service = of_kind("Service")[f"quip-{component}"]
    (container,) = pod_spec(deployment(component))["containers"]
    (port,) = service["spec"]["ports"]
    assert named_port(container, port["targetPort"]) == listen_ports()[component]


@pytest.mark.parametrize("component", COMPONENTS)
def test_every_deployment_has_an_autoscaler_and_a_disruption_budget(component: str) -> None:
    name = f"quip-{component}"
    autoscaler = of_kind("HorizontalPodAutoscaler")[name]
    target = autoscaler["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        "apps/v1",
        "Deployment",
        name,
    )
    assert "replicas" not in deployment(component)["spec"], "the autoscaler owns the count"
    budget = of_kind("PodDisruptionBudget")[name]["spec"]
    assert budget.get("maxUnavailable") == 1 or "minAvailable" in budget


def cpu_target(autoscaler: dict[str, Any]) -> int:
    (metric,) = autoscaler["spec"]["metrics"]
    assert (metric["type"], metric["resource"]["name"]) == ("Resource", "cpu")
    assert metric["resource"]["target"]["type"] == "Utilization"
    return int(metric["resource"]["target"]["averageUtilization"])


def test_gateway_scales_on_cpu_at_70_percent() -> None:
    assert cpu_target(of_kind("HorizontalPodAutoscaler")["quip-gateway"]) == 70


def hpa_bounds() -> Iterator[tuple[str, str, int, int]]:
    for name, autoscaler in of_kind("HorizontalPodAutoscaler").items():
        yield "base", name, autoscaler["spec"]["minReplicas"], autoscaler["spec"]["maxReplicas"]
    for patch in kustomization(PRODUCTION_DIR)["patches"]:
        (document,) = load_documents(PRODUCTION_DIR / patch["path"])
        if document["kind"] == "HorizontalPodAutoscaler":
            spec = document["spec"]
            name = document["metadata"]["name"]
            yield "production", name, spec["minReplicas"], spec["maxReplicas"]


def test_autoscaler_bounds_are_ordered_and_the_worker_stays_within_partitions() -> None:
    seen = set()
    for where, name, low, high in hpa_bounds():
        assert 1 <= low <= high, f"{where} {name}"
        if name == "quip-worker":
            # A partition has one consumer in the group: more workers would sit idle.
            assert high <= ANALYTICS_EVENTS.partitions, f"{where}: {high} workers"
            seen.add(where)
    assert seen == {"base", "production"}
    worker = of_kind("HorizontalPodAutoscaler")["quip-worker"]
    assert worker["spec"]["maxReplicas"] == ANALYTICS_EVENTS.partitions


def test_overlay_patches_name_base_resources() -> None:
    names = {(doc["kind"], doc["metadata"]["name"]) for doc in base_resources()}
    for patch in kustomization(PRODUCTION_DIR)["patches"]:
        (document,) = load_documents(PRODUCTION_DIR / patch["path"])
        assert (document["kind"], document["metadata"]["name"]) in names, patch["path"]
        if document["kind"] == "Deployment":
            base = {
                c["name"]
                for c in pod_spec(of_kind("Deployment")[document["metadata"]["name"]])["containers"]
            }
            assert {c["name"] for c in pod_spec(document)["containers"]} <= base


# ------------------------------------------------------------------ rendered by kustomize


def kustomize_command() -> list[str]:
    """The standalone `kustomize build` next to this Python (install-kustomize.sh puts it
    there when the installed kubectl cannot render the manifests), else `kubectl
    kustomize`, else a `kustomize` on PATH; a missing renderer fails the test."""
    beside_python = Path(sys.executable).parent / "kustomize"
    if beside_python.exists():
        return [str(beside_python), "build"]
    kubectl = shutil.which("kubectl")
    if kubectl is not None:
        return [kubectl, "kustomize"]
    kustomize = shutil.which("kustomize")
    if kustomize is not None:
        return [kustomize, "build"]
    pytest.fail(
        "neither kubectl nor kustomize is installed: run deploy/local/install-kustomize.sh",
        pytrace=False,
    )


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict[str, Any], ...]]:
    """`kubectl kustomize` of the base and the production overlay, on a copy of deploy/k8s
    whose secrets.env files are their examples."""
    render = kustomize_command()
    copy = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S_DIR, copy)
    for example in copy.rglob("*.env.example"):
        example.with_suffix("").write_text(example.read_text())
    built = {}
    for directory in KUSTOMIZATION_DIRS:
        relative = directory.relative_to(K8S_DIR)
        output = subprocess.run(
            [*render, str(copy / relative)],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        built[relative.name] = tuple(doc for doc in yaml.safe_load_all(output) if doc)
    return built


@pytest.mark.parametrize("variant", ["base", "production"])
def test_rendered_resources_match_the_kubernetes_schema(
    rendered: dict[str, tuple[dict[str, Any], ...]], variant: str
) -> None:
    for resource in rendered[variant]:
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(resource, version, strict=True)


def test_rendered_overlay_references_resolve(
    rendered: dict[str, tuple[dict[str, Any], ...]],
) -> None:
    resources = rendered["production"]
    config_maps = of_kind("ConfigMap", resources)
    secrets = of_kind("Secret", resources)
    namespace = kustomization(PRODUCTION_DIR)["namespace"]
    for resource in resources:
        if resource["kind"] != "Namespace":
            assert resource["metadata"]["namespace"] == namespace, resource["metadata"]["name"]
    for workload in (
        *of_kind("Deployment", resources).values(),
        *of_kind("Job", resources).values(),
    ):
        for container in containers(workload):
            for source in container["envFrom"]:
                assert source["configMapRef"]["name"] in config_maps
            for entry in container.get("env", []):
                ref = entry["valueFrom"]["secretKeyRef"]
                # The generated name (with its content hash) must have replaced the base's.
                assert ref["name"] in secrets, ref
                assert ref["key"] in secrets[ref["name"]]["data"]
            (image,) = kustomization(PRODUCTION_DIR)["images"]
            assert container["image"] == f"{image['newName']}:{image['newTag']}"
    (config,) = config_maps.values()
    assert config["data"]["QUIP_MODE"] == "cluster"


def test_rendered_overlay_applies_its_patches(
    rendered: dict[str, tuple[dict[str, Any], ...]],
) -> None:
    resources = rendered["production"]
    for patch in kustomization(PRODUCTION_DIR)["patches"]:
        (document,) = load_documents(PRODUCTION_DIR / patch["path"])
        result = of_kind(document["kind"], resources)[document["metadata"]["name"]]
        if document["kind"] == "HorizontalPodAutoscaler":
            for key in ("minReplicas", "maxReplicas"):
                assert result["spec"][key] == document["spec"][key]
            # A strategic merge keeps what the patch does not mention.
            assert (
                result["spec"]["metrics"]
                == of_kind(document["kind"])[document["metadata"]["name"]]["spec"]["metrics"]
            )
        else:
            (patched,) = pod_spec(document)["containers"]
            (container,) = (
                c for c in pod_spec(result)["containers"] if c["name"] == patched["name"]
            )
            assert container["resources"] == patched["resources"]
            assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
