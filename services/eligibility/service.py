"""The eligibility service process: referrals, new facts and due re-assessments in, EligibilityAssessed out.

It also answers the gRPC ``Evaluate`` what-if question, keeps every open referral's next
re-assessments scheduled in JetStream (see ``services.eligibility.scheduler`` and the README), raises
``ExitApproaching`` when a pre-exit re-assessment still projects the same exit, and stops all of it
for a referral once ``ReferralClosed`` arrives. Handlers translate; the rules engine in
``services.eligibility.domain`` decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta

import grpc
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from haven.eligibility.v1 import eligibility_pb2, eligibility_pb2_grpc
from haven.kit import bus, topology
from haven.kit.clock import Clock, system_clock
from haven.kit.health import start_grpc_server
from haven.kit.ids import derived_id
from haven.kit.lifecycle import ServiceContext, start
from haven.kit.logs import log_event
from haven.kit.timestamps import to_timestamp
from haven.referral.v1 import referral_pb2
from services.eligibility.convert import (
    assessment_to_proto,
    changed_programmes,
    evaluate_response,
    facts_from_proto,
)
from services.eligibility.domain import DEFAULT_ALERT_DAYS, Assessment, Rulebook, assess, load_rulebook
from services.eligibility.domain.exits import ExitKind, alert_still_holds, exit_cause
from services.eligibility.domain.schedule import PRE_EXIT_PREFIX, planned_reassessments
from services.eligibility.scheduler import (
    SCHEDULE_STREAM,
    ReassessmentScheduler,
    UnschedulableReferralError,
    seconds_until,
)
from services.eligibility.settings import EligibilitySettings

_log = logging.getLogger(__name__)

CONSUMER = bus.ConsumerSpec(
    stream="HAVEN_REFERRALS",
    durable="eligibility",
    subjects=(topology.REFERRAL_RECEIVED, topology.REFERRAL_FACTS_UPDATED, topology.REFERRAL_CLOSED),
)
REASSESSMENT_CONSUMER = bus.ConsumerSpec(
    stream=SCHEDULE_STREAM, durable="eligibility-reassessment", subjects=(topology.REASSESSMENT_DUE,)
)
# Suffix of the KV key (in the assessments bucket, next to the referral's latest assessment) that
# marks a closed referral; referral ids never hold a dot, so it cannot collide with one.
_CLOSED_SUFFIX = ".closed"


def closed_key(referral_id: str) -> str:
    """Return the KV key whose presence in ``haven_assessments`` says the referral is closed."""
    return f"{referral_id}{_CLOSED_SUFFIX}"


class EvaluateServicer(eligibility_pb2_grpc.EligibilityServiceServicer):
    """gRPC ``Evaluate``: facts and a date in, decisions out, nothing stored or published."""

    def __init__(self, rulebook: Rulebook, clock: Clock) -> None:
        self._rulebook = rulebook
        self._clock = clock

    async def Evaluate(
        self, request: eligibility_pb2.EvaluateRequest, context: grpc.aio.ServicerContext
    ) -> eligibility_pb2.EvaluateResponse:
        """Decide every programme for the request's facts on its date (today when empty)."""
        try:
            on = date.fromisoformat(request.on_date) if request.on_date else self._clock().date()
        except ValueError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "on_date must be an ISO date (YYYY-MM-DD)")
        return evaluate_response(assess(facts_from_proto(request.facts), on, self._rulebook))


