"""Bearer tokens: Haven's dev tokens are issued here, and every token is verified here into a Principal.

A token names one organisation and one role (`org`, `role`); the registry in
`haven.organisations` decides whether that organisation still exists and still holds that role, and
supplies its area (`gss_codes`) and referrer kind. Times are checked against the `now` the caller
passes, so the rules test without a clock.

Claims issued: iss "haven-dev", aud "haven", sub "<org>:<role>", org, role, gss (the organisation's
GSS codes: an LA platform's or EDT's area), iat, exp, jti.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Final

import jwt
from jwt.exceptions import (
    DecodeError,
    InvalidAlgorithmError,
    InvalidAudienceError,
    InvalidIssuerError,
    InvalidSignatureError,
    InvalidTokenError,
    MissingRequiredClaimError,
)

from haven.organisations import (
    Organisation,
    Role,
    UnknownOrganisationError,
    get_organisation,
    load_organisations,
)

from .errors import AuthenticationError, AuthFailure
from .keys import DEV_ISSUER, JwksTokenVerifier, TokenVerifier, hmac_secret
from .principal import Principal

AUDIENCE: Final = "haven"
DEFAULT_TTL: Final = timedelta(hours=12)
# Tokens from an identity provider are stamped by another machine's clock.
CLOCK_SKEW: Final = timedelta(seconds=30)
_REQUIRED_CLAIMS: Final = ["aud", "exp", "iat", "org", "role"]


class TokenRequestError(ValueError):
    """A token was asked for an organisation or role the registry does not allow; the message says why."""


def issue_token(
    secret: bytes | str,
    organisation_id: str,
    role: Role | str,
    *,
    now: datetime,
    ttl: timedelta = DEFAULT_TTL,
) -> str:
    """Return an HS256 token for `organisation_id` acting as `role`, valid from `now` for `ttl`.

    Raises TokenRequestError for an unknown organisation, an unknown role or a role the organisation
    does not hold, and SigningKeyError for a secret shorter than 32 bytes.
    """
    _require_aware(now)
    if ttl <= timedelta(0):
        raise TokenRequestError(f"a token's lifetime must be positive, not {ttl}")
    organisation = _organisation_to_issue_for(organisation_id)
    held = _role_to_issue(organisation, role)
    claims = {
        "iss": DEV_ISSUER,
        "aud": AUDIENCE,
        "sub": f"{organisation.id}:{held.value}",
        "org": organisation.id,
        "role": held.value,
        "gss": sorted(organisation.gss_codes),
        "iat": int(now.timestamp()),
        "exp": int((now + ttl).timestamp()),
        "jti": secrets.token_urlsafe(16),
    }
    return jwt.encode(claims, hmac_secret(secret), algorithm="HS256")


def _organisation_to_issue_for(organisation_id: str) -> Organisation:
    try:
        return get_organisation(organisation_id)
    except UnknownOrganisationError:
        known = ", ".join(sorted(load_organisations()))
        raise TokenRequestError(
            f"unknown organisation {organisation_id!r}; known organisations: {known}"
        ) from None


def _role_to_issue(organisation: Organisation, role: Role | str) -> Role:
    held = ", ".join(sorted(r.value for r in organisation.roles)) or "none"
    try:
        wanted = Role(role)
    except ValueError:
        every = ", ".join(r.value for r in Role)
        raise TokenRequestError(
            f"unknown role {role!r} (roles are: {every}); organisation {organisation.id!r} holds: {held}"
        ) from None
    if wanted not in organisation.roles:
        raise TokenRequestError(
            f"organisation {organisation.id!r} does not hold role {wanted.value!r}; it holds: {held}"
        )
    return wanted


def token_from_authorization(header: str | None) -> str:
    """Return the token in an `Authorization: Bearer <token>` header value, or raise AuthenticationError."""
    if not header or not header.strip():
        raise AuthenticationError(AuthFailure.MISSING)
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError(AuthFailure.MALFORMED)
    return token.strip()


async def verify_token_async(verifier: TokenVerifier, token: str | None, *, now: datetime) -> Principal:
    """Return what `verify_token` returns, without blocking the event loop.

    Checked in the loop (tens of microseconds), except when a JWKS verifier has to fetch its keys
    first: that runs in a worker thread, since the fetch may take up to its timeout.
    """
    if token and isinstance(verifier, JwksTokenVerifier) and verifier.needs_fetch(token):
        return await asyncio.to_thread(verify_token, verifier, token, now=now)
    return verify_token(verifier, token, now=now)


class _VerifiedTokens:
    """Claims of tokens whose signature, audience and issuer passed, kept a short while per verifier.

    Referrers send the same token with every request; checking its signature once a minute instead
    of each time saves the decoding and the signature check. Safe: only the very same token string
    (so the very same signature) hits, and the times and the registry are still checked every time.
    The price: a key withdrawn from a JWKS keeps passing the tokens it signed for up to `TTL_SECONDS`
    (the JWKS itself is kept five minutes anyway).
    """

    TTL_SECONDS: Final = 60.0
    SIZE: Final = 4096

    def __init__(self) -> None:
        # (id of the verifier, token) -> (when checked, the verifier, its claims)
        self._entries: OrderedDict[tuple[int, str], tuple[float, TokenVerifier, dict[str, Any]]]
        self._entries = OrderedDict()

    def get(self, verifier: TokenVerifier, token: str) -> dict[str, Any] | None:
        """Return the checked claims of `token` for `verifier`, or None."""
        entry = self._entries.get((id(verifier), token))
        # The verifier itself is compared too: an id can be reused once a verifier is gone.
        if entry is None or entry[1] is not verifier or time.monotonic() - entry[0] > self.TTL_SECONDS:
            return None
        return entry[2]

    def put(self, verifier: TokenVerifier, token: str, claims: dict[str, Any]) -> None:
        """Remember that `token` passed `verifier`'s checks."""
        self._entries[(id(verifier), token)] = (time.monotonic(), verifier, claims)
        self._entries.move_to_end((id(verifier), token))
        while len(self._entries) > self.SIZE:
            self._entries.popitem(last=False)


