"""The Grafana dashboards and the Prometheus alert rules checked against the code, without
Grafana (it does not run here or in CI); promtool where installed.

A dashboard or a rule that names a metric no process exports, a label the metric does not
carry, an InfluxDB field no processor writes, or a query API route, parameter or response
field that does not exist does not fail anywhere: the panel stays empty and the alert never
fires. So the metric names and labels are read from the modules that define them
(`METRIC_MODULES`), the InfluxDB measurements, tags and fields from the points the stream
processors actually emit, the API's routes and response fields from its OpenAPI schema, and
every expression is checked against them.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
PROMETHEUS_FILE = ROOT / "deploy" / "prometheus" / "prometheus.yml"
PROMETHEUS_K8S_FILE = ROOT / "deploy" / "prometheus" / "prometheus-k8s.yml"
ALERTS_FILE = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST_FILE = ROOT / "deploy" / "prometheus" / "alerts.test.yml"
RUNBOOKS_FILE = ROOT / "docs" / "runbooks.md"
K8S_BASE_DIR = ROOT / "deploy" / "k8s" / "base"
GRAFANA_DIR = ROOT / "deploy" / "grafana"
PROVISIONING_DIR = GRAFANA_DIR / "provisioning"
DATASOURCES_FILE = PROVISIONING_DIR / "datasources" / "datasources.yml"
DASHBOARD_PROVIDERS_FILE = PROVISIONING_DIR / "dashboards" / "dashboards.yml"
DASHBOARDS_DIR = GRAFANA_DIR / "dashboards"
DASHBOARD_FILES = sorted(DASHBOARDS_DIR.glob("*.json"))
ANALYTICS_DASHBOARD = DASHBOARDS_DIR / "analytics.json"
VIDEO_QUALITY_DASHBOARD = DASHBOARDS_DIR / "video-quality.json"
# The Infinity plugin: JSON over HTTP, here the query API's (SPEC §5).
INFINITY = "yesoreyeram-infinity-datasource"
API_DATASOURCE_UID = "quip-api"

# The modules that create every Prometheus metric object of the quip processes.
METRIC_MODULES = (
    "common/ops.py",
    "ingest/metrics.py",
    "streams/metrics.py",
    "sinks/writer.py",
    "api/metrics.py",
)
# prometheus_client's default process collector (on Linux; absent when /metrics aggregates
# multiprocess files), and the series Prometheus adds for every target.
PROCESS_METRICS = frozenset(
    {
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_max_fds",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
        "process_virtual_memory_bytes",
    }
)
# Series the Kubernetes rules read from kube-state-metrics (v2) and the kubelet's cAdvisor,
# with the labels those exporters give them.
CLUSTER_METRICS = {
    "kube_pod_container_status_restarts_total": frozenset({"namespace", "pod", "container"}),
    "kube_pod_container_resource_limits": frozenset(
        {"namespace", "pod", "container", "node", "resource", "unit"}
    ),
    "kube_horizontalpodautoscaler_status_current_replicas": frozenset(
        {"namespace", "horizontalpodautoscaler"}
    ),
    "kube_horizontalpodautoscaler_spec_max_replicas": frozenset(
        {"namespace", "horizontalpodautoscaler"}
    ),
    "container_memory_working_set_bytes": frozenset(
        {"namespace", "pod", "container", "id", "image", "name"}
    ),
}
# Labels of every scraped series: Prometheus' own, and those prometheus-k8s.yml attaches
# to the pods it finds (checked against that file below).
KUBERNETES_TARGET_LABELS = frozenset({"namespace", "pod", "container"})
TARGET_LABELS = frozenset({"job", "instance"}) | KUBERNETES_TARGET_LABELS

SEVERITIES = frozenset({"critical", "warning"})
RUNBOOK = "docs/runbooks.md"

# Variables Grafana defines itself.
BUILTIN_VARIABLES = frozenset(
    {
        "__interval",
        "__interval_ms",
        "__rate_interval",
        "__range",
        "__range_s",
        "__range_ms",
        "__from",
        "__to",
        "__dashboard",
        "__org",
        "__user",
    }
)

# ------------------------------------------------------------------ PromQL vocabulary

PROMQL_FUNCTIONS = frozenset(
    {
        "abs",
        "absent",
        "absent_over_time",
        "avg_over_time",
        "ceil",
        "changes",
        "clamp",
        "clamp_max",
        "clamp_min",
        "count_over_time",
        "day_of_month",
        "day_of_week",
        "delta",
        "deriv",
        "exp",
        "floor",
        "histogram_quantile",
        "hour",
        "idelta",
        "increase",
        "irate",
        "label_join",
        "label_replace",
        "last_over_time",
        "ln",
        "log10",
        "log2",
        "max_over_time",
        "min_over_time",
        "minute",
        "month",
        "predict_linear",
        "quantile_over_time",
        "rate",
        "resets",
        "round",
        "scalar",
        "sgn",
        "sort",
        "sort_desc",
        "sqrt",
        "stddev_over_time",
        "stdvar_over_time",
        "sum_over_time",
        "time",
        "timestamp",
        "vector",
        "year",
    }
)
AGGREGATIONS = frozenset(
    {
        "avg",
        "bottomk",
        "count",
        "count_values",
        "group",
        "max",
        "min",
        "quantile",
        "stddev",
        "stdvar",
        "sum",
        "topk",
    }
)
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan"})

STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)?\s*\{([^}]*)\}")
MATCHER = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
RANGE = re.compile(r"\[[^\]]*\]")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
IDENTIFIER = re.compile(r"(?<![\w.$])([A-Za-z_:][\w:]*)(\s*\()?")
# $name, ${name}, ${name:format}, [[name]]
VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)(?::[^\]]*)?\]\]")
LABEL_VALUES = re.compile(
    r"\s*label_values\(\s*(?:(?P<selector>.*),)?\s*(?P<label>\w+)\s*\)\s*", re.S
)
# `label="value"` (not =~, !=, !~) without Grafana variables.
EQUALITY_MATCHER = re.compile(r'\b(\w+)\s*=\s*"([^"$]*)"')
JOB_MATCHER = re.compile(r'\bjob\s*(?:=~|=)\s*"([^"]*)"')


@dataclass
class PromQLUse:
    """What one expression reads: metric names, functions called, the label names of each
    selector's matchers, and the labels of its by/on/... clauses."""

    metrics: set[str] = field(default_factory=set)
    functions: set[str] = field(default_factory=set)
    selectors: list[tuple[str | None, set[str]]] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)


