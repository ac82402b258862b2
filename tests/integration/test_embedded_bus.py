"""The embedded bus on a real directory: segments roll over, compaction deletes only what
was committed, and a restart after a crash at any step of a rotation or a compaction finds
every unprocessed frame with its sequence numbers."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest

from common.bus import BusUnavailable, OutgoingRecord
from streams.backends.local.bus import LEGACY_LOG, Frame, LocalBus, list_segments, segment_path

SEGMENT_BYTES = 1_000


def request(index: int, records: int = 3) -> list[OutgoingRecord]:
    return [
        OutgoingRecord("analytics.events", f"k{index}".encode(), f"{index}/{n}".encode() * 20)
        for n in range(records)
    ]


async def read_all(bus: LocalBus, position: int) -> list[Frame]:
    frames: list[Frame] = []
    while batch := await bus.read(position, 7):
        frames += batch
        position = batch[-1].end
    return frames


def values(frames: list[Frame]) -> list[bytes]:
    return [record.value for frame in frames for record in frame.records]


def sequences(frames: list[Frame]) -> list[int]:
    return [frame.first_seq + i for frame in frames for i in range(len(frame.records))]


async def started(directory: Path) -> LocalBus:
    bus = LocalBus(directory, segment_bytes=SEGMENT_BYTES)
    await bus.start()
    return bus


async def test_segments_roll_and_compaction_keeps_what_is_not_committed(tmp_path: Path) -> None:
    bus = await started(tmp_path)
    for index in range(40):
        await bus.publish(request(index))
    frames = await read_all(bus, 0)
    assert values(frames) == [v.value for index in range(40) for v in request(index)]
    assert sequences(frames) == list(range(120))
    segments = bus.segments
    assert len(segments) > 5
    for before, after in itertools.pairwise(segments):
        assert before.base + before.path.stat().st_size == after.base

    committed = frames[len(frames) // 2].start  # the runner's position, inside a segment
    deleted = await bus.compact(committed)
    kept = list_segments(tmp_path)
    assert deleted == len(segments) - len(kept) > 0
    assert kept[0].base <= committed < kept[0].base + kept[0].path.stat().st_size
    assert await read_all(bus, committed) == frames[len(frames) // 2 :]

    await bus.compact(bus.end)  # all processed: only the active segment is left
    assert [s.path for s in list_segments(tmp_path)] == [segments[-1].path]
    end = bus.end
    await bus.stop()

    bus = await started(tmp_path)
    assert bus.end == end
    await bus.publish(request(99))
    more = await read_all(bus, end)
    assert sequences(more) == [120, 121, 122]
    await bus.stop()


async def test_readers_compacting_at_once_keep_the_log_whole(tmp_path: Path) -> None:
    """`quip up`'s two pipelines commit, and compact, concurrently: the active segment and
    every segment not committed by both survive, and the bus goes on taking frames."""
    bus = await started(tmp_path)
    for index in range(40):
        await bus.publish(request(index))
    segments = bus.segments
    assert len(segments) > 5
    await asyncio.gather(bus.compact(bus.end), bus.compact(bus.end), bus.compact(bus.end))
    assert bus.segments == [segments[-1]]
    assert [s.path for s in list_segments(tmp_path)] == [segments[-1].path]
    end = bus.end
    async with asyncio.timeout(10):
        await bus.publish(request(99))
    assert sequences(await read_all(bus, end)) == [120, 121, 122]
    await bus.stop()


async def test_a_rotation_interrupted_after_its_create_loses_nothing(tmp_path: Path) -> None:
    bus = await started(tmp_path)
    for index in range(10):
        await bus.publish(request(index))
    end = bus.end
    await bus.stop()
    # The crash: the next segment exists (empty), no frame was written to it yet, and
    # every earlier segment was compacted away.
    segment_path(tmp_path, end, 30).touch()
    for segment in list_segments(tmp_path)[:-1]:
        segment.path.unlink()

    bus = await started(tmp_path)
    assert bus.end == end
    await bus.publish(request(10))
    assert sequences(await read_all(bus, end)) == [30, 31, 32]
    await bus.stop()


async def test_a_compaction_interrupted_halfway_resumes(tmp_path: Path) -> None:
    bus = await started(tmp_path)
    for index in range(40):
        await bus.publish(request(index))
    frames = await read_all(bus, 0)
    committed = frames[-3].start
    await bus.stop()
    segments = list_segments(tmp_path)
    segments[0].path.unlink()  # the crash: only the oldest deletable segment went

    bus = await started(tmp_path)
    assert await read_all(bus, committed) == frames[-3:]
    await bus.compact(committed)
    assert list_segments(tmp_path)[0].base <= committed
    assert len(list_segments(tmp_path)) < len(segments) - 1
    await bus.stop()


async def test_a_torn_tail_is_cut_and_a_legacy_log_is_adopted(tmp_path: Path) -> None:
    bus = await started(tmp_path)
    for index in range(3):
        await bus.publish(request(index))
    frames = await read_all(bus, 0)
    await bus.stop()
    (only,) = list_segments(tmp_path)
    only.path.rename(tmp_path / LEGACY_LOG)  # a data directory from before segments
    with (tmp_path / LEGACY_LOG).open("ab") as log:
        log.write(b"\x99" * 17)  # half a frame: the request that wrote it got no answer
    size = (tmp_path / LEGACY_LOG).stat().st_size

    bus = await started(tmp_path)
    assert not (tmp_path / LEGACY_LOG).exists()
    assert bus.end == size - 17
    assert await read_all(bus, 0) == frames
    await bus.publish(request(3))
    assert sequences(await read_all(bus, 0)) == list(range(12))
    await bus.stop()


async def test_a_cancelled_publisher_leaves_the_writer_running(tmp_path: Path) -> None:
    """A publisher cancelled while its frame is being written (a client's timeout) must
    not stop the writer: the next publish is taken."""
    bus = await started(tmp_path)
    cancelled = asyncio.create_task(bus.publish(request(0)))
    await asyncio.sleep(0)  # its frame waits for the writer
    cancelled.cancel()
    async with asyncio.timeout(5):
        await bus.publish(request(1))
    assert bus.ready
    assert values(await read_all(bus, 0))[-3:] == [r.value for r in request(1)]
    await bus.stop()


async def test_a_dead_writer_refuses_every_publish_at_once(tmp_path: Path) -> None:
    """Whatever stops the writer (here the loop's thread pool is gone, so no write can be
    scheduled), the publishes waiting on it and every later one raise BusUnavailable at
    once; none waits on a writer that is gone."""
    bus = await started(tmp_path)
    await bus.publish(request(0))
    await asyncio.get_running_loop().shutdown_default_executor()
    async with asyncio.timeout(5):
        waiting = await asyncio.gather(
            *(bus.publish(request(index)) for index in range(1, 4)), return_exceptions=True
        )
        with pytest.raises(BusUnavailable, match="writer stopped: RuntimeError") as later:
            await bus.publish(request(9))
    assert [type(outcome) for outcome in waiting] == [BusUnavailable] * 3
    assert later.value.retry_after_s > 0
    assert not bus.ready
    assert bus.last_error is not None
    assert "RuntimeError" in bus.last_error
    await bus.stop()