class ReferralAssessor:
    """Assesses referrals, publishes decisions that changed, keeps each referral's re-assessments scheduled.

    The latest assessment of each referral (with the facts it read) is kept in KV; it is the baseline
    for "what changed" and the facts a scheduled re-assessment reads. Writes are compare-and-set on
    the entry's revision, so two processes never overwrite each other's newer assessment; within a
    process one lock orders the two consumers (each assessment takes about a millisecond).
    """

    def __init__(
        self,
        js: JetStreamContext,
        assessments: KeyValue,
        rulebook: Rulebook,
        clock: Clock,
        scheduler: ReassessmentScheduler | None = None,
        alert_days: Iterable[int] = DEFAULT_ALERT_DAYS,
    ) -> None:
        self._js = js
        self._assessments = assessments
        self._rulebook = rulebook
        self._clock = clock
        self._scheduler = scheduler
        self._alert_days = tuple(alert_days)
        self._lock = asyncio.Lock()

    async def handle(self, msg: Msg) -> None:
        """Handle ReferralReceived, ReferralFactsUpdated or ReferralClosed."""
        if msg.subject == topology.REFERRAL_CLOSED:
            await self.close(referral_pb2.ReferralClosed.FromString(msg.data))
            return
        if msg.subject == topology.REFERRAL_RECEIVED:
            received = referral_pb2.ReferralReceived.FromString(msg.data)
            source_event_id, referral_id, facts = received.event_id, received.referral_id, received.facts
            trigger = eligibility_pb2.TRIGGER_REFERRAL_RECEIVED
        elif msg.subject == topology.REFERRAL_FACTS_UPDATED:
            updated = referral_pb2.ReferralFactsUpdated.FromString(msg.data)
            source_event_id, referral_id, facts = updated.event_id, updated.referral_id, updated.facts
            trigger = eligibility_pb2.TRIGGER_FACTS_UPDATED
        else:
            raise bus.Unprocessable(f"unexpected subject {msg.subject}")
        if not referral_id or not source_event_id:
            raise bus.Unprocessable("event without referral id or event id")
        await self.assess_and_publish(referral_id, source_event_id, facts, trigger)

    async def handle_due(self, msg: Msg) -> None:
        """Handle ReassessmentDue: re-assess the referral's latest facts on the due date."""
        due = eligibility_pb2.ReassessmentDue.FromString(msg.data)
        if not due.referral_id or not due.event_id:
            raise bus.Unprocessable("re-assessment without referral id or event id")
        try:
            due_on = date.fromisoformat(due.due_on)
        except ValueError:
            raise bus.Unprocessable("re-assessment without a valid due date") from None
        now = self._clock()
        if now.date() < due_on:
            # The server's clock is ahead of ours: wait for our own midnight rather than assess too early.
            midnight = datetime.combine(due_on, time(0), UTC)
            raise bus.RetryLater(
                "re-assessment fired before its date", delay=min(300.0, seconds_until(midnight, now))
            )
        async with self._lock:
            # Both reads at once: the closed mark costs no extra round trip on the way.
            closed, (previous, revision) = await asyncio.gather(
                self._is_closed(due.referral_id), self._latest(due.referral_id)
            )
            if closed:
                # A schedule that fired as the referral was closed: nothing is assessed any more.
                log_event(_log, "re-assessment for a closed referral ignored", referral_id=due.referral_id)
                return
            if previous is None:
                log_event(_log, "re-assessment for an unknown referral ignored", referral_id=due.referral_id)
                return
            assessment, _ = await self._assess(
                due.referral_id,
                due.event_id,
                previous.facts,
                eligibility_pb2.TRIGGER_SCHEDULED,
                previous,
                revision,
            )
            await self._alert_exit(due, due_on, previous.facts, assessment)

    async def _alert_exit(
        self,
        due: eligibility_pb2.ReassessmentDue,
        due_on: date,
        facts: referral_pb2.ReferralFacts,
        assessment: Assessment,
    ) -> None:
        """Raise ExitApproaching when a pre-exit re-assessment still projects the exit it was planned for."""
        if not due.reason.startswith(PRE_EXIT_PREFIX) or not due.programme_id:
            return
        try:
            days = int(due.reason.removeprefix(PRE_EXIT_PREFIX))
        except ValueError:
            log_event(_log, "pre-exit re-assessment without a day count", referral_id=due.referral_id)
            return
        exit_on = due_on + timedelta(days=days)
        # Stale (the exit moved, or the child left) or too late to warn (the exit itself is announced).
        if exit_on <= assessment.on or not alert_still_holds(assessment, due.programme_id, due_on, days):
            log_event(
                _log,
                "pre-exit alert no longer stands",
                referral_id=due.referral_id,
                programme_id=due.programme_id,
                days_before_exit=days,
            )
            return
        cause = exit_cause(facts_from_proto(facts), due.programme_id, exit_on, self._rulebook)
        event = eligibility_pb2.ExitApproaching(
            # From the schedule's own id: a redelivered ReassessmentDue raises the same event, dropped.
            event_id=derived_id("exit-approaching", due.event_id),
            occurred_at=to_timestamp(self._clock()),
            referral_id=due.referral_id,
            programme_id=due.programme_id,
            exit_date=exit_on.isoformat(),
            days_before_exit=days,
            exit_kind=str(cause.kind if cause else ExitKind.OTHER),
            exit_reason=cause.reason if cause else "",
            facts=facts,
        )
        await bus.publish_event(self._js, topology.ELIGIBILITY_EXIT_APPROACHING, event, msg_id=event.event_id)
        log_event(
            _log,
            "exit approaching",
            referral_id=due.referral_id,
            event_id=event.event_id,
            programme_id=due.programme_id,
            days_before_exit=days,
            exit_kind=event.exit_kind,
        )

    async def close(self, closed: referral_pb2.ReferralClosed) -> None:
        """Mark a referral closed and cancel its schedules: later facts and fired schedules are ignored."""
        if not closed.referral_id or not closed.event_id:
            raise bus.Unprocessable("ReferralClosed without referral id or event id")
        async with self._lock:
            # Mark first, cancel second: an assessment racing in another process re-checks the mark
            # after it schedules (see `_assess`), so whichever runs last removes the schedules.
            await self._assessments.put(closed_key(closed.referral_id), closed.SerializeToString())
            await self._cancel(closed.referral_id)
        log_event(_log, "referral closed", referral_id=closed.referral_id, event_id=closed.event_id)

    async def assess_and_publish(
        self,
        referral_id: str,
        source_event_id: str,
        facts: referral_pb2.ReferralFacts,
        trigger: eligibility_pb2.Trigger.ValueType,
    ) -> eligibility_pb2.EligibilityAssessed | None:
        """Assess new facts on today's date; return the event published, or None when nothing changed."""
        async with self._lock:
            closed, (previous, revision) = await asyncio.gather(
                self._is_closed(referral_id), self._latest(referral_id)
            )
            if closed:
                log_event(_log, "facts for a closed referral ignored", referral_id=referral_id)
                return None
            if previous is not None and trigger == eligibility_pb2.TRIGGER_REFERRAL_RECEIVED:
                # Already assessed (a redelivery, or new facts overtook it): the stored facts are as new.
                return None
            _, event = await self._assess(referral_id, source_event_id, facts, trigger, previous, revision)
            return event

    async def _assess(
        self,
        referral_id: str,
        source_event_id: str,
        facts: referral_pb2.ReferralFacts,
        trigger: eligibility_pb2.Trigger.ValueType,
        previous: eligibility_pb2.EligibilityAssessed | None,
        revision: int | None,
    ) -> tuple[Assessment, eligibility_pb2.EligibilityAssessed | None]:
        """Assess, publish when something changed, schedule and store; return the assessment and event."""
        now = self._clock()
        assessment = assess(facts_from_proto(facts), now.date(), self._rulebook)
        decisions, age_basis = assessment_to_proto(assessment)
        # A retry against a newer baseline (another process got there first) must not be de-duplicated
        # away, so the baseline's revision is part of the id.
        id_parts = (source_event_id,) if revision is None else (source_event_id, str(revision))
        event = eligibility_pb2.EligibilityAssessed(
            event_id=derived_id("eligibility-assessed", *id_parts),
            occurred_at=to_timestamp(now),
            referral_id=referral_id,
            assessed_on=assessment.on.isoformat(),
            facts=facts,
            decisions=decisions,
            next_change_date=assessment.next_change.isoformat() if assessment.next_change else "",
            trigger=trigger,
            changed_programmes=changed_programmes(previous.decisions if previous else [], decisions),
            age_basis=age_basis,
        )
        publish = previous is None or bool(event.changed_programmes) or _moved_area(previous, event)
        # Order matters for a crash part-way: publish, schedule, then the KV write that marks it done.
        if publish:
            await bus.publish_event(self._js, topology.ELIGIBILITY_ASSESSED, event, msg_id=event.event_id)
        await self._schedule(referral_id, assessment)
        # Closed while this was assessed (by another process)? Read after scheduling, alongside the
        # store, so whichever of the two finishes last removes the schedules.
        closed, _ = await asyncio.gather(
            self._is_closed(referral_id), self._store(referral_id, event, revision)
        )
        if closed:
            await self._cancel(referral_id)
        log_event(
            _log,
            "eligibility assessed",
            referral_id=referral_id,
            event_id=event.event_id,
            trigger=eligibility_pb2.Trigger.Name(trigger),
            published=publish,
            changed=list(event.changed_programmes),
        )
        return assessment, event if publish else None

    async def _is_closed(self, referral_id: str) -> bool:
        try:
            await self._assessments.get(closed_key(referral_id))
        except KeyNotFoundError:
            return False
        return True

    async def _cancel(self, referral_id: str) -> None:
        if self._scheduler is None:
            return
        with contextlib.suppress(UnschedulableReferralError):  # such a referral never had a schedule
            await self._scheduler.cancel(referral_id)

    async def _schedule(self, referral_id: str, assessment: Assessment) -> None:
        if self._scheduler is None:
            return
        try:
            await self._scheduler.replace(referral_id, planned_reassessments(assessment, self._alert_days))
        except UnschedulableReferralError:
            log_event(_log, "referral cannot be scheduled", logging.WARNING, referral_id=referral_id)

    async def _store(
        self, referral_id: str, event: eligibility_pb2.EligibilityAssessed, revision: int | None
    ) -> None:
        try:
            if revision is None:
                await self._assessments.create(referral_id, event.SerializeToString())
            else:
                await self._assessments.update(referral_id, event.SerializeToString(), last=revision)
        except KeyWrongLastSequenceError:
            raise bus.RetryLater("the referral was re-assessed meanwhile", delay=0.2) from None

    async def _latest(
        self, referral_id: str
    ) -> tuple[eligibility_pb2.EligibilityAssessed | None, int | None]:
        try:
            entry = await self._assessments.get(referral_id)
        except KeyNotFoundError:
            return None, None
        if not entry.value:
            return None, entry.revision
        return eligibility_pb2.EligibilityAssessed.FromString(entry.value), entry.revision