def promql_use(expr: str) -> PromQLUse:
    use = PromQLUse()
    text = STRING.sub('""', expr)
    for match in SELECTOR.finditer(text):
        use.selectors.append((match[1], set(MATCHER.findall(match[2]))))
    text = SELECTOR.sub(lambda match: f" {match[1] or ''} ", text)
    text = RANGE.sub(" ", text)
    for match in GROUPING.finditer(text):
        use.grouping.update(label.strip() for label in match[1].split(",") if label.strip())
    text = VARIABLE.sub(" ", GROUPING.sub(" ", text))
    for match in IDENTIFIER.finditer(text):
        name, call = match[1], match[2]
        if name in KEYWORDS:
            continue  # `and (...)` is an operator before a parenthesis, not a call
        if call:
            use.functions.add(name)
        else:
            use.metrics.add(name)
    return use


def balanced(text: str) -> bool:
    closing = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for char in text:
        if char in "([{":
            stack.append(char)
        elif char in closing and (not stack or stack.pop() != closing[char]):
            return False
    return not stack


def promql_problems(expr: str, known: dict[str, frozenset[str]]) -> list[str]:
    """Why `expr` would read nothing: unknown functions or metrics, selector labels the
    metric does not carry, grouping labels no metric of the expression carries."""
    use = promql_use(expr)
    problems = [
        f"unknown function {name}()" for name in use.functions - PROMQL_FUNCTIONS - AGGREGATIONS
    ]
    problems += [f"unknown metric {name}" for name in sorted(use.metrics - known.keys())]
    if not balanced(STRING.sub('""', expr)):
        problems.append("unbalanced brackets")
    if not use.metrics:
        problems.append("reads no metric")
    for metric, labels in use.selectors:
        if metric is None:
            problems.append("selector without a metric name")
            continue
        allowed = known.get(metric, frozenset()) | TARGET_LABELS
        problems += [f"{metric} has no label {label}" for label in sorted(labels - allowed)]
    carried = TARGET_LABELS.union(*(known.get(metric, frozenset()) for metric in use.metrics))
    problems += [f"no metric here has label {label}" for label in sorted(use.grouping - carried)]
    return problems


def variable_query_problems(query: str, known: dict[str, frozenset[str]]) -> list[str]:
    """A Prometheus variable query: `label_values(selector, label)` or an expression."""
    match = LABEL_VALUES.fullmatch(query)
    if match is None:
        return promql_problems(query, known)
    if match["selector"] is None:
        return [f"label_values({match['label']}) reads every metric"]
    problems = promql_problems(match["selector"], known)
    carried = TARGET_LABELS.union(
        *(known.get(metric, frozenset()) for metric in promql_use(match["selector"]).metrics)
    )
    if match["label"] not in carried:
        problems.append(f"label_values of missing label {match['label']}")
    return problems


# ------------------------------------------------------------------ what the code defines


def _labelnames(call: ast.Call) -> frozenset[str]:
    node = call.args[2] if len(call.args) > 2 else None
    for keyword in call.keywords:
        if keyword.arg == "labelnames":
            node = keyword.value
    return frozenset(ast.literal_eval(node)) if node is not None else frozenset()


@cache
def exported_series() -> dict[str, frozenset[str]]:
    """Sample name → label names of every series the quip processes can export: the metric
    objects created in METRIC_MODULES (as prometheus_client names their samples), the
    process collector's and `up`."""
    series: dict[str, frozenset[str]] = {name: frozenset() for name in PROCESS_METRICS}
    series["up"] = frozenset()
    series.update(CLUSTER_METRICS)
    for module in METRIC_MODULES:
        for node in ast.walk(ast.parse((ROOT / module).read_text())):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            kind = node.func.id if isinstance(node.func, ast.Name) else None
            if isinstance(node.func, ast.Attribute):
                kind = node.func.attr
            if kind not in ("Counter", "Gauge", "Histogram", "Summary"):
                continue
            name = ast.literal_eval(node.args[0])
            labels = _labelnames(node)
            if kind == "Counter":
                base = name.removesuffix("_total")
                samples = {f"{base}_total": labels, f"{base}_created": labels}
            elif kind == "Gauge":
                samples = {name: labels}
            else:
                samples = {f"{name}{suffix}": labels for suffix in ("_sum", "_count", "_created")}
                if kind == "Histogram":
                    samples[f"{name}_bucket"] = labels | {"le"}
                else:
                    samples[name] = labels | {"quantile"}
            series.update(samples)
    return series


@dataclass(frozen=True)
class Measurement:
    tags: frozenset[str]
    fields: frozenset[str]


@cache
def written_measurements() -> dict[str, Measurement]:
    """Measurement → tags and fields of the InfluxDB points the stream processors emit, for
    inputs that fill every optional field (a started play with rebuffering; a succeeded
    encoding job with its time)."""
    from schemas.events import Event, EventRecord
    from schemas.services import EncodingJob, encode_message, topic_for
    from streams.processors.base import Position
    from streams.processors.plays import PlaysProcessor
    from streams.processors.services import ServiceMetricsProcessor

    t0 = 1_764_100_800_000
    plays = PlaysProcessor()
    kinds_and_props: list[tuple[str, dict[str, Any]]] = [
        ("playback_start", {"startup_ms": 900, "content_id": "c-1"}),
        ("playback_heartbeat", {"played_ms": 10_000, "bitrate_kbps": 8000}),
        ("playback_rebuffer", {"duration_ms": 400}),
        ("playback_end", {"played_ms": 2000}),
    ]
    events = [
        Event(
            event_id=f"e{n}",
            type=kind,
            user_id="u-1",
            ts=t0 + n * 1000,
            device_model="quest3",
            props={"play_id": "pl-1", **props},
        )
        for n, (kind, props) in enumerate(kinds_and_props)
    ]
    plays.process(EventRecord(project="p", received_at=t0 + 5000, events=events), Position(0, 0))

    services = ServiceMetricsProcessor()
    job = EncodingJob(
        message_id="m-1", job_id="j-1", content_id="c-1", status="succeeded", ts=t0, encode_ms=1.0
    )
    services.process(topic_for(job).name, encode_message(job), Position(0, 0))

    found: dict[str, Measurement] = {}
    for processor_output in (plays.flush(t0 + 6000), services.flush(t0 + 60_000)):
        for point in processor_output.points:
            seen = found.get(point.measurement, Measurement(frozenset(), frozenset()))
            found[point.measurement] = Measurement(
                seen.tags | set(point.tags), seen.fields | set(point.fields)
            )
    return found


# ------------------------------------------------------------------ deployment files


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def compose_mounts(service: str) -> dict[str, Path]:
    """Container path → host path of a compose service's bind mounts."""
    volumes = load_yaml(COMPOSE_FILE)["services"][service].get("volumes") or []
    mounts = {}
    for volume in volumes:
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts[target] = (ROOT / source).resolve()
    return mounts


