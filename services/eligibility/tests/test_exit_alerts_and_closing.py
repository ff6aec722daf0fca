"""Exit alerts and closed referrals, with the service in-process against a real nats-server.

Time is moved, not waited for: the service's clock is set where each test needs it. One test lets
the server fire a real pre-exit schedule (the clock a few seconds before the alert date's midnight);
the others publish the ``ReassessmentDue`` a fired schedule would carry, as the server does.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from typing import TypeVar

import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError

from haven.eligibility.v1 import eligibility_pb2
from haven.kit import bus, topology
from haven.kit.ids import derived_id
from haven.referral.v1 import referral_pb2 as pb
from services.eligibility.domain.schedule import PlannedReassessment
from services.eligibility.scheduler import SCHEDULE_STREAM, reassessment_due
from services.eligibility.service import closed_key
from tests.conftest import nats_client, nats_server  # noqa: F401  (the real server these tests use)
from tests.integration.test_eligibility_service import MovedClock, eligibility_service
from tests.support.clock import MovableClock
from tests.support.jetstream_probes import eventually, stored_messages

T = TypeVar("T")
BIRTHDAY_18 = date(2027, 3, 1)  # of a child born 2009-03-01


def _facts(*, assessed_born: str = "") -> pb.ReferralFacts:
    """A boy born 2009-03-01 (claimed), in ICTG since 2026-10-01: he leaves it on his 18th birthday."""
    facts = pb.ReferralFacts(
        child_id=str(uuid.uuid4()),
        dates_of_birth=[pb.DateOfBirthStatement(date="2009-03-01", basis=pb.DATE_OF_BIRTH_BASIS_CLAIMED)],
        sex=pb.SEX_MALE,
        trafficking_concern=pb.TRAFFICKING_CONCERN_SUSPECTED,
        local_authority_gss="E08000003",
        referrer=pb.Referrer(organisation_id="demo-police", kind=pb.REFERRER_KIND_POLICE),
        referral_date="2026-10-01",
        enrolments=[pb.ProgrammeEnrolment(programme_id="ictg", started_on="2026-10-01")],
    )
    if assessed_born:
        facts.dates_of_birth.append(
            pb.DateOfBirthStatement(date=assessed_born, basis=pb.DATE_OF_BIRTH_BASIS_ASSESSED)
        )
    return facts


async def _eventually(probe: Callable[[], Awaitable[T | None]], timeout: float = 15.0) -> T:
    """``eventually`` with this module's longer default wait (schedules fire through the server)."""
    return await eventually(probe, timeout)


async def _alerts(js: JetStreamContext, referral_id: str) -> list[eligibility_pb2.ExitApproaching]:
    events = [
        eligibility_pb2.ExitApproaching.FromString(data)
        for data in await stored_messages(js, "HAVEN_ELIGIBILITY", topology.ELIGIBILITY_EXIT_APPROACHING)
    ]
    return [e for e in events if e.referral_id == referral_id]


async def _assessed(js: JetStreamContext, referral_id: str) -> list[eligibility_pb2.EligibilityAssessed]:
    events = [
        eligibility_pb2.EligibilityAssessed.FromString(data)
        for data in await stored_messages(js, "HAVEN_ELIGIBILITY", topology.ELIGIBILITY_ASSESSED)
    ]
    return [e for e in events if e.referral_id == referral_id]


async def _first_alert(js: JetStreamContext, referral_id: str) -> eligibility_pb2.ExitApproaching | None:
    found = await _alerts(js, referral_id)
    return found[0] if found else None


async def _assessed_count(js: JetStreamContext, referral_id: str, n: int) -> bool | None:
    return True if len(await _assessed(js, referral_id)) >= n else None


async def _schedules(js: JetStreamContext, referral_id: str) -> dict[str, int]:
    prefix = f"{topology.REASSESSMENT_SCHEDULE_PREFIX}.{referral_id}"
    info = await js.stream_info(SCHEDULE_STREAM, subjects_filter=f"{prefix}.>")
    return dict(info.state.subjects or {})


