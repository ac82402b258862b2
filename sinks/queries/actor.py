"""Who the actor of an event is, for every insight query: the one expression to change
when identity merging (an anonymous id → a known user) arrives; and what counts an event
once (`EVENT_KEY`).

Today the actor is the event's `user_id` (SPEC §2: Segment `userId` else `anonymousId`,
PostHog `distinct_id`), counted through `user_hash` = cityHash64(project, user_id), the
column `events` derives for it (a 64-bit key counts faster than the string; FIELD-NOTES).
Merging would map `user_hash` through an identity table here, and every query of `events`
follows. The activity tables (migration 0002: what the fixed active-users and retention
read, and lifecycle and stickiness of any event) hold the same `user_hash` and need the
same mapping when they are written; the session summary (migration 0011) stores `ACTOR`
itself, computed by its materialized view.
"""

from __future__ import annotations

from typing import Final

ACTOR: Final = "user_hash"
# What counts an event once whatever copies `events` holds before merges: its id, hashed
# to 64 bits, which keeps the distinct-count sets of the insight queries a quarter of the
# size of the strings' (schema discovery over 10M events outgrew 18.16's memory limit with
# the strings). Two of 10M ids share a hash with probability ~3e-6.
EVENT_KEY: Final = "cityHash64(event_id)"


def first_order(ts: str, event_id: str) -> str:
    """An event's place in "earliest time, then smallest event_id" as one string, for
    `argMin`: the time as 16 fixed digits (offset by 2e15, so any time from year -29,700
    to 255,000), then the id. Strings compare in that order as the tuple (ts, event_id)
    would, and `argMin` over a String key is a fast path where a tuple key compares
    generic values row by row (benchmarks/README.md, "Insights made cheaper")."""
    return f"concat(toString({ts} + 2000000000000000), {event_id})"