def container_path_of(service: str, host: Path) -> PurePosixPath:
    """Where a host file or directory appears in a service's container."""
    for target, source in compose_mounts(service).items():
        if host.resolve() == source or source in host.resolve().parents:
            return PurePosixPath(target) / host.resolve().relative_to(source).as_posix()
    raise AssertionError(f"{service} does not mount {host.relative_to(ROOT)}")


def datasources() -> dict[str, dict[str, Any]]:
    return {source["uid"]: source for source in load_yaml(DATASOURCES_FILE)["datasources"]}


def scrape_jobs() -> list[str]:
    return [job["job_name"] for job in load_yaml(PROMETHEUS_FILE)["scrape_configs"]]


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS_FILE)["groups"] for rule in group["rules"]]


def load_dashboard(path: Path) -> dict[str, Any]:
    board: dict[str, Any] = json.loads(path.read_text())
    return board


def all_panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # collapsed rows hold their panels


@dataclass(frozen=True)
class Query:
    where: str
    datasource: dict[str, Any]
    text: str


def queries(board: dict[str, Any]) -> list[Query]:
    """Every panel target and every variable query, with its datasource (a target without
    one uses its panel's); an Infinity target's text is its URL and body."""
    found = []
    for panel in all_panels(board):
        for target in panel.get("targets", []):
            datasource = target.get("datasource") or panel.get("datasource") or {}
            text = target.get("expr") or target.get("query") or ""
            if "url" in target:
                text = f"{target['url']} {target.get('url_options', {}).get('data', '')}"
            found.append(Query(f"{panel['title']!r} {target.get('refId')}", datasource, text))
    for variable in board.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]
            text = query.get("query", "") if isinstance(query, dict) else query
            found.append(Query(f"variable {variable['name']}", variable["datasource"], text))
    return found


def of_type(board: dict[str, Any], source_type: str) -> list[Query]:
    uids = {uid for uid, source in datasources().items() if source["type"] == source_type}
    return [query for query in queries(board) if query.datasource.get("uid") in uids]


dashboard_files = pytest.mark.parametrize(
    "path", [pytest.param(path, id=path.stem) for path in DASHBOARD_FILES]
)


# ================================================================== self-checks


def test_metric_definitions_are_found() -> None:
    series = exported_series()
    assert series["http_requests_total"] == {"method", "route", "status"}
    assert series["http_request_duration_seconds_bucket"] == {"method", "route", "le"}
    assert series["ingest_events_rejected_total"] == {"source", "reason"}
    assert series["consumer_lag"] == {"topic", "partition"}
    assert series["sink_write_seconds_count"] == {"sink", "target"}
    assert "video_playback_quality_bucket" in series
    assert series["video_plays_total"] == {"device_model"}
    assert series["video_quality_shifts_total"] == {"device_model", "direction"}
    assert "daily_active_users" in series


def test_written_measurements_are_found() -> None:
    written = written_measurements()
    assert set(written) == {"playback_qoe", "service_metrics"}
    assert {"startup_ms_p95", "rebuffer_ratio", "video_start_failures", "viewers"} <= written[
        "playback_qoe"
    ].fields
    assert {"content_id", "device_model", "project"} <= written["playback_qoe"].tags
    assert written["service_metrics"].fields == {"count", "encode_ms_p95"}


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        pytest.param("rate(http_request_total[5m])", "unknown metric", id="metric typo"),
        pytest.param("sum by (agnet) (analytics_events_processed_total)", "label", id="by typo"),
        pytest.param('consumer_lag{topc="x"}', "has no label", id="matcher typo"),
        pytest.param("rat(up[5m])", "unknown function", id="function typo"),
        pytest.param("sum(rate(up[5m])", "unbalanced", id="unbalanced parenthesis"),
        pytest.param("label_values(consumer_lag, agent)", "missing label", id="variable label"),
    ],
)
def test_the_checker_catches_typos(expr: str, problem: str) -> None:
    problems = variable_query_problems(expr, exported_series())
    assert any(problem in found for found in problems), problems


