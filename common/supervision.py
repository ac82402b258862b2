"""A pipeline that raises makes a dead process, not a zombie (the worker and `quip up`
alike): its reason is recorded for `/ready`, it is logged, and the process exits with
status 70 a moment later so that its supervisor (Kubernetes, systemd, the user) restarts
it; what was not committed is replayed, which the idempotent sinks absorb."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Iterable

log = logging.getLogger(__name__)

CRASH_EXIT_STATUS = 70  # EX_SOFTWARE
# Leaves a moment for /ready to be read before the process goes.
CRASH_EXIT_DELAY_S = 2.0


async def supervise(crashed: dict[str, str], name: str, work: Awaitable[None]) -> None:
    """Awaits `work`; if it raises, records why in `crashed[name]`, schedules the exit
    and raises again. Cancellation is a stop, not a crash."""
    try:
        await work
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        crashed[name] = f"{type(exc).__name__}: {exc}"
        log.exception("pipeline %s crashed; the process exits", name)
        # A half-dead process would look alive and process nothing.
        asyncio.get_running_loop().call_later(CRASH_EXIT_DELAY_S, os._exit, CRASH_EXIT_STATUS)
        raise


def pipeline_checks(names: Iterable[str], crashed: dict[str, str]) -> dict[str, str]:
    """`/ready`'s entry per pipeline, the same in the worker and in `quip up`."""
    return {
        f"pipeline:{name}": "ok" if name not in crashed else f"crashed: {crashed[name]}"
        for name in names
    }
