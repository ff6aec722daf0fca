"""A fact posted after the referral (an NRM decision, an age assessment, a missing episode).

The client posts one Observation to `POST /fhir/Observation` with `basedOn` naming the referral
(`ServiceRequest/<referral id>` from the transaction response). The gateway finds the referral with
`referral_id_from_observation`, then merges the fact into the stored facts with
`facts_from_observation`.
"""

from __future__ import annotations

import copy
from datetime import date
from typing import Any

from fhir.resources.R4B.observation import Observation
from pydantic import ValidationError

from haven.referral.v1 import referral_pb2 as pb

from . import facts as read
from . import profile as p
from .checks import Checks
from .issues import FhirInputError, Issue, IssueType, issues_from_validation_error

_ROOT = "Observation"
_SERVICE_REQUEST = "ServiceRequest/"


def referral_id_from_observation(observation: Any) -> str:
    """Return the referral id an Observation is about, from its one `basedOn` ServiceRequest reference."""
    based_on = observation.get("basedOn") if isinstance(observation, dict) else None
    references = [b.get("reference", "") for b in based_on or [] if isinstance(b, dict)]
    if (
        len(references) != 1
        or not references[0].startswith(_SERVICE_REQUEST)
        or references[0] == _SERVICE_REQUEST
    ):
        raise FhirInputError(
            [
                Issue(
                    IssueType.REQUIRED,
                    f"{_ROOT}.basedOn",
                    "basedOn must hold exactly one reference, ServiceRequest/<referral id>, with the id "
                    "returned when the referral was created.",
                )
            ]
        )
    return str(references[0].removeprefix(_SERVICE_REQUEST))


def states_fact(observation: Any, fact: str) -> bool:
    """Return whether an Observation's code names `fact` in the referral-fact code system (unchecked)."""
    concept = observation.get("code") if isinstance(observation, dict) else None
    codings = concept.get("coding") if isinstance(concept, dict) else None
    if not isinstance(codings, list):
        return False
    return any(
        isinstance(c, dict) and c.get("system") == p.CS_REFERRAL_FACT and c.get("code") == fact
        for c in codings
    )


def facts_from_observation(
    observation: Any, facts: pb.ReferralFacts, *, today: date
) -> tuple[pb.ReferralFacts, list[str]]:
    """Validate one posted Observation and return the facts with it applied, and the fields it changed.

    `facts` is not modified. Raises FhirInputError with every problem found. An Observation that
    states what is already known returns the facts unchanged and no changed fields.
    """
    if not isinstance(observation, dict) or observation.get("resourceType") != _ROOT:
        raise FhirInputError(
            [Issue(IssueType.STRUCTURE, _ROOT, "Post a single Observation resource to this endpoint.")]
        )
    try:
        Observation.model_validate(copy.deepcopy(observation))
    except ValidationError as error:
        raise FhirInputError(issues_from_validation_error(error, _ROOT)) from None

    checks = Checks(today)
    try:
        referral_id_from_observation(observation)
    except FhirInputError as error:
        checks.issues.extend(error.issues)
    subject = observation.get("subject", {}).get("reference")
    if subject is not None and subject != f"Patient/{facts.child_id}":
        checks.add(
            IssueType.VALUE,
            f"{_ROOT}.subject.reference",
            "subject must be the referral's Patient (Patient/<id> from the transaction response), "
            "or be left out.",
        )
    updated = pb.ReferralFacts()
    updated.CopyFrom(facts)
    fact = read.observation_fact(observation, _ROOT, checks)
    if fact is not None:
        read.read_observation(observation, fact, _ROOT, checks, updated, later=True)
    if checks.issues:
        raise FhirInputError(checks.issues)
    fields = pb.ReferralFacts.DESCRIPTOR.fields
    return updated, [f.name for f in fields if getattr(facts, f.name) != getattr(updated, f.name)]
