"""Referral intake: ``POST /fhir`` with a transaction Bundle, or ``POST /fhir/ServiceRequest`` alone.

Both paths share one intake (`_intake`); only parsing and the shape of the answer differ. Validated
in full before anything is written; then stored and announced through an intake record
(``intake.py``: crash-safe, nothing half visible), and only when JetStream has acknowledged every
write and ``ReferralReceived`` does the referrer get 201. Repeats with the same ``X-Request-ID`` (or
the same referrer identifier with ``ifNoneExist``) get the first answer, never a second referral.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from datetime import datetime
from enum import Enum
from typing import Any, cast

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute

from haven.organisations import Role
from services.gateway import intake
from services.gateway.auth import authenticated, require_role
from services.gateway.body import read_json_body
from services.gateway.errors import api_error, fhir_response
from services.gateway.fhir import (
    IssueType,
    ParsedReferral,
    ReferrerContext,
    parse_referral_bundle,
    transaction_response_bundle,
)
from services.gateway.fhir.service_request import parse_service_request, subject_patient_id
from services.gateway.idempotency import (
    IdempotencyClaim,
    IdempotencyTimeoutError,
    StoredAnswer,
    claim,
    idempotency_key,
)
from services.gateway.intake import identifier_token as identifier_token  # searches.py uses it
from services.gateway.security.access import can_read
from services.gateway.security.principal import Principal
from services.gateway.state import GatewayState


class _PlainRoute(APIRoute):
    """An APIRoute whose endpoint takes the Request alone and is called as it is, like Starlette's.

    The intake endpoints use nothing of FastAPI's request handler (dependency solving, parameters,
    body and response models), which costs about 0.1 ms of CPU a request at the busiest route; they
    authenticate first thing themselves (``authenticated``), so every answer is as before. Still an
    APIRoute: the OpenAPI schema and the CapabilityStatement describe it like any other.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """Return the endpoint itself: ``async (request) -> response``."""
        return cast(Callable[[Request], Coroutine[Any, Any, Response]], self.endpoint)


router = APIRouter(route_class=_PlainRoute)


_BUNDLE_BODY = {
    "required": True,
    "content": {
        "application/fhir+json": {
            "schema": {
                "type": "object",
                "required": ["resourceType"],
                "properties": {
                    "resourceType": {"type": "string", "enum": ["Bundle"]},
                    "type": {"type": "string", "enum": ["transaction"]},
                    "entry": {"type": "array", "items": {"type": "object"}},
                },
            }
        }
    },
}
_SERVICE_REQUEST_BODY = {
    "required": True,
    "content": {
        "application/fhir+json": {
            "schema": {
                "type": "object",
                "required": ["resourceType"],
                "properties": {
                    "resourceType": {"type": "string", "enum": ["ServiceRequest"]},
                    "subject": {"type": "object", "properties": {"reference": {"type": "string"}}},
                },
            }
        }
    },
}


class _Answer(Enum):
    """How an accepted referral is answered: the Bundle path and the lone-ServiceRequest path."""

    TRANSACTION = "transaction-response Bundle"
    RESOURCE = "the ServiceRequest"


@router.post(
    "/fhir",
    summary="Post a referral as a FHIR transaction Bundle",
    openapi_extra={"requestBody": _BUNDLE_BODY},
)
async def post_transaction(request: Request) -> JSONResponse:
    """Accept a referral Bundle: 201 with a transaction-response Bundle once it is durably stored."""
    state, principal = await authenticated(request)
    require_role(principal, Role.REFERRER)
    body = await read_json_body(request, state.settings.max_body_bytes)
    now = state.clock()
    parsed = parse_referral_bundle(body, referrer=_referrer(principal), today=now.date())
    return await _intake(
        request, principal, state, parsed, _if_none_exist_identifier(body), _Answer.TRANSACTION
    )


@router.post(
    "/fhir/ServiceRequest",
    summary="Refer a child already known: one ServiceRequest whose subject is a Patient you may see",
    openapi_extra={"requestBody": _SERVICE_REQUEST_BODY},
)
async def post_service_request(request: Request) -> JSONResponse:
    """Accept a lone referral ServiceRequest: 201 with the stored ServiceRequest.

    Conditional create by the ``If-None-Exist: identifier=<system>|<value>`` header.
    """
    state, principal = await authenticated(request)
    require_role(principal, Role.REFERRER)
    body = await read_json_body(request, state.settings.max_body_bytes)
    now = state.clock()
    patient = await _visible_patient(state, principal, subject_patient_id(body))
    parsed = parse_service_request(body, referrer=_referrer(principal), today=now.date(), patient=patient)
    condition = request.headers.get("if-none-exist", "").strip()
    identifier = condition.removeprefix("identifier=") if condition.startswith("identifier=") else ""
    return await _intake(request, principal, state, parsed, identifier, _Answer.RESOURCE)


def _referrer(principal: Principal) -> ReferrerContext:
    return ReferrerContext(organisation_id=principal.organisation_id, kind=principal.referrer_kind or "other")


async def _visible_patient(
    state: GatewayState, principal: Principal, patient_id: str
) -> dict[str, Any] | None:
    """Return the stored Patient when the caller may see it; None alike for unknown and out of scope."""
    stored = await state.store.read("Patient", patient_id) if patient_id else None
    return stored.resource if stored is not None and can_read(principal, stored.scope) else None


