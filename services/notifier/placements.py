"""Accommodation reviews: a placement starts when its Task is accepted and ends when the Task closes.

Durable ``notifier-placements`` on HAVEN_TASKS (``haven.task.v1.status-changed``):

- status ``accepted``: the programme is read from the stored Task's code (the event's copy if the Task
  is not stored). When review-due's ``placement-start`` entries apply to that programme (their ``when``,
  e.g. specialist accommodation), each is published as a JetStream message schedule counted from the
  acceptance time (72 hours, 1 and 2 weeks, 1, 3 and 6 months, and the 12-month stay limit four weeks
  ahead), kind ``PLACEMENT_REVIEWS`` in ``services.notifier.schedules``;
- status ``completed``, ``cancelled``, ``failed`` or ``entered-in-error``: that Task's schedules are
  purged.

The server fires each onto ``haven.notification.v1.placement-review-due``; the consumer
``notifier-placement-reviews`` reads the Task again and raises `review-due` (to the LA and the home
that holds the Task) only while the placement is open. Ids derive from the referral, the Task, the
entry and the acceptance time, so a redelivered acceptance schedules and raises nothing twice.

A closed referral (``services.notifier.closures``) has no placement reviews: the close purges them,
an acceptance handled after it leaves none behind, and a review that fires after it raises nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from nats.aio.msg import Msg

from haven.kit import bus, topology
from haven.kit.logs import log_event
from haven.kit.resources import ResourceStore
from haven.kit.schedules import is_subject_token
from haven.kit.timestamps import from_timestamp
from haven.task.v1 import task_pb2
from services.notifier.changes import CLOSED_TASK_STATES, decode, referrer_of, stored_task_ref
from services.notifier.closures import ClosedReferrals
from services.notifier.domain import ProjectionError, SourceEvent
from services.notifier.domain.policy import Anchor
from services.notifier.planner import NotificationPlanner
from services.notifier.schedules import (
    PLACEMENT_REVIEWS,
    JsonBody,
    Scheduler,
    due_entries,
    entry_for,
    parse_instant,
)

_log = logging.getLogger(__name__)

REVIEW_EVENT = "review-due"
# A placement ends with its Task; "rejected" never follows an acceptance (the router re-routes instead).
PLACEMENT_ENDED = frozenset({"completed", "cancelled", "failed", "entered-in-error"})
PLACEMENTS_CONSUMER = bus.ConsumerSpec(
    stream="HAVEN_TASKS", durable="notifier-placements", subjects=(topology.TASK_STATUS_CHANGED,)
)
PLACEMENT_REVIEWS_CONSUMER = PLACEMENT_REVIEWS.consumer


@dataclass(frozen=True)
class ScheduledPlacementReview(JsonBody):
    """What a fired placement review carries: ids, codes and times only."""

    event_id: str
    referral_id: str
    task_id: str
    programme_id: str
    schedule_id: str
    anchor_at: str
    local_authority_gss: str
    referrer_organisation_id: str


def _checked(changed: task_pb2.TaskStatusChanged) -> None:
    if not is_subject_token(changed.referral_id) or not is_subject_token(changed.task_id):
        raise bus.Unprocessable("task change whose referral or task id is not a subject token")


class Placements:
    """Keeps each accepted placement's review schedules and raises the reviews that fall due."""

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

    async def handle_task_status(self, msg: Msg) -> None:
        """Handle one TaskStatusChanged: schedule on acceptance, cancel when the Task closes."""
        changed = decode(task_pb2.TaskStatusChanged, msg.data)
        if changed.status == "accepted":
            _checked(changed)
            await self._start(changed)
        elif changed.status in PLACEMENT_ENDED:
            _checked(changed)
            purged = await self._scheduler.cancel(PLACEMENT_REVIEWS, (changed.referral_id, changed.task_id))
            if purged:
                log_event(_log, "placement reviews cancelled", referral_id=changed.referral_id, count=purged)

    async def _start(self, changed: task_pb2.TaskStatusChanged) -> None:
        stored = await self._store.read("Task", changed.task_id)
        programme_id = stored_task_ref(stored.resource).programme_id if stored else changed.programme_id
        anchor = from_timestamp(changed.occurred_at)
        entries = due_entries(Anchor.PLACEMENT_START, anchor, {"programme_id": programme_id})
        if not entries:
            return  # not a placement (e.g. a guardian or a therapy group): nothing to review
        referrer = await referrer_of(self._store, changed.referral_id)
        for planned in entries:
            review = ScheduledPlacementReview(
                event_id=planned.event_id(f"{changed.referral_id}/{changed.task_id}"),
                referral_id=changed.referral_id,
                task_id=changed.task_id,
                programme_id=programme_id,
                schedule_id=planned.schedule_id,
                anchor_at=anchor.isoformat(),
                local_authority_gss=changed.local_authority_gss,
                referrer_organisation_id=referrer,
            )
            await self._scheduler.schedule(
                PLACEMENT_REVIEWS,
                (changed.referral_id, changed.task_id, planned.schedule_id),
                review,
                planned.raise_at,
                review.event_id,
            )
        if await self._closed.is_closed(changed.referral_id):
            # Accepted as the referral was closed: whichever of this and the close ends last purges.
            await self._scheduler.cancel(PLACEMENT_REVIEWS, (changed.referral_id,))
            log_event(_log, "placement of a closed referral not reviewed", referral_id=changed.referral_id)
            return
        log_event(_log, "placement reviews scheduled", referral_id=changed.referral_id, count=len(entries))

    async def handle_review(self, msg: Msg) -> None:
        """Raise `review-due` for a fired placement review whose Task is still open."""
        review = ScheduledPlacementReview.from_bytes(msg.data)
        if not is_subject_token(review.referral_id) or not is_subject_token(review.task_id):
            raise bus.Unprocessable("placement review whose referral or task id is not a subject token")
        stored = await self._store.read("Task", review.task_id)
        if stored is None or stored.resource.get("status") in CLOSED_TASK_STATES:
            return  # the placement ended (its schedules are purged then; this one fired first)
        if await self._closed.is_closed(review.referral_id):
            return  # fired as the referral was closed: its reviews are over
        match = entry_for(Anchor.PLACEMENT_START, parse_instant(review.anchor_at), review.schedule_id)
        source = SourceEvent(
            event_id=review.event_id,
            occurred_at=self._scheduler.now(),
            referral_id=review.referral_id,
            local_authority_gss=review.local_authority_gss,
            referrer_organisation_id=review.referrer_organisation_id,
            # Only the home holding the placement runs these reviews with the social worker.
            tasks=(stored_task_ref(stored.resource),),
            facts={
                **match.facts(),
                "referral_id": review.referral_id,
                "local_authority_gss": review.local_authority_gss,
                "placement_task_id": review.task_id,
                "programme_id": review.programme_id,
            },
        )
        try:
            await self._planner.plan(REVIEW_EVENT, source)
        except ProjectionError as bad:
            raise bus.Unprocessable(f"placement review facts refused: {bad}") from None
        log_event(_log, "review due raised", referral_id=review.referral_id, schedule_id=review.schedule_id)
