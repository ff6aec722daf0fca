"""`exit-due`: a child will leave a programme on a known date, so the exit is planned in time.

The eligibility service owns the dates: at each of its ``eligibility_pre_exit_alert_days`` (90, 30 and
7 days before by default) it publishes ``haven.eligibility.v1.ExitApproaching`` on HAVEN_ELIGIBILITY.
This module consumes it (durable ``notifier-exits``) and raises `exit-due` with the programme, the exit
kind and date, the lead time and a schedule id ``exit-<days>-days``: to the LA, to the owners of the
referral's open tasks (each with its own task ids), and to the LA's leaving-care team when the exit is
the 18th birthday. The source event id is the ExitApproaching's own (derived by eligibility from the
referral, programme, exit date and alert), so a redelivered alert publishes nothing new. An alert
about a closed referral (``services.notifier.closures``; eligibility stops alerting then, but one
published just before the close can arrive after it) raises nothing.
"""

from __future__ import annotations

import logging
from datetime import date
from typing import Any

from nats.aio.msg import Msg

from haven.eligibility.v1 import eligibility_pb2
from haven.kit import bus, topology
from haven.kit.logs import log_event
from haven.kit.resources import ResourceStore
from haven.kit.timestamps import from_timestamp
from services.notifier.changes import decode, open_tasks
from services.notifier.closures import ClosedReferrals
from services.notifier.domain import ProjectionError, SourceEvent, TaskRef
from services.notifier.domain.recipients import referral_facts
from services.notifier.planner import NotificationPlanner

_log = logging.getLogger(__name__)

EXIT_EVENT = "exit-due"
EXITS_CONSUMER = bus.ConsumerSpec(
    stream="HAVEN_ELIGIBILITY", durable="notifier-exits", subjects=(topology.ELIGIBILITY_EXIT_APPROACHING,)
)


def exit_source(event: eligibility_pb2.ExitApproaching, tasks: tuple[TaskRef, ...]) -> SourceEvent:
    """Return the SourceEvent of `exit-due`; raise ``bus.Unprocessable`` for an alert that cannot be one.

    The plain-words ``exit_reason`` is never copied: payloads carry ids, codes and dates only.
    """
    if not event.event_id or not event.referral_id or not event.programme_id or not event.exit_kind:
        raise bus.Unprocessable("exit alert without event, referral, programme or exit kind")
    try:
        exit_date = date.fromisoformat(event.exit_date)
    except ValueError:
        raise bus.Unprocessable("exit alert whose exit_date is not an ISO date") from None
    if event.days_before_exit < 0:
        raise bus.Unprocessable("exit alert after the exit (days_before_exit below 0)")
    facts: dict[str, Any] = {
        # The child's coded facts: the leaving-care team's projection names the child and the birth
        # date (it takes over at 18); every other role's allow-list leaves them out.
        **referral_facts(event.facts),
        "referral_id": event.referral_id,
        "programme_id": event.programme_id,
        "exit_kind": event.exit_kind,
        "exit_date": exit_date,
        "days_before_exit": event.days_before_exit,
        "schedule_id": f"exit-{event.days_before_exit}-days",
    }
    return SourceEvent(
        event_id=event.event_id,
        occurred_at=from_timestamp(event.occurred_at),
        referral_id=event.referral_id,
        local_authority_gss=event.facts.local_authority_gss,
        referrer_organisation_id=event.facts.referrer.organisation_id,
        tasks=tasks,
        facts=facts,
    )


class ExitAlerts:
    """Raises `exit-due` for each ExitApproaching."""

    def __init__(self, planner: NotificationPlanner, store: ResourceStore, closed: ClosedReferrals) -> None:
        self._planner = planner
        self._store = store
        self._closed = closed

    async def handle(self, msg: Msg) -> None:
        """Handle one ExitApproaching."""
        event = decode(eligibility_pb2.ExitApproaching, msg.data)
        if not event.referral_id:
            raise bus.Unprocessable("exit alert without a referral id")
        if await self._closed.is_closed(event.referral_id):
            log_event(_log, "exit alert for a closed referral ignored", referral_id=event.referral_id)
            return
        source = exit_source(event, await open_tasks(self._store, event.referral_id))
        try:
            await self._planner.plan(EXIT_EVENT, source)
        except ProjectionError as bad:
            raise bus.Unprocessable(f"exit alert facts refused: {bad}") from None
        log_event(
            _log,
            "exit alert notified",
            referral_id=event.referral_id,
            programme_id=event.programme_id,
            days_before_exit=event.days_before_exit,
        )
