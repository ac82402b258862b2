"""The one typed settings object. Every knob comes from a `QUIP_*` environment variable.

CLI flags override by passing keyword arguments to `Settings(...)`. Keys are kept as
`SecretStr` so they never show up in a repr or a log line.
"""

from __future__ import annotations

import secrets
from enum import StrEnum
from pathlib import Path
from typing import Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Mode(StrEnum):
    EMBEDDED = "embedded"
    CLUSTER = "cluster"


class KeyParseError(ValueError):
    pass


def parse_keys(spec: str) -> dict[str, str]:
    """Parse `project:key,project2:key2` into {key: project}.

    A key names exactly one project; the same project may own several keys.
    """
    keys: dict[str, str] = {}
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
        project, sep, key = item.partition(":")
        if not sep or not project.strip() or not key.strip():
            raise KeyParseError(
                f"key entry {item.split(':')[0]!r}... is not of the form project:key"
            )
        if key.strip() in keys:
            raise KeyParseError(
                f"a key is listed twice (projects {keys[key.strip()]!r}, {project!r})"
            )
        keys[key.strip()] = project.strip()
    return keys


DEV_KEY_PREFIX = "dev_"


def generate_dev_keys(project: str = "default") -> str:
    return f"{project}:{DEV_KEY_PREFIX}{secrets.token_urlsafe(18)}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QUIP_", extra="ignore")

    mode: Mode = Mode.EMBEDDED

    write_keys: SecretStr = SecretStr("")
    read_keys: SecretStr = SecretStr("")
    admin_keys: SecretStr = SecretStr("")

    host: str = "127.0.0.1"
    port: int | None = Field(default=None, ge=1, le=65535)
    data_dir: Path = Path("./.quip")

    kafka_bootstrap: str = "127.0.0.1:9092"
    clickhouse_url: str = "clickhouse://127.0.0.1:9000/quip"

    influx_url: str = "http://127.0.0.1:8086"
    influx_token: SecretStr = SecretStr("-")
    influx_org: str = "quip"
    influx_bucket: str = "quip"

    max_event_age_days: int = Field(default=30, ge=1)
    rate_limit_ip_per_min: int = Field(default=1000, ge=0)
    rate_limit_key_per_min: int = Field(default=0, ge=0)
    # Ingest requests one process works on at once; one more is answered 503 with
    # Retry-After before its body is read (load shedding, ingest/admission.py), so admitted
    # requests keep their latency instead of queueing behind all the others: about this
    # many divided by the process's requests/s. 0 = no bound.
    ingest_max_in_flight: int = Field(default=64, ge=0)
    funnels_file: Path | None = None
    # Kafka consumer group of `quip worker`'s events consumer (one group per deployment);
    # its services pipeline uses `<worker_group>-services` (streams/backends/kafka/source.py).
    worker_group: str = "quip-worker"
    # The longest time between two polls of the events consumer before the group drops the
    # worker. The consumer keeps polling (partitions paused) while a store is down, so this
    # bounds a processing stall, not an outage.
    worker_max_poll_interval_ms: int = Field(default=300_000, ge=1_000)
    play_idle_timeout_s: int = Field(default=300, ge=1)
    # `quip up`: the bus log rolls to a new segment past this size; processed ones are deleted.
    bus_segment_mb: int = Field(default=64, ge=1)
    cors_origins: str = ""

    @model_validator(mode="after")
    def _check_keys_parse(self) -> Self:
        for field in ("write_keys", "read_keys", "admin_keys"):
            secret: SecretStr = getattr(self, field)
            try:
                parse_keys(secret.get_secret_value())
            except KeyParseError as exc:
                raise ValueError(f"QUIP_{field.upper()}: {exc}") from exc
        return self

    @model_validator(mode="after")
    def _refuse_laptop_defaults_in_cluster(self) -> Self:
        if self.mode is not Mode.CLUSTER:
            return self
        problems = []
        for field in ("write_keys", "read_keys", "admin_keys"):
            value = getattr(self, field).get_secret_value()
            if any(key.startswith(DEV_KEY_PREFIX) for key in parse_keys(value)):
                problems.append(f"QUIP_{field.upper()} holds an embedded dev key (dev_...)")
        if "*" in self.cors_origin_list:
            problems.append("QUIP_CORS_ORIGINS='*' is refused in cluster mode; list the origins")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def require_keys(self, *fields: str) -> None:
        """Cluster processes that authenticate callers must be given their keys; embedded
        mode generates dev keys instead (see `quip up`)."""
        if self.mode is not Mode.CLUSTER:
            return
        missing = [
            f"QUIP_{field.upper()}"
            for field in fields
            if not parse_keys(getattr(self, field).get_secret_value())
        ]
        if missing:
            raise ValueError(f"{', '.join(missing)} required in cluster mode")

    @property
    def write_key_projects(self) -> dict[str, str]:
        return parse_keys(self.write_keys.get_secret_value())

    @property
    def read_key_projects(self) -> dict[str, str]:
        return parse_keys(self.read_keys.get_secret_value())

    @property
    def admin_key_projects(self) -> dict[str, str]:
        return parse_keys(self.admin_keys.get_secret_value())

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    def listen_port(self, default: int) -> int:
        return self.port if self.port is not None else default
