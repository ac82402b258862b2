"""The publisher the social, CMS and video services use to put messages on the bus (SPEC §3).

Usage::

    from schemas.publisher import ServicePublisher
    from schemas.services import EncodingJob

    publisher = ServicePublisher("127.0.0.1:9092", client_id="video-service")
    await publisher.start()
    try:
        await publisher.publish(
            EncodingJob(message_id="enc-81-done", job_id="job-81", content_id="c-7",
                        status="succeeded", ts=1764100000000, encode_ms=5120)
        )
        await publisher.publish_many(messages)  # one flush for the whole batch
    finally:
        await publisher.stop()

    # or: async with ServicePublisher(bootstrap, client_id="cms") as publisher: ...

Contract:
- Only the four Structs of `schemas/services.py` are accepted, and each is checked against
  its schema before anything is sent: a wrong type or an invalid message raises
  `InvalidMessage` and nothing of that call is sent (`publish_many` checks the whole batch
  first). The topic and the key (the topic's key field: user_id, content_id, job_id,
  user_id) follow from the message's type; the value is the message's JSON (msgspec).
- Durability: the producer is idempotent with acks=all, so a returned call means every
  message is on all in-sync replicas, and the producer's own retries add no duplicates.
- Failure: `publish`/`publish_many` raise `PublishError` when Kafka did not confirm a
  message within the request timeout (aiokafka retries inside that budget). Some messages
  of a failed `publish_many` may have been delivered; re-publishing the whole batch is
  safe because consumers count each `message_id` once.
- `start` raises if Kafka is unreachable (aiokafka's connection error); nothing is
  retried in the background.
- `topic_prefix` renames every topic to `<prefix><name>` (tests, staging on a shared
  cluster); production code leaves it empty and publishes to the registry's names.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from aiokafka import AIOKafkaProducer

from schemas.services import ServiceMessage, encode_message, message_key, topic_for


class PublishError(RuntimeError):
    """Kafka did not confirm one or more messages; re-publishing them is safe."""


@dataclass(frozen=True, slots=True)
class PublishedRecord:
    """Where a message landed."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class _Outgoing:
    topic: str
    key: bytes
    value: bytes


class ServicePublisher:
    def __init__(
        self,
        bootstrap: str,
        *,
        client_id: str,
        topic_prefix: str = "",
        request_timeout_ms: int = 15_000,
        max_request_size: int = 1024 * 1024,
    ) -> None:
        self.bootstrap = bootstrap
        self.client_id = client_id
        self.topic_prefix = topic_prefix
        self.request_timeout_ms = request_timeout_ms
        self.max_request_size = max_request_size
        self._producer: Any = None

    async def start(self) -> None:
        if self._producer is not None:
            return
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            client_id=self.client_id,
            acks="all",
            enable_idempotence=True,
            request_timeout_ms=self.request_timeout_ms,
            max_request_size=self.max_request_size,
        )
        try:
            await producer.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await producer.stop()
            raise
        self._producer = producer

    async def stop(self) -> None:
        """Deliver what is still buffered (bounded by the request timeout), then close."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def __aenter__(self) -> ServicePublisher:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    def topic_name(self, message: ServiceMessage) -> str:
        """The Kafka topic this publisher sends `message` to."""
        return f"{self.topic_prefix}{topic_for(message).name}"

    def _prepare(self, message: ServiceMessage) -> _Outgoing:
        value = encode_message(message)  # raises InvalidMessage for anything wrong
        return _Outgoing(self.topic_name(message), message_key(message), value)

    def _started(self) -> Any:
        if self._producer is None:
            raise RuntimeError("ServicePublisher is not started: await start() first")
        return self._producer

    async def publish(self, message: ServiceMessage) -> PublishedRecord:
        """Send one message and wait for Kafka's acknowledgement."""
        outgoing = self._prepare(message)
        producer = self._started()
        try:
            metadata = await producer.send_and_wait(
                outgoing.topic, value=outgoing.value, key=outgoing.key
            )
        except Exception as exc:
            raise PublishError(f"{outgoing.topic}: not confirmed by Kafka: {exc!r}") from exc
        return PublishedRecord(outgoing.topic, metadata.partition, metadata.offset)

    async def publish_many(self, messages: Iterable[ServiceMessage]) -> list[PublishedRecord]:
        """Send a batch: check every message, enqueue them all, flush once, then report.
        Returns one PublishedRecord per message, in order."""
        batch = [self._prepare(message) for message in messages]
        producer = self._started()
        deliveries: list[asyncio.Future[Any]] = []
        try:
            for outgoing in batch:
                # send() only enqueues (it waits only while the buffer is full).
                deliveries.append(
                    await producer.send(outgoing.topic, value=outgoing.value, key=outgoing.key)
                )
            await producer.flush()
        except Exception as exc:
            for delivery in deliveries:
                delivery.cancel()
            raise PublishError(f"batch of {len(batch)} not confirmed by Kafka: {exc!r}") from exc
        results = await asyncio.gather(*deliveries, return_exceptions=True)
        failures = [result for result in results if isinstance(result, BaseException)]
        if failures:
            failure = failures[0]
            raise PublishError(
                f"{len(failures)} of {len(batch)} messages not confirmed by Kafka: {failure!r}"
            ) from failure
        published: list[PublishedRecord] = []
        for outgoing, metadata in zip(batch, results, strict=True):
            assert not isinstance(metadata, BaseException)
            published.append(PublishedRecord(outgoing.topic, metadata.partition, metadata.offset))
        return published
