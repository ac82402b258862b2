"""influxdb-client writes points through /api/v2/write and reads them back with Flux."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from influxdb_client import InfluxDBClient, Point, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS

from tests.conftest import INFLUX_URL

pytestmark = pytest.mark.influxdb

# InfluxDB 1.8's v2 compatibility API: bucket is "database[/retention policy]", the token
# "user:password" (auth is off locally), the org is ignored. Database `quip` is created by
# services.sh; InfluxDB 2.x (compose) accepts the same calls with a real token and org.
BUCKET = "quip"


@pytest.fixture
def influx() -> Iterator[InfluxDBClient]:
    with InfluxDBClient(url=INFLUX_URL, token="-:-", org="-") as client:
        yield client


def test_points_written_are_read_back(influx: InfluxDBClient, unique_name: str) -> None:
    now_ns = time.time_ns()
    points = [
        Point(unique_name)
        .tag("content_id", f"c{i % 2}")
        .field("plays", i + 1)
        .field("startup_ms_p95", 100.5 * (i + 1))
        .time(now_ns - (5 - i) * 60_000_000_000, WritePrecision.NS)
        for i in range(5)
    ]
    influx.write_api(write_options=SYNCHRONOUS).write(bucket=BUCKET, record=points)

    tables = influx.query_api().query(
        f'from(bucket: "{BUCKET}") |> range(start: -1h) '
        f'|> filter(fn: (r) => r._measurement == "{unique_name}" and r._field == "plays")'
    )
    by_content: dict[str, list[int]] = {}
    for table in tables:
        for record in table.records:
            by_content.setdefault(record.values["content_id"], []).append(int(record.get_value()))
    assert by_content == {"c0": [1, 3, 5], "c1": [2, 4]}


def test_write_to_unknown_database_is_an_error(influx: InfluxDBClient, unique_name: str) -> None:
    from influxdb_client.rest import ApiException

    with pytest.raises(ApiException) as raised:
        influx.write_api(write_options=SYNCHRONOUS).write(
            bucket=f"missing_{unique_name}", record=Point("m").field("v", 1)
        )
    assert raised.value.status == 404
