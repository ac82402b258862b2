"""What the connected ClickHouse can do, decided from its version, so one migration text
serves chDB (26.x), Debian's clickhouse-server 18.16 and current servers."""

from __future__ import annotations

from dataclasses import dataclass

TTL_SINCE = (19, 6)
LIGHTWEIGHT_DELETE_SINCE = (22, 8)
# Measured on 18.16 (one FINAL per partition cheaper) and 26.x (dearer) only.
FINAL_PER_PARTITION_BEFORE = (19, 0)


@dataclass(frozen=True, slots=True)
class Capabilities:
    version: tuple[int, ...]

    @property
    def supports_ttl(self) -> bool:
        return self.version[:2] >= TTL_SINCE

    @property
    def supports_lightweight_delete(self) -> bool:
        return self.version[:2] >= LIGHTWEIGHT_DELETE_SINCE

    @property
    def final_per_partition(self) -> bool:
        """Whether reading each partition through its own FINAL (`UNION ALL`) costs less
        than one FINAL over them all: 18.x merges the parts of every partition in one
        stream."""
        return self.version[:2] < FINAL_PER_PARTITION_BEFORE

    def ttl(self, expression: str) -> str:
        """A `TTL <expression>` table clause, or nothing where the server predates TTL
        (retention there is dropping old partitions by hand)."""
        return f"TTL {expression}" if self.supports_ttl else ""
