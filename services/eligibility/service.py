"""The eligibility service process: referrals and new facts in, EligibilityAssessed out.

It also answers the gRPC ``Evaluate`` what-if question.
Handlers translate; the rules engine in ``services.eligibility.domain`` decides.
"""

from __future__ import annotations

import logging
from datetime import date

import grpc
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
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
from services.eligibility.domain import Rulebook, assess, load_rulebook
from services.eligibility.settings import EligibilitySettings

_log = logging.getLogger(__name__)

CONSUMER = bus.ConsumerSpec(
    stream="HAVEN_REFERRALS",
    durable="eligibility",
    subjects=(topology.REFERRAL_RECEIVED, topology.REFERRAL_FACTS_UPDATED),
)


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
    """Assesses a referral's facts and publishes the decisions, idempotently per source event."""

    def __init__(self, js: JetStreamContext, assessments: KeyValue, rulebook: Rulebook, clock: Clock) -> None:
        self._js = js
        self._assessments = assessments
        self._rulebook = rulebook
        self._clock = clock

    async def handle(self, msg: Msg) -> None:
        """Handle ReferralReceived or ReferralFactsUpdated."""
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

    async def assess_and_publish(
        self,
        referral_id: str,
        source_event_id: str,
        facts: referral_pb2.ReferralFacts,
        trigger: eligibility_pb2.Trigger.ValueType,
    ) -> eligibility_pb2.EligibilityAssessed:
        """Assess on today's date, publish EligibilityAssessed, and keep it as the latest assessment."""
        now = self._clock()
        assessment = assess(facts_from_proto(facts), now.date(), self._rulebook)
        decisions, age_basis = assessment_to_proto(assessment)
        previous = await self._latest(referral_id)
        event = eligibility_pb2.EligibilityAssessed(
            event_id=derived_id("eligibility-assessed", source_event_id),
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
        await bus.publish_event(self._js, topology.ELIGIBILITY_ASSESSED, event, msg_id=event.event_id)
        await self._assessments.put(referral_id, event.SerializeToString())
        log_event(
            _log,
            "eligibility assessed",
            referral_id=referral_id,
            event_id=event.event_id,
            changed=list(event.changed_programmes),
        )
        return event

    async def _latest(self, referral_id: str) -> eligibility_pb2.EligibilityAssessed | None:
        try:
            entry = await self._assessments.get(referral_id)
        except KeyNotFoundError:
            return None
        return eligibility_pb2.EligibilityAssessed.FromString(entry.value) if entry.value else None


async def run(ctx: ServiceContext, settings: EligibilitySettings, clock: Clock = system_clock) -> None:
    """Serve gRPC and consume referrals until the service is told to stop."""
    rulebook = load_rulebook()
    servicer = EvaluateServicer(rulebook, clock)
    server = await start_grpc_server(
        settings.eligibility_grpc_port,
        ctx.readiness,
        ["haven.eligibility.v1.EligibilityService"],
        add_servicers=lambda s: eligibility_pb2_grpc.add_EligibilityServiceServicer_to_server(servicer, s),
        host=settings.eligibility_grpc_host,
    )
    assessor = ReferralAssessor(ctx.js, await ctx.js.key_value(topology.BUCKET_ASSESSMENTS), rulebook, clock)
    ctx.readiness.set(True)
    try:
        await bus.consume(ctx.js, CONSUMER, assessor.handle, ctx.stop)
    finally:
        await server.stop(grace=2)


def main() -> None:
    """Entry point: read settings and run until SIGTERM."""
    settings = EligibilitySettings()  # type: ignore[call-arg]  # required values come from the environment
    start("eligibility", settings, lambda ctx: run(ctx, settings))


__all__ = ["EvaluateServicer", "ReferralAssessor", "main", "run"]
