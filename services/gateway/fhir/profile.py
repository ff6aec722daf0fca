"""Haven's FHIR R4 profile as code: canonical URLs, code systems and their mapping to the bus enums.

`docs/fhir/profile.md` is the prose of this module; a change here is a change there. Each code system
maps a FHIR code to the `referral_pb2` enum value it carries, so the wire vocabulary at the edge and
the protobuf vocabulary on the bus can never drift apart silently.
"""

from __future__ import annotations

from typing import Final

from haven.canonical import CANONICAL_BASE
from haven.referral.v1 import referral_pb2 as pb

BASE: Final = CANONICAL_BASE


def _code_system(name: str) -> str:
    return f"{BASE}/CodeSystem/{name}"


def _structure_definition(name: str) -> str:
    return f"{BASE}/StructureDefinition/{name}"


# Haven code systems.
CS_REFERRAL_FACT: Final = _code_system("referral-fact")
CS_DATE_OF_BIRTH_BASIS: Final = _code_system("date-of-birth-basis")
CS_TRAFFICKING_CONCERN: Final = _code_system("trafficking-concern")
CS_TRAFFICKING_ROUTE: Final = _code_system("trafficking-route")
CS_EXPLOITATION_TYPE: Final = _code_system("exploitation-type")
CS_NRM_STATUS: Final = _code_system("nrm-status")
CS_SERVICE_ASKED: Final = _code_system("service-asked")

# Haven extensions.
EXT_BIRTH_DATE_BASIS: Final = _structure_definition("birth-date-basis")
EXT_RESPONSIBLE_LOCAL_AUTHORITY: Final = _structure_definition("responsible-local-authority")

# Standard systems and extensions.
EXT_PATIENT_NATIONALITY: Final = "http://hl7.org/fhir/StructureDefinition/patient-nationality"
ISO_3166: Final = "urn:iso:std:iso:3166"
# The ONS linked-data namespace for GSS statistical geography codes.
ONS_GSS: Final = "http://statistics.data.gov.uk/id/statistical-geography"
DATA_ABSENT_REASON: Final = "http://terminology.hl7.org/CodeSystem/data-absent-reason"

# The resource types a referral Bundle may carry.
PATIENT: Final = "Patient"
SERVICE_REQUEST: Final = "ServiceRequest"
OBSERVATION: Final = "Observation"
SUPPORTED_RESOURCE_TYPES: Final = (PATIENT, SERVICE_REQUEST, OBSERVATION)

DATE_OF_BIRTH_BASIS: Final[dict[str, pb.DateOfBirthBasis.ValueType]] = {
    "documented": pb.DATE_OF_BIRTH_BASIS_DOCUMENTED,
    "claimed": pb.DATE_OF_BIRTH_BASIS_CLAIMED,
    "assessed": pb.DATE_OF_BIRTH_BASIS_ASSESSED,
}

# Patient.gender (standard administrative-gender value set).
GENDER: Final[dict[str, pb.Sex.ValueType]] = {
    "male": pb.SEX_MALE,
    "female": pb.SEX_FEMALE,
    "other": pb.SEX_OTHER,
    "unknown": pb.SEX_UNKNOWN,
}

TRAFFICKING_CONCERN: Final[dict[str, pb.TraffickingConcern.ValueType]] = {
    "identified": pb.TRAFFICKING_CONCERN_IDENTIFIED,
    "suspected": pb.TRAFFICKING_CONCERN_SUSPECTED,
    "at-risk": pb.TRAFFICKING_CONCERN_AT_RISK,
    "none": pb.TRAFFICKING_CONCERN_NONE,
}

TRAFFICKING_ROUTE: Final[dict[str, pb.TraffickingRoute.ValueType]] = {
    "internal": pb.TRAFFICKING_ROUTE_INTERNAL,
    "cross-border": pb.TRAFFICKING_ROUTE_CROSS_BORDER,
    "unknown": pb.TRAFFICKING_ROUTE_UNKNOWN,
}

EXPLOITATION_TYPE: Final[dict[str, pb.ExploitationType.ValueType]] = {
    "sexual": pb.EXPLOITATION_TYPE_SEXUAL,
    "criminal": pb.EXPLOITATION_TYPE_CRIMINAL,
    "labour": pb.EXPLOITATION_TYPE_LABOUR,
    "domestic-servitude": pb.EXPLOITATION_TYPE_DOMESTIC_SERVITUDE,
    "other": pb.EXPLOITATION_TYPE_OTHER,
    "unknown": pb.EXPLOITATION_TYPE_UNKNOWN,
}

