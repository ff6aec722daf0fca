"""Every read and write of a child's record is audited: a FHIR AuditEvent on the HAVEN_AUDIT stream.

The stream is append-only and file-backed; the publish is acknowledged by JetStream before the
request is answered, so no answered access goes unrecorded. ``audit_record`` builds what one
interaction records (the event, its stored copy and ``entity`` index entries) for both
``record_audit`` and the intake, which batches those writes with its own.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import orjson
from fastapi import Request

from haven.kit import topology
from haven.kit.batch import KvWrite, Publish, send_all
from haven.kit.resources import RecordScope
from services.gateway.security.audit import audit_event
from services.gateway.security.principal import Principal
from services.gateway.state import GatewayState

Action = Literal["C", "R", "U", "D", "E"]


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One interaction's AuditEvent and the KV writes that keep it searchable."""

    event: dict[str, Any]
    writes: tuple[KvWrite, ...]

    def publish_call(self) -> Publish:
        """Return the publish of the event on HAVEN_AUDIT, for a batch (its id is its Nats-Msg-Id)."""
        return Publish(
            topology.AUDIT_RECORDED,
            orjson.dumps(self.event),
            {"Nats-Msg-Id": str(self.event["id"])},
        )


def audit_record(
    state: GatewayState,
    principal: Principal,
    action: Action,
    references: list[str],
    *,
    purpose: str,
    at: datetime,
    request_id: str,
    interaction_id: str,
    outcome: str = "0",
    patient: str | None = None,
) -> AuditRecord:
    """Return the AuditEvent of one interaction touching ``references`` (at least one), with its writes.

    The writes are the stored AuditEvent (created once: a repeat leaves it as it is) and one
    ``entity`` index entry per record and the child, so ``GET /fhir/AuditEvent?entity=...`` answers
    without scanning the stream. Raises ValueError for input outside the audit code lists.
    """
    event = audit_event(
        principal,
        action,
        references[0],
        outcome,
        purpose,
        at=at,
        request_id=request_id,
        interaction_id=interaction_id,
        patient_reference=patient,
        more_references=tuple(references[1:]),
    )
    entities = sorted({*references, *([patient] if patient else [])})
    return AuditRecord(
        event=event,
        writes=(
            # No scope: only operators and admin read AuditEvents (access.can_read_audit).
            state.store.creation(event, RecordScope(), at),
            *(state.store.index_entry("AuditEvent", "entity", e, str(event["id"])) for e in entities),
        ),
    )


def interaction_id(request: Request) -> str:
    """Return the id of this request's interaction: a uuid4 issued on first use, then kept with it.

    Not the caller's ``X-Request-ID``: a client may send the same one twice, or none, and each
    request must still be its own AuditEvent.
    """
    issued = getattr(request.state, "audit_interaction_id", None)
    if issued is None:
        issued = request.state.audit_interaction_id = str(uuid.uuid4())
    return str(issued)


async def record_audit(
    state: GatewayState,
    principal: Principal,
    action: Action,
    references: list[str],
    request: Request,
    *,
    purpose: str,
    outcome: str = "0",
    patient: str | None = None,
) -> None:
    """Record one AuditEvent for the interaction, naming every record touched and the child when known.

    Published on the HAVEN_AUDIT stream (the durable log) and also kept in the resource store with
    an ``entity`` index (see ``audit_record``). Both are acknowledged before the request is answered.
    """
    if not references:
        return
    record = audit_record(
        state,
        principal,
        action,
        references,
        purpose=purpose,
        at=state.clock(),
        request_id=request.headers.get("x-request-id", ""),
        interaction_id=interaction_id(request),
        outcome=outcome,
        patient=patient,
    )
    await send_all(state.js, [record.publish_call(), *record.writes])


def patient_of(resource: dict[str, Any]) -> str | None:
    """Return the ``Patient/<id>`` a resource is about (itself for a Patient), or None."""
    if resource.get("resourceType") == "Patient":
        return f"Patient/{resource.get('id')}"
    for element in ("subject", "for"):
        value = resource.get(element)
        reference = str(value.get("reference", "")) if isinstance(value, dict) else ""
        if reference.startswith("Patient/"):
            return reference
    return None
