"""Rest-hook subscriptions held in memory, kept current by a watch on KV ``haven_subscriptions``.

The gateway writes one record per Subscription (secret, owner organisation, endpoint, topic, backport,
heartbeat period, status). The planner, the deliverer and the heartbeats read them on every event, so
they are read from memory here rather than searched or fetched per notification; the watch applies
each change within milliseconds. A subscription the watch has not seen yet (just created) is fetched
from KV on demand, so a delivery never fails for want of a fresh copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from haven.kit.kv_keys import list_bucket_keys

_log = logging.getLogger(__name__)


class SubscriptionCache:
    """Every subscription record by id, and the ids of each organisation's subscriptions."""

    def __init__(self, bucket: KeyValue) -> None:
        self._bucket = bucket
        self._records: dict[str, dict[str, Any]] = {}
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Load every record and keep following changes in the background."""
        if self._task is None:
            # The watch's own "initial values done" marker can come before the values on a loaded
            # machine (see haven.kit.kv_keys), so the initial load is read key by key first; the watch
            # then replays them (harmless: applying a record is idempotent) and follows changes.
            for key in await list_bucket_keys(self._bucket):
                try:
                    entry = await self._bucket.get(key)
                except KeyNotFoundError:
                    continue
                self._apply(key, entry.value, entry.operation)
            self._task = asyncio.create_task(self._follow())
        await self._ready.wait()

    async def stop(self) -> None:
        """Stop following changes."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _follow(self) -> None:
        while True:
            try:
                watcher = await self._bucket.watch(">")
                try:
                    async for entry in watcher:
                        if entry is None:  # the initial values have all been applied
                            self._ready.set()
                            continue
                        self._apply(entry.key, entry.value, entry.operation)
                finally:
                    with contextlib.suppress(Exception):
                        await watcher.stop()  # type: ignore[no-untyped-call]
            except asyncio.CancelledError:
                raise
            except Exception:
                _log.exception("subscription watch failed; watching again")
                await asyncio.sleep(0.5)

    def _apply(self, key: str, value: bytes | None, operation: str | None) -> None:
        if operation in ("DEL", "PURGE") or not value:
            self._records.pop(key, None)
            return
        try:
            self._records[key] = dict(json.loads(value))
        except ValueError:
            _log.warning("ignored an unreadable subscription record", extra={"subscription_id": key})

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
        try:
            entry = await self._bucket.get(subscription_id)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        record = dict(json.loads(entry.value))
        self._records.setdefault(subscription_id, record)
        return record
