"""The dev key is made once, private, and reused; verifiers refuse weak or unreachable key sources."""

import base64
import json
import os
import socket
import stat
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
import pytest

from services.gateway.security import (
    AuthenticationError,
    AuthFailure,
    HmacTokenVerifier,
    JwksTokenVerifier,
    KeySourceUnavailableError,
    SigningKeyError,
    keys,
    load_or_create_dev_key,
    verify_token,
)

NOW = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_dev_key_is_created_once_private_and_reused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    previous = os.umask(0)  # the most permissive umask must still give 0600
    try:
        first = load_or_create_dev_key(data_dir)
    finally:
        os.umask(previous)
    key_file = data_dir / "dev-signing-key"
    assert len(first) == 32
    assert key_file.read_bytes() == first
    assert mode_of(key_file) == 0o600
    assert load_or_create_dev_key(data_dir) == first
    assert [p.name for p in data_dir.iterdir()] == ["dev-signing-key"], "no temporary file left behind"


def test_two_data_dirs_get_different_keys(tmp_path: Path) -> None:
    assert load_or_create_dev_key(tmp_path / "a") != load_or_create_dev_key(tmp_path / "b")


def test_racing_creators_all_get_the_same_key(tmp_path: Path) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        keys = set(pool.map(lambda _: load_or_create_dev_key(tmp_path), range(16)))
    assert len(keys) == 1


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    load_or_create_dev_key(tmp_path)
    (tmp_path / "dev-signing-key").chmod(0o644)
    with pytest.raises(SigningKeyError, match="chmod 600"):
        load_or_create_dev_key(tmp_path)


def test_a_truncated_key_file_is_refused(tmp_path: Path) -> None:
    key_file = tmp_path / "dev-signing-key"
    key_file.write_bytes(b"short")
    key_file.chmod(0o600)
    with pytest.raises(SigningKeyError, match="5 bytes"):
        load_or_create_dev_key(tmp_path)


def test_a_short_hmac_secret_is_refused() -> None:
    with pytest.raises(SigningKeyError, match="at least 32"):
        HmacTokenVerifier("too-short")


def test_the_hmac_verifier_never_shows_its_secret() -> None:
    secret = "s" * 40
    assert secret not in repr(HmacTokenVerifier(secret))


def test_jwks_without_cryptography_fails_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keys, "_has_cryptography", lambda: False)
    with pytest.raises(SigningKeyError, match="cryptography"):
        JwksTokenVerifier("https://idp.example/.well-known/jwks.json")


@pytest.fixture
def crypto_present(monkeypatch: pytest.MonkeyPatch) -> None:
    # Stands in for an installed `cryptography`; the tests below only use keys PyJWT handles without it.
    monkeypatch.setattr(keys, "_has_cryptography", lambda: True)


@pytest.mark.usefixtures("crypto_present")
@pytest.mark.parametrize(
    ("url", "algorithms"),
    [
        ("http://idp.example/jwks.json", ("RS256",)),
        ("https://idp.example/jwks.json", ("HS256",)),
        ("https://idp.example/jwks.json", ("RS256", "none")),
        ("https://idp.example/jwks.json", ()),
    ],
)
def test_jwks_refuses_plain_http_and_symmetric_algorithms(url: str, algorithms: tuple[str, ...]) -> None:
    with pytest.raises(SigningKeyError):
        JwksTokenVerifier(url, algorithms=algorithms)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.mark.usefixtures("crypto_present")
def test_an_unreachable_jwks_is_the_servers_problem_not_the_callers() -> None:
    verifier = JwksTokenVerifier(f"http://127.0.0.1:{closed_port()}/jwks.json", timeout_seconds=1)
    token = jwt.encode({"org": "demo-police"}, "k" * 32, headers={"kid": "k1"})
    with pytest.raises(KeySourceUnavailableError):
        verify_token(verifier, token, now=NOW)


JWKS_SECRET = b"j" * 32


@pytest.fixture
def jwks_url() -> Iterator[str]:
    # A symmetric key published in a JWKS: what an attacker would hope the gateway accepts.
    body = json.dumps(
        {
            "keys": [
                {
                    "kty": "oct",
                    "kid": "k1",
                    "alg": "HS256",
                    "k": base64.urlsafe_b64encode(JWKS_SECRET).rstrip(b"=").decode(),
                }
            ]
        }
    ).encode()

    class Jwks(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Jwks)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.usefixtures("crypto_present")
def test_jwks_refuses_a_token_signed_with_an_algorithm_it_was_not_configured_for(jwks_url: str) -> None:
    verifier = JwksTokenVerifier(jwks_url)
    token = jwt.encode(
        {"aud": "haven", "org": "demo-police", "role": "referrer", "iat": 0, "exp": 2**40},
        JWKS_SECRET,
        algorithm="HS256",
        headers={"kid": "k1"},
    )
    with pytest.raises(AuthenticationError) as refused:
        verify_token(verifier, token, now=NOW)
    assert refused.value.reason is AuthFailure.BAD_SIGNATURE


@pytest.mark.usefixtures("crypto_present")
@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (jwt.encode({"org": "x"}, JWKS_SECRET, headers={"kid": "k9"}), AuthFailure.UNKNOWN_KEY),
        ("not.a.token", AuthFailure.MALFORMED),
    ],
)
def test_jwks_refuses_unknown_keys_and_garbage(jwks_url: str, token: str, reason: AuthFailure) -> None:
    with pytest.raises(AuthenticationError) as refused:
        verify_token(JwksTokenVerifier(jwks_url), token, now=NOW)
    assert refused.value.reason is reason
