"""The referral router process: assessments, task changes and expired reservations in; routings out.

The matcher in ``services.referral_router.domain`` decides; this module reads capacity, takes and
gives back places with compare-and-set, stores and closes Tasks and publishes each outcome on the
LA's subject. Four durable consumers, each shared by every router process:

- ``referral_router`` (EligibilityAssessed): a first routing; or, for a re-assessment whose decisions
  changed, closes the tasks it ends and routes what is left unserved (``plan_after_eligibility_change``);
  or, for an assessment naming another local authority than the last routing, cancels the tasks whose
  service does not cover the new area and routes them there (``plan_after_move``).
- ``referral_router_tasks`` (TaskStatusChanged): accepted keeps the place (no expiry); rejected gives
  it back and routes to the next candidate (``plan_reroute_after_rejection``, trigger TASK_REJECTED);
  completed, cancelled or failed gives it back.
- ``referral_router_expiry`` (the task id, fired by a JetStream message schedule): a place not accepted
  in time is given back, the task cancelled and the child routed on (trigger RESERVATION_EXPIRED).
- ``referral_router_closures`` (ReferralClosed): marks the referral closed, cancels its open tasks,
  gives their places back and takes the child off every waiting list. Nothing routes a closed
  referral again; a routing that raced the closure finds the mark once its Tasks are stored and
  cancels them itself (see ``_publish``).

A redelivered message republishes the outcome already decided for it instead of deciding again.
Assessments are handled in lanes (``lanes.py``): several referrals at once, one referral's messages
in order. What makes the writes of a routing safe to batch: docs/routing.md, "Order of writes".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind

from haven.eligibility.v1 import eligibility_pb2
from haven.kit import bus, telemetry, topology
from haven.kit.batch import Publish, send_all
from haven.kit.clock import Clock, system_clock
from haven.kit.health import start_grpc_server
from haven.kit.ids import derived_id
from haven.kit.lifecycle import ServiceContext, start
from haven.kit.logs import log_event
from haven.kit.resources import ResourceStore, StoredResource
from haven.kit.timestamps import to_timestamp
from haven.referral.v1 import referral_pb2
from haven.routing.v1 import routing_pb2
from haven.task.v1 import task_pb2
from services.referral_router.capacity import CapacityLedger
from services.referral_router.domain import (
    Assessment,
    Continuation,
    Directory,
    EligibilityChangePlan,
    ExistingTask,
    Outcome,
    RoutingPlan,
    assessment_from_proto,
    load_directory,
    plan_after_eligibility_change,
    plan_after_move,
    plan_reroute_after_rejection,
    plan_routing,
    plan_to_proto,
)
from services.referral_router.domain.rerouting import ACTIVE, NOT_STARTED
from services.referral_router.expiry import ReservationExpiry
from services.referral_router.lanes import LaneConsumer
from services.referral_router.live_directory import LiveDirectory, seed_directory
from services.referral_router.records import RoutingRecords
from services.referral_router.settings import RouterSettings
from services.referral_router.tasks import (
    REASON_EXIT,
    REASON_MOVED_LOCAL_AUTHORITY,
    REASON_NO_LONGER_ELIGIBLE,
    REASON_REFERRAL_CLOSED,
    REASON_RESERVATION_EXPIRED,
    REASON_ROUTE_CHANGED,
    close_task,
    existing_task,
    flag_for_review,
    referral_of,
    rescope_task,
    status_reason_code,
    store_tasks,
    tasks_of_referral,
)

_log = logging.getLogger(__name__)
_tracer = telemetry.tracer(__name__)

CONSUMER = bus.ConsumerSpec(
    stream="HAVEN_ELIGIBILITY", durable="referral_router", subjects=(topology.ELIGIBILITY_ASSESSED,)
)
TASK_CONSUMER = bus.ConsumerSpec(
    stream="HAVEN_TASKS", durable="referral_router_tasks", subjects=(topology.TASK_STATUS_CHANGED,)
)
EXPIRY_CONSUMER = bus.ConsumerSpec(
    stream="HAVEN_ROUTER_SCHEDULES",
    durable="referral_router_expiry",
    subjects=(topology.RESERVATION_EXPIRED,),
)
CLOSURE_CONSUMER = bus.ConsumerSpec(
    stream="HAVEN_REFERRALS", durable="referral_router_closures", subjects=(topology.REFERRAL_CLOSED,)
)

# A reservation lost to another router makes us plan again without that service; bounded.
_MAX_PLANNING_ROUNDS = 5
# Statuses in which the provider has taken the child on: the place is kept and no longer expires.
_TAKEN_ON = frozenset({"accepted", "in-progress", "on-hold"})
# Statuses that end a task: its place is given back.
_ENDED = frozenset({"completed", "cancelled", "failed", "entered-in-error"})
# Re-assessments that may change the tasks already created.
_REASSESSMENTS = frozenset({eligibility_pb2.TRIGGER_FACTS_UPDATED, eligibility_pb2.TRIGGER_SCHEDULED})
# A task whose status moves while a closure cancels it is read again; bounded.
_CANCEL_ATTEMPTS = 10

# (free places, waiting ahead of the child) per service -> the plan.
PlanFor = Callable[[Mapping[str, int], Mapping[str, int]], RoutingPlan]


def _parse_assessed(data: bytes) -> eligibility_pb2.EligibilityAssessed:
    try:
        return eligibility_pb2.EligibilityAssessed.FromString(data)
    except DecodeError:
        raise bus.Unprocessable("not an EligibilityAssessed message") from None


def assessed_referral(msg: Msg) -> str:
    """Return the referral id of an EligibilityAssessed message ("" when it cannot be read): its lane."""
    try:
        return eligibility_pb2.EligibilityAssessed.FromString(msg.data).referral_id
    except DecodeError:
        return ""  # any lane: the handler terminates it


class ReferralRouter:
    """Routes referrals; a referral's messages are handled one at a time (see ``lanes.py``)."""

    def __init__(
        self,
        js: JetStreamContext,
        store: ResourceStore,
        ledger: CapacityLedger,
        records: RoutingRecords,
        assessments: KeyValue,
        directory: Callable[[], Directory],
        expiry: ReservationExpiry,
        clock: Clock,
    ) -> None:
        self._js = js
        self._store = store
        self._ledger = ledger
        self._records = records
        self._assessments = assessments
        self._directory = directory
        self._expiry = expiry
        self._clock = clock

    # --- EligibilityAssessed -------------------------------------------------------------------

    async def handle(self, msg: Msg) -> None:
        """Handle one EligibilityAssessed message."""
        assessed = _parse_assessed(msg.data)
        if not assessed.referral_id:
            raise bus.Unprocessable("assessment without referral id")
        trigger = f"assessed-{msg.metadata.sequence.stream}"
        referral_id, area = assessed.referral_id, assessed.facts.local_authority_gss
        if await self._records.claim_first_sequence(self._js, referral_id, area):
            # Never routed before (the usual case): nothing decided, no tasks to look at.
            routed = await self._route_first(assessed, trigger, sequence=1)
        else:
            closed, decided, routed_for = await asyncio.gather(
                self._records.is_closed(referral_id),
                self._records.decided(referral_id, trigger),
                self._records.routed_area(referral_id),
            )
            if closed:
                log_event(_log, "assessment of a closed referral ignored", referral_id=referral_id)
                return
            if decided is not None:
                routed = decided  # a redelivery: the same decision again
            else:
                moved = bool(routed_for) and bool(area) and routed_for != area
                previous = (
                    await tasks_of_referral(self._store, referral_id)
                    if moved or assessed.trigger in _REASSESSMENTS
                    else []
                )
                if moved:
                    routed = await self._route_after_move(assessed, previous, trigger)
                elif previous and not assessed.changed_programmes:
                    log_event(_log, "re-assessment changed nothing", referral_id=referral_id)
                    return
                elif previous:
                    routed = await self._route_after_change(assessed, previous, trigger)
                else:
                    routed = await self._route_first(assessed, trigger)
        await self._publish(routed, assessed.facts.child_id)

    async def _route_first(
        self, assessed: eligibility_pb2.EligibilityAssessed, trigger: str, sequence: int | None = None
    ) -> routing_pb2.ReferralRouted:
        assessment = assessment_from_proto(assessed)
        today = self._clock().date()
        return await self._decide(
            assessed.referral_id,
            trigger,
            routing_pb2.ROUTING_TRIGGER_ASSESSED,
            lambda free, waiting: plan_routing(assessment, self._directory(), free, waiting, today),
            sequence=sequence,
            area=assessed.facts.local_authority_gss,
        )

    async def _route_after_change(
        self, assessed: eligibility_pb2.EligibilityAssessed, stored: list[StoredResource], trigger: str
    ) -> routing_pb2.ReferralRouted:
        """Close the tasks the new decisions end, flag those a person must look at, route the rest."""
        now = self._clock()
        assessment = assessment_from_proto(assessed)
        previous = [existing_task(t.resource) for t in stored]
        by_id = {t.task_id: t for t in previous}
        change = plan_after_eligibility_change(
            previous,
            assessment,
            self._directory(),
            self._ledger.known_free(),
            self._ledger.waiting_ahead(assessed.referral_id),
            now.date(),
        )
        await self._apply_change(change, assessment, by_id, now)
        # Plan again with the live capacity (the closures may have freed places).
        return await self._decide(
            assessed.referral_id,
            trigger,
            routing_pb2.ROUTING_TRIGGER_ASSESSED,
            lambda free, waiting: (
                plan_after_eligibility_change(
                    previous, assessment, self._directory(), free, waiting, now.date()
                ).routing
            ),
            area=assessed.facts.local_authority_gss,
        )

    async def _route_after_move(
        self, assessed: eligibility_pb2.EligibilityAssessed, stored: list[StoredResource], trigger: str
    ) -> routing_pb2.ReferralRouted:
        """Another LA is responsible: cancel the tasks the new area's services do not cover, route there.

        Tasks whose service covers both areas stay, moved into the new area's scope if the gateway's
        re-scope missed them (stored from a routing decided before the move). The outcome, published
        on the new LA's subject, records the new area with it; until then a redelivery sees the move
        again and finishes it (a task cancelled already is not cancelled twice).
        """
        now = self._clock()
        area = assessed.facts.local_authority_gss
        assessment = assessment_from_proto(assessed)
        previous = [existing_task(t.resource) for t in stored]
        change = plan_after_move(
            previous,
            assessment,
            self._directory(),
            self._ledger.known_free(),
            self._ledger.waiting_ahead(assessed.referral_id),
            now.date(),
        )
        await self._apply_change(change, assessment, {t.task_id: t for t in previous}, now)
        closed = {c.task_id for c in change.closures}
        await asyncio.gather(
            *(
                rescope_task(self._store, t.task_id, area, now)
                for t in previous
                if t.status in ACTIVE and t.task_id not in closed
            )
        )
        log_event(
            _log,
            "referral moved to another local authority",
            referral_id=assessed.referral_id,
            tasks_cancelled=sum(1 for c in change.closures if c.moved),
        )
        return await self._decide(
            assessed.referral_id,
            trigger,
            routing_pb2.ROUTING_TRIGGER_ASSESSED,
            lambda free, waiting: (
                plan_after_move(previous, assessment, self._directory(), free, waiting, now.date()).routing
            ),
            area=area,
        )

    async def _apply_change(
        self,
        change: EligibilityChangePlan,
        assessment: Assessment,
        by_id: Mapping[str, ExistingTask],
        now: datetime,
    ) -> None:
        """Close the tasks the change ends (coded reason, place back, TaskStatusChanged); flag reviews."""
        for closure in change.closures:
            code = (
                REASON_MOVED_LOCAL_AUTHORITY
                if closure.moved
                else _closure_code(assessment, by_id[closure.task_id])
            )
            closed = await close_task(self._store, closure.task_id, closure.status, code, closure.reason, now)
            await self._give_back(closure.task_id)
            if closed is not None:
                await self._publish_status(closed[0], closed[1], code)
        await asyncio.gather(
            *(flag_for_review(self._store, r.task_id, r.reason, now) for r in change.reviews)
        )

    # --- TaskStatusChanged ---------------------------------------------------------------------

    async def handle_task_status(self, msg: Msg) -> None:
        """Handle one TaskStatusChanged message: keep, give back, or give back and route on."""
        try:
            changed = task_pb2.TaskStatusChanged.FromString(msg.data)
        except DecodeError:
            raise bus.Unprocessable("not a TaskStatusChanged message") from None
        if not changed.task_id or not changed.referral_id:
            raise bus.Unprocessable("task status change without task or referral id")
        if changed.status in _TAKEN_ON:
            await self._ledger.mark_accepted(changed.task_id)
            await self._expiry.cancel(changed.task_id)
        elif changed.status in _ENDED:
            await self._give_back(changed.task_id)
        elif changed.status == "rejected":
            await self._give_back(changed.task_id)
            if await self._records.is_closed(changed.referral_id):
                log_event(_log, "rejection for a closed referral", task_id=changed.task_id)
                return  # nothing to route the child to any more
            trigger = f"task-{msg.metadata.sequence.stream}"
            if changed.service_id:
                declined = _rejected_task(changed)  # the event says which service declined
            else:
                stored = await self._store.read("Task", changed.task_id)
                if stored is None:
                    raise bus.Unprocessable("rejected task is neither in the event nor stored")
                declined = existing_task(stored.resource)
            assessed = await self._assessment(changed.referral_id)
            routed = await self._route_on(assessed, changed.task_id, trigger, declined)
            if routed is not None:
                await self._publish(routed, assessed.facts.child_id)
        log_event(
            _log, "task status handled", task_id=changed.task_id, status=changed.status or "unspecified"
        )

    # --- Expired reservations ------------------------------------------------------------------

    async def handle_expiry(self, msg: Msg) -> None:
        """Handle one fired reservation expiry: release an unaccepted place and route the child on."""
        task_id = msg.data.decode()
        trigger = f"expiry-{msg.metadata.sequence.stream}"
        stored = await self._store.read("Task", task_id)
        if stored is None:
            # The routing that reserved it never stored its task: nobody can accept the place.
            await self._ledger.release(task_id)
            return
        referral_id = referral_of(stored.resource)
        referral_closed, routed = await asyncio.gather(
            self._records.is_closed(referral_id), self._records.decided(referral_id, trigger)
        )
        if referral_closed:
            # The closure cancels the task; its place need not wait for that, and nobody is routed on.
            await self._ledger.release(task_id)
            return
        if routed is None:
            held = await self._ledger.reservation(task_id)
            if held is None or held.accepted:
                return  # given back already, or the provider accepted in time
            now = self._clock()
            closed = await close_task(
                self._store,
                task_id,
                "cancelled",
                REASON_RESERVATION_EXPIRED,
                "the provider did not accept the reservation in time",
                now,
                only_from=NOT_STARTED,
            )
            if closed is None:
                # The owner changed the task first (accepted it, or closed it): their word stands.
                current = await self._store.read("Task", task_id)
                if current is not None and current.resource.get("status") in _TAKEN_ON:
                    await self._ledger.mark_accepted(task_id)
                else:
                    await self._give_back(task_id)
                return
            await asyncio.gather(
                self._give_back(task_id),
                self._publish_status(closed[0], closed[1], REASON_RESERVATION_EXPIRED),
            )
            assessed = await self._assessment(referral_id)
            routed = await self._route_on(
                assessed,
                task_id,
                trigger,
                existing_task(stored.resource),
                routing_trigger=routing_pb2.ROUTING_TRIGGER_RESERVATION_EXPIRED,
            )
            if routed is None:
                return
            await self._publish(routed, assessed.facts.child_id)
            return
        await self._publish(routed, await self._child_of(referral_id))  # a redelivery: decided before

    # --- ReferralClosed ------------------------------------------------------------------------

    async def handle_closed(self, msg: Msg) -> None:
        """Handle one ReferralClosed: mark the referral closed, then cancel and release what it holds.

        The mark comes first, so an assessment, rejection or expiry handled meanwhile routes nothing;
        every step after it is idempotent, so a redelivery (or a crash part-way) finishes the work.
        """
        try:
            closed = referral_pb2.ReferralClosed.FromString(msg.data)
        except DecodeError:
            raise bus.Unprocessable("not a ReferralClosed message") from None
        if not closed.referral_id:
            raise bus.Unprocessable("ReferralClosed without referral id")
        await self._records.mark_closed(self._js, closed)
        cancelled = await self._close_referral(closed.referral_id)
        log_event(_log, "referral closed", referral_id=closed.referral_id, tasks_cancelled=cancelled)

    async def _close_referral(self, referral_id: str) -> int:
        """Cancel every open task of a closed referral, give its places back, empty its waiting lists.

        Returns how many tasks this call cancelled.
        """
        now = self._clock()
        stored = await tasks_of_referral(self._store, referral_id)
        cancelled = await asyncio.gather(
            *(self._cancel_for_closure(str(t.resource["id"]), now) for t in stored)
        )
        await self._ledger.leave_every_list(referral_id)
        return sum(cancelled)

    async def _cancel_for_closure(self, task_id: str, now: datetime) -> bool:
        """Cancel one task of a closed referral (``referral-closed``) and give its place back.

        The status it is cancelled from is noted first, so that a redelivery finding it cancelled
        already announces it again with the same event id (dropped as a duplicate if it went out).
        """
        cancelled = False
        for _ in range(_CANCEL_ATTEMPTS):
            current = await self._store.read("Task", task_id)
            if current is None:
                break
            status = str(current.resource.get("status", ""))
            if status in ACTIVE:
                await self._records.note_cancelled_from(task_id, status)
                closed = await close_task(
                    self._store,
                    task_id,
                    "cancelled",
                    REASON_REFERRAL_CLOSED,
                    "the referral was closed",
                    now,
                    only_from=frozenset({status}),
                )
                if closed is None:
                    continue  # its owner moved it meanwhile: look again
                await self._publish_status(closed[0], closed[1], REASON_REFERRAL_CLOSED)
                cancelled = True
            elif status == "cancelled" and status_reason_code(current.resource) == REASON_REFERRAL_CLOSED:
                previous = await self._records.cancelled_from(task_id)
                await self._publish_status(current, previous, REASON_REFERRAL_CLOSED)
            break
        else:
            raise RuntimeError(f"Task {task_id} kept changing while the referral was being closed")
        await self._give_back(task_id)  # every task: a place left by a crash part-way is released too
        return cancelled

    # --- Shared --------------------------------------------------------------------------------

    async def _route_on(
        self,
        assessed: eligibility_pb2.EligibilityAssessed,
        task_id: str,
        trigger: str,
        declined: ExistingTask,
        routing_trigger: routing_pb2.RoutingTrigger.ValueType = routing_pb2.ROUTING_TRIGGER_TASK_REJECTED,
    ) -> routing_pb2.ReferralRouted | None:
        """Route the declined task's category to the next candidate; None when already done."""
        referral_id = assessed.referral_id
        decided = await self._records.decided(referral_id, trigger)
        if decided is not None:
            return decided
        if not await self._records.claim_reroute(task_id, trigger):
            return None  # a rejection and an expiry of the same task: the first one moved the child on
        assessment = assessment_from_proto(assessed)
        others = [t for t in await tasks_of_referral(self._store, referral_id) if t.resource["id"] != task_id]
        moved_on = await asyncio.gather(*(self._records.was_rerouted(str(t.resource["id"])) for t in others))
        earlier = [
            existing_task(t.resource).service_id for t, moved in zip(others, moved_on, strict=True) if moved
        ]
        directory = self._directory()
        if directory.get(declined.service_id) is None:
            raise bus.Unprocessable("declined task names a service not in the directory")
        today = self._clock().date()
        return await self._decide(
            referral_id,
            trigger,
            routing_trigger,
            lambda free, waiting: plan_reroute_after_rejection(
                assessment,
                self._directory(),
                free,
                waiting,
                today,
                rejected=declined,
                previously_rejected_services=earlier,
            ),
        )

    async def _decide(
        self,
        referral_id: str,
        trigger: str,
        routing_trigger: routing_pb2.RoutingTrigger.ValueType,
        plan_for: PlanFor,
        *,
        sequence: int | None = None,
        area: str | None = None,
    ) -> routing_pb2.ReferralRouted:
        """Plan, take the places named, follow the waiting lists, and record the decision.

        With ``area`` (a routing after an assessment), the decision records that the referral is now
        routed for that LA; a first routing (``sequence`` 1) recorded it with its sequence already.

        A place lost to another routing makes it plan again without that service. Capacity and waiting
        lists come from this router's view (no KV read); places are taken by compare-and-set, grouped
        with the process's other routings (``CapacityLedger.take_place``). Then, in this order: the
        reservation records with their expiry schedules, then the decision. Nothing is visible outside
        the router until the caller stores the Tasks and publishes. A crash after a place is taken and
        before its record leaves the place taken (safe: never given twice); after the records and
        before the decision, the expiry of each record gives its place back (its Task never exists).
        """
        now = self._clock()
        if sequence is None:
            sequence = await self._records.next_sequence(referral_id)
        free = self._ledger.known_free()
        waiting = self._ledger.waiting_ahead(referral_id)
        for _ in range(_MAX_PLANNING_ROUNDS):
            plan = plan_for(free, waiting)
            routed = plan_to_proto(
                plan, referral_id, sequence=sequence, occurred_at=now, trigger=routing_trigger
            )
            wanted = [
                (task.service_id, task.task_id)
                for task, planned in zip(routed.tasks, plan.tasks, strict=True)
                if planned.reserves_place
            ]
            if len(wanted) == 1:  # the usual case: no task to start for one round trip
                got = [await self._ledger.take_place(wanted[0][0])]
            else:
                got = await asyncio.gather(*(self._ledger.take_place(s) for s, _ in wanted))
            taken = [place for place, ok in zip(wanted, got, strict=True) if ok]
            lost = [service_id for (service_id, _), ok in zip(wanted, got, strict=True) if not ok]
            if not lost:
                break
            # This round's tasks will not exist: give their places back and plan without the lost ones.
            await asyncio.gather(*(self._ledger.give_places(service_id) for service_id, _ in taken))
            free.update({service_id: 0 for service_id in lost})
        else:
            raise bus.RetryLater("capacity kept changing while routing", delay=0.5)
        if taken:
            # First, so that any failure from here on leaves records whose expiry gives places back.
            await self._hold(taken, now)
        if await self._follow_waiting_lists(referral_id, plan, now):
            # Positions in line as the lists now stand; the tasks do not depend on them.
            positioned = plan_for(free, self._ledger.waiting_ahead(referral_id))
            if positioned.tasks == plan.tasks:
                routed = plan_to_proto(
                    positioned, referral_id, sequence=sequence, occurred_at=now, trigger=routing_trigger
                )
        records = [self._records.outcome_record(routed, trigger)]
        if area is not None and sequence != 1:
            records.append(self._records.area_record(referral_id, area))
        await send_all(self._js, records)
        return routed

    async def _hold(self, taken: list[tuple[str, str]], now: datetime) -> None:
        """Record which task holds each place just taken, and when it expires, in one batch.

        A task that holds a place already (its record exists) keeps that one: the place just taken for
        it is given back.
        """
        records = [self._ledger.reservation_record(task_id, service_id) for service_id, task_id in taken]
        schedules = [self._expiry.schedule_message(task_id, now) for _, task_id in taken]
        revisions = (await send_all(self._js, [*records, *schedules]))[: len(records)]
        for (service_id, _), revision in zip(taken, revisions, strict=True):
            if revision is None:
                await self._ledger.give_places(service_id)

    async def _follow_waiting_lists(self, referral_id: str, plan: RoutingPlan, now: datetime) -> bool:
        """Put the child on the lists the plan names and take it off the others of the categories routed.

        A child given a place (here or elsewhere) in a category leaves every list of that category.
        Returns whether the child joined a list (its position must then be read again).
        """
        routed_services = {s.id for s in self._directory().services if s.category in plan.categories}
        current = self._ledger.waiting_at(referral_id)
        joins = set(plan.waiting_at) - current
        leaves = (current & routed_services) - set(plan.waiting_at)
        if joins or leaves:
            await asyncio.gather(
                *(self._ledger.join_waiting(s, referral_id, now) for s in sorted(joins)),
                *(self._ledger.leave_waiting(s, referral_id) for s in sorted(leaves)),
            )
        return bool(joins)

    async def _give_back(self, task_id: str) -> None:
        await asyncio.gather(self._ledger.release(task_id), self._expiry.cancel(task_id))

    async def _assessment(self, referral_id: str) -> eligibility_pb2.EligibilityAssessed:
        try:
            entry = await self._assessments.get(referral_id)
        except KeyNotFoundError:
            raise bus.Unprocessable("no assessment stored for the referral") from None
        return eligibility_pb2.EligibilityAssessed.FromString(entry.value or b"")

    async def _child_of(self, referral_id: str) -> str:
        return (await self._assessment(referral_id)).facts.child_id

    async def _publish(self, routed: routing_pb2.ReferralRouted, child_id: str) -> None:
        """Store the decision's Tasks, announce it, and undo it if the referral was closed meanwhile.

        A closure marks the referral, then lists its tasks; a routing stores its tasks, then reads the
        mark. Whichever comes second sees the other, so a routing that raced a closure has its tasks
        cancelled by one or the other. The read goes out with the announcement: no wait on the way.
        """
        await store_tasks(self._store, routed, child_id, self._clock(), self._js)
        if await self._announce(routed):
            await self._close_referral(routed.referral_id)
        log_event(
            _log,
            "referral routed",
            referral_id=routed.referral_id,
            event_id=routed.event_id,
            trigger=routing_pb2.RoutingTrigger.Name(routed.trigger),
            tasks=len(routed.tasks),
            escalate_to_edt=routed.fallback.escalate_to_edt,
        )

    async def _announce(self, routed: routing_pb2.ReferralRouted) -> bool:
        """Publish ``ReferralRouted`` and read the closed mark in one batch; return whether it is closed.

        The producer span and headers are those ``bus.publish_event`` gives an event; the span is not
        made current (nothing runs inside it but the send), its context goes out in the headers.
        """
        subject = topology.routed_subject(routed.local_authority_gss)
        span = _tracer.start_span(
            f"publish {subject}",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "nats",
                "messaging.destination.name": subject,
                "messaging.message.id": routed.event_id,
            },
        )
        headers = {"Nats-Msg-Id": routed.event_id}
        propagate.inject(headers, context=trace.set_span_in_context(span))
        try:
            answers = await send_all(
                self._js,
                [
                    Publish(subject, routed.SerializeToString(), headers),
                    self._records.closed_mark(routed.referral_id),
                ],
            )
        except Exception as error:
            span.record_exception(error)
            span.set_status(trace.Status(trace.StatusCode.ERROR, type(error).__name__))
            raise
        finally:
            span.end()
        return answers[1] is not None

    async def _publish_status(self, task: StoredResource, previous_status: str, reason_code: str) -> None:
        """Tell everyone that the router itself closed a task (changed_by is empty: the system did)."""
        resource = task.resource
        found = existing_task(resource)
        event = task_pb2.TaskStatusChanged(
            event_id=derived_id("task-status", found.task_id, str(task.version)),
            referral_id=referral_of(resource),
            task_id=found.task_id,
            programme_id=found.programme_id,
            service_id=found.service_id,
            owner_organisation_id=str(resource.get("owner", {}).get("reference", "")).removeprefix(
                "Organization/"
            ),
            local_authority_gss=task.scope.local_authority_gss,
            previous_status=previous_status,
            status=found.status,
            status_reason_code=reason_code,
        )
        event.occurred_at.CopyFrom(to_timestamp(self._clock()))
        await bus.publish_event(self._js, topology.TASK_STATUS_CHANGED, event, msg_id=event.event_id)


