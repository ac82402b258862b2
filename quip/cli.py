"""The `quip` command. Every option also reads from its `QUIP_*` variable (SPEC §7)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

import click
from pydantic import ValidationError

from common.settings import Mode, Settings


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with CLI flags that were given taking precedence."""
    given = {name: value for name, value in overrides.items() if value is not None}
    try:
        return Settings(**given)  # type: ignore[arg-type]
    except ValidationError as exc:
        messages = "; ".join(str(error["msg"]) for error in exc.errors())
        raise click.UsageError(f"invalid settings: {messages}") from exc


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="quip-pipeline")
def main() -> None:
    """Qui Pipeline: VR telemetry analytics (ingest, streams, ClickHouse, query API)."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # The driver logs every refused connection with a traceback; the command reports the
    # failure itself in one line.
    logging.getLogger("clickhouse_driver").setLevel(logging.ERROR)


@main.command()
@click.option("--host", default=None, help="listen address [QUIP_HOST, 127.0.0.1]")
@click.option("--port", type=int, default=None, help="listen port [QUIP_PORT, 8000]")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="[QUIP_DATA_DIR]")
def up(host: str | None, port: int | None, data_dir: Path | None) -> None:
    """Run the whole pipeline in one process (embedded: chDB, in-process bus)."""
    from quip.embedded.app import announce
    from quip.startup import uses_line

    settings = load_settings(host=host, port=port, data_dir=data_dir)
    if settings.mode is Mode.CLUSTER:
        raise click.UsageError("quip up is the embedded mode; unset QUIP_MODE=cluster")
    listen_port = settings.listen_port(8000)
    os.environ["QUIP_DATA_DIR"] = str(settings.data_dir)
    # Laptop default: no per-IP limit unless one is set. SPEC §7's 1000 requests/min would
    # hold `quip simulate` (one request per headset session) to ~17 requests/s here.
    os.environ.setdefault("QUIP_RATE_LIMIT_IP_PER_MIN", "0")
    click.echo(uses_line("up", settings, embedded_store=True), err=True)
    click.echo(announce(settings, listen_port))
    serve("quip.embedded.app:embedded_factory", settings, listen_port, workers=1)


@main.command()
@click.option("--host", default=None, help="listen address [QUIP_HOST, 127.0.0.1]")
@click.option("--port", type=int, default=None, help="listen port [QUIP_PORT, 8080]")
@click.option("--workers", type=int, default=1, show_default=True, help="uvicorn workers")
def gateway(host: str | None, port: int | None, workers: int) -> None:
    """Ingest gateway: validate event batches and produce them to Kafka."""
    from quip.startup import uses_line

    settings = load_settings(host=host, port=port)
    try:
        settings.require_keys("write_keys")
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    if not settings.write_key_projects:
        raise click.UsageError("set QUIP_WRITE_KEYS=project:key[,...] (the gateway has no keys)")
    click.echo(uses_line("gateway", settings, embedded_store=False), err=True)
    serve("ingest.app:create_app", settings, settings.listen_port(8080), workers)


def serve(factory: str, settings: Settings, port: int, workers: int) -> None:
    """Run an app factory under uvicorn. Worker processes re-read settings from the
    environment, so flags are exported there first; several workers share Prometheus
    metrics through a multiprocess directory."""
    import os
    import tempfile

    import uvicorn

    os.environ["QUIP_HOST"] = settings.host
    os.environ["QUIP_PORT"] = str(port)
    if workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="quip-metrics-")
    uvicorn.run(
        factory,
        factory=True,
        host=settings.host,
        port=port,
        workers=workers,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=10,
    )


@main.command()
@click.option("--host", default=None, help="web bind address [QUIP_HOST, 127.0.0.1]")
@click.option("--port", type=int, default=None, help="web port for /health /ready /metrics [6066]")
def worker(host: str | None, port: int | None) -> None:
    """Faust worker: the events and services pipelines from Kafka into ClickHouse and InfluxDB.

    Run `quip migrate --engine server` and `quip topics create` first."""
    import faust

    from quip.startup import uses_line
    from streams.app import create_worker_app

    settings = load_settings(host=host, port=port)
    click.echo(uses_line("worker", settings, embedded_store=False), err=True)
    app, _ = create_worker_app(settings)
    faust.Worker(app, loglevel="info").execute_from_commandline()


@main.command()
@click.option("--host", default=None, help="listen address [QUIP_HOST, 127.0.0.1]")
@click.option("--port", type=int, default=None, help="listen port [QUIP_PORT, 8000]")
@click.option("--workers", type=int, default=1, show_default=True, help="uvicorn workers")
def api(host: str | None, port: int | None, workers: int) -> None:
    """Query API and dashboard (ClickHouse server in cluster mode, chDB when embedded).

    Cluster mode requires QUIP_READ_KEYS and QUIP_ADMIN_KEYS. Embedded mode generates
    and prints dev keys for the ones not set, and runs one worker (chDB binds its data
    directory to one process). Embedded mode is refused when it looks meant for the
    cluster (QUIP_CLICKHOUSE_URL or QUIP_KAFKA_BOOTSTRAP set, or an empty chDB beside a
    server with the quip schema: quip/startup.py)."""
    import os

    from common.settings import generate_dev_keys
    from quip.startup import refuse_embedded_mismatch, uses_line
    from schemas.funnels import FunnelConfigError, load_funnels

    settings = load_settings(host=host, port=port)
    try:
        settings.require_keys("read_keys", "admin_keys")
        refuse_embedded_mismatch("api", settings)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    click.echo(uses_line("api", settings, embedded_store=settings.mode is Mode.EMBEDDED), err=True)
    if settings.mode is Mode.EMBEDDED:
        if workers != 1:
            raise click.UsageError("embedded mode (chDB) runs one worker; use --workers 1")
        for field in ("read_keys", "admin_keys"):
            if not getattr(settings, field).get_secret_value():
                keys = generate_dev_keys()
                os.environ[f"QUIP_{field.upper()}"] = keys  # read again by the app factory
                click.echo(f"QUIP_{field.upper()}={keys}  (generated for this run)", err=True)
    if settings.funnels_file:
        try:
            load_funnels(settings.funnels_file)
        except FunnelConfigError as exc:
            raise click.UsageError(f"QUIP_FUNNELS_FILE: {exc}") from exc
    serve("api.app:create_app", settings, settings.listen_port(8000), workers)


@main.command()
@click.option(
    "--engine",
    type=click.Choice(["server", "chdb"]),
    default=None,
    help="where to migrate: the ClickHouse server of QUIP_CLICKHOUSE_URL, or embedded chDB "
    "under QUIP_DATA_DIR [default: chdb in embedded mode, server in cluster mode; without "
    "it, an embedded run that looks meant for the cluster is refused]",
)
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="[QUIP_DATA_DIR]")
def migrate(engine: str | None, data_dir: Path | None) -> None:
    """Apply pending ClickHouse migrations (idempotent)."""
    from quip.startup import ModeMismatch, refuse_embedded_mismatch, uses_line
    from sinks.clickhouse import ClickHouse, ClickHouseError
    from sinks.engines import open_clickhouse
    from sinks.migrate import migrate as run_migrations

    settings = load_settings(data_dir=data_dir)
    if engine is None:
        try:
            refuse_embedded_mismatch("migrate", settings)
        except ModeMismatch as exc:
            raise click.UsageError(str(exc)) from exc
    chosen = engine or ("server" if settings.mode is Mode.CLUSTER else "chdb")
    click.echo(uses_line("migrate", settings, embedded_store=chosen == "chdb"), err=True)
    try:
        clickhouse: ClickHouse = open_clickhouse(settings, embedded=chosen == "chdb")
        applied = run_migrations(clickhouse)
    except (ClickHouseError, OSError) as exc:
        raise click.ClickException(f"migration failed on {chosen}: {exc}") from exc
    names = ", ".join(f"{m.version:04d}_{m.name}" for m in applied) or "nothing pending"
    click.echo(f"migrated {chosen} ({clickhouse.database}): {names}")


@main.group()
def topics() -> None:
    """Kafka topics of the registry (schemas/topics.py)."""


@topics.command("create")
@click.option("--bootstrap", default=None, help="[QUIP_KAFKA_BOOTSTRAP]")
@click.option("--replication-factor", type=int, default=1, show_default=True)
def topics_create(bootstrap: str | None, replication_factor: int) -> None:
    """Create missing topics and reconcile partitions/retention (idempotent)."""
    from quip.topics import apply_topics

    settings = load_settings(kafka_bootstrap=bootstrap)
    try:
        report = asyncio.run(
            apply_topics(settings.kafka_bootstrap, replication_factor=replication_factor)
        )
    except Exception as exc:
        raise click.ClickException(
            f"could not apply topics to {settings.kafka_bootstrap}: {exc}"
        ) from exc
    for label, names in (
        ("created", report.created),
        ("updated", report.updated),
        ("unchanged", report.unchanged),
    ):
        if names:
            click.echo(f"{label}: {', '.join(names)}")
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)


@main.command()
@click.option(
    "--users", type=click.IntRange(min=1), default=1000, show_default=True, help="simulated users"
)
@click.option(
    "--days",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="historical mode: backfill this many days ending now (at most QUIP_MAX_EVENT_AGE_DAYS)",
)
@click.option(
    "--url",
    default="http://127.0.0.1:8000",
    show_default=True,
    help="gateway base URL; events go to <url>/v1/events",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="live mode: this many events per second with ts = now [default: historical mode]",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="live mode: stop after this many seconds [until Ctrl-C]",
)
@click.option("--seed", type=int, default=None, help="same seed, same traffic [random, printed]")
@click.option("--key", default=None, help="write key [the first key of QUIP_WRITE_KEYS]")
@click.option(
    "--kafka-bootstrap",
    default=None,
    help="publish the service messages (social, CMS, video, e-mail) to this Kafka"
    " [over HTTP to --url: quip up's /v1/services]",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 1024),
    default=64,
    show_default=True,
    help="concurrent keep-alive connections (a user's requests are always sent in order)",
)
@click.option(
    "--end",
    default=None,
    help="historical mode: end of the window, ISO-8601 (UTC if no offset) or epoch ms; "
    "with --seed, the same events on every run [now]",
)
@click.option(
    "--flush-interval",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="headset SDK flush interval, seconds [historical: 120 of event time; live: 2]",
)
@click.option(
    "--retry-for",
    type=click.FloatRange(min=0),
    default=300.0,
    show_default=True,
    help="seconds to keep retrying a batch (429, 5xx, network errors); then the run is "
    "aborted and what was not sent is counted as failed",
)
@click.option("--gzip/--no-gzip", "use_gzip", default=False, help="gzip request bodies")
@click.option(
    "--sent-at/--no-sent-at",
    default=True,
    show_default=True,
    help="stamp requests with sent_at (the gateway corrects clock skew with it, which also "
    "shifts each ts by the request's latency); --no-sent-at stores ts exactly as --record has it",
)
@click.option("--progress/--no-progress", default=True, help="progress bar on stderr")
@click.option(
    "--json-summary",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="also write the summary there as JSON",
)
@click.option(
    "--record",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="write every accepted event there (JSON lines, native events with their context)",
)
def simulate(
    users: int,
    days: int,
    url: str,
    rate: float | None,
    duration: float | None,
    seed: int | None,
    key: str | None,
    kafka_bootstrap: str | None,
    concurrency: int,
    end: str | None,
    flush_interval: float | None,
    retry_for: float,
    use_gzip: bool,
    sent_at: bool,
    progress: bool,
    json_summary: Path | None,
    record: Path | None,
) -> None:
    """Send realistic VR traffic to a gateway.

    Historical mode (default) backfills --days days ending now as fast as the gateway
    takes it; live mode (--rate) sends events with ts = now at that rate. The same --seed
    and --end send the same events (same event_ids: the pipeline counts a re-run once).
    Exits 1 at once if nothing listens at --url, 1 if a batch failed or the run was aborted
    (bad key, gateway refusing batches for --retry-for seconds; the first failure is printed
    when it happens), 130 if a historical run was interrupted (Ctrl-C)."""
    import secrets
    import time
    from datetime import UTC, datetime

    from rich.console import Console

    from quip import simulate as sim

    settings = load_settings()
    keys = settings.write_key_projects
    if key is None:
        if not keys:
            raise click.UsageError("no write key: pass --key or set QUIP_WRITE_KEYS=project:key")
        key = next(iter(keys))
    project = keys.get(key, "default")
    if seed is None:
        seed = secrets.randbelow(2**31)
    if rate is None and duration is not None:
        raise click.UsageError("--duration is for live mode (--rate)")
    if rate is not None and end is not None:
        raise click.UsageError("--end is for historical mode (without --rate)")
    now = int(time.time() * 1000)
    end_ms = now
    if end is not None:
        try:
            end_ms = int(end)
        except ValueError:
            try:
                parsed = datetime.fromisoformat(end)
            except ValueError:
                raise click.BadParameter(
                    "expected ISO-8601 or epoch milliseconds", param_hint="--end"
                ) from None
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            end_ms = int(parsed.timestamp() * 1000)
    options = sim.SendOptions(
        url=url,
        key=key,
        project=project,
        concurrency=concurrency,
        retry_for_s=retry_for,
        gzip=use_gzip,
        sent_at=sent_at,
        record=record,
        kafka_bootstrap=kafka_bootstrap,
        progress=progress,
    )
    stderr = Console(stderr=True)
    try:
        if rate is None:
            plan = sim.Historical(
                seed=seed,
                users=users,
                days=days,
                end_ms=end_ms,
                now_ms=now,
                max_age_days=settings.max_event_age_days,
                flush_ms=int((flush_interval or sim.HISTORICAL_FLUSH_MS / 1000) * 1000),
                project=project,
            )
            summary = asyncio.run(sim.run_historical(plan, options, console=stderr))
        else:
            live = sim.Live(
                seed=seed,
                users=users,
                rate=rate,
                start_ms=now,
                project=project,
            )
            summary = asyncio.run(
                sim.run_live(
                    live,
                    options,
                    duration_s=duration,
                    flush_s=flush_interval or sim.LIVE_FLUSH_S,
                    console=stderr,
                )
            )
    except sim.SimulationError as exc:
        raise click.UsageError(str(exc)) from exc
    except sim.GatewayUnreachable as exc:
        raise click.ClickException(str(exc)) from exc
    Console().print(summary.table())
    if json_summary is not None:
        sim.write_json_summary(summary, json_summary)
    if summary.aborted:
        raise click.ClickException(summary.aborted)
    if not summary.ok:
        raise click.ClickException(
            f"{summary.batches_failed} batches ({summary.events_failed} events) and "
            f"{summary.services_failed} service messages failed; see the summary"
        )
    if summary.interrupted and rate is None:
        sys.exit(130)
