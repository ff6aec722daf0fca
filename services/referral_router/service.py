"""The referral router process: EligibilityAssessed in, Tasks and ReferralRouted out.

The matcher in ``services.referral_router.domain`` decides; this module reads capacity, takes places
with compare-and-set, stores the Tasks and publishes the outcome on the LA's subject. A redelivered
assessment republishes the outcome already decided for it instead of deciding again.
"""

from __future__ import annotations

import logging

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from haven.eligibility.v1 import eligibility_pb2
from haven.kit import bus, topology
from haven.kit.clock import Clock, system_clock
from haven.kit.health import start_grpc_server
from haven.kit.lifecycle import ServiceContext, start
from haven.kit.logs import log_event
from haven.kit.resources import ResourceStore
from haven.routing.v1 import routing_pb2
from services.referral_router.capacity import CapacityLedger
from services.referral_router.domain import (
    Directory,
    assessment_from_proto,
    load_directory,
    plan_routing,
    plan_to_proto,
)
from services.referral_router.settings import RouterSettings
from services.referral_router.tasks import store_tasks

_log = logging.getLogger(__name__)

CONSUMER = bus.ConsumerSpec(
    stream="HAVEN_ELIGIBILITY", durable="referral_router", subjects=(topology.ELIGIBILITY_ASSESSED,)
)

# A reservation lost to another router makes us plan again without that service; bounded.
_MAX_PLANNING_ROUNDS = 5


class ReferralRouter:
    """Routes one assessed referral at a time."""

    def __init__(
        self,
        js: JetStreamContext,
        store: ResourceStore,
        ledger: CapacityLedger,
        outcomes: KeyValue,
        directory: Directory,
        clock: Clock,
    ) -> None:
        self._js = js
        self._store = store
        self._ledger = ledger
        self._outcomes = outcomes
        self._directory = directory
        self._clock = clock

    async def handle(self, msg: Msg) -> None:
        """Handle one EligibilityAssessed message."""
        assessed = eligibility_pb2.EligibilityAssessed.FromString(msg.data)
        if not assessed.referral_id:
            raise bus.Unprocessable("assessment without referral id")
        sequence = int(msg.metadata.sequence.stream)
        routed = await self._decided(assessed.referral_id, sequence) or await self._route(assessed, sequence)
        await store_tasks(self._store, routed, assessed.facts.child_id, self._clock())
        await bus.publish_event(
            self._js, topology.routed_subject(routed.local_authority_gss), routed, msg_id=routed.event_id
        )
        log_event(
            _log,
            "referral routed",
            referral_id=routed.referral_id,
            event_id=routed.event_id,
            tasks=len(routed.tasks),
            escalate_to_edt=routed.fallback.escalate_to_edt,
        )

    async def _route(
        self, assessed: eligibility_pb2.EligibilityAssessed, sequence: int
    ) -> routing_pb2.ReferralRouted:
        now = self._clock()
        assessment = assessment_from_proto(assessed)
        free = await self._ledger.free_places(s.id for s in self._directory.services)
        for _ in range(_MAX_PLANNING_ROUNDS):
            plan = plan_routing(assessment, self._directory, free, {}, now.date())
            routed = plan_to_proto(plan, assessed.referral_id, sequence=sequence, occurred_at=now)
            lost = [
                task.service_id
                for task, planned in zip(routed.tasks, plan.tasks, strict=True)
                if planned.reserves_place and not await self._ledger.reserve(task.service_id, task.task_id)
            ]
            if not lost:
                await self._outcomes.put(
                    _outcome_key(assessed.referral_id, sequence), routed.SerializeToString()
                )
                return routed
            free.update({service_id: 0 for service_id in lost})
        raise bus.RetryLater("capacity kept changing while routing", delay=0.5)

    async def _decided(self, referral_id: str, sequence: int) -> routing_pb2.ReferralRouted | None:
        try:
            entry = await self._outcomes.get(_outcome_key(referral_id, sequence))
        except KeyNotFoundError:
            return None
        return routing_pb2.ReferralRouted.FromString(entry.value) if entry.value else None


def _outcome_key(referral_id: str, sequence: int) -> str:
    return f"{referral_id}.{sequence}"


async def run(ctx: ServiceContext, settings: RouterSettings, clock: Clock = system_clock) -> None:
    """Consume assessments and route them until the service is told to stop."""
    directory = load_directory()
    ledger = CapacityLedger(await ctx.js.key_value(topology.BUCKET_CAPACITY))
    await ledger.seed(directory)
    router = ReferralRouter(
        ctx.js,
        await ResourceStore.open(ctx.js),
        ledger,
        await ctx.js.key_value(topology.BUCKET_ROUTING),
        directory,
        clock,
    )
    server = await start_grpc_server(
        settings.router_grpc_port, ctx.readiness, ["haven.routing.v1.Router"], host=settings.router_grpc_host
    )
    ctx.readiness.set(True)
    try:
        await bus.consume(ctx.js, CONSUMER, router.handle, ctx.stop)
    finally:
        await server.stop(grace=2)


def main() -> None:
    """Entry point: read settings and run until SIGTERM."""
    settings = RouterSettings()  # type: ignore[call-arg]  # required values come from the environment
    start("referral_router", settings, lambda ctx: run(ctx, settings))