def test_the_checker_accepts_a_correct_expression() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (job, le) (rate(http_request_duration_seconds_bucket"
        '{job=~"$job", route!="other"}[$__rate_interval]))) > 2 or vector(0)'
    )
    assert variable_query_problems(expr, exported_series()) == []


# ================================================================== grafana provisioning


def test_dashboard_provider_reads_the_mounted_dashboards() -> None:
    # The provider file must sit under the mounted provisioning directory, and its path must
    # be where compose mounts deploy/grafana/dashboards.
    assert str(container_path_of("grafana", DASHBOARD_PROVIDERS_FILE)).startswith(
        "/etc/grafana/provisioning/dashboards/"
    )
    providers = load_yaml(DASHBOARD_PROVIDERS_FILE)["providers"]
    assert [provider["type"] for provider in providers] == ["file"]
    assert providers[0]["options"]["path"] == str(container_path_of("grafana", DASHBOARDS_DIR))


def test_datasources_have_unique_explicit_uids() -> None:
    sources = load_yaml(DATASOURCES_FILE)["datasources"]
    uids = [source.get("uid") for source in sources]
    assert all(uids)
    assert len(set(uids)) == len(uids)


@pytest.mark.parametrize(
    ("filename", "title"),
    [
        pytest.param("infrastructure.json", "Infrastructure", id="infrastructure"),
        pytest.param("application.json", "Application", id="application"),
        pytest.param("business.json", "Business", id="business"),
        pytest.param("analytics.json", "Analytics", id="analytics"),
        pytest.param("video-quality.json", "Video Quality", id="video-quality"),
    ],
)
def test_guide_dashboard_exists(filename: str, title: str) -> None:
    board = load_dashboard(DASHBOARDS_DIR / filename)
    assert board["title"] == title
    assert board["uid"] == f"quip-{filename.removesuffix('.json')}"
    assert "quip" in board["tags"]


def test_dashboard_uids_and_titles_are_unique() -> None:
    boards = [load_dashboard(path) for path in DASHBOARD_FILES]
    for key in ("uid", "title"):
        values = [board[key] for board in boards]
        assert len(set(values)) == len(values), key
    assert all(len(board["uid"]) <= 40 for board in boards)  # Grafana's limit


@dashboard_files
def test_dashboard_structure(path: Path) -> None:
    board = load_dashboard(path)
    assert 36 <= board["schemaVersion"] <= 41
    panels = list(all_panels(board))
    ids = [panel["id"] for panel in panels]
    assert len(set(ids)) == len(ids), "duplicate panel ids"
    taken: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert all(isinstance(grid[key], int) for key in ("h", "w", "x", "y")), panel["title"]
        assert min(grid["w"], grid["h"]) > 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"{panel['title']!r} overlaps {taken[(x, y)]!r}"
                taken[(x, y)] = panel["title"]
        if panel["type"] == "row":
            continue
        targets = panel["targets"]
        assert targets, f"{panel['title']!r} has no query"
        refs = [target["refId"] for target in targets]
        assert len(set(refs)) == len(refs), f"{panel['title']!r} repeats a refId"
    for variable in board["templating"]["list"]:
        # Grafana shows `definition` but runs `query`: they must not drift apart.
        query = variable.get("query")
        text = query.get("query") if isinstance(query, dict) else query
        assert variable.get("definition", text) == text, variable["name"]


@dashboard_files
def test_dashboard_datasources_are_provisioned(path: Path) -> None:
    board = load_dashboard(path)
    sources = datasources()
    named = [panel["datasource"] for panel in all_panels(board) if panel["type"] != "row"]
    named += [query.datasource for query in queries(board)]
    for datasource in named:
        assert datasource["uid"] in sources, datasource
        assert datasource["type"] == sources[datasource["uid"]]["type"], datasource


@dashboard_files
def test_dashboard_variables_are_defined_and_used(path: Path) -> None:
    board = load_dashboard(path)
    defined = {variable["name"] for variable in board["templating"]["list"]}
    used = set()
    for query in queries(board):
        for match in VARIABLE.finditer(query.text):
            name = next(group for group in match.groups() if group)
            assert name in defined | BUILTIN_VARIABLES, f"{query.where} uses undefined ${name}"
            used.add(name)
    assert defined <= used, f"variables that filter nothing: {sorted(defined - used)}"


@dashboard_files
def test_dashboard_prometheus_queries_read_exported_metrics(path: Path) -> None:
    board = load_dashboard(path)
    problems = {
        query.where: found
        for query in of_type(board, "prometheus")
        if (found := variable_query_problems(query.text, exported_series()))
    }
    assert not problems


@dashboard_files
def test_dashboard_flux_queries_read_written_series(path: Path) -> None:
    board = load_dashboard(path)
    bucket = next(
        source["jsonData"]["defaultBucket"]
        for source in datasources().values()
        if source["type"] == "influxdb"
    )
    for query in of_type(board, "influxdb"):
        problems = flux_problems(query.text, bucket)
        assert not problems, f"{query.where}: {problems}"


# ------------------------------------------------------------------ query API panels


@cache
def api_schema() -> dict[str, Any]:
    """The query API's OpenAPI document, from the app itself. Cluster settings: its engine
    pool connects lazily and its producer only in the lifespan, so nothing is opened (an
    embedded app would open chDB, which binds one data path per test process)."""
    from pydantic import SecretStr

    from api.app import create_app
    from common.settings import Settings

    settings = Settings(
        mode="cluster", read_keys=SecretStr("default:rk"), admin_keys=SecretStr("default:ak")
    )
    return create_app(settings).openapi()


def resolve(schema: dict[str, Any]) -> dict[str, Any]:
    """A schema with its `$ref`s and single-branch `anyOf`/`allOf` followed."""
    while True:
        if "$ref" in schema:
            schema = api_schema()["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        elif len(branches := schema.get("allOf") or schema.get("anyOf") or []) == 1:
            schema = branches[0]
        else:
            return schema


def api_operation(method: str, url: str) -> tuple[str, dict[str, Any]] | None:
    """The OpenAPI path and operation a dashboard URL (path and query string, Grafana
    variables in it) calls, or None."""
    path = VARIABLE.sub("VAR", urlsplit(url).path)
    for template, operations in api_schema()["paths"].items():
        pattern = re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, path) and method.lower() in operations:
            return template, operations[method.lower()]
    return None


def response_items(operation: dict[str, Any], root_selector: str) -> dict[str, Any]:
    """The properties of the rows a plain root selector (`""` or `a.b`) picks from the
    200 answer: an array's items, or the object itself."""
    schema = resolve(operation["responses"]["200"]["content"]["application/json"]["schema"])
    for name in [part for part in root_selector.split(".") if part]:
        if schema.get("type") == "array":  # a path through a list reads each of its items
            schema = resolve(schema["items"])
        schema = resolve(resolve(schema)["properties"][name])
    schema = resolve(schema)
    if schema.get("type") == "array":
        schema = resolve(schema["items"])
    properties: dict[str, Any] = schema["properties"]
    return properties


# `$.{"key": field, ...}`: a JSONata object per row; its keys and the fields it reads.
JSONATA_KEY = re.compile(r'"(\w+)"\s*:')
JSONATA_NAME = re.compile(r"(?<![\w$])([A-Za-z_]\w*)")


def api_query_problems(target: dict[str, Any]) -> list[str]:
    """Why an Infinity target would not read the API: an unknown route or method, query
    parameters the route does not take, columns the answer does not have."""
    options = target.get("url_options", {})
    method = options.get("method", "GET")
    url = target["url"]
    found = api_operation(method, url)
    if found is None:
        return [f"no {method} route for {url}"]
    template, operation = found
    problems = []
    if target.get("type") != "json" or target.get("parser") != "backend":
        problems.append("not a JSON query with the backend parser")
    if urlsplit(url).scheme or not url.startswith("/"):
        problems.append("not a path under the datasource's URL")
    taken = {param["name"] for param in operation.get("parameters", []) if param["in"] == "query"}
    given = {name for name, _ in parse_qsl(urlsplit(url).query, keep_blank_values=True)}
    problems += [f"{template} takes no parameter {name}" for name in sorted(given - taken)]
    root = target.get("root_selector", "")
    if root.startswith("$"):
        fields = response_items(operation, "")
        keys = set(JSONATA_KEY.findall(root))
        read = set(JSONATA_NAME.findall(STRING.sub('""', root)))
        problems += [f"{template} rows have no field {name}" for name in sorted(read - set(fields))]
    else:
        keys = set(response_items(operation, root))
    problems += [
        f"{template} rows have no column {column['selector']}"
        for column in target["columns"]
        if column["selector"] not in keys
    ]
    return problems


def api_targets(board: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(panel, target) of every target on the query API datasource."""
    for panel in all_panels(board):
        for target in panel.get("targets", []):
            datasource = target.get("datasource") or panel.get("datasource") or {}
            if datasource.get("uid") == API_DATASOURCE_UID:
                yield panel, target


@dashboard_files
def test_dashboard_api_queries_read_routes_of_the_api(path: Path) -> None:
    problems = {
        f"{panel['title']!r} {target['refId']}": found
        for panel, target in api_targets(load_dashboard(path))
        if (found := api_query_problems(target))
    }
    assert not problems


def _api_target(url: str, root: str = "", columns: tuple[str, ...] = ("t",)) -> dict[str, Any]:
    return {
        "type": "json",
        "parser": "backend",
        "url": url,
        "url_options": {"method": "GET"},
        "root_selector": root,
        "columns": [{"selector": name} for name in columns],
    }


@pytest.mark.parametrize(
    ("target", "problem"),
    [
        pytest.param(_api_target("/v1/insight/lifecycle"), "no GET route", id="path typo"),
        pytest.param(
            _api_target("/v1/insights/lifecycle?period=day"), "no parameter period", id="param"
        ),
        pytest.param(
            _api_target("/v1/insights/lifecycle", columns=("day",)), "no column day", id="column"
        ),
        pytest.param(
            _api_target("/v1/funnels/${funnel}", "step", ("event",)), "step", id="root selector"
        ),
        pytest.param(
            _api_target("/v1/metrics/retention", '$.{"c": cohorts}', ("c",)),
            "no field cohorts",
            id="jsonata field",
        ),
        pytest.param(
            _api_target("http://api:8000/v1/insights/lifecycle"), "not a path", id="absolute"
        ),
        pytest.param(
            _api_target("/v1/metrics/playback", "errors", ("cod",)),
            "no column cod",
            id="root selector through a list",
        ),
    ],
)
def test_the_api_checker_catches_mistakes(target: dict[str, Any], problem: str) -> None:
    try:
        problems = api_query_problems(target)
    except KeyError as missing:  # a root selector through a field the answer lacks
        problems = [f"no field {missing}"]
    assert any(problem in found for found in problems), problems


def test_api_datasource_reads_the_compose_api_with_a_read_key() -> None:
    source = datasources()[API_DATASOURCE_UID]
    assert source["type"] == INFINITY
    api = load_yaml(COMPOSE_FILE)["services"]["api"]
    ports = {str(mapping).rsplit(":", 1)[-1] for mapping in api["ports"]}
    assert "8000" in ports
    assert source["url"] == "http://api:8000"
    assert source["jsonData"]["allowedHosts"] == [source["url"]]
    assert source["jsonData"]["auth_method"] == "bearerToken"
    # A read key from Grafana's environment, never one in the repository.
    assert source["secureJsonData"]["bearerToken"] in (
        "$GRAFANA_API_READ_KEY",
        "${GRAFANA_API_READ_KEY}",
    )


@pytest.mark.parametrize(
    ("route", "params", "columns", "panel_type"),
    [
        pytest.param(
            "/v1/metrics/retention",
            {"period": "day"},
            {"cohort", "users", "d1", "d7", "d14", "d28"},
            "table",
            id="retention cohorts",
        ),
        pytest.param(
            "/v1/funnels/{name}",
            {},
            {"event", "users", "conversion_from_start", "conversion_from_previous"},
            "bargauge",
            id="funnel conversion",
        ),
        pytest.param(
            "/v1/insights/lifecycle",
            {"interval": "day"},
            {"t", "new", "returning", "resurrecting", "dormant"},
            "timeseries",
            id="lifecycle",
        ),
        pytest.param(
            "/v1/insights/lifecycle",
            {"interval": "day"},
            {"t", "dormant", "resurrecting"},
            "timeseries",
            id="churn",
        ),
    ],
)
def test_analytics_dashboard_has_cohort_funnel_and_churn_panels(
    route: str, params: dict[str, str], columns: set[str], panel_type: str
) -> None:
    board = load_dashboard(ANALYTICS_DASHBOARD)
    matching = []
    for panel, target in api_targets(board):
        found = api_operation(target.get("url_options", {}).get("method", "GET"), target["url"])
        query = dict(parse_qsl(urlsplit(target["url"]).query))
        if (
            found is not None
            and found[0] == route
            and panel["type"] == panel_type
            and {column["selector"] for column in target["columns"]} == columns
            and params.items() <= query.items()
        ):
            matching.append((panel, target, query))
    assert len(matching) == 1, [panel["title"] for panel, _, _ in matching]
    ((panel, target, query),) = matching
    # The key's project, not the API's "default"; the funnel named by the variable.
    assert query["project"] == "${api_project:percentencode}"
    if route == "/v1/funnels/{name}":
        assert urlsplit(target["url"]).path == "/v1/funnels/${funnel:percentencode}"
    if columns == {"t", "new", "returning", "resurrecting", "dormant"}:
        overrides = {
            override["matcher"]["options"]: {p["id"]: p["value"] for p in override["properties"]}
            for override in panel["fieldConfig"]["overrides"]
        }
        assert overrides["dormant"]["custom.transform"] == "negative-Y"


# The QoE of SPEC §4 the Video Quality dashboard shows (issue 17): live from the worker's
# counters of closed plays (Prometheus), exact from the stored plays (query API columns).
VIDEO_QUALITY_METRICS = frozenset(
    {
        "video_plays_total",
        "video_playback_failures_total",
        "video_start_failures_total",
        "video_exits_before_start_total",
        "video_playback_quality_bucket",
        "video_rebuffer_seconds_total",
        "video_watch_seconds_total",
        "video_rebuffers_total",
        "video_quality_shifts_total",
        "video_plays_downshifted_total",
        "video_plays_started_total",
        "video_frames_rendered_total",
        "video_frames_dropped_total",
        "video_frames_played_seconds_total",
    }
)
VIDEO_QUALITY_API_COLUMNS = frozenset(
    {
        "playback_failure_pct",
        "video_start_failure_pct",
        "exit_before_start_pct",
        "startup_ms_p50",
        "startup_ms_p95",
        "rebuffer_frequency",
        "downshifts",
        "upshifts",
        "downshift_pct",
        "avg_fps",
        "dropped_frame_pct",
        "experience_score",
        "code",  # of `errors`: the top error codes
    }
)


def test_video_quality_dashboard_shows_the_qoe_fields() -> None:
    board = load_dashboard(VIDEO_QUALITY_DASHBOARD)
    shown = set().union(*(promql_use(query.text).metrics for query in of_type(board, "prometheus")))
    assert shown >= VIDEO_QUALITY_METRICS
    columns = set()
    for _, target in api_targets(board):
        columns |= {column["selector"] for column in target["columns"]}
        assert dict(parse_qsl(urlsplit(target["url"]).query))["project"] == (
            "${api_project:percentencode}"
        )
    assert columns >= VIDEO_QUALITY_API_COLUMNS
    flux = " ".join(query.text for query in of_type(board, "influxdb"))
    assert 'r._measurement == "playback_qoe"' in flux
    assert 'r._field == "viewers"' in flux


def test_video_quality_dashboard_has_the_quality_switch_panels() -> None:
    # Up- and downshifts side by side: live by direction, and per hour from the API.
    board = load_dashboard(VIDEO_QUALITY_DASHBOARD)
    live = [
        panel
        for panel in all_panels(board)
        for target in panel.get("targets", [])
        if "video_quality_shifts_total" in promql_use(target.get("expr", "")).metrics
        and "direction" in promql_use(target["expr"]).grouping
    ]
    stored = [
        panel
        for panel, target in api_targets(board)
        if {"downshifts", "upshifts"} <= {column["selector"] for column in target["columns"]}
    ]
    assert len(live) == 1
    assert len(stored) == 1


def test_every_video_counter_is_read_by_a_dashboard_or_an_alert() -> None:
    # A counter the worker exports and nothing reads is work for nothing.
    read = set().union(*(promql_use(rule["expr"]).metrics for rule in alert_rules()))
    for path in DASHBOARD_FILES:
        for query in of_type(load_dashboard(path), "prometheus"):
            read |= promql_use(query.text).metrics
    counters = {
        name for name in exported_series() if name.startswith("video_") and name.endswith("_total")
    }
    assert counters
    assert counters <= read, sorted(counters - read)


FLUX_COLUMNS = frozenset({"_time", "_value", "_field", "_measurement", "_start", "_stop"})


def flux_problems(query: str, bucket: str) -> list[str]:
    """Names a Flux query uses that the processors do not write: its measurement, the
    fields and tags it filters, groups or pivots on. Columns the query creates itself
    (record keys of map/reduce) are allowed."""
    written = written_measurements()
    query = VARIABLE.sub("[]", query)  # `${name:json}` would read as a record key
    measurements = set(re.findall(r'(?:r\._measurement\s*==\s*|measurement:\s*)"([^"]+)"', query))
    if len(measurements) != 1:
        return [f"reads measurements {sorted(measurements)}, expected exactly one"]
    (measurement,) = measurements
    if measurement not in written:
        return [f"no processor writes {measurement}"]
    tags, fields = written[measurement].tags, written[measurement].fields
    problems = []
    buckets = set(re.findall(r'\bbucket:\s*"([^"]+)"', query))
    if buckets != {bucket}:
        problems.append(f"reads buckets {sorted(buckets)}, not {bucket}")
    problems += [
        f"{measurement} has no field {name}"
        for name in re.findall(r'r\._field\s*==\s*"([^"]+)"', query)
        if name not in fields
    ]
    problems += [
        f"{measurement} has no tag {name}"
        for name in re.findall(r'\btag:\s*"([^"]+)"', query)
        if name not in tags
    ]
    created = set(re.findall(r"(\w+)\s*:", STRING.sub('""', query)))
    columns = set(re.findall(r"\br\.(\w+)", query))
    for listed in re.findall(r"(?:columns|rowKey|columnKey):\s*\[([^\]]*)\]", query):
        columns.update(re.findall(r'"([^"]+)"', listed))
    problems += [
        f"{measurement} has no column {name}"
        for name in sorted(columns - tags - fields - FLUX_COLUMNS - created)
    ]
    return problems


# ================================================================== prometheus rules


def test_prometheus_loads_the_alert_rules() -> None:
    config = load_yaml(PROMETHEUS_FILE)
    config_in_container = container_path_of("prometheus", PROMETHEUS_FILE)
    mounts = compose_mounts("prometheus")
    loaded = []
    for rule_file in config["rule_files"]:
        # Prometheus resolves a relative path against the directory of its config file.
        in_container = config_in_container.parent / rule_file
        assert str(in_container) in mounts, f"compose does not mount {in_container}"
        host = mounts[str(in_container)]
        assert host.is_file()
        assert (PROMETHEUS_FILE.parent / rule_file).resolve() == host  # promtool from the repo
        loaded.append(host)
    assert ALERTS_FILE.resolve() in loaded


def test_alert_rules_are_complete() -> None:
    groups = load_yaml(ALERTS_FILE)["groups"]
    assert len({group["name"] for group in groups}) == len(groups)
    rules = alert_rules()
    names = [rule.get("alert") for rule in rules]
    assert len(set(names)) == len(names), "duplicate alert names"
    for rule in rules:
        name = str(rule.get("alert"))
        assert re.fullmatch(r"Quip[A-Z]\w+", name), rule
        assert str(rule.get("expr") or "").strip(), name
        assert re.fullmatch(r"\d+[smhd]", str(rule.get("for"))), name
        assert rule["labels"]["severity"] in SEVERITIES, name
        annotations = rule["annotations"]
        assert annotations["summary"].strip(), name
        assert annotations["description"].strip(), name
        assert annotations["runbook_url"] == f"{RUNBOOK}#{name.lower()}", name


def test_alert_expressions_read_exported_metrics() -> None:
    problems = {
        rule["alert"]: found
        for rule in alert_rules()
        if (found := promql_problems(rule["expr"], exported_series()))
    }
    assert not problems


def test_alert_annotations_name_labels_the_result_keeps() -> None:
    # An aggregation keeps only its `by` labels (histogram_quantile drops `le`); without
    # one, the result has the metric's labels and the target's.
    for rule in alert_rules():
        use = promql_use(rule["expr"])
        kept: set[str] | frozenset[str]
        if use.functions & AGGREGATIONS:
            kept = use.grouping - {"le"}
        else:
            kept = TARGET_LABELS.union(*(exported_series()[metric] for metric in use.metrics))
        text = " ".join(rule["annotations"].values())
        referenced = set(re.findall(r"\$labels\.(\w+)", text))
        assert referenced <= kept, f"{rule['alert']} names labels it drops: {referenced - kept}"


def test_job_matchers_match_a_scrape_job() -> None:
    # A job regex that matches no scrape job silences an alert or empties a panel.
    jobs = scrape_jobs()
    texts = [rule["expr"] for rule in alert_rules()]
    texts += [query.text for path in DASHBOARD_FILES for query in queries(load_dashboard(path))]
    patterns = {value for text in texts for value in JOB_MATCHER.findall(text) if "$" not in value}
    assert patterns
    for pattern in patterns:
        assert any(re.fullmatch(pattern, job) for job in jobs), f"job=~{pattern!r} matches no job"


def code_strings() -> set[str]:
    strings = set()
    for package in ("quip", "common", "ingest", "streams", "sinks", "api", "schemas"):
        for module in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(module.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    strings.add(node.value)
    return strings


def test_equality_matchers_name_label_values_the_code_sets() -> None:
    # `measure="startup_second"` or `agent="event"` would select nothing.
    texts = [rule["expr"] for rule in alert_rules()]
    texts += [
        query.text
        for path in DASHBOARD_FILES
        for query in of_type(load_dashboard(path), "prometheus")
    ]
    pairs = {pair for text in texts for pair in EQUALITY_MATCHER.findall(text)}
    # Labels of the cluster exporters name Kubernetes objects: checked against the
    # manifests in test_kubernetes_matchers_name_objects_of_the_manifests.
    cluster_labels = frozenset().union(*CLUSTER_METRICS.values())
    pairs = {
        (label, value)
        for label, value in pairs
        if label not in TARGET_LABELS and label not in cluster_labels
    }
    assert pairs
    strings = code_strings()
    unknown = sorted(pair for pair in pairs if pair[1] not in strings)
    assert not unknown, f"label values no quip code sets: {unknown}"


# The guide's thresholds (its rollback criteria and SLO table) and the operational signals
# the project adds (lag, dead letters, scrape failures), each with the alert that carries it:
# the condition(s) the expression must state, its `for`, and the metric it reads.
@pytest.mark.parametrize(
    ("alert", "conditions", "duration", "metric"),
    [
        pytest.param(
            "QuipHighErrorRate",
            ["> 0.01"],
            "1m",
            "http_requests_total",
            id="error rate > 1% for 1m",
        ),
        pytest.param(
            "QuipHighLatencyP95",
            ["> 2"],
            "2m",
            "http_request_duration_seconds_bucket",
            id="p95 latency > 2s for 2m",
        ),
        pytest.param(
            "QuipLatencyP95AboveSLO",
            ["> 0.5"],
            "10m",
            "http_request_duration_seconds_bucket",
            id="SLO p95 < 500ms",
        ),
        pytest.param(
            "QuipHighMemory",
            ["> 0.95 * 1024^3"],
            "3m",
            "process_resident_memory_bytes",
            id="memory > 95% of 1GiB for 3m",
        ),
        pytest.param(
            "QuipPodMemoryNearLimit",
            ["> 0.95"],
            "3m",
            "kube_pod_container_resource_limits",
            id="pod memory > 95% of limit for 3m",
        ),
        pytest.param(
            "QuipFrequentRestarts",
            ["> 1", "> 0.1"],
            "0m",
            "process_start_time_seconds",
            id="process restarts > 10% in 5m",
        ),
        pytest.param(
            "QuipPodRestartRate",
            ["> 0.1"],
            "0m",
            "kube_pod_container_status_restarts_total",
            id="pod restarts > 10% in 5m",
        ),
        pytest.param(
            "QuipConsumerLagHigh", ["> 100000"], "5m", "consumer_lag", id="lag > 100k for 5m"
        ),
        pytest.param(
            "QuipIngestRejectionsHigh",
            ["> 0.05"],
            "10m",
            "ingest_events_rejected_total",
            id="DLQ growth > 5% of ingest for 10m",
        ),
        pytest.param(
            "QuipUndecodableRecords",
            ["> 0"],
            "0m",
            "analytics_records_undecodable_total",
            id="any undecodable record",
        ),
        pytest.param("QuipTargetDown", ["== 0"], "1m", "up", id="target down for 1m"),
    ],
)
def test_guide_threshold_has_an_alert(
    alert: str, conditions: list[str], duration: str, metric: str
) -> None:
    rule = rule_stating(alert, conditions, duration)
    assert metric in promql_use(rule["expr"]).metrics


def rule_stating(alert: str, conditions: list[str], duration: str) -> dict[str, Any]:
    """The rule `alert`, checked to state each condition (`> 0.05`) and to wait `duration`."""
    rule = next((rule for rule in alert_rules() if rule["alert"] == alert), None)
    assert rule is not None, f"no alert {alert}"
    expr = " ".join(rule["expr"].replace("(", " ( ").replace(")", " ) ").split())
    for condition in conditions:
        assert f" {condition} " in f"{expr} ", (condition, expr)
    assert rule["for"] == duration
    return rule


def test_rollback_rules_are_critical() -> None:
    # The guide rolls a deploy back on these; everything else can wait for office hours.
    critical = {rule["alert"] for rule in alert_rules() if rule["labels"]["severity"] == "critical"}
    assert critical == {
        "QuipHighErrorRate",
        "QuipHighLatencyP95",
        "QuipHighMemory",
        "QuipPodMemoryNearLimit",
        "QuipFrequentRestarts",
        "QuipPodRestartRate",
        "QuipTargetDown",
    }


def histogram_buckets(name: str) -> tuple[float, ...]:
    """The `buckets=` of the histogram `name` created in METRIC_MODULES."""
    for module in METRIC_MODULES:
        for node in ast.walk(ast.parse((ROOT / module).read_text())):
            if (
                isinstance(node, ast.Call)
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and node.args[0].value == name
            ):
                for keyword in node.keywords:
                    if keyword.arg == "buckets":
                        buckets: tuple[float, ...] = ast.literal_eval(keyword.value)
                        return buckets
    raise AssertionError(f"no histogram {name} with buckets")


# The viewer-experience alerts (issue 17; thresholds and their sources in docs/runbooks.md,
# "Video quality thresholds"): the threshold and the minimum volume the expression must
# state, its `for`, and the worker's counters it reads.
@pytest.mark.parametrize(
    ("alert", "conditions", "duration", "metrics"),
    [
        pytest.param(
            "QuipPlaybackFailureHigh",
            ["> 0.05", ">= 100"],
            "5m",
            {"video_playback_failures_total", "video_plays_total"},
            id="playback failures > 5% of plays over 5m",
        ),
        pytest.param(
            "QuipVideoStartFailureHigh",
            ["> 0.05", ">= 100"],
            "5m",
            {"video_start_failures_total", "video_plays_total"},
            id="video start failures > 5% of plays over 5m",
        ),
        pytest.param(
            "QuipStartupTimeP95High",
            ["> 5", ">= 100"],
            "10m",
            {"video_playback_quality_bucket", "video_playback_quality_count"},
            id="startup p95 > 5s",
        ),
        pytest.param(
            "QuipRebufferingHigh",
            ["> 0.02", ">= 100"],
            "10m",
            {"video_rebuffer_seconds_total", "video_watch_seconds_total", "video_plays_total"},
            id="rebuffering > 2% of watch time",
        ),
        pytest.param(
            "QuipDroppedFramesHigh",
            ["> 0.05", ">= 10000"],
            "10m",
            {"video_frames_dropped_total", "video_frames_rendered_total"},
            id="dropped frames > 5% per device model",
        ),
    ],
)
def test_video_quality_alert(
    alert: str, conditions: list[str], duration: str, metrics: set[str]
) -> None:
    rule = rule_stating(alert, conditions, duration)
    assert rule["labels"]["severity"] == "warning"
    assert promql_use(rule["expr"]).metrics == metrics


def test_startup_alert_threshold_is_a_histogram_bucket() -> None:
    # Then p95 > 5 s means exactly "more than 5 % of the starts took longer than 5 s".
    assert 5 in histogram_buckets("video_playback_quality")


# ------------------------------------------------------------------ runbooks


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a Markdown heading: lower case, punctuation dropped,
    spaces to hyphens."""
    text = unicodedata.normalize("NFKC", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def runbook_anchors() -> list[str]:
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", RUNBOOKS_FILE.read_text(), re.M)
    return [github_anchor(heading) for heading in headings]


def test_every_alert_links_a_runbook_section_that_exists() -> None:
    anchors = runbook_anchors()
    assert len(set(anchors)) == len(anchors), "two runbook sections share an anchor"
    for rule in alert_rules():
        path, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert (ROOT / path).resolve() == RUNBOOKS_FILE.resolve()
        assert anchor in anchors, f"{rule['alert']}: no section #{anchor} in {path}"


def test_every_runbook_alert_section_has_an_alert() -> None:
    # A section for an alert that was renamed or dropped misleads the person on call.
    alerts = {rule["alert"].lower() for rule in alert_rules()}
    documented = {anchor for anchor in runbook_anchors() if anchor.startswith("quip")}
    assert documented == alerts


@pytest.mark.parametrize(
    "section",
    [
        "kafka-is-down",
        "clickhouse-is-down",
        "worker-crash-loop",
        "replaying-the-dlq",
        "user-erasure-request",
        "rolling-back-a-release",
    ],
)
def test_runbook_has_general_section(section: str) -> None:
    assert section in runbook_anchors()


def test_runbook_queries_name_exported_metrics() -> None:
    # A query the person on call copies from a runbook must name a metric that exists.
    text = RUNBOOKS_FILE.read_text()
    known = exported_series()
    named = set(re.findall(r"\b((?:quip|ingest|analytics|consumer|sink|http|api)_[a-z_]+)\b", text))
    metric_like = {name for name in named if not name.startswith("quip_")}
    suffixes = ("", "_total", "_bucket", "_count")
    unknown = {name for name in metric_like if not any(name + end in known for end in suffixes)}
    assert not unknown, f"runbooks name metrics nobody exports: {sorted(unknown)}"


# ------------------------------------------------------------------ kubernetes scraping


def test_kubernetes_scrape_config_gives_the_compose_job_names() -> None:
    config = load_yaml(PROMETHEUS_K8S_FILE)
    assert config["rule_files"] == load_yaml(PROMETHEUS_FILE)["rule_files"]
    (job,) = config["scrape_configs"]
    (discovery,) = job["kubernetes_sd_configs"]
    namespace = load_yaml(K8S_BASE_DIR / "kustomization.yaml")["namespace"]
    assert discovery == {"role": "pod", "namespaces": {"names": [namespace]}}
    relabel = {
        (tuple(step.get("source_labels", [])), step.get("target_label")): step
        for step in job["relabel_configs"]
    }
    component = "__meta_kubernetes_pod_label_app_kubernetes_io_component"
    keep = relabel[((component,), None)]
    assert keep["action"] == "keep"
    port_keep = relabel[(("__meta_kubernetes_pod_container_port_name",), None)]

    deployments = [
        doc
        for path in sorted(K8S_BASE_DIR.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc["kind"] == "Deployment"
    ]
    components = set()
    for deployment in deployments:
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        components.add(labels["app.kubernetes.io/component"])
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            ports = [port["name"] for port in container["ports"]]
            assert any(re.fullmatch(port_keep["regex"], name) for name in ports)
    kept = {name for name in components if re.fullmatch(keep["regex"], name)}
    assert kept == components

    rename = relabel[((component,), "job")]
    jobs = {rename["replacement"].replace("$1", name) for name in components}
    assert jobs == set(scrape_jobs()), "Kubernetes and compose name the jobs differently"
    attached = {target for _, target in relabel if target and target != "job"}
    assert attached == KUBERNETES_TARGET_LABELS


def kubernetes_names() -> dict[str, set[str]]:
    """Label values the cluster exporters give the quip objects, from the manifests."""
    names: dict[str, set[str]] = {"namespace": set(), "container": set()}
    names["horizontalpodautoscaler"] = set()
    names["namespace"].add(load_yaml(K8S_BASE_DIR / "kustomization.yaml")["namespace"])
    for path in sorted(K8S_BASE_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == "Deployment":
                for container in doc["spec"]["template"]["spec"]["containers"]:
                    names["container"].add(container["name"])
            if doc and doc["kind"] == "HorizontalPodAutoscaler":
                names["horizontalpodautoscaler"].add(doc["metadata"]["name"])
    return names


def test_kubernetes_matchers_name_objects_of_the_manifests() -> None:
    names = kubernetes_names()
    matchers = re.compile(r'\b(namespace|container|horizontalpodautoscaler)\s*(=~|=)\s*"([^"]*)"')
    checked = 0
    for rule in alert_rules():
        for label, operator, value in matchers.findall(rule["expr"]):
            if operator == "=" and value == "":
                continue  # `namespace=""`: series scraped outside Kubernetes
            if operator == "=":
                assert value in names[label], (rule["alert"], label, value)
            else:
                # A regex over the containers must match the Deployments' containers.
                assert {n for n in names[label] if re.fullmatch(value, n)} == names[label]
            checked += 1
    assert checked


# ------------------------------------------------------------------ promtool


def test_every_alert_has_a_promtool_case_that_fires_it() -> None:
    cases = load_yaml(ALERTS_TEST_FILE)
    assert cases["rule_files"] == [ALERTS_FILE.name]
    fired = {
        check["alertname"]
        for case in cases["tests"]
        for check in case["alert_rule_test"]
        if check.get("exp_alerts")
    }
    assert fired == {rule["alert"] for rule in alert_rules()}


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["check", "rules", str(ALERTS_FILE)], id="check rules"),
        pytest.param(["check", "config", str(PROMETHEUS_FILE)], id="check compose config"),
        pytest.param(["test", "rules", str(ALERTS_TEST_FILE)], id="unit tests of the rules"),
    ],
)
def test_promtool(argv: list[str]) -> None:
    # deploy/local/install-promtool.sh puts it next to the venv's python; CI runs that script,
    # so there a missing promtool is a failure, not a skip.
    promtool = shutil.which("promtool") or shutil.which(
        "promtool", path=str(Path(sys.executable).parent)
    )
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool missing: run deploy/local/install-promtool.sh")
        pytest.skip("promtool is not installed (deploy/local/install-promtool.sh)")
    result = subprocess.run(
        [promtool, *argv], capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
