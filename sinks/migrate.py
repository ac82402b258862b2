"""Apply the numbered migrations in `sinks/migrations/` to one ClickHouse, in order, once.

Applied versions are recorded in `schema_migrations`. Migrations are forward-only and every
statement is idempotent (`IF NOT EXISTS`), so a run interrupted between a statement and its
record is safe to repeat. A migration whose steps depend on what the database holds (moving
a table's rows) also exposes `apply(clickhouse, caps)`, run after its statements; it must
be just as safe to repeat. Two processes migrating at once is not guarded against: run
`quip migrate` once per deploy (compose and k8s run it as a one-shot job).
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Callable
from dataclasses import dataclass

import sinks.migrations
from sinks.capabilities import Capabilities
from sinks.clickhouse import ClickHouse

_MODULE_NAME = re.compile(r"^v(\d{4})_(\w+)$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    statements: Callable[[Capabilities], list[str]]
    apply: Callable[[ClickHouse, Capabilities], None] | None = None


def discover() -> list[Migration]:
    found = []
    for module in pkgutil.iter_modules(sinks.migrations.__path__):
        match = _MODULE_NAME.match(module.name)
        if not match:
            continue
        loaded = importlib.import_module(f"sinks.migrations.{module.name}")
        found.append(
            Migration(int(match[1]), match[2], loaded.statements, getattr(loaded, "apply", None))
        )
    found.sort(key=lambda migration: migration.version)
    versions = [migration.version for migration in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a version number: {versions}")
    return found


def applied_versions(clickhouse: ClickHouse) -> set[int]:
    clickhouse.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version UInt32, name String, applied_at DateTime('UTC')) "
        "ENGINE = MergeTree() ORDER BY version"
    )
    return {int(row[0]) for row in clickhouse.execute("SELECT version FROM schema_migrations")}


def migrate(clickhouse: ClickHouse, up_to: int | None = None) -> list[Migration]:
    """Apply pending migrations (those numbered at most `up_to` when given: tests of a
    migration start from the schema before it); return the ones applied by this call."""
    caps = Capabilities(clickhouse.server_version())
    done = applied_versions(clickhouse)
    applied = []
    for migration in discover():
        if migration.version in done or (up_to is not None and migration.version > up_to):
            continue
        for statement in migration.statements(caps):
            clickhouse.execute(statement)
        if migration.apply is not None:
            migration.apply(clickhouse, caps)
        clickhouse.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) "
            "SELECT %(version)s, %(name)s, now()",
            {"version": migration.version, "name": migration.name},
        )
        applied.append(migration)
    return applied
