"""FHIR R4 AuditEvents for the gateway: who (organisation and role) did what to which record, and why.

An AuditEvent holds resource references and codes only: no names, no free text, no query strings,
no client addresses, because an audit log outlives the records it describes and is read by more
people. Every free-form input is therefore checked against a code list or a reference pattern.
Shape after the IHE Basic Audit Log Patterns (BALP) RESTful events.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final, Literal, TypeVar

import orjson

from services.gateway.fhir.profile import BASE

from .principal import Principal

AUDIT_EVENT_TYPE: Final = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL_INTERACTION: Final = "http://hl7.org/fhir/restful-interaction"
ACT_REASON: Final = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
DICOM: Final = "http://dicom.nema.org/resources/ontology/DCM"
RESOURCE_TYPES: Final = "http://hl7.org/fhir/resource-types"
OBJECT_ROLE: Final = "http://terminology.hl7.org/CodeSystem/object-role"
SECURITY_SOURCE_TYPE: Final = "http://terminology.hl7.org/CodeSystem/security-source-type"
BALP_ENTITY_TYPE: Final = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"
HAVEN_ROLE: Final = f"{BASE}/CodeSystem/role"
OBSERVER: Final = "haven-gateway"
_AUDIT_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, f"{BASE}/AuditEvent")

_Code = TypeVar("_Code", bound=StrEnum)

# The interaction each action stands for when the caller does not name one.
DEFAULT_INTERACTION: Final = {"C": "create", "R": "read", "U": "update", "D": "delete", "E": "operation"}
INTERACTIONS: Final = frozenset(
    {
        "read", "vread", "update", "patch", "delete", "history", "history-instance", "history-type",
        "history-system", "create", "search", "search-type", "search-system", "capabilities",
        "transaction", "batch", "operation",
    }
)  # fmt: skip

# `Type/id` or a bare `Type` (a type-level search); FHIR ids are 1-64 of [A-Za-z0-9.-].
_REFERENCE = re.compile(r"[A-Z][A-Za-z]+(/[A-Za-z0-9.\-]{1,64})?")
# Request ids may come from the caller's X-Request-Id: refuse anything that could carry prose.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


class Outcome(StrEnum):
    """AuditEvent.outcome (R4 audit-event-outcome)."""

    SUCCESS = "0"
    MINOR_FAILURE = "4"
    SERIOUS_FAILURE = "8"
    MAJOR_FAILURE = "12"


class Purpose(StrEnum):
    """Why the interaction happened (v3 ActReason codes Haven uses)."""

    COORDINATION_OF_CARE = "COC"
    OPERATIONS = "HOPERAT"
    SYSTEM_ADMINISTRATION = "HSYSADMIN"


def outcome_for_status(status_code: int) -> Outcome:
    """Return the AuditEvent outcome for an HTTP status: refusals are minor, server errors serious."""
    if status_code < 400:
        return Outcome.SUCCESS
    if status_code < 500:
        return Outcome.MINOR_FAILURE
    return Outcome.SERIOUS_FAILURE


def audit_event(
    principal: Principal,
    action: Literal["C", "R", "U", "D", "E"],
    entity_reference: str,
    outcome: str,
    purpose: str,
    *,
    at: datetime,
    request_id: str,
    interaction_id: str,
    interaction: str | None = None,
    patient_reference: str | None = None,
    more_references: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Return a FHIR R4 AuditEvent (JSON) for one REST interaction by `principal`.

    `entity_reference` is `Type/id` (or a bare `Type` for a search), `outcome` an `Outcome` code,
    `purpose` a `Purpose` code, `interaction` a restful-interaction code (default from `action`),
    `patient_reference` the child's `Patient/id` when known, so "who saw this child" is answerable.
    `more_references` are further records the same interaction touched (a transaction's resources),
    so one interaction is one AuditEvent. `request_id` ties the events of one request together
    ("" omits it; one that is not a plain token is kept as a digest). `interaction_id` is issued once
    per interaction by the gateway (a uuid4 per request; a new referral's own id at intake): `id` is
    derived from it and the content, so two identical interactions in the same millisecond are two
    records, while writing the same interaction's event again (a retried publish, an intake completed
    again) is de-duplicated. Raises ValueError for any input outside its code list or pattern, so no
    free text reaches the audit log.
    """
    if not interaction_id:
        raise ValueError("interaction_id must be issued for the interaction; it may not be empty")
    if action not in DEFAULT_INTERACTION:
        raise ValueError(f"action must be one of C, R, U, D, E, not {action!r}")
    interaction = interaction or DEFAULT_INTERACTION[action]
    if interaction not in INTERACTIONS:
        raise ValueError(f"unknown restful interaction {interaction!r}")
    entities = [_resource_entity(r, role="4") for r in (entity_reference, *more_references)]
    if patient_reference is not None:
        if not patient_reference.startswith("Patient/"):
            raise ValueError(f"patient_reference must be `Patient/id`, not {patient_reference!r}")
        entities.append(_resource_entity(patient_reference, role="1"))
    if request_id:
        entities.append(_request_entity(request_id))
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "type": {"system": AUDIT_EVENT_TYPE, "code": "rest", "display": "RESTful Operation"},
        "subtype": [{"system": RESTFUL_INTERACTION, "code": interaction}],
        "action": action,
        "recorded": _instant(at),
        "outcome": _code(Outcome, outcome, "outcome"),
        "purposeOfEvent": [{"coding": [{"system": ACT_REASON, "code": _code(Purpose, purpose, "purpose")}]}],
        "agent": [
            {
                "type": {"coding": [{"system": DICOM, "code": "110153", "display": "Source Role ID"}]},
                "role": [{"coding": [{"system": HAVEN_ROLE, "code": principal.role.value}]}],
                "who": {"reference": f"Organization/{principal.organisation_id}"},
                "requestor": True,
            }
        ],
        "source": {
            "observer": {"display": OBSERVER},
            "type": [{"system": SECURITY_SOURCE_TYPE, "code": "3", "display": "Web Server"}],
        },
        "entity": entities,
    }
    # Derived from the interaction and the content: republishing the same event (a retried publish)
    # is de-duplicated by Nats-Msg-Id, while two interactions differ in their ids even when `recorded`
    # and everything else match (the clock ticks in milliseconds). The content still counts because
    # one request may record several events (a create, then the records it moved).
    event["id"] = str(uuid.uuid5(_AUDIT_NAMESPACE, f"{interaction_id}|{canonical_json(event)}"))
    return event


