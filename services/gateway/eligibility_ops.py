"""The ``$eligibility`` operations: a what-if question, and the latest decisions for a referral."""

from __future__ import annotations

import grpc
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from nats.js.errors import KeyNotFoundError

from haven.eligibility.v1 import eligibility_pb2
from haven.kit import telemetry
from haven.organisations import Role
from services.gateway.audit_log import record_audit
from services.gateway.auth import CurrentPrincipal, State, require_role
from services.gateway.body import read_json_body
from services.gateway.eligibility_parameters import decisions_to_parameters
from services.gateway.errors import api_error, fhir_response
from services.gateway.fhir import IssueType, ReferrerContext, parse_referral_bundle
from services.gateway.reads import read_visible

router = APIRouter()


@router.post("/fhir/$eligibility", summary="What-if: decide every programme for a referral Bundle")
async def evaluate_bundle(request: Request, principal: CurrentPrincipal, state: State) -> JSONResponse:
    """Answer which programmes the child in the posted Bundle could enter today; nothing is stored."""
    require_role(principal, Role.REFERRER, Role.LA_PLATFORM, Role.OPERATOR, Role.ADMIN)
    body = await read_json_body(request, state.settings.max_body_bytes)
    referrer = ReferrerContext(
        organisation_id=principal.organisation_id, kind=principal.referrer_kind or "other"
    )
    parsed = parse_referral_bundle(body, referrer=referrer, today=state.clock().date())
    try:
        answer = await state.eligibility.Evaluate(
            eligibility_pb2.EvaluateRequest(facts=parsed.facts, on_date=request.query_params.get("date", "")),
            timeout=5,
            metadata=tuple(telemetry.inject_headers().items()),
        )
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
            raise api_error(
                400, IssueType.VALUE, error.details() or "invalid date", expression="date"
            ) from None
        raise api_error(503, IssueType.TRANSIENT, "the eligibility service is not available; retry") from None
    return fhir_response(
        decisions_to_parameters(
            answer.decisions,
            assessed_on=answer.assessed_on,
            next_change_date=answer.next_change_date,
            age_basis=answer.age_basis,
        )
    )


@router.get("/fhir/ServiceRequest/{referral_id}/$eligibility", summary="Latest decisions for a referral")
async def latest_decisions(
    referral_id: str, request: Request, principal: CurrentPrincipal, state: State
) -> JSONResponse:
    """Return the latest eligibility decisions for a referral the caller may see."""
    stored = await read_visible(state, principal, "ServiceRequest", referral_id)
    try:
        entry = await state.assessments.get(referral_id)
    except KeyNotFoundError:
        raise api_error(
            404,
            IssueType.NOT_FOUND,
            "no eligibility decision yet; retry shortly",
            expression="ServiceRequest",
        ) from None
    assessed = eligibility_pb2.EligibilityAssessed.FromString(entry.value or b"")
    await record_audit(state, principal, "R", [stored.reference], request, purpose="COC")
    return fhir_response(
        decisions_to_parameters(
            assessed.decisions,
            assessed_on=assessed.assessed_on,
            next_change_date=assessed.next_change_date,
            age_basis=assessed.age_basis,
        )
    )
