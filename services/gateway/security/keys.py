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
from collections.abc import Sequence
from pathlib import Path
from typing import Final, Protocol
from urllib.parse import urlparse

import jwt
import jwt.algorithms
from jwt import PyJWK, PyJWKClient
from jwt.exceptions import (
    DecodeError,
    PyJWKClientConnectionError,
    PyJWKClientError,
    PyJWKError,
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
    """Checks RS256/ES256 tokens against the identity provider's published keys (HAVEN_JWT_JWKS_URL)."""

    def __init__(
        self,
        url: str,
        *,
        issuer: str | None = None,
        algorithms: Sequence[str] = ASYMMETRIC_ALGORITHMS,
        timeout_seconds: float = 5.0,
    ) -> None:
        """Prepare to fetch keys from `url` (fetched lazily, cached for five minutes).

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
        self._client = PyJWKClient(url, timeout=timeout_seconds)

    def key_for(self, token: str) -> PyJWK:
        """Return the published key named by the token's `kid`, fetching the JWKS when needed."""
        try:
            return self._client.get_signing_key_from_jwt(token)
        except PyJWKClientConnectionError as error:
            raise KeySourceUnavailableError(f"cannot fetch the JWKS from {self.url}: {error}") from error
        except PyJWKSetError as error:
            raise KeySourceUnavailableError(f"the JWKS at {self.url} is unusable: {error}") from error
        except DecodeError as error:
            raise AuthenticationError(AuthFailure.MALFORMED) from error
        except (PyJWKClientError, PyJWKError) as error:
            raise AuthenticationError(AuthFailure.UNKNOWN_KEY) from error

    def __repr__(self) -> str:
        return f"JwksTokenVerifier({self.url!r}, issuer={self.issuer!r})"
