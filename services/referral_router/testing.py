"""The router in-process over a real NATS connection, and assessed referrals to feed it.

For integration tests and the benchmark: everything but the process boundary is production code (the
same ``run``, consumers, buckets and streams); the clock and the settings are injected.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.errors import NotFoundError

from haven.eligibility.v1 import eligibility_pb2
from haven.kit import bus, topology
from haven.kit.clock import Clock, system_clock
from haven.kit.ids import new_id
from haven.kit.lifecycle import Readiness, ServiceContext
from haven.kit.nats_server import free_port
from haven.referral.v1 import referral_pb2
from haven.routing.v1 import routing_pb2
from haven.system import grpc_serving
from haven.task.v1 import task_pb2
from services.referral_router.service import run
from services.referral_router.settings import RouterSettings

_ELIGIBLE = eligibility_pb2.OUTCOME_ELIGIBLE


def assessed(
    gss: str,
    eligible: Iterable[str],
    *,
    referral_id: str = "",
    asked: referral_pb2.ServiceAsked.ValueType = referral_pb2.SERVICE_ASKED_ANY,
    urgency: referral_pb2.Urgency.ValueType = referral_pb2.URGENCY_ROUTINE,
    referrer_kind: referral_pb2.ReferrerKind.ValueType = referral_pb2.REFERRER_KIND_LOCAL_AUTHORITY,
    referrer: str = "demo-la-manchester",
    decisions: Iterable[eligibility_pb2.ProgrammeDecision] = (),
    trigger: eligibility_pb2.Trigger.ValueType = eligibility_pb2.TRIGGER_REFERRAL_RECEIVED,
    changed: Iterable[str] = (),
) -> eligibility_pb2.EligibilityAssessed:
    """Return an assessment: the programmes in ``eligible`` eligible, plus any explicit decisions."""
    facts = referral_pb2.ReferralFacts(
        child_id=new_id(),
        local_authority_gss=gss,
        urgency=urgency,
        service_asked=asked,
        referrer=referral_pb2.Referrer(organisation_id=referrer, kind=referrer_kind),
        nrm_status=referral_pb2.NRM_STATUS_AWAITING_RG,
        parental_responsibility_in_uk=referral_pb2.ANSWER_NO,
    )
    event = eligibility_pb2.EligibilityAssessed(
        event_id=new_id(),
        referral_id=referral_id or new_id(),
        facts=facts,
        trigger=trigger,
        changed_programmes=list(changed),
    )
    event.decisions.extend(
        eligibility_pb2.ProgrammeDecision(programme_id=p, outcome=_ELIGIBLE) for p in eligible
    )
    event.decisions.extend(decisions)
    return event


async def publish_assessed(nc: NatsClient, event: eligibility_pb2.EligibilityAssessed) -> None:
    """Store the assessment as the eligibility service does, then publish it."""
    js = nc.jetstream()
    await (await js.key_value(topology.BUCKET_ASSESSMENTS)).put(event.referral_id, event.SerializeToString())
    await bus.publish_event(js, topology.ELIGIBILITY_ASSESSED, event, msg_id=event.event_id)


async def publish_status(
    nc: NatsClient,
    routed: routing_pb2.ReferralRouted,
    task: routing_pb2.RoutedTask,
    status: str,
    reason: str = "",
) -> None:
    """Publish a TaskStatusChanged for a routed task, as the gateway does after a provider's PUT."""
    event = task_pb2.TaskStatusChanged(
        event_id=new_id(),
        referral_id=routed.referral_id,
        task_id=task.task_id,
        programme_id=task.programme_id,
        service_id=task.service_id,
        owner_organisation_id=task.owner_organisation_id,
        local_authority_gss=routed.local_authority_gss,
        previous_status="requested",
        status=status,
        status_reason_code=reason,
        changed_by_organisation_id=task.owner_organisation_id,
    )
    await bus.publish_event(nc.jetstream(), topology.TASK_STATUS_CHANGED, event, msg_id=event.event_id)


