"""What a process says it uses when it starts, and the mode mismatches it refuses.

Every command that serves or writes data (`up`, `gateway`, `worker`, `api`, `migrate`)
prints one line naming its mode and the stores it will touch, so a process wired to the
wrong ones shows it in its first line of output.

`quip api` and `quip migrate` pick their ClickHouse engine from the mode: chDB under
QUIP_DATA_DIR when embedded (the default), the server of QUIP_CLICKHOUSE_URL in cluster
mode. Started without QUIP_MODE=cluster beside a running cluster, they would silently serve
or migrate an empty chDB. Two detections, both cheap and with an explicit way past them:

- **Cluster variables given**: QUIP_CLICKHOUSE_URL or QUIP_KAFKA_BOOTSTRAP set in the
  environment of an embedded `api` or `migrate` (without `--engine`). Embedded mode reads
  neither, so setting one says the caller expects the cluster. No I/O.
- **Cluster data beside an empty embedded store**: the chDB directory is missing or empty
  and a ClickHouse server answers on the default QUIP_CLICKHOUSE_URL
  (clickhouse://127.0.0.1:9000/quip; one set explicitly is the first detection) within a
  second, with `schema_migrations` in its database (a migrated quip schema). One loopback
  connection, refused at once when no server runs; made only while the embedded store is
  empty, i.e. on a first start.

Ways past them: `quip migrate --engine chdb|server` is explicit and never refused;
`quip migrate --engine chdb` first gives the embedded store data, after which `quip api`
serves it; QUIP_MODE=cluster serves or migrates the server.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from common.settings import Mode, Settings

# Imported before clickhouse_driver (the probe below): sinks.clickhouse sets the driver's
# lazy date table first, which saves every process ~20 MB.
from sinks.engines import chdb_path

Command = Literal["up", "gateway", "worker", "api", "migrate"]

# Explicitly given, these say "the cluster" to a process that would otherwise use chDB.
CLUSTER_VARIABLES = {
    "clickhouse_url": "QUIP_CLICKHOUSE_URL",
    "kafka_bootstrap": "QUIP_KAFKA_BOOTSTRAP",
}


class ModeMismatch(ValueError):
    """The command would use the embedded store while the settings or the machine point at
    a cluster; the message says how to choose."""


def redacted_url(url: str) -> str:
    """The URL without its password (QUIP_CLICKHOUSE_URL may carry one)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def uses_line(command: Command, settings: Settings, *, embedded_store: bool) -> str:
    """One line: the mode, then the ClickHouse engine (server URL or chDB directory) and
    the bus (Kafka bootstrap or the local log) the command will use."""
    clickhouse = (
        f"ClickHouse chDB at {chdb_path(settings).resolve()}"
        if embedded_store
        else f"ClickHouse server {redacted_url(settings.clickhouse_url)}"
    )
    kafka = f"Kafka {settings.kafka_bootstrap}"
    parts: list[str] = [f"mode {settings.mode.value}"]
    if command == "up":
        parts += [clickhouse, f"bus local log at {(settings.data_dir / 'bus').resolve()}"]
    elif command == "gateway":
        parts += [kafka]
    elif command == "worker":
        parts += [clickhouse, kafka, f"InfluxDB {settings.influx_url} ({settings.influx_bucket})"]
    elif command == "api":
        # Erasures go on the bus so workers forget the user; embedded `api` has none.
        parts += [clickhouse, kafka if not embedded_store else "no bus (erasures delete rows)"]
    else:
        parts += [clickhouse]
    return f"quip {command}: " + " · ".join(parts)


def explicit_cluster_variables(settings: Settings) -> list[str]:
    return [name for field, name in CLUSTER_VARIABLES.items() if field in settings.model_fields_set]


def embedded_store_is_empty(settings: Settings) -> bool:
    path = chdb_path(settings)
    return not path.is_dir() or not any(path.iterdir())


def server_has_quip_schema(url: str, timeout_s: float = 1.0) -> bool:
    """Whether a ClickHouse server answers at `url` within `timeout_s` with a migrated quip
    schema in the URL's database. Any failure (nothing listening, bad credentials) is "no":
    the probe only ever adds a refusal, never a start-up error of its own."""
    from clickhouse_driver import Client

    parts = urlsplit(url)
    database = parts.path.lstrip("/") or "default"
    client = Client(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 9000,
        user=parts.username or "default",
        password=parts.password or "",
        database="default",
        connect_timeout=timeout_s,
        send_receive_timeout=timeout_s,
        sync_request_timeout=timeout_s,
    )
    try:
        rows = client.execute(
            "SELECT count() FROM system.tables "
            "WHERE database = %(database)s AND name = 'schema_migrations'",
            {"database": database},
        )
    except Exception:
        return False
    finally:
        client.disconnect()
    return bool(rows and rows[0][0])


ChDBCommand = Literal["api", "migrate"]


def _choose(command: ChDBCommand) -> str:
    if command == "api":
        return (
            "set QUIP_MODE=cluster (with QUIP_READ_KEYS and QUIP_ADMIN_KEYS) to serve the "
            "ClickHouse server"
        )
    return (
        "pass --engine server (or set QUIP_MODE=cluster) to migrate the ClickHouse server, "
        "or --engine chdb for the embedded store"
    )


def refuse_embedded_mismatch(command: ChDBCommand, settings: Settings) -> None:
    """Raise ModeMismatch when an embedded `api` or `migrate` (engine not chosen) looks
    meant for the cluster (the module docstring's two detections, cheapest first)."""
    if settings.mode is not Mode.EMBEDDED:
        return
    given = explicit_cluster_variables(settings)
    if given:
        raise ModeMismatch(
            f"{' and '.join(given)} {'is' if len(given) == 1 else 'are'} set but QUIP_MODE is "
            f"embedded, so quip {command} would use chDB under {settings.data_dir} and not "
            f"the cluster: {_choose(command)}; or unset {' and '.join(given)} to use chDB"
        )
    refuse_empty_store_beside_cluster(command, settings)


def refuse_empty_store_beside_cluster(command: ChDBCommand, settings: Settings) -> None:
    """The second detection alone: an empty chDB store while the configured server has a
    migrated quip schema."""
    if embedded_store_is_empty(settings) and server_has_quip_schema(settings.clickhouse_url):
        empty_store = (
            "run `quip migrate --engine chdb` first to start an empty embedded store"
            if command == "api"
            else ""
        )
        raise ModeMismatch(
            f"the embedded store under {settings.data_dir} is empty while the ClickHouse "
            f"server at {redacted_url(settings.clickhouse_url)} has a quip schema, so quip "
            f"{command} would use an empty chDB in QUIP_MODE=embedded: {_choose(command)}"
            + (f"; or {empty_store}" if empty_store else "")
        )
