"""A minimal HTTP/1.1 keep-alive client on asyncio.Protocol: a load generator that costs
far less CPU per request than httpx (benchmarks/ingest.py, benchmarks/embedded.py)."""

from __future__ import annotations

import asyncio
import contextlib


class HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request in flight (no pipelining)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.closed = False
        self.reusable = True
        self._read_to_close: tuple[int, int] | None = None  # (status, body start)
        self.retry_after_s: float | None = None  # of the last response

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is not None:
            self._try_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter, self.waiter = self.waiter, None
        if waiter is None or waiter.done():
            return
        if self._read_to_close is not None:
            status, start = self._read_to_close
            waiter.set_result((status, bytes(self.buffer[start:])))
        else:
            waiter.set_exception(ConnectionError(f"connection closed: {exc!r}"))

    def _try_complete(self) -> None:
        buf = self.buffer
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buf[:end]).lower()
        status = int(head[9:12])
        start = end + 4
        self.retry_after_s = None
        at = head.find(b"\r\nretry-after:")
        if at >= 0:
            eol = head.find(b"\r\n", at + 2)
            with contextlib.suppress(ValueError):
                self.retry_after_s = float(head[at + 14 : eol if eol >= 0 else len(head)])
        at = head.find(b"\r\ncontent-length:")
        if at >= 0:
            eol = head.find(b"\r\n", at + 2)
            total = start + int(head[at + 17 : eol if eol >= 0 else len(head)])
            if len(buf) < total:
                return
            body = bytes(buf[start:total])
        elif b"\r\ntransfer-encoding: chunked" in head:
            chunked = self._dechunk(start)
            if chunked is None:
                return
            body, total = chunked
        else:
            self.reusable = False
            self._read_to_close = (status, start)
            return
        del buf[:total]
        if b"\r\nconnection: close" in head:
            self.reusable = False
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((status, body))

    def _dechunk(self, pos: int) -> tuple[bytes, int] | None:
        buf, pieces = self.buffer, list[bytes]()
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
            if size == 0:
                trailer_end = buf.find(b"\r\n\r\n", eol)
                if trailer_end < 0:
                    return None
                return b"".join(pieces), trailer_end + 4
            if len(buf) < eol + 2 + size + 2:
                return None
            pieces.append(bytes(buf[eol + 2 : eol + 2 + size]))
            pos = eol + 2 + size + 2

    async def request(self, data: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        waiter: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self.waiter = waiter
        self.transport.write(data)
        return await waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_connection(host: str, port: int) -> HttpConnection:
    _, protocol = await asyncio.get_running_loop().create_connection(HttpConnection, host, port)
    return protocol
