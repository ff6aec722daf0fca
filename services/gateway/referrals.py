"""Referral intake: ``POST /fhir`` with a transaction Bundle, or ``POST /fhir/ServiceRequest`` alone.

Both paths share one intake (`_intake`, `_accept`); only parsing and the shape of the answer differ.
Validated in full before anything is written; stored, then ``ReferralReceived`` is published, and only
when JetStream has acknowledged both does the referrer get 201. Repeats with the same ``X-Request-ID``
(or the same referrer identifier with ``ifNoneExist``) get the first answer, never a second referral.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from datetime import datetime
from enum import Enum
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from haven.kit import bus, topology
from haven.kit.ids import derived_id
from haven.kit.logs import log_event
from haven.kit.resources import RecordScope
from haven.kit.timestamps import to_timestamp
from haven.organisations import Role
from haven.referral.v1 import referral_pb2
from services.gateway.audit_log import record_audit
from services.gateway.auth import CurrentPrincipal, State, require_role
from services.gateway.body import read_json_body
from services.gateway.duplicates import link_possible_duplicates
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
from services.gateway.observations import remember_facts
from services.gateway.security.access import can_read
from services.gateway.security.principal import Principal
from services.gateway.state import GatewayState

router = APIRouter()
_log = logging.getLogger(__name__)


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
async def post_transaction(request: Request, principal: CurrentPrincipal, state: State) -> JSONResponse:
    """Accept a referral Bundle: 201 with a transaction-response Bundle once it is durably stored."""
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
async def post_service_request(request: Request, principal: CurrentPrincipal, state: State) -> JSONResponse:
    """Accept a lone referral ServiceRequest: 201 with the stored ServiceRequest.

    Conditional create by the ``If-None-Exist: identifier=<system>|<value>`` header.
    """
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
    keys = _request_keys(request, principal, conditional_identifier)
    if not keys:
        answer = await _accept(state, principal, parsed, now, request, shape)
        return fhir_response(answer.body, answer.status, answer.headers)
    claims: list[IdempotencyClaim] = []
    try:
        for key in keys:
            taken = await claim(state.idempotency, key, state.settings.idempotency_wait_seconds)
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
        found = await _existing(state, principal, conditional_identifier, now, shape)
        answer = found if found is not None else await _accept(state, principal, parsed, now, request, shape)
    except Exception:
        for taken in claims:
            await taken.release()
        raise
    for taken in claims:
        await taken.complete(answer)
    return fhir_response(answer.body, answer.status, answer.headers)


def identifier_token(organisation_id: str, identifier: str) -> str:
    """Return the index token of a referrer's own identifier (``system|value``), within its organisation."""
    # Hashed: identifiers may hold any character, and the index key must be one safe KV token.
    return hashlib.sha256(f"{organisation_id}\x1f{identifier}".encode()).hexdigest()[:40]


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


async def _accept(
    state: GatewayState,
    principal: Principal,
    parsed: ParsedReferral,
    now: datetime,
    request: Request,
    shape: _Answer,
) -> StoredAnswer:
    scope = RecordScope(
        local_authority_gss=parsed.facts.local_authority_gss,
        referrer_organisation_id=principal.organisation_id,
    )
    # The ServiceRequest is written last: until it exists nothing points at the others, which are
    # written together (each its own key, so the order among them does not matter).
    others = [r for r in parsed.resources if r["resourceType"] != "ServiceRequest"]
    await asyncio.gather(*(state.store.create(r, scope, now) for r in others))
    [request_resource] = [r for r in parsed.resources if r["resourceType"] == "ServiceRequest"]
    stored = await state.store.create(request_resource, scope, now)
    # Independent writes go together: each is a round trip to NATS, and the 201 waits for all of them.
    # The facts are kept before ReferralReceived is published (a later Observation starts from them).
    _, flags, _ = await asyncio.gather(
        asyncio.gather(
            *(state.store.add_index(t, p, v, i) for t, p, v, i in _indexes(parsed, principal.organisation_id))
        ),
        link_possible_duplicates(state, parsed, now),
        remember_facts(state.js, parsed.referral_id, parsed.facts),
    )
    event = referral_pb2.ReferralReceived(
        event_id=derived_id("referral-received", parsed.referral_id),
        occurred_at=to_timestamp(now),
        referral_id=parsed.referral_id,
        facts=parsed.facts,
    )
    await asyncio.gather(
        bus.publish_event(state.js, topology.REFERRAL_RECEIVED, event, msg_id=event.event_id),
        record_audit(
            state,
            principal,
            "C",
            [*parsed.locations, *flags],
            request,
            purpose="COC",
            patient=f"Patient/{parsed.patient_id}",
        ),
    )
    log_event(
        _log,
        "referral accepted",
        referral_id=parsed.referral_id,
        organisation=principal.organisation_id,
        possible_duplicates=len(flags),
    )
    location = f"ServiceRequest/{parsed.referral_id}"
    if shape is _Answer.RESOURCE:
        headers = {"Location": f"{location}/_history/{stored.version}", "ETag": f'W/"{stored.version}"'}
        return StoredAnswer(201, stored.resource, headers)
    body = transaction_response_bundle(parsed.locations, last_modified=now)
    return StoredAnswer(201, body, {"Location": location})


def _indexes(parsed: ParsedReferral, organisation_id: str) -> list[tuple[str, str, str, str]]:
    """Return the (type, param, value, id) search entries of a new referral."""
    referral = f"ServiceRequest/{parsed.referral_id}"
    found = [("ServiceRequest", "patient", f"Patient/{parsed.patient_id}", parsed.referral_id)]
    if parsed.referrer_identifier:
        found += [
            (
                "ServiceRequest",
                "identifier",
                identifier_token(organisation_id, parsed.referrer_identifier),
                parsed.referral_id,
            ),
            # Unscoped by organisation: the LA and operators search by a referrer's case number too.
            (
                "ServiceRequest",
                "identifier-any",
                identifier_token("", parsed.referrer_identifier),
                parsed.referral_id,
            ),
        ]
    # Facts in the Bundle belong to the referral like those posted later (observations.py indexes those).
    found += [
        ("Observation", "based-on", referral, str(r["id"]))
        for r in parsed.resources
        if r["resourceType"] == "Observation"
    ]
    return found
