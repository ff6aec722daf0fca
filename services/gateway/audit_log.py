"""Every read and write of a child's record is audited: a FHIR AuditEvent on the HAVEN_AUDIT stream.

The stream is append-only and file-backed; the publish is acknowledged by JetStream before the
request is answered, so no answered access goes unrecorded.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Literal

from fastapi import Request

from haven.kit import topology
from haven.kit.resources import RecordScope
from services.gateway.security.audit import audit_event
from services.gateway.security.principal import Principal
from services.gateway.state import GatewayState

Action = Literal["C", "R", "U", "D", "E"]


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
    an ``entity`` index, so ``GET /fhir/AuditEvent?entity=...`` answers without scanning the stream.
    Both are acknowledged before the request is answered.
    """
    if not references:
        return
    event = audit_event(
        principal,
        action,
        references[0],
        outcome,
        purpose,
        at=state.clock(),
        request_id=request.headers.get("x-request-id", ""),
        patient_reference=patient,
        more_references=tuple(references[1:]),
    )
    entities = sorted({*references, *([patient] if patient else [])})
    await asyncio.gather(
        state.js.publish(
            topology.AUDIT_RECORDED,
            json.dumps(event, separators=(",", ":")).encode(),
            headers={"Nats-Msg-Id": str(event["id"])},
        ),
        # No scope: only operators and admin read AuditEvents (access.can_read_audit).
        state.store.put(event, RecordScope(), state.clock()),
        *(state.store.add_index("AuditEvent", "entity", e, str(event["id"])) for e in entities),
    )


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
