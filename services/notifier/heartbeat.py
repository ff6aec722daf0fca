"""Heartbeats for backport Subscriptions: a signed, empty notification when a channel has been quiet.

A receiver that asked for a heartbeat period (`backport-heartbeat-period`) and hears nothing for
longer than it knows the channel or Haven is down. A heartbeat carries the subscription's current
`events-since-subscription-start`, so a receiver can also spot a missed event and fetch it with
`$events`. Heartbeats are best effort: a failed one is logged and not retried (the next one follows).
Each is sent in a task of its own: a receiver that hangs holds only its own heartbeat (for up to the
webhook timeout; its next one waits until then), never the other subscriptions' round.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from typing import Any

import httpx

from haven.canonical import TOPIC_REFERRAL_ROUTED
from haven.kit.clock import Clock
from haven.kit.ids import derived_id
from haven.kit.logs import log_event
from services.notifier.domain.backport import HEARTBEAT, canonical_json, notification_bundle
from services.notifier.domain.signing import delivery_headers
from services.notifier.ledger import DeliveryLedger
from services.notifier.subscriptions import SubscriptionCache

_log = logging.getLogger(__name__)


class Heartbeats:
    """Sends each backport subscription's heartbeat when its channel has been quiet for its period."""

    def __init__(
        self, subscriptions: SubscriptionCache, ledger: DeliveryLedger, http: httpx.AsyncClient, clock: Clock
    ) -> None:
        self._subscriptions = subscriptions
        self._ledger = ledger
        self._http = http
        self._clock = clock
        self._last_sent: dict[str, float] = {}
        self._sending: dict[str, asyncio.Task[None]] = {}

    def note_sent(self, subscription_id: str) -> None:
        """Record that something was just sent on this subscription's channel."""
        self._last_sent[subscription_id] = time.monotonic()

    async def run(self, stop: asyncio.Event, tick_seconds: float = 0.5) -> None:
        """Look every ``tick_seconds`` for quiet channels until ``stop`` is set."""
        try:
            while not stop.is_set():
                try:
                    await self.tick()
                except Exception:
                    _log.exception("heartbeat round failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=tick_seconds)
        finally:
            # Best effort: a heartbeat still waiting for its receiver is not worth holding a shutdown.
            for task in self._sending.values():
                task.cancel()
            await asyncio.gather(*self._sending.values(), return_exceptions=True)

    async def tick(self) -> None:
        """Send the heartbeats that are due now."""
        now = time.monotonic()
        for subscription_id, record in self._subscriptions.all():
            period = record.get("heartbeat_seconds")
            if not record.get("backport") or not isinstance(period, int) or period <= 0:
                continue
            if record.get("status", "active") != "active":
                continue
            last = self._last_sent.setdefault(subscription_id, now)
            if now - last >= period and subscription_id not in self._sending:
                self._last_sent[subscription_id] = now
                task = asyncio.create_task(self._send(subscription_id, record))
                self._sending[subscription_id] = task
                task.add_done_callback(functools.partial(self._sent, subscription_id))

    def _sent(self, subscription_id: str, _: asyncio.Task[None]) -> None:
        self._sending.pop(subscription_id, None)

    async def wait_sent(self) -> None:
        """Wait until the heartbeats started so far have been answered or have failed."""
        await asyncio.gather(*self._sending.values(), return_exceptions=True)

    async def _send(self, subscription_id: str, record: dict[str, Any]) -> None:
        try:
            await self._post(subscription_id, record)
        except Exception:
            _log.exception("heartbeat failed", extra={"subscription_id": subscription_id})

    async def _post(self, subscription_id: str, record: dict[str, Any]) -> None:
        moment = self._clock()
        beat_id = derived_id("heartbeat", subscription_id, moment.isoformat())
        body = canonical_json(
            notification_bundle(
                bundle_id=beat_id,
                subscription_id=subscription_id,
                topic=str(record.get("topic") or TOPIC_REFERRAL_ROUTED),
                status="active",
                kind=HEARTBEAT,
                events_since_start=await self._ledger.events_count(subscription_id),
                now=moment,
            )
        )
        headers = delivery_headers(
            beat_id, HEARTBEAT, body, str(record["secret"]).encode(), int(moment.timestamp())
        )
        try:
            answer = await self._http.post(str(record["endpoint"]), content=body, headers=headers)
            outcome = f"HTTP {answer.status_code}"
        except httpx.HTTPError as error:
            outcome = type(error).__name__
        log_event(_log, "heartbeat sent", logging.DEBUG, subscription_id=subscription_id, outcome=outcome)
