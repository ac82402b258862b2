"""The publishers the social, CMS and video services use to put messages on the bus
(SPEC §3): `ServicePublisher` sends to Kafka (cluster mode), `HttpServicePublisher` to
`POST /v1/services/{topic}` of `quip up` (embedded mode, whose bus is local). The caller
picks one; both check messages the same way and have the same methods.

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
    # quip up: async with HttpServicePublisher("http://127.0.0.1:8000", write_key=key) as ...

Contract (both):
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

Over HTTP (`HttpServicePublisher`, ingest/services.py has the endpoint's contract):
- The write key's project is every message's: leave `project` unset, or set it to that
  project (another one is refused by the server: `InvalidMessage`, nothing of that
  request published).
- Durability: a returned call means every message is written and fsync'ed on `quip up`'s
  bus. A batch goes as one request per topic and per `MAX_MESSAGES_PER_REQUEST` messages
  (or ~1 MB), each all or nothing, so a failed `publish_many` may have delivered some of
  them; re-publishing the whole batch is safe.
- Failure: `PublishError` for an answer that a retry may change (429, 503, 5xx, network
  errors, the request timeout; nothing is retried inside), or, with `retryable` False, one
  it cannot (unknown write key; `NoServiceEndpoint`: the URL is not `quip up`'s).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import aiohttp
import orjson
from aiokafka import AIOKafkaProducer

from schemas.services import (
    MAX_MESSAGES_PER_REQUEST,
    InvalidMessage,
    ServiceMessage,
    encode_message,
    message_key,
    topic_for,
)

# Under the endpoint's 1 MiB body limit, with room for the brackets and commas.
MAX_REQUEST_BYTES = 1_000_000


class PublishError(RuntimeError):
    """The bus did not confirm one or more messages; re-publishing them is safe. `retryable`
    is False when trying again cannot help (a configuration error)."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class NoServiceEndpoint(PublishError):
    """The URL serves no `POST /v1/services/{topic}` (HTTP 404 or 405): not `quip up`, e.g. a
    cluster gateway, whose services publish to Kafka instead."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


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


class _Lifecycle:
    """`async with publisher:` starts it and stops it."""

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()


class ServicePublisher(_Lifecycle):
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


class HttpServicePublisher(_Lifecycle):
    """Publishes to `<url>/v1/services/<topic>` with a write key (see the module docstring)."""

    def __init__(self, url: str, *, write_key: str, request_timeout_s: float = 15.0) -> None:
        self.url = url.rstrip("/")
        self.write_key = write_key
        self.request_timeout_s = request_timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers={
                    "Authorization": f"Bearer {self.write_key}",
                    "Content-Type": "application/json",
                },
                timeout=aiohttp.ClientTimeout(total=self.request_timeout_s),
            )

    async def stop(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def publish(self, message: ServiceMessage) -> None:
        """Send one message; returns once the bus has it."""
        await self.publish_many([message])

    async def publish_many(self, messages: Iterable[ServiceMessage]) -> int:
        """Check every message, then send them in order, one request per topic and chunk;
        returns how many the server accepted."""
        by_topic: dict[str, list[bytes]] = {}
        for message in messages:
            value = encode_message(message)  # raises InvalidMessage for anything wrong
            by_topic.setdefault(topic_for(message).name, []).append(value)
        if self._session is None:
            raise RuntimeError("HttpServicePublisher is not started: await start() first")
        accepted = 0
        for topic, values in by_topic.items():
            for chunk in _chunks(values):
                accepted += await self._post(self._session, topic, chunk)
        return accepted

    async def _post(self, session: aiohttp.ClientSession, topic: str, values: list[bytes]) -> int:
        endpoint = f"{self.url}/v1/services/{topic}"
        try:
            async with session.post(endpoint, data=b"[" + b",".join(values) + b"]") as response:
                status, payload = response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise PublishError(f"{endpoint}: {exc!r}") from exc
        if status == 200:
            return int(orjson.loads(payload)["accepted"])
        text = payload[:1000].decode("utf-8", "replace")
        if status == 400:
            raise InvalidMessage(f"{endpoint} refused the request: {text}")
        if status in (404, 405):
            raise NoServiceEndpoint(f"{endpoint}: HTTP {status}: no service endpoint here")
        retryable = status not in (401, 403, 413)
        raise PublishError(f"{endpoint}: HTTP {status}: {text}", retryable=retryable)


def _chunks(values: list[bytes]) -> Iterable[list[bytes]]:
    """Consecutive runs of at most MAX_MESSAGES_PER_REQUEST values and MAX_REQUEST_BYTES."""
    chunk: list[bytes] = []
    size = 0
    for value in values:
        if chunk and (
            len(chunk) == MAX_MESSAGES_PER_REQUEST or size + len(value) + 1 > MAX_REQUEST_BYTES
        ):
            yield chunk
            chunk, size = [], 0
        chunk.append(value)
        size += len(value) + 1
    if chunk:
        yield chunk
