"""Who the actor of an event is, for every insight query: the one expression to change
when identity merging (an anonymous id → a known user) arrives.

Today the actor is the event's `user_id` (SPEC §2: Segment `userId` else `anonymousId`,
PostHog `distinct_id`), counted through `user_hash` = cityHash64(project, user_id), the
column `events` derives for it (a 64-bit key counts faster than the string; FIELD-NOTES).
Merging would map `user_hash` through an identity table here, and every query follows.
"""

from __future__ import annotations

from typing import Final

ACTOR: Final = "user_hash"
