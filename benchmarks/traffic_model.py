"""The traffic one simulated headset makes, measured on `quip simulate`'s own generator.

docs/scaling.md turns "10,000 concurrent headsets, 1M daily users" into events/s and
requests/s with these figures; they come from the same pure, seeded generator that the
simulator sends (quip/simulate/), so nothing is sent anywhere and a run takes seconds.

Reported:
- events, sessions and plays per active user-day, events per session, and the
  busiest hour's share of a day (peak factor = busiest hour / mean hour) from a historical
  plan of `--users` users over `--days` days;
- events/s of one running headset (the simulator's live calibration: session events over
  session time plus the gap before the next session);
- requests/s of one running headset and events per request when the SDK flushes every
  `--flush-s` seconds (live mode flushes every 2 s) and at the historical 2-minute flush;
- mean size of one event as JSON (what a request body carries per event).

Usage (from the repo root):
  .venv/bin/python -m benchmarks.traffic_model                 # 5,000 users, 7 days
Results: benchmarks/results/traffic-model-<UTC timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks._lib.run import result_path
from quip.simulate import (
    DAY_MS,
    HISTORICAL_FLUSH_MS,
    LIVE_FLUSH_S,
    Batch,
    Historical,
    calibrate,
    historical_items,
)
from quip.simulate.model import HOUR_MS


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--flush-s", type=float, default=LIVE_FLUSH_S)
    parser.add_argument("--output", type=Path, default=None)
    return parser.parse_args(argv)


def measure(users: int, days: int, seed: int, flush_s: float) -> dict[str, Any]:
    end_ms = int(datetime.now(UTC).timestamp() * 1000) // DAY_MS * DAY_MS
    flush_ms = int(flush_s * 1000)
    live = Historical(seed=seed, users=users, days=days, end_ms=end_ms, flush_ms=flush_ms)
    events = requests = event_bytes = 0
    user_days: set[tuple[str, int]] = set()
    sessions: set[str] = set()
    plays: set[str] = set()
    per_hour: Counter[int] = Counter()
    for item in historical_items(live):
        if not isinstance(item, Batch):
            continue
        requests += 1
        sessions.add(item.context["session_id"])
        for event in item.events:
            events += 1
            event_bytes += len(json.dumps({**event, **item.context}, separators=(",", ":")))
            user_days.add((item.user_id, event["ts"] // DAY_MS))
            if event["type"].startswith("playback_"):
                plays.add(event["props"]["play_id"])
            per_hour[event["ts"] // HOUR_MS] += 1
    historical = Historical(seed=seed, users=users, days=days, end_ms=end_ms)
    historical_requests = sum(isinstance(item, Batch) for item in historical_items(historical))
    calibration = calibrate(seed)
    session_s = calibration.mean_session_ms / 1000
    hours = max(1, days * 24)
    return {
        "events": events,
        "active_user_days": len(user_days),
        "events_per_user_day": round(events / len(user_days), 1),
        "sessions_per_user_day": round(len(sessions) / len(user_days), 2),
        "events_per_session": round(events / len(sessions), 1),
        "plays_per_user_day": round(len(plays) / len(user_days), 2),
        "peak_hour_factor": round(max(per_hour.values()) / (events / hours), 2),
        "headset_events_per_s": round(calibration.events_per_s, 4),
        "mean_session_s": round(session_s, 1),
        "flush_s": flush_s,
        "events_per_request": round(events / requests, 2),
        "headset_requests_per_s": round(calibration.events_per_s * requests / events, 4),
        "historical_flush_s": HISTORICAL_FLUSH_MS / 1000,
        "events_per_request_historical_flush": round(events / historical_requests, 2),
        "mean_event_json_bytes": round(event_bytes / events),
    }


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    figures = measure(args.users, args.days, args.seed, args.flush_s)
    output = args.output or result_path("traffic-model", datetime.now(UTC))
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(
        json.dumps({"benchmark": "traffic_model", "args": vars(args) | {"output": str(output)},
                    "figures": figures}, indent=2) + "\n",
    )  # fmt: skip
    for name, value in figures.items():
        print(f"{name:40} {value}")
    print(f"saved {output}")


if __name__ == "__main__":
    main()
