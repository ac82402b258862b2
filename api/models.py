"""Request and response models of the query API. Field names are the SPEC §5 names; the
OpenAPI document is generated from these, and every answer is validated and serialized
through them (api/results.py), so the document and the wire format cannot drift."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from schemas.funnels import MAX_STEPS, MAX_WINDOW_SECONDS, MIN_STEPS

# ----------------------------------------------------------------------------- errors


class ErrorResponse(BaseModel):
    detail: str = Field(description="what was wrong, for a human")


# ----------------------------------------------------------------------------- activity


class ActiveUsersDay(BaseModel):
    day: date
    dau: int = Field(description="users active on the day")
    wau: int = Field(description="users active on any day of [day-6, day]")
    mau: int = Field(description="users active on any day of [day-29, day]")
    stickiness: float = Field(description="dau / mau; 0 when mau is 0")


class RetentionCohort(BaseModel):
    cohort: date = Field(description="first day of the cohort: the day, or the week's Monday")
    size: int = Field(description="users whose first-ever event is in the cohort")
    retained: list[int] = Field(
        description="retained[k]: users of the cohort active in period cohort+k, for every "
        "period that has started; retained[0] = size"
    )


# ----------------------------------------------------------------------------- filters
# SPEC §5.1. Filters, ops and breakdowns are checked by sinks/queries/properties.py (one
# place for the language); the models only give the shapes.

FilterValue = StrictStr | StrictBool | StrictInt | StrictFloat


class PropertyFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    property: StrictStr = Field(
        description="type, device_model, app_version, os, region, source, session_id, "
        "or props.<path> (dots reach nested props)"
    )
    op: StrictStr = Field(
        description="eq, neq, in, not_in, contains, not_contains, gt, gte, lt, lte, is_set, "
        "is_not_set"
    )
    value: FilterValue | list[FilterValue] | None = Field(
        default=None, description="a list for in/not_in, a number for gt..lte, none for is_set"
    )


# ----------------------------------------------------------------------------- funnels


class FunnelStepSpec(BaseModel):
    """An event type with optional equality filters on its props (schemas/funnels.py)."""

    model_config = ConfigDict(extra="forbid")

    event: str = Field(description="event type, [a-z][a-z0-9_.]{0,63}")
    where: dict[str, FilterValue] = Field(
        default_factory=dict,
        description="prop -> value; a string, number or bool equal to the event's prop",
    )


class FunnelQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    steps: Annotated[
        list[StrictStr | FunnelStepSpec], Field(min_length=MIN_STEPS, max_length=MAX_STEPS)
    ] = Field(description="event types, or {event, where} objects")
    window_seconds: StrictInt = Field(
        gt=0, le=MAX_WINDOW_SECONDS, description="max time from the first step to the last"
    )
    from_: StrictStr | None = Field(
        default=None, alias="from", description="YYYY-MM-DD, first day a chain may start"
    )
    to: StrictStr | None = Field(default=None, description="YYYY-MM-DD, inclusive")
    project: StrictStr | None = Field(
        default=None, description="defaults to the `project` query parameter, else default"
    )
    filters: list[PropertyFilter] = Field(
        default_factory=list, max_length=20, description="every step's events must match"
    )
    breakdown: list[StrictStr] = Field(
        default_factory=list,
        max_length=1,
        description="one property: its value on the user's earliest step-1 event in range",
    )
    breakdown_limit: StrictInt | None = Field(
        default=None, description="values listed one by one (1..100, default 25)"
    )


class FunnelStepResult(BaseModel):
    event: str
    users: int = Field(description="users whose furthest step is at least this one")
    conversion_from_start: float = Field(description="users / users of the first step")
    conversion_from_previous: float = Field(description="users / users of the previous step")
    median_time_to_convert_s: float | None = Field(
        default=None,
        description="median over users reaching the step of their shortest time from step 1 "
        "(null for step 1, for nobody, and for predefined funnels)",
    )
    avg_time_to_convert_s: float | None = Field(default=None, description="the mean of the same")


class FunnelResult(BaseModel):
    steps: list[FunnelStepResult]


class FunnelGroupResult(BaseModel):
    breakdown: dict[str, str] = Field(description="property -> value ($none, $other)")
    steps: list[FunnelStepResult]


class FunnelBreakdownResult(BaseModel):
    breakdown: list[FunnelGroupResult]


class FunnelDefinitionOut(BaseModel):
    name: str
    steps: list[FunnelStepSpec]
    window_seconds: int


# ----------------------------------------------------------------------------- playback


class _GroupField(BaseModel):
    group: str = Field(description='the group_by value; "all" when group_by=none')


class _TimeField(BaseModel):
    t: str = Field(description='"2026-10-01T13:00:00Z" (minute, hour) or "2026-10-01" (day)')


class ErrorCount(BaseModel):
    code: str = Field(description="playback_error props.code, as text")
    plays: int = Field(description="plays with at least one error of this code")


class PlaybackMetrics(BaseModel):
    plays: int
    started: int
    video_start_failures: int
    exits_before_start: int
    playback_failures: int
    startup_ms_p50: int | None = Field(description="null without a started play")
    startup_ms_p95: int | None
    rebuffer_ratio: float | None = Field(description="null without watch time")
    rebuffer_count: int
    bitrate_switches: int
    avg_bitrate_kbps: float | None = Field(description="null without heartbeat play time")
    watch_hours: float
    # SPEC §4 "QoE beyond the counts"
    video_start_failure_pct: float | None = Field(description="/ plays x 100; null without")
    exit_before_start_pct: float | None
    playback_failure_pct: float | None
    startup_ms_p90: int | None = Field(description="null without a started play")
    startup_ms_p99: int | None
    rebuffer_frequency: float | None = Field(
        description="rebuffers per minute watched; null without watch time"
    )
    rebuffer_duration_ms_avg: float | None = Field(
        description="rebuffer time / plays with a rebuffer; null without one"
    )
    downshifts: int = Field(description="quality changes with to_kbps < from_kbps")
    upshifts: int = Field(description="quality changes with to_kbps > from_kbps")
    downshift_pct: float | None = Field(
        description="started plays with a downshift / started plays x 100"
    )
    errors: list[ErrorCount] = Field(description="the 10 error codes on most plays")
    avg_fps: float | None = Field(
        description="frames rendered per second played (heartbeats with frames); null without"
    )
    dropped_frame_pct: float | None = Field(
        description="dropped / (rendered + dropped) x 100; null without frames"
    )
    experience_score: float | None = Field(
        description="0-100, mean over plays that started or failed (README); null without"
    )
    success_score: float | None = Field(description="0-100: share of scored plays not failed")
    startup_score: float | None = Field(description="0-100, mean over started plays")
    smoothness_score: float | None = Field(description="0-100, mean over started plays")
    quality_score: float | None = Field(
        description="0-100, mean over started plays with frame data"
    )


# Base order puts `group` / `t` first in the JSON.
class PlaybackSummaryRow(PlaybackMetrics, _GroupField):
    pass


class PlaybackPoint(PlaybackMetrics, _TimeField):
    pass


class ConcurrencyPoint(BaseModel):
    t: str = Field(
        description='bucket start, UTC: "2026-10-01T13:05:00Z" (minute, hour) or "2026-10-01"'
    )
    peak_concurrent: int = Field(
        description="the largest concurrent_viewers of the bucket's minutes (plays whose "
        "[first event, last event] spans the minute); for interval=minute, the minute's"
    )


class ConcurrentNow(BaseModel):
    t: str = Field(description='the moment answered, UTC: "2026-10-01T13:05:42Z"')
    concurrent_viewers: int = Field(
        description="plays with an event in the last 60 s and no playback_end or fatal error"
    )


# ----------------------------------------------------------------------------- events


class EventCount(BaseModel):
    t: str = Field(description='"2026-10-01" (day) or "2026-10-01T13:00:00Z" (hour), UTC')
    type: str
    count: int = Field(description="distinct events (by event_id)")


# ----------------------------------------------------------------------------- services


class ServiceCounts(BaseModel):
    social_delivered: int
    content_published: int
    encoding_queued: int
    encoding_succeeded: int
    encoding_failed: int
    encode_ms_p95: float | None = Field(description="null when no succeeded job had a time")
    emails_sent: int
    emails_failed: int


class _DayField(BaseModel):
    day: date


class ServiceDay(ServiceCounts, _DayField):
    pass


class ServiceMetrics(BaseModel):
    days: list[ServiceDay] = Field(description="every day of [from, to], oldest first")
    totals: ServiceCounts


# ----------------------------------------------------------------------------- users


class ErasureScheduled(BaseModel):
    status: Literal["scheduled"] = "scheduled"


# ----------------------------------------------------------------------------- insights


class InsightBody(BaseModel):
    """What every insight body has: the project and the days."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    project: StrictStr | None = Field(
        default=None, description="defaults to the `project` query parameter, else default"
    )
    from_: StrictStr | None = Field(default=None, alias="from", description="YYYY-MM-DD")
    to: StrictStr | None = Field(default=None, description="YYYY-MM-DD, inclusive")
    filters: list[PropertyFilter] = Field(default_factory=list, max_length=20)
    breakdown: list[StrictStr] = Field(default_factory=list, description="0, 1 or 2 properties")
    breakdown_limit: StrictInt | None = Field(
        default=None, description="combinations listed one by one (1..100, default 25)"
    )


class TrendSeriesSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event: StrictStr | None = Field(description="an event type, or null for any")
    math: StrictStr = Field(
        default="total",
        description="total, unique_users, per_user_avg, sum, avg, min, max, median, p90, p95, p99",
    )
    property: StrictStr | None = Field(
        default=None, description="the numeric property of sum..p99 (props.<path>)"
    )
    filters: list[PropertyFilter] = Field(default_factory=list, max_length=20)


class TrendsBody(InsightBody):
    interval: Literal["hour", "day", "week", "month"] = "day"
    series: list[TrendSeriesSpec] = Field(min_length=1, max_length=10)


class TrendPoint(BaseModel):
    t: str = Field(description="the interval's start: 2026-10-01, or 2026-10-01T13:00:00Z")
    value: float


class TrendSeries(BaseModel):
    index: int = Field(description="the series' position in the request")
    event: str | None
    math: str
    breakdown: dict[str, str] | None = Field(
        description="property -> value ($none when missing, $other for the rest)"
    )
    points: list[TrendPoint]
    total: float = Field(description="the math over the whole range")


class TrendsResult(BaseModel):
    series: list[TrendSeries]


class SchemaEvent(BaseModel):
    type: str
    count: int = Field(description="distinct events in the range")
    users: int = Field(description="distinct users with such an event")
    last_seen: str = Field(description="time of the latest one, ISO 8601 UTC")


