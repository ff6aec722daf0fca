"""The router's own records in KV (bucket ``haven_routing``): outcomes, sequences, re-routed tasks.

- ``outcome.<referral>.<trigger>``: the ReferralRouted decided for one triggering message, so a
  redelivery republishes the same decision instead of deciding (and reserving) again. A trigger is
  ``assessed-<seq>``, ``task-<seq>`` or ``expiry-<seq>``: the stream sequence of the message.
- ``sequence.<referral>``: the last routing sequence of the referral, raised with compare-and-set, so
  every routing of a referral (by any router process) has its own number and its own task ids. A
  first routing creates it (``claim_first_sequence``): when that succeeds nothing can have been
  decided for the referral, so the outcome is not looked up.
- ``rerouted.<task>``: which trigger moved the child on from this task. Created once, so a rejection
  and an expiry of the same task (or two routers) never route the child twice.
"""

from __future__ import annotations

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from haven.kit.resources import KvWrite
from haven.routing.v1 import routing_pb2

_MAX_CAS_ATTEMPTS = 50


class RoutingRecords:
    """Reads and writes the router's records."""

    def __init__(self, bucket: KeyValue) -> None:
        self._bucket = bucket

    async def decided(self, referral_id: str, trigger: str) -> routing_pb2.ReferralRouted | None:
        """Return the outcome already decided for this trigger, or None."""
        value = await self._get(f"outcome.{referral_id}.{trigger}")
        return routing_pb2.ReferralRouted.FromString(value) if value else None

    def outcome_record(self, routed: routing_pb2.ReferralRouted, trigger: str) -> KvWrite:
        """Return the write that keeps the outcome decided for this trigger (sent with ``write_all``)."""
        return KvWrite(
            str(self._bucket._name), f"outcome.{routed.referral_id}.{trigger}", routed.SerializeToString()
        )

    async def claim_first_sequence(self, referral_id: str) -> bool:
        """Take sequence 1 if the referral was never routed; False when it has a sequence already.

        One round trip for a new referral, and proof that nothing was decided for it yet (an outcome
        is only recorded under a sequence), so the caller need not look for one.
        """
        try:
            await self._bucket.create(f"sequence.{referral_id}", b"1")
        except KeyWrongLastSequenceError:
            return False
        return True

    async def next_sequence(self, referral_id: str) -> int:
        """Return a new routing sequence for the referral, above every one given before."""
        key = f"sequence.{referral_id}"
        for _ in range(_MAX_CAS_ATTEMPTS):
            try:
                entry = await self._bucket.get(key)
            except KeyNotFoundError:
                try:
                    await self._bucket.create(key, b"1")
                except KeyWrongLastSequenceError:
                    continue
                return 1
            sequence = int(entry.value or b"0") + 1
            try:
                await self._bucket.update(key, str(sequence).encode(), last=entry.revision)
            except KeyWrongLastSequenceError:
                continue
            return sequence
        raise RuntimeError("could not take a routing sequence: too much contention")

    async def claim_reroute(self, task_id: str, trigger: str) -> bool:
        """Claim the re-routing of the child away from ``task_id`` for ``trigger``.

        True for the first claimant and for a redelivery of its trigger; False when another trigger
        already moved the child on from this task.
        """
        key = f"rerouted.{task_id}"
        try:
            await self._bucket.create(key, trigger.encode())
        except KeyWrongLastSequenceError:
            return await self._get(key) == trigger.encode()
        return True

    async def was_rerouted(self, task_id: str) -> bool:
        """Whether the child was moved on from this task (its service declined or did not answer)."""
        return await self._get(f"rerouted.{task_id}") is not None

    async def _get(self, key: str) -> bytes | None:
        try:
            entry = await self._bucket.get(key)
        except KeyNotFoundError:
            return None
        return entry.value or None
