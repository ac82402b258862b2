"""The query API's Prometheus metrics (SPEC §7 names where the spec names them), defined
once. HTTP request metrics come from common/ops.py like every process."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CACHE_HIT_RATIO = Gauge(
    "cache_hit_ratio",
    "Share of query-API result lookups answered from the in-process cache since start",
    # One series per live worker process; api_cache_lookups_total gives the overall ratio.
    multiprocess_mode="liveall",
)
CACHE_LOOKUPS = Counter(
    "api_cache_lookups",
    "Query-API result cache lookups, by result (hit, stale or miss)",
    ["result"],
)
QUERY_DURATION = Histogram(
    "api_query_duration_seconds",
    "ClickHouse time of query-API cache misses, by endpoint",
    ["endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
