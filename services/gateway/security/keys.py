"""Where the gateway's token keys come from: a dev HMAC key on disk, a shared secret, or a JWKS URL.

A `TokenVerifier` answers only "which key and which algorithms check this token"; `verify_token` in
`tokens.py` does every claim check, so HMAC and JWKS tokens pass exactly the same rules.

- dev, one machine: `load_or_create_dev_key(data_dir)` + `HmacTokenVerifier(key)`; `haven token`
  signs with the same key file.
- dev cluster: `HmacTokenVerifier(HAVEN_JWT_SECRET)`.
- production: `JwksTokenVerifier(HAVEN_JWT_JWKS_URL)`, which needs the `cryptography` package.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, Protocol
from urllib.parse import urlparse

import jwt
import jwt.algorithms
from jwt import PyJWK, PyJWKClient, PyJWKSet
from jwt.exceptions import (
    InvalidTokenError,
    PyJWKClientConnectionError,
    PyJWKClientError,
    PyJWKSetError,
)

from .errors import AuthenticationError, AuthFailure, KeySourceUnavailableError, SigningKeyError

DEV_KEY_FILE: Final = "dev-signing-key"
DEV_KEY_BYTES: Final = 32
# RFC 7518 section 3.2: an HS256 key must be at least as long as the hash output (256 bits).
MIN_HMAC_KEY_BYTES: Final = 32
# The issuer of tokens that Haven signs itself (dev HMAC); an identity provider has its own.
DEV_ISSUER: Final = "haven-dev"
ASYMMETRIC_ALGORITHMS: Final = ("RS256", "ES256")
_LOCAL_HOSTS: Final = frozenset({"localhost", "127.0.0.1", "::1"})


def load_or_create_dev_key(data_dir: Path) -> bytes:
    """Return the 32-byte dev signing key in `<data_dir>/dev-signing-key`, creating it (mode 0600) once.

    Raises SigningKeyError if the existing file is readable by group or others, or is not 32 bytes.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / DEV_KEY_FILE
    try:
        return _read_dev_key(path)
    except FileNotFoundError:
        _create_dev_key(path)
    return _read_dev_key(path)


def _create_dev_key(path: Path) -> None:
    # mkstemp creates the file 0600 whatever the umask; hard-linking it into place fails if another
    # process got there first, so the key is created exactly once and never seen half-written.
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{DEV_KEY_FILE}.")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(secrets.token_bytes(DEV_KEY_BYTES))
            file.flush()
            os.fsync(file.fileno())
        # If another gateway or `haven token` created it first, theirs is the key.
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        os.unlink(temporary)


def _read_dev_key(path: Path) -> bytes:
    # O_NOFOLLOW and fstat on the open descriptor: the mode we check is the file we read.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as file:
        mode = stat.S_IMODE(os.fstat(file.fileno()).st_mode)
        if mode & 0o077:
            raise SigningKeyError(
                f"{path} has mode {mode:04o}: a signing key must be private to its owner; "
                f"run `chmod 600 {path}`"
            )
        key = file.read()
    if len(key) != DEV_KEY_BYTES:
        raise SigningKeyError(
            f"{path} holds {len(key)} bytes, not {DEV_KEY_BYTES}: delete it to have a new dev key made"
        )
    return key


class TokenVerifier(Protocol):
    """Finds the key that checks a token; `verify_token` does the rest."""

    @property
    def algorithms(self) -> Sequence[str]:
        """The only algorithms accepted; fixed by configuration, never read from the token."""
        ...

    @property
    def issuer(self) -> str | None:
        """The `iss` a token must carry, or None to accept any issuer this key signs for."""
        ...

    def key_for(self, token: str) -> bytes | PyJWK:
        """Return the key to check `token` with, or raise AuthenticationError."""
        ...


def hmac_secret(secret: bytes | str) -> bytes:
    """Return `secret` as bytes, refusing one too short to be a safe HS256 key."""
    raw = secret.encode("utf-8") if isinstance(secret, str) else secret
    if len(raw) < MIN_HMAC_KEY_BYTES:
        raise SigningKeyError(
            f"the HMAC signing secret is {len(raw)} bytes; HS256 needs at least {MIN_HMAC_KEY_BYTES}"
        )
    return raw


def _has_cryptography() -> bool:
    # A function, not the imported flag, so tests can stand in for either installation.
    return bool(jwt.algorithms.has_crypto)


class HmacTokenVerifier:
    """Checks HS256 tokens signed with a shared secret: the dev key file or HAVEN_JWT_SECRET."""

    algorithms: Sequence[str] = ("HS256",)

    def __init__(self, secret: bytes | str, *, issuer: str | None = DEV_ISSUER) -> None:
        """Hold `secret` (at least 32 bytes) and the issuer its tokens must name."""
        self._secret = hmac_secret(secret)
        self.issuer = issuer

    def key_for(self, token: str) -> bytes:
        """Return the shared secret: one key checks every token."""
        return self._secret

    def __repr__(self) -> str:
        # Never the secret: verifiers end up in logs and tracebacks.
        return f"HmacTokenVerifier(issuer={self.issuer!r})"


