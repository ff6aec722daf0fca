"""FHIR Tasks for routed services: built from the ReferralRouted event, stored with their access scope.

The router also closes the tasks it decides are over (an expired reservation, a programme exit, a
child no longer eligible, a closed referral, a move to an area the service does not cover) with a
coded ``statusReason``, flags tasks a person must review, and moves the tasks it keeps on a move of
local authority into the new area's scope.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from nats.js import JetStreamContext

from haven.canonical import CS_PROGRAMME, CS_TASK_ROUTE, CS_TASK_STATUS_REASON, EXT_MANUAL_REVIEW
from haven.kit.batch import KvWrite, send_all
from haven.kit.resources import (
    AlreadyExistsError,
    RecordScope,
    ResourceStore,
    StoredResource,
    VersionConflictError,
)
from haven.routing.v1 import routing_pb2
from services.referral_router.domain import ExistingTask
from services.referral_router.domain.rerouting import ACTIVE


def task_resource(
    event: routing_pb2.ReferralRouted, task: routing_pb2.RoutedTask, child_id: str, now: datetime
) -> dict[str, Any]:
    """Return the FHIR Task for one routed task (status requested, owned by the provider)."""
    resource: dict[str, Any] = {
        "resourceType": "Task",
        "id": task.task_id,
        "status": task.status or "requested",
        "intent": "order",
        "priority": "routine",
        "code": {"coding": [{"system": CS_PROGRAMME, "code": task.programme_id}]},
        "basedOn": [{"reference": f"ServiceRequest/{event.referral_id}"}],
        "for": {"reference": f"Patient/{child_id}"},
        "focus": {"reference": f"HealthcareService/{task.service_id}"},
        "authoredOn": now.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "lastModified": now.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "businessStatus": {"coding": [{"system": CS_TASK_ROUTE, "code": task.route}], "text": task.reason},
        "extension": [{"url": EXT_MANUAL_REVIEW, "valueBoolean": task.manual_review}],
    }
    if task.owner_organisation_id:
        resource["owner"] = {"reference": f"Organization/{task.owner_organisation_id}"}
    if event.referrer_organisation_id:
        resource["requester"] = {"reference": f"Organization/{event.referrer_organisation_id}"}
    if task.part_of_task_id:
        resource["partOf"] = [{"reference": f"Task/{task.part_of_task_id}"}]
    return resource


def task_scope(event: routing_pb2.ReferralRouted, task: routing_pb2.RoutedTask) -> RecordScope:
    """Return who may see the task: the child's LA, the referrer and the owning provider."""
    return RecordScope(
        local_authority_gss=event.local_authority_gss,
        referrer_organisation_id=event.referrer_organisation_id,
        owner_organisation_ids=frozenset({task.owner_organisation_id} - {""}),
    )


def _search_entries(event: routing_pb2.ReferralRouted, task: routing_pb2.RoutedTask) -> list[tuple[str, str]]:
    """Return the gateway's Task searches that find this task: (parameter, value)."""
    entries = [
        ("based-on", f"ServiceRequest/{event.referral_id}"),
        ("local-authority", event.local_authority_gss or "UNKNOWN"),
    ]
    if task.owner_organisation_id:
        entries.append(("owner", f"Organization/{task.owner_organisation_id}"))
    return entries


async def store_tasks(
    store: ResourceStore,
    event: routing_pb2.ReferralRouted,
    child_id: str,
    now: datetime,
    js: JetStreamContext | None = None,
) -> None:
    """Write every task of the event and its search index entries, all at once; safe to repeat.

    A Task that exists already was written by an earlier delivery of the same decision (its id comes
    from the routing sequence): its create is refused and it is left as it is, whatever its owner did
    to it since. Index entries are keys without a value, so writing one again changes nothing a reader
    sees. With ``js`` (the router) the writes go out as one batch (``send_all``), every
    acknowledgement awaited once; without it, one awaited write each, concurrently.
    """
    if js is None:
        await asyncio.gather(*(_store_task(store, event, task, child_id, now) for task in event.tasks))
        return
    writes: list[KvWrite] = []
    for task in event.tasks:
        writes.append(store.creation(task_resource(event, task, child_id, now), task_scope(event, task), now))
        writes.extend(
            store.index_entry("Task", param, value, task.task_id)
            for param, value in _search_entries(event, task)
        )
    await send_all(js, writes)


async def _store_task(
    store: ResourceStore,
    event: routing_pb2.ReferralRouted,
    task: routing_pb2.RoutedTask,
    child_id: str,
    now: datetime,
) -> None:
    with contextlib.suppress(AlreadyExistsError):
        await store.create(task_resource(event, task, child_id, now), task_scope(event, task), now)
    await asyncio.gather(
        *(
            store.add_index("Task", param, value, task.task_id)
            for param, value in _search_entries(event, task)
        )
    )


