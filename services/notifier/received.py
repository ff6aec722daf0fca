"""`referral-received`: the responsible LA (and its EDT for an emergency) hears of every new referral.

Durable ``notifier-received`` on HAVEN_REFERRALS (``haven.referral.v1.received``, ReferralReceived,
published by the gateway when it takes a referral in). The event is planned under the
`referral-received` policy with ``source_event_from_received``: the source event id is the
ReferralReceived's own, so the notification ids derive from it and a redelivered event publishes
nothing new (JetStream drops the repeated ``Nats-Msg-Id`` of each work item).
"""

from __future__ import annotations

import logging

from nats.aio.msg import Msg

from haven.kit import bus, topology
from haven.kit.logs import log_event
from haven.referral.v1 import referral_pb2
from services.notifier.changes import decode
from services.notifier.domain import ProjectionError, source_event_from_received
from services.notifier.planner import NotificationPlanner

_log = logging.getLogger(__name__)

RECEIVED_EVENT = "referral-received"
RECEIVED_CONSUMER = bus.ConsumerSpec(
    stream="HAVEN_REFERRALS", durable="notifier-received", subjects=(topology.REFERRAL_RECEIVED,)
)


class ReceivedReferrals:
    """Raises `referral-received` for each ReferralReceived."""

    def __init__(self, planner: NotificationPlanner) -> None:
        self._planner = planner

    async def handle(self, msg: Msg) -> None:
        """Handle one ReferralReceived."""
        received = decode(referral_pb2.ReferralReceived, msg.data)
        if not received.event_id or not received.referral_id:
            raise bus.Unprocessable("referral received without event or referral id")
        try:
            await self._planner.plan(RECEIVED_EVENT, source_event_from_received(received))
        except ProjectionError as bad:
            # A fact that is not an id or code (free text in a code field): refused, never sent.
            raise bus.Unprocessable(f"referral facts refused: {bad}") from None
        log_event(_log, "referral receipt notified", referral_id=received.referral_id)
