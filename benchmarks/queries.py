"""Query API benchmark: p50/p95 latency of every SPEC §5 read endpoint over a seeded
database, cold (API cache empty) and warm (API cache hit), on chDB and on clickhouse-server.

What it needs: nothing for `--engine chdb` (chDB runs in this process under a temporary
directory, or --chdb-path); for `--engine server` a clickhouse-server at --clickhouse-url
(deploy/local/services.sh up; the script never starts or stops it).

What it creates, and removes before exiting (unless --keep):
  - a database --database (default `bench_queries`) on each engine, migrated with
    sinks.migrate and seeded with generated data (an existing database of that name is
    dropped first, unless --reuse finds it already seeded);
  - on chDB, its data directory (a temporary one unless --chdb-path is given);
  - a temporary predefined-funnels file (QUIP_FUNNELS_FILE of the app under test).

Seeding (bulk, server-side SQL; the same text runs on 18.16 and chDB — no JSON functions,
toStartOfInterval, range(a, b) or DateTime64):
  1. `events`: N events (--events) of U users (--users) over --days days ending yesterday
     (UTC), generated with INSERT … SELECT from numbers() and cityHash64. The unit is a
     session: a user (power-law activity: a few heavy users, every user active), a day, a
     time of day (peaks mid-day), 4..28 events 5..60 s apart. A session starts with
     `session_start`; 45 % of sessions hold a play (`playback_request` → start / fatal
     error / end, then heartbeats, rebuffers, quality changes, an end or a late fatal
     error); the other events are page views, gestures and custom events. Props are compact
     JSON built with concat, as orjson writes them (play_id, content_id, startup_ms,
     bitrate_kbps, played_ms, duration_ms, page, gesture, price, tier, …), and the
     flattened props arrays of migration 0009 (props_keys/values, props_num_keys/values)
     are built from the same per-type list in the same SELECT (array literals, no JSON
     functions); a sample is then checked against schemas.props.flatten_props. `os`
     follows the user's device, `source` the session (native / segment / posthog).
  2. `user_activity_input` ← SELECT DISTINCT project, user_id, day FROM events (the
     materialized views fill user_activity and user_first_seen), as the activity processor's
     rows would.
  3. `plays`: one row per play session (~2.8 % of N: 280k at 10M) with its QoE fields
     derived from the same session hashes, plus an older, lower-version row for 10 % of them
     (a re-emitted play; ReplacingMergeTree keeps the newest); its first-event columns
     (migration 0010) are those of the play's `playback_request` in `events`.
  4. `funnel_progress` for the predefined funnel (the ad-hoc funnel's definition) by
     windowFunnel per (user, day) over that day's events: chains that cross midnight are
     missed, so the numbers approximate the processor's; the table's size is what matters.
  5. `service_messages`: N/100 messages (100k at 10M) of the four service topics.
  Then it waits until background merges have settled (no merge running and the same part
  count over three polls 2 s apart; at most --settle-timeout s) and records parts, rows and
  bytes per table. A settled table is not one part per partition (chDB leaves the 10M
  events in ~5 parts per day, 18.16 merges them into one); --optimize runs OPTIMIZE … FINAL
  on every table first to measure the fully merged state.

Measurement, per engine, for each query of QUERIES (realistic dashboard parameters):
  - through the API: httpx.AsyncClient over ASGITransport to create_app(settings, engine),
    run inside the app's lifespan as uvicorn runs it (its start-up settings apply), with a
    read key of the project (in-process, no sockets: HTTP parsing, auth, validation, the
    engine pool's worker thread and serialization are included);
      first = the very first request of that query shape on the engine;
      cold  = --repeat requests, the API cache cleared before each (X-Cache: miss);
      warm  = --warm-repeat requests answered from the API cache (X-Cache: hit);
  - raw: the sinks.queries function called directly on the engine, --repeat times (SQL
    plus the Python around it), so the API's overhead is the difference with cold; with
    the CPU time per call (chDB: this process's, the engine's threads included; server:
    the server's own, from system.query_log), which holds on a busy shared box.
  ClickHouse's own caches (marks, page cache) are warm after the first call: "cold" is the
  API cache's state, as in the issue. Percentiles are nearest-rank (as benchmarks/
  ingest.py): with --repeat 7, p95 is the slowest of the 7 runs.

Targets (issue "benchmarks/queries.py", 2-core machine), checked on the API cold p95:
active users, retention and playback < 200 ms; the ad-hoc 4-step funnel over 30 days
< 1 s. Insights (issue 15, SPEC §5.1, 30 days): trends with a filter and a breakdown by
device_model < 300 ms on chDB, < 1 s on 18.16; unique users per day with a props filter
< 300 ms on chDB; the 4-step funnel by device_model with time to convert < 1.5 s;
retention with start/return events, lifecycle, stickiness, sessions < 500 ms; schema
discovery < 300 ms. Playback insight (issue 17, SPEC §5.1, 30 days) with a filter and a
breakdown: < 300 ms on chDB, < 1 s on 18.16. A query's targets are per engine (QuerySpec.targets).

Usage (from the repo root):
  .venv/bin/python -m benchmarks.queries --events 1000000 --engine both     # quick
  .venv/bin/python -m benchmarks.queries --engine chdb                      # 10M events
  .venv/bin/python -m benchmarks.queries --engine server --keep             # keep the data
  .venv/bin/python -m benchmarks.queries --engine server --reuse            # measure again
    (--reuse applies the migrations the kept database lacks before measuring)
Results: benchmarks/results/queries-<timestamp>.json (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import string
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import httpx
import msgspec
from pydantic import SecretStr

from api.app import create_app
from api.cache import QueryCache
from api.context import ApiContext
from benchmarks._lib.run import git_commit, result_path
from benchmarks._lib.stats import percentile
from common.settings import Mode, Settings
from schemas.funnels import FunnelDefinition, FunnelStep
from schemas.props import flatten_props
from sinks.clickhouse import (
    ClickHouse,
    ClickHouseError,
    EmbeddedClickHouse,
    ServerClickHouse,
    check_identifier,
)
from sinks.migrate import migrate
from sinks.queries import insight_activity
from sinks.queries.activity import active_users, retention
from sinks.queries.discovery import event_types, properties
from sinks.queries.engagement import lifecycle, stickiness
from sinks.queries.events import event_counts
from sinks.queries.funnel_insight import funnel_insight
from sinks.queries.funnels import predefined_funnel
from sinks.queries.playback import playback_summary, playback_timeseries
from sinks.queries.playback_insight import playback_insight
from sinks.queries.properties import Filter, Slice
from sinks.queries.services import service_metrics
from sinks.queries.sessions import sessions
from sinks.queries.trends import Series, TrendsQuery, trends

PROJECT = "bench"
READ_KEY = "rk_bench_queries"
ADMIN_KEY = "ak_bench_queries"
DAY_MS = 86_400_000
_EPOCH = date(1970, 1, 1)

TARGET_DASHBOARD_MS = 200.0  # p95: active users, retention, playback
TARGET_FUNNEL_MS = 1000.0  # p95: ad-hoc 4-step funnel over 30 days
# Insights (issue 15), p95 per engine ("server": clickhouse-server 18.16).
TARGET_TRENDS_MS = {"chdb": 300.0, "server": 1000.0}  # one filter, breakdown device_model
TARGET_PLAYBACK_INSIGHT_MS = {"chdb": 300.0, "server": 1000.0}  # filter and breakdown
TARGET_PROPS_FILTER_MS = {"chdb": 300.0}  # unique users per day, a props.* filter
TARGET_FUNNEL_BREAKDOWN_MS = 1500.0  # 4 steps, breakdown, time to convert
TARGET_ENGAGEMENT_MS = 500.0  # retention with start/return events, lifecycle, stickiness,
# sessions
TARGET_SCHEMA_MS = 300.0  # schema discovery: event types, properties
ENGINES = ("chdb", "server")

# The ad-hoc funnel of the benchmark, also configured as the predefined funnel.
FUNNEL = FunnelDefinition(
    name="bench-watch",
    steps=[
        FunnelStep(event="session_start"),
        FunnelStep(event="page_view", where={"page": "library"}),
        FunnelStep(event="playback_request"),
        FunnelStep(event="playback_start"),
    ],
    window_seconds=3600,
)

# --------------------------------------------------------------------------- seeding SQL
# $placeholders are filled with our own integers and identifiers (string.Template); no
# user input reaches this SQL. Queries are sent without parameters, so `%` is plain modulo.

DEVICES = "['quest3', 'quest3', 'quest2', 'quest_pro', 'pico4', 'vision_pro']"
OSES = "['horizon_os', 'horizon_os', 'horizon_os', 'horizon_os', 'pico_os', 'visionos']"
APP_VERSIONS = "['3.1.2', '3.1.2', '3.1.0', '3.0.1', '3.0.0']"
REGIONS = "['eu', 'us', 'us', 'apac', 'latam']"
PAGES = "['home', 'library', 'store', 'settings', 'social', 'search', 'title']"
GESTURES = "['pinch', 'grab', 'swipe_left', 'swipe_right', 'point', 'wave']"
ENTRIES = "['home', 'notification', 'deeplink']"
MENUS = "['settings', 'friends', 'store', 'quick']"
BITRATES = "[1500, 3000, 6000, 12000]"
PRICES = "[0.99, 4.99, 9.99, 19.99, 29.99]"

# One row per session s (number of numbers($sessions)); every column is a deterministic
# function of s (and of the user for per-user attributes).
_SESSIONS = f"""
    SELECT
        s, u, concat('u-', toString(u)) AS user_id,
        {DEVICES}[1 + cityHash64(u, 2) % 6] AS device_model,
        {OSES}[1 + cityHash64(u, 2) % 6] AS os,
        {APP_VERSIONS}[1 + cityHash64(u, 3) % 5] AS app_version,
        {REGIONS}[1 + cityHash64(u, 4) % 5] AS region,
        multiIf(cityHash64(s, 18) % 100 < 80, 'native', cityHash64(s, 18) % 100 < 92, 'segment',
            'posthog') AS source,
        concat('s-', lower(hex(cityHash64(s, 32)))) AS session_id,
        toInt64($start_ms + (cityHash64(s, 5) % $days) * {DAY_MS}
            + intDiv(cityHash64(s, 6) % 84600 + cityHash64(s, 7) % 84600, 2) * 1000) AS base_ms,
        5000 + cityHash64(s, 8) % 55000 AS gap_ms,
        4 + cityHash64(s, 9) % 25 AS len,
        cityHash64(s, 10) % 100 < 45 AS has_play,
        2 + cityHash64(s, 11) % 3 AS ps,
        cityHash64(s, 12) % 100 AS outcome,
        cityHash64(s, 13) % 100 < 6 AS late_failure,
        concat('pl-', lower(hex(cityHash64(s, 14)))) AS play_id,
        concat('c-', toString(toUInt64(20000 * pow((cityHash64(s, 15) % 1000000) / 1000000, 3))))
            AS content_id,
        {BITRATES}[1 + cityHash64(s, 16) % 4] AS bitrate,
        250 + toUInt64(pow((cityHash64(s, 17) % 1000000) / 1000000, 3) * 8000) AS startup
    FROM (
        SELECT number AS s,
            least(toUInt64($users * pow((cityHash64(number, 1) % 1000000) / 1000000, 1.5)),
                  toUInt64($users - 1)) AS u
        FROM numbers($sessions)
    )
