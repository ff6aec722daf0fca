"""ISO 8601 durations as the policy files write them (`PT15M`, `P1D`, `P6M`, `-P90D`).

Deadlines are exact lengths of time, so they may not use months or years; schedule offsets are
calendar periods (six months missing is counted on the calendar, 004 L657), so they may.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta

_PATTERN = re.compile(
    r"^(?P<sign>-)?P(?:(?P<years>\d+)Y)?(?:(?P<months>\d+)M)?(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+)S)?)?$"
)


class DurationError(ValueError):
    """Raised for text that is not a supported ISO 8601 duration."""


@dataclass(frozen=True, slots=True)
class Period:
    """A signed calendar period: whole months plus an exact length of time."""

    text: str
    months: int
    delta: timedelta

    def add_to(self, moment: datetime) -> datetime:
        """Return `moment` moved by this period (months first, clamped to the month's last day)."""
        return _add_months(moment, self.months) + self.delta

    def add_to_date(self, day: date) -> date:
        """Return `day` moved by this period; any part smaller than a day is dropped."""
        moved = _add_months(datetime(day.year, day.month, day.day), self.months) + self.delta
        return moved.date()


def _add_months(moment: datetime, months: int) -> datetime:
    if months == 0:
        return moment
    index = moment.year * 12 + moment.month - 1 + months
    year, month = divmod(index, 12)
    # 31 March + 1 month is 30 April, not 1 May: a review is never pushed past the month it falls in.
    last = calendar.monthrange(year, month + 1)[1]
    return moment.replace(year=year, month=month + 1, day=min(moment.day, last))


def parse_period(text: str) -> Period:
    """Parse a signed ISO 8601 duration that may use years and months."""
    match = _PATTERN.match(text.strip())
    if not match or text.strip() in {"P", "-P"} or text.strip().endswith("T"):
        raise DurationError(f"not an ISO 8601 duration: {text!r}")
    part = {k: int(v) for k, v in match.groupdict().items() if k != "sign" and v is not None}
    sign = -1 if match.group("sign") else 1
    delta = timedelta(
        weeks=part.get("weeks", 0),
        days=part.get("days", 0),
        hours=part.get("hours", 0),
        minutes=part.get("minutes", 0),
        seconds=part.get("seconds", 0),
    )
    months = part.get("years", 0) * 12 + part.get("months", 0)
    return Period(text=text.strip(), months=sign * months, delta=sign * delta)


def parse_duration(text: str) -> timedelta:
    """Parse a positive exact ISO 8601 duration (no years or months, which vary in length)."""
    period = parse_period(text)
    if period.months:
        raise DurationError(f"a deadline must be an exact length, not months or years: {text!r}")
    if period.delta <= timedelta(0):
        raise DurationError(f"a deadline must be positive: {text!r}")
    return period.delta
