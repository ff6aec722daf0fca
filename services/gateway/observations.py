"""New facts about a referred child: ``POST /fhir/Observation`` (an NRM decision, an age assessment, ...).

The referrer or the responsible local authority posts one Observation with ``basedOn:
ServiceRequest/<referral id>``. The handler translates; ``fhir.facts_from_observation`` decides
whether the Observation is valid and what it changes. Then, in this order: the Observation is
stored with the referral's scope, the referral's facts are replaced in KV by compare-and-set (so two
Observations posted at once both count), ``ReferralFactsUpdated`` is published (the eligibility
service re-assesses at once), and the creation is audited. Only then does the caller get 201.

A ``responsible-local-authority`` Observation moves the referral to another local authority (the
responsible LA, the referrer or an operator may post it). Access follows the stored scope of each
record, so the move re-scopes them (docs/adr/0007): the Patient, the Observations and the Tasks
first, then ``ReferralFactsUpdated``, and the ServiceRequest last. Until the ServiceRequest moves the
old LA can still post, so a retry after a crash part-way finishes the move: any Observation whose
facts name another LA than the ServiceRequest's scope completes it. A closed referral takes no facts.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from datetime import date, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from haven.eligibility.v1 import eligibility_pb2
from haven.kit import bus, topology
from haven.kit.batch import KvWrite
from haven.kit.ids import derived_id, new_id
from haven.kit.logs import log_event
from haven.kit.resources import RecordScope, StoredResource, VersionConflictError
from haven.kit.timestamps import to_timestamp
from haven.organisations import Role
from haven.referral.v1 import referral_pb2
from services.gateway.audit_log import patient_of, record_audit
from services.gateway.auth import CurrentPrincipal, State, require_role
from services.gateway.body import read_json_body
from services.gateway.errors import api_error, fhir_response
from services.gateway.fhir import IssueType, profile
from services.gateway.fhir.observation import (
    facts_from_observation,
    referral_id_from_observation,
    states_fact,
)
from services.gateway.reads import read_visible
from services.gateway.security.access import can_move_local_authority
from services.gateway.state import GatewayState

router = APIRouter()
_log = logging.getLogger(__name__)
# Compare-and-set attempts when other facts about the same referral arrive at the same moment.
_FACT_WRITE_ATTEMPTS = 5
# Compare-and-set attempts to re-scope one record that its owner (the router, a provider) is writing.
_SCOPE_WRITE_ATTEMPTS = 10


async def facts_bucket(js: JetStreamContext) -> KeyValue:
    """Return the KV bucket holding each referral's latest ReferralFacts."""
    return await js.key_value(topology.BUCKET_FACTS)


def facts_creation(referral_id: str, facts: referral_pb2.ReferralFacts) -> KvWrite:
    """Return the write that keeps a new referral's facts, the base later Observations apply to.

    For the intake's batch (``write_all``). Created, never replaced: when an intake is completed again,
    facts a later Observation wrote meanwhile stay.
    """
    return KvWrite(topology.BUCKET_FACTS, referral_id, facts.SerializeToString(), create=True)


async def current_facts(
    state: GatewayState, referral_id: str
) -> tuple[referral_pb2.ReferralFacts, int | None]:
    """Return the referral's latest facts and their KV revision (None when not yet kept by the gateway)."""
    try:
        entry = await (await facts_bucket(state.js)).get(referral_id)
        if entry.value:
            return referral_pb2.ReferralFacts.FromString(entry.value), entry.revision
    except KeyNotFoundError:
        pass
    # A referral taken in before the gateway kept facts: the eligibility service's latest copy.
    try:
        assessed = await state.assessments.get(referral_id)
    except KeyNotFoundError:
        raise api_error(
            409,
            IssueType.CONFLICT,
            "the referral is still being taken in; retry shortly",
            "Observation.basedOn",
        ) from None
    return eligibility_pb2.EligibilityAssessed.FromString(assessed.value or b"").facts, None


