from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.notifier.domain import BreakerState, CircuitBreaker, EndpointBreakers, RetrySchedule


class Edge:
    """A random source that always returns one end of the range, to see the bounds."""

    def __init__(self, high: bool) -> None:
        self.high = high

    def uniform(self, a: float, b: float) -> float:
        return b if self.high else a


def state(breaker: CircuitBreaker) -> BreakerState:
    """Read the state afresh (mypy would otherwise keep an earlier narrowing)."""
    return breaker.state


def test_default_schedule_parses_to_seconds() -> None:
    schedule = RetrySchedule.parse()
    assert schedule.steps == (1, 5, 30, 120, 600, 3600, 21600, 86400, 172800)
    assert schedule.max_attempts == 10


def test_full_jitter_draws_between_zero_and_the_step() -> None:
    schedule = RetrySchedule.parse("1s,5s,30s")
    assert [schedule.delay_for(n, Edge(high=True)) for n in (1, 2, 3)] == [1, 5, 30]
    assert schedule.delay_for(2, Edge(high=False)) == 0


def test_past_the_last_step_it_gives_up() -> None:
    schedule = RetrySchedule.parse("1s,5s")
    assert schedule.delay_for(2, random.Random(1)) is not None
    assert schedule.delay_for(3, random.Random(1)) is None
    with pytest.raises(ValueError):
        schedule.delay_for(0, random.Random(1))


@given(attempt=st.integers(1, 9), seed=st.integers(0, 2**32))
def test_every_delay_is_within_its_step(attempt: int, seed: int) -> None:
    schedule = RetrySchedule.parse()
    delay = schedule.delay_for(attempt, random.Random(seed))
    assert delay is not None and 0 <= delay <= schedule.steps[attempt - 1]


def test_exponential_steps_are_capped() -> None:
    assert RetrySchedule.exponential(1, 2, 10, 5).steps == (1, 2, 4, 8, 10)


@pytest.mark.parametrize("text", ["", "1s,,5s", "5x", "10s,1s", "0s", "-1s"])
def test_bad_schedules_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        RetrySchedule.parse(text)


def test_breaker_opens_after_threshold_and_probes_once_after_reset() -> None:
    breaker = CircuitBreaker(failure_threshold=3, reset_after=60)
    for now in (0, 1):
        breaker.record_failure(now)
    assert breaker.allow(2) and state(breaker) is BreakerState.CLOSED
    breaker.record_failure(2)
    assert state(breaker) is BreakerState.OPEN
    assert not breaker.allow(61)
    assert breaker.allow(62) and state(breaker) is BreakerState.HALF_OPEN
    assert not breaker.allow(63), "only one probe at a time"
    breaker.record_success()
    assert state(breaker) is BreakerState.CLOSED and breaker.allow(64)


def test_a_failed_probe_opens_again_for_a_full_reset_period() -> None:
    breaker = CircuitBreaker(failure_threshold=1, reset_after=10)
    breaker.record_failure(0)
    assert breaker.allow(10)
    breaker.record_failure(11)
    assert state(breaker) is BreakerState.OPEN
    assert not breaker.allow(20) and breaker.allow(21)


def test_a_lost_probe_is_replaced_after_reset() -> None:
    breaker = CircuitBreaker(failure_threshold=1, reset_after=10)
    breaker.record_failure(0)
    assert breaker.allow(10)
    assert not breaker.allow(19)
    assert breaker.allow(20)


def test_success_resets_the_failure_count() -> None:
    breaker = CircuitBreaker(failure_threshold=2, reset_after=10)
    breaker.record_failure(0)
    breaker.record_success()
    breaker.record_failure(1)
    assert state(breaker) is BreakerState.CLOSED


def test_breakers_are_per_endpoint() -> None:
    board = EndpointBreakers(failure_threshold=1, reset_after=5)
    board.for_endpoint("https://a").record_failure(0)
    assert not board.for_endpoint("https://a").allow(1)
    assert board.for_endpoint("https://b").allow(1)
    with pytest.raises(ValueError):
        CircuitBreaker(failure_threshold=0, reset_after=5)
