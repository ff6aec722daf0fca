"""A closed referral: ReferralClosed stops everything the notifier keeps for it and tells its providers.

The gateway's ``PUT /fhir/ServiceRequest/<id>`` (status completed or revoked) stores the closed
ServiceRequest, then publishes ``haven.referral.v1.ReferralClosed``. This module consumes it (durable
``notifier-closures`` on HAVEN_REFERRALS) and, in this order:

1. marks the referral closed: KV ``haven_deliveries``, key ``closed.<referral id>``, holding the first
   ReferralClosed (a repeat keeps the first, so it plans under the same ids);
2. purges every schedule of the referral in ``HAVEN_NOTIFIER_SCHEDULES``, of every kind (missing
   reviews, placement reviews, acknowledgement deadlines);
3. removes the open missing episode (``missing.<referral id>``); placements and deadlines keep no KV
   record of their own (they read the Task);
4. raises `referral-closed` to the owners of the referral's open tasks (002 L1127: a home was never told
   that referrals it held would not proceed). The LA is not told: it closed the referral itself, or an
   operator did for it, and no source says anyone else must hear of it.

Marking comes first so that a schedule firing while the rest runs already finds the referral closed.
``ClosedReferrals.is_closed`` is what every producer asks before it raises anything about a referral:
the mark, or the stored ServiceRequest's status (stored before the event is published, so a late
ExitApproaching or fired schedule handled before this consumer caught up raises nothing either).
Every step is idempotent, so a redelivered ReferralClosed is harmless.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from haven.kit import bus, topology
from haven.kit.logs import log_event
from haven.kit.resources import ResourceStore
from haven.kit.schedules import is_subject_token
from haven.kit.timestamps import from_timestamp
from haven.referral.v1 import referral_pb2
from services.notifier.changes import decode, open_tasks
from services.notifier.domain import ProjectionError, SourceEvent, TaskRef
from services.notifier.planner import NotificationPlanner
from services.notifier.schedules import KINDS, Scheduler

if TYPE_CHECKING:
    from services.notifier.missing import MissingEpisodes

_log = logging.getLogger(__name__)

CLOSED_EVENT = "referral-closed"
CLOSURES_CONSUMER = bus.ConsumerSpec(
    stream="HAVEN_REFERRALS", durable="notifier-closures", subjects=(topology.REFERRAL_CLOSED,)
)
# ServiceRequest statuses of a referral nothing is raised about any more. The gateway closes with
# completed or revoked; entered-in-error (a referral that should never have existed) is as final.
CLOSED_REFERRAL_STATES = frozenset({"completed", "revoked", "entered-in-error"})
CLOSURE_CODES = {
    referral_pb2.REFERRAL_CLOSURE_COMPLETED: "completed",
    referral_pb2.REFERRAL_CLOSURE_REVOKED: "revoked",
}


def closed_key(referral_id: str) -> str:
    """Return the KV key (bucket ``haven_deliveries``) whose presence says the referral is closed."""
    return f"closed.{referral_id}"


class ClosedReferrals:
    """The closed mark of each referral, and the question every producer asks before raising anything."""

    def __init__(self, marks: KeyValue, store: ResourceStore) -> None:
        self._marks = marks
        self._store = store

    @classmethod
    async def open(cls, js: JetStreamContext, store: ResourceStore | None = None) -> ClosedReferrals:
        """Bind to ``haven_deliveries`` and the FHIR resource store (opened here when not given)."""
        return cls(await js.key_value(topology.BUCKET_DELIVERIES), store or await ResourceStore.open(js))

    async def mark(self, closed: referral_pb2.ReferralClosed) -> referral_pb2.ReferralClosed:
        """Mark the referral closed; return the ReferralClosed that closed it first (this or an earlier)."""
        key = closed_key(closed.referral_id)
        try:
            await self._marks.create(key, closed.SerializeToString())
            return closed
        except KeyWrongLastSequenceError:
            pass  # already closed: a redelivery, or a second close of the same referral
        entry = await self._marks.get(key)
        try:
            return referral_pb2.ReferralClosed.FromString(entry.value or b"")
        except DecodeError:
            # A damaged mark: the referral is still closed, and this event names the close well enough.
            return closed

    async def is_closed(self, referral_id: str) -> bool:
        """Return whether nothing may be raised about the referral any more.

        Both reads at once: the mark (this notifier has handled the close) and the ServiceRequest's
        status (the gateway stored it before publishing, so it is closed even before the mark exists).
        """
        if not is_subject_token(referral_id):
            return False  # never marked (a close naming such an id is refused) nor stored
        marked, stored = await asyncio.gather(
            self._marked(referral_id), self._store.read("ServiceRequest", referral_id)
        )
        return marked or (stored is not None and stored.resource.get("status") in CLOSED_REFERRAL_STATES)

    async def _marked(self, referral_id: str) -> bool:
        try:
            await self._marks.get(closed_key(referral_id))
        except KeyNotFoundError:  # also a deleted mark (KeyDeletedError is one)
            return False
        return True


class ReferralClosures:
    """Handles ReferralClosed: mark, purge the schedules, forget the missing episode, tell the providers."""

    def __init__(
        self,
        closed: ClosedReferrals,
        planner: NotificationPlanner,
        store: ResourceStore,
        scheduler: Scheduler,
        missing: MissingEpisodes,
    ) -> None:
        self._closed = closed
        self._planner = planner
        self._store = store
        self._scheduler = scheduler
        self._missing = missing

    async def handle(self, msg: Msg) -> None:
        """Handle one ReferralClosed."""
        closed = decode(referral_pb2.ReferralClosed, msg.data)
        if not closed.event_id or not closed.referral_id:
            raise bus.Unprocessable("ReferralClosed without event or referral id")
        if not is_subject_token(closed.referral_id):
            raise bus.Unprocessable("ReferralClosed whose referral id is not a subject token")
        first = await self._closed.mark(closed)
        purged = 0
        for kind in KINDS:
            purged += await self._scheduler.cancel(kind, (closed.referral_id,))
        await self._missing.forget(closed.referral_id)
        tasks = await open_tasks(self._store, closed.referral_id)
        source = closed_source(first, tasks, self._scheduler.now())
        try:
            await self._planner.plan(CLOSED_EVENT, source)
        except ProjectionError as bad:
            raise bus.Unprocessable(f"referral closure facts refused: {bad}") from None
        log_event(
            _log,
            "referral closed",
            referral_id=closed.referral_id,
            event_id=first.event_id,
            closure=CLOSURE_CODES.get(first.closure, "unspecified"),
            schedules_purged=purged,
            open_tasks=len(source.tasks),
        )


def closed_source(
    closed: referral_pb2.ReferralClosed, tasks: tuple[TaskRef, ...], now: datetime
) -> SourceEvent:
    """Return the SourceEvent of `referral-closed`: ids, the closure code and time, the open tasks.

    An event without ``occurred_at`` still closes the referral (its schedules must go whatever the
    stamp): it is dated ``now`` and sent without ``closed_at``; an unstated closure is left out.
    """
    stamped = closed.HasField("occurred_at")
    facts: dict[str, Any] = {"referral_id": closed.referral_id}
    if stamped:
        facts["closed_at"] = from_timestamp(closed.occurred_at)
    if closure := CLOSURE_CODES.get(closed.closure):
        facts["closure"] = closure
    return SourceEvent(
        event_id=closed.event_id,
        occurred_at=from_timestamp(closed.occurred_at) if stamped else now,
        referral_id=closed.referral_id,
        local_authority_gss=closed.local_authority_gss,
        referrer_organisation_id=closed.referrer_organisation_id,
        tasks=tasks,
        facts=facts,
    )
