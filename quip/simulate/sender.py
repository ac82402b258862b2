"""Sending the generated requests to the gateway: N concurrent keep-alive connections
(aiohttp), a user's requests sent in order, retries of 429/503/5xx and network errors with
backoff (honouring `Retry-After`) for up to `retry_for_s`. Nothing is dropped silently:
another 4xx fails its batch, a batch still refused after `retry_for_s` or a 401 aborts the
run, and every batch not accepted is counted and reported in the `Summary`.
"""

from __future__ import annotations

import asyncio
import gzip
import random
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import aiohttp
import orjson
from rich.console import Console

from quip.simulate.gateway import EVENTS_PATH, RETRYABLE_STATUSES, retry_after
from quip.simulate.service_sender import ServiceSender
from quip.simulate.session import Batch
from quip.simulate.summary import RunProgress, Summary, WarnOnce
from schemas.services import ServiceMessage


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(slots=True)
class SendOptions:
    url: str
    key: str
    project: str = "default"
    concurrency: int = 64
    retry_for_s: float = 300.0
    request_timeout_s: float = 30.0
    gzip: bool = False
    record: Path | None = None
    kafka_bootstrap: str | None = None
    progress: bool = True
    # False: no `sent_at`, so the gateway stores each ts as recorded (no skew correction
    # by the request's latency); tests that recompute metrics from --record need that.
    sent_at: bool = True

    @property
    def endpoint(self) -> str:
        return self.url.rstrip("/") + EVENTS_PATH


@dataclass(slots=True)
class _Request:
    batch: Batch
    after: asyncio.Event | None
    done: asyncio.Event


