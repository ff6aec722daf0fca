"""Rest-hook subscriptions held in memory, kept current by a watch on KV ``haven_subscriptions``.

The gateway writes one record per Subscription (secret, owner organisation, endpoint, topic, backport,
heartbeat period, status). The planner, the deliverer and the heartbeats read them on every event, so
they are read from memory here rather than searched or fetched per notification; the watch applies
each change within milliseconds. A subscription the watch has not seen yet (just created) is fetched
from KV on demand, so a delivery never fails for want of a fresh copy.

The watch is ``haven.kit.kv_follow.follow``: ``start`` returns only once every record present at start
is applied (nats-py's own "initial values done" marker can come before the values on a loaded machine,
so it is not trusted), which is what lets the notifier report ready with every Subscription loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from haven.kit import topology
from haven.kit.kv_follow import follow
from haven.kit.logs import log_event

_log = logging.getLogger(__name__)

# Wait before following again after the watch failed (a NATS reconnect, a server restart).
_REFOLLOW_SECONDS = 0.5


class SubscriptionCache:
    """Every subscription record by id, and the ids of each organisation's subscriptions."""

    def __init__(self, js: JetStreamContext, bucket: str = topology.BUCKET_SUBSCRIPTIONS) -> None:
        """Follow ``bucket`` through the JetStream context ``js`` (the bucket is bound on ``start``)."""
        self._js, self._bucket_name = js, bucket
        self._bucket: KeyValue | None = None
        self._records: dict[str, dict[str, Any]] = {}
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loaded = asyncio.Event()

    async def start(self) -> None:
        """Load every record present now, then keep following changes in the background.

        Returns once every record present at start is in memory; raises if the watch fails before.
        """
        if self._bucket is None:
            self._bucket = await self._js.key_value(self._bucket_name)
        if self._task is None:
            self._stop.clear()
            self._task = asyncio.create_task(self._follow())
        loaded = asyncio.create_task(self._loaded.wait())
        await asyncio.wait({loaded, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if not loaded.done():
            loaded.cancel()
            self._task.result()  # re-raises what stopped the watch before the load ended
            raise RuntimeError("subscription watch ended before the initial values were loaded")

    async def stop(self) -> None:
        """Stop following changes."""
        if self._task is not None:
            self._stop.set()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @property
    def loaded(self) -> bool:
        """Whether every record present at start has been applied."""
        return self._loaded.is_set()

    async def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                await follow(self._js, self._bucket_name, ">", self._apply, self._on_loaded, self._stop)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                # Following again replays every value (applying one is idempotent) and keeps the
                # records in memory meanwhile: a reconnect must not empty the planner's view.
                log_event(
                    _log,
                    "subscription watch failed; following again",
                    logging.WARNING,
                    error=type(error).__name__,
                )
                await asyncio.sleep(_REFOLLOW_SECONDS)

    async def _on_loaded(self) -> None:
        self._loaded.set()

    async def _apply(self, entry: KeyValue.Entry, live: bool) -> None:
        # Applying a record is idempotent, so a watch started again replays the values harmlessly.
        key, value, operation = entry.key, entry.value, entry.operation
        if operation in ("DEL", "PURGE") or not value:
            self._records.pop(key, None)
            return
        try:
            self._records[key] = dict(json.loads(value))
        except ValueError:
            log_event(_log, "ignored an unreadable subscription record", logging.WARNING, subscription_id=key)

    def all(self) -> list[tuple[str, dict[str, Any]]]:
        """Return every known subscription as (id, record)."""
        return list(self._records.items())

    def active_for(self, organisation_id: str) -> list[str]:
        """Return the ids of the organisation's active subscriptions, sorted (deterministic fan-out)."""
        return sorted(
            subscription_id
            for subscription_id, record in self._records.items()
            if record.get("organisation_id") == organisation_id and record.get("status", "active") == "active"
        )

    def cached(self, subscription_id: str) -> dict[str, Any] | None:
        """Return the record as last seen by the watch, without any I/O."""
        return self._records.get(subscription_id)

    async def get(self, subscription_id: str) -> dict[str, Any] | None:
        """Return the record from memory, or from KV when the watch has not brought it yet."""
        found = self._records.get(subscription_id)
        if found is not None:
            return found
        if self._bucket is None:
            self._bucket = await self._js.key_value(self._bucket_name)
        try:
            entry = await self._bucket.get(subscription_id)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        try:
            record = dict(json.loads(entry.value))
        except ValueError:
            return None
        self._records.setdefault(subscription_id, record)
        return record
