"""The eligibility service in-process against a real nats-server: new facts, schedules, restarts, gRPC.

The service runs with an injected clock. Schedules are real JetStream message schedules: a test
that needs one to fire makes the service's "now" a few seconds before the due date's midnight, so
the server fires it a few seconds later and the service's "today" is then the due date.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError

from haven.eligibility.v1 import eligibility_pb2, eligibility_pb2_grpc
from haven.kit import bus, topology
from haven.kit.clock import Clock
from haven.kit.lifecycle import Readiness, ServiceContext
from haven.kit.nats_server import EmbeddedNats, free_port, start_embedded_nats
from haven.kit.topology import ensure_topology
from haven.referral.v1 import referral_pb2 as pb
from services.eligibility.convert import assessment_to_proto, changed_programmes, facts_from_proto
from services.eligibility.domain import assess, load_rulebook
from services.eligibility.domain.schedule import planned_reassessments
from services.eligibility.scheduler import SCHEDULE_STREAM, schedule_subject
from services.eligibility.service import run
from services.eligibility.settings import EligibilitySettings
from tests.support.jetstream_probes import eventually, stored_messages

SCHEDULE_PREFIX = topology.REASSESSMENT_SCHEDULE_PREFIX


class MovedClock:
    """The real clock moved to start at `start`: time passes, so the server's schedules meet it."""

    def __init__(self, start: datetime) -> None:
        self._start = start
        self._began = time.monotonic()

    def __call__(self) -> datetime:
        return self._start + timedelta(seconds=time.monotonic() - self._began)


def _facts(born: str, *, enrolled_on: str = "", **changes: object) -> pb.ReferralFacts:
    facts = pb.ReferralFacts(
        child_id=str(uuid.uuid4()),
        dates_of_birth=[pb.DateOfBirthStatement(date=born, basis=pb.DATE_OF_BIRTH_BASIS_CLAIMED)],
        sex=pb.SEX_MALE,
        trafficking_concern=pb.TRAFFICKING_CONCERN_SUSPECTED,
        local_authority_gss="E08000003",
        referrer=pb.Referrer(organisation_id="demo-police", kind=pb.REFERRER_KIND_POLICE),
        urgency=pb.URGENCY_URGENT,
        referral_date=enrolled_on or "2026-11-12",
        enrolments=[pb.ProgrammeEnrolment(programme_id="ictg", started_on=enrolled_on)]
        if enrolled_on
        else [],
    )
    for name, value in changes.items():
        setattr(facts, name, value)
    return facts


async def _assessed(js: JetStreamContext, referral_id: str) -> list[eligibility_pb2.EligibilityAssessed]:
    events = [
        eligibility_pb2.EligibilityAssessed.FromString(data)
        for data in await stored_messages(js, "HAVEN_ELIGIBILITY", topology.ELIGIBILITY_ASSESSED)
    ]
    return [e for e in events if e.referral_id == referral_id]


async def _schedules(js: JetStreamContext, referral_id: str) -> dict[str, int]:
    info = await js.stream_info(SCHEDULE_STREAM, subjects_filter=f"{SCHEDULE_PREFIX}.{referral_id}.>")
    return dict(info.state.subjects or {})


async def _receive(js: JetStreamContext, referral_id: str, facts: pb.ReferralFacts) -> None:
    event = pb.ReferralReceived(event_id=str(uuid.uuid4()), referral_id=referral_id, facts=facts)
    await bus.publish_event(js, topology.REFERRAL_RECEIVED, event, msg_id=event.event_id)


async def _update(js: JetStreamContext, referral_id: str, facts: pb.ReferralFacts) -> None:
    event = pb.ReferralFactsUpdated(event_id=str(uuid.uuid4()), referral_id=referral_id, facts=facts)
    await bus.publish_event(js, topology.REFERRAL_FACTS_UPDATED, event, msg_id=event.event_id)