async def _intake(
    request: Request,
    principal: Principal,
    state: GatewayState,
    parsed: ParsedReferral,
    conditional_identifier: str,
    shape: _Answer,
) -> JSONResponse:
    """Store and announce a validated referral once, whatever the path and however often it is sent."""
    now = state.clock()
    claims: list[IdempotencyClaim] = []
    try:
        for key in _request_keys(request, principal, conditional_identifier):
            taken = await claim(
                state.idempotency,
                key,
                state.settings.idempotency_wait_seconds,
                referral_id=parsed.referral_id,
                on_stale=lambda referral_id: intake.complete_stale_claim(state, referral_id),
            )
            if taken.answer is not None:
                for earlier in claims:
                    await earlier.complete(taken.answer)
                return _replay(taken.answer, key)
            claims.append(taken)
    except IdempotencyTimeoutError:
        for earlier in claims:
            await earlier.release()
        raise api_error(
            409, IssueType.CONFLICT, "an identical request is still being processed; retry shortly"
        ) from None
    try:
        # Without ifNoneExist no lookup (None at once); without keys, nothing to release below.
        found = await _existing(state, principal, conditional_identifier, now, shape)
    except Exception:
        # Nothing stored: a corrected retry must be free to proceed.
        for taken in claims:
            await taken.release()
        raise
    if found is not None:
        await asyncio.gather(*(taken.complete(found) for taken in claims))
        return fhir_response(found.body, found.status, found.headers)
    pending = _record(principal, parsed, now, request, shape, claims)
    # From here a failure leaves the claims pending and naming this referral (ADR 14): the sweeper, or
    # a retry once a claim is stale, completes the intake and answers them; if not even its record was
    # stored, the retry takes the claim over. Never a second referral.
    answer = await intake.store(state, pending)
    intake.finish_later(state, pending, answer)
    return fhir_response(answer.body, answer.status, answer.headers)


async def _existing(
    state: GatewayState, principal: Principal, identifier: str, now: datetime, shape: _Answer
) -> StoredAnswer | None:
    """Answer a conditional create from the referrals already stored: 200 one, 412 several, None none.

    Several can exist: a plain POST (without ifNoneExist) is never refused for reusing an identifier,
    since a referrer may refer the same case again; only a conditional create then cannot choose.
    """
    if not identifier:
        return None
    found = await state.store.search(
        "ServiceRequest", "identifier", identifier_token(principal.organisation_id, identifier)
    )
    mine = [r for r in found if can_read(principal, r.scope)]
    if not mine:
        return None
    if len(mine) > 1:
        raise api_error(
            412,
            IssueType.DUPLICATE,
            f"ifNoneExist matches {len(mine)} referrals you sent; send the referral without ifNoneExist "
            "or with an identifier that names one",
            expression="Bundle.entry.request.ifNoneExist",
        )
    referral = mine[0]
    if shape is _Answer.RESOURCE:
        return StoredAnswer(200, referral.resource, {"Location": referral.reference})
    body = transaction_response_bundle(
        [referral.reference], last_modified=now, version_id=str(referral.version), status="200 OK"
    )
    return StoredAnswer(200, body, {"Location": referral.reference})


def _request_keys(request: Request, principal: Principal, identifier: str) -> list[str]:
    keys = []
    request_id = request.headers.get("x-request-id", "").strip()
    if request_id:
        keys.append(idempotency_key("request", principal.organisation_id, request_id))
    if identifier:
        keys.append(idempotency_key("identifier", principal.organisation_id, identifier))
    return keys


def _if_none_exist_identifier(body: Any) -> str:
    """Return the ``identifier=system|value`` of a ServiceRequest entry's ``ifNoneExist``, if any."""
    for entry in body.get("entry", []) if isinstance(body, dict) else []:
        request = entry.get("request") if isinstance(entry, dict) else None
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(request, dict) or not isinstance(resource, dict):
            continue
        condition = str(request.get("ifNoneExist", ""))
        if resource.get("resourceType") == "ServiceRequest" and condition.startswith("identifier="):
            return condition.removeprefix("identifier=")
    return ""


def _replay(answer: StoredAnswer, key: str) -> JSONResponse:
    # A repeat of the same X-Request-ID gets exactly the first answer; a conditional create that
    # matched an existing referral answers 200 with it (FHIR conditional create semantics).
    if key.startswith("identifier.") and answer.status == 201:
        body = dict(answer.body)
        if body.get("resourceType") == "Bundle":
            body["entry"] = [
                {**e, "response": {**e["response"], "status": "200 OK"}} for e in body.get("entry", [])
            ]
        return fhir_response(body, 200, answer.headers)
    return fhir_response(answer.body, answer.status, answer.headers)


def _record(
    principal: Principal,
    parsed: ParsedReferral,
    now: datetime,
    request: Request,
    shape: _Answer,
    claims: list[IdempotencyClaim],
) -> intake.Intake:
    """Return the intake record of an accepted referral (written before any of its resources)."""
    return intake.Intake(
        parsed=parsed,
        principal=principal,
        received_at=now,
        request_id=request.headers.get("x-request-id", ""),
        shape="transaction" if shape is _Answer.TRANSACTION else "resource",
        claims=tuple(c.key for c in claims),
    )
