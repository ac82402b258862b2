"""One ClickHouse interface over two engines: a server (native protocol, clickhouse-driver)
and embedded chDB. The same SQL runs on both.

Parameters use clickhouse-driver's client-side `%(name)s` substitution on both engines:
server-side `{name:Type}` parameters do not exist on clickhouse-server 18.16, and escaping
is done by the driver's own `escape_params`, never by pasting strings.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar, Protocol
from urllib.parse import urlparse

import orjson
import pyarrow as pa

# clickhouse-driver builds a table of every Date32 day at import (~20 MB per process)
# unless told to fill it on demand; a value that is not a `start:end` range means "empty".
os.environ.setdefault("CLICKHOUSE_DRIVER_LASY_DATE_LUT", "on-demand")

from clickhouse_driver import Client
from clickhouse_driver.util.escape import escape_params

Row = tuple[Any, ...]
Params = Mapping[str, Any]

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ClickHouseError(RuntimeError):
    """A query failed on either engine; the message carries the engine's own text."""


def check_identifier(name: str) -> str:
    if not _IDENTIFIER.match(name):
        raise ValueError(f"not a plain identifier: {name!r}")
    return name


class ClickHouse(Protocol):
    database: str

    def execute(self, sql: str, params: Params | None = None) -> list[Row]: ...

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> int: ...

    def server_version(self) -> tuple[int, ...]: ...

    def close(self) -> None: ...


def parse_version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


class _VersionCached:
    """`server_version` asked once per instance: version-gated SQL (the playback reads on
    18.16) asks it per query, and an upgrade under a running process keeps the older,
    still valid, form until it restarts."""

    _server_version: tuple[int, ...] | None = None

    def execute(self, sql: str, params: Params | None = None) -> list[Row]:
        raise NotImplementedError

    def server_version(self) -> tuple[int, ...]:
        if self._server_version is None:
            self._server_version = parse_version(str(self.execute("SELECT version()")[0][0]))
        return self._server_version


class ServerClickHouse(_VersionCached):
    """clickhouse-server over the native protocol. Not shared between threads: the driver's
    Client is one connection, so each thread or task owns its own instance."""

    def __init__(self, url: str, *, connect_timeout_s: float = 5.0) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "clickhouse":
            raise ValueError(f"QUIP_CLICKHOUSE_URL must be clickhouse://host:port/db, got {url!r}")
        self.database = check_identifier(parsed.path.lstrip("/") or "default")
        options: dict[str, Any] = {
            "host": parsed.hostname or "127.0.0.1",
            "port": parsed.port or 9000,
            "user": parsed.username or "default",
            "password": parsed.password or "",
            "connect_timeout": connect_timeout_s,
            "settings": {"use_numpy": False},
        }
        bootstrap = Client(database="default", **options)
        try:
            bootstrap.execute(f"CREATE DATABASE IF NOT EXISTS {self.database}")
        except Exception as exc:
            raise ClickHouseError(str(exc)) from exc
        finally:
            bootstrap.disconnect()
        self._client = Client(database=self.database, **options)

    def execute(self, sql: str, params: Params | None = None) -> list[Row]:
        try:
            rows: list[Row] = self._client.execute(sql, dict(params) if params else None)
        except Exception as exc:
            raise ClickHouseError(str(exc)) from exc
        return [tuple(row) for row in rows]

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> int:
        if not rows:
            return 0
        column_list = ", ".join(check_identifier(column) for column in columns)
        try:
            # Columnar: one transposition in C here instead of the driver's per-column
            # Python loop over the rows.
            self._client.execute(
                f"INSERT INTO {check_identifier(table)} ({column_list}) VALUES",
                list(zip(*rows, strict=True)),
                columnar=True,
            )
        except Exception as exc:
            raise ClickHouseError(str(exc)) from exc
        return len(rows)

    def close(self) -> None:
        self._client.disconnect()


# escape_params only consults the context for datetime values, which we pass as epoch
# numbers anyway; UTC keeps it correct if one slips through.
_ESCAPE_CONTEXT = SimpleNamespace(server_info=SimpleNamespace(timezone="UTC"), settings={})


class EmbeddedClickHouse(_VersionCached):
    """chDB bound to one data directory. chDB allows one engine per process, so the session
    is cached per path; its queries are thread-safe."""

    _sessions: ClassVar[dict[Path, Any]] = {}
    _sessions_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, path: Path, database: str = "quip") -> None:
        from chdb import session as chdb_session

        self.path = path.resolve()
        self.database = check_identifier(database)
        with self._sessions_lock:
            if self.path not in self._sessions:
                self.path.mkdir(parents=True, exist_ok=True)
                self._sessions[self.path] = chdb_session.Session(str(self.path))
            self._session = self._sessions[self.path]
        self._query(f"CREATE DATABASE IF NOT EXISTS {self.database}", "CSV")

    def _query(self, sql: str, fmt: str) -> Any:
        try:
            result = self._session.query(sql, fmt)
        except Exception as exc:
            raise ClickHouseError(str(exc)) from exc
        if getattr(result, "has_error", lambda: False)():
            raise ClickHouseError(result.error_message())
        return result

    def execute(self, sql: str, params: Params | None = None) -> list[Row]:
        if params:
            sql = sql % escape_params(dict(params), _ESCAPE_CONTEXT)
        # The session's current database is shared by every caller in the process, so each
        # call names its own in the same (atomic) multi-statement query.
        result = self._query(f"USE {self.database}; {sql}", "ArrowStream")
        data = result.bytes()
        if not data:
            return []
        table = pa.ipc.open_stream(pa.BufferReader(data)).read_all()
        columns = [column.to_pylist() for column in table.columns]
        return list(zip(*columns, strict=True)) if columns else []

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> int:
        if not rows:
            return 0
        names = [check_identifier(column) for column in columns]
        # One JSON array per row, in the column list's order: no object built per row and
        # no key written per value, which made the rows' JSON a large part of quip up's CPU.
        payload = b"\n".join(map(orjson.dumps, rows))
        sql = (
            f"INSERT INTO {self.database}.{check_identifier(table)} ({', '.join(names)}) "
            f"FORMAT JSONCompactEachRow\n{payload.decode()}"
        )
        self._query(sql, "CSV")
        return len(rows)

    def close(self) -> None:
        """The engine lives for the process (chDB cannot reopen a path); nothing to release."""
