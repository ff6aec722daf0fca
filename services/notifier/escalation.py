"""`task-not-acknowledged`: a routed Task still unanswered at its programme's deadline goes to the LA.

- durable ``notifier-acknowledgements`` on HAVEN_ROUTING (``haven.routing.v1.routed.*``): for each
  routed Task still ``requested``, the `task-not-acknowledged` policy's ``task-routed`` entries whose
  ``when`` holds (the Task's programme, and the referral's urgency read from its ServiceRequest) are
  published as JetStream message schedules counted from the routing time, kind ``ACKNOWLEDGEMENTS``
  in ``services.notifier.schedules``. The deadline per programme is policy data (24 hours for the
  ICTG, 2 hours for an emergency placement in specialist accommodation).
- durable ``notifier-acknowledged`` on HAVEN_TASKS (``haven.task.v1.status-changed``): a Task that
  leaves ``requested`` (accepted, rejected, cancelled...) has its schedules purged.
- durable ``notifier-acknowledge-due`` on ``haven.notification.v1.acknowledge-due`` (fired by the
  server): the stored Task is read again, and only a Task still ``requested`` raises
  `task-not-acknowledged` to the LA (and its EDT for an emergency).

The raised event's id derives from the referral, the Task, the entry and the routing time, so a
redelivered routing event or fired schedule publishes nothing twice. A closed referral
(``services.notifier.closures``) is not escalated: the close purges its deadlines, a routing handled
after it leaves none behind, and a deadline that fires after it raises nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from nats.aio.msg import Msg

from haven.kit import bus, topology
from haven.kit.logs import log_event
from haven.kit.resources import ResourceStore
from haven.kit.schedules import is_subject_token
from haven.kit.timestamps import from_timestamp
from haven.routing.v1 import routing_pb2
from haven.task.v1 import task_pb2
from services.notifier.changes import decode
from services.notifier.closures import ClosedReferrals
from services.notifier.domain import ProjectionError, SourceEvent
from services.notifier.domain.policy import Anchor
from services.notifier.planner import NotificationPlanner
from services.notifier.schedules import (
    ACKNOWLEDGEMENTS,
    JsonBody,
    Scheduler,
    due_entries,
    parse_instant,
)

_log = logging.getLogger(__name__)

ESCALATION_EVENT = "task-not-acknowledged"
REQUESTED = "requested"
# ServiceRequest.priority as the gateway reads it: only "stat" asks for a placement now (002 L973).
URGENCY_BY_PRIORITY = {"routine": "routine", "urgent": "urgent", "asap": "urgent", "stat": "emergency"}

ROUTED_CONSUMER = bus.ConsumerSpec(
    stream="HAVEN_ROUTING",
    durable="notifier-acknowledgements",
    subjects=(f"{topology.ROUTING_ROUTED_PREFIX}.*",),
)
ANSWERED_CONSUMER = bus.ConsumerSpec(
    stream="HAVEN_TASKS", durable="notifier-acknowledged", subjects=(topology.TASK_STATUS_CHANGED,)
)
DUE_CONSUMER = ACKNOWLEDGEMENTS.consumer


@dataclass(frozen=True)
class ScheduledAcknowledgement(JsonBody):
    """What a fired acknowledgement deadline carries: ids, codes and times only."""

    event_id: str
    referral_id: str
    task_id: str
    programme_id: str
    service_id: str
    schedule_id: str
    due_at: str
    local_authority_gss: str
    urgency: str


def _may_escalate(programme_id: str, anchor: datetime) -> bool:
    """Return whether some deadline applies to this programme at any urgency."""
    return any(
        due_entries(Anchor.TASK_ROUTED, anchor, {"programme_id": programme_id, "urgency": urgency})
        for urgency in (*URGENCY_BY_PRIORITY.values(), "")
    )


class Escalations:
    """Sets an acknowledgement deadline per routed Task and escalates the ones still unanswered."""

    def __init__(
        self,
        planner: NotificationPlanner,
        store: ResourceStore,
        scheduler: Scheduler,
        closed: ClosedReferrals,
    ) -> None:
        self._planner = planner
        self._store = store
        self._scheduler = scheduler
        self._closed = closed

    async def urgency_of(self, referral_id: str) -> str:
        """Return the referral's urgency code from its ServiceRequest ("" when not stated)."""
        stored = await self._store.read("ServiceRequest", referral_id)
        if stored is None:
            # The gateway stores every referral before it is routed, so this is not a race; entries
            # that need the urgency (an emergency) then do not apply, the others still do.
            log_event(_log, "routed referral has no ServiceRequest", logging.WARNING, referral_id=referral_id)
            return ""
        return URGENCY_BY_PRIORITY.get(str(stored.resource.get("priority", "")), "")

    async def handle_routed(self, msg: Msg) -> None:
        """Handle one ReferralRouted: schedule the deadline of each Task waiting for its provider."""
        routed = decode(routing_pb2.ReferralRouted, msg.data)
        waiting = [t for t in routed.tasks if t.status in ("", REQUESTED)]
        if not waiting:
            return
        if not is_subject_token(routed.referral_id) or not all(is_subject_token(t.task_id) for t in waiting):
            raise bus.Unprocessable("routing whose referral or task id is not a subject token")
        anchor = from_timestamp(routed.occurred_at)
        waiting = [t for t in waiting if _may_escalate(t.programme_id, anchor)]
        if not waiting:
            return  # no deadline for these programmes: no need to read the referral
        urgency = await self.urgency_of(routed.referral_id)
        count = 0
        for task in waiting:
            facts = {"programme_id": task.programme_id, "urgency": urgency}
            for planned in due_entries(Anchor.TASK_ROUTED, anchor, facts):
                due = ScheduledAcknowledgement(
                    event_id=planned.event_id(f"{routed.referral_id}/{task.task_id}"),
                    referral_id=routed.referral_id,
                    task_id=task.task_id,
                    programme_id=task.programme_id,
                    service_id=task.service_id,
                    schedule_id=planned.schedule_id,
                    due_at=planned.due_at.isoformat(),
                    local_authority_gss=routed.local_authority_gss,
                    urgency=urgency,
                )
                await self._scheduler.schedule(
                    ACKNOWLEDGEMENTS,
                    (routed.referral_id, task.task_id, planned.schedule_id),
                    due,
                    planned.raise_at,
                    due.event_id,
                )
                count += 1
        if count and await self._closed.is_closed(routed.referral_id):
            # Routed as the referral was closed: whichever of this and the close ends last purges.
            await self._scheduler.cancel(ACKNOWLEDGEMENTS, (routed.referral_id,))
            log_event(_log, "deadlines of a closed referral not set", referral_id=routed.referral_id)
            return
        if count:
            log_event(_log, "acknowledgement deadlines set", referral_id=routed.referral_id, count=count)

    async def handle_task_status(self, msg: Msg) -> None:
        """Handle one TaskStatusChanged: a Task that was answered needs no deadline any more."""
        changed = decode(task_pb2.TaskStatusChanged, msg.data)
        if changed.status == REQUESTED:
            return
        if not is_subject_token(changed.referral_id) or not is_subject_token(changed.task_id):
            raise bus.Unprocessable("task change whose referral or task id is not a subject token")
        await self._scheduler.cancel(ACKNOWLEDGEMENTS, (changed.referral_id, changed.task_id))

    async def handle_due(self, msg: Msg) -> None:
        """Raise `task-not-acknowledged` for a fired deadline whose Task is still requested."""
        due = ScheduledAcknowledgement.from_bytes(msg.data)
        if not is_subject_token(due.referral_id) or not is_subject_token(due.task_id):
            raise bus.Unprocessable("deadline whose referral or task id is not a subject token")
        stored = await self._store.read("Task", due.task_id)
        if stored is None or stored.resource.get("status") != REQUESTED:
            return  # answered (or closed) in time: nothing to escalate
        if await self._closed.is_closed(due.referral_id):
            return  # fired as the referral was closed: nobody is chased for it any more
        facts = {
            "referral_id": due.referral_id,
            "local_authority_gss": due.local_authority_gss,
            "urgency": due.urgency or None,
            "programme_id": due.programme_id or None,
            "unacknowledged_task_ids": [due.task_id],
            "service_ids": [due.service_id] if due.service_id else None,
            "schedule_id": due.schedule_id,
            "acknowledge_due_at": parse_instant(due.due_at),
        }
        source = SourceEvent(
            event_id=due.event_id,
            occurred_at=self._scheduler.now(),
            referral_id=due.referral_id,
            local_authority_gss=due.local_authority_gss,
            facts={k: v for k, v in facts.items() if v is not None},
        )
        try:
            await self._planner.plan(ESCALATION_EVENT, source)
        except ProjectionError as bad:
            raise bus.Unprocessable(f"deadline facts refused: {bad}") from None
        log_event(
            _log,
            "unacknowledged task escalated",
            referral_id=due.referral_id,
            task_id=due.task_id,
            schedule_id=due.schedule_id,
        )