def _moved_area(
    previous: eligibility_pb2.EligibilityAssessed, current: eligibility_pb2.EligibilityAssessed
) -> bool:
    # The router addresses the responsible local authority: a move must reach it even when no
    # programme's decision changes.
    return previous.facts.local_authority_gss != current.facts.local_authority_gss


async def run(ctx: ServiceContext, settings: EligibilitySettings, clock: Clock = system_clock) -> None:
    """Serve gRPC, consume referrals and due re-assessments until the service is told to stop."""
    rulebook = load_rulebook()
    servicer = EvaluateServicer(rulebook, clock)
    server = await start_grpc_server(
        settings.eligibility_grpc_port,
        ctx.readiness,
        ["haven.eligibility.v1.EligibilityService"],
        add_servicers=lambda s: eligibility_pb2_grpc.add_EligibilityServiceServicer_to_server(servicer, s),
        host=settings.eligibility_grpc_host,
    )
    scheduler = ReassessmentScheduler(
        ctx.js,
        clock,
        fire_after_midnight=timedelta(seconds=settings.eligibility_reassess_after_midnight_seconds),
    )
    assessor = ReferralAssessor(
        ctx.js,
        await ctx.js.key_value(topology.BUCKET_ASSESSMENTS),
        rulebook,
        clock,
        scheduler,
        settings.eligibility_pre_exit_alert_days,
    )
    ctx.readiness.set(True)
    try:
        async with asyncio.TaskGroup() as consumers:
            consumers.create_task(bus.consume(ctx.js, CONSUMER, assessor.handle, ctx.stop))
            consumers.create_task(bus.consume(ctx.js, REASSESSMENT_CONSUMER, assessor.handle_due, ctx.stop))
    finally:
        await server.stop(grace=2)


def main() -> None:
    """Entry point: read settings and run until SIGTERM."""
    settings = EligibilitySettings()  # type: ignore[call-arg]  # required values come from the environment
    start("eligibility", settings, lambda ctx: run(ctx, settings))


__all__ = ["CONSUMER", "REASSESSMENT_CONSUMER", "EvaluateServicer", "ReferralAssessor", "main", "run"]
