"""What the connected ClickHouse can do, decided from its version, so one migration text
serves chDB (26.x), Debian's clickhouse-server 18.16 and current servers."""

from __future__ import annotations

from dataclasses import dataclass

TTL_SINCE = (19, 6)
LIGHTWEIGHT_DELETE_SINCE = (22, 8)


@dataclass(frozen=True, slots=True)
class Capabilities:
    version: tuple[int, ...]

    @property
    def supports_ttl(self) -> bool:
        return self.version[:2] >= TTL_SINCE

    @property
    def supports_lightweight_delete(self) -> bool:
        return self.version[:2] >= LIGHTWEIGHT_DELETE_SINCE

    def ttl(self, expression: str) -> str:
        """A `TTL <expression>` table clause, or nothing where the server predates TTL
        (retention there is dropping old partitions by hand)."""
        return f"TTL {expression}" if self.supports_ttl else ""
