"""The notifier's durable state in JetStream KV: delivery records, ordering holds and numbered events.

- ``haven_deliveries``, key ``<notification id>.<subscription id>``: one record per notification and
  subscription (state, attempts, last answer, times); what operators and `$dead-letters` read. An
  index key ``referral.<referral id>.<notification id>.<subscription id>`` lists a referral's records.
  A recipient gap has the key ``<gap notification id>.unresolved-<role>`` and also holds the role, the
  GSS code and the source event id, so a redrive can find the organisation then.
- ``haven_deliveries``, key ``order.<subscription id>.<referral id>``: the hold that keeps a
  recipient's notifications about one referral in order while an earlier one waits for a retry.
- ``haven_deliveries``, key ``missing.<referral id>``: the open missing episode (id, missing_since),
  written by ``services.notifier.missing``.
- ``haven_subscription_events``, keys ``<subscription id>.counter`` and ``<subscription id>.<n>``:
  the backport's `events-since-subscription-start` counter and each numbered event, for `$events`.

Records hold ids, states, codes and times; the payload (a child's facts) is kept only in the event log.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import orjson
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from haven.kit import topology
from haven.kit.batch import KvWrite, LastValue, send_all
from haven.kit.kv_keys import list_bucket_keys
from services.notifier.domain.backport import SubscriptionEvent

# Delivery states. "dead" and "delivered" are final until an operator redrives a dead one; "resolved"
# is final for a recipient gap (a required role had no organisation) once it was planned for one.
DELIVERED = "delivered"
RETRYING = "retrying"
DEAD = "dead"
REDRIVEN = "redriven"
RESOLVED = "resolved"
FINAL_STATES = frozenset({DELIVERED, DEAD, RESOLVED})


def record_key(notification_id: str, subscription_id: str) -> str:
    """Return the delivery record's key."""
    return f"{notification_id}.{subscription_id}"