"""
_SESSION_COLUMNS = (
    "s, u, user_id, device_model, os, app_version, region, source, session_id, base_ms, gap_ms, "
    "len, has_play, ps, outcome, late_failure, play_id, content_id, bitrate, startup"
)

_TYPE = """multiIf(
    i = 0, 'session_start',
    has_play AND i = ps, 'playback_request',
    has_play AND i = ps + 1,
        multiIf(outcome < 82, 'playback_start', outcome < 90, 'playback_error', 'playback_end'),
    has_play AND i > ps + 1 AND outcome < 82 AND i = len - 1,
        if(late_failure, 'playback_error', 'playback_end'),
    has_play AND i > ps + 1 AND outcome < 82 AND hx < 65, 'playback_heartbeat',
    has_play AND i > ps + 1 AND outcome < 82 AND hx < 71, 'playback_rebuffer',
    has_play AND i > ps + 1 AND outcome < 82 AND hx < 76, 'playback_quality_change',
    hx < 45, 'page_view',
    hx < 85, 'gesture',
    hx < 92, 'menu.open',
    hx < 97, 'store.item_view',
    'achievement_unlocked')"""

# The props of each type: (key, SQL expression, kind), kind "s" a string, "n" a number, "b"
# a boolean. The JSON (`props`, keys in this order, as orjson writes them) and the flattened
# arrays (schemas/props.py `flatten_props`: every leaf's text, numbers also as Float64) are
# generated from this one list, so they agree; seed() checks a sample with flatten_props.
_PLAY_ID = ("play_id", "play_id", "s")
_PROPS_OF: dict[str, list[tuple[str, str, str]]] = {
    "session_start": [("entry", f"{ENTRIES}[1 + cityHash64(s, 24) % 3]", "s")],
    "page_view": [
        (
            "url",
            "concat('https://vr.example/', page, '/', toString(cityHash64(s, i, 25) % 100))",
            "s",
        ),
        ("page", "page", "s"),
    ],
    "gesture": [
        ("gesture", f"{GESTURES}[1 + cityHash64(s, i, 26) % 6]", "s"),
        ("hand", "if(cityHash64(s, i, 27) % 2 = 0, 'left', 'right')", "s"),
    ],
    "playback_request": [_PLAY_ID, ("content_id", "content_id", "s")],
    "playback_start": [
        _PLAY_ID,
        ("content_id", "content_id", "s"),
        ("startup_ms", "startup", "n"),
        ("bitrate_kbps", "bitrate", "n"),
    ],
    "playback_heartbeat": [_PLAY_ID, ("played_ms", "10000", "n"), ("bitrate_kbps", "bitrate", "n")],
    "playback_rebuffer": [_PLAY_ID, ("duration_ms", "200 + cityHash64(s, i, 28) % 4000", "n")],
    "playback_quality_change": [
        _PLAY_ID,
        ("from_kbps", "bitrate", "n"),
        ("to_kbps", f"{BITRATES}[1 + cityHash64(s, i, 29) % 4]", "n"),
    ],
    "playback_error": [
        _PLAY_ID,
        ("code", "if(i = ps + 1, 'E-START', 'E-DECODE')", "s"),
        ("fatal", "'true'", "b"),
    ],
    "playback_end": [_PLAY_ID, ("played_ms", "cityHash64(s, i, 30) % 10000", "n")],
    "menu.open": [("menu", f"{MENUS}[1 + cityHash64(s, i, 31) % 4]", "s")],
    "store.item_view": [
        ("item_id", "concat('sku-', toString(cityHash64(s, i, 33) % 90000))", "s"),
        ("price", f"{PRICES}[1 + cityHash64(s, i, 37) % 5]", "n"),
    ],
    "achievement_unlocked": [
        ("achievement", "concat('ach-', toString(cityHash64(s, i, 34) % 500))", "s"),
        ("tier", "1 + cityHash64(s, i, 38) % 3", "n"),
    ],
}
_DEFAULT_TYPE = "achievement_unlocked"  # _TYPE's last branch


def _by_type(build: Callable[[list[tuple[str, str, str]]], str]) -> str:
    """multiIf over `type` of one expression per type's props."""
    branches = [
        f"type = '{kind}', {build(props)}"
        for kind, props in _PROPS_OF.items()
        if kind != _DEFAULT_TYPE
    ]
    return f"multiIf({', '.join(branches)}, {build(_PROPS_OF[_DEFAULT_TYPE])})"