# Reasons the router itself closes a task, in the task-status-reason code system (the owners' reasons
# for a decline are the gateway's; these are the system's).
REASON_RESERVATION_EXPIRED = "reservation-expired"
REASON_EXIT = "programme-exit"
REASON_NO_LONGER_ELIGIBLE = "no-longer-eligible"
REASON_ROUTE_CHANGED = "route-changed"
REASON_REFERRAL_CLOSED = "referral-closed"
REASON_MOVED_LOCAL_AUTHORITY = "moved-local-authority"
# Every code the router writes, with its meaning (docs/fhir/profile.md lists them beside the owners').
ROUTER_STATUS_REASONS: dict[str, str] = {
    REASON_RESERVATION_EXPIRED: "The provider did not accept the reserved place in time",
    REASON_EXIT: "The child leaves the programme (its exit rule)",
    REASON_NO_LONGER_ELIGIBLE: "The child is no longer eligible for the programme",
    REASON_ROUTE_CHANGED: "The programme's route changed; a new task replaces this one",
    REASON_REFERRAL_CLOSED: "The referral was closed (completed or revoked) by the local authority",
    REASON_MOVED_LOCAL_AUTHORITY: "Another local authority is responsible and the service does not cover it",
}

_TASK_UPDATE_ATTEMPTS = 10


async def tasks_of_referral(store: ResourceStore, referral_id: str) -> list[StoredResource]:
    """Return every Task routed for a referral, oldest first."""
    return await store.search("Task", "based-on", f"ServiceRequest/{referral_id}")


def _reference_id(reference: dict[str, Any] | None, prefix: str) -> str:
    return str((reference or {}).get("reference", "")).removeprefix(prefix)


def existing_task(resource: dict[str, Any]) -> ExistingTask:
    """Read a stored Task as the re-routing rules see it."""
    codings = resource.get("code", {}).get("coding", [])
    routes = resource.get("businessStatus", {}).get("coding", [])
    return ExistingTask(
        task_id=str(resource["id"]),
        programme_id=str(next((c["code"] for c in codings if c.get("system") == CS_PROGRAMME), "")),
        service_id=_reference_id(resource.get("focus"), "HealthcareService/"),
        route=str(next((c["code"] for c in routes if c.get("system") == CS_TASK_ROUTE), "")),
        status=str(resource.get("status", "")),
    )


def status_reason_code(resource: dict[str, Any]) -> str:
    """Return a stored Task's ``statusReason`` code in the task-status-reason system ("" when none)."""
    codings = (resource.get("statusReason") or {}).get("coding", [])
    return str(next((c.get("code", "") for c in codings if c.get("system") == CS_TASK_STATUS_REASON), ""))


def referral_of(resource: dict[str, Any]) -> str:
    """Return the ServiceRequest id a stored Task is based on."""
    based_on = resource.get("basedOn") or [{}]
    return _reference_id(based_on[0], "ServiceRequest/")


def _stamp(now: datetime) -> str:
    return now.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


async def close_task(
    store: ResourceStore,
    task_id: str,
    status: str,
    reason_code: str,
    reason: str,
    now: datetime,
    *,
    only_from: frozenset[str] = ACTIVE,
) -> tuple[StoredResource, str] | None:
    """Close a Task (``cancelled`` or ``completed``) with a coded reason; return it and its old status.

    None when its status is not in ``only_from`` (by default: not live).

    Compare-and-set on the version read: when the owner changed the task in between (for example
    accepted it just as its reservation expired), the decision is taken again on what they wrote.
    """
    for _ in range(_TASK_UPDATE_ATTEMPTS):
        stored = await store.read("Task", task_id)
        if stored is None or stored.resource.get("status") not in only_from:
            return None
        resource = dict(stored.resource)
        resource["status"] = status
        resource["statusReason"] = {
            "coding": [{"system": CS_TASK_STATUS_REASON, "code": reason_code}],
            "text": reason,
        }
        resource["lastModified"] = _stamp(now)
        try:
            updated = await store.update(resource, stored.scope, now, stored.version)
            return updated, str(stored.resource["status"])
        except VersionConflictError:
            continue
    raise RuntimeError(f"Task {task_id} kept changing while it was being closed")


async def rescope_task(store: ResourceStore, task_id: str, local_authority_gss: str, now: datetime) -> bool:
    """Put a live Task in the scope of another local authority and index it there; False if not moved.

    For a task the router kept on a move of local authority that still carries the old area (one the
    router stored from a routing decided before the gateway re-scoped the referral's records).
    Compare-and-set, read again on conflict; a task already in the area is left as it is.
    """
    for _ in range(_TASK_UPDATE_ATTEMPTS):
        stored = await store.read("Task", task_id)
        if stored is None or stored.scope.local_authority_gss == local_authority_gss:
            return False
        scope = replace(stored.scope, local_authority_gss=local_authority_gss)
        try:
            await store.update(dict(stored.resource), scope, now, stored.version)
        except VersionConflictError:
            continue
        await store.add_index("Task", "local-authority", local_authority_gss or "UNKNOWN", task_id)
        return True
    raise RuntimeError(f"Task {task_id} kept changing while it was being moved")


async def flag_for_review(store: ResourceStore, task_id: str, reason: str, now: datetime) -> None:
    """Mark a live Task for a person's review, with the reason as a note (idempotent)."""
    for _ in range(_TASK_UPDATE_ATTEMPTS):
        stored = await store.read("Task", task_id)
        if stored is None:
            return
        resource = dict(stored.resource)
        notes = list(resource.get("note", []))
        if any(n.get("text") == reason for n in notes):
            return
        resource["note"] = [*notes, {"time": _stamp(now), "text": reason}]
        resource["extension"] = [
            e for e in resource.get("extension", []) if e.get("url") != EXT_MANUAL_REVIEW
        ] + [{"url": EXT_MANUAL_REVIEW, "valueBoolean": True}]
        resource["lastModified"] = _stamp(now)
        try:
            await store.update(resource, stored.scope, now, stored.version)
        except VersionConflictError:
            continue
        return
