"""A token checked once is not checked again for a while, and that shortcut weakens no rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.gateway.security import AuthenticationError, AuthFailure, HmacTokenVerifier, verify_token
from services.gateway.security.tokens import issue_token, verify_token_async

NOW = datetime(2026, 11, 23, 4, 0, tzinfo=UTC)
SECRET = "cache-test-secret-of-at-least-32-bytes!"


class CountingVerifier(HmacTokenVerifier):
    """The HMAC verifier, counting how often it is asked for the key (once per signature check)."""

    def __init__(self, secret: str) -> None:
        super().__init__(secret)
        self.checks = 0

    def key_for(self, token: str) -> bytes:
        self.checks += 1
        return super().key_for(token)


def test_a_repeated_token_is_checked_once() -> None:
    verifier = CountingVerifier(SECRET)
    token = issue_token(SECRET, "demo-police", "referrer", now=NOW)
    first = verify_token(verifier, token, now=NOW)
    again = verify_token(verifier, token, now=NOW + timedelta(seconds=5))
    assert first == again
    assert verifier.checks == 1


def test_a_checked_token_still_expires() -> None:
    verifier = CountingVerifier(SECRET)
    token = issue_token(SECRET, "demo-police", "referrer", now=NOW, ttl=timedelta(minutes=1))
    verify_token(verifier, token, now=NOW)
    with pytest.raises(AuthenticationError) as refused:
        verify_token(verifier, token, now=NOW + timedelta(minutes=5))
    assert refused.value.reason is AuthFailure.EXPIRED


def test_a_token_checked_by_one_verifier_is_not_taken_by_another() -> None:
    token = issue_token(SECRET, "demo-police", "referrer", now=NOW)
    verify_token(HmacTokenVerifier(SECRET), token, now=NOW)
    other = HmacTokenVerifier("another-secret-of-at-least-32-bytes!!")
    with pytest.raises(AuthenticationError) as refused:
        verify_token(other, token, now=NOW)
    assert refused.value.reason is AuthFailure.BAD_SIGNATURE


def test_a_refused_token_is_refused_again() -> None:
    verifier = CountingVerifier(SECRET)
    forged = issue_token("forged-secret-of-at-least-32-bytes!!!", "demo-police", "referrer", now=NOW)
    for _ in range(2):
        with pytest.raises(AuthenticationError):
            verify_token(verifier, forged, now=NOW)
    assert verifier.checks == 2, "only tokens that passed are remembered"


async def test_the_async_check_gives_the_same_principal() -> None:
    verifier = HmacTokenVerifier(SECRET)
    token = issue_token(SECRET, "demo-police", "referrer", now=NOW)
    assert await verify_token_async(verifier, token, now=NOW) == verify_token(verifier, token, now=NOW)
    with pytest.raises(AuthenticationError):
        await verify_token_async(verifier, None, now=NOW)
