"""Durable re-assessment schedules: JetStream message schedules, one subject per referral and reason.

Each planned re-assessment is a message on ``<prefix>.<referral>.<reason>[.<programme>]`` (prefix:
``topology.REASSESSMENT_SCHEDULE_PREFIX``) in the HAVEN_ELIGIBILITY_SCHEDULES stream
(``allow_msg_schedules``) with the headers ``Nats-Schedule: @at <UTC time>`` and
``Nats-Schedule-Target: REASSESSMENT_DUE``; its body is the ``ReassessmentDue`` the server
publishes on the target at that time. The schedules live in the stream, so a restart of the
service or the server loses none. Why each fires at most once:

- the server keeps one schedule per subject (a new one rolls the old one up), so a plan that moves
  replaces the earlier schedule for the same referral and reason instead of adding one;
- a fired ``@at`` schedule is purged by the server, and only dates after the assessment date are
  planned, so a redelivered event never re-creates a schedule that has already fired;
- ``Nats-Msg-Id`` is derived from the referral, reason, programme and date, so a retried publish is
  dropped as a duplicate (and a plan that moves away and back inside the duplicate window is noticed
  and published again under a fresh id);
- schedules the latest assessment no longer asks for are purged.

A due date fires at its midnight UTC plus an offset. The instant is measured on the service's clock
and converted to the server's wall clock, so tests that move the service's clock still fire on time.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from haven.eligibility.v1 import eligibility_pb2
from haven.kit import topology
from haven.kit.clock import Clock, system_clock
from haven.kit.ids import derived_id
from haven.kit.logs import log_event
from haven.kit.schedules import at_header, is_subject_token, purge_under, subjects_under
from haven.kit.timestamps import to_timestamp
from services.eligibility.domain.schedule import PlannedReassessment

SCHEDULE_STREAM = "HAVEN_ELIGIBILITY_SCHEDULES"
_log = logging.getLogger(__name__)


class UnschedulableReferralError(ValueError):
    """The referral id cannot be one token of a NATS subject."""


def referral_prefix(referral_id: str) -> str:
    """Return the subject prefix under which every schedule of one referral lives."""
    if not is_subject_token(referral_id):
        raise UnschedulableReferralError("referral id is not a subject token")
    return f"{topology.REASSESSMENT_SCHEDULE_PREFIX}.{referral_id}"


def schedule_subject(referral_id: str, plan: PlannedReassessment) -> str:
    """Return the one subject that holds the schedule for this referral, reason and programme."""
    subject = f"{referral_prefix(referral_id)}.{plan.reason}"
    if plan.programme_id:
        if not is_subject_token(plan.programme_id):
            raise UnschedulableReferralError("programme id is not a subject token")
        subject += f".{plan.programme_id}"
    return subject


def reassessment_due(
    referral_id: str, plan: PlannedReassessment, now: datetime
) -> eligibility_pb2.ReassessmentDue:
    """Build the event a schedule carries; its id depends only on the referral, date, reason and programme."""
    return eligibility_pb2.ReassessmentDue(
        event_id=derived_id(
            "reassessment-due", referral_id, plan.due_on.isoformat(), plan.reason, plan.programme_id
        ),
        occurred_at=to_timestamp(now),
        referral_id=referral_id,
        due_on=plan.due_on.isoformat(),
        reason=plan.reason,
        programme_id=plan.programme_id,
    )


class ReassessmentScheduler:
    """Keeps the schedules of each referral equal to its latest plan."""

    def __init__(
        self,
        js: JetStreamContext,
        clock: Clock,
        *,
        fire_after_midnight: timedelta = timedelta(minutes=5),
        wall_clock: Clock = system_clock,
    ) -> None:
        self._js = js
        self._clock = clock
        self._offset = fire_after_midnight
        self._wall_clock = wall_clock

    def fire_at(self, due_on: date) -> datetime:
        """Return the server (wall-clock) instant at which a re-assessment due on `due_on` fires."""
        due = datetime.combine(due_on, time(0), UTC) + self._offset
        # Identity with the system clock; with a test's clock, the same distance from its "now".
        return self._wall_clock() + (due - self._clock())

    async def replace(self, referral_id: str, plans: Sequence[PlannedReassessment]) -> None:
        """Make the referral's schedules exactly `plans`: publish each, purge the ones no longer planned."""
        prefix = referral_prefix(referral_id)
        wanted = {schedule_subject(referral_id, plan): plan for plan in plans}
        now = self._clock()
        for subject, plan in wanted.items():
            await self._publish(subject, reassessment_due(referral_id, plan, now))
        for subject in await subjects_under(self._js, SCHEDULE_STREAM, prefix) - wanted.keys():
            await self._js.purge_stream(SCHEDULE_STREAM, subject=subject)
        log_event(_log, "re-assessments scheduled", referral_id=referral_id, count=len(wanted))

    async def _publish(self, subject: str, due: eligibility_pb2.ReassessmentDue) -> None:
        headers = {
            "Nats-Schedule": at_header(self.fire_at(date.fromisoformat(due.due_on))),
            "Nats-Schedule-Target": topology.REASSESSMENT_DUE,
            "Nats-Msg-Id": due.event_id,
        }
        ack = await self._js.publish(subject, due.SerializeToString(), headers=headers)
        if ack.duplicate and not await self._holds(subject, due.event_id):
            # The same plan was published, replaced, and is wanted again inside the duplicate window.
            headers["Nats-Msg-Id"] = f"{due.event_id}.{ack.seq}"
            await self._js.publish(subject, due.SerializeToString(), headers=headers)

    async def _holds(self, subject: str, event_id: str) -> bool:
        try:
            current = await self._js.get_last_msg(SCHEDULE_STREAM, subject)
        except NotFoundError:
            return False
        return eligibility_pb2.ReassessmentDue.FromString(current.data or b"").event_id == event_id

    async def cancel(self, referral_id: str) -> None:
        """Remove every schedule of a referral (for a closed referral)."""
        await purge_under(self._js, SCHEDULE_STREAM, referral_prefix(referral_id))


def seconds_until(instant: datetime, now: datetime) -> float:
    """Return the whole seconds from `now` to `instant`, at least one."""
    return float(max(1, math.ceil((instant - now).total_seconds())))
