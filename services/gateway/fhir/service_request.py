"""A referral posted as one ServiceRequest (``POST /fhir/ServiceRequest``) for a child already known.

The same profile as the ServiceRequest of a referral Bundle (`facts.read_service_request`), with the
child's facts read from the stored Patient the caller names in `subject` instead of from the Bundle.
Pure: the handler finds the Patient (only one the caller may see) and passes it in.
"""

from __future__ import annotations

import copy
import uuid
from datetime import date
from typing import Any

from haven.referral.v1 import referral_pb2 as pb

from . import facts as read
from . import profile as p
from .bundle import ParsedReferral, ReferrerContext, references_in, structurally_valid
from .checks import Checks
from .issues import FhirInputError, Issue, IssueType, fhirpath

_ROOT = "ServiceRequest"
_SUBJECT = ("subject", "reference")
_REQUESTER = ("requester", "reference")


def subject_patient_id(body: Any) -> str:
    """Return the id in ``subject: Patient/<id>`` of a posted ServiceRequest, or "" when there is none."""
    subject = body.get("subject") if isinstance(body, dict) else None
    reference = subject.get("reference") if isinstance(subject, dict) else None
    if not isinstance(reference, str) or not reference.startswith("Patient/"):
        return ""
    return reference.removeprefix("Patient/")


def parse_service_request(
    body: Any, *, referrer: ReferrerContext, today: date, patient: dict[str, Any] | None
) -> ParsedReferral:
    """Validate a lone referral ServiceRequest and return what the server stores; `body` is not modified.

    `patient` is the stored Patient named by `subject`, or None when there is none the caller may see
    (answered as `not-found`, the same whether it does not exist or is out of scope). Raises
    FhirInputError listing every problem found.
    """
    if not isinstance(body, dict) or body.get("resourceType") != p.SERVICE_REQUEST:
        raise FhirInputError(
            [Issue(IssueType.STRUCTURE, _ROOT, "Post one ServiceRequest here, or a Bundle to /fhir.")]
        )
    checks = Checks(today)
    facts = pb.ReferralFacts()
    if patient is not None:
        # The child's facts as stored at the first referral; their checks were passed back then.
        read.read_patient(patient, "Patient", Checks(today), facts)
    valid = structurally_valid(body, _ROOT, checks)
    _check_references(body, referrer, patient, checks)
    identifier = read.read_service_request(body, _ROOT, checks, facts) if valid else None
    if checks.issues:
        raise FhirInputError(checks.issues)
    assert patient is not None  # else a not-found issue was raised above
    resource = copy.deepcopy(body)
    resource["id"] = str(uuid.uuid4())
    resource.pop("meta", None)
    resource["requester"] = {"reference": referrer.organisation_reference}
    facts.child_id = str(patient["id"])
    facts.referrer.organisation_id = referrer.organisation_id
    facts.referrer.kind = p.REFERRER_KIND[referrer.kind]
    return ParsedReferral(
        referral_id=resource["id"],
        patient_id=facts.child_id,
        referrer_identifier=identifier,
        resources=(resource,),
        facts=facts,
    )


def _check_references(
    body: dict[str, Any], referrer: ReferrerContext, patient: dict[str, Any] | None, checks: Checks
) -> None:
    if not subject_patient_id(body):
        checks.add(
            IssueType.REQUIRED,
            f"{_ROOT}.subject",
            "subject must be Patient/<id> of a child you referred before (else post a Bundle to /fhir).",
        )
    elif patient is None:
        checks.add(
            IssueType.NOT_FOUND,
            f"{_ROOT}.subject.reference",
            f"{body['subject']['reference']} is not a child you may refer again; post a Bundle with the "
            "Patient to /fhir instead.",
        )
    for location, reference in references_in(body):
        expression = fhirpath(_ROOT, location)
        if location == _REQUESTER and reference != referrer.organisation_reference:
            checks.add(
                IssueType.FORBIDDEN,
                expression,
                f"The requester is the organisation you authenticated as "
                f"({referrer.organisation_reference}); leave requester out or give that.",
            )
        elif location not in (_SUBJECT, _REQUESTER):
            checks.add(
                IssueType.NOT_FOUND,
                expression,
                f"'{reference}' does not resolve: a lone ServiceRequest may refer only to its subject "
                "and requester.",
            )
