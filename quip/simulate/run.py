"""The two modes as `quip simulate` runs them: historical (the backfill as fast as the
gateway takes it) and live (`rate` events per second with ts = now). A gateway that
refuses the connection (or whose host does not resolve) before anything is sent raises
`GatewayUnreachable` at once; the first failure of a run that has started is printed with
how long the run keeps retrying. The first Ctrl-C stops submission and sends what was
submitted.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
from rich.console import Console

from quip.simulate.gateway import check_gateway
from quip.simulate.historical import Historical, count_items, historical_items
from quip.simulate.live import LIVE_FLUSH_S, Live, live_items, live_sessions_needed
from quip.simulate.sender import Sender, SendOptions, now_ms
from quip.simulate.session import MAX_BATCH_EVENTS, Batch, ServiceItem
from quip.simulate.summary import Summary


@contextlib.contextmanager
def _interruptible(sender: Sender) -> Iterator[None]:
    """The first Ctrl-C stops submission (what was submitted is still sent); a second one
    interrupts as usual."""
    loop = asyncio.get_running_loop()

    def first_interrupt() -> None:
        sender.stop()
        sender.summary.interrupted = True
        loop.remove_signal_handler(signal.SIGINT)

    try:
        loop.add_signal_handler(signal.SIGINT, first_interrupt)
    except (NotImplementedError, RuntimeError):  # not the main thread, or no signals
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGINT)


def _day(ms: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ms / 1000))


async def run_historical(
    plan: Historical, options: SendOptions, console: Console | None = None
) -> Summary:
    """Send the backfill as fast as the gateway takes it."""
    console = console or Console(stderr=True)
    summary = Summary(
        mode="historical",
        url=options.url,
        project=options.project,
        seed=plan.seed,
        users=plan.users,
        days=plan.days,
        window_from=_day(plan.min_ts),
        window_to=_day(plan.end_ms),
    )
    await check_gateway(options.url)
    total = count_items(historical_items(plan)).events if options.progress else None
    async with Sender(options, summary, console, total) as sender:
        with _interruptible(sender):
            for item in historical_items(plan):
                if sender.stopped:
                    break
                if isinstance(item, Batch):
                    await sender.submit(item)
                else:
                    await sender.submit_service(item.message)
    return summary


@dataclass(slots=True)
class _Buffer:
    user_id: str
    context: dict[str, str]
    opened: float
    events: list[dict[str, Any]] = field(default_factory=list)


async def run_live(
    plan: Live,
    options: SendOptions,
    *,
    duration_s: float | None,
    flush_s: float = LIVE_FLUSH_S,
    console: Console | None = None,
) -> Summary:
    """Emit `plan.rate` events per second with ts = now until `duration_s` (or Ctrl-C)."""
    console = console or Console(stderr=True)
    summary = Summary(
        mode="live",
        url=options.url,
        project=options.project,
        seed=plan.seed,
        users=plan.users,
        rate=plan.rate,
        duration_s=duration_s,
        concurrent_sessions=live_sessions_needed(plan),
    )
    await check_gateway(options.url)
    total = int(plan.rate * duration_s) if duration_s is not None else None
    stream = live_items(plan)
    buffers: dict[str, _Buffer] = {}
    session_starts: dict[str, int] = {}
    tick_s = 0.05
    async with Sender(options, summary, console, total) as sender:

        async def flush(session_id: str) -> None:
            buffer = buffers.pop(session_id)
            await sender.submit(Batch(buffer.user_id, buffer.context, buffer.events))

        with _interruptible(sender):
            origin = time.monotonic()
            emitted = 0
            while not sender.stopped:
                clock = time.monotonic()
                elapsed = clock - origin
                if duration_s is not None and elapsed >= duration_s:
                    target = int(plan.rate * duration_s)
                else:
                    target = int(plan.rate * elapsed)
                if target - emitted > plan.rate:  # the gateway is slower: do not burst
                    origin += (target - emitted - plan.rate) / plan.rate
                    target = emitted + int(plan.rate)
                wall = now_ms()
                while emitted < target:
                    item = next(stream)
                    if isinstance(item, ServiceItem):
                        message = msgspec.structs.replace(item.message, ts=wall)
                        await sender.submit_service(message)
                        continue
                    event = {**item.event, "ts": wall}
                    session_id = item.context["session_id"]
                    if event["type"] == "session_start":
                        session_starts[session_id] = wall
                    elif event["type"] == "session_end":
                        began = session_starts.pop(session_id, wall)
                        event["props"] = {"duration_ms": wall - began}
                    buffer = buffers.get(session_id)
                    if buffer is None:
                        buffer = buffers[session_id] = _Buffer(item.user_id, item.context, clock)
                    buffer.events.append(event)
                    emitted += 1
                    if len(buffer.events) >= MAX_BATCH_EVENTS or item.last_in_session:
                        await flush(session_id)
                for session_id in [s for s, b in buffers.items() if clock - b.opened >= flush_s]:
                    await flush(session_id)
                if duration_s is not None and elapsed >= duration_s:
                    break
                await asyncio.sleep(tick_s)
            for session_id in list(buffers):
                await flush(session_id)
    return summary
