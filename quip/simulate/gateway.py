"""What the simulator knows of the gateway: its path, which answers are worth a retry,
and whether anything listens at all."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import socket
import time
import urllib.parse
from typing import Final

EVENTS_PATH: Final = "/v1/events"
RETRYABLE_STATUSES: Final = frozenset({429, 500, 502, 503, 504})


class GatewayUnreachable(RuntimeError):
    """Nothing listens at the gateway URL (connection refused, or the host does not
    resolve): retrying would only wait out `--retry-for` in silence."""


async def check_gateway(url: str, timeout_s: float = 5.0) -> None:
    """Raise `GatewayUnreachable` when the gateway's port refuses connections or its host
    does not resolve. A timeout or any other error is left to the sending loop's retries
    (a slow or briefly overloaded gateway is not a wrong URL)."""
    parsed = urllib.parse.urlsplit(url)
    host = parsed.hostname or "127.0.0.1"
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(host, port)
    except (ConnectionRefusedError, socket.gaierror) as exc:
        raise GatewayUnreachable(
            f"no gateway at {url} ({exc.strerror or exc}): start one (`quip up`, or "
            "`quip gateway` in cluster mode) or point --url at it"
        ) from exc
    except (TimeoutError, OSError):
        return
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


def retry_after(value: str | None) -> float | None:
    """Seconds to wait from a `Retry-After` header (seconds or an HTTP date), at most 60."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return min(60.0, max(0.0, seconds))
