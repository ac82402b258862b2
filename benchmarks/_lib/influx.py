"""InfluxQL statements against InfluxDB 1.8 (drop a benchmark's series)."""

from __future__ import annotations

import urllib.parse
import urllib.request


def influx_query(url: str, query: str) -> None:
    data = urllib.parse.urlencode({"q": query}).encode()
    request = urllib.request.Request(f"{url.rstrip('/')}/query", data=data)  # noqa: S310
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        response.read()
