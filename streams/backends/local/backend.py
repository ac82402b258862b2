"""`local_backend`: the pipelines of `quip up` on the local bus and SQLite."""

from __future__ import annotations

from collections.abc import Callable

from schemas.services import SERVICE_TOPICS
from schemas.topics import ANALYTICS_EVENTS
from streams.backends.local.bus import LocalBus
from streams.backends.local.dead_letters import BusDeadLetters
from streams.backends.local.source import BusReaders, LocalBusSource
from streams.backends.local.state import SqliteState
from streams.runner.build import Backend
from streams.runner.protocols import Stores

# The events pipeline's position keeps the name it had before there were two pipelines,
# so an existing data directory goes on where it was.
EVENTS_POSITION = "bus_position"
SERVICES_POSITION = "services_bus_position"
# A quiet bus still closes idle plays within about this long.
TICK_INTERVAL_S = 1.0


def local_backend(bus: LocalBus, database: SqliteState, stores: Callable[[], Stores]) -> Backend:
    readers = BusReaders(bus)
    events_state = database.for_pipeline(EVENTS_POSITION)
    services_state = database.for_pipeline(SERVICES_POSITION)
    return Backend(
        events_source=LocalBusSource(
            readers, "events", [ANALYTICS_EVENTS.name], events_state.position()
        ),
        events_state=events_state,
        services_source=LocalBusSource(
            readers, "services", SERVICE_TOPICS, services_state.position()
        ),
        services_state=services_state,
        stores=stores,
        dead_letters=BusDeadLetters(bus),
        consumer="embedded",
        tick_interval_s=TICK_INTERVAL_S,
    )