def _json(props: list[tuple[str, str, str]]) -> str:
    parts = []
    for n, (key, expr, kind) in enumerate(props):
        value = f"'\"', {expr}, '\"'" if kind == "s" else f"toString({expr})"
        if kind == "b":
            value = expr
        parts.append(f"'{'{' if n == 0 else ','}\"{key}\":', {value}")
    return f"concat({', '.join(parts)}, '}}')"


def _keys(props: list[tuple[str, str, str]]) -> str:
    return "[" + ", ".join(f"'{key}'" for key, _, _ in props) + "]"


def _text(props: list[tuple[str, str, str]]) -> str:
    texts = [expr if kind != "n" else f"toString({expr})" for _, expr, kind in props]
    return f"[{', '.join(texts)}]"


def _num_keys(props: list[tuple[str, str, str]]) -> str:
    keys = [f"'{key}'" for key, _, kind in props if kind == "n"]
    return f"[{', '.join(keys)}]" if keys else "emptyArrayString()"


def _num_values(props: list[tuple[str, str, str]]) -> str:
    values = [f"toFloat64({expr})" for _, expr, kind in props if kind == "n"]
    return f"[{', '.join(values)}]" if values else "emptyArrayFloat64()"


_PROPS = _by_type(_json)
_PROPS_KEYS = _by_type(_keys)
_PROPS_VALUES = _by_type(_text)
_PROPS_NUM_KEYS = _by_type(_num_keys)
_PROPS_NUM_VALUES = _by_type(_num_values)
_REQUEST_PROPS = _PROPS_OF["playback_request"]  # a play's first event

EVENTS_SQL = f"""
INSERT INTO events (project, event_id, type, user_id, ts, received_at, session_id,
                    device_model, app_version, os, region, source, props, props_keys,
                    props_values, props_num_keys, props_num_values)
SELECT '$project', event_id, type, user_id, ts, received_at, session_id,
       device_model, app_version, os, region, source, {_PROPS} AS props,
       {_PROPS_KEYS} AS props_keys, {_PROPS_VALUES} AS props_values,
       {_PROPS_NUM_KEYS} AS props_num_keys, {_PROPS_NUM_VALUES} AS props_num_values
FROM (
    SELECT {_SESSION_COLUMNS}, i, hx, page, ts, received_at, event_id, {_TYPE} AS type
    FROM (
        SELECT {_SESSION_COLUMNS}, i,
            cityHash64(s, i, 21) % 100 AS hx,
            {PAGES}[1 + cityHash64(s, i, 22) % 7] AS page,
            toInt64(base_ms + i * gap_ms + cityHash64(s, i, 20) % 3000) AS ts,
            toInt64(ts + 200 + cityHash64(s, i, 23) % 2000) AS received_at,
            concat(lower(hex(cityHash64(s, i, 35))), lower(hex(cityHash64(s, i, 36))))
                AS event_id
        FROM (
            SELECT {_SESSION_COLUMNS},
                arrayJoin(range(if(s = $last_s, toUInt64($last_len), len))) AS i
            FROM ({_SESSIONS})
        )
    )
)
"""

# Plays of the play sessions, QoE fields from the same hashes as their events. `$older`
# = 1 writes the lower-version row of a re-emitted play for 10 % of them instead. The
# first-event columns (migration 0010) are the play's `playback_request`'s, as the plays
# processor writes them (`first_event_props`: play_id, then content_id), so a filter or
# breakdown on a play matches the plays whose request event matches it in `events`;
# `error_codes` are the codes of its `playback_error` events. Frames and scores keep their
# defaults (no heartbeat here reports frames).
PLAYS_SQL = f"""
INSERT INTO plays (project, play_id, user_id, content_id, device_model, app_version, region,
    type, os, source, session_id, props_keys, props_values, props_num_keys, props_num_values,
    first_ts, last_ts, started, video_start_failure, exit_before_start, playback_failure,
    startup_ms, played_ms, rebuffer_ms, rebuffer_count, bitrate_switches, downshifts,
    upshifts, error_codes,
    bitrate_weighted_sum, bitrate_weight_ms, watch_ms, event_count, deleted, version)
SELECT '$project', play_id, user_id, content_id, device_model, app_version, region,
    'playback_request' AS type, os, source, session_id,
    {_keys(_REQUEST_PROPS)} AS props_keys, {_text(_REQUEST_PROPS)} AS props_values,
    {_num_keys(_REQUEST_PROPS)} AS props_num_keys,
    {_num_values(_REQUEST_PROPS)} AS props_num_values,
    first_ts, last_ts, started, video_start_failure, exit_before_start, playback_failure,
    startup_ms, played_ms, rebuffer_ms, rebuffer_count, bitrate_switches, downshifts,
    bitrate_switches - downshifts AS upshifts,
    multiIf(video_start_failure, ['E-START'], playback_failure, ['E-DECODE'],
        emptyArrayString()) AS error_codes,
    bitrate_weight_ms * bitrate AS bitrate_weighted_sum, bitrate_weight_ms,
    startup_ms + played_ms + rebuffer_ms AS watch_ms, event_count, 0 AS deleted,
    2 * event_count AS version
FROM (
    SELECT play_id, user_id, content_id, device_model, app_version, region, os, source,
        session_id, bitrate,
        toInt64(base_ms + ps * gap_ms) AS first_ts,
        toInt64(base_ms + (len - 1 - $older) * gap_ms) AS last_ts,
        outcome < 82 AS started,
        outcome >= 82 AND outcome < 90 AS video_start_failure,
        outcome >= 90 AS exit_before_start,
        started AND late_failure AS playback_failure,
        if(started, startup, 0) AS startup_ms,
        greatest(toInt64(len) - toInt64(ps) - 2 - $older, toInt64(0)) AS after_start,
        intDiv(after_start * 65, 100) AS heartbeats,
        if(started, heartbeats * 10000 + cityHash64(s, 30) % 10000, 0) AS played_ms,
        if(started, intDiv(after_start * 6, 100) + cityHash64(s, 40) % 2, 0) AS rebuffer_count,
        rebuffer_count * (200 + cityHash64(s, 41) % 4000) AS rebuffer_ms,
        if(started, intDiv(after_start * 5, 100) + cityHash64(s, 42) % 2, 0)
            AS bitrate_switches,
        intDiv(bitrate_switches * (cityHash64(s, 44) % 3), 2) AS downshifts,
        if(started, heartbeats * 10000, 0) AS bitrate_weight_ms,
        toInt64(len) - toInt64(ps) - $older AS event_count
    FROM ({_SESSIONS})
    WHERE has_play AND ps < len
      AND ($older = 0 OR cityHash64(s, 43) % 10 = 0)
)
"""