@router.post("/fhir/Observation", summary="Post a new fact about a referred child")
async def post_observation(request: Request, principal: CurrentPrincipal, state: State) -> JSONResponse:
    """Record one Observation about a referral the caller may see; 201 once it is stored and announced."""
    require_role(principal, Role.REFERRER, Role.LA_PLATFORM, Role.OPERATOR)
    body = await read_json_body(request, state.settings.max_body_bytes)
    moving = states_fact(body, profile.FACT_RESPONSIBLE_LOCAL_AUTHORITY)
    if not moving:
        # Operators post no facts about a child, but may move a referral whose area is wrong.
        require_role(principal, Role.REFERRER, Role.LA_PLATFORM)
    referral_id = referral_id_from_observation(body)
    referral = await read_visible(state, principal, "ServiceRequest", referral_id)
    if moving and not can_move_local_authority(principal, referral.scope):
        raise api_error(
            403,
            IssueType.FORBIDDEN,
            "only the responsible local authority, the referrer "
            "or an operator may move a referral to another local authority",
        )
    if referral.resource.get("status", "active") != "active":
        raise api_error(
            409,
            IssueType.BUSINESS_RULE,
            f"ServiceRequest/{referral_id} is {referral.resource.get('status')}: a closed referral "
            "takes no new facts",
            "Observation.basedOn",
        )
    now = state.clock()
    facts, revision = await current_facts(state, referral_id)
    updated, changed = facts_from_observation(body, facts, today=now.date())

    area = updated.local_authority_gss or referral.scope.local_authority_gss
    resource = _observation_resource(body, new_id(), facts.child_id)
    stored = await state.store.create(resource, _in_area(referral, area), now)
    await state.store.add_index(
        "Observation", "based-on", f"ServiceRequest/{referral_id}", stored.resource["id"]
    )
    updated, changed = await _save_facts(state, referral_id, body, updated, changed, revision, now.date())
    area = updated.local_authority_gss or referral.scope.local_authority_gss
    moved = await _move_records(state, referral, area, now) if area != _area(referral) else []

    # Published even when nothing changed: a client retrying after a failure here must still get the
    # facts re-assessed, and the eligibility service announces only decisions that changed.
    event = referral_pb2.ReferralFactsUpdated(
        event_id=derived_id("referral-facts-updated", stored.resource["id"]),
        occurred_at=to_timestamp(now),
        referral_id=referral_id,
        facts=updated,
        changed_facts=changed,
    )
    await bus.publish_event(state.js, topology.REFERRAL_FACTS_UPDATED, event, msg_id=event.event_id)
    if area != _area(referral):
        # Last: until the ServiceRequest moves, whoever posted can retry and finish the move.
        moved.append(await _move_service_request(state, referral, area, now))
    await record_audit(
        state, principal, "C", [stored.reference], request, purpose="COC", patient=patient_of(stored.resource)
    )
    if moved:
        await record_audit(
            state, principal, "U", moved, request, purpose="COC", patient=patient_of(stored.resource)
        )
    log_event(
        _log,
        "facts recorded",
        referral_id=referral_id,
        observation_id=stored.resource["id"],
        changed_facts=changed,
        organisation=principal.organisation_id,
        moved_records=len(moved),
    )
    return fhir_response(
        stored.resource, 201, {"Location": stored.reference, "ETag": f'W/"{stored.version}"'}
    )


def _observation_resource(body: dict[str, Any], observation_id: str, child_id: str) -> dict[str, Any]:
    resource = copy.deepcopy(body)
    resource["id"] = observation_id
    resource.pop("meta", None)
    # Name the child, so the record and its audit trail say whom the fact is about.
    resource.setdefault("subject", {"reference": f"Patient/{child_id}"})
    return resource


