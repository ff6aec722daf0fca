"""Signed deliveries: the HMAC-SHA256 signature a receiver checks before trusting a notification.

The header value is `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`. Signing the timestamp
with the body lets a receiver refuse replays older than its tolerance; several `v1=` entries may be
sent while a secret is rotated, and a receiver accepts the body if any one matches.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import Final

SIGNATURE_HEADER: Final = "X-Haven-Signature"
NOTIFICATION_ID_HEADER: Final = "X-Haven-Notification-Id"
EVENT_TYPE_HEADER: Final = "X-Haven-Event-Type"
DEFAULT_TOLERANCE: Final = 300


def _digest(body: bytes, secret: bytes, timestamp: int) -> str:
    return hmac.new(secret, str(timestamp).encode("ascii") + b"." + body, hashlib.sha256).hexdigest()


def sign(body: bytes, secret: bytes, timestamp: int) -> str:
    """Return the signature header value for `body` sent at `timestamp` (unix seconds)."""
    return sign_with_secrets(body, [secret], timestamp)


def sign_with_secrets(body: bytes, secrets: Iterable[bytes], timestamp: int) -> str:
    """Return a header value with one `v1=` per secret (current first), for secret rotation."""
    signatures = [f"v1={_digest(body, secret, timestamp)}" for secret in secrets]
    if not signatures:
        raise ValueError("at least one secret is needed")
    return ",".join([f"t={timestamp}", *signatures])


def verify(header: str, body: bytes, secret: bytes, now: int, tolerance: int = DEFAULT_TOLERANCE) -> bool:
    """Return whether `header` signs exactly `body` with `secret`, within `tolerance` seconds of `now`.

    Any malformed header is simply not valid: a receiver answers 401 either way.
    """
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            return False
        if key == "t":
            if timestamp is not None or not value.isdigit():
                return False
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates or abs(now - timestamp) > tolerance:
        return False
    expected = _digest(body, secret, timestamp)
    # compare_digest on every candidate: the time taken says nothing about how much matched.
    return any(hmac.compare_digest(expected, c) for c in candidates)


def delivery_headers(
    notification_id: str, event_type: str, body: bytes, secret: bytes, timestamp: int
) -> dict[str, str]:
    """Return the headers of one rest-hook delivery (content type, signature, idempotency key, type)."""
    return {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(body, secret, timestamp),
        NOTIFICATION_ID_HEADER: notification_id,
        EVENT_TYPE_HEADER: event_type,
    }
