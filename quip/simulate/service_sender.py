"""Sending the simulated services' messages (social, CMS, video, e-mail) with the
project's publishers: to Kafka (`ServicePublisher`) when a bootstrap is given (cluster
mode), else over HTTP to the same URL as the events (`HttpServicePublisher`, `quip up`'s
`POST /v1/services/{topic}`, with the write key). A URL without that endpoint (a cluster
gateway) answers 404: the messages are then only counted, as not sent.

Messages are queued by the run (`submit`) and published by one task in batches of up to
500, each batch retried for up to `retry_for_s`; what is still refused then, or everything
when Kafka cannot be reached for that long, is counted as failed in the `Summary`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Final

from quip.simulate.summary import Summary
from schemas.publisher import (
    HttpServicePublisher,
    NoServiceEndpoint,
    PublishError,
    ServicePublisher,
)
from schemas.services import InvalidMessage, ServiceMessage

PUBLISH_BATCH: Final = 500


class ServiceSender:
    """Use `start()`, `submit()` per message, then `close()` (waits for everything submitted
    to be published or counted as failed); `cancel()` if the run fails."""

    def __init__(
        self,
        kafka_bootstrap: str | None,
        url: str,
        write_key: str,
        summary: Summary,
        retry_for_s: float,
        warn_once: Callable[[str, str], None],
    ) -> None:
        self.kafka_bootstrap = kafka_bootstrap
        self.url = url
        self.write_key = write_key
        self.summary = summary
        self.retry_for_s = retry_for_s
        self._warn_once = warn_once
        self._queue: asyncio.Queue[ServiceMessage | None] = asyncio.Queue(10_000)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._publish())

    async def submit(self, message: ServiceMessage) -> None:
        """Queue a message (waits while 10,000 are queued)."""
        self.summary.services_generated += 1
        await self._queue.put(message)

    async def close(self) -> None:
        if self._task is not None:
            await self._queue.put(None)
            await self._task

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _publish(self) -> None:
        publisher: ServicePublisher | HttpServicePublisher
        if self.kafka_bootstrap:
            where = f"Kafka at {self.kafka_bootstrap}"
            publisher = ServicePublisher(self.kafka_bootstrap, client_id="quip-simulate")
        else:
            where = self.url
            publisher = HttpServicePublisher(self.url, write_key=self.write_key)
        deadline = time.monotonic() + self.retry_for_s
        attempt = 0
        while True:
            try:
                await publisher.start()
                break
            except Exception as exc:
                attempt += 1
                self._warn_once(
                    "kafka",
                    f"{where} unreachable ({exc!r}); retrying for up to "
                    f"{self.retry_for_s:g} s (--retry-for) before the service "
                    "messages are counted as failed",
                )
                if time.monotonic() > deadline:
                    self.summary.services_note = f"{where} unreachable: {exc!r}"
                    await self._drain(count_failed=True)
                    return
                await asyncio.sleep(min(10.0, 0.5 * 2**attempt))
        try:
            closing = False
            while not closing:
                message = await self._queue.get()
                if message is None:
                    break
                batch = [message]
                while len(batch) < PUBLISH_BATCH and not self._queue.empty():
                    more = self._queue.get_nowait()
                    if more is None:
                        closing = True
                        break
                    batch.append(more)
                try:
                    await self._publish_batch(publisher, batch)
                except NoServiceEndpoint:
                    self.summary.services_note = (
                        f"not sent: {self.url} has no service endpoint (a cluster gateway: "
                        "pass --kafka-bootstrap)"
                    )
                    await self._drain(count_failed=False)
                    return
        finally:
            await publisher.stop()

    async def _publish_batch(
        self, publisher: ServicePublisher | HttpServicePublisher, batch: list[ServiceMessage]
    ) -> None:
        """Raises NoServiceEndpoint; any other failure is counted once retries are over."""
        deadline = time.monotonic() + self.retry_for_s
        attempt = 0
        while True:
            try:
                await publisher.publish_many(batch)
            except NoServiceEndpoint:
                raise
            except (PublishError, InvalidMessage) as exc:
                attempt += 1
                self._warn_once(
                    "publish",
                    f"publishing service messages failed ({exc}); each batch is "
                    f"retried for up to {self.retry_for_s:g} s (--retry-for)",
                )
                retryable = isinstance(exc, PublishError) and exc.retryable
                if not retryable or time.monotonic() > deadline:
                    self.summary.services_failed += len(batch)
                    self.summary.note_failure(f"service messages: {exc}")
                    return
                await asyncio.sleep(min(10.0, 0.5 * 2**attempt))
            else:
                self.summary.services_published += len(batch)
                return

    async def _drain(self, *, count_failed: bool) -> None:
        """Take the rest of the queue without sending it (failed, or only not sent)."""
        while True:
            message = await self._queue.get()
            if message is None:
                return
            if count_failed:
                self.summary.services_failed += 1
