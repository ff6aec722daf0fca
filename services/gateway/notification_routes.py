"""Operators' view of notification delivery: dead letters, redrive, and who was told what and when.

- ``GET /fhir/$dead-letters``: the notifications whose last attempt failed and that are not redriven.
- ``POST /fhir/$dead-letters/{key}/$redrive``: send one again from the start of the retry schedule.
- ``GET /fhir/$deliveries?referral=<ServiceRequest id>``: every delivery record about one referral
  (recipient, event type, attempts, last answer, times), as information-sharing rules require.

Operator and admin only; each call is audited. Answers are `Parameters` holding ids, states, codes and
times: never a notification's payload (the child's facts).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from haven.organisations import Role
from services.gateway.audit_log import record_audit
from services.gateway.auth import CurrentPrincipal, State, require_role
from services.gateway.errors import api_error, fhir_response
from services.gateway.fhir import IssueType
from services.notifier.ledger import DeliveryLedger
from services.notifier.operations import RedriveError, dead_letters, redrive

router = APIRouter()


def _part(name: str, value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"name": name, "valueBoolean": value}
    if isinstance(value, int):
        return {"name": name, "valueInteger": value}
    return {"name": name, "valueString": str(value if value is not None else "")}


def _parameters(name: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Parameters",
        "parameter": [
            {"name": name, "part": [_part(k, v) for k, v in sorted(item.items())]} for item in items
        ],
    }


@router.get("/fhir/$dead-letters", summary="List notifications that could not be delivered")
async def list_dead_letters(request: Request, principal: CurrentPrincipal, state: State) -> JSONResponse:
    """Return the dead letters still waiting for an operator, oldest first."""
    require_role(principal, Role.OPERATOR, Role.ADMIN)
    letters = [d.summary() for d in await dead_letters(state.js)]
    # The referrals whose notifications the operator now sees (a resource type when there are none).
    touched = sorted({f"ServiceRequest/{d['referral_id']}" for d in letters if d["referral_id"]})
    await record_audit(state, principal, "R", touched or ["ServiceRequest"], request, purpose="HOPERAT")
    return fhir_response(_parameters("dead-letter", letters))


@router.post("/fhir/$dead-letters/{key}/$redrive", summary="Send a dead letter again")
async def redrive_dead_letter(
    key: str, request: Request, principal: CurrentPrincipal, state: State
) -> JSONResponse:
    """Redrive one dead letter: 202 when it is on its way again, 404 when there is no such dead letter."""
    require_role(principal, Role.OPERATOR, Role.ADMIN)
    try:
        letter = await redrive(state.js, key)
    except RedriveError as error:
        raise api_error(404, IssueType.NOT_FOUND, str(error)) from None
    await record_audit(
        state, principal, "E", [f"ServiceRequest/{letter.request.referral_id}"], request, purpose="HOPERAT"
    )
    return fhir_response(_parameters("redriven", [letter.summary()]), 202)


@router.get("/fhir/$deliveries", summary="Delivery records about one referral")
async def list_deliveries(
    request: Request,
    principal: CurrentPrincipal,
    state: State,
    referral: str = Query(description="the ServiceRequest id"),
) -> JSONResponse:
    """Return who was told what about a referral, when, and with which outcome."""
    require_role(principal, Role.OPERATOR, Role.ADMIN)
    referral_id = referral.removeprefix("ServiceRequest/")
    if not referral_id.replace("-", "").isalnum():
        raise api_error(400, IssueType.VALUE, "referral must be a ServiceRequest id", "referral")
    ledger = await DeliveryLedger.open(state.js)
    records = sorted(
        await ledger.records_for_referral(referral_id),
        key=lambda r: (str(r.get("requested_at", "")), str(r.get("notification_id", ""))),
    )
    await record_audit(state, principal, "R", [f"ServiceRequest/{referral_id}"], request, purpose="HOPERAT")
    return fhir_response(_parameters("delivery", records))