@asynccontextmanager
async def eligibility_service(
    client: NatsClient, clock: Clock, grpc_port: int | None = None, **settings: object
) -> AsyncIterator[None]:
    """Run the service's own `run` in this event loop until the block ends."""
    ctx = ServiceContext("eligibility", client, client.jetstream(), asyncio.Event(), Readiness())
    config = EligibilitySettings(
        nats_url="nats://unused",
        eligibility_grpc_port=grpc_port or free_port(),
        **settings,  # type: ignore[arg-type]
    )
    task = asyncio.create_task(run(ctx, config, clock))
    await eventually(lambda: _ready(ctx, task))
    try:
        yield
    finally:
        ctx.stop.set()
        await task


async def _ready(ctx: ServiceContext, task: asyncio.Task[None]) -> bool | None:
    if task.done():
        task.result()  # raise what stopped it
    return True if ctx.readiness.ready else None


async def test_new_facts_are_assessed_at_once_and_only_changes_are_announced(nats_client: NatsClient) -> None:
    js = nats_client.jetstream()
    referral_id = str(uuid.uuid4())
    facts = _facts("2011-05-01")
    async with eligibility_service(nats_client, MovedClock(datetime.now(UTC))):
        await _receive(js, referral_id, facts)
        first = await eventually(lambda: _nth_event(js, referral_id, 1))
        assert first.trigger == eligibility_pb2.TRIGGER_REFERRAL_RECEIVED

        nrm = pb.ReferralFacts()
        nrm.CopyFrom(facts)
        nrm.nrm_status, nrm.nrm_decision_date = pb.NRM_STATUS_RG_POSITIVE, "2026-11-20"
        await _update(js, referral_id, nrm)
        second = await eventually(lambda: _nth_event(js, referral_id, 2))
        assert second.trigger == eligibility_pb2.TRIGGER_FACTS_UPDATED
        assert second.facts == nrm
        assert "afruca" in second.changed_programmes  # "needs NRM status" is no longer missing
        assert "ictg" not in second.changed_programmes
        assert list(second.changed_programmes) == _expected_changes(facts, nrm)

        # A fact no rule reads: re-assessed and stored, but nothing is announced.
        quiet = pb.ReferralFacts()
        quiet.CopyFrom(nrm)
        quiet.exploitation_types.append(pb.EXPLOITATION_TYPE_CRIMINAL)
        assert _expected_changes(nrm, quiet) == []
        await _update(js, referral_id, quiet)
        await eventually(lambda: _stored_facts_are(js, referral_id, quiet))
        assert len(await _assessed(js, referral_id)) == 2

        # The same referral received again (a redelivery) changes nothing either.
        await _receive(js, referral_id, facts)
        await _update(js, referral_id, quiet)
        await eventually(lambda: _no_pending(js, "HAVEN_REFERRALS", "eligibility"))
        assert len(await _assessed(js, referral_id)) == 2


def _expected_changes(before: pb.ReferralFacts, after: pb.ReferralFacts) -> list[str]:
    rulebook, today = load_rulebook(), datetime.now(UTC).date()
    old = assessment_to_proto(assess(facts_from_proto(before), today, rulebook))[0]
    new = assessment_to_proto(assess(facts_from_proto(after), today, rulebook))[0]
    return changed_programmes(old, new)


async def _nth_event(
    js: JetStreamContext, referral_id: str, n: int
) -> eligibility_pb2.EligibilityAssessed | None:
    events = await _assessed(js, referral_id)
    return events[n - 1] if len(events) >= n else None


async def _stored(
    js: JetStreamContext, referral_id: str
) -> tuple[eligibility_pb2.EligibilityAssessed, int] | None:
    try:
        entry = await (await js.key_value(topology.BUCKET_ASSESSMENTS)).get(referral_id)
    except KeyNotFoundError:
        return None
    return eligibility_pb2.EligibilityAssessed.FromString(entry.value or b""), entry.revision or 0


async def _stored_facts_are(js: JetStreamContext, referral_id: str, facts: pb.ReferralFacts) -> bool | None:
    stored = await _stored(js, referral_id)
    return True if stored and stored[0].facts == facts else None


async def _no_pending(js: JetStreamContext, stream: str, durable: str) -> bool | None:
    info = await js.consumer_info(stream, durable)
    return True if info.num_pending == 0 and info.num_ack_pending == 0 else None


