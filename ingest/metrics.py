"""Ingest counters (SPEC §7: accepted/rejected events). Reason labels are the validator's
fixed reason codes, so their cardinality is bounded."""

from prometheus_client import Counter

EVENTS_ACCEPTED = Counter(
    "ingest_events_accepted", "Events accepted and committed to the bus", ["source"]
)
EVENTS_REJECTED = Counter(
    "ingest_events_rejected",
    "Events rejected (sent to the DLQ) by reason code",
    ["source", "reason"],
)
REQUESTS_SHED = Counter(
    "ingest_requests_shed",
    "Requests answered 503 unread because QUIP_INGEST_MAX_IN_FLIGHT were in flight",
    ["source"],
)
