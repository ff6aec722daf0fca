"""Tokens round-trip into a Principal and are refused when expired, tampered, misaddressed or out of date."""

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest

import haven.organisations as registry
from haven.organisations import Organisation, Role, load_organisations
from services.gateway.security import (
    AuthenticationError,
    AuthFailure,
    HmacTokenVerifier,
    Principal,
    SigningKeyError,
    TokenRequestError,
    issue_token,
    token_from_authorization,
    verify_token,
)

SECRET = b"0123456789abcdef0123456789abcdef"
NOW = datetime(2026, 11, 23, 2, 30, tzinfo=UTC)
VERIFIER = HmacTokenVerifier(SECRET)
EVERY_GRANT = sorted((org.id, role) for org in load_organisations().values() for role in org.roles)


def refusal(token: str | None, *, now: datetime = NOW, verifier: HmacTokenVerifier = VERIFIER) -> AuthFailure:
    with pytest.raises(AuthenticationError) as refused:
        verify_token(verifier, token, now=now)
    return refused.value.reason


def signed(claims: dict[str, Any], secret: bytes = SECRET, **headers: Any) -> str:
    """Sign good claims changed by `claims`; a claim given as None is left out."""
    base: dict[str, Any] = {"iss": "haven-dev", "aud": "haven", "org": "demo-police", "role": "referrer"}
    base |= {"iat": int(NOW.timestamp()), "exp": int((NOW + timedelta(hours=1)).timestamp())}
    payload = {k: v for k, v in (base | claims).items() if v is not None}
    return jwt.encode(payload, secret, algorithm="HS256", headers=headers or None)


@pytest.mark.parametrize(("organisation_id", "role"), EVERY_GRANT)
def test_every_role_an_organisation_holds_round_trips(organisation_id: str, role: Role) -> None:
    org = load_organisations()[organisation_id]
    token = issue_token(SECRET, organisation_id, role, now=NOW)
    assert verify_token(VERIFIER, token, now=NOW + timedelta(hours=11)) == Principal(
        organisation_id, role, org.gss_codes, org.referrer_kind
    )


def test_the_claims_name_issuer_audience_subject_area_and_a_fresh_id() -> None:
    first = jwt.decode(
        issue_token(SECRET, "demo-edt-manchester", "referrer", now=NOW), options={"verify_signature": False}
    )
    second = jwt.decode(
        issue_token(SECRET, "demo-edt-manchester", "referrer", now=NOW), options={"verify_signature": False}
    )
    assert first["iss"] == "haven-dev" and first["aud"] == "haven"
    assert first["sub"] == "demo-edt-manchester:referrer"
    assert (first["org"], first["role"], first["gss"]) == ("demo-edt-manchester", "referrer", ["E08000003"])
    assert first["iat"] == int(NOW.timestamp())
    assert first["exp"] == int((NOW + timedelta(hours=12)).timestamp())
    assert first["jti"] != second["jti"]


def test_a_token_expires_after_its_lifetime_give_or_take_clock_skew() -> None:
    token = issue_token(SECRET, "demo-police", Role.REFERRER, now=NOW, ttl=timedelta(minutes=10))
    verify_token(VERIFIER, token, now=NOW + timedelta(minutes=10, seconds=29))
    assert refusal(token, now=NOW + timedelta(minutes=10, seconds=30)) is AuthFailure.EXPIRED


def test_a_token_from_the_future_is_not_yet_valid() -> None:
    token = issue_token(SECRET, "demo-police", Role.REFERRER, now=NOW)
    assert refusal(token, now=NOW - timedelta(minutes=5)) is AuthFailure.NOT_YET_VALID
    assert refusal(signed({"nbf": int((NOW + timedelta(hours=1)).timestamp())})) is AuthFailure.NOT_YET_VALID


def swap_payload(token: str, **changes: Any) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged = base64.urlsafe_b64encode(json.dumps({**claims, **changes}).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


def test_tampering_is_refused() -> None:
    token = issue_token(SECRET, "demo-la-manchester", Role.LA_PLATFORM, now=NOW)
    assert refusal(swap_payload(token, org="demo-la-leeds")) is AuthFailure.BAD_SIGNATURE
    assert refusal(swap_payload(token, role="referrer")) is AuthFailure.BAD_SIGNATURE
    assert (
        refusal(token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")) is AuthFailure.BAD_SIGNATURE
    )


def test_another_key_or_no_signature_is_refused() -> None:
    assert refusal(signed({}, secret=b"x" * 32)) is AuthFailure.BAD_SIGNATURE
    claims = jwt.decode(signed({}), options={"verify_signature": False})
    unsigned = jwt.encode(claims, None, algorithm="none")  # type: ignore[arg-type]  # "none" takes no key
    assert refusal(unsigned) is AuthFailure.BAD_SIGNATURE


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"aud": "someone-else"}, AuthFailure.WRONG_AUDIENCE),
        ({"aud": None}, AuthFailure.WRONG_AUDIENCE),
        ({"iss": "elsewhere"}, AuthFailure.WRONG_ISSUER),
        ({"iss": None}, AuthFailure.WRONG_ISSUER),
        ({"org": "ghost-police"}, AuthFailure.UNKNOWN_ORGANISATION),
        ({"role": "admin"}, AuthFailure.ROLE_NOT_HELD),
        ({"role": "superuser"}, AuthFailure.ROLE_NOT_HELD),
        ({"org": 7}, AuthFailure.MALFORMED),
        ({"exp": True}, AuthFailure.MALFORMED),
    ],
)
def test_misaddressed_or_unauthorised_claims_are_refused(claims: dict[str, Any], reason: AuthFailure) -> None:
    assert refusal(signed(claims)) is reason


