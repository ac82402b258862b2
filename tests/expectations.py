"""Independent computations of the SPEC §4 numbers, written from the definitions, to
compare the pipeline's answers with."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from schemas.events import EventRecord
from streams.processors.activity import utc_day


def _events_of(records: Iterable[EventRecord], project: str) -> Iterable[tuple[str, int]]:
    for record in records:
        if record.project == project:
            for event in record.events:
                yield event.user_id, event.ts


def expected_active(
    records: Iterable[EventRecord], day_from: date, day_to: date, project: str = "p"
) -> list[dict[str, object]]:
    active: dict[date, set[str]] = {}
    for user_id, ts in _events_of(records, project):
        active.setdefault(utc_day(ts), set()).add(user_id)
    out = []
    day = day_from
    while day <= day_to:

        def window(n: int, end: date = day) -> int:
            return len(set().union(*(active.get(end - timedelta(days=k), set()) for k in range(n))))

        dau, wau, mau = window(1), window(7), window(30)
        out.append(
            {
                "day": day.isoformat(),
                "dau": dau,
                "wau": wau,
                "mau": mau,
                "stickiness": dau / mau if mau else 0.0,
            }
        )
        day += timedelta(days=1)
    return out


def expected_retention(
    records: Iterable[EventRecord],
    day_from: date,
    day_to: date,
    period: str,
    today: date,
    project: str = "p",
) -> list[dict[str, object]]:
    days_by_user: dict[str, set[date]] = {}
    for user_id, ts in _events_of(records, project):
        days_by_user.setdefault(user_id, set()).add(utc_day(ts))

    def period_start(day: date) -> date:
        return day if period == "day" else day - timedelta(days=day.weekday())

    step = 1 if period == "day" else 7
    cohorts: dict[date, list[set[date]]] = {}
    for days in days_by_user.values():
        first = min(days)
        if day_from <= first <= day_to:
            cohorts.setdefault(period_start(first), []).append({period_start(d) for d in days})
    out = []
    for cohort in sorted(cohorts):
        started = (period_start(today) - cohort).days // step + 1
        retained = [
            sum(1 for periods in cohorts[cohort] if cohort + timedelta(days=k * step) in periods)
            for k in range(started)
        ]
        out.append({"cohort": cohort.isoformat(), "size": retained[0], "retained": retained})
    return out


def expected_event_counts(
    records: Iterable[EventRecord], project: str
) -> dict[tuple[str, str], int]:
    """(UTC day, type) → distinct events, each event_id counted once."""
    seen: dict[str, tuple[str, str]] = {}
    for record in records:
        if record.project == project:
            for event in record.events:
                seen.setdefault(event.event_id, (utc_day(event.ts).isoformat(), event.type))
    counts: dict[tuple[str, str], int] = {}
    for key in seen.values():
        counts[key] = counts.get(key, 0) + 1
    return counts


# ------------------------------------------------ from plain event dicts (simulator --record)


def expected_event_counts_hourly(events: Iterable[dict[str, Any]]) -> dict[tuple[str, str], int]:
    """(UTC hour "YYYY-MM-DDTHH:00:00Z", type) → distinct events (by event_id)."""
    seen: dict[str, tuple[str, str]] = {}
    for event in events:
        hour = datetime.fromtimestamp(event["ts"] // 3_600_000 * 3600, UTC)
        seen.setdefault(event["event_id"], (hour.strftime("%Y-%m-%dT%H:00:00Z"), event["type"]))
    return dict(Counter(seen.values()))


FunnelStep = str | dict[str, Any]


def _matches(step: FunnelStep, event: dict[str, Any]) -> bool:
    if isinstance(step, str):
        return bool(event["type"] == step)
    if event["type"] != step["event"]:
        return False
    props = event.get("props") or {}
    for key, wanted in (step.get("where") or {}).items():
        value = props.get(key)
        # JSON equality: true is not 1, 1 is 1.0.
        if isinstance(value, bool) != isinstance(wanted, bool) or value != wanted:
            return False
    return True


def expected_funnel(
    events: Iterable[dict[str, Any]],
    steps: list[FunnelStep],
    window_seconds: int,
    day_from: date,
    day_to: date,
) -> list[dict[str, Any]]:
    """SPEC §4 funnel: a user reaches step k if events match s1..sk at t1 ≤ … ≤ tk with
    tk - t1 ≤ W and t1 on a day of [from, to]. For a fixed first event the earliest match
    of each next step is the best choice, so each start is followed greedily; one event
    may serve consecutive steps (windowFunnel; SPEC §4 only orders the times)."""
    window_ms = window_seconds * 1000
    by_user: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_user.setdefault(event["user_id"], []).append(event)
    furthest: list[int] = []
    for user_events in by_user.values():
        user_events.sort(key=lambda e: e["ts"])
        best = 0
        for start in user_events:
            if not _matches(steps[0], start) or not day_from <= utc_day(start["ts"]) <= day_to:
                continue
            reached, t = 1, start["ts"]
            for step in steps[1:]:
                nxt = next(
                    (
                        e["ts"]
                        for e in user_events
                        if t <= e["ts"] <= start["ts"] + window_ms and _matches(step, e)
                    ),
                    None,
                )
                if nxt is None:
                    break
                reached, t = reached + 1, nxt
            best = max(best, reached)
        if best:
            furthest.append(best)
    out: list[dict[str, Any]] = []
    first = previous = 0
    for k, step in enumerate(steps, start=1):
        users = sum(1 for f in furthest if f >= k)
        if k == 1:
            first = previous = users
        out.append(
            {
                "event": step if isinstance(step, str) else step["event"],
                "users": users,
                "conversion_from_start": users / first if first else 0.0,
                "conversion_from_previous": users / previous if previous else 0.0,
            }
        )
        previous = users
    return out


def without_times(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A funnel answer's steps without time to convert (the expectations here count users;
    tests/integration/test_insights_funnels.py checks the times)."""
    times = ("median_time_to_convert_s", "avg_time_to_convert_s")
    return [{key: value for key, value in step.items() if key not in times} for step in steps]