ACTIVITY_SQL = """
INSERT INTO user_activity_input (project, user_id, day)
SELECT DISTINCT project, user_id, day FROM events WHERE project = '$project'
"""

# Predefined funnel levels per (user, start day) over that day's events: the processor's
# rows, except for chains that cross midnight (approximation; the table size is the point).
FUNNEL_SQL = """
INSERT INTO funnel_progress (project, funnel, definition, user_id, start_day, level)
SELECT project, '$funnel', '$definition', user_id, day, level
FROM (
    SELECT project, user_id, day,
        windowFunnel($window)(time,
            type = 'session_start',
            type = 'page_view' AND visitParamExtractString(props, 'page') = 'library',
            type = 'playback_request',
            type = 'playback_start') AS level
    FROM events
    WHERE project = '$project'
      AND type IN ('session_start', 'page_view', 'playback_request', 'playback_start')
    GROUP BY project, user_id, day
)
WHERE level > 0
"""

SERVICES_SQL = """
INSERT INTO service_messages (project, topic, message_id, status, kind, key_id, ts, value_ms,
                              has_value)
SELECT '$project', topic, message_id, status, kind, key_id, ts, value_ms, has_value
FROM (
    SELECT number AS m,
        cityHash64(m, 50) % 100 AS rt,
        cityHash64(m, 51) % 100 AS rs,
        multiIf(rt < 40, 'social.notifications', rt < 50, 'cms.publish',
                rt < 70, 'video.encoding', 'notifications.email') AS topic,
        concat('m-', lower(hex(cityHash64(m, 52))), lower(hex(cityHash64(m, 53))))
            AS message_id,
        multiIf(
            topic = 'social.notifications',
                multiIf(rs < 85, 'delivered', rs < 95, 'sent', 'failed'),
            topic = 'cms.publish', multiIf(rs < 60, 'published', rs < 90, 'updated', 'unpublished'),
            topic = 'video.encoding', multiIf(rs < 40, 'queued', rs < 90, 'succeeded', 'failed'),
            multiIf(rs < 95, 'sent', 'failed')) AS status,
        multiIf(
            topic = 'social.notifications',
                ['message', 'friend_request', 'mention'][1 + cityHash64(m, 54) % 3],
            topic = 'cms.publish', ['video', 'world', 'article'][1 + cityHash64(m, 54) % 3],
            topic = 'video.encoding', ['1080p', '4k', '720p'][1 + cityHash64(m, 54) % 3],
            ['welcome', 'digest', 'reset'][1 + cityHash64(m, 54) % 3]) AS kind,
        multiIf(
            topic = 'cms.publish', concat('c-', toString(cityHash64(m, 55) % 20000)),
            topic = 'video.encoding', concat('job-', lower(hex(cityHash64(m, 55)))),
            concat('u-', toString(cityHash64(m, 55) % $users))) AS key_id,
        toInt64($start_ms + cityHash64(m, 56) % ($days * 86400000)) AS ts,
        topic = 'video.encoding' AND status = 'succeeded' AS has_value,
        if(has_value, toFloat64(20000 + cityHash64(m, 57) % 580000), toFloat64(0)) AS value_ms
    FROM numbers($messages)
)
"""

MEAN_SESSION_EVENTS = 16  # 4 + mean of 0..24


def sql(template: str, **values: object) -> str:
    return string.Template(template).substitute({k: str(v) for k, v in values.items()})


# --------------------------------------------------------------------------- engines


@dataclass
class Engine:
    """One ClickHouse engine under test and how to reach its `default` database."""

    kind: str  # "chdb" | "server"
    ch: ClickHouse
    admin: ClickHouse  # same engine, database `default` (create/drop the bench database)
    version: str
    data_dir: Path | None = None
    temp_dir: bool = False
    url: str | None = None  # a server's database URL (the API under test connects apart)


def open_engine(kind: str, args: argparse.Namespace) -> Engine:
    database = check_identifier(args.database)
    if kind == "chdb":
        temp = args.chdb_path is None
        path = Path(tempfile.mkdtemp(prefix="quip-bench-queries-")) if temp else args.chdb_path
        admin: ClickHouse = EmbeddedClickHouse(path, "default")
        ch: ClickHouse = EmbeddedClickHouse(path, database)
        version = str(ch.execute("SELECT version()")[0][0])
        return Engine("chdb", ch, admin, version, path, temp)
    base = args.clickhouse_url.rstrip("/")
    admin = ServerClickHouse(f"{base}/default")
    ch = ServerClickHouse(f"{base}/{database}")
    version = str(ch.execute("SELECT version()")[0][0])
    return Engine("server", ch, admin, version, url=f"{base}/{database}")


def drop_database(engine: Engine, database: str) -> None:
    engine.admin.execute(f"DROP DATABASE IF EXISTS {check_identifier(database)}")


def recreate_database(engine: Engine, database: str) -> None:
    drop_database(engine, database)
    engine.admin.execute(f"CREATE DATABASE {check_identifier(database)}")


# --------------------------------------------------------------------------- seeding


@dataclass(frozen=True)
class SeedRange:
    day_from: date
    day_to: date

    @property
    def days(self) -> int:
        return (self.day_to - self.day_from).days + 1

    @property
    def start_ms(self) -> int:
        return (self.day_from - _EPOCH).days * DAY_MS