class SchemaValue(BaseModel):
    value: str
    count: int


class SchemaProperty(BaseModel):
    property: str = Field(description="as the filters name it: os, props.a.b ...")
    type: Literal["string", "number", "bool"]
    count: int = Field(description="distinct events that have it")
    top_values: list[SchemaValue] = Field(description="10 most frequent, string properties only")


class LifecyclePoint(BaseModel):
    t: date = Field(description="the period's first day (a week's Monday)")
    new: int = Field(description="users whose first-ever event is in the period")
    returning: int = Field(description="active in the period and the one before, not new")
    resurrecting: int = Field(
        description="active in the period, not in the one before, first seen before that"
    )
    dormant: int = Field(description="active in the period before and not in this one")


class StickinessPoint(BaseModel):
    days: int = Field(description="k, 1..n")
    users: int = Field(description="users active on exactly k days of the range")


class SessionsBody(InsightBody):
    pass


class SessionsDay(BaseModel):
    day: date
    breakdown: dict[str, str] | None = Field(description="the first event's values, or null")
    sessions: int
    users: int
    duration_s_avg: float = Field(description="last event time - first, in seconds")
    duration_s_median: float
    events_per_session: float
    bounce_rate: float = Field(description="sessions of one event / sessions")


class ActiveUsersBody(InsightBody):
    pass


class ActiveUsersGroupDay(BaseModel):
    day: date
    breakdown: dict[str, str] | None
    dau: int = Field(description="users with a matching event on the day")
    wau: int = Field(description="... on any day of [day-6, day]")
    mau: int = Field(description="... on any day of [day-29, day]")


class RetentionBody(InsightBody):
    period: Literal["day", "week"] = "day"
    start_event: StrictStr | None = Field(
        default=None, description="the event that puts a user in a cohort; null: any"
    )
    return_event: StrictStr | None = Field(
        default=None, description="the event that counts as coming back; null: any"
    )


class RetentionGroupCohort(BaseModel):
    cohort: date = Field(description="the cohort's day, or its week's Monday")
    breakdown: dict[str, str] | None = Field(description="the first start event's values")
    size: int
    retained: list[int] = Field(description="retained[k]: cohort users returning in period k")


class PlaybackInsightBody(InsightBody):
    interval: Literal["minute", "hour", "day"] | None = Field(
        default=None, description="also per bucket of the plays' first events (UTC)"
    )


class _BreakdownField(BaseModel):
    breakdown: dict[str, str] | None = Field(description="the first events' values, or null")


class PlaybackInsightGroup(PlaybackMetrics, _BreakdownField):
    points: list[PlaybackPoint] | None = Field(
        description="per bucket that has plays, in time order; null without an interval"
    )


class PlaybackInsightResult(BaseModel):
    groups: list[PlaybackInsightGroup] = Field(
        description="most plays first, $other last; one group (breakdown null) without a breakdown"
    )