class DeliveryLedger:
    """Reads and writes the notifier's KV state. Open one per process with ``DeliveryLedger.open``."""

    def __init__(self, js: JetStreamContext, deliveries: KeyValue, events: KeyValue) -> None:
        self._js = js
        self._deliveries = deliveries
        self._events = events
        # Per subscription, the event counter's value and revision as this process last wrote them.
        self._counters: dict[str, tuple[int, int]] = {}
        self._counter_locks: dict[str, asyncio.Lock] = {}

    @classmethod
    async def open(cls, js: JetStreamContext) -> DeliveryLedger:
        """Bind to the buckets (created by ``ensure_topology``)."""
        return cls(
            js,
            await js.key_value(topology.BUCKET_DELIVERIES),
            await js.key_value(topology.BUCKET_SUBSCRIPTION_EVENTS),
        )

    # Delivery records.

    async def record(self, key: str) -> dict[str, Any]:
        """Return the delivery record, or an empty dict when there is none yet."""
        [value] = await send_all(self._js, [LastValue(_DELIVERIES, key)])
        return _loads(value) or {}

    async def record_and_hold(
        self, key: str, subscription_id: str, referral_id: str
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Return the delivery record ({} when none) and its lane's hold (None), read in one batch."""
        record, hold = await send_all(
            self._js,
            [LastValue(_DELIVERIES, key), LastValue(_DELIVERIES, _hold_key(subscription_id, referral_id))],
        )
        return _loads(record) or {}, _loads(hold)

    def record_write(self, key: str, record: dict[str, Any], *, index: bool = False) -> list[KvWrite]:
        """Return the writes of a delivery record (and, with ``index``, its referral index entry)."""
        writes = [KvWrite(_DELIVERIES, key, _dump(record))]
        referral_id = str(record.get("referral_id", ""))
        if index and referral_id:
            writes.append(KvWrite(_DELIVERIES, f"referral.{referral_id}.{key}", b""))
        return writes

    async def put_record(self, key: str, record: dict[str, Any], *, index: bool = False) -> None:
        """Write the delivery record (and, with ``index``, its referral index entry, in one batch)."""
        await send_all(self._js, self.record_write(key, record, index=index))

    async def records_for_referral(self, referral_id: str) -> list[dict[str, Any]]:
        """Return every delivery record about one referral."""
        keys = await list_bucket_keys(self._deliveries, f"referral.{referral_id}.*.*")
        found = [await self.record(k.split(".", 2)[2]) for k in keys]
        return [r for r in found if r]

    # Ordering holds.

    async def hold(self, subscription_id: str, referral_id: str) -> dict[str, Any] | None:
        """Return the hold on a (subscription, referral) lane: the waiting message's sequence and until."""
        [value] = await send_all(self._js, [LastValue(_DELIVERIES, _hold_key(subscription_id, referral_id))])
        return _loads(value)

    async def set_hold(self, subscription_id: str, referral_id: str, sequence: int, until: datetime) -> None:
        """Hold later notifications of this lane back until the message at ``sequence`` is done."""
        current = await self.hold(subscription_id, referral_id) or {}
        waiting = set(current.get("waiting", []))
        if current and int(current["sequence"]) < sequence:
            return  # an earlier message already holds the lane
        if current and int(current["sequence"]) > sequence:
            waiting.add(int(current["sequence"]))
        waiting.discard(sequence)
        await self._put_hold(subscription_id, referral_id, sequence, until.timestamp(), waiting)

    async def wait_behind(self, subscription_id: str, referral_id: str, sequence: int) -> None:
        """Note that the message at ``sequence`` waits behind the hold, so it goes next in its turn."""
        current = await self.hold(subscription_id, referral_id)
        if current is None or sequence in current.get("waiting", []):
            return
        waiting = {*current.get("waiting", []), sequence}
        await self._put_hold(
            subscription_id, referral_id, int(current["sequence"]), float(current["until"]), waiting
        )

    async def release(self, subscription_id: str, referral_id: str, sequence: int, now: datetime) -> None:
        """Pass the hold on when the message at ``sequence`` holds it (it is delivered or dead).

        The earliest waiting message becomes the holder, so those behind it keep waiting in order.
        """
        current = await self.hold(subscription_id, referral_id)
        if current is None or int(current["sequence"]) != sequence:
            return
        waiting = set(current.get("waiting", [])) - {sequence}
        if not waiting:
            await self._deliveries.delete(_hold_key(subscription_id, referral_id))
            return
        head = min(waiting)
        await self._put_hold(subscription_id, referral_id, head, now.timestamp(), waiting - {head})

    async def _put_hold(
        self, subscription_id: str, referral_id: str, sequence: int, until: float, waiting: set[int]
    ) -> None:
        hold = {"sequence": sequence, "until": until, "waiting": sorted(waiting)}
        await send_all(self._js, [KvWrite(_DELIVERIES, _hold_key(subscription_id, referral_id), _dump(hold))])

    # Numbered events per subscription (backport).

    async def number_event(self, subscription_id: str, event: SubscriptionEvent) -> int:
        """Give the event the subscription's next number (compare-and-set on the counter) and keep it."""
        number = await self.next_event_number(subscription_id)
        await self.put_event(subscription_id, event, number)
        return number

    async def next_event_number(self, subscription_id: str) -> int:
        """Take the subscription's next event number: a compare-and-set on its counter.

        The counter's last value and revision are remembered, so the usual case (this process
        numbered the subscription's last event) is one write and no read; when another process
        numbered one meanwhile the write is refused and the counter is read again. Within the
        process the subscription's lanes take numbers one at a time: racing each other for the
        same revision, all but one would be refused and read again, a storm at a busy subscription.
        """
        lock = self._counter_locks.setdefault(subscription_id, asyncio.Lock())
        async with lock:
            return await self._take_number(subscription_id)

    async def _take_number(self, subscription_id: str) -> int:
        key = f"{subscription_id}.counter"
        cached = self._counters.get(subscription_id)
        while True:
            if cached is None:
                try:
                    entry = await self._events.get(key)
                except KeyNotFoundError:
                    try:
                        revision = await self._events.create(key, b"1")
                    except KeyWrongLastSequenceError:
                        continue
                    self._counters[subscription_id] = (1, revision)
                    return 1
                cached = (int(entry.value or b"0"), int(entry.revision or 0))
            number = cached[0] + 1
            try:
                revision = await self._events.update(key, str(number).encode(), last=cached[1])
            except KeyWrongLastSequenceError:
                cached = None  # another process numbered an event meanwhile: read again
                continue
            self._counters[subscription_id] = (number, revision)
            return number

    async def put_event(self, subscription_id: str, event: SubscriptionEvent, number: int) -> None:
        """Keep numbered event ``number`` of a subscription, for ``$events``."""
        numbered = SubscriptionEvent(
            event_number=number,
            notification_id=event.notification_id,
            event_type=event.event_type,
            referral_id=event.referral_id,
            occurred_at=event.occurred_at,
            payload_json=event.payload_json,
        )
        write = KvWrite(
            topology.BUCKET_SUBSCRIPTION_EVENTS, f"{subscription_id}.{number}", _dump(numbered.to_json())
        )
        await send_all(self._js, [write])

    async def events_count(self, subscription_id: str) -> int:
        """Return `events-since-subscription-start`."""
        try:
            entry = await self._events.get(f"{subscription_id}.counter")
        except KeyNotFoundError:
            return 0
        return int(entry.value or b"0")

    async def event(self, subscription_id: str, number: int) -> SubscriptionEvent | None:
        """Return numbered event ``number`` of a subscription, or None."""
        data = await _get_json(self._events, f"{subscription_id}.{number}")
        return SubscriptionEvent.from_json(data) if data else None


_DELIVERIES = topology.BUCKET_DELIVERIES


def _loads(value: bytes | int | None) -> dict[str, Any] | None:
    """Return a record read by ``send_all`` (its value's JSON), or None when the key holds none."""
    return dict(orjson.loads(value)) if isinstance(value, bytes) else None


def _hold_key(subscription_id: str, referral_id: str) -> str:
    return f"order.{subscription_id}.{referral_id or 'none'}"


def _dump(data: dict[str, Any]) -> bytes:
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS)


async def _get_json(bucket: KeyValue, key: str) -> dict[str, Any] | None:
    try:
        entry = await bucket.get(key)
    except KeyNotFoundError:
        return None
    if not entry.value:
        return None
    return dict(orjson.loads(entry.value))
