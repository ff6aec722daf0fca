"""Delivery control: when to retry a failed notification, and when to stop calling an endpoint.

Both are pure: the caller passes the attempt number, a random source and the clock (seconds, e.g.
`time.monotonic()`), so the behaviour is tested without sleeping.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

_STEP = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
DEFAULT_SCHEDULE = "1s,5s,30s,2m,10m,1h,6h,1d,2d"
# While a half-open breaker's probe is out, how soon waiting items look again.
HALF_OPEN_RECHECK_SECONDS = 1.0


class RandomSource(Protocol):
    """What the schedule needs from a random generator (`random.Random` fits)."""

    def uniform(self, a: float, b: float) -> float:
        """Return a number between a and b."""
        ...


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    """The ceiling of the wait before each retry; past the last step the notification is dead-lettered.

    The ceilings grow (exponential backoff); the wait itself is drawn uniformly between 0 and the
    ceiling (full jitter), so receivers that failed together are not all retried in the same second.
    """

    steps: tuple[float, ...]

    def __post_init__(self) -> None:
        """Refuse an empty schedule or one whose ceilings shrink."""
        if not self.steps or any(s <= 0 for s in self.steps):
            raise ValueError("a retry schedule needs at least one positive step")
        if any(b < a for a, b in zip(self.steps, self.steps[1:], strict=False)):
            raise ValueError("retry steps must not shrink")

    @classmethod
    def parse(cls, text: str = DEFAULT_SCHEDULE) -> RetrySchedule:
        """Parse configuration such as "1s,5s,30s,2m,10m,1h,6h,1d,2d"."""
        steps = []
        for item in text.split(","):
            match = _STEP.match(item.strip())
            if not match:
                raise ValueError(f"not a retry step: {item.strip()!r} (e.g. 500ms, 5s, 2m, 1h, 1d)")
            steps.append(float(match.group(1)) * _UNIT_SECONDS[match.group(2)])
        return cls(tuple(steps))

    @classmethod
    def exponential(cls, base: float, factor: float, cap: float, retries: int) -> RetrySchedule:
        """Return `retries` ceilings base, base*factor, ... capped at `cap`."""
        return cls(tuple(min(cap, base * factor**i) for i in range(retries)))

    @property
    def max_attempts(self) -> int:
        """Return the number of attempts in all, the first one included."""
        return len(self.steps) + 1

    def delay_for(self, attempt: int, rng: RandomSource) -> float | None:
        """Return seconds to wait after failed attempt `attempt` (from 1), or None to dead-letter."""
        if attempt < 1:
            raise ValueError("attempts are numbered from 1")
        if attempt > len(self.steps):
            return None
        return rng.uniform(0.0, self.steps[attempt - 1])


class BreakerState(StrEnum):
    """Closed: calls flow. Open: calls are refused. Half-open: one probe call is allowed."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass
class CircuitBreaker:
    """Stops calling an endpoint after `failure_threshold` failures in a row, for `reset_after` seconds.

    A timeout costs the caller the whole wait, so `timeout_threshold` timeouts in a row (fewer than
    `failure_threshold`) open it too: a receiver that hangs is cut off after a couple of attempts,
    one that answers an error quickly gets the longer run. After that one probe is let through
    (half-open): success closes the breaker, failure opens it again.
    A probe that never reports back is replaced by another after `reset_after`, so a lost result
    cannot leave the endpoint refused for ever.
    """

    failure_threshold: int
    reset_after: float
    timeout_threshold: int = 2
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0
    timeouts: int = 0
    opened_at: float = 0.0
    probe_started_at: float | None = field(default=None)

    def __post_init__(self) -> None:
        """Refuse settings that would never open or never close."""
        if self.failure_threshold < 1 or self.timeout_threshold < 1 or self.reset_after <= 0:
            raise ValueError("failure_threshold and timeout_threshold must be >= 1, reset_after > 0")

    def closed_in(self, now: float) -> float:
        """Return how many seconds until a call may be tried (0: now); changes nothing.

        What the lanes ask before taking an item in: while this is above 0 the item is sent back to
        wait in JetStream instead of queueing for an endpoint that is known to be down.
        """
        if self.state is BreakerState.CLOSED:
            return 0.0
        if self.state is BreakerState.OPEN:
            return max(0.0, self.opened_at + self.reset_after - now)
        if self.probe_started_at is None:
            return 0.0
        # A probe is out: look again soon, as its answer may close the breaker at any moment.
        return min(HALF_OPEN_RECHECK_SECONDS, max(0.0, self.probe_started_at + self.reset_after - now))

    def allow(self, now: float) -> bool:
        """Return whether a call may be made now; in half-open, only one probe at a time."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            if now - self.opened_at < self.reset_after:
                return False
            self.state = BreakerState.HALF_OPEN
            self.probe_started_at = now
            return True
        if self.probe_started_at is not None and now - self.probe_started_at < self.reset_after:
            return False
        self.probe_started_at = now
        return True

    def record_success(self) -> None:
        """Record a delivered call: the endpoint is healthy again."""
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.timeouts = 0
        self.probe_started_at = None

    def record_failure(self, now: float, *, timed_out: bool = False) -> None:
        """Record a failed call; open when a threshold is reached or a probe fails."""
        self.failures += 1
        self.timeouts = self.timeouts + 1 if timed_out else 0
        if (
            self.state is BreakerState.HALF_OPEN
            or self.failures >= self.failure_threshold
            or self.timeouts >= self.timeout_threshold
        ):
            self.state = BreakerState.OPEN
            self.opened_at = now
            self.probe_started_at = None


@dataclass
class EndpointBreakers:
    """One circuit breaker per endpoint (for example per subscription URL), made on first use."""

    failure_threshold: int
    reset_after: float
    timeout_threshold: int = 2
    breakers: dict[str, CircuitBreaker] = field(default_factory=dict)

    def for_endpoint(self, endpoint: str) -> CircuitBreaker:
        """Return the endpoint's breaker."""
        if endpoint not in self.breakers:
            self.breakers[endpoint] = CircuitBreaker(
                self.failure_threshold, self.reset_after, self.timeout_threshold
            )
        return self.breakers[endpoint]

    def closed_in(self, endpoint: str, now: float) -> float:
        """Return how many seconds until the endpoint may be called (0 for one never seen)."""
        breaker = self.breakers.get(endpoint)
        return 0.0 if breaker is None else breaker.closed_in(now)