async def _has_schedules(js: JetStreamContext, referral_id: str, wanted: bool) -> bool | None:
    return True if bool(await _schedules(js, referral_id)) is wanted else None


async def _settled(js: JetStreamContext) -> bool | None:
    """Both consumers have handled everything published so far."""
    for stream, durable in (
        ("HAVEN_REFERRALS", "eligibility"),
        (SCHEDULE_STREAM, "eligibility-reassessment"),
    ):
        info = await js.consumer_info(stream, durable)
        if info.num_pending or info.num_ack_pending:
            return None
    return True


async def _receive(js: JetStreamContext, referral_id: str, facts: pb.ReferralFacts) -> None:
    event = pb.ReferralReceived(event_id=str(uuid.uuid4()), referral_id=referral_id, facts=facts)
    await bus.publish_event(js, topology.REFERRAL_RECEIVED, event, msg_id=event.event_id)


async def _update(js: JetStreamContext, referral_id: str, facts: pb.ReferralFacts) -> None:
    event = pb.ReferralFactsUpdated(event_id=str(uuid.uuid4()), referral_id=referral_id, facts=facts)
    await bus.publish_event(js, topology.REFERRAL_FACTS_UPDATED, event, msg_id=event.event_id)


async def _fire(js: JetStreamContext, due: eligibility_pb2.ReassessmentDue) -> None:
    """Deliver a ReassessmentDue as the server does when a schedule fires (again, for a redelivery)."""
    await bus.publish_event(js, topology.REASSESSMENT_DUE, due, msg_id=str(uuid.uuid4()))


def _pre_exit_due(
    referral_id: str, days: int, exit_on: date = BIRTHDAY_18
) -> eligibility_pb2.ReassessmentDue:
    plan = PlannedReassessment(exit_on - timedelta(days=days), f"pre-exit-{days}", "ictg")
    return reassessment_due(referral_id, plan, datetime.now(UTC))


async def test_a_child_turning_18_in_30_days_raises_one_exit_alert(nats_client: NatsClient) -> None:  # noqa: F811
    js = nats_client.jetstream()
    referral_id = str(uuid.uuid4())
    facts = _facts()
    alert_day = BIRTHDAY_18 - timedelta(days=30)
    lead = timedelta(seconds=3)
    # The day before the alert date, seconds before midnight: the real pre-exit-30 schedule fires soon.
    clock = MovedClock(datetime.combine(alert_day, datetime.min.time(), UTC) - lead)
    async with eligibility_service(nats_client, clock, eligibility_reassess_after_midnight_seconds=0):
        await _receive(js, referral_id, facts)
        alert = await _eventually(lambda: _first_alert(js, referral_id), timeout=lead.total_seconds() + 15)

        assert clock().date() == alert_day
        assert (alert.programme_id, alert.exit_date, alert.days_before_exit) == ("ictg", "2027-03-01", 30)
        assert (alert.exit_kind, alert.exit_reason) == ("turns-18", "turned 18 (004 L766)")
        assert alert.facts == facts
        assert alert.event_id == derived_id("exit-approaching", _pre_exit_due(referral_id, 30).event_id)

        # The same schedule delivered again: re-assessed, but no second alert.
        await _fire(js, _pre_exit_due(referral_id, 30))
        await _eventually(lambda: _settled(js))
        assert len(await _alerts(js, referral_id)) == 1


