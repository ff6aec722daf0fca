"""Closing a referral: ``PUT /fhir/ServiceRequest/<id>`` with ``If-Match``, status completed or revoked.

The responsible local authority (or an operator) closes a referral when the child's case is over.
The handler translates; `fhir.referral_status` decides. As for Tasks, the write is a compare-and-set
on the version the caller read (412 when it moved on, 428 when the caller did not say); only after
JetStream has stored it is ``ReferralClosed`` published, with an id derived from the referral and
its new version, so a retried publish is dropped as a duplicate. Three services react to it: the
eligibility service cancels the referral's re-assessments and ignores it from then on; the router
cancels its open tasks (status reason ``referral-closed``), frees their places and takes the child
off waiting lists; the notifier (services/notifier/closures.py) marks it closed, purges its
schedules and missing episode and tells the owners of its open tasks. The gateway itself refuses
new facts for it.
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
from haven.referral.v1 import referral_pb2
from services.gateway.audit_log import patient_of, record_audit
from services.gateway.auth import CurrentPrincipal, State
from services.gateway.body import read_json_body
from services.gateway.errors import ApiError, api_error, fhir_response
from services.gateway.fhir import IssueType
from services.gateway.fhir.referral_status import ReferralStatusChange, decide_status_update
from services.gateway.fhir.task_workflow import TransitionError
from services.gateway.reads import read_visible
from services.gateway.security.access import can_close_referral
from services.gateway.versioned_update import expected_version, publish_stored, save_if_match, stale_version

router = APIRouter()
_log = logging.getLogger(__name__)


@router.put(
    "/fhir/ServiceRequest/{resource_id}",
    summary="Close a referral: status completed or revoked (responsible LA or operator, If-Match required)",
)
async def update_service_request(
    resource_id: str, request: Request, principal: CurrentPrincipal, state: State
) -> JSONResponse:
    """Close a referral the caller may close; 200 with the closed ServiceRequest and its ETag."""
    stored = await read_visible(state, principal, "ServiceRequest", resource_id)
    if not can_close_referral(principal, stored.scope):
        raise api_error(
            403,
            IssueType.FORBIDDEN,
            "only the responsible local authority or an operator may close a referral",
        )
    version = expected_version(request)
    body = await read_json_body(request, state.settings.max_body_bytes)
    if version != stored.version:
        raise stale_version(stored.reference, stored.version)
    try:
        change = decide_status_update(stored.resource, body, resource_id=resource_id)
    except TransitionError as refused:
        raise ApiError(409, [refused.issue]) from None
    now = state.clock()
    updated = await save_if_match(state, stored, change.resource, version, now)
    await _publish(state, principal.organisation_id, updated, change)
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
        _log,
        "referral closed",
        referral_id=resource_id,
        status=change.status,
        organisation=principal.organisation_id,
    )
    return fhir_response(updated.resource, headers={"ETag": f'W/"{updated.version}"'})


async def _publish(state: State, by: str, after: StoredResource, change: ReferralStatusChange) -> None:
    event = referral_pb2.ReferralClosed(
        event_id=derived_id("referral-closed", str(after.resource["id"]), str(after.version)),
        occurred_at=to_timestamp(state.clock()),
        referral_id=str(after.resource["id"]),
        closure=change.closure,
        local_authority_gss=after.scope.local_authority_gss,
        referrer_organisation_id=after.scope.referrer_organisation_id,
        closed_by_organisation_id=by,
    )
    # The ServiceRequest is already stored closed: retry a failed publish rather than leave the other
    # services assessing and routing a closed referral. Nats-Msg-Id makes a landed repeat harmless.
    await publish_stored(state, topology.REFERRAL_CLOSED, event, event.event_id)
