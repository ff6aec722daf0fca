"""The life of a routed Task as a provider drives it: which status may follow which, and why.

Pure: given the stored Task and the Task the owner PUT, return the change to make or raise
`FhirInputError` (bad input, 400) or `TransitionError` (a move the state machine forbids, 409).

    requested -> accepted | rejected | cancelled
    accepted  -> in-progress | cancelled
    in-progress -> completed | cancelled

`rejected` and `cancelled` need a coded `statusReason`: the reasons a service declines or a referral
does not proceed (002 L1125-1127: no indicators of trafficking, not a non-UK national, placed
elsewhere; 002 L1591: "suitable referrals but were placed elsewhere").
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Final

from fhir.resources.R4B.task import Task
from pydantic import ValidationError

from haven.canonical import CS_TASK_STATUS_REASON

from .issues import FhirInputError, Issue, IssueType, issues_from_validation_error

TRANSITIONS: Final[dict[str, frozenset[str]]] = {
    "requested": frozenset({"accepted", "rejected", "cancelled"}),
    "accepted": frozenset({"in-progress", "cancelled"}),
    "in-progress": frozenset({"completed", "cancelled"}),
}
# Statuses that end a Task's life: a decline and a withdrawal must say why, for the LA and the router.
NEEDS_REASON: Final = frozenset({"rejected", "cancelled"})

STATUS_REASONS: Final[dict[str, str]] = {
    "no-indicators": "No indicators of trafficking (002 L1125-1127)",
    "uk-national": "Potentially trafficked but not a non-UK national (002 L1127)",
    "placed-elsewhere": "The child was placed elsewhere (002 L1127, L1591)",
    "no-capacity": "No place or worker free",
    "not-compatible": "Cannot be matched safely with the children already supported",
    "child-declined": "The child declined the service",
    "other": "Another reason, recorded with the partner",
}

# Elements the owner may change with a PUT; every other element stays as the server has it.
OWNER_ELEMENTS: Final = ("status", "statusReason", "note")


class TransitionError(Exception):
    """The state machine forbids this change (answers 409 with the issue)."""

    def __init__(self, issue: Issue) -> None:
        super().__init__(f"{issue.code} at {issue.expression}")
        self.issue = issue


@dataclass(frozen=True)
class TaskChange:
    """An accepted change: the Task to store and the statuses and reason around it."""

    resource: dict[str, Any]
    previous_status: str
    status: str
    reason_code: str


def decide_update(stored: dict[str, Any], body: Any, *, resource_id: str) -> TaskChange:
    """Return the change the PUT body asks of the stored Task, or raise why it cannot be made."""
    if not isinstance(body, dict) or body.get("resourceType") != "Task":
        raise FhirInputError([Issue(IssueType.STRUCTURE, "Task", "the body must be a Task resource")])
    issues: list[Issue] = []
    # Only what the owner may change is validated: the rest is the server's and is not taken from the body.
    owned = {k: body[k] for k in OWNER_ELEMENTS if k in body}
    try:
        Task.model_validate({"resourceType": "Task", "intent": "order", **owned})
    except ValidationError as error:
        issues.extend(issues_from_validation_error(error, "Task"))
    if body.get("id") != resource_id:
        issues.append(Issue(IssueType.VALUE, "Task.id", f"Task.id must be the id in the URL ({resource_id})"))
    status = body.get("status")
    reason = _reason_code(body.get("statusReason"), issues)
    if issues:
        raise FhirInputError(issues)
    previous = str(stored.get("status", ""))
    if status not in TRANSITIONS.get(previous, frozenset()):
        allowed = ", ".join(sorted(TRANSITIONS.get(previous, frozenset()))) or "none (the task is closed)"
        raise TransitionError(
            Issue(
                IssueType.BUSINESS_RULE,
                "Task.status",
                f"a Task that is {previous!r} cannot become {status!r}; allowed next: {allowed}",
            )
        )
    if status in NEEDS_REASON and not reason:
        raise FhirInputError(
            [
                Issue(
                    IssueType.REQUIRED,
                    "Task.statusReason",
                    f"a {status} Task needs statusReason coded in {CS_TASK_STATUS_REASON}, "
                    f"one of: {', '.join(STATUS_REASONS)}",
                )
            ]
        )
    resource = copy.deepcopy(stored)
    resource.pop("meta", None)
    for element in OWNER_ELEMENTS:
        if element in body:
            resource[element] = copy.deepcopy(body[element])
        else:
            resource.pop(element, None)
    return TaskChange(resource=resource, previous_status=previous, status=str(status), reason_code=reason)


def _reason_code(concept: Any, issues: list[Issue]) -> str:
    """Return the Haven reason code of `statusReason` ("" when absent), recording a bad one."""
    if concept is None:
        return ""
    codings = concept.get("coding", []) if isinstance(concept, dict) else []
    for index, coding in enumerate(codings if isinstance(codings, list) else []):
        if not isinstance(coding, dict) or coding.get("system") != CS_TASK_STATUS_REASON:
            continue
        code = coding.get("code")
        if code in STATUS_REASONS:
            return str(code)
        issues.append(
            Issue(
                IssueType.CODE_INVALID,
                f"Task.statusReason.coding[{index}].code",
                f"{code!r} is not a code of {CS_TASK_STATUS_REASON}; use one of: {', '.join(STATUS_REASONS)}",
            )
        )
        return ""
    issues.append(
        Issue(
            IssueType.CODE_INVALID,
            "Task.statusReason.coding",
            f"statusReason needs a coding with system {CS_TASK_STATUS_REASON}",
        )
    )
    return ""
