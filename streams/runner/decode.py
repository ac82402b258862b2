"""Decode: a fetched message's value → what the stages' processors take.

A `Decoder` names the pipeline (metrics label, dead-letter source) and pairs a decode
with how a decoded message is applied to the processors of its partition. `decode`
raises for a value it cannot read: the core counts it, logs it and sends it to the dead
letters (`undecodable_letter`) once the batch is stored; the stages never see it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from schemas.events import DeadLetter, EventRecord, decode_record, encode_dead_letter
from streams.processors.base import Position, apply_record
from streams.runner.protocols import Message

UNDECODABLE_KEY = b"unknown"


@dataclass(frozen=True, slots=True)
class Decoder:
    name: str
    decode: Callable[[Message], Any]
    # (decoded, its position, the partition's processors) → events it counts for.
    apply: Callable[[Any, Position, Sequence[Any]], int]


def _decode_event_record(message: Message) -> EventRecord:
    return decode_record(message.value or b"")


def _service_message(message: Message) -> Message:
    return message  # the services processor validates (and dead-letters) itself


def _apply_service_message(
    message: Message, position: Position, processors: Sequence[Any]
) -> int:
    for processor in processors:
        processor.process(message.topic, message.value or b"", position)
    return 1


EVENT_RECORDS = Decoder("events", _decode_event_record, apply_record)
SERVICE_MESSAGES = Decoder("services", _service_message, _apply_service_message)


def undecodable_letter(
    consumer: str, pipeline: str, message: Message, exc: Exception, now_ms: int
) -> bytes:
    """The `analytics.events.dlq` value for an undecodable record (its key:
    UNDECODABLE_KEY); `consumer` names who read it ("worker", "embedded")."""
    raw = message.value or b""
    return encode_dead_letter(
        DeadLetter(
            project="unknown",
            received_at=now_ms,
            index=-1,
            reason=f"undecodable_record: {exc}"[:500],
            raw=raw.decode("utf-8", "replace"),
            source=f"{consumer}:{pipeline}@{message.partition}/{message.offset}",
        )
    )