NRM_STATUS: Final[dict[str, pb.NrmStatus.ValueType]] = {
    "not-referred": pb.NRM_STATUS_NOT_REFERRED,
    "awaiting-rg": pb.NRM_STATUS_AWAITING_RG,
    "rg-positive": pb.NRM_STATUS_RG_POSITIVE,
    "rg-negative": pb.NRM_STATUS_RG_NEGATIVE,
    "cg-positive": pb.NRM_STATUS_CG_POSITIVE,
    "cg-negative": pb.NRM_STATUS_CG_NEGATIVE,
}
# Statuses that are decisions and so must carry their decision date (Observation.effectiveDateTime).
NRM_DECISIONS: Final = frozenset({"rg-positive", "rg-negative", "cg-positive", "cg-negative"})

SERVICE_ASKED: Final[dict[str, pb.ServiceAsked.ValueType]] = {
    "any": pb.SERVICE_ASKED_ANY,
    "ictg": pb.SERVICE_ASKED_ICTG,
    "therapeutic-support": pb.SERVICE_ASKED_THERAPEUTIC_SUPPORT,
    "specialist-accommodation": pb.SERVICE_ASKED_SPECIALIST_ACCOMMODATION,
}

# ServiceRequest.priority (standard request-priority value set). "asap" has no Haven meaning of its
# own: it is read as urgent, and only "stat" means a placement is needed now, at any hour (002 L973).
PRIORITY: Final[dict[str, pb.Urgency.ValueType]] = {
    "routine": pb.URGENCY_ROUTINE,
    "urgent": pb.URGENCY_URGENT,
    "asap": pb.URGENCY_URGENT,
    "stat": pb.URGENCY_EMERGENCY,
}

# ServiceRequest.intent (standard request-intent value set): any is accepted, none changes routing.
REQUEST_INTENTS: Final = frozenset(
    {
        "proposal",
        "plan",
        "directive",
        "order",
        "original-order",
        "reflex-order",
        "filler-order",
        "instance-order",
        "option",
    }
)

# Observation.status values that state a fact; "registered", "cancelled", "entered-in-error" and
# "unknown" do not, so they cannot change what Haven knows about a child.
OBSERVATION_STATUSES: Final = frozenset({"preliminary", "final", "amended", "corrected"})

# ReferrerContext.kind (the `referrer_kind` of libs/haven/data/organisations.yaml) -> bus enum.
REFERRER_KIND: Final[dict[str, pb.ReferrerKind.ValueType]] = {
    "police": pb.REFERRER_KIND_POLICE,
    "edt": pb.REFERRER_KIND_EDT,
    "local-authority": pb.REFERRER_KIND_LOCAL_AUTHORITY,
    "border-force": pb.REFERRER_KIND_BORDER_FORCE,
    "ngo": pb.REFERRER_KIND_NGO,
    "health": pb.REFERRER_KIND_HEALTH,
    "other": pb.REFERRER_KIND_OTHER,
}

# Observation.code values (CS_REFERRAL_FACT), one per fact an Observation carries.
FACT_DATE_OF_BIRTH: Final = "date-of-birth"
FACT_TRAFFICKING_CONCERN: Final = "trafficking-concern"
FACT_TRAFFICKING_ROUTE: Final = "trafficking-route"
FACT_EXPLOITATION_TYPE: Final = "exploitation-type"
FACT_NRM_STATUS: Final = "nrm-status"
FACT_ASYLUM_APPLICATION: Final = "asylum-application"
FACT_PARENTAL_RESPONSIBILITY_IN_UK: Final = "parental-responsibility-in-uk"
FACT_MISSING_EPISODE: Final = "missing-episode"
# A change of responsible local authority (the child moved): valueCodeableConcept with one ONS_GSS
# coding, the new authority's GSS code. Only posted later, never in a referral Bundle, which names the
# authority once on the ServiceRequest.
FACT_RESPONSIBLE_LOCAL_AUTHORITY: Final = "responsible-local-authority"
REFERRAL_FACTS: Final = (
    FACT_DATE_OF_BIRTH,
    FACT_TRAFFICKING_CONCERN,
    FACT_TRAFFICKING_ROUTE,
    FACT_EXPLOITATION_TYPE,
    FACT_NRM_STATUS,
    FACT_ASYLUM_APPLICATION,
    FACT_PARENTAL_RESPONSIBILITY_IN_UK,
    FACT_MISSING_EPISODE,
    FACT_RESPONSIBLE_LOCAL_AUTHORITY,
)
# Facts only `POST /fhir/Observation` may state: a referral Bundle states them elsewhere.
LATER_ONLY_FACTS: Final = frozenset({FACT_RESPONSIBLE_LOCAL_AUTHORITY})
# Facts that may be stated more than once in one Bundle; any other fact stated twice is a conflict.
REPEATABLE_FACTS: Final = frozenset({FACT_DATE_OF_BIRTH, FACT_EXPLOITATION_TYPE})