async def test_schedules_follow_the_latest_plan_one_per_referral_and_reason(nats_client: NatsClient) -> None:
    js = nats_client.jetstream()
    referral_id = str(uuid.uuid4())
    today = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    enrolled = _facts(
        "2009-03-01", enrolled_on="2026-10-01"
    )  # 18 on 2027-03-01: alerts 90, 30, 7 days before
    async with eligibility_service(
        nats_client, MovedClock(today), eligibility_reassess_after_midnight_seconds=60
    ):
        await _receive(js, referral_id, enrolled)
        expected = {
            schedule_subject(referral_id, plan)
            for plan in planned_reassessments(
                assess(facts_from_proto(enrolled), today.date(), load_rulebook())
            )
        }
        assert {s.rsplit(".", 2)[-2] for s in expected if "pre-exit" in s} == {
            "pre-exit-90",
            "pre-exit-30",
            "pre-exit-7",
        }
        await eventually(lambda: _schedules_are(js, referral_id, expected))
        first_header = await _schedule_header(js, f"{SCHEDULE_PREFIX}.{referral_id}.pre-exit-7.ictg")
        assert abs(_at(first_header) - _wall(today, datetime(2027, 2, 22, 0, 1, tzinfo=UTC))) < timedelta(
            seconds=3
        )

        # An age assessment moves the 18th birthday: the same schedules, each replaced, none added.
        assessed = pb.ReferralFacts()
        assessed.CopyFrom(enrolled)
        assessed.dates_of_birth.append(
            pb.DateOfBirthStatement(date="2009-04-01", basis=pb.DATE_OF_BIRTH_BASIS_ASSESSED)
        )
        await _update(js, referral_id, assessed)
        await eventually(
            lambda: _header_changed(js, f"{SCHEDULE_PREFIX}.{referral_id}.pre-exit-7.ictg", first_header)
        )
        assert await _schedules(js, referral_id) == dict.fromkeys(expected, 1)
        moved = await _schedule_header(js, f"{SCHEDULE_PREFIX}.{referral_id}.pre-exit-7.ictg")
        assert _at(moved) - _at(first_header) == timedelta(days=31)

        # Out of the programme: its pre-exit alerts are purged, the next change stays.
        left = pb.ReferralFacts()
        left.CopyFrom(assessed)
        del left.enrolments[:]
        await _update(js, referral_id, left)
        await eventually(
            lambda: _schedules_are(js, referral_id, {f"{SCHEDULE_PREFIX}.{referral_id}.next-change"})
        )


def _wall(service_now: datetime, instant: datetime) -> datetime:
    return datetime.now(UTC) + (instant - service_now)