class JwksTokenVerifier:
    """Checks RS256/ES256 tokens against the identity provider's published keys (HAVEN_JWT_JWKS_URL).

    The keys are fetched on first use and kept, parsed, for `lifespan_seconds`: a request whose key
    is known costs no fetch and no key parsing. A token naming a key not in the set (the provider
    rotated its keys) fetches the set again at once, but not more often than every
    `refresh_cooldown_seconds`, so tokens with made-up key ids cannot make the gateway hammer the
    provider.
    """

    def __init__(
        self,
        url: str,
        *,
        issuer: str | None = None,
        algorithms: Sequence[str] = ASYMMETRIC_ALGORITHMS,
        timeout_seconds: float = 5.0,
        lifespan_seconds: float = 300.0,
        refresh_cooldown_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Prepare to fetch keys from `url` (fetched lazily).

        Raises SigningKeyError if `cryptography` is not installed, if `url` is not https (plain http
        only for localhost), or if `algorithms` holds a symmetric one.
        """
        # Checked here, not on the first request, so a misconfigured gateway fails at start-up.
        if not _has_cryptography():
            raise SigningKeyError(
                "JwksTokenVerifier needs the 'cryptography' package to check RS256/ES256 signatures, "
                "and it is not installed: install it (pip install 'pyjwt[crypto]'), "
                "or for dev use HAVEN_JWT_SECRET with HmacTokenVerifier"
            )
        parsed = urlparse(url)
        # Keys fetched over plain http could be swapped in transit, letting anyone mint tokens.
        if parsed.scheme != "https" and not (parsed.scheme == "http" and parsed.hostname in _LOCAL_HOSTS):
            raise SigningKeyError(f"the JWKS URL must use https (plain http only for localhost): {url}")
        # Mixing HS* in would let a token signed with the public key as an HMAC secret pass.
        if not algorithms or any(a.startswith("HS") or a == "none" for a in algorithms):
            raise SigningKeyError(
                f"JwksTokenVerifier takes asymmetric algorithms only, not {list(algorithms)}"
            )
        self.url = url
        self.issuer = issuer
        self.algorithms = tuple(algorithms)
        self._lifespan = lifespan_seconds
        self._cooldown = refresh_cooldown_seconds
        self._clock = clock
        # Only the fetching is PyJWKClient's: its own key lookup parses the whole set on every call.
        self._client = PyJWKClient(url, cache_jwk_set=False, timeout=timeout_seconds)
        self._keys: dict[str, PyJWK] = {}
        self._fetched_at: float | None = None
        # Fetches run in a worker thread (see `needs_fetch`): one at a time, and the others then reuse it.
        self._lock = threading.Lock()

    def key_for(self, token: str) -> PyJWK:
        """Return the published key named by the token's `kid`, fetching the JWKS when needed."""
        kid = _key_id(token)
        key = self._keys.get(kid) if not self._expired() else None
        if key is not None:
            return key
        with self._lock:
            if self._should_fetch(kid):
                self._fetch()
            key = self._keys.get(kid)
        if key is None:
            raise AuthenticationError(AuthFailure.UNKNOWN_KEY)
        return key

    def needs_fetch(self, token: str) -> bool:
        """Say whether `key_for(token)` would fetch the JWKS, blocking on the network (then use a thread)."""
        try:
            kid = _key_id(token)
        except AuthenticationError:
            return False  # refused without any fetch
        return self._should_fetch(kid)

    def _expired(self) -> bool:
        return self._fetched_at is None or self._clock() - self._fetched_at >= self._lifespan

    def _should_fetch(self, kid: str) -> bool:
        if self._expired():
            return True
        assert self._fetched_at is not None
        return kid not in self._keys and self._clock() - self._fetched_at >= self._cooldown

    def _fetch(self) -> None:
        try:
            data = self._client.fetch_data()
            found = PyJWKSet.from_dict(data)
        except PyJWKClientConnectionError as error:
            raise KeySourceUnavailableError(f"cannot fetch the JWKS from {self.url}: {error}") from error
        except (PyJWKSetError, PyJWKClientError) as error:
            raise KeySourceUnavailableError(f"the JWKS at {self.url} is unusable: {error}") from error
        # Signing keys with an id only (as PyJWKClient): an encryption key never checks a token.
        self._keys = {k.key_id: k for k in found.keys if k.key_id and k.public_key_use in ("sig", None)}
        self._fetched_at = self._clock()

    def __repr__(self) -> str:
        return f"JwksTokenVerifier({self.url!r}, issuer={self.issuer!r})"


def _key_id(token: str) -> str:
    """Return the `kid` in a token's header (not yet verified: it only picks the key to verify with)."""
    try:
        header = jwt.get_unverified_header(token)
    except InvalidTokenError as error:
        raise AuthenticationError(AuthFailure.MALFORMED) from error
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise AuthenticationError(AuthFailure.UNKNOWN_KEY)
    return kid
