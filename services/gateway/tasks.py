"""Task workflow for providers and LA platforms: ``PUT /fhir/Task/<id>`` with ``If-Match``.

The handler translates; `fhir.task_workflow` decides. The write (``versioned_update``) is a
compare-and-set on the version the caller read (412 when it moved on, 428 when the caller did not
say), and only after JetStream has stored it is ``TaskStatusChanged`` published, with an id derived
from the task and its new version so a retried publish is dropped as a duplicate.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from haven.kit import topology
from haven.kit.ids import derived_id
from haven.kit.logs import log_event
from haven.kit.resources import StoredResource
from haven.kit.timestamps import to_timestamp
from haven.task.v1 import task_pb2
from services.gateway.audit_log import patient_of, record_audit
from services.gateway.auth import CurrentPrincipal, State
from services.gateway.body import read_json_body
from services.gateway.errors import ApiError, api_error, fhir_response
from services.gateway.fhir import IssueType
from services.gateway.fhir.task_workflow import TaskChange, TransitionError, decide_update
from services.gateway.reads import read_visible
from services.gateway.security.access import can_update_task
from services.gateway.versioned_update import expected_version, publish_stored, save_if_match, stale_version

router = APIRouter()
_log = logging.getLogger(__name__)


@router.put("/fhir/Task/{resource_id}", summary="Update a Task's status (owner only, If-Match required)")
async def update_task(
    resource_id: str, request: Request, principal: CurrentPrincipal, state: State
) -> JSONResponse:
    """Accept, reject, start, complete or cancel a Task the caller's organisation owns."""
    stored = await read_visible(state, principal, "Task", resource_id)
    if not can_update_task(principal, stored.scope):
        raise api_error(403, IssueType.FORBIDDEN, "only the organisation that owns a Task may update it")
    version = expected_version(request)
    body = await read_json_body(request, state.settings.max_body_bytes)
    if version != stored.version:
        raise stale_version(stored.reference, stored.version)
    try:
        change = decide_update(stored.resource, body, resource_id=resource_id)
    except TransitionError as refused:
        raise ApiError(409, [refused.issue]) from None
    now = state.clock()
    change.resource["lastModified"] = now.isoformat(timespec="seconds").replace("+00:00", "Z")
    updated = await save_if_match(state, stored, change.resource, version, now)
    await _publish(state, principal.organisation_id, stored, updated, change)
    await record_audit(
        state,
        principal,
        "U",
        [updated.reference],
        request,
        purpose="COC",
        patient=patient_of(updated.resource),
    )
    log_event(
        _log, "task updated", task_id=resource_id, status=change.status, previous=change.previous_status
    )
    return fhir_response(updated.resource, headers={"ETag": f'W/"{updated.version}"'})


async def _publish(
    state: State, by: str, before: StoredResource, after: StoredResource, change: TaskChange
) -> None:
    task = after.resource
    codings = task.get("code", {}).get("coding", [])
    event = task_pb2.TaskStatusChanged(
        event_id=derived_id("task-status-changed", task["id"], str(after.version)),
        occurred_at=to_timestamp(state.clock()),
        referral_id=_id_of(task.get("basedOn", [{}])[0].get("reference", "")),
        task_id=task["id"],
        programme_id=str(codings[0].get("code", "")) if codings else "",
        service_id=_id_of(task.get("focus", {}).get("reference", "")),
        owner_organisation_id=_id_of(task.get("owner", {}).get("reference", "")),
        local_authority_gss=before.scope.local_authority_gss,
        previous_status=change.previous_status,
        status=change.status,
        status_reason_code=change.reason_code,
        changed_by_organisation_id=by,
    )
    # The Task is already stored: retry a failed publish rather than leave the router unaware.
    await publish_stored(state, topology.TASK_STATUS_CHANGED, event, event.event_id)


def _id_of(reference: str) -> str:
    return reference.rsplit("/", 1)[-1] if "/" in reference else ""
