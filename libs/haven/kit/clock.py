"""An injectable clock, so that tests move time instead of sleeping."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    """Return the current time in UTC."""
    return datetime.now(UTC)


def today(clock: Clock) -> date:
    """Return the calendar date (UTC) of the clock's current time."""
    return clock().date()