_verified = _VerifiedTokens()


def verify_token(verifier: TokenVerifier, token: str | None, *, now: datetime) -> Principal:
    """Return the Principal a token names, checked for signature, audience, issuer, time and registry.

    Raises AuthenticationError with the reason (missing, malformed, bad signature, unknown key,
    expired, not yet valid, wrong audience or issuer, unknown organisation, role not held), and
    KeySourceUnavailableError when a JWKS verifier cannot reach its keys.
    """
    _require_aware(now)
    if not token:
        raise AuthenticationError(AuthFailure.MISSING)
    claims = _verified.get(verifier, token)
    if claims is None:
        claims = _decode(verifier, token)
        _verified.put(verifier, token, claims)
    _check_times(claims, now)
    return _principal_from(claims)


def _decode(verifier: TokenVerifier, token: str) -> dict[str, Any]:
    key = verifier.key_for(token)
    try:
        return jwt.decode(
            token,
            key,
            algorithms=list(verifier.algorithms),
            audience=AUDIENCE,
            issuer=verifier.issuer,
            # PyJWT reads the system clock for these; `_check_times` uses the caller's `now` instead.
            options={
                "require": _REQUIRED_CLAIMS,
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
            },
        )
    except (InvalidSignatureError, InvalidAlgorithmError) as error:
        raise AuthenticationError(AuthFailure.BAD_SIGNATURE) from error
    except InvalidAudienceError as error:
        raise AuthenticationError(AuthFailure.WRONG_AUDIENCE) from error
    except InvalidIssuerError as error:
        raise AuthenticationError(AuthFailure.WRONG_ISSUER) from error
    except MissingRequiredClaimError as error:
        reason = {"aud": AuthFailure.WRONG_AUDIENCE, "iss": AuthFailure.WRONG_ISSUER}.get(error.claim)
        raise AuthenticationError(reason or AuthFailure.MALFORMED) from error
    except (DecodeError, InvalidTokenError) as error:
        raise AuthenticationError(AuthFailure.MALFORMED) from error


def _check_times(claims: Mapping[str, Any], now: datetime) -> None:
    at = now.timestamp()
    skew = CLOCK_SKEW.total_seconds()
    if at >= _numeric_date(claims, "exp") + skew:
        raise AuthenticationError(AuthFailure.EXPIRED)
    if _numeric_date(claims, "iat") > at + skew:
        raise AuthenticationError(AuthFailure.NOT_YET_VALID)
    if "nbf" in claims and _numeric_date(claims, "nbf") > at + skew:
        raise AuthenticationError(AuthFailure.NOT_YET_VALID)


def _numeric_date(claims: Mapping[str, Any], name: str) -> float:
    value = claims[name]
    # bool is an int in Python; `"exp": true` is not a date.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AuthenticationError(AuthFailure.MALFORMED)
    return float(value)


def _principal_from(claims: Mapping[str, Any]) -> Principal:
    organisation_id, role_name = claims["org"], claims["role"]
    if not isinstance(organisation_id, str) or not isinstance(role_name, str):
        raise AuthenticationError(AuthFailure.MALFORMED)
    try:
        organisation = get_organisation(organisation_id)
    except UnknownOrganisationError:
        raise AuthenticationError(AuthFailure.UNKNOWN_ORGANISATION) from None
    try:
        role = Role(role_name)
    except ValueError:
        raise AuthenticationError(AuthFailure.ROLE_NOT_HELD) from None
    if role not in organisation.roles:
        raise AuthenticationError(AuthFailure.ROLE_NOT_HELD)
    return Principal(
        organisation_id=organisation.id,
        role=role,
        gss_codes=organisation.gss_codes,
        referrer_kind=organisation.referrer_kind,
    )


def _require_aware(now: datetime) -> None:
    # A naive datetime's timestamp() is read in the host's zone: tokens would shift by the UTC offset.
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("`now` must be timezone-aware (for example datetime.now(UTC))")
