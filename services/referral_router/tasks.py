"""FHIR Tasks for routed services: built from the ReferralRouted event, stored with their access scope."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from haven.canonical import CS_PROGRAMME, CS_TASK_ROUTE, EXT_MANUAL_REVIEW
from haven.kit.resources import RecordScope, ResourceStore
from haven.routing.v1 import routing_pb2


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


async def store_tasks(
    store: ResourceStore, event: routing_pb2.ReferralRouted, child_id: str, now: datetime
) -> None:
    """Write every task of the event and its search index entries; safe to repeat for a redelivery."""
    for task in event.tasks:
        existing = await store.read("Task", task.task_id)
        if existing is None:
            await store.put(task_resource(event, task, child_id, now), task_scope(event, task), now)
        await store.add_index("Task", "based-on", f"ServiceRequest/{event.referral_id}", task.task_id)
        await store.add_index("Task", "local-authority", event.local_authority_gss or "UNKNOWN", task.task_id)
        if task.owner_organisation_id:
            await store.add_index("Task", "owner", f"Organization/{task.owner_organisation_id}", task.task_id)
