from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.notifier.domain import (
    EVENT_TYPE_HEADER,
    NOTIFICATION_ID_HEADER,
    SIGNATURE_HEADER,
    delivery_headers,
    sign,
    sign_with_secrets,
    verify,
)

BODY = b'{"referral_id":"ref-1"}'
SECRET = b"whsec-test"
T = 1_700_000_000
DOC = Path(__file__).resolve().parents[3] / "docs" / "notifications.md"


def test_header_is_t_and_hex_hmac_of_t_dot_body() -> None:
    expected = hmac.new(SECRET, b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert sign(BODY, SECRET, T) == f"t={T},v1={expected}"


@pytest.mark.parametrize(
    ("body", "secret", "now", "ok"),
    [
        (BODY, SECRET, T, True),
        (BODY, SECRET, T + 300, True),
        (BODY, SECRET, T - 300, True),
        (BODY, SECRET, T + 301, False),  # replayed too late
        (BODY, SECRET, T - 301, False),  # from too far in the future
        (BODY + b" ", SECRET, T, False),  # body changed
        (BODY, b"other", T, False),  # wrong secret
    ],
)
def test_verify(body: bytes, secret: bytes, now: int, ok: bool) -> None:
    assert verify(sign(BODY, SECRET, T), body, secret, now) is ok


@pytest.mark.parametrize(
    "header",
    ["", "v1=abc", f"t={T}", f"t=abc,v1={'0' * 64}", f"t={T},t={T},v1=x", "garbage", f"t={T};v1=x"],
)
def test_malformed_headers_are_not_valid(header: str) -> None:
    assert verify(header, BODY, SECRET, T) is False


def test_a_timestamp_swapped_into_a_valid_header_fails() -> None:
    header = sign(BODY, SECRET, T).replace(f"t={T}", f"t={T + 10}")
    assert verify(header, BODY, SECRET, T + 10) is False


def test_rotation_accepts_either_secret() -> None:
    header = sign_with_secrets(BODY, [b"new", b"old"], T)
    assert verify(header, BODY, b"old", T) and verify(header, BODY, b"new", T)
    assert not verify(header, BODY, b"neither", T)


@given(body=st.binary(max_size=256), secret=st.binary(min_size=1, max_size=64), t=st.integers(0, 2**40))
def test_sign_then_verify_round_trips(body: bytes, secret: bytes, t: int) -> None:
    assert verify(sign(body, secret, t), body, secret, t)


def test_delivery_headers_name_the_idempotency_key_and_type() -> None:
    headers = delivery_headers("n-1", "review-due", BODY, SECRET, T)
    assert headers[NOTIFICATION_ID_HEADER] == "n-1"
    assert headers[EVENT_TYPE_HEADER] == "review-due"
    assert verify(headers[SIGNATURE_HEADER], BODY, SECRET, T)
    assert [SIGNATURE_HEADER, NOTIFICATION_ID_HEADER, EVENT_TYPE_HEADER] == [
        "X-Haven-Signature",
        "X-Haven-Notification-Id",
        "X-Haven-Event-Type",
    ]


def test_the_receiver_snippet_in_the_docs_agrees_with_sign(monkeypatch: pytest.MonkeyPatch) -> None:
    code = re.search(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert code, "docs/notifications.md must keep its Python verification snippet"
    namespace: dict[str, Any] = {}
    exec(code.group(1), namespace)
    monkeypatch.setattr(namespace["time"], "time", lambda: T + 5)
    check = namespace["verify_haven"]
    assert check(sign(BODY, SECRET, T), BODY, SECRET)
    assert not check(sign(BODY, SECRET, T), BODY + b"x", SECRET)
    assert not check(sign(BODY, SECRET, T - 400), BODY, SECRET)
