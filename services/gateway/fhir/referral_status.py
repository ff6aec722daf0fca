"""Closing a referral: which ServiceRequest status may follow which, in the Task workflow's style.

Pure: given the stored ServiceRequest and the ServiceRequest the caller PUT, return the change to
make or raise `FhirInputError` (bad input, 400) or `TransitionError` (a move the workflow forbids,
409). Haven only ever takes a referral in as ``active``; closing it is the one change a client makes:

    active -> completed | revoked

``completed``: the work asked for is done (the child is supported, or placed). ``revoked``: the
referral is withdrawn or no longer needed (sent in error, the child is no longer the LA's concern).
A closed referral stays closed: a new need is a new referral (README, "A referral for a child
Haven already knows").
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Final

from fhir.resources.R4B.servicerequest import ServiceRequest
from pydantic import ValidationError

from haven.referral.v1 import referral_pb2 as pb

from .issues import FhirInputError, Issue, IssueType, issues_from_validation_error
from .task_workflow import TransitionError

_ROOT = "ServiceRequest"
TRANSITIONS: Final[dict[str, frozenset[str]]] = {"active": frozenset({"completed", "revoked"})}
CLOSURES: Final[dict[str, pb.ReferralClosure.ValueType]] = {
    "completed": pb.REFERRAL_CLOSURE_COMPLETED,
    "revoked": pb.REFERRAL_CLOSURE_REVOKED,
}
# The standard request-status value set (ServiceRequest.status).
REQUEST_STATUSES: Final = frozenset(
    {"draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown"}
)
# Elements the caller may change with a PUT; every other element stays as the server has it.
CLOSER_ELEMENTS: Final = ("status", "note")


@dataclass(frozen=True)
class ReferralStatusChange:
    """An accepted change: the ServiceRequest to store, the status before and after, and the closure."""

    resource: dict[str, Any]
    previous_status: str
    status: str
    closure: pb.ReferralClosure.ValueType


def decide_status_update(stored: dict[str, Any], body: Any, *, resource_id: str) -> ReferralStatusChange:
    """Return the change the PUT body asks of the stored ServiceRequest, or raise why it cannot be made."""
    if not isinstance(body, dict) or body.get("resourceType") != _ROOT:
        raise FhirInputError(
            [Issue(IssueType.STRUCTURE, _ROOT, "the body must be a ServiceRequest resource")]
        )
    issues: list[Issue] = []
    owned = {k: body[k] for k in CLOSER_ELEMENTS if k in body}
    try:
        # Only what the caller may change is validated: the rest is the server's, not taken from the body.
        ServiceRequest.model_validate(
            {
                "resourceType": _ROOT,
                "intent": "order",
                "subject": {"reference": "Patient/x"},
                "status": "active",  # a missing status is reported below, in plain words
                **owned,
            }
        )
    except ValidationError as error:
        issues.extend(issues_from_validation_error(error, _ROOT))
    if body.get("id") != resource_id:
        issues.append(
            Issue(
                IssueType.VALUE, f"{_ROOT}.id", f"ServiceRequest.id must be the id in the URL ({resource_id})"
            )
        )
    status = body.get("status")
    if "status" not in body:
        issues.append(
            Issue(IssueType.REQUIRED, f"{_ROOT}.status", "give the new status: completed or revoked")
        )
    elif status not in REQUEST_STATUSES:
        issues.append(
            Issue(
                IssueType.CODE_INVALID,
                f"{_ROOT}.status",
                f"{status!r} is not a request status; close a referral with completed or revoked",
            )
        )
    if issues:
        raise FhirInputError(issues)
    previous = str(stored.get("status", ""))
    allowed = TRANSITIONS.get(previous, frozenset())
    if status not in allowed:
        choices = ", ".join(sorted(allowed)) or "none (the referral is closed)"
        raise TransitionError(
            Issue(
                IssueType.BUSINESS_RULE,
                f"{_ROOT}.status",
                f"a referral that is {previous!r} cannot become {status!r}; allowed next: {choices}",
            )
        )
    resource = copy.deepcopy(stored)
    resource.pop("meta", None)
    for element in CLOSER_ELEMENTS:
        if element in body:
            resource[element] = copy.deepcopy(body[element])
    return ReferralStatusChange(resource, previous, str(status), CLOSURES[str(status)])
