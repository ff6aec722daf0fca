"""Reservation expiry as JetStream message schedules: durable across restarts of every router.

Taking a place publishes one schedule per task on ``haven.routing.v1.reservation-expiry.<task>`` with
``Nats-Schedule: @at <deadline>`` and ``Nats-Schedule-Target: haven.routing.v1.reservation-expired``.
The server keeps it in the ``HAVEN_ROUTER_SCHEDULES`` stream and publishes the task id on the target
at the deadline; the router's expiry consumer then releases the place unless the provider accepted.
A schedule subject holds one schedule, so scheduling twice for a task keeps one; accepting, rejecting
or closing the task purges it.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from nats.js import JetStreamContext

from haven.kit import telemetry, topology
from haven.kit.batch import Publish, send_all
from haven.kit.schedules import at_header

STREAM = "HAVEN_ROUTER_SCHEDULES"


def _schedule_subject(task_id: str) -> str:
    return f"{topology.RESERVATION_EXPIRY_PREFIX}.{task_id}"


class ReservationExpiry:
    """Schedules and cancels the expiry of reservations."""

    def __init__(self, js: JetStreamContext, timeout: timedelta) -> None:
        self._js = js
        self._timeout = timeout

    async def schedule(self, task_id: str, reserved_at: datetime) -> None:
        """Make the reservation of ``task_id`` expire ``timeout`` after ``reserved_at``."""
        await send_all(self._js, [self.schedule_message(task_id, reserved_at)])

    def schedule_message(self, task_id: str, reserved_at: datetime) -> Publish:
        """Return the publish that ``schedule`` makes, to send with other calls (``send_all``)."""
        headers = telemetry.inject_headers(
            {
                "Nats-Schedule": at_header(reserved_at + self._timeout),
                "Nats-Schedule-Target": topology.RESERVATION_EXPIRED,
                "Nats-Msg-Id": f"reservation-expiry-{task_id}",
            }
        )
        return Publish(_schedule_subject(task_id), task_id.encode(), headers)

    async def cancel(self, task_id: str) -> None:
        """Drop the schedule of ``task_id`` (nothing happens when there is none)."""
        await self._js.purge_stream(STREAM, subject=_schedule_subject(task_id))
