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


# ----------------------------------------------------------------------------- funnels

PropFilterValue = StrictStr | StrictBool | StrictInt | StrictFloat


class FunnelStepSpec(BaseModel):
    """An event type with optional equality filters on its props (schemas/funnels.py)."""

    model_config = ConfigDict(extra="forbid")

    event: str = Field(description="event type, [a-z][a-z0-9_.]{0,63}")
    where: dict[str, PropFilterValue] = Field(
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


class FunnelStepResult(BaseModel):
    event: str
    users: int = Field(description="users whose furthest step is at least this one")
    conversion_from_start: float = Field(description="users / users of the first step")
    conversion_from_previous: float = Field(description="users / users of the previous step")


class FunnelResult(BaseModel):
    steps: list[FunnelStepResult]


class FunnelDefinitionOut(BaseModel):
    name: str
    steps: list[FunnelStepSpec]
    window_seconds: int


# ----------------------------------------------------------------------------- playback


class _GroupField(BaseModel):
    group: str = Field(description='the group_by value; "all" when group_by=none')


class _TimeField(BaseModel):
    t: str = Field(description='"2026-10-01T13:00:00Z" (minute, hour) or "2026-10-01" (day)')


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


# Base order puts `group` / `t` first in the JSON.
class PlaybackSummaryRow(PlaybackMetrics, _GroupField):
    pass


class PlaybackPoint(PlaybackMetrics, _TimeField):
    pass


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