def _rejected_task(changed: task_pb2.TaskStatusChanged) -> ExistingTask:
    return ExistingTask(
        task_id=changed.task_id,
        programme_id=changed.programme_id,
        service_id=changed.service_id,
        route="",
        status=changed.status,
    )


def _closure_code(assessment: Assessment, task: ExistingTask) -> str:
    decision = assessment.decision_for(task.programme_id)
    if decision is not None and decision.continuation is Continuation.EXIT:
        return REASON_EXIT
    if decision is not None and decision.outcome is Outcome.ELIGIBLE:
        return REASON_ROUTE_CHANGED
    return REASON_NO_LONGER_ELIGIBLE


async def _until_loaded(work: asyncio.Task[None], loaded: asyncio.Event) -> None:
    """Wait until ``loaded`` is set; raise the error of ``work`` if it fails first."""
    waiting = asyncio.create_task(loaded.wait())
    await asyncio.wait({work, waiting}, return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    if work.done():
        work.result()


async def run(ctx: ServiceContext, settings: RouterSettings, clock: Clock = system_clock) -> None:
    """Load and watch the directory and the capacity, then consume until the service is told to stop.

    Ready only once the directory is loaded, the free counts follow it and this router's view of the
    free counts and waiting lists holds everything in KV: a ready router routes on the real state.
    """
    store = await ResourceStore.open(ctx.js)
    ledger = CapacityLedger(await ctx.js.key_value(topology.BUCKET_CAPACITY))
    await seed_directory(store, load_directory(), clock())
    live = LiveDirectory(ctx.js, ledger)
    directory_loaded, capacity_loaded = asyncio.Event(), asyncio.Event()
    watch = asyncio.create_task(live.run(directory_loaded, ctx.stop))
    await _until_loaded(watch, directory_loaded)  # the free counts are seeded from it
    capacity = asyncio.create_task(ledger.follow(ctx.js, capacity_loaded, ctx.stop))
    await _until_loaded(capacity, capacity_loaded)
    router = ReferralRouter(
        ctx.js,
        store,
        ledger,
        RoutingRecords(await ctx.js.key_value(topology.BUCKET_ROUTING)),
        await ctx.js.key_value(topology.BUCKET_ASSESSMENTS),
        lambda: live.current,
        ReservationExpiry(ctx.js, timedelta(seconds=settings.reservation_timeout_seconds)),
        clock,
    )
    server = await start_grpc_server(
        settings.router_grpc_port, ctx.readiness, ["haven.routing.v1.Router"], host=settings.router_grpc_host
    )
    ctx.readiness.set(True)
    try:
        # Lanes: a process overlaps the KV round trips of several referrals, one referral's messages
        # in order; compare-and-set keeps them from giving a place twice, as across processes.
        assessments = LaneConsumer(
            CONSUMER,
            router.handle,
            assessed_referral,
            lanes=settings.router_concurrency,
            batch=2 * settings.router_concurrency,
        )
        await asyncio.gather(
            assessments.run(ctx.js, ctx.stop),
            bus.consume(ctx.js, TASK_CONSUMER, router.handle_task_status, ctx.stop),
            bus.consume(ctx.js, EXPIRY_CONSUMER, router.handle_expiry, ctx.stop),
            bus.consume(ctx.js, CLOSURE_CONSUMER, router.handle_closed, ctx.stop),
            watch,
            capacity,
        )
    finally:
        await server.stop(grace=2)


def main() -> None:
    """Entry point: read settings and run until SIGTERM."""
    settings = RouterSettings()  # type: ignore[call-arg]  # required values come from the environment
    start("referral_router", settings, lambda ctx: run(ctx, settings))