async def publish_closed(
    nc: NatsClient,
    referral_id: str,
    gss: str,
    closure: referral_pb2.ReferralClosure.ValueType = referral_pb2.REFERRAL_CLOSURE_REVOKED,
    *,
    msg_id: str = "",
) -> referral_pb2.ReferralClosed:
    """Publish a ReferralClosed as the gateway does after ``PUT ServiceRequest`` (completed or revoked).

    ``msg_id`` other than the event id makes JetStream store a second copy: a redelivery, in effect.
    """
    event = referral_pb2.ReferralClosed(
        event_id=f"closed-{referral_id}",
        referral_id=referral_id,
        closure=closure,
        local_authority_gss=gss,
        closed_by_organisation_id="demo-la",
    )
    await bus.publish_event(nc.jetstream(), topology.REFERRAL_CLOSED, event, msg_id=msg_id or event.event_id)
    return event


async def consumers_idle(nc: NatsClient, *specs: bus.ConsumerSpec, timeout: float = 10.0) -> None:
    """Wait until every durable consumer has been given and has acknowledged every message it holds."""
    js = nc.jetstream()
    async with asyncio.timeout(timeout):
        while True:
            try:
                infos = [await js.consumer_info(spec.stream, spec.durable) for spec in specs]
            except NotFoundError:
                infos = []  # the router creates its consumers as it starts them
            if infos and all(i.num_pending == 0 and i.num_ack_pending == 0 for i in infos):
                return
            await asyncio.sleep(0.05)


@dataclass
class RoutedLog:
    """Every ReferralRouted seen on the routing subjects, in arrival order."""

    events: list[routing_pb2.ReferralRouted] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, event: routing_pb2.ReferralRouted) -> None:
        """Record one event."""
        self.events.append(event)
        self._changed.set()

    def of(self, referral_id: str) -> list[routing_pb2.ReferralRouted]:
        """Return the events of one referral, in sequence order."""
        return sorted((e for e in self.events if e.referral_id == referral_id), key=lambda e: e.sequence)

    async def wait_for(
        self, referral_id: str, count: int = 1, timeout: float = 10.0
    ) -> list[routing_pb2.ReferralRouted]:
        """Wait until ``count`` distinct events of the referral arrived; return them in sequence order."""
        async with asyncio.timeout(timeout):
            while len({e.event_id for e in self.of(referral_id)}) < count:
                self._changed.clear()
                await self._changed.wait()
        unique = {e.event_id: e for e in self.of(referral_id)}
        return sorted(unique.values(), key=lambda e: e.sequence)


@contextlib.asynccontextmanager
async def routed_log(nc: NatsClient) -> AsyncIterator[RoutedLog]:
    """Collect the ReferralRouted events published while the block runs."""
    log = RoutedLog()

    async def on_message(msg: Msg) -> None:
        log.add(routing_pb2.ReferralRouted.FromString(msg.data))

    subscription: Subscription = await nc.subscribe(f"{topology.ROUTING_ROUTED_PREFIX}.>", cb=on_message)
    try:
        yield log
    finally:
        await subscription.unsubscribe()


@contextlib.asynccontextmanager
async def running_router(
    nats_url: str, clock: Clock = system_clock, **settings: object
) -> AsyncIterator[ServiceContext]:
    """Run the router's ``run`` in this process until the block ends; yield once it is ready."""
    nc = await bus.connect(nats_url, "referral_router-in-process")
    js = nc.jetstream()
    await topology.ensure_topology(js)
    ctx = ServiceContext("referral_router", nc, js, asyncio.Event(), Readiness())
    config = RouterSettings(nats_url=nats_url, router_grpc_port=free_port(), **settings)  # type: ignore[arg-type]
    work = asyncio.create_task(run(ctx, config, clock))
    try:
        async with asyncio.timeout(20):
            while not ctx.readiness.ready:
                if work.done():
                    work.result()
                await asyncio.sleep(0.02)
        yield ctx
    finally:
        ctx.stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(work, timeout=10)
        await nc.drain()


def start_router_process(nats_url: str, data_dir: Path, log: Path, **env: str) -> subprocess.Popen[bytes]:
    """Start ``python -m services.referral_router`` as its own process and wait until it is serving."""
    port = free_port()
    environment = {
        **os.environ,
        "HAVEN_NATS_URL": nats_url,
        "HAVEN_DATA_DIR": str(data_dir),
        "HAVEN_ROUTER_GRPC_PORT": str(port),
        "PYTHONUNBUFFERED": "1",
        **env,
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.referral_router"], env=environment, stdout=out, stderr=out
        )
    deadline = time.monotonic() + 30
    while not grpc_serving(f"127.0.0.1:{port}"):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"router process did not start: {log.read_text()[-2000:]}")
        time.sleep(0.05)
    return process