def seed_range(days: int, today: date) -> SeedRange:
    day_to = today - timedelta(days=1)
    return SeedRange(day_to - timedelta(days=days - 1), day_to)


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def seed(engine: Engine, args: argparse.Namespace, span: SeedRange) -> dict[str, Any]:
    """Migrate and fill the benchmark database; returns per-step seconds and row counts."""
    ch = engine.ch
    common: dict[str, object] = {
        "project": PROJECT,
        "users": args.users,
        "days": span.days,
        "start_ms": span.start_ms,
    }
    steps: dict[str, float] = {}
    steps["migrate"] = timed(lambda: migrate(ch))
    started = time.perf_counter()
    sessions, last_length = sessions_for(ch, args.events)
    steps["plan_sessions"] = time.perf_counter() - started
    common["sessions"] = sessions
    steps["events"] = timed(
        lambda: ch.execute(sql(EVENTS_SQL, **common, last_s=sessions - 1, last_len=last_length))
    )
    checked = check_props(ch)
    steps["user_activity"] = timed(lambda: ch.execute(sql(ACTIVITY_SQL, project=PROJECT)))
    steps["plays"] = timed(
        lambda: (
            ch.execute(sql(PLAYS_SQL, **common, older=1)),
            ch.execute(sql(PLAYS_SQL, **common, older=0)),
        )
    )
    steps["funnel_progress"] = timed(
        lambda: ch.execute(
            sql(
                FUNNEL_SQL,
                project=PROJECT,
                funnel=FUNNEL.name,
                definition=FUNNEL.fingerprint,
                window=FUNNEL.window_seconds,
            )
        )
    )
    messages = max(args.events // 100, 1)
    steps["service_messages"] = timed(
        lambda: ch.execute(sql(SERVICES_SQL, **common, messages=messages))
    )
    total = sum(steps.values())
    steps["settle_merges"] = wait_for_merges(engine, args.database, args.settle_timeout)
    if args.optimize:
        steps["optimize_final"] = optimize_tables(engine)
    return {
        "seconds": {name: round(value, 2) for name, value in steps.items()},
        "seed_seconds": round(total, 2),
        "sessions": sessions,
        "service_messages": messages,
        "props_rows_checked": checked,
    }


def check_props(ch: ClickHouse, sample: int = 2000) -> int:
    """The seeded props arrays are what the worker would write for the seeded JSON
    (schemas/props.py `flatten_props`), on a sample of events; RuntimeError otherwise."""
    rows = ch.execute(
        "SELECT type, props, props_keys, props_values, props_num_keys, props_num_values "
        f"FROM events WHERE cityHash64(event_id) % 997 = 0 LIMIT {int(sample)}"
    )
    for kind, props, *arrays in rows:
        expected = flatten_props(msgspec.json.decode(str(props)))
        if tuple(tuple(column) for column in arrays) != expected:
            raise RuntimeError(f"{kind}: props {props} but arrays {arrays}")
    return len(rows)


def sessions_for(ch: ClickHouse, events: int) -> tuple[int, int]:
    """(S, k): sessions 0..S-1 hold exactly `events` events when the last one keeps only
    its first k events (session lengths are the generator's `len`)."""
    estimate = int(events / MEAN_SESSION_EVENTS * 1.1) + 100
    rows = ch.execute(
        sql(
            "SELECT number, 4 + cityHash64(number, 9) % 25 FROM numbers($n) ORDER BY number",
            n=estimate,
        )
    )
    used = 0
    for number, length in rows:
        if used + int(length) >= events:
            return int(number) + 1, events - used
        used += int(length)
    raise RuntimeError("session estimate too small")  # mean 16 events: cannot happen


def wait_for_merges(engine: Engine, database: str, timeout_s: float) -> float:
    """Seconds until the database's merges have settled: no merge running and the same
    number of active parts over three polls 2 s apart (at most timeout_s)."""
    db = check_identifier(database)
    started = time.perf_counter()
    previous: tuple[int, int] | None = None
    stable = 0
    while time.perf_counter() - started < timeout_s:
        merges = engine.admin.execute(f"SELECT count() FROM system.merges WHERE database = '{db}'")
        parts = engine.admin.execute(
            f"SELECT count() FROM system.parts WHERE database = '{db}' AND active"
        )
        state = (int(merges[0][0]), int(parts[0][0]))
        stable = stable + 1 if state[0] == 0 and state == previous else 0
        if stable >= 2:
            break
        previous = state
        time.sleep(2.0)
    return time.perf_counter() - started


def optimize_tables(engine: Engine) -> float:
    """OPTIMIZE … FINAL every table of the benchmark (--optimize): one part per partition."""
    started = time.perf_counter()
    for table in ("events", "plays", "funnel_progress", "service_messages", "user_activity",
                  "user_first_seen"):  # fmt: skip
        engine.ch.execute(f"OPTIMIZE TABLE {table} FINAL")
    return time.perf_counter() - started


def table_stats(engine: Engine, database: str) -> dict[str, dict[str, int]]:
    db = check_identifier(database)
    for size_column in ("bytes_on_disk", "bytes"):
        try:
            rows = engine.admin.execute(
                f"SELECT table, count(), sum(rows), sum({size_column}) FROM system.parts "
                f"WHERE database = '{db}' AND active GROUP BY table ORDER BY table"
            )
        except ClickHouseError:
            continue
        return {
            str(table): {"parts": int(parts), "rows": int(n), "bytes": int(size)}
            for table, parts, n, size in rows
        }
    return {}


def seeded_range(engine: Engine) -> SeedRange | None:
    """The day range of an already seeded database (--reuse), or None."""
    try:
        rows = engine.ch.execute(
            "SELECT count(), min(day), max(day) FROM events WHERE project = %(p)s", {"p": PROJECT}
        )
    except ClickHouseError:
        return None
    count, first, last = rows[0]
    if not int(count):
        return None
    return SeedRange(_as_date(first), _as_date(last))


def _as_date(value: object) -> date:
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value))


# --------------------------------------------------------------------------- queries


@dataclass(frozen=True)
class QuerySpec:
    name: str
    family: str  # target group
    method: str
    path: str
    params: dict[str, str]
    body: dict[str, Any] | None
    raw: Callable[[ClickHouse], object]
    targets: dict[str, float]  # engine kind -> p95 target, ms (none: not checked)


def both(target_ms: float) -> dict[str, float]:
    return dict.fromkeys(ENGINES, target_ms)


def build_queries(span: SeedRange, today: date) -> list[QuerySpec]:
    to = span.day_to
    d30 = max(span.day_from, to - timedelta(days=29))
    d7 = max(span.day_from, to - timedelta(days=6))
    r30 = {"project": PROJECT, "from": d30.isoformat(), "to": to.isoformat()}
    r7 = {"project": PROJECT, "from": d7.isoformat(), "to": to.isoformat()}
    steps: list[str | dict[str, Any]] = [
        {"event": step.event, "where": dict(step.where)} if step.where else step.event
        for step in FUNNEL.steps
    ]
    window = FUNNEL.window_seconds
    body = {
        "steps": steps,
        "window_seconds": window,
        "from": d30.isoformat(),
        "to": to.isoformat(),
        "project": PROJECT,
    }
    dash, none = both(TARGET_DASHBOARD_MS), dict[str, float]()
    return [
        QuerySpec(
            "active-users 30d", "active-users", "GET", "/v1/metrics/active-users", r30, None,
            lambda ch: active_users(ch, PROJECT, d30, to), dash,
        ),
        QuerySpec(
            "retention day 30d", "retention", "GET", "/v1/metrics/retention",
            {**r30, "period": "day"}, None,
            lambda ch: retention(ch, PROJECT, d30, to, "day", today), dash,
        ),
        QuerySpec(
            "retention week 30d", "retention", "GET", "/v1/metrics/retention",
            {**r30, "period": "week"}, None,
            lambda ch: retention(ch, PROJECT, d30, to, "week", today), dash,
        ),
        QuerySpec(
            "playback none 30d", "playback", "GET", "/v1/metrics/playback",
            {**r30, "group_by": "none"}, None,
            lambda ch: playback_summary(ch, PROJECT, d30, to, "none"), dash,
        ),
        QuerySpec(
            "playback content_id 30d", "playback", "GET", "/v1/metrics/playback",
            {**r30, "group_by": "content_id"}, None,
            lambda ch: playback_summary(ch, PROJECT, d30, to, "content_id"), dash,
        ),
        QuerySpec(
            "playback content_id top 50 30d", "playback", "GET", "/v1/metrics/playback",
            {**r30, "group_by": "content_id", "limit": "50"}, None,
            lambda ch: playback_summary(ch, PROJECT, d30, to, "content_id", 50), dash,
        ),
        QuerySpec(
            "playback device_model 30d", "playback", "GET", "/v1/metrics/playback",
            {**r30, "group_by": "device_model"}, None,
            lambda ch: playback_summary(ch, PROJECT, d30, to, "device_model"), dash,
        ),
        QuerySpec(
            "playback series hour 7d", "playback", "GET", "/v1/metrics/playback/timeseries",
            {**r7, "interval": "hour"}, None,
            lambda ch: playback_timeseries(ch, PROJECT, d7, to, "hour"), dash,
        ),
        QuerySpec(
            "events day 7d", "events", "GET", "/v1/metrics/events",
            {**r7, "interval": "day"}, None,
            lambda ch: event_counts(ch, PROJECT, d7, to, "day"), none,
        ),
        QuerySpec(
            "events hour 7d", "events", "GET", "/v1/metrics/events",
            {**r7, "interval": "hour"}, None,
            lambda ch: event_counts(ch, PROJECT, d7, to, "hour"), none,
        ),
        QuerySpec(
            "services 30d", "services", "GET", "/v1/metrics/services", r30, None,
            lambda ch: service_metrics(ch, PROJECT, d30, to), none,
        ),
        QuerySpec(
            "funnel ad-hoc 4 steps 30d", "funnel-adhoc", "POST", "/v1/funnels/query",
            {}, body,
            lambda ch: funnel_insight(ch, PROJECT, list(FUNNEL.steps), window, Slice(d30, to)),
            both(TARGET_FUNNEL_MS),
        ),
        QuerySpec(
            "funnel predefined 30d", "funnel-predefined", "GET", f"/v1/funnels/{FUNNEL.name}",
            r30, None,
            lambda ch: predefined_funnel(ch, PROJECT, FUNNEL, d30, to), none,
        ),
        *insight_queries(span, today),
    ]  # fmt: skip


