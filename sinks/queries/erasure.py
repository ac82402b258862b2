"""Erase one user's rows (GDPR; SPEC §5 `DELETE /v1/users/{user_id}`).

Every table that holds rows of one user, and how that user is recognised there:

  table             key of the user                                    written by
  events            project, user_id                                   EventsProcessor
  plays             project, user_id                                   PlaysProcessor
  funnel_progress   project, user_hash = cityHash64(project, user_id)  FunnelsProcessor
  user_activity     project, user_hash = cityHash64(project, user_id)  MV of user_activity_input
  user_first_seen   project, user_hash = cityHash64(project, user_id)  MV of user_activity_input
  session_summary   project, user_hash = cityHash64(project, user_id)  MV of events
  service_messages  project, key_id = user_id, on the topics keyed by  ServiceMetricsProcessor
                    user_id (social.notifications, notifications.email)

(`user_activity_input` is a Null table and keeps nothing; the hash is the one the tables'
DEFAULT and materialized views compute, so the server derives it from the same strings.)

How, by engine (`Capabilities.supports_lightweight_delete`, ClickHouse ≥ 22.8):
- current servers and chDB: `DELETE FROM <table> WHERE ...` (lightweight: rows are masked
  at once and dropped at the next merges; the statement returns when the mask is written);
- clickhouse-server 18.16: `ALTER TABLE <table> DELETE WHERE ...`, a mutation that the
  server applies in the background (the statement returns when it is scheduled; until it
  is done, queries may still see the rows). 18.16 rewrites every part of the table for a
  mutation, so each erasure costs a table rewrite there.
Schema discovery's per-day summaries (migration 0012: `discovery_event_days`,
`discovery_days`) hold users inside aggregate states, not by key: an erasure drops the
project's rows there (the query path summarizes the days again), then records the user's
days as changed (sinks/changes.py), which invalidates any summary computed before the
deletion took effect (sinks/queries/summaries.py).

A table where the user has no row gets no statement: repeating an erasure is cheap and
idempotent (a repeat while an 18.16 mutation is still pending schedules a harmless second
one). `pending_mutations` tells when the background work is finished.

Values always go through `%(name)s` parameters; table names come from the fixed list here.

The API runs `erase_user` at once; the erasure record it puts on the bus makes the worker
(or `quip up`'s runner) drop the user's state and run it again (`erase_users`) after
everything before it in the user's partition is stored, and a consumer group replaying
the topic meets the record again after the user's events. Not erased: the raw events in
Kafka until its retention.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from schemas.topics import NOTIFICATIONS_EMAIL, SOCIAL_NOTIFICATIONS
from sinks.capabilities import Capabilities
from sinks.changes import as_date, record_changes
from sinks.clickhouse import ClickHouse
from sinks.migrations.v0012_discovery_summary import SUMMARY_TABLES

_BY_ID: Final = "project = %(project)s AND user_id = %(user_id)s"
_BY_HASH: Final = "project = %(project)s AND user_hash = cityHash64(%(project)s, %(user_id)s)"
_BY_KEY: Final = "project = %(project)s AND key_id = %(user_id)s AND topic IN %(user_topics)s"

# table -> condition selecting the user's rows
ERASURE_TARGETS: Final[dict[str, str]] = {
    "events": _BY_ID,
    "plays": _BY_ID,
    "funnel_progress": _BY_HASH,
    "user_activity": _BY_HASH,
    "user_first_seen": _BY_HASH,
    "session_summary": _BY_HASH,
    "service_messages": _BY_KEY,
}
_BY_PROJECT: Final = "project = %(project)s"
# Service topics whose key (key_id) is a user id; cms and video are keyed by content/job.
USER_KEYED_TOPICS: Final = (SOCIAL_NOTIFICATIONS.name, NOTIFICATIONS_EMAIL.name)


def erasure_statement(caps: Capabilities, table: str, condition: str) -> str:
    """The statement deleting the rows of `table` matching `condition` on this engine."""
    if caps.supports_lightweight_delete:
        return f"DELETE FROM {table} WHERE {condition}"
    return f"ALTER TABLE {table} DELETE WHERE {condition}"


def erase_user(ch: ClickHouse, project: str, user_id: str) -> list[str]:
    """Delete (or schedule the deletion of) every row of `user_id` in `project`; returns
    the tables that got a statement, in ERASURE_TARGETS order, then the summaries.
    Raises ValueError for an empty user id, ClickHouseError when a statement fails
    (earlier tables stay erased or scheduled: calling again finishes the job)."""
    if not user_id:
        raise ValueError("user_id must not be empty")
    caps = Capabilities(ch.server_version())
    params = {"project": project, "user_id": user_id, "user_topics": USER_KEYED_TOPICS}
    days = ch.execute(f"SELECT DISTINCT day FROM events WHERE {_BY_ID}", params)
    erased = []
    targets = [*ERASURE_TARGETS.items(), *((table, _BY_PROJECT) for table in SUMMARY_TABLES)]
    for table, condition in targets:
        found = ch.execute(
            f"SELECT count() FROM (SELECT 1 FROM {table} WHERE {condition} LIMIT 1)", params
        )
        if not int(found[0][0]):
            continue
        ch.execute(erasure_statement(caps, table, condition), params)
        erased.append(table)
    record_changes(ch, [(project, as_date(day)) for (day,) in days])
    return erased


def pending_mutations(ch: ClickHouse, tables: Sequence[str] = tuple(ERASURE_TARGETS)) -> int:
    """Mutations not yet done on `tables` of this database (0 once erasures are applied)."""
    rows = ch.execute(
        "SELECT count() FROM system.mutations "
        "WHERE database = %(database)s AND table IN %(tables)s AND is_done = 0",
        {"database": ch.database, "tables": tuple(tables)},
    )
    return int(rows[0][0])


def erase_users(ch: ClickHouse, users: Sequence[tuple[str, str]]) -> None:
    """The worker's side of an erasure: (project, user_id) pairs, in order."""
    for project, user_id in users:
        erase_user(ch, project, user_id)
