"""Problems found in posted FHIR input, the error that carries them, and their OperationOutcome form.

Every check in this package appends `Issue`s to a list instead of stopping at the first, so an
integrator sees everything to fix in one round trip.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import ValidationError


class IssueType(StrEnum):
    """The FHIR issue-type codes this package uses (http://hl7.org/fhir/issue-type)."""

    INVALID = "invalid"
    STRUCTURE = "structure"
    REQUIRED = "required"
    VALUE = "value"
    NOT_FOUND = "not-found"
    NOT_SUPPORTED = "not-supported"
    CODE_INVALID = "code-invalid"
    DUPLICATE = "duplicate"
    FORBIDDEN = "forbidden"
    SECURITY = "security"
    LOGIN = "login"
    TOO_LONG = "too-long"
    CONFLICT = "conflict"
    BUSINESS_RULE = "business-rule"
    PROCESSING = "processing"
    TRANSIENT = "transient"
    EXCEPTION = "exception"
    INFORMATIONAL = "informational"


@dataclass(frozen=True)
class Issue:
    """One problem in the input: what kind, where (a FHIRPath) and what to do about it."""

    code: IssueType
    expression: str
    diagnostics: str
    severity: str = "error"


class FhirInputError(ValueError):
    """The input cannot be accepted; `issues` lists every problem found (never empty)."""

    def __init__(self, issues: Sequence[Issue]) -> None:
        if not issues:
            raise ValueError("FhirInputError needs at least one issue")
        self.issues: tuple[Issue, ...] = tuple(issues)
        # Only codes and paths: diagnostics may quote values about a child, and this text reaches logs.
        super().__init__("; ".join(f"{i.code} at {i.expression}" for i in self.issues))


def operation_outcome(issues: Iterable[Issue]) -> dict[str, Any]:
    """Return the OperationOutcome resource (JSON) that reports `issues` to the sender."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": issue.severity,
                "code": str(issue.code),
                "diagnostics": issue.diagnostics,
                "expression": [issue.expression],
            }
            for issue in issues
        ],
    }


def fhirpath(root: str, location: Iterable[str | int]) -> str:
    """Join a root ("Bundle", "Observation") and a path of element names and list indexes."""
    path = root
    for step in location:
        path += f"[{step}]" if isinstance(step, int) else f".{step}"
    return path


def issues_from_validation_error(error: ValidationError, root: str) -> list[Issue]:
    """Translate the errors fhir.resources (pydantic) raised into issues located under `root`."""
    issues = []
    for detail in error.errors():
        location = detail["loc"]
        expression = fhirpath(root, location)
        element = str(location[-1]) if location and isinstance(location[-1], str) else expression
        kind = detail["type"]
        if kind in {"missing", "model_field_validation.missing"}:
            code, text = IssueType.REQUIRED, f"'{element}' is required but missing."
        elif kind == "extra_forbidden":
            code = IssueType.STRUCTURE
            text = f"'{element}' is not an element here in FHIR R4; remove it or check its spelling."
        else:
            code = IssueType.VALUE
            message = str(detail["msg"]).removeprefix("Value error, ")
            text = f"{message} (value sent: {_shorten(detail.get('input'))})."
        issues.append(Issue(code, expression, text))
    return issues


def _shorten(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
