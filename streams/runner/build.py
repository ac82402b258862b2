"""`build_pipelines`: the two pipelines of a worker (Kafka) or of `quip up` (local bus),
wired the same way over a backend.

- events: `analytics.events` → events, activity, plays (stateful), funnels (stateful,
  when funnels are defined);
- services: the four service topics → the services processor (stateless: its table
  deduplicates), whose dead letters go to the dead-letter topic.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from common.settings import Settings
from schemas.events import encode_dead_letter
from schemas.funnels import load_funnels
from schemas.output import ProcessorOutput
from streams.metrics import ServiceMetricsExport
from streams.play_metrics import PlayMetrics
from streams.processors.activity import ActivityProcessor
from streams.processors.events import EventsProcessor
from streams.processors.funnels import FunnelsProcessor
from streams.processors.plays import PlaysProcessor
from streams.processors.services import ServiceMetricsProcessor
from streams.runner.decode import EVENT_RECORDS, SERVICE_MESSAGES, Decoder
from streams.runner.feed import Stage
from streams.runner.fetch import ROOM_WAIT_S
from streams.runner.pipeline import Pipeline
from streams.runner.protocols import DeadLetters, Source, StateBackend, Stores

TICK_INTERVAL_S = 5.0


@dataclass
class Backend:
    """What the pipelines run on. `consumer` names the mode in dead letters."""

    events_source: Source
    events_state: StateBackend
    services_source: Source
    services_state: StateBackend  # its stage is stateless; a backend may keep positions
    stores: Callable[[], Stores]  # one per pipeline
    dead_letters: DeadLetters
    consumer: str
    # How long a full pipeline may go without fetching before its source is paused.
    max_fetch_gap_s: float = ROOM_WAIT_S
    tick_interval_s: float = TICK_INTERVAL_S


@dataclass
class Pipelines:
    events: Pipeline
    services: Pipeline
    services_processor: ServiceMetricsProcessor


def event_stages(
    settings: Settings, *, play_grace_ms: int | None = None, live_series: bool = True
) -> list[Stage]:
    """`play_grace_ms`: how long a closed play stays in memory (the processor's default:
    twice the idle timeout); `live_series`: whether plays compute the InfluxDB series."""
    idle_timeout_ms = settings.play_idle_timeout_s * 1000

    def plays() -> PlaysProcessor:
        return PlaysProcessor(
            idle_timeout_ms=idle_timeout_ms, grace_ms=play_grace_ms, live_series=live_series
        )

    stages = [
        Stage("events", EventsProcessor),
        Stage("activity", ActivityProcessor),
        Stage(
            "plays",
            plays,
            stateful=True,
            # A play is rewritten while the processor holds it (twice the idle timeout
            # after its last event); twice that again leaves room for the worker's lag.
            observe=PlayMetrics(horizon_ms=4 * idle_timeout_ms).observe,
        ),
    ]
    funnels = load_funnels(settings.funnels_file) if settings.funnels_file else []
    if funnels:
        stages.append(
            Stage(
                "funnels",
                lambda: FunnelsProcessor(funnels, max_event_age_days=settings.max_event_age_days),
                stateful=True,
            )
        )
    return stages


def services_stage(processor: ServiceMetricsProcessor, consumer: str) -> Stage:
    export = ServiceMetricsExport()

    def observe(output: ProcessorOutput) -> None:
        export.update(
            delivered_total=processor.delivered_total,
            published_per_minute=processor.published_per_minute(int(time.time() * 1000)),
        )

    def letters() -> list[tuple[bytes, bytes]]:
        received_at = int(time.time() * 1000)
        return [
            (letter.topic.encode(), encode_dead_letter(letter.dead_letter(consumer, received_at)))
            for letter in processor.take_dead_letters()
        ]

    return Stage("services", lambda: processor, observe=observe, take_letters=letters)


def build_pipelines(
    settings: Settings,
    backend: Backend,
    *,
    play_grace_ms: int | None = None,
    live_series: bool = True,
) -> Pipelines:
    def pipeline(
        name: str, stages: list[Stage], decoder: Decoder, source: Source, state: StateBackend
    ) -> Pipeline:
        return Pipeline(
            name,
            stages,
            decoder,
            backend.stores(),
            source=source,
            state=state,
            dead_letters=backend.dead_letters,
            consumer=backend.consumer,
            tick_interval_s=backend.tick_interval_s,
            room_wait_s=min(ROOM_WAIT_S, backend.max_fetch_gap_s),
            measure_loop=decoder is EVENT_RECORDS,
        )

    processor = ServiceMetricsProcessor()
    return Pipelines(
        events=pipeline(
            "events",
            event_stages(settings, play_grace_ms=play_grace_ms, live_series=live_series),
            EVENT_RECORDS,
            backend.events_source,
            backend.events_state,
        ),
        services=pipeline(
            "services",
            [services_stage(processor, backend.consumer)],
            SERVICE_MESSAGES,
            backend.services_source,
            backend.services_state,
        ),
        services_processor=processor,
    )