class Sender:
    """Workers sending requests over one keep-alive connection pool, the service messages'
    sender, the progress bar and the record file. Use as `async with`; `stop()` (Ctrl-C)
    ends submission, and leaving the block waits for everything submitted."""

    def __init__(
        self, options: SendOptions, summary: Summary, console: Console, total: int | None
    ) -> None:
        self.options = options
        self.summary = summary
        self.stopped = False
        self._warn_once = WarnOnce(console)
        self._jitter = random.Random()  # noqa: S311 (backoff jitter)
        self._queue: asyncio.Queue[_Request | None] = asyncio.Queue(options.concurrency * 2)
        self._services = ServiceSender(
            options.kafka_bootstrap,
            options.url,
            options.key,
            summary,
            options.retry_for_s,
            self._warn_once,
        )
        self._last: dict[str, asyncio.Event] = {}
        self._users: set[str] = set()
        self._workers: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._record: BinaryIO | None = None
        self._started = time.monotonic()
        self._progress = RunProgress(
            summary, console, total, enabled=options.progress, started=self._started
        )

    async def __aenter__(self) -> Sender:
        options = self.options
        if options.record is not None:
            self._record = options.record.open("wb")
        connector = aiohttp.TCPConnector(
            limit=options.concurrency, limit_per_host=options.concurrency, keepalive_timeout=60
        )
        headers = {
            "Authorization": f"Bearer {options.key}",
            "Content-Type": "application/json",
            "User-Agent": "quip-simulate",
        }
        if options.gzip:
            headers["Content-Encoding"] = "gzip"
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=options.request_timeout_s),
        )
        self._workers = [asyncio.create_task(self._work()) for _ in range(options.concurrency)]
        self._services.start()
        self._progress.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            for _ in self._workers:
                await self._queue.put(None)
            await asyncio.gather(*self._workers)
            await self._services.close()
        finally:
            for task in self._workers:
                task.cancel()
            self._services.cancel()
            if self._session is not None:
                await self._session.close()
            if self._record is not None:
                self._record.close()
            self.summary.users_active = len(self._users)
            self.summary.elapsed_s = time.monotonic() - self._started
            self._progress.refresh()
            self._progress.stop()

    def stop(self) -> None:
        self.stopped = True

    # ------------------------------------------------------------------ submission
    async def submit(self, batch: Batch) -> None:
        """Queue a request (waits while `concurrency * 2` are queued). Requests of a user
        are sent one after the other, in submission order."""
        self.summary.events_generated += len(batch.events)
        done = asyncio.Event()
        after = self._last.get(batch.user_id)
        self._last[batch.user_id] = done
        await self._queue.put(_Request(batch, after, done))

    async def submit_service(self, message: ServiceMessage) -> None:
        await self._services.submit(message)

    # ------------------------------------------------------------------ requests
    async def _work(self) -> None:
        while True:
            request = await self._queue.get()
            if request is None:
                return
            try:
                if request.after is not None:
                    await request.after.wait()
                await self._deliver(request.batch)
            finally:
                request.done.set()
                if self._last.get(request.batch.user_id) is request.done:
                    del self._last[request.batch.user_id]

    def _body(self, batch: Batch) -> bytes:
        body = orjson.dumps(
            {
                **({"sent_at": now_ms()} if self.options.sent_at else {}),
                "context": batch.context,
                "events": batch.events,
            }
        )
        return gzip.compress(body, compresslevel=1) if self.options.gzip else body

    async def _deliver(self, batch: Batch) -> None:
        if self.summary.aborted:
            self._fail(batch, None)  # counted, not sent: the run is being aborted
            return
        assert self._session is not None
        deadline = time.monotonic() + self.options.retry_for_s
        attempt = 0
        while True:
            attempt += 1
            self.summary.requests += 1
            delay: float | None = None
            try:
                async with self._session.post(
                    self.options.endpoint, data=self._body(batch)
                ) as response:
                    status = response.status
                    payload = await response.read()
                    delay = retry_after(response.headers.get("Retry-After"))
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                problem = f"network error: {exc!r}"
            else:
                if status == 200:
                    self._accepted(batch, payload)
                    return
                text = payload[:300].decode("utf-8", "replace")
                if status == 401:
                    self.summary.aborted = (
                        f"HTTP 401 from the gateway ({text}): check --key / QUIP_WRITE_KEYS"
                    )
                    self.stopped = True
                    self._fail(batch, None)
                    return
                if status not in RETRYABLE_STATUSES:
                    self._fail(batch, f"HTTP {status}: {text}")
                    return
                problem = f"HTTP {status}: {text}"
            if delay is None:
                delay = min(10.0, 0.25 * 2 ** min(attempt - 1, 8)) * self._jitter.uniform(0.5, 1.5)
            self._warn_once(
                "gateway",
                f"POST {self.options.endpoint} failed ({problem}); each batch is retried "
                f"for up to {self.options.retry_for_s:g} s (--retry-for), then the run is "
                "aborted",
            )
            if time.monotonic() + delay > deadline:
                # The gateway (or its bus) has been unusable for retry_for_s: stop the run
                # rather than wait as long again for every batch still to send.
                self._fail(batch, f"gave up after {attempt} attempts: {problem}")
                self.summary.aborted = (
                    f"the gateway did not take a batch within {self.options.retry_for_s:g} s "
                    f"of retries ({problem})"
                )
                self.stopped = True
                return
            self.summary.retries += 1
            self._progress.refresh()
            await asyncio.sleep(delay)

    def _accepted(self, batch: Batch, payload: bytes) -> None:
        summary = self.summary
        try:
            result = orjson.loads(payload)
            accepted = int(result["accepted"])
            errors = result.get("errors", [])
            rejected_at = {int(error["index"]): str(error["reason"]) for error in errors}
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            self._fail(batch, f"unexpected 200 response: {payload[:200]!r}")
            return
        if accepted + len(rejected_at) != len(batch.events):
            summary.failures.append(
                f"gateway counted {accepted} accepted + {len(rejected_at)} rejected "
                f"of {len(batch.events)} events"
            )
        summary.batches_ok += 1
        summary.events_accepted += accepted
        summary.events_rejected += len(rejected_at)
        for reason in rejected_at.values():
            code = reason.partition(":")[0]
            summary.reject_reasons[code] = summary.reject_reasons.get(code, 0) + 1
        lines: list[bytes] = []
        for index, event in enumerate(batch.events):
            if index in rejected_at:
                continue
            kind = event["type"]
            if kind == "session_start":
                summary.sessions += 1
            elif kind == "playback_request":
                summary.plays += 1
            if self._record is not None:
                lines.append(orjson.dumps({**event, **batch.context}) + b"\n")
        if accepted:
            self._users.add(batch.user_id)
        if self._record is not None:
            self._record.write(b"".join(lines))
        self._progress.advance(len(batch.events))

    def _fail(self, batch: Batch, message: str | None) -> None:
        self.summary.batches_failed += 1
        self.summary.events_failed += len(batch.events)
        if message:
            self.summary.note_failure(f"{batch.user_id}: {message}")
        self._progress.advance(len(batch.events))
