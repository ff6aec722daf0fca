"""After routing: `task-rejected` from TaskStatusChanged, `eligibility-changed` from EligibilityAssessed.

- durable ``notifier-tasks`` on HAVEN_TASKS (``haven.task.v1.status-changed``): a task whose status
  becomes ``rejected`` raises `task-rejected` to the LA and the referrer (read from the referral's
  ServiceRequest, since the event does not name it), with the declined task, its programme and the
  coded reason. Other statuses raise nothing here. The router's re-route that follows arrives on the
  routing subject and raises `referral-routed` (and `no-capacity` or `emergency-without-bed` when due).
- durable ``notifier-eligibility`` on HAVEN_ELIGIBILITY (``haven.eligibility.v1.assessed``): an
  assessment with ``changed_programmes`` and trigger FACTS_UPDATED or SCHEDULED raises
  `eligibility-changed` to the LA and to the owners of the referral's open tasks.

The source event id is the bus event's id, so notification ids derive from it and a redelivered event
publishes nothing new (JetStream drops the repeated ``Nats-Msg-Id``). Neither is raised about a closed
referral (``services.notifier.closures``): the LA closed it, and its providers were told so.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

from google.protobuf.message import DecodeError, Message
from nats.aio.msg import Msg

from haven.canonical import CS_PROGRAMME
from haven.eligibility.v1 import eligibility_pb2
from haven.kit import bus, topology
from haven.kit.logs import log_event
from haven.kit.resources import ResourceStore
from haven.task.v1 import task_pb2
from services.notifier.domain import (
    TaskRef,
    event_types_for_assessed,
    source_event_from_assessed,
    source_event_from_task_rejected,
)
from services.notifier.planner import NotificationPlanner

if TYPE_CHECKING:
    # Only a type here: closures imports this module (open_tasks, decode) at run time.
    from services.notifier.closures import ClosedReferrals

_log = logging.getLogger(__name__)
_M = TypeVar("_M", bound=Message)

TASK_REJECTED_EVENT = "task-rejected"
CLOSED_TASK_STATES = frozenset({"completed", "cancelled", "rejected", "failed", "entered-in-error"})

TASKS_CONSUMER = bus.ConsumerSpec(
    stream="HAVEN_TASKS", durable="notifier-tasks", subjects=(topology.TASK_STATUS_CHANGED,)
)
ELIGIBILITY_CONSUMER = bus.ConsumerSpec(
    stream="HAVEN_ELIGIBILITY", durable="notifier-eligibility", subjects=(topology.ELIGIBILITY_ASSESSED,)
)


def decode(message_type: type[_M], data: bytes) -> _M:
    """Parse a bus event; bytes that are not one are refused as ``bus.Unprocessable`` (never retried)."""
    try:
        return message_type.FromString(data)
    except DecodeError:
        raise bus.Unprocessable(f"not a {message_type.DESCRIPTOR.name}") from None


def stored_task_ref(task: dict[str, Any]) -> TaskRef:
    """Return the owner, programme and service of a stored FHIR Task."""
    codings = task.get("code", {}).get("coding", [])
    owner = str(task.get("owner", {}).get("reference", "")).removeprefix("Organization/")
    service = str(task.get("focus", {}).get("reference", "")).removeprefix("HealthcareService/")
    return TaskRef(
        task_id=str(task["id"]),
        programme_id=next((c["code"] for c in codings if c.get("system") == CS_PROGRAMME), ""),
        service_id=service,
        owner_organisation_id=owner,
    )


async def open_tasks(store: ResourceStore, referral_id: str) -> tuple[TaskRef, ...]:
    """Return the referral's open tasks (their owners may be told), ordered by task id."""
    found = []
    for stored in await store.search("Task", "based-on", f"ServiceRequest/{referral_id}"):
        task = stored.resource
        if task.get("status") in CLOSED_TASK_STATES:
            continue
        # The service is left out: owners learn their tasks, not which site holds them (as before).
        found.append(replace(stored_task_ref(task), service_id=""))
    return tuple(sorted(found, key=lambda t: t.task_id))


async def referrer_of(store: ResourceStore, referral_id: str) -> str:
    """Return the referring organisation's id from the referral's ServiceRequest ("" when unknown)."""
    stored = await store.read("ServiceRequest", referral_id)
    if stored is None:
        return ""
    reference = str(stored.resource.get("requester", {}).get("reference", ""))
    return reference.removeprefix("Organization/") if reference.startswith("Organization/") else ""


class ChangeNotices:
    """Raises the notifications of a declined task and of a changed eligibility decision."""

    def __init__(
        self, planner: NotificationPlanner, store: ResourceStore, closed: ClosedReferrals | None = None
    ) -> None:
        """Raise through ``planner``; with ``closed`` None closures are not checked (tests of these alone)."""
        self._planner = planner
        self._store = store
        self._closed = closed

    async def _is_closed(self, referral_id: str) -> bool:
        return self._closed is not None and await self._closed.is_closed(referral_id)

    async def handle_task_status(self, msg: Msg) -> None:
        """Handle one TaskStatusChanged: `task-rejected` when the task was declined."""
        changed = decode(task_pb2.TaskStatusChanged, msg.data)
        if changed.status != "rejected":
            return
        if not changed.event_id or not changed.referral_id or not changed.task_id:
            raise bus.Unprocessable("rejected task without event, referral or task id")
        if await self._is_closed(changed.referral_id):
            return  # declined after the close: the LA closed the referral and needs no chasing
        referrer = await referrer_of(self._store, changed.referral_id)
        source = source_event_from_task_rejected(changed, referrer_organisation_id=referrer)
        await self._planner.plan(TASK_REJECTED_EVENT, source)
        log_event(_log, "task rejection notified", referral_id=changed.referral_id, task_id=changed.task_id)

    async def handle_assessed(self, msg: Msg) -> None:
        """Handle one EligibilityAssessed: `eligibility-changed` when a later one changed a decision."""
        assessed = decode(eligibility_pb2.EligibilityAssessed, msg.data)
        event_types = event_types_for_assessed(assessed)
        if not event_types:
            return
        if not assessed.event_id or not assessed.referral_id:
            raise bus.Unprocessable("assessment without event or referral id")
        if await self._is_closed(assessed.referral_id):
            return  # assessed just before the close: a closed referral has no programmes to change
        source = source_event_from_assessed(assessed, await open_tasks(self._store, assessed.referral_id))
        for event_type in event_types:
            await self._planner.plan(event_type, source)
        log_event(_log, "eligibility change notified", referral_id=assessed.referral_id)
