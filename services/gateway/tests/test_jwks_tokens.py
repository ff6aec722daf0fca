"""Production tokens end to end: RS256 tokens checked against a JWKS served over real HTTP.

An RSA key made here signs the tokens; a local HTTP server publishes its public half as the
identity provider would. The gateway (in-process, real nats-server) accepts a referral with a token
it signed and answers 401 with an OperationOutcome to every other token, picks up a rotated key,
fetches the key set once rather than per request, and answers 503 while the provider is unreachable.
"""

from __future__ import annotations

import json
import secrets
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from nats.aio.client import Client as NatsClient

from services.gateway.security import AuthenticationError, AuthFailure, JwksTokenVerifier, verify_token
from services.gateway.state import GatewayState
from services.gateway.testing import in_process_app
from tests.conftest import nats_client, nats_server  # noqa: F401  (the real server these tests use)
from tests.support.clock import MovableClock

NOW = datetime(2026, 11, 23, 3, 30, tzinfo=UTC)
ISSUER = "https://idp.haven.test"
EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "police-night-referral.json"


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class IdentityProvider:
    """Publishes a JWKS over HTTP on 127.0.0.1 and counts how often it is fetched."""

    def __init__(self) -> None:
        self.keys: dict[str, rsa.RSAPrivateKey] = {}
        self.fetches = 0
        provider = self

        class Jwks(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider.fetches += 1
                body = provider.jwks()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Jwks)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/.well-known/jwks.json"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def jwks(self) -> bytes:
        published = []
        for kid, key in self.keys.items():
            jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
            published.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        return json.dumps({"keys": published}).encode()

    def token(
        self,
        kid: str,
        *,
        key: rsa.RSAPrivateKey | None = None,
        issued: datetime = NOW,
        lifetime: timedelta = timedelta(hours=1),
        **claims: Any,
    ) -> str:
        body = {
            "iss": ISSUER,
            "aud": "haven",
            "org": "demo-police",
            "role": "referrer",
            "iat": int(issued.timestamp()),
            "exp": int((issued + lifetime).timestamp()),
            **claims,
        }
        return jwt.encode(body, key or self.keys[kid], algorithm="RS256", headers={"kid": kid})

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def provider() -> Iterator[IdentityProvider]:
    idp = IdentityProvider()
    idp.keys["k1"] = new_key()
    yield idp
    idp.close()


@pytest.fixture
async def gateway(
    nats_client: NatsClient,  # noqa: F811
    provider: IdentityProvider,
) -> AsyncIterator[httpx.AsyncClient]:
    app = await in_process_app(nats_client, clock=MovableClock(NOW))
    state: GatewayState = app.state.haven
    # What service.token_verifier builds from HAVEN_JWT_JWKS_URL, with the provider's issuer; no
    # cooldown, so a rotated key is fetched at the first token that names it.
    state.verifier = JwksTokenVerifier(provider.url, issuer=ISSUER, refresh_cooldown_seconds=0)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http:
        yield http


def referral() -> dict[str, Any]:
    bundle: dict[str, Any] = json.loads(EXAMPLE.read_text())
    bundle["entry"][0]["resource"]["birthDate"] = (
        date(1995, 1, 1) + timedelta(days=secrets.randbelow(3000))
    ).isoformat()
    return bundle


async def post(http: httpx.AsyncClient, token: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    return await http.post("/fhir", json=referral(), headers=headers)


def refusal(answer: httpx.Response) -> str:
    """Return the reason of a 401, checking it is an OperationOutcome with the bearer challenge."""
    assert answer.status_code == 401, answer.text
    outcome = answer.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    diagnostics: str = outcome["issue"][0]["diagnostics"]
    return diagnostics.removeprefix("authentication failed: ")


async def test_a_referral_with_a_token_the_provider_signed_is_accepted(
    gateway: httpx.AsyncClient, provider: IdentityProvider
) -> None:
    answer = await post(gateway, provider.token("k1"))
    assert answer.status_code == 201, answer.text
    assert answer.headers["Location"].startswith("ServiceRequest/")


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda idp: idp.token("k1", key=new_key()), AuthFailure.BAD_SIGNATURE),
        (lambda idp: idp.token("k1", issued=NOW - timedelta(hours=3)), AuthFailure.EXPIRED),
        (lambda idp: idp.token("k1", aud="another-service"), AuthFailure.WRONG_AUDIENCE),
        (lambda idp: idp.token("k1", iss="https://impostor.test"), AuthFailure.WRONG_ISSUER),
        (lambda idp: idp.token("k-unknown", key=new_key()), AuthFailure.UNKNOWN_KEY),
    ],
    ids=["another-key", "expired", "wrong-audience", "wrong-issuer", "unknown-key"],
)
async def test_every_other_token_is_refused_with_401_and_an_operation_outcome(
    gateway: httpx.AsyncClient, provider: IdentityProvider, make: Any, reason: AuthFailure
) -> None:
    assert refusal(await post(gateway, make(provider))) == reason.value


async def test_a_rotated_key_is_picked_up_and_the_withdrawn_one_refused(
    gateway: httpx.AsyncClient, provider: IdentityProvider
) -> None:
    assert (await post(gateway, provider.token("k1"))).status_code == 201
    old = provider.keys.pop("k1")
    provider.keys["k2"] = new_key()

    assert (await post(gateway, provider.token("k2"))).status_code == 201
    # A token not seen before (a fresh jti): one already checked would pass from the verified-token
    # cache for up to a minute, as documented in tokens.py.
    assert refusal(await post(gateway, provider.token("k1", key=old, jti="fresh"))) == "unknown-key"


async def test_the_key_set_is_fetched_once_not_per_request(
    gateway: httpx.AsyncClient, provider: IdentityProvider
) -> None:
    for _ in range(3):
        assert (await post(gateway, provider.token("k1"))).status_code == 201
    assert provider.fetches == 1


def test_made_up_key_ids_do_not_make_the_gateway_hammer_the_provider(provider: IdentityProvider) -> None:
    now = [0.0]
    verifier = JwksTokenVerifier(provider.url, refresh_cooldown_seconds=30, clock=lambda: now[0])
    verify_token(verifier, provider.token("k1"), now=NOW)
    for kid in ("x1", "x2", "x3"):
        with pytest.raises(AuthenticationError) as refused:
            verify_token(verifier, provider.token(kid, key=new_key()), now=NOW)
        assert refused.value.reason is AuthFailure.UNKNOWN_KEY
    assert provider.fetches == 1, "within the cooldown an unknown key id fetches nothing"
    now[0] = 31.0
    provider.keys["x1"] = new_key()
    verify_token(verifier, provider.token("x1"), now=NOW)
    assert provider.fetches == 2, "after it, one fetch finds the new key"


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_an_unreachable_provider_answers_503_not_401(
    nats_client: NatsClient,  # noqa: F811
    provider: IdentityProvider,
) -> None:
    app = await in_process_app(nats_client, clock=MovableClock(NOW))
    state: GatewayState = app.state.haven
    state.verifier = JwksTokenVerifier(f"http://127.0.0.1:{closed_port()}/jwks.json", timeout_seconds=1)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http:
        answer = await post(http, provider.token("k1"))
    assert answer.status_code == 503, answer.text
    assert answer.json()["resourceType"] == "OperationOutcome"
    assert answer.json()["issue"][0]["code"] == "transient"
