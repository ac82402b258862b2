"""`quip simulate`: realistic VR headset traffic for a gateway (SPEC §7), deterministic per seed.

Two layers:

- **A pure generator** (no I/O, no clock: the end of the simulated window is a parameter).
  `historical_items(Historical(...))` yields the whole backfill in send order;
  `live_items(Live(...))` yields an endless stream in simulated time. Every random draw comes
  from `random.Random` instances seeded by strings derived from the seed (`"<seed>/user/<i>"`,
  `"<seed>/services"`, ...), so a user's life depends only on the seed and its index, and ids
  (event_id, session_id, play_id, message_id) are uuids made of those generators' bits: the
  same seed and window end (`--end`) give the same events, whatever the concurrency or
  timing of sending; re-sending them is deduplicated by the pipeline (same event_ids).
- **The sending loop** (`run_historical`, `run_live`): one request per `Batch` over
  concurrent keep-alive connections, retried for up to `--retry-for`, every batch not
  accepted counted in the `Summary`.

Modules, from the bottom up:

- `draws`: seeded ids and weighted picks;
- `devices`: the headset models and how each plays video (startup, refresh rates,
  dropped frames, error codes); `model`: users, retention and every probability
  (`Model`); `catalog`: the content played;
- `session`: one session's events and batches; `playback`: one play's events;
  `services`: the CMS and video services' messages;
- `historical`, `live`: the two generators;
- `gateway`, `summary`, `sender`, `service_sender`: sending and reporting;
- `run`: the two modes as the CLI (`quip/cli.py`) runs them.

This module is the package's interface for the CLI, the benchmarks and the tests.
"""

from quip.simulate.gateway import GatewayUnreachable
from quip.simulate.historical import (
    AGE_MARGIN_MS,
    HISTORICAL_FLUSH_MS,
    Historical,
    count_items,
    historical_items,
)
from quip.simulate.live import LIVE_FLUSH_S, Live, LiveEvent, calibrate, live_items
from quip.simulate.model import DAY_MS, SimulationError
from quip.simulate.playback import HEARTBEAT_MS
from quip.simulate.run import run_historical, run_live
from quip.simulate.sender import SendOptions, now_ms
from quip.simulate.session import MAX_BATCH_EVENTS, Batch, Item, ServiceItem
from quip.simulate.summary import Summary, write_json_summary

__all__ = [
    "AGE_MARGIN_MS",
    "DAY_MS",
    "HEARTBEAT_MS",
    "HISTORICAL_FLUSH_MS",
    "LIVE_FLUSH_S",
    "MAX_BATCH_EVENTS",
    "Batch",
    "GatewayUnreachable",
    "Historical",
    "Item",
    "Live",
    "LiveEvent",
    "SendOptions",
    "ServiceItem",
    "SimulationError",
    "Summary",
    "calibrate",
    "count_items",
    "historical_items",
    "live_items",
    "now_ms",
    "run_historical",
    "run_live",
    "write_json_summary",
]
