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

Live QoE series (InfluxDB, measurement `playback_qoe`)
    One point per (project, source partition, first-event minute, content_id,
    device_model), open plays included, rewritten whenever one of its plays changes;
    fields: plays, started, video_start_failures, exits_before_start, playback_failures,
    startup_ms_p50/p95 (only when a play started), rebuffer_ratio (only when watch_ms > 0),
    watch_ms. The partition tag keeps workers that own different partitions from
    overwriting each other's points; sum counts across it, and treat percentiles per tag.
    A minute's series is kept while any of its plays is held and for `series_horizon_ms`
    after the minute; a play first seen after that is left out of the live view (it is
    still written to `plays`) rather than overwrite the minute's point with partial data.

State (take_state_changes / load_state, msgpack): one key per held play
(`play:["project","play_id"]`) and one per live series (`qoe:[...]`); None deletes.

The QoE math is common/qoe.py; the table's columns schemas/plays.py.
Modules: `state` (a play and what each event adds), `codec` (changelog
and resting forms), `deadlines` (which plays are due), `processor` (the processor).
"""

from streams.processors.plays.codec import play_state_key, series_state_key
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
    SeriesKey,
    SeriesState,
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
    "SeriesKey",
    "SeriesState",
    "play_id_of",
    "play_state_key",
    "rows_as_dicts",
    "series_state_key",
]
