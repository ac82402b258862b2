"""The worker's line protocol (sinks/influx.py) is the one influxdb-client's Point writes:
the same bytes for escapes, empty tags, whole and non-finite floats, integers and
booleans, and points left without a field are left out."""

from __future__ import annotations

import random

from influxdb_client.client.write.point import Point
from influxdb_client.domain.write_precision import WritePrecision

from schemas.output import SeriesPoint
from sinks.influx import line_protocol

AWKWARD = ["plain", "with space", "a,comma", "an=equals", "tab\there", "new\nline", "end\\", "é"]
AWKWARD += [""]


def point_lines(points: list[SeriesPoint]) -> bytes:
    lines = []
    for point in points:
        record = Point(point.measurement).time(point.time_ms, WritePrecision.MS)
        for name, value in point.tags.items():
            record = record.tag(name, value)
        for name, number in point.fields.items():
            record = record.field(name, number)
        line = record.to_line_protocol()
        if line:
            lines.append(line)
    return "\n".join(lines).encode()


def test_lines_equal_the_clients_points() -> None:
    rng = random.Random(16)
    numbers: list[float | int] = [0, 7, -3, 2.0, 0.1, 1e16, -2.5e-7, float("nan"), float("inf")]
    numbers += [True, False]
    points = [
        SeriesPoint(
            rng.choice(["video_qoe", "a measurement", "m,1"]),
            {rng.choice(AWKWARD) or "k": rng.choice(AWKWARD) for _ in range(rng.randrange(4))},
            {rng.choice(AWKWARD) or "f": rng.choice(numbers) for _ in range(rng.randrange(4))},
            1_700_000_000_000 + rng.randrange(10**9),
        )
        for _ in range(500)
    ]
    expected = point_lines(points)
    assert expected.count(b"\n") > 100  # most points have a field to write
    assert line_protocol(points) == expected


def test_no_points_no_body() -> None:
    assert line_protocol([]) == b""
    assert line_protocol([SeriesPoint("m", {"a": "b"}, {"x": float("nan")}, 1)]) == b""


def test_points_sharing_a_tag_set_or_field_names_in_another_order() -> None:
    """The plays processor's QoE and viewers points of a key share one tags dict; field
    dicts with the same names come in any order."""
    rng = random.Random(17)
    points: list[SeriesPoint] = []
    for _ in range(300):
        names = rng.sample(["b", "a", "c d", "e=f"], rng.randrange(1, 4))
        fields = {name: rng.choice([1, 2.5, float("inf"), True]) for name in names}
        tags = (
            points[-1].tags
            if points and rng.random() < 0.5
            else {rng.choice(AWKWARD) or "k": rng.choice(AWKWARD) for _ in range(3)}
        )
        points.append(SeriesPoint(rng.choice(["qoe", "viewers"]), tags, fields, rng.randrange(9)))
    assert len({id(point.tags) for point in points}) < 200
    assert line_protocol(points) == point_lines(points)
