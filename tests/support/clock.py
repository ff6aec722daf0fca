"""A clock a test moves by hand, injected where a service would read the time."""

from __future__ import annotations

from datetime import datetime


class MovableClock:
    """Returns ``now`` until the test changes it."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now