@pytest.mark.parametrize("missing", ["exp", "iat", "org", "role"])
def test_a_token_without_a_required_claim_is_malformed(missing: str) -> None:
    assert refusal(signed({missing: None})) is AuthFailure.MALFORMED


@pytest.mark.parametrize("token", [None, ""])
def test_no_token_is_missing(token: str | None) -> None:
    assert refusal(token) is AuthFailure.MISSING


def test_garbage_is_malformed() -> None:
    assert refusal("not-a-token") is AuthFailure.MALFORMED


def test_the_registry_decides_at_verification_not_at_issue(monkeypatch: pytest.MonkeyPatch) -> None:
    police_token = issue_token(SECRET, "demo-police", Role.REFERRER, now=NOW)
    la_token = issue_token(SECRET, "demo-la-manchester", Role.LA_PLATFORM, now=NOW)
    changed = dict(load_organisations())
    del changed["demo-police"]
    la = changed["demo-la-manchester"]
    changed["demo-la-manchester"] = Organisation(
        la.id, la.name, la.kind, la.roles, la.referrer_kind, frozenset()
    )
    monkeypatch.setattr(registry, "load_organisations", lambda: changed)
    assert refusal(police_token) is AuthFailure.UNKNOWN_ORGANISATION
    assert verify_token(VERIFIER, la_token, now=NOW).gss_codes == frozenset(), (
        "the area comes from the registry"
    )
    changed["demo-la-manchester"] = Organisation(la.id, la.name, la.kind, frozenset({Role.REFERRER}))
    assert refusal(la_token) is AuthFailure.ROLE_NOT_HELD


def test_issuing_for_an_unknown_organisation_names_it_and_the_known_ones() -> None:
    with pytest.raises(TokenRequestError, match=r"unknown organisation 'ghost'.*demo-police"):
        issue_token(SECRET, "ghost", Role.REFERRER, now=NOW)


def test_issuing_a_role_not_held_names_the_organisation_and_its_roles() -> None:
    with pytest.raises(
        TokenRequestError,
        match=r"'demo-la-leeds' does not hold role 'admin'; it holds: la-platform, referrer",
    ):
        issue_token(SECRET, "demo-la-leeds", Role.ADMIN, now=NOW)
    with pytest.raises(TokenRequestError, match=r"unknown role 'boss'.*'demo-police' holds: referrer"):
        issue_token(SECRET, "demo-police", "boss", now=NOW)


def test_issuing_needs_a_strong_secret_an_aware_time_and_a_positive_lifetime() -> None:
    with pytest.raises(SigningKeyError):
        issue_token(b"short", "demo-police", Role.REFERRER, now=NOW)
    with pytest.raises(ValueError, match="timezone-aware"):
        issue_token(SECRET, "demo-police", Role.REFERRER, now=datetime(2026, 11, 23, 2, 30))
    with pytest.raises(TokenRequestError, match="positive"):
        issue_token(SECRET, "demo-police", Role.REFERRER, now=NOW, ttl=timedelta(0))


@pytest.mark.parametrize(
    ("header", "expected"),
    [("Bearer abc.def.ghi", "abc.def.ghi"), ("bearer  abc.def.ghi ", "abc.def.ghi")],
)
def test_the_token_is_read_from_a_bearer_header(header: str, expected: str) -> None:
    assert token_from_authorization(header) == expected


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, AuthFailure.MISSING),
        ("  ", AuthFailure.MISSING),
        ("Basic dXNlcg==", AuthFailure.MALFORMED),
        ("Bearer", AuthFailure.MALFORMED),
    ],
)
def test_a_missing_or_other_scheme_header_is_refused(header: str | None, reason: AuthFailure) -> None:
    with pytest.raises(AuthenticationError) as refused:
        token_from_authorization(header)
    assert refused.value.reason is reason


def test_the_challenge_follows_rfc_6750() -> None:
    assert AuthenticationError(AuthFailure.MISSING).www_authenticate == 'Bearer realm="haven"'
    assert (
        'error="invalid_token", error_description="expired"'
        in AuthenticationError(AuthFailure.EXPIRED).www_authenticate
    )
