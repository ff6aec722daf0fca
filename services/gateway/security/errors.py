"""Why a caller or a key was refused; shared by `keys` and `tokens` so neither imports the other's errors."""

from __future__ import annotations

from enum import StrEnum


class AuthFailure(StrEnum):
    """Why a bearer token was refused. Safe to return to the caller: it names no organisation or key."""

    MISSING = "missing"
    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad-signature"
    UNKNOWN_KEY = "unknown-key"
    EXPIRED = "expired"
    NOT_YET_VALID = "not-yet-valid"
    WRONG_AUDIENCE = "wrong-audience"
    WRONG_ISSUER = "wrong-issuer"
    UNKNOWN_ORGANISATION = "unknown-organisation"
    ROLE_NOT_HELD = "role-not-held"


class AuthenticationError(Exception):
    """The caller could not be authenticated: answer 401 with `www_authenticate` as the header."""

    def __init__(self, reason: AuthFailure) -> None:
        super().__init__(reason.value)
        self.reason = reason

    @property
    def www_authenticate(self) -> str:
        """The `WWW-Authenticate` header value for the 401 (RFC 6750 section 3)."""
        # RFC 6750: a request with no credentials gets the bare challenge, without an error code.
        if self.reason is AuthFailure.MISSING:
            return 'Bearer realm="haven"'
        return f'Bearer realm="haven", error="invalid_token", error_description="{self.reason.value}"'


class SigningKeyError(RuntimeError):
    """The gateway's own key material is unusable (bad file, short secret, missing library): fail start-up."""


class KeySourceUnavailableError(RuntimeError):
    """The identity provider's JWKS could not be fetched: answer 503, the caller is not at fault."""
