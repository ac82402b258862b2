"""The embedded bus: an append-only local log in place of Kafka (`quip up`).

The gateway publishes a request's records as one *frame*; a frame is on disk (written and
fsync'ed) before `publish` returns, so a 200 means the events survive a crash or a
restart, as with acks=all in Kafka. Concurrent requests are group-committed: one write and
one fsync for every frame waiting. A frame is all-or-nothing: on start, a torn last frame
(length or CRC does not match) is cut off, and the request that wrote it was never answered.

Frame layout: header `<I I Q` (payload length, CRC32 of the payload, sequence number of
the frame's first record), then the payload: msgpack of `[[topic, key, value], ...]`.
Readers address the log by byte position (where the next frame starts) and give every
record a global sequence number, used as its bus position by the processors.

The log is not compacted: it grows with what is ingested (see the README's limits).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec

from ingest.producer import BusUnavailable, OutgoingRecord

_HEADER = struct.Struct("<IIQ")
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(list[tuple[str, bytes, bytes]])


@dataclass(frozen=True, slots=True)
class Frame:
    start: int  # byte position of the frame
    end: int  # byte position of the next frame
    first_seq: int
    records: list[tuple[str, bytes, bytes]]


def _read_frames(path: Path, position: int, max_frames: int) -> list[Frame]:
    frames: list[Frame] = []
    with path.open("rb") as log:
        log.seek(position)
        while len(frames) < max_frames:
            header = log.read(_HEADER.size)
            if len(header) < _HEADER.size:
                break
            length, crc, first_seq = _HEADER.unpack(header)
            payload = log.read(length)
            if len(payload) < length or zlib.crc32(payload) != crc:
                break
            end = position + _HEADER.size + length
            frames.append(Frame(position, end, first_seq, _decoder.decode(payload)))
            position = end
    return frames


class LocalBus:
    """Implements the gateway's `Publisher` protocol, and `read` for the runner."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "events.log"
        self.last_error: str | None = "not started"
        self._file: int | None = None
        self._next_seq = 0
        self._end = 0
        self._pending: list[tuple[bytes, int, asyncio.Future[None]]] = []
        self._wakeup = asyncio.Event()
        self._appended = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return self._file is not None

    @property
    def end(self) -> int:
        return self._end

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch(exist_ok=True)
        self._end, self._next_seq = await asyncio.to_thread(self._recover)
        self._file = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self._writer = asyncio.create_task(self._write_loop(), name="local-bus-writer")
        self.last_error = None

    def _recover(self) -> tuple[int, int]:
        """Scan the log; cut a torn tail; return (end position, next sequence number)."""
        position, next_seq = 0, 0
        while frames := _read_frames(self.path, position, 10_000):
            position = frames[-1].end
            next_seq = frames[-1].first_seq + len(frames[-1].records)
        if self.path.stat().st_size > position:
            os.truncate(self.path, position)
        return position, next_seq

    async def stop(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        for _, _, done in self._pending:
            if not done.done():
                done.set_exception(BusUnavailable("stopping", 1))
        if self._file is not None:
            os.close(self._file)
            self._file = None

    async def publish(self, records: Sequence[OutgoingRecord]) -> None:
        if self._file is None:
            raise BusUnavailable(self.last_error or "bus not started", 1)
        payload = _encoder.encode([(r.topic, r.key, r.value) for r in records])
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((payload, len(records), done))
        self._wakeup.set()
        await done

    async def _write_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            group, self._pending = self._pending, []
            if not group:
                continue
            chunks = []
            seq = self._next_seq
            for payload, count, _ in group:
                chunks.append(_HEADER.pack(len(payload), zlib.crc32(payload), seq) + payload)
                seq += count
            data = b"".join(chunks)
            try:
                await asyncio.to_thread(self._append, data)
            except OSError as exc:
                # A partial write must not sit in front of the next frames.
                with contextlib.suppress(OSError):
                    os.ftruncate(self._file or -1, self._end)
                self.last_error = f"local bus write failed: {exc}"
                for _, _, done in group:
                    done.set_exception(BusUnavailable(self.last_error, 5))
                continue
            self._next_seq = seq
            self._end += len(data)
            for _, _, done in group:
                done.set_result(None)
            self._appended.set()

    def _append(self, data: bytes) -> None:
        assert self._file is not None
        os.write(self._file, data)
        os.fsync(self._file)

    async def read(self, position: int, max_frames: int = 256) -> list[Frame]:
        """Whole frames from `position`; empty when the reader has caught up."""
        if position >= self._end:
            return []
        return await asyncio.to_thread(_read_frames, self.path, position, max_frames)

    async def wait_for_frames(self, timeout_s: float) -> None:
        self._appended.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._appended.wait()
