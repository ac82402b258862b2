"""The local bus: an append-only log on disk in place of Kafka (`quip up`); the records
source of the local backend (streams/backends/local/source.py).

The gateway publishes a request's records as one *frame*; a frame is on disk (written and
fsync'ed) before `publish` returns, so a 200 means the events survive a crash or a
restart, as with acks=all in Kafka. Concurrent requests are group-committed: one write and
one fsync for every frame waiting. A frame is all-or-nothing: on start, a torn last frame
(length or CRC does not match) is cut off, and the request that wrote it was never answered.

Frame layout: header `<I I Q` (payload length, CRC32 of the payload, sequence number of
the frame's first record), then the payload: msgpack of `[[topic, key, value], ...]`.
Readers address the log by byte position (where the next frame starts); every record
read carries its global sequence number as its offset, its position for the processors.

Segments and compaction: the log is a run of files `events-<base position>-<base
sequence>.log`; positions are global, so a segment holds the frames of [its base, the next
segment's base). Once the active segment passes `segment_bytes`, the writer creates the
next one (and fsyncs the directory) before writing to it. `compact(position)`, called
once every reader committed `position`, deletes the segments that end at or before it,
oldest first. Crash-safe at every step: a crash after a rotation's create leaves an empty
last segment whose name still carries the log's end and next sequence number; a crash in
the middle of a compaction leaves a shorter run that is still contiguous, and everything
it lost was committed. A log from before segments (`events.log`) becomes the first
segment (base 0, sequence 0) by a rename on start.

A write that fails (OSError) refuses its frames (`BusUnavailable`), `ready` is false until
a write succeeds again, and the writer goes on.
A writer that stops on anything else is not restarted: the error is logged once, `ready`
turns false with it as `last_error`, and every waiting and later `publish` raises
`BusUnavailable` at once (the gateway answers 503), never waits on a writer that is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec

from common.bus import BusUnavailable, OutgoingRecord

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<IIQ")
# A failed write may be a full disk or a flaky one: worth a retry soon. A stopped writer
# stays stopped until a restart.
WRITE_FAILED_RETRY_S = 5
_encoder = msgspec.msgpack.Encoder()


class BusRecord(msgspec.Struct, array_like=True):
    """One record as read (a pipeline `Message`): decoded straight from the frame's
    `[topic, key, value]`, its offset set by the reader."""

    topic: str
    key: bytes
    value: bytes
    offset: int = 0

    @property
    def partition(self) -> int:
        return 0


_decoder = msgspec.msgpack.Decoder(list[BusRecord])
_SEGMENT_NAME = re.compile(r"events-(\d{20})-(\d{20})\.log")
LEGACY_LOG = "events.log"
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Frame:
    start: int  # byte position of the frame
    end: int  # byte position of the next frame
    first_seq: int
    records: list[BusRecord]


@dataclass(frozen=True, slots=True)
class Segment:
    base: int  # global byte position of its first frame
    base_seq: int  # sequence number of its first record
    path: Path


def segment_path(directory: Path, base: int, base_seq: int) -> Path:
    return directory / f"events-{base:020d}-{base_seq:020d}.log"


def list_segments(directory: Path) -> list[Segment]:
    segments = []
    for path in directory.iterdir():
        if match := _SEGMENT_NAME.fullmatch(path.name):
            segments.append(Segment(int(match[1]), int(match[2]), path))
    return sorted(segments, key=lambda segment: segment.base)


def _read_frames(segment: Segment, position: int, max_frames: int) -> list[Frame]:
    """Whole frames of one segment from global `position`."""
    frames: list[Frame] = []
    with segment.path.open("rb") as log:
        log.seek(position - segment.base)
        while len(frames) < max_frames:
            header = log.read(_HEADER.size)
            if len(header) < _HEADER.size:
                break
            length, crc, first_seq = _HEADER.unpack(header)
            payload = log.read(length)
            if len(payload) < length or zlib.crc32(payload) != crc:
                break
            end = position + _HEADER.size + length
            records = _decoder.decode(payload)
            for offset, record in enumerate(records, first_seq):
                record.offset = offset
            frames.append(Frame(position, end, first_seq, records))
            position = end
    return frames


def _refuse(group: Sequence[tuple[bytes, int, asyncio.Future[None]]], reason: str) -> None:
    for _, _, done in group:
        if not done.done():
            done.set_exception(BusUnavailable(reason, WRITE_FAILED_RETRY_S))


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalBus:
    """Implements the gateway's `Publisher` protocol, and `read`/`compact` for the
    readers."""

    def __init__(self, directory: Path, segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.last_error: str | None = "not started"
        self._segments: list[Segment] = []
        self._file: int | None = None
        self._next_seq = 0
        self._end = 0
        self._pending: list[tuple[bytes, int, asyncio.Future[None]]] = []
        self._wakeup = asyncio.Event()
        self._appended = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._stopping = False
        # Compactions one at a time: two interleaved ones would each pop a segment after
        # deleting the same file, and could pop the active one.
        self._compacting = asyncio.Lock()

    @property
    def ready(self) -> bool:
        """The writer runs and its last write went to disk."""
        return self._writing() and self.last_error is None

    def _writing(self) -> bool:
        return self._writer is not None and not self._writer.done()

    @property
    def end(self) -> int:
        return self._end

    @property
    def segments(self) -> list[Segment]:
        return list(self._segments)

    async def start(self) -> None:
        self._end, self._next_seq = await asyncio.to_thread(self._recover)
        self._file = os.open(self._segments[-1].path, os.O_WRONLY | os.O_APPEND)
        self._stopping = False
        self._writer = asyncio.create_task(self._write_loop(), name="local-bus-writer")
        self.last_error = None

    def _recover(self) -> tuple[int, int]:
        """Find the segments; cut a torn tail off the last; return (end, next sequence)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        legacy = self.directory / LEGACY_LOG
        if legacy.exists() and not list_segments(self.directory):
            legacy.rename(segment_path(self.directory, 0, 0))
            _fsync_directory(self.directory)
        self._segments = list_segments(self.directory)
        if not self._segments:
            segment_path(self.directory, 0, 0).touch()
            _fsync_directory(self.directory)
            self._segments = list_segments(self.directory)
        for before, after in itertools.pairwise(self._segments):
            size = before.path.stat().st_size
            if before.base + size != after.base:
                raise RuntimeError(f"bus segments are not contiguous: {before.path} {after.path}")
        last = self._segments[-1]
        position, next_seq = last.base, last.base_seq
        while frames := _read_frames(last, position, 10_000):
            position = frames[-1].end
            next_seq = frames[-1].first_seq + len(frames[-1].records)
        if last.path.stat().st_size > position - last.base:
            os.truncate(last.path, position - last.base)
        return position, next_seq

    async def stop(self) -> None:
        if self._writer is not None:
            # Not cancelled: a frame being written is answered with what became of it.
            self._stopping = True
            self._wakeup.set()
            await self._writer
        if self._file is not None:
            os.close(self._file)
            self._file = None

    async def publish(self, records: Sequence[OutgoingRecord]) -> None:
        if not self._writing():
            raise BusUnavailable(self.last_error or "bus not started", WRITE_FAILED_RETRY_S)
        payload = _encoder.encode([(r.topic, r.key, r.value) for r in records])
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((payload, len(records), done))
        self._wakeup.set()
        await done

    async def _write_loop(self) -> None:
        group: list[tuple[bytes, int, asyncio.Future[None]]] = []
        try:
            while not self._stopping:
                await self._wakeup.wait()
                self._wakeup.clear()
                group, self._pending = self._pending, []
                if group and not self._stopping:
                    await self._write_group(group)
            self.last_error = "local bus stopped"
        except Exception as exc:
            self.last_error = f"local bus writer stopped: {type(exc).__name__}: {exc}"
            log.error("%s; publishes are refused until a restart", self.last_error, exc_info=exc)
        finally:
            # Stopped or dead: whoever still waits is answered, now. (Nothing of a group
            # the writer raised on was written: the write is the writer's last step.)
            _refuse([*group, *self._pending], self.last_error or "local bus stopped")
            self._pending = []

    async def _write_group(self, group: list[tuple[bytes, int, asyncio.Future[None]]]) -> None:
        chunks = []
        seq = self._next_seq
        for payload, count, _ in group:
            chunks.append(_HEADER.pack(len(payload), zlib.crc32(payload), seq) + payload)
            seq += count
        data = b"".join(chunks)
        try:
            if self._end - self._segments[-1].base >= self.segment_bytes:
                await asyncio.to_thread(self._rotate)
            await asyncio.to_thread(self._append, data)
        except OSError as exc:
            # A partial write must not sit in front of the next frames.
            with contextlib.suppress(OSError):
                os.ftruncate(self._file or -1, self._end - self._segments[-1].base)
            self.last_error = f"local bus write failed: {exc}"
            _refuse(group, self.last_error)
            return
        self.last_error = None
        self._next_seq = seq
        self._end += len(data)
        for _, _, done in group:
            if not done.done():  # its publisher may have been cancelled meanwhile
                done.set_result(None)
        self._appended.set()

    def _rotate(self) -> None:
        path = segment_path(self.directory, self._end, self._next_seq)
        new_file = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        _fsync_directory(self.directory)
        assert self._file is not None
        os.close(self._file)
        self._file = new_file
        self._segments.append(Segment(self._end, self._next_seq, path))

    def _append(self, data: bytes) -> None:
        assert self._file is not None
        os.write(self._file, data)
        os.fsync(self._file)

    def _segment_at(self, position: int) -> Segment:
        for segment in reversed(self._segments):
            if segment.base <= position:
                return segment
        raise ValueError(f"bus position {position} was compacted away")

    async def read(self, position: int, max_frames: int = 256) -> list[Frame]:
        """Whole frames from `position` (of one segment); empty when the reader has caught
        up."""
        if position >= self._end:
            return []
        return await asyncio.to_thread(
            _read_frames, self._segment_at(position), position, max_frames
        )

    async def wait_for_frames(self, timeout_s: float) -> None:
        self._appended.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._appended.wait()

    async def compact(self, committed: int) -> int:
        """Delete the segments that end at or before the committed position (never the
        active one), oldest first; returns how many were deleted. Safe to call from
        several readers at once."""
        deleted = 0
        async with self._compacting:
            while len(self._segments) > 1 and self._segments[1].base <= committed:
                await asyncio.to_thread(self._segments[0].path.unlink, missing_ok=True)
                self._segments.pop(0)
                deleted += 1
        return deleted