def insight_queries(span: SeedRange, today: date) -> list[QuerySpec]:
    """SPEC §5.1 over 30 days, with the filters and breakdowns a dashboard would ask."""
    to = span.day_to
    d30 = max(span.day_from, to - timedelta(days=29))
    r30 = {"project": PROJECT, "from": d30.isoformat(), "to": to.isoformat()}
    days: dict[str, Any] = dict(r30)  # a body's
    regions = Filter("region", "in", ["eu", "us"])
    library = Filter("props.page", "eq", "library")
    by_region = TrendsQuery(d30, to, "day", [Series("page_view")], [regions], ["device_model"])
    library_users = TrendsQuery(d30, to, "day", [Series("page_view", "unique_users")], [library])
    startup_p95 = TrendsQuery(d30, to, "day", [Series("playback_start", "p95", "props.startup_ms")])
    plays_by_device = Slice(d30, to, [regions], ["device_model"])
    playback_body = {**days, "filters": [{"property": "region", "op": "in", "value": ["eu", "us"]}],
                     "breakdown": ["device_model"]}
    steps: list[str | dict[str, Any]] = [
        {"event": step.event, "where": dict(step.where)} if step.where else step.event
        for step in FUNNEL.steps
    ]
    window = FUNNEL.window_seconds
    engagement, schema = both(TARGET_ENGAGEMENT_MS), both(TARGET_SCHEMA_MS)
    return [
        QuerySpec(
            "trends filter by device 30d", "trends", "POST", "/v1/insights/trends", {},
            {**days, "interval": "day", "series": [{"event": "page_view", "math": "total"}],
             "filters": [{"property": "region", "op": "in", "value": ["eu", "us"]}],
             "breakdown": ["device_model"]},
            lambda ch: trends(ch, PROJECT, by_region), TARGET_TRENDS_MS,
        ),
        QuerySpec(
            "trends users props filter", "trends-props", "POST", "/v1/insights/trends", {},
            {**days, "interval": "day",
             "series": [{"event": "page_view", "math": "unique_users"}],
             "filters": [{"property": "props.page", "op": "eq", "value": "library"}]},
            lambda ch: trends(ch, PROJECT, library_users), TARGET_PROPS_FILTER_MS,
        ),
        QuerySpec(
            "trends p95 startup_ms 30d", "trends-math", "POST", "/v1/insights/trends", {},
            {**days, "interval": "day", "series": [
                {"event": "playback_start", "math": "p95", "property": "props.startup_ms"}]},
            lambda ch: trends(ch, PROJECT, startup_p95), {},
        ),
        QuerySpec(
            "playback insight filter by device 30d", "insight-playback", "POST",
            "/v1/insights/playback", {}, playback_body,
            lambda ch: playback_insight(ch, PROJECT, plays_by_device),
            TARGET_PLAYBACK_INSIGHT_MS,
        ),
        QuerySpec(
            "playback insight filter by device day 30d", "insight-playback", "POST",
            "/v1/insights/playback", {}, {**playback_body, "interval": "day"},
            lambda ch: playback_insight(ch, PROJECT, plays_by_device, "day"),
            TARGET_PLAYBACK_INSIGHT_MS,
        ),
        QuerySpec(
            "funnel device 4 steps 30d", "funnel-breakdown", "POST", "/v1/funnels/query",
            {}, {**days, "steps": steps, "window_seconds": window, "breakdown": ["device_model"]},
            lambda ch: funnel_insight(
                ch, PROJECT, list(FUNNEL.steps), window, Slice(d30, to, breakdown=["device_model"])
            ),
            both(TARGET_FUNNEL_BREAKDOWN_MS),
        ),
        QuerySpec(
            "retention start/return 30d", "insight-retention", "POST",
            "/v1/insights/retention", {},
            {**days, "period": "day", "start_event": "session_start",
             "return_event": "playback_start"},
            lambda ch: insight_activity.retention(
                ch, PROJECT, Slice(d30, to), "day", today, "session_start", "playback_start"
            ),
            engagement,
        ),
        QuerySpec(
            "lifecycle day 30d", "lifecycle", "GET", "/v1/insights/lifecycle",
            {**r30, "interval": "day"}, None,
            lambda ch: lifecycle(ch, PROJECT, d30, to, "day", None), engagement,
        ),
        QuerySpec(
            "stickiness 30d", "stickiness", "GET", "/v1/insights/stickiness", r30, None,
            lambda ch: stickiness(ch, PROJECT, d30, to, None), engagement,
        ),
        QuerySpec(
            "sessions 30d", "sessions", "POST", "/v1/insights/sessions", {}, days,
            lambda ch: sessions(ch, PROJECT, Slice(d30, to)), engagement,
        ),
        QuerySpec(
            "schema events 30d", "schema", "GET", "/v1/schema/events", r30, None,
            lambda ch: event_types(ch, PROJECT, d30, to), schema,
        ),
        QuerySpec(
            "schema properties 30d", "schema", "GET", "/v1/schema/properties", r30, None,
            lambda ch: properties(ch, PROJECT, d30, to, None), schema,
        ),
        QuerySpec(
            "schema properties page_view", "schema", "GET", "/v1/schema/properties",
            {**r30, "event": "page_view"}, None,
            lambda ch: properties(ch, PROJECT, d30, to, "page_view"), schema,
        ),
    ]  # fmt: skip


# --------------------------------------------------------------------------- measuring


def summary(values_ms: Sequence[float]) -> dict[str, Any]:
    ordered = sorted(values_ms)
    return {
        "n": len(ordered),
        "p50_ms": round(percentile(ordered, 0.5), 3),
        "p95_ms": round(percentile(ordered, 0.95), 3),
        "min_ms": round(ordered[0], 3) if ordered else None,
        "max_ms": round(ordered[-1], 3) if ordered else None,
        "samples_ms": [round(value, 3) for value in values_ms],
    }