async def test_an_alert_whose_exit_moved_is_not_raised(nats_client: NatsClient) -> None:  # noqa: F811
    js = nats_client.jetstream()
    alert_day = BIRTHDAY_18 - timedelta(days=7)
    clock = MovableClock(datetime.combine(alert_day, datetime.min.time(), UTC) - timedelta(days=1))
    moved, kept = str(uuid.uuid4()), str(uuid.uuid4())
    async with eligibility_service(nats_client, clock):
        await _receive(js, moved, _facts())
        await _receive(js, kept, _facts())
        await _eventually(lambda: _assessed_count(js, moved, 1))
        await _eventually(lambda: _assessed_count(js, kept, 1))
        # An age assessment puts the 18th birthday a month later: the exit moves to 2027-04-01.
        await _update(js, moved, _facts(assessed_born="2009-04-01"))
        await _eventually(lambda: _settled(js))

        clock.now += timedelta(days=1)  # the alert date
        await _fire(js, _pre_exit_due(moved, 7))
        await _fire(js, _pre_exit_due(kept, 7))
        kept_alert = await _eventually(lambda: _first_alert(js, kept))
        await _eventually(lambda: _settled(js))

        assert (kept_alert.days_before_exit, kept_alert.exit_kind) == (7, "turns-18")
        assert await _alerts(js, moved) == []


async def test_a_closed_referral_is_neither_scheduled_nor_assessed_again(nats_client: NatsClient) -> None:  # noqa: F811
    js = nats_client.jetstream()
    referral_id = str(uuid.uuid4())
    clock = MovableClock(datetime(2026, 11, 23, 12, 0, tzinfo=UTC))
    async with eligibility_service(nats_client, clock):
        await _receive(js, referral_id, _facts())
        await _eventually(lambda: _has_schedules(js, referral_id, True))

        closed = pb.ReferralClosed(
            event_id=str(uuid.uuid4()),
            referral_id=referral_id,
            closure=pb.REFERRAL_CLOSURE_COMPLETED,
            local_authority_gss="E08000003",
        )
        await bus.publish_event(js, topology.REFERRAL_CLOSED, closed, msg_id=closed.event_id)
        await _eventually(lambda: _has_schedules(js, referral_id, False))
        marker = await (await js.key_value(topology.BUCKET_ASSESSMENTS)).get(closed_key(referral_id))
        assert pb.ReferralClosed.FromString(marker.value or b"") == closed

        # New facts that would change ICTG (a negative NRM decision), and a schedule that had fired.
        changed = _facts()
        changed.nrm_status, changed.nrm_decision_date = pb.NRM_STATUS_CG_NEGATIVE, "2026-11-20"
        await _update(js, referral_id, changed)
        clock.now = datetime.combine(BIRTHDAY_18 - timedelta(days=30), datetime.min.time(), UTC)
        await _fire(js, _pre_exit_due(referral_id, 30))
        await _eventually(lambda: _settled(js))

        assert len(await _assessed(js, referral_id)) == 1
        assert await _alerts(js, referral_id) == []
        assert await _schedules(js, referral_id) == {}
        stored = await (await js.key_value(topology.BUCKET_ASSESSMENTS)).get(referral_id)
        assert eligibility_pb2.EligibilityAssessed.FromString(stored.value or b"").facts != changed


async def test_closing_an_unknown_referral_only_marks_it(nats_client: NatsClient) -> None:  # noqa: F811
    js = nats_client.jetstream()
    referral_id = str(uuid.uuid4())
    async with eligibility_service(nats_client, MovableClock(datetime(2026, 11, 23, tzinfo=UTC))):
        closed = pb.ReferralClosed(event_id=str(uuid.uuid4()), referral_id=referral_id)
        await bus.publish_event(js, topology.REFERRAL_CLOSED, closed, msg_id=closed.event_id)
        await _eventually(lambda: _settled(js))
        # Facts arriving after the close (out of order) are not assessed either.
        await _receive(js, referral_id, _facts())
        await _eventually(lambda: _settled(js))

        assert await _assessed(js, referral_id) == []
        with pytest.raises(KeyNotFoundError):
            await (await js.key_value(topology.BUCKET_ASSESSMENTS)).get(referral_id)
