"""Read a request body under a hard size limit, inflating gzip as it streams in.

The limit applies to the *decompressed* size (SPEC §2: 1 MB). Reading stops as soon as the
limit is crossed, so neither a huge upload nor a gzip bomb is ever held in memory: the
inflater is asked for at most `limit + 1` bytes at a time.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator

GZIP_MAGIC = b"\x1f\x8b"
MAX_BODY_BYTES = 1024 * 1024


class BodyTooLarge(ValueError):
    pass


class BadEncoding(ValueError):
    pass


async def read_body(
    chunks: AsyncIterator[bytes],
    *,
    content_encoding: str = "",
    limit: int = MAX_BODY_BYTES,
) -> bytes:
    """Collect the body, gunzipping it when the header says gzip or the first bytes are
    gzip's magic (PostHog SDKs send gzip without a header). Raises BodyTooLarge past
    `limit` decompressed bytes and BadEncoding on a corrupt or unknown encoding."""
    encoding = content_encoding.strip().lower()
    if encoding not in ("", "identity", "gzip", "x-gzip"):
        raise BadEncoding(f"unsupported Content-Encoding {content_encoding!r} (use gzip)")
    out = bytearray()
    inflater: zlib._Decompress | None = None
    sniffed = False
    async for chunk in chunks:
        if not chunk:
            continue
        if not sniffed:
            sniffed = True
            if encoding in ("gzip", "x-gzip") or chunk.startswith(GZIP_MAGIC):
                inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        if inflater is None:
            out += chunk
            if len(out) > limit:
                raise BodyTooLarge(f"body exceeds {limit} bytes")
            continue
        _inflate_into(inflater, chunk, out, limit)
    if inflater is not None:
        if not inflater.eof:
            raise BadEncoding("gzip stream is truncated")
        if inflater.unused_data.strip(b"\x00"):
            raise BadEncoding("data after the end of the gzip stream")
    return bytes(out)


def _inflate_into(inflater: zlib._Decompress, data: bytes, out: bytearray, limit: int) -> None:
    try:
        while data:
            out += inflater.decompress(data, limit + 1 - len(out))
            if len(out) > limit:
                raise BodyTooLarge(f"decompressed body exceeds {limit} bytes")
            if inflater.eof:
                return
            data = inflater.unconsumed_tail
    except zlib.error as exc:
        raise BadEncoding(f"body is not valid gzip: {exc}") from exc