@dataclass
class Call:
    ms: float
    status: int
    cache: str
    size: int


async def request(client: httpx.AsyncClient, spec: QuerySpec) -> Call:
    headers = {"Authorization": f"Bearer {READ_KEY}"}
    started = time.perf_counter()
    if spec.method == "GET":
        response = await client.get(spec.path, params=spec.params, headers=headers)
    else:
        response = await client.post(spec.path, json=spec.body, headers=headers)
    elapsed = (time.perf_counter() - started) * 1000
    return Call(elapsed, response.status_code, response.headers.get("x-cache", ""),
                len(response.content))  # fmt: skip


@dataclass
class Measured:
    spec: QuerySpec
    engine: str
    first: Call | None = None
    cold: list[Call] = field(default_factory=list)
    warm: list[Call] = field(default_factory=list)
    raw_ms: list[float] = field(default_factory=list)
    raw_cpu_ms: list[float] = field(default_factory=list)
    raw_server_cpu_ms: float | None = None  # mean per raw call, from 18.16's query_log
    problems: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        cold = summary([c.ms for c in self.cold])
        target = self.spec.targets.get(self.engine)
        return {
            "name": self.spec.name,
            "family": self.spec.family,
            "request": {
                "method": self.spec.method,
                "path": self.spec.path,
                "params": self.spec.params,
                "body": self.spec.body,
            },
            "first_ms": round(self.first.ms, 3) if self.first else None,
            "response_bytes": self.first.size if self.first else None,
            "api_cold": cold,
            "api_warm": summary([c.ms for c in self.warm]),
            "raw": summary(self.raw_ms),
            "raw_process_cpu": summary(self.raw_cpu_ms),
            "raw_server_cpu_mean_ms": self.raw_server_cpu_ms,
            "api_overhead_p50_ms": round(cold["p50_ms"] - summary(self.raw_ms)["p50_ms"], 3),
            "warm_hits": sum(c.cache == "hit" for c in self.warm),
            "target_p95_ms": target,
            "target_met": None if target is None else bool(cold["p95_ms"] < target),
            "problems": self.problems,
        }


def make_settings(funnels_file: Path, data_dir: Path) -> Settings:
    return Settings(
        mode=Mode.EMBEDDED,
        read_keys=SecretStr(f"{PROJECT}:{READ_KEY}"),
        admin_keys=SecretStr(f"{PROJECT}:{ADMIN_KEY}"),
        funnels_file=funnels_file,
        data_dir=data_dir,
        cors_origins="",
    )


def server_cpu_ms(ch: ClickHouse, since: int) -> float:
    """CPU the server spent on the logged queries since `since` (epoch s): the raw calls
    (measure_engine logs only them), a figure that holds however loaded the box is."""
    ch.execute("SYSTEM FLUSH LOGS")
    rows = ch.execute(
        "SELECT sum(ProfileEvents.Values[indexOf(ProfileEvents.Names, "
        "'OSCPUVirtualTimeMicroseconds')]) FROM system.query_log "
        "WHERE type = 2 AND event_time >= toDateTime(%(since)s) "
        "AND has(Settings.Names, 'log_queries') "
        "AND query NOT LIKE 'SET %%' AND query NOT LIKE 'SYSTEM %%'",
        {"since": since},
    )
    return int(rows[0][0] or 0) / 1000


async def measure_engine(
    engine: Engine,
    specs: Sequence[QuerySpec],
    settings: Settings,
    repeat: int,
    warm_repeat: int,
) -> list[Measured]:
    # A server connection serves one query at a time: the app (whose data-version watcher
    # polls in the background) gets its own, the raw calls below use engine.ch.
    api_engine = ServerClickHouse(engine.url) if engine.url else engine.ch
    app = create_app(settings, api_engine, cache=QueryCache(hit_ratio_gauge=None))
    context = cast(ApiContext, app.state.context)
    transport = httpx.ASGITransport(app=app)
    results = []
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://bench") as client,
    ):
        for spec in specs:
            measured = Measured(spec, engine.kind)
            context.cache.clear()
            measured.first = await request(client, spec)
            for _ in range(repeat):
                context.cache.clear()
                measured.cold.append(await request(client, spec))
            for _ in range(warm_repeat):
                measured.warm.append(await request(client, spec))
            if engine.kind == "server":
                # A second of its own (query_log has 1 s resolution) and logging on this
                # connection only while the raw calls run.
                await asyncio.sleep(1 - time.time() % 1)
                raw_since = int(time.time())
                engine.ch.execute("SET log_queries = 1")
            for _ in range(repeat):
                started, cpu = time.perf_counter(), time.process_time()
                try:
                    spec.raw(engine.ch)
                except ClickHouseError as exc:  # e.g. 18.16's memory limit: the next query
                    measured.problems.append(f"raw call failed: {str(exc).splitlines()[:2]}")
                    break
                measured.raw_ms.append((time.perf_counter() - started) * 1000)
                measured.raw_cpu_ms.append((time.process_time() - cpu) * 1000)
            if engine.kind == "server":
                engine.ch.execute("SET log_queries = 0")
                measured.raw_server_cpu_ms = server_cpu_ms(engine.ch, raw_since) / repeat
            calls = [measured.first, *measured.cold, *measured.warm]
            statuses = {c.status for c in calls}
            if statuses != {200}:
                measured.problems.append(f"HTTP statuses {sorted(statuses)}")
            if any(c.cache != "miss" for c in measured.cold):
                measured.problems.append("a cold request was answered from the cache")
            if any(c.cache != "hit" for c in measured.warm):
                measured.problems.append("a warm request missed the cache")
            results.append(measured)
            print_row(measured, live=True)
    await context.close()
    return results


# --------------------------------------------------------------------------- report

HEADER = (
    f"{'query':<27} {'first':>7} {'API cold p50/p95':>17} {'API warm p50/p95':>17} "
    f"{'raw p50/p95':>15} {'API-raw':>8} {'CPU':>7}  target"
)


