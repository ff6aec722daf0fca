"""The router's own records in KV (bucket ``haven_routing``): outcomes, sequences, areas, closures.

- ``outcome.<referral>.<trigger>``: the ReferralRouted decided for one triggering message, so a
  redelivery republishes the same decision instead of deciding (and reserving) again. A trigger is
  ``assessed-<seq>``, ``task-<seq>`` or ``expiry-<seq>``: the stream sequence of the message.
- ``sequence.<referral>``: ``<n> <GSS>``, the last routing sequence of the referral and the local
  authority of its first routing. The sequence is raised with compare-and-set, so every routing of
  a referral (by any router process) has its own number and its own task ids. A first routing creates
  it (``claim_first_sequence``): when that succeeds nothing can have been decided for the referral, so
  the outcome is not looked up. The first area rides on this key so that a first routing writes
  nothing more to remember it.
- ``area.<referral>``: the GSS code of the last routing after an assessment, when it was not the
  first; written with the outcome record (one batch), so it names an area only once that routing is
  decided. An assessment naming another area than ``routed_area`` is a move of local authority. A
  referral with neither (routed before areas were kept) has an unknown area: no move is seen until
  its next routing after an assessment writes one.
- ``closed.<referral>``: the ReferralClosed that closed the referral (the first one; kept). A closed
  referral is routed no more: assessments, rejections and expiries for it route nothing.
- ``cancelled.<task>``: the status a task had when the router cancelled it for a closed referral,
  written just before the cancel, so a redelivered closure can announce the cancel again.
- ``rerouted.<task>``: which trigger moved the child on from this task. Created once, so a rejection
  and an expiry of the same task (or two routers) never route the child twice.
"""

from __future__ import annotations

import asyncio

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from haven.kit.batch import KvWrite, LastValue, send_all, write_all
from haven.kit.handles import bucket_name
from haven.referral.v1 import referral_pb2
from haven.routing.v1 import routing_pb2

_MAX_CAS_ATTEMPTS = 50


def _sequence_value(sequence: int, area: str) -> bytes:
    return f"{sequence} {area}".strip().encode()


def _parse_sequence(value: bytes | None) -> tuple[int, str]:
    """Read ``<n> <GSS>`` (or a bare ``<n>``, written before areas were kept): the sequence and area."""
    number, _, area = (value or b"0").decode().partition(" ")
    return int(number or "0"), area


class RoutingRecords:
    """Reads and writes the router's records."""

    def __init__(self, bucket: KeyValue) -> None:
        self._bucket = bucket

    async def decided(self, referral_id: str, trigger: str) -> routing_pb2.ReferralRouted | None:
        """Return the outcome already decided for this trigger, or None."""
        value = await self._get(f"outcome.{referral_id}.{trigger}")
        return routing_pb2.ReferralRouted.FromString(value) if value else None

    def outcome_record(self, routed: routing_pb2.ReferralRouted, trigger: str) -> KvWrite:
        """Return the write that keeps the outcome decided for this trigger (sent with ``send_all``)."""
        return KvWrite(
            bucket_name(self._bucket), f"outcome.{routed.referral_id}.{trigger}", routed.SerializeToString()
        )

    async def claim_first_sequence(self, js: JetStreamContext, referral_id: str, area: str) -> bool:
        """Take sequence 1, routed for ``area``, if the referral was never routed; else False.

        One round trip for a new referral, and proof that nothing was decided for it yet (an outcome
        is only recorded under a sequence), so the caller need not look for one. A closed referral
        has a sequence (``mark_closed`` makes one), so its late first assessment is refused here.
        Sent through ``send_all`` (a create refused gives None): lighter than ``KeyValue.create``.
        """
        name = bucket_name(self._bucket)
        write = KvWrite(name, f"sequence.{referral_id}", _sequence_value(1, area), create=True)
        return (await send_all(js, [write]))[0] is not None

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
            previous, first_area = _parse_sequence(entry.value)
            sequence = previous + 1
            try:
                await self._bucket.update(key, _sequence_value(sequence, first_area), last=entry.revision)
            except KeyWrongLastSequenceError:
                continue
            return sequence
        raise RuntimeError("could not take a routing sequence: too much contention")

    def area_record(self, referral_id: str, local_authority_gss: str) -> KvWrite:
        """Return the write that says which area the referral is now routed for (sent with the outcome)."""
        return KvWrite(bucket_name(self._bucket), f"area.{referral_id}", local_authority_gss.encode())

    async def routed_area(self, referral_id: str) -> str:
        """Return the GSS code the referral was last routed for ("" when unknown or never routed).

        ``area.<referral>`` when a later routing wrote one, else the first routing's, kept with its
        sequence.
        """
        later, sequence = await asyncio.gather(
            self._get(f"area.{referral_id}"), self._get(f"sequence.{referral_id}")
        )
        return later.decode() if later else _parse_sequence(sequence)[1]

    # --- closed referrals --------------------------------------------------------------------------

    async def mark_closed(self, js: JetStreamContext, closed: referral_pb2.ReferralClosed) -> None:
        """Record that the referral is closed (the first closure is kept), in one batch of two creates.

        The mark first, then ``sequence.<referral>`` if the referral was never routed: an assessment
        of it handled later then fails ``claim_first_sequence`` and finds the mark on the slow path.
        """
        name = bucket_name(self._bucket)
        await write_all(
            js,
            [
                KvWrite(name, f"closed.{closed.referral_id}", closed.SerializeToString(), create=True),
                KvWrite(name, f"sequence.{closed.referral_id}", _sequence_value(0, ""), create=True),
            ],
        )

    async def is_closed(self, referral_id: str) -> bool:
        """Whether the referral was closed (``ReferralClosed`` seen by a router)."""
        return await self._get(f"closed.{referral_id}") is not None

    def closed_mark(self, referral_id: str) -> LastValue:
        """Return the read of the closed mark, to send with other calls (``send_all``: None if open)."""
        return LastValue(bucket_name(self._bucket), f"closed.{referral_id}")

    async def note_cancelled_from(self, task_id: str, status: str) -> None:
        """Keep the status a task is about to be cancelled from, for a redelivered closure."""
        await self._bucket.put(f"cancelled.{task_id}", status.encode())

    async def cancelled_from(self, task_id: str) -> str:
        """Return the status noted by ``note_cancelled_from`` ("" when none)."""
        return (await self._get(f"cancelled.{task_id}") or b"").decode()

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
