"""InfluxDB writer for the processors' 1-minute series (influxdb-client, /api/v2/write:
InfluxDB 2.x, or 1.8+ with bucket = "database[/retention policy]")."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import cast

from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.domain.write_precision import WritePrecision

from common.settings import Settings
from schemas.output import SeriesPoint

# The client's precisions are plain strings on a class its signatures name.
_MILLISECONDS = cast(WritePrecision, WritePrecision.MS)


class InfluxWriter:
    """Synchronous writes, called from a worker thread: the caller decides batching and
    retries (a failed write raises, and the whole batch is written again)."""

    def __init__(
        self, url: str, token: str, org: str, bucket: str, timeout_ms: int = 10_000
    ) -> None:
        self.bucket = bucket
        self.org = org
        self._client = InfluxDBClient(url=url, token=token, org=org, timeout=timeout_ms)
        self._write = self._client.write_api(write_options=SYNCHRONOUS)

    @classmethod
    def from_settings(cls, settings: Settings) -> InfluxWriter:
        return cls(
            settings.influx_url,
            settings.influx_token.get_secret_value(),
            settings.influx_org,
            settings.influx_bucket,
        )

    def write(self, points: Sequence[SeriesPoint]) -> None:
        body = line_protocol(points)
        if body:
            self._write.write(
                bucket=self.bucket, org=self.org, record=body, write_precision=_MILLISECONDS
            )

    def ping(self) -> bool:
        return bool(self._client.ping())

    def close(self) -> None:
        self._client.close()



# Line protocol's escapes (influxdb-client's Point, which built these lines before, uses
# the same): measurements escape commas and whitespace, keys and tag values also "=".
_MEASUREMENT_ESCAPES = str.maketrans(
    {",": r"\,", " ": r"\ ", "\n": r"\n", "\t": r"\t", "\r": r"\r"}
)
_KEY_ESCAPES = str.maketrans(
    {",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n", "\t": r"\t", "\r": r"\r"}
)


def line_protocol(points: Sequence[SeriesPoint]) -> bytes:
    """The points as one line-protocol body, times in ms: the lines Point wrote (tags and
    fields sorted by key; empty tags, non-finite floats and points without a field left
    out; whole floats without ".0", integers with "i"), without Point's generic
    conversions, which cost the worker more than building the series did. Names and tag
    values repeat from point to point: each is escaped once (`_tag`, `_key`), and a set
    of field names is sorted once."""
    lines = []
    field_orders: dict[tuple[str, ...], list[tuple[str, str]]] = {}
    for point in points:
        values = point.fields
        names = tuple(values)
        order = field_orders.get(names)
        if order is None:
            order = field_orders[names] = [(name, _key(name)) for name in sorted(names)]
        fields = []
        for name, key in order:
            number = values[name]
            kind = type(number)
            if kind is int or (kind is not bool and isinstance(number, int)):
                fields.append(f"{key}={number}i")
            elif kind is bool:
                fields.append(f"{key}={'true' if number else 'false'}")
            elif math.isfinite(number):
                fields.append(f"{key}={str(number).removesuffix('.0')}")
        if not fields:
            continue
        tag_text = "".join(
            f",{tag}" for name, value in sorted(point.tags.items()) if (tag := _tag(name, value))
        )
        lines.append(
            f"{_measurement(point.measurement)}{tag_text} {','.join(fields)} {point.time_ms}"
        )
    return "\n".join(lines).encode()


@lru_cache(maxsize=1024)
def _measurement(name: str) -> str:
    return name.translate(_MEASUREMENT_ESCAPES)


@lru_cache(maxsize=1024)
def _key(name: str) -> str:
    return name.translate(_KEY_ESCAPES)


@lru_cache(maxsize=65_536)
def _tag(name: str, value: str) -> str:
    """"key=value", or "" for a tag left out (an empty key or value)."""
    key, text = _key(name), value.translate(_KEY_ESCAPES)
    if not key or not text:
        return ""
    # A trailing backslash would escape the separator that follows.
    return f"{key}={text} " if text.endswith("\\") else f"{key}={text}"