def _whole(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return 0
    return round(value)


def expected_plays(events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One dict per play (all `playback_*` events with one play_id), SPEC §4 fields, from
    the play's distinct events. Attributes (first_ts, device_model, app_version) come from
    the first event by (ts, event_id), content_id from the first event that has one."""
    by_play: dict[str, dict[str, dict[str, Any]]] = {}
    for event in events:
        play_id = (event.get("props") or {}).get("play_id")
        if event["type"].startswith("playback_") and isinstance(play_id, str) and play_id:
            by_play.setdefault(play_id, {})[event["event_id"]] = event
    plays = []
    for distinct in by_play.values():
        ordered = sorted(distinct.values(), key=lambda e: (e["ts"], e["event_id"]))
        first = ordered[0]
        starts = [e for e in ordered if e["type"] == "playback_start"]
        fatal = [
            e for e in ordered if e["type"] == "playback_error" and e["props"].get("fatal") is True
        ]
        heartbeats = [e for e in ordered if e["type"] == "playback_heartbeat"]
        rebuffers = [e for e in ordered if e["type"] == "playback_rebuffer"]
        start_ts = starts[0]["ts"] if starts else None
        startup_ms = _whole(starts[0]["props"].get("startup_ms")) if starts else 0
        played = sum(
            _whole(e["props"].get("played_ms"))
            for e in ordered
            if e["type"] in ("playback_heartbeat", "playback_end")
        )
        rebuffer_ms = sum(_whole(e["props"].get("duration_ms")) for e in rebuffers)
        fatal_ts = fatal[0]["ts"] if fatal else None
        content = next(
            (e["props"]["content_id"] for e in ordered if e["props"].get("content_id")), ""
        )
        plays.append(
            {
                "first_ts": first["ts"],
                "content_id": content,
                "device_model": first.get("device_model", ""),
                "app_version": first.get("app_version", ""),
                "started": start_ts is not None,
                "video_start_failure": fatal_ts is not None
                and (start_ts is None or fatal_ts < start_ts),
                "playback_failure": fatal_ts is not None
                and start_ts is not None
                and fatal_ts >= start_ts,
                "exit_before_start": start_ts is None and fatal_ts is None,
                "startup_ms": startup_ms,
                "rebuffer_ms": rebuffer_ms,
                "rebuffer_count": len(rebuffers),
                "bitrate_switches": sum(e["type"] == "playback_quality_change" for e in ordered),
                "bitrate_weighted": sum(
                    _whole(e["props"].get("bitrate_kbps")) * _whole(e["props"].get("played_ms"))
                    for e in heartbeats
                ),
                "bitrate_ms": sum(_whole(e["props"].get("played_ms")) for e in heartbeats),
                "watch_ms": startup_ms + played + rebuffer_ms,
                **_expected_qoe(ordered, startup_ms, played + startup_ms + rebuffer_ms),
            }
        )
    return plays


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _expected_qoe(ordered: list[dict[str, Any]], startup_ms: int, watch_ms: int) -> dict[str, Any]:
    """SPEC §4 "QoE beyond the counts" of one play from its events in order."""
    shifts = [
        (_number(e["props"].get("from_kbps")), _number(e["props"].get("to_kbps")))
        for e in ordered
        if e["type"] == "playback_quality_change"
    ]
    shifts = [(a, b) for a, b in shifts if a is not None and b is not None]
    framed = [
        e
        for e in ordered
        if e["type"] == "playback_heartbeat"
        and (
            _number(e["props"].get("frames_rendered")) is not None
            or _number(e["props"].get("frames_dropped")) is not None
        )
    ]
    rendered = sum(_whole(e["props"].get("frames_rendered")) for e in framed)
    dropped = sum(_whole(e["props"].get("frames_dropped")) for e in framed)
    codes = {
        str(e["props"]["code"])[:128]
        for e in ordered
        if e["type"] == "playback_error" and isinstance(e["props"].get("code"), str | int)
    }
    starts = [e for e in ordered if e["type"] == "playback_start"]
    fatal = [
        e["ts"]
        for e in ordered
        if e["type"] == "playback_error" and e["props"].get("fatal") is True
    ]
    rebuffers = [e for e in ordered if e["type"] == "playback_rebuffer"]
    rebuffer_ms = sum(_whole(e["props"].get("duration_ms")) for e in rebuffers)
    scores = expected_scores(
        bool(starts),
        bool(fatal),
        startup_ms,
        len(rebuffers),
        rebuffer_ms,
        watch_ms,
        rendered,
        dropped,
    )
    return {
        "downshifts": sum(after < before for before, after in shifts),
        "upshifts": sum(after > before for before, after in shifts),
        "error_codes": set(sorted(codes)[:16]),
        "frames_rendered": rendered,
        "frames_dropped": dropped,
        "frames_ms": sum(_whole(e["props"].get("played_ms")) for e in framed),
        "experience": scores[0],
        "startup_score": scores[1],
        "smoothness_score": scores[2],
        "quality_score": scores[3],
    }


def _hundredths(value: float) -> int:
    return math.floor(value * 100 + 0.5)


def expected_scores(
    started: bool,
    failed: bool,
    startup_ms: int,
    rebuffers: int,
    rebuffer_ms: int,
    watch_ms: int,
    rendered: int,
    dropped: int,
) -> tuple[int | None, int | None, int | None, int | None]:
    """README "Experience score", written again from its text: (overall, startup,
    smoothness, quality) of one play in hundredths, None where undefined."""
    if not started:
        return (0 if failed else None), None, None, None
    startup = 100 * 8 / (8 + startup_ms / 1000)
    fraction = rebuffer_ms / watch_ms if watch_ms else 0.0
    smooth = (100 / math.sqrt(1 + (rebuffers / 2) ** 2) + 100 * math.exp(-10 * fraction)) / 2
    quality = 100 * math.exp(-10 * dropped / (rendered + dropped)) if rendered + dropped else None
    parts = [startup, smooth] + ([quality] if quality is not None else [])
    overall = 0.0 if failed else math.prod(parts) ** (1 / len(parts))
    return (
        _hundredths(overall),
        _hundredths(startup),
        _hundredths(smooth),
        None if quality is None else _hundredths(quality),
    )


def _pct(part: int, whole: int) -> float | None:
    return part / whole * 100 if whole else None


def _mean_score(values: list[int]) -> float | None:
    return sum(values) / len(values) / 100 if values else None


def qoe_metrics(plays: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """SPEC §4 "QoE beyond the counts" over a group of plays (dicts of `expected_plays`
    or anything with the same keys)."""
    n = len(plays)
    startups = [p["startup_ms"] for p in plays if p["started"]]
    watch = sum(p["watch_ms"] for p in plays)
    rebuffered = [p for p in plays if p["rebuffer_count"]]
    rendered = sum(p["frames_rendered"] for p in plays)
    dropped = sum(p["frames_dropped"] for p in plays)
    frames_ms = sum(p["frames_ms"] for p in plays)
    codes: dict[str, int] = {}
    for play in plays:
        for code in play["error_codes"]:
            codes[code] = codes.get(code, 0) + 1
    scored = [p for p in plays if p["experience"] is not None]
    started = [p for p in plays if p["started"]]
    failures = sum(bool(p["video_start_failure"] or p["playback_failure"]) for p in scored)
    return {
        "video_start_failure_pct": _pct(sum(p["video_start_failure"] for p in plays), n),
        "exit_before_start_pct": _pct(sum(p["exit_before_start"] for p in plays), n),
        "playback_failure_pct": _pct(sum(p["playback_failure"] for p in plays), n),
        "startup_ms_p90": _exact_quantile(startups, 0.9) if startups else None,
        "startup_ms_p99": _exact_quantile(startups, 0.99) if startups else None,
        "rebuffer_frequency": (
            sum(p["rebuffer_count"] for p in plays) / (watch / 60_000) if watch else None
        ),
        "rebuffer_duration_ms_avg": (
            sum(p["rebuffer_ms"] for p in rebuffered) / len(rebuffered) if rebuffered else None
        ),
        "downshifts": sum(p["downshifts"] for p in plays),
        "upshifts": sum(p["upshifts"] for p in plays),
        "downshift_pct": _pct(sum(p["downshifts"] > 0 for p in started), len(started)),
        "errors": [
            {"code": code, "plays": count}
            for code, count in sorted(codes.items(), key=lambda item: (-item[1], item[0]))[:10]
        ],
        "avg_fps": rendered / (frames_ms / 1000) if frames_ms else None,
        "dropped_frame_pct": _pct(dropped, rendered + dropped),
        "experience_score": _mean_score([p["experience"] for p in scored]),
        "success_score": _pct(len(scored) - failures, len(scored)),
        "startup_score": _mean_score(
            [p["startup_score"] for p in started if p["startup_score"] is not None]
        ),
        "smoothness_score": _mean_score(
            [p["smoothness_score"] for p in started if p["smoothness_score"] is not None]
        ),
        "quality_score": _mean_score(
            [p["quality_score"] for p in started if p["quality_score"] is not None]
        ),
    }


def _exact_quantile(values: list[int], level: float) -> int:
    """ClickHouse quantileExact: the element at index floor(level·n) of the sorted values."""
    ordered = sorted(values)
    return ordered[min(int(level * len(ordered)), len(ordered) - 1)]


def playback_metrics(plays: list[dict[str, Any]]) -> dict[str, Any]:
    """The SPEC §5 playback fields over a group of plays."""
    startups = [p["startup_ms"] for p in plays if p["started"]]
    watch_ms = sum(p["watch_ms"] for p in plays)
    rebuffer_ms = sum(p["rebuffer_ms"] for p in plays)
    bitrate_ms = sum(p["bitrate_ms"] for p in plays)
    return {
        "plays": len(plays),
        "started": sum(p["started"] for p in plays),
        "video_start_failures": sum(p["video_start_failure"] for p in plays),
        "exits_before_start": sum(p["exit_before_start"] for p in plays),
        "playback_failures": sum(p["playback_failure"] for p in plays),
        "startup_ms_p50": _exact_quantile(startups, 0.5) if startups else None,
        "startup_ms_p95": _exact_quantile(startups, 0.95) if startups else None,
        "rebuffer_ratio": rebuffer_ms / watch_ms if watch_ms else None,
        "rebuffer_count": sum(p["rebuffer_count"] for p in plays),
        "bitrate_switches": sum(p["bitrate_switches"] for p in plays),
        "avg_bitrate_kbps": sum(p["bitrate_weighted"] for p in plays) / bitrate_ms
        if bitrate_ms
        else None,
        "watch_hours": watch_ms / 3_600_000,
        **qoe_metrics(plays),
    }


def _bucket(ts: int, interval: str) -> str:
    moment = datetime.fromtimestamp(ts // 1000, UTC)
    if interval == "day":
        return moment.date().isoformat()
    if interval == "hour":
        return moment.strftime("%Y-%m-%dT%H:00:00Z")
    return moment.strftime("%Y-%m-%dT%H:%M:00Z")


def expected_playback(
    plays: list[dict[str, Any]], day_from: date, day_to: date, group_by: str
) -> list[dict[str, Any]]:
    """`/v1/metrics/playback` rows: plays whose first event is on a day of [from, to];
    group "all" for none, else one row per value, most plays first, then by value."""
    chosen = [p for p in plays if day_from <= utc_day(p["first_ts"]) <= day_to]
    if group_by == "none":
        return [{"group": "all", **playback_metrics(chosen)}]
    groups: dict[str, list[dict[str, Any]]] = {}
    for play in chosen:
        groups.setdefault(play[group_by], []).append(play)
    rows = [{"group": g, **playback_metrics(members)} for g, members in groups.items()]
    return sorted(rows, key=lambda row: (-row["plays"], row["group"]))


def expected_playback_series(
    plays: list[dict[str, Any]], day_from: date, day_to: date, interval: str
) -> list[dict[str, Any]]:
    buckets: dict[str, list[dict[str, Any]]] = {}
    for play in plays:
        if day_from <= utc_day(play["first_ts"]) <= day_to:
            buckets.setdefault(_bucket(play["first_ts"], interval), []).append(play)
    return [{"t": t, **playback_metrics(buckets[t])} for t in sorted(buckets)]
