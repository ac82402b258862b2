"""Plays: one row per play for ClickHouse (`plays`) and a live 1-minute QoE series for
InfluxDB (`playback_qoe`), with the SPEC §4 playback-quality semantics.

What belongs to a play
    An event whose type starts with `playback_` and whose props carry a non-empty string
    `play_id`; the play is `(project, play_id)`. Other events only advance the clock.

A play's row is a pure function of the set of its distinct events (by event_id), so the
order events arrive in, duplicates and replays never change it:
    - first event = the smallest `(ts, event_id)`; it gives `first_ts` (day/minute the
      play is attributed to), `user_id`, `device_model`, `app_version`, `region`, and
      what filters of `POST /v1/insights/playback` read: `type`, `os`, `session_id`, the
      `source` of the record it came in, and its props flattened as `events` stores them
      (`first_event_props`);
    - `content_id` comes from the earliest event (same order) that carries one;
    - start = the earliest `playback_start`; "before start" compares event times: a fatal
      `playback_error` with `ts < start ts` (or with no start at all) is a
      video_start_failure, one at or after the start a playback_failure. The earliest fatal
      error decides, so the two are exclusive; `started` stays "has a playback_start";
    - exit_before_start = ended without a start and without a fatal error; only ended plays
      are written, so it is simply "no start and no fatal error" on a row;
    - durations, startup and bitrates are rounded to whole milliseconds / kbps on the way
      in, so every sum is an exact integer whatever the order;
    - QoE beyond the counts: down/upshifts (quality changes with to_kbps < / > from_kbps,
      numbers only), the play's distinct error codes (any `playback_error`; the smallest
      MAX_ERROR_CODES), frames rendered and dropped with the played_ms of the heartbeats
      that report them, and the experience score with its sub-scores in hundredths
      (`PlayState.scores`, README "Experience score"), all functions of the event set;
    - `version` = 2 x the number of distinct events applied: a later row for the same play
      always carries more events and a higher version, a replay yields the identical row
      with the same version.

When a play is written (only closed plays appear in `plays`)
    A play closes at the first flush after it has a `playback_end`, a fatal error, or has
    been idle for `idle_timeout_ms`: `last ts + timeout < event-time watermark` or
    `last received_at + timeout < now_ms` (processing time, so a stream that stops still
    closes its plays). The watermark is the largest `min(ts, received_at)` seen, so a
    client clock running ahead cannot close everyone's plays early. Open plays are not
    written: the `plays` table holds settled plays, the Influx series is the live view.

Late events, duplicates, replays
    Closed plays are kept for a grace period (default 2 x idle timeout, in both event time
    and arrival time) with their event-id set. A late event merges into the kept state and
    the play is re-emitted with a higher version (an idle-closed play re-opens until it is
    idle again); ReplacingMergeTree(version) keeps the newest row per
    (project, play_id, day). When a late event moves a play to another (earlier) day, a
    tombstone row (`deleted = 1`, version 2n - 1, the previous row's first_ts) is written
    under the old day's key, so each play has exactly one live key and day-filtered queries
    stay exact whatever the merge state. Records at or before the last position applied
    to a play (per partition) are skipped: a replay after a crash cannot double count.
    Event ids are kept as 64-bit hashes while the play is held, closed or not, because a
    client retry of the batch that closed a play arrives after the close. An event for a
    play already purged starts a new state; its row has fewer events, hence a lower
    version, and loses to the full row under the same day key (the late data is lost).
    Known gap: if those stragglers begin on a later UTC day than the play (a play across
    midnight whose tail arrives more than the grace period late), they form a second row.

Live series (InfluxDB, measurement `playback_qoe`)
    One point per (project, source partition, minute, content_id, device_model, write
    batch). Its QoE fields count the plays whose first event is in the minute, open plays
    included, rewritten whenever one of them changes: plays, started,
    video_start_failures, exits_before_start, playback_failures, startup_ms_p50/p95 (only
    when a play started), rebuffer_ratio (only when watch_ms > 0), watch_ms. Its field
    `viewers` = the plays of that batch whose [first event, last event] spans the minute
    (SPEC §4 `concurrent_viewers`), from each play's span as the processor holds it,
    rewritten when a play grows into or leaves the minute. A write carries the fields of
    what changed (InfluxDB keeps the point's other fields): a minute that only plays
    begun earlier span has `viewers` and no QoE fields.
    The partition tag keeps workers that own different partitions from overwriting each
    other's points.
    Write batches (concurrency.py) keep sums exact for late plays: a play's contribution
    to a minute belongs to the live batch (the point at the minute) when the record that
    brought it arrived within `series_horizon_ms` after the minute, else to a late batch
    of its own (tagged `late=true`, a few ms into the minute); the batch is a function of
    the record, so replays land in the same batches. A point is only rewritten while its
    batch is held (any of its plays held, or its window less than the grace behind), so
    a settled point is never overwritten with part of its plays. Summed over every tag and
    point of a minute, `plays` equals the plays whose first event is in that minute and
    `viewers` the concurrent viewers of the minute; percentiles are per point. Known gap,
    the rows' one: events of a play already purged form a new state, which the series
    count as another play.

State (take_state_changes / load_state, msgpack): one key per held play
(`play:["project","play_id"]`), and one per held point (`point:[...]`, QoE and viewers)
that counts a forgotten play; None deletes. An older changelog's separate QoE
(`qoe:[...]`, the batch left out for the live one) and viewers (`viewers:[...]`) entries
still load, and are replaced by the point's entry at the next changes. A point whose
plays are all held has no key: `load_state` counts each restored play back into the
points it was counted in (so each key is loaded once).
Built with `live_series=False` (`quip up`, which has no InfluxDB) the processor computes
no series: no points, no series state, plays keys only.

The QoE math is common/qoe.py, concurrent viewers and write batches
common/concurrency.py; the table's columns schemas/plays.py.
Modules: `state` (a play and what each event adds), `codec` (changelog and resting
forms), `deadlines` (which plays are due), `processor` (the processor).
"""

from streams.processors.plays.codec import (
    play_state_key,
    point_state_key,
    qoe_state_key,
    viewers_state_key,
)
from streams.processors.plays.processor import (
    DEFAULT_IDLE_TIMEOUT_MS,
    QOE_MEASUREMENT,
    UNKNOWN_TAG,
    PlaysProcessor,
    rows_as_dicts,
)
from streams.processors.plays.state import (
    MAX_ERROR_CODE_LENGTH,
    MAX_ERROR_CODES,
    PlayState,
    PointState,
    SeriesKey,
    play_id_of,
)

__all__ = [
    "DEFAULT_IDLE_TIMEOUT_MS",
    "MAX_ERROR_CODES",
    "MAX_ERROR_CODE_LENGTH",
    "QOE_MEASUREMENT",
    "UNKNOWN_TAG",
    "PlayState",
    "PlaysProcessor",
    "PointState",
    "SeriesKey",
    "play_id_of",
    "play_state_key",
    "point_state_key",
    "qoe_state_key",
    "rows_as_dicts",
    "viewers_state_key",
]
