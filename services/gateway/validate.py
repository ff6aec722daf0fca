"""``POST /fhir/<Type>/$validate``: check a resource as the server would, store and publish nothing.

The answer is 200 with an OperationOutcome (FHIR's `$validate` semantics): its issues are what a
real POST would be refused for, or one `informational` issue when there is nothing to fix. A body
that is not JSON, too large or of the wrong media type still answers 400, 413 or 415.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.servicerequest import ServiceRequest
from fhir.resources.R4B.subscription import Subscription
from fhir.resources.R4B.task import Task
from pydantic import ValidationError

from haven.referral.v1 import referral_pb2
from services.gateway.auth import CurrentPrincipal, State
from services.gateway.body import read_json_body
from services.gateway.errors import fhir_response
from services.gateway.fhir import (
    FhirInputError,
    Issue,
    IssueType,
    ReferrerContext,
    facts_from_observation,
    operation_outcome,
    parse_referral_bundle,
)
from services.gateway.fhir.issues import issues_from_validation_error
from services.gateway.fhir.profile import REFERRER_KIND

router = APIRouter()

# Structural validation only (fhir.resources R4B); the Bundle and Observation also get the profile.
_MODELS: dict[str, Any] = {
    "Patient": Patient,
    "ServiceRequest": ServiceRequest,
    "Task": Task,
    "Subscription": Subscription,
}
VALIDATED_TYPES = ("Bundle", "Observation", *_MODELS)


def _issues(resource_type: str, body: Any, state: State, principal: CurrentPrincipal) -> list[Issue]:
    if not isinstance(body, dict) or body.get("resourceType") != resource_type:
        return [Issue(IssueType.STRUCTURE, "resourceType", f"the body must be a {resource_type} resource")]
    today = state.clock().date()
    try:
        if resource_type == "Bundle":
            kind = principal.referrer_kind if principal.referrer_kind in REFERRER_KIND else "other"
            parse_referral_bundle(
                body, referrer=ReferrerContext(principal.organisation_id, kind), today=today
            )
        elif resource_type == "Observation":
            facts_from_observation(body, referral_pb2.ReferralFacts(), today=today)
        else:
            _MODELS[resource_type].model_validate(body)
    except FhirInputError as error:
        return list(error.issues)
    except ValidationError as error:
        return issues_from_validation_error(error, resource_type)
    return []


def _validate_route(resource_type: str) -> Any:
    async def validate(request: Request, principal: CurrentPrincipal, state: State) -> JSONResponse:
        body = await read_json_body(request, state.settings.max_body_bytes)
        issues = _issues(resource_type, body, state, principal)
        if not issues:
            issues = [Issue(IssueType.INFORMATIONAL, resource_type, "no problems found", "information")]
        return fhir_response(operation_outcome(issues))

    validate.__name__ = f"validate_{resource_type.lower()}"
    validate.__doc__ = f"Validate a {resource_type} without storing it."
    return validate


for _type in VALIDATED_TYPES:
    router.add_api_route(
        f"/fhir/{_type}/$validate",
        _validate_route(_type),
        methods=["POST"],
        summary=f"Validate a {_type} (nothing is stored)",
    )
