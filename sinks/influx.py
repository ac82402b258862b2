"""InfluxDB writer for the processors' 1-minute series (influxdb-client, /api/v2/write:
InfluxDB 2.x, or 1.8+ with bucket = "database[/retention policy]")."""

from __future__ import annotations

from collections.abc import Sequence

from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write.point import Point
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.domain.write_precision import WritePrecision

from common.settings import Settings
from schemas.output import SeriesPoint


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
        if not points:
            return
        records = []
        for point in points:
            record = Point(point.measurement).time(point.time_ms, WritePrecision.MS)
            for name, value in point.tags.items():
                record = record.tag(name, value)
            for name, number in point.fields.items():
                record = record.field(name, number)
            records.append(record)
        self._write.write(bucket=self.bucket, org=self.org, record=records)

    def ping(self) -> bool:
        return bool(self._client.ping())

    def close(self) -> None:
        self._client.close()