def canonical_json(event: dict[str, Any]) -> str:
    """Return ``event`` as ``json.dumps(event, sort_keys=True, separators=(",", ":"))`` does.

    The AuditEvent ids derive from this form, so it must never change. orjson writes the same text
    for ASCII content (sorted keys, no spaces) about ten times faster; text with other characters,
    which ``json.dumps`` escapes and orjson does not, takes ``json.dumps`` itself.
    """
    fast = orjson.dumps(event, option=orjson.OPT_SORT_KEYS).decode()
    if fast.isascii():
        return fast
    return json.dumps(event, sort_keys=True, separators=(",", ":"))


def _code(codes: type[_Code], value: str, name: str) -> str:
    try:
        return codes(value).value
    except ValueError:
        allowed = ", ".join(c.value for c in codes)
        raise ValueError(f"{name} must be one of {allowed}, not {value!r}") from None


def _resource_entity(reference: str, *, role: str) -> dict[str, Any]:
    if not _REFERENCE.fullmatch(reference):
        raise ValueError(f"expected a relative reference `Type/id` or a resource type, not {reference!r}")
    resource_type, _, resource_id = reference.partition("/")
    entity: dict[str, Any] = {
        "type": {"system": RESOURCE_TYPES, "code": resource_type},
        "role": {"system": OBJECT_ROLE, "code": role},
    }
    if resource_id:
        entity["what"] = {"reference": reference}
    return entity


def _request_entity(request_id: str) -> dict[str, Any]:
    # The id may be the caller's X-Request-ID: anything that could carry prose is kept only as a
    # digest, which still correlates the events of one request without recording what it said.
    if not _REQUEST_ID.fullmatch(request_id):
        request_id = "sha256:" + hashlib.sha256(request_id.encode("utf-8")).hexdigest()[:32]
    return {
        "type": {"system": BALP_ENTITY_TYPE, "code": "XrequestId"},
        "what": {"identifier": {"value": request_id}},
    }


def _instant(at: datetime) -> str:
    # FHIR `instant` needs a zone; a naive time would be recorded in the host's zone silently.
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("`at` must be timezone-aware")
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