def _at(header: str) -> datetime:
    return datetime.strptime(header.removeprefix("@at "), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


async def _schedule_header(js: JetStreamContext, subject: str) -> str:
    message = await js.get_last_msg(SCHEDULE_STREAM, subject)
    assert message.headers is not None
    assert message.headers["Nats-Schedule-Target"] == topology.REASSESSMENT_DUE
    return str(message.headers["Nats-Schedule"])


async def _schedules_are(js: JetStreamContext, referral_id: str, subjects: set[str]) -> bool | None:
    return True if await _schedules(js, referral_id) == dict.fromkeys(subjects, 1) else None


async def _header_changed(js: JetStreamContext, subject: str, before: str) -> bool | None:
    return True if await _schedule_header(js, subject) != before else None


async def test_evaluate_over_grpc_explains_each_decision(nats_client: NatsClient) -> None:
    port = free_port()
    clock = MovedClock(datetime(2026, 11, 23, 9, 0, tzinfo=UTC))
    async with (
        eligibility_service(nats_client, clock, grpc_port=port),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        stub = eligibility_pb2_grpc.EligibilityServiceStub(channel)
        answer = await stub.Evaluate(eligibility_pb2.EvaluateRequest(facts=_facts("2011-05-01")), timeout=5)
        assert answer.assessed_on == "2026-11-23"  # the service's clock, not the machine's
        ictg = next(d for d in answer.decisions if d.programme_id == "ictg")
        assert ictg.outcome == eligibility_pb2.OUTCOME_ELIGIBLE
        assert ictg.next_change_date == "2029-05-01"  # the 18th birthday
        under_18 = next(r for r in ictg.rules if r.rule_id == "ictg.entry.under-18")
        assert under_18.result == eligibility_pb2.RULE_RESULT_PASS
        assert under_18.citation and under_18.statement
        assert under_18.inputs  # the values it read, as text
        afruca = next(d for d in answer.decisions if d.programme_id == "afruca")
        assert afruca.outcome == eligibility_pb2.OUTCOME_UNKNOWN
        assert "needs NRM status" in afruca.missing_facts
        assert answer.next_change_date == min(
            d.next_change_date for d in answer.decisions if d.next_change_date
        )

        on_birthday = await stub.Evaluate(
            eligibility_pb2.EvaluateRequest(facts=_facts("2011-05-01"), on_date="2029-05-01"), timeout=5
        )
        ictg_then = next(d for d in on_birthday.decisions if d.programme_id == "ictg")
        assert ictg_then.outcome == eligibility_pb2.OUTCOME_INELIGIBLE

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Evaluate(eligibility_pb2.EvaluateRequest(on_date="23/11/2026"), timeout=5)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture
async def own_nats(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    """A server of this test's own, so that it can be stopped and started again with its data."""
    server = start_embedded_nats(tmp_path / "nats", port=free_port())
    yield server
    server.stop()


async def test_a_schedule_survives_restarts_and_fires_once_on_its_date(
    own_nats: EmbeddedNats, tmp_path: Path
) -> None:
    referral_id = str(uuid.uuid4())
    due = date(2026, 3, 11)  # the 18th birthday: ICTG no longer takes the child
    lead = timedelta(seconds=4)
    clock = MovedClock(datetime(2026, 3, 11, tzinfo=UTC) - lead)
    facts = _facts("2008-03-11")
    subject = f"{SCHEDULE_PREFIX}.{referral_id}.next-change"

    client = await bus.connect(own_nats.url, "test")
    await ensure_topology(client.jetstream())
    async with eligibility_service(client, clock, eligibility_reassess_after_midnight_seconds=0):
        await _receive(client.jetstream(), referral_id, facts)
        await eventually(lambda: _schedules_are(client.jetstream(), referral_id, {subject}))
    await client.drain()

    # The server and the service both go down and come back before the date.
    own_nats.stop()
    restarted = start_embedded_nats(tmp_path / "nats", port=own_nats.port)
    own_nats.process = restarted.process
    client = await bus.connect(own_nats.url, "test")
    js = client.jetstream()
    assert await _schedules(js, referral_id) == {subject: 1}, "the schedule outlived the restart"
    async with eligibility_service(client, clock):
        scheduled = await eventually(
            lambda: _nth_event(js, referral_id, 2), timeout=lead.total_seconds() + 10
        )
        assert clock().date() == due
        assert scheduled.trigger == eligibility_pb2.TRIGGER_SCHEDULED
        assert scheduled.assessed_on == due.isoformat()
        assert "ictg" in scheduled.changed_programmes
        ictg = next(d for d in scheduled.decisions if d.programme_id == "ictg")
        assert ictg.outcome == eligibility_pb2.OUTCOME_INELIGIBLE
        # Fired once: the server purged the schedule, and the one ReassessmentDue was handled once.
        fired = await stored_messages(js, SCHEDULE_STREAM, topology.REASSESSMENT_DUE)
        dues = [eligibility_pb2.ReassessmentDue.FromString(m) for m in fired]
        assert [(d.due_on, d.reason) for d in dues if d.referral_id == referral_id] == [
            (due.isoformat(), "next-change")
        ]
        await eventually(lambda: _no_pending(js, SCHEDULE_STREAM, "eligibility-reassessment"))
        assert len(await _assessed(js, referral_id)) == 2
        if subject in await _schedules(js, referral_id):  # the change after this one, never this one again
            later = await js.get_last_msg(SCHEDULE_STREAM, subject)
            assert eligibility_pb2.ReassessmentDue.FromString(later.data or b"").due_on > due.isoformat()
    await client.drain()
