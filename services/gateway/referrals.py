"""Referral intake: ``POST /fhir`` with a transaction Bundle.

Validated in full before anything is written; stored, then ``ReferralReceived`` is published, and only
when JetStream has acknowledged both does the referrer get 201. Repeats with the same ``X-Request-ID``
(or the same referrer identifier with ``ifNoneExist``) get the first answer, never a second referral.
"""

from __future__ import annotations

import logging
from datetime import datetime
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
from services.gateway.errors import api_error, fhir_response
from services.gateway.fhir import (
    IssueType,
    ParsedReferral,
    ReferrerContext,
    parse_referral_bundle,
    transaction_response_bundle,
)
from services.gateway.idempotency import (
    IdempotencyClaim,
    IdempotencyTimeoutError,
    StoredAnswer,
    claim,
    idempotency_key,
)
from services.gateway.security.principal import Principal
from services.gateway.state import GatewayState

router = APIRouter()
_log = logging.getLogger(__name__)


@router.post("/fhir", summary="Post a referral as a FHIR transaction Bundle")
async def post_transaction(request: Request, principal: CurrentPrincipal, state: State) -> JSONResponse:
    """Accept a referral Bundle: 201 with a transaction-response Bundle once it is durably stored."""
    require_role(principal, Role.REFERRER)
    body = await read_json_body(request, state.settings.max_body_bytes)
    now = state.clock()
    referrer = ReferrerContext(
        organisation_id=principal.organisation_id, kind=principal.referrer_kind or "other"
    )
    parsed = parse_referral_bundle(body, referrer=referrer, today=now.date())
    keys = _request_keys(request, principal, body)
    if not keys:
        answer = await _accept(state, principal, parsed, now, request)
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
        answer = await _accept(state, principal, parsed, now, request)
    except Exception:
        for taken in claims:
            await taken.release()
        raise
    for taken in claims:
        await taken.complete(answer)
    return fhir_response(answer.body, answer.status, answer.headers)


def _request_keys(request: Request, principal: Principal, body: Any) -> list[str]:
    keys = []
    request_id = request.headers.get("x-request-id", "").strip()
    if request_id:
        keys.append(idempotency_key("request", principal.organisation_id, request_id))
    identifier = _if_none_exist_identifier(body)
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
        body["entry"] = [
            {**e, "response": {**e["response"], "status": "200 OK"}} for e in body.get("entry", [])
        ]
        return fhir_response(body, 200, answer.headers)
    return fhir_response(answer.body, answer.status, answer.headers)


async def _accept(
    state: GatewayState, principal: Principal, parsed: ParsedReferral, now: datetime, request: Request
) -> StoredAnswer:
    scope = RecordScope(
        local_authority_gss=parsed.facts.local_authority_gss,
        referrer_organisation_id=principal.organisation_id,
    )
    # The ServiceRequest is written last: until it exists nothing points at the others.
    ordered = sorted(parsed.resources, key=lambda r: r["resourceType"] == "ServiceRequest")
    for resource in ordered:
        await state.store.create(resource, scope, now)
    await state.store.add_index(
        "ServiceRequest", "patient", f"Patient/{parsed.patient_id}", parsed.referral_id
    )
    event = referral_pb2.ReferralReceived(
        event_id=derived_id("referral-received", parsed.referral_id),
        occurred_at=to_timestamp(now),
        referral_id=parsed.referral_id,
        facts=parsed.facts,
    )
    await bus.publish_event(state.js, topology.REFERRAL_RECEIVED, event, msg_id=event.event_id)
    await record_audit(state, principal, "C", list(parsed.locations), request, purpose="COC")
    log_event(
        _log, "referral accepted", referral_id=parsed.referral_id, organisation=principal.organisation_id
    )
    body = transaction_response_bundle(parsed.locations, last_modified=now)
    return StoredAnswer(201, body, {"Location": f"ServiceRequest/{parsed.referral_id}"})