async def _save_facts(
    state: GatewayState,
    referral_id: str,
    body: dict[str, Any],
    updated: referral_pb2.ReferralFacts,
    changed: list[str],
    revision: int | None,
    today: date,
) -> tuple[referral_pb2.ReferralFacts, list[str]]:
    """Write the facts by compare-and-set, re-applying the Observation to newer facts after a conflict."""
    bucket = await facts_bucket(state.js)
    for _ in range(_FACT_WRITE_ATTEMPTS):
        try:
            if revision is None:
                await bucket.create(referral_id, updated.SerializeToString())
            else:
                await bucket.update(referral_id, updated.SerializeToString(), last=revision)
            return updated, changed
        except KeyWrongLastSequenceError:
            facts, revision = await current_facts(state, referral_id)
            updated, changed = facts_from_observation(body, facts, today=today)
    raise api_error(
        409, IssueType.CONFLICT, "the referral's facts kept changing while recording this one; retry"
    )


def _area(record: StoredResource) -> str:
    return record.scope.local_authority_gss


def _in_area(record: StoredResource, gss: str) -> RecordScope:
    """Return the record's scope with `gss` as the responsible local authority."""
    return dataclasses.replace(record.scope, local_authority_gss=gss)


async def _move_records(state: GatewayState, referral: StoredResource, gss: str, now: datetime) -> list[str]:
    """Give the referral's Patient, Observations and Tasks the new local authority; return those moved.

    The ServiceRequest itself is moved by the caller, last. The Patient moves only from the
    referral's old authority: a Patient first referred elsewhere keeps the scope it has.
    """
    reference = f"ServiceRequest/{referral.resource['id']}"
    records = [
        *await state.store.search("Observation", "based-on", reference),
        *await state.store.search("Task", "based-on", reference),
    ]
    patient = patient_of(referral.resource)
    if patient is not None:
        found = await state.store.read("Patient", patient.removeprefix("Patient/"))
        if found is not None and _area(found) in (_area(referral), gss):
            records.insert(0, found)
    moved = []
    for record in records:
        if _area(record) == gss:
            continue  # already moved (a retry), or posted after the move began
        await _rescope(state, record, gss, now)
        moved.append(record.reference)
        if record.resource["resourceType"] == "Task":
            # The LA's "all my tasks" search walks this index; the old entry is filtered out by scope.
            await state.store.add_index("Task", "local-authority", gss, str(record.resource["id"]))
    return moved


async def _rescope(state: GatewayState, record: StoredResource, gss: str, now: datetime) -> StoredResource:
    """Write `record` with the new authority in its scope, re-reading it when its owner wrote meanwhile."""
    current: StoredResource | None = record
    for _ in range(_SCOPE_WRITE_ATTEMPTS):
        if current is None or _area(current) == gss:
            return current or record
        try:
            return await state.store.update(
                current.resource, _in_area(current, gss), now, expected_version=current.version
            )
        except VersionConflictError:
            current = await state.store.read(record.resource["resourceType"], str(record.resource["id"]))
    raise api_error(
        409, IssueType.CONFLICT, f"{record.reference} kept changing while it was moved; post the move again"
    )


async def _move_service_request(
    state: GatewayState, referral: StoredResource, gss: str, now: datetime
) -> str:
    """Move the ServiceRequest: its responsible-local-authority extension and its scope, together."""
    current: StoredResource | None = referral
    for _ in range(_SCOPE_WRITE_ATTEMPTS):
        if current is None:
            break
        resource = copy.deepcopy(current.resource)
        for extension in resource.get("extension", []):
            if extension.get("url") == profile.EXT_RESPONSIBLE_LOCAL_AUTHORITY:
                extension["valueIdentifier"] = {"system": profile.ONS_GSS, "value": gss}
        try:
            await state.store.update(resource, _in_area(current, gss), now, expected_version=current.version)
            return referral.reference
        except VersionConflictError:
            current = await state.store.read("ServiceRequest", str(referral.resource["id"]))
    raise api_error(
        409, IssueType.CONFLICT, f"{referral.reference} kept changing while it was moved; post the move again"
    )