def _ms(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def print_row(measured: Measured, *, live: bool = False) -> None:
    data = measured.as_json()
    cold, warm, raw = data["api_cold"], data["api_warm"], data["raw"]
    target = ""
    if data["target_p95_ms"] is not None:
        verdict = "MET" if data["target_met"] else "NOT MET"
        target = f"p95 < {data['target_p95_ms']:.0f} ms: {verdict}"
    cpu = data["raw_server_cpu_mean_ms"]
    if cpu is None:
        cpu = data["raw_process_cpu"]["p50_ms"]
    line = (
        f"{data['name']:<27} {_ms(data['first_ms']):>7} "
        f"{_ms(cold['p50_ms']) + ' / ' + _ms(cold['p95_ms']):>17} "
        f"{_ms(warm['p50_ms']) + ' / ' + _ms(warm['p95_ms']):>17} "
        f"{_ms(raw['p50_ms']) + ' / ' + _ms(raw['p95_ms']):>15} "
        f"{_ms(data['api_overhead_p50_ms']):>8} "
        f"{_ms(cpu):>7}  {target}"
    )
    if measured.problems:
        line += "  !! " + "; ".join(measured.problems)
    print(line, flush=live)


def print_engine_report(report: dict[str, Any], measured: Sequence[Measured]) -> None:
    print()
    print(
        f"== {report['engine']} {report['version']}: {report['events']:,} events, "
        f"{report['users']:,} users, {report['range']['days']} days "
        f"({report['range']['from']} .. {report['range']['to']})"
    )
    seeding = report.get("seed")
    if seeding:
        parts = ", ".join(f"{name} {value:.1f} s" for name, value in seeding["seconds"].items())
        print(f"seeding: {seeding['seed_seconds']:.1f} s without the merge wait ({parts})")
    for table, stats in report["tables"].items():
        print(
            f"  {table:<18} {stats['rows']:>12,} rows {stats['parts']:>5} parts "
            f"{stats['bytes'] / 1e6:>9.1f} MB"
        )
    print(
        f"latency in ms; API cold: cache cleared before each of {report['repeat']} requests; "
        f"API-raw: difference of the p50s; CPU per raw call: chDB this process's p50 (the "
        f"engine's threads included), server the server's mean from query_log; load average "
        f"{report['loadavg_before'][0]:.2f} before, {report['loadavg_after'][0]:.2f} after"
    )
    print(HEADER)
    for item in measured:
        print_row(item)


def evaluate_targets(engines: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    verdicts = []
    for kind, report in engines.items():
        for query in report["queries"]:
            if query["target_p95_ms"] is None:
                continue
            verdicts.append(
                {
                    "engine": kind,
                    "query": query["name"],
                    "api_cold_p95_ms": query["api_cold"]["p95_ms"],
                    "target_p95_ms": query["target_p95_ms"],
                    "met": query["target_met"],
                }
            )
    return verdicts


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "loadavg": os.getloadavg(),
    }
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            total_kb = int(meminfo.readline().split()[1])
        info["memory_gb"] = round(total_kb / 1024 / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        import chdb  # type: ignore[import-untyped,unused-ignore]

        info["chdb"] = str(chdb.__version__)
    except ImportError:
        pass
    return info


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Seed a database and measure the query API's latency (SPEC §5).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--engine", choices=("chdb", "server", "both"), default="both")
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--days", type=int, default=30, help="days of data, ending yesterday")
    parser.add_argument("--database", default="bench_queries")
    parser.add_argument("--chdb-path", type=Path, default=None, help="default: a temp dir")
    parser.add_argument("--clickhouse-url", default="clickhouse://127.0.0.1:9000")
    parser.add_argument("--repeat", type=int, default=7, help="cold and raw runs per query")
    parser.add_argument("--warm-repeat", type=int, default=30, help="cached runs per query")
    parser.add_argument(
        "--settle-timeout", type=float, default=600.0, help="max s to wait for merges"
    )
    parser.add_argument(
        "--optimize",
        action="store_true",
        help="OPTIMIZE … FINAL every table after seeding (fully merged state)",
    )
    parser.add_argument("--queries", default="", help="comma-separated name prefixes")
    parser.add_argument("--keep", action="store_true", help="keep the database(s)")
    parser.add_argument(
        "--reuse", action="store_true", help="measure an already seeded database (no seeding)"
    )
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--label", default="")
    args = parser.parse_args(argv)
    if args.events < 1000 or args.users < 1 or args.days < 1 or args.repeat < 1:
        parser.error("need --events >= 1000, --users >= 1, --days >= 1, --repeat >= 1")
    check_identifier(args.database)
    return args


def run_engine(
    kind: str, args: argparse.Namespace, funnels_file: Path, work_dir: Path
) -> tuple[dict[str, Any], list[Measured]]:
    engine = open_engine(kind, args)
    today = datetime.now(UTC).date()
    report: dict[str, Any] = {"engine": kind, "version": engine.version}
    try:
        span = seeded_range(engine) if args.reuse else None
        if span is None:
            span = seed_range(args.days, today)
            recreate_database(engine, args.database)
            print(f"[{kind}] seeding {args.events:,} events ...", flush=True)
            report["seed"] = seed(engine, args, span)
            print(f"[{kind}] seeded: {report['seed']['seconds']}", flush=True)
        else:
            print(f"[{kind}] reusing {args.database} ({span.day_from} .. {span.day_to})")
            # A seed kept from an older tree gets the migrations added since (a summary's
            # backfill among them), so every query finds the tables it reads.
            report["migrated"] = [m.version for m in migrate(engine.ch)]
        report["tables"] = table_stats(engine, args.database)
        report["events"] = report["tables"].get("events", {}).get("rows", 0)
        report["users"] = args.users
        report["range"] = {
            "from": span.day_from.isoformat(),
            "to": span.day_to.isoformat(),
            "days": span.days,
        }
        report["repeat"], report["warm_repeat"] = args.repeat, args.warm_repeat
        specs = build_queries(span, today)
        wanted = [p.strip() for p in args.queries.split(",") if p.strip()]
        if wanted:
            specs = [s for s in specs if any(s.name.startswith(p) for p in wanted)]
        settings = make_settings(funnels_file, work_dir)
        report["loadavg_before"] = os.getloadavg()
        print(HEADER)
        measured = asyncio.run(
            measure_engine(engine, specs, settings, args.repeat, args.warm_repeat)
        )
        report["loadavg_after"] = os.getloadavg()
        report["queries"] = [m.as_json() for m in measured]
        return report, measured
    finally:
        if not args.keep:
            drop_database(engine, args.database)
        if engine.kind == "server":
            engine.ch.close()
            engine.admin.close()
        elif engine.temp_dir and engine.data_dir is not None:
            if args.keep:
                print(f"[chdb] kept the data under {engine.data_dir}")
            else:
                shutil.rmtree(engine.data_dir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    kinds = ("chdb", "server") if args.engine == "both" else (args.engine,)
    engines: dict[str, dict[str, Any]] = {}
    printed: list[tuple[dict[str, Any], list[Measured]]] = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="quip-bench-queries-app-") as work:
        work_dir = Path(work)
        funnels_file = work_dir / "funnels.json"
        funnels_file.write_text(
            json.dumps(
                {
                    "funnels": [
                        {
                            "name": FUNNEL.name,
                            "window_seconds": FUNNEL.window_seconds,
                            "steps": [
                                {"event": step.event, "where": dict(step.where)}
                                for step in FUNNEL.steps
                            ],
                        }
                    ]
                }
            ),
            encoding="utf-8",
        )
        for kind in kinds:
            report, measured = run_engine(kind, args, funnels_file, work_dir)
            engines[kind] = report
            printed.append((report, measured))
    for report, measured in printed:
        print_engine_report(report, measured)
    targets = evaluate_targets(engines)
    if targets:
        print("\ntargets (API cold p95):")
        for verdict in targets:
            print(
                f"  {verdict['engine']:<7} {verdict['query']:<27} "
                f"{verdict['api_cold_p95_ms']:>8.1f} ms < {verdict['target_p95_ms']:.0f} ms: "
                f"{'MET' if verdict['met'] else 'NOT MET'}"
            )
    results = {
        "benchmark": "queries",
        "label": args.label,
        "started_at": started.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "git_commit": git_commit(),
        "machine": {**machine_info(), "loadavg_at_start": load_before},
        "funnel": {
            "name": FUNNEL.name,
            "fingerprint": FUNNEL.fingerprint,
            "window_seconds": FUNNEL.window_seconds,
            "steps": [{"event": s.event, "where": dict(s.where)} for s in FUNNEL.steps],
        },
        "engines": engines,
        "targets": targets,
    }
    output = args.output or (
        result_path("queries", started)
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"\nresults: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
