"""Parsing and checking of the query API's common parameters (SPEC §5): dates and ranges.

Every failure raises `BadRequest`, which the app answers with 400 {"detail": message}.

Rules:
- dates are `YYYY-MM-DD` (ASCII digits; nothing else, no times or week dates) between
  MIN_DAY and MAX_DAY;
- `from` and `to` are inclusive; when `to` is missing it is today (UTC), when `from` is
  missing it is `to` - (DEFAULT_RANGE_DAYS - 1) (and at most the endpoint's maximum);
- from <= to, and a range covers at most MAX_RANGE_DAYS days (a module constant rather
  than a setting; change it here). Minute series cover at most MAX_MINUTE_RANGE_DAYS.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Final

MAX_RANGE_DAYS: Final = 366
MAX_MINUTE_RANGE_DAYS: Final = 7
DEFAULT_RANGE_DAYS: Final = 30
# The ClickHouse Date type ends in 2149 and the activity tables count days from 1970; no
# analytics data predates 2000.
MIN_DAY: Final = date(2000, 1, 1)
MAX_DAY: Final = date(2100, 12, 31)
MAX_USER_ID_LENGTH: Final = 128  # SPEC §2

_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


class BadRequest(ValueError):
    """A parameter the API refuses; the message is shown to the client."""


def shown(value: str, limit: int = 40) -> str:
    """A client value for an error message, quoted and cut short."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


def parse_day(name: str, value: str) -> date:
    if not _DATE.fullmatch(value):
        raise BadRequest(f"{name}: {shown(value)} is not a date; use YYYY-MM-DD")
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise BadRequest(f"{name}: {shown(value)} is not a valid calendar date") from None
    if not MIN_DAY <= day <= MAX_DAY:
        raise BadRequest(f"{name}: dates must be between {MIN_DAY} and {MAX_DAY}")
    return day


@dataclass(frozen=True, slots=True)
class DayRange:
    day_from: date
    day_to: date
    from_defaulted: bool = False  # `from` was not given (an endpoint may narrow it)

    @property
    def days(self) -> int:
        return (self.day_to - self.day_from).days + 1

    def key(self) -> tuple[tuple[str, str], ...]:
        return (("from", self.day_from.isoformat()), ("to", self.day_to.isoformat()))


def day_range(
    raw_from: str | None, raw_to: str | None, today: date, max_days: int = MAX_RANGE_DAYS
) -> DayRange:
    """The inclusive range of `from`/`to` (defaults in the module docstring)."""
    day_to = parse_day("to", raw_to) if raw_to is not None else today
    if raw_from is not None:
        day_from = parse_day("from", raw_from)
    else:
        day_from = max(day_to - timedelta(days=DEFAULT_RANGE_DAYS - 1), MIN_DAY)
    if day_from > day_to:
        raise BadRequest(f"from ({day_from}) is after to ({day_to})")
    checked = DayRange(day_from, day_to, from_defaulted=raw_from is None)
    limit_range(checked, max_days)
    return checked


def limit_range(days: DayRange, max_days: int, what: str = "a range") -> DayRange:
    """`days` if it covers at most `max_days`; a defaulted `from` is moved up to fit;
    else BadRequest."""
    if days.days > max_days and days.from_defaulted:
        return DayRange(days.day_to - timedelta(days=max_days - 1), days.day_to, True)
    if days.days > max_days:
        raise BadRequest(
            f"{what} covers at most {max_days} days; from {days.day_from} to {days.day_to} "
            f"is {days.days}"
        )
    return days


def check_user_id(user_id: str) -> str:
    if not user_id:
        raise BadRequest("user_id must not be empty")
    if len(user_id) > MAX_USER_ID_LENGTH:
        raise BadRequest(f"user_id is longer than {MAX_USER_ID_LENGTH} characters")
    return user_id
