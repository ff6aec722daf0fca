"""Every read and write of a child's record is audited: a FHIR AuditEvent on the HAVEN_AUDIT stream.

The stream is append-only and file-backed; the publish is acknowledged by JetStream before the
request is answered, so no answered access goes unrecorded.
"""

from __future__ import annotations

import json
from typing import Literal

from fastapi import Request

from haven.kit import topology
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
) -> None:
    """Publish one AuditEvent per record touched by the interaction."""
    request_id = request.headers.get("x-request-id", "")
    for reference in references:
        event = audit_event(
            principal, action, reference, outcome, purpose, at=state.clock(), request_id=request_id
        )
        await state.js.publish(
            topology.AUDIT_RECORDED,
            json.dumps(event, separators=(",", ":")).encode(),
            headers={"Nats-Msg-Id": str(event["id"])},
        )
