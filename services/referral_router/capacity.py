"""Free places and waiting lists per service in JetStream KV; places taken with compare-and-set.

Several router processes may run at once: taking places writes count - k only if the free count is
still at the revision it read; on a conflict it reads again. A reservation record per task makes a
repeated reservation take no second place. The place is taken before the record is written (the
router writes the records of a routing together, after its places are taken), so a crash between the
two can only lose a place (safe), never give one twice.

A release deletes the reservation record with compare-and-set on its revision before it gives the
place back, so of two releases of the same task (a redelivery, or a rejection racing an expiry) only
one returns the place.

Every router keeps the free counts and the waiting lists in memory from KV watches (``follow``), so
planning reads no KV: the counts it plans with may be a few milliseconds old, but a place is only ever
taken by a compare-and-set at the revision last seen, and a stale revision makes it read the count
again. Within a process the changes to one service's count are grouped: while one compare-and-set is
in flight, the changes asked for meanwhile queue up, and the next compare-and-set applies them all at
once (takes granted in the order asked, while places last). A process's concurrent routings thus
neither conflict with each other nor wait one round trip each: one write serves a whole group.

Keys (bucket ``haven_capacity``):

- ``free.<service>``: free places; ``total.<service>``: the directory's count the free count was last
  adjusted to; ``reservation.<task>``: JSON ``{"service", "accepted"}``.
- ``waiting.<service>.<referral>``: the child is on the service's waiting list; its KV revision (the
  stream sequence of its creation) orders the list, so the position is 1 + the number of entries of
  the service with a lower revision. Created once: routing the child again keeps its place in line.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import heapq
import itertools
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from nats.js import JetStreamContext
from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from haven.kit.batch import KvWrite, send_all
from haven.kit.handles import bucket_name, context_of
from haven.kit.kv_follow import follow
from haven.kit.kv_keys import list_bucket_keys
from haven.kit.topology import BUCKET_CAPACITY
from services.referral_router.domain import Directory

_MAX_CAS_ATTEMPTS = 50
_WRONG_LAST_SEQUENCE = 10071
_FREE = "free."
_WAITING = "waiting."
# How long a new waiting-list entry may take to show in this router's view before its position is
# computed without it (the watch normally delivers it within a millisecond).
_WAITING_VIEW_TIMEOUT = 2.0


def _free_key(service_id: str) -> str:
    return f"{_FREE}{service_id}"


def _total_key(service_id: str) -> str:
    return f"total.{service_id}"


def _reservation_key(task_id: str) -> str:
    return f"reservation.{task_id}"


def _waiting_key(service_id: str, referral_id: str) -> str:
    return f"{_WAITING}{service_id}.{referral_id}"


@dataclass(frozen=True)
class Reservation:
    """A place held for one task, and whether the provider has accepted the task."""

    task_id: str
    service_id: str
    accepted: bool
    revision: int


def _encode_reservation(service_id: str, accepted: bool) -> bytes:
    return json.dumps({"service": service_id, "accepted": accepted}, separators=(",", ":")).encode()


def _removed(entry: KeyValue.Entry) -> bool:
    return entry.operation is not None or not entry.value


@dataclass
class _Change:
    """One change to a free count waiting for the next compare-and-set of its service."""

    delta: int  # -1: take a place; +n: give n back
    done: asyncio.Future[bool]  # True: applied (a take got its place); False: a take found none free


def _settle(free: int, changes: list[_Change]) -> tuple[int, list[bool]]:
    """Apply the changes in order to ``free``: a take gets a place while one is left; return the result."""
    granted: list[bool] = []
    for change in changes:
        if change.delta < 0 and free + change.delta < 0:
            granted.append(False)
            continue
        free += change.delta
        granted.append(True)
    return free, granted


class CapacityLedger:
    """The free places and waiting lists of every capacity-limited service."""

    def __init__(self, bucket: KeyValue) -> None:
        self._bucket = bucket
        self._free: dict[str, tuple[int, int]] = {}  # service -> (free count, KV revision)
        self._stale: set[str] = set()  # services whose cached revision lost a compare-and-set
        self._locks: dict[str, asyncio.Lock] = {}
        self._queued: dict[str, list[_Change]] = {}  # service -> changes for its next compare-and-set
        self._waiting: dict[str, dict[str, int]] = {}  # service -> referral -> revision
        self._waiting_order: dict[str, list[int]] = {}  # service -> revisions of its entries, sorted
        self._waiting_of: dict[str, set[str]] = {}  # referral -> services it waits at
        self._waiting_seen = 0  # highest waiting-list revision applied to the view
        # Joins waiting for the view to reach their entry's revision: (revision, number, future), a heap.
        self._seen_waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._waiter_numbers = itertools.count()

    # --- the view, from KV watches ---------------------------------------------------------------

    async def follow(self, js: JetStreamContext, loaded: asyncio.Event, stop: asyncio.Event) -> None:
        """Keep the free counts and waiting lists in memory; set ``loaded`` when both are in."""
        remaining = [2]

        async def one_loaded() -> None:
            remaining[0] -= 1
            if remaining[0] == 0:
                loaded.set()

        await asyncio.gather(
            follow(js, BUCKET_CAPACITY, f"{_FREE}*", self._apply_free, one_loaded, stop),
            follow(js, BUCKET_CAPACITY, f"{_WAITING}>", self._apply_waiting, one_loaded, stop),
        )

    async def _apply_free(self, entry: KeyValue.Entry, live: bool) -> None:
        service_id = entry.key.removeprefix(_FREE)
        if _removed(entry):
            self._free.pop(service_id, None)
            return
        self._note_free(service_id, int(entry.value or b"0"), entry.revision or 0)

    def _note_free(self, service_id: str, free: int, revision: int) -> None:
        known = self._free.get(service_id)
        if known is None or revision > known[1]:
            self._free[service_id] = (free, revision)

    async def _apply_waiting(self, entry: KeyValue.Entry, live: bool) -> None:
        service_id, _, referral_id = entry.key.removeprefix(_WAITING).partition(".")
        revision = entry.revision or 0
        entries = self._waiting.setdefault(service_id, {})
        order = self._waiting_order.setdefault(service_id, [])
        previous = entries.pop(referral_id, None)
        if previous is not None:
            del order[bisect.bisect_left(order, previous)]
        if _removed(entry):
            self._waiting_of.get(referral_id, set()).discard(service_id)
        else:
            entries[referral_id] = revision
            bisect.insort(order, revision)
            self._waiting_of.setdefault(referral_id, set()).add(service_id)
        self._waiting_seen = max(self._waiting_seen, revision)
        # Wake only the joins whose entry the view now holds (a condition's notify_all woke every join
        # in flight at each entry: with 64 lanes joining at once, most of a contended routing's CPU).
        while self._seen_waiters and self._seen_waiters[0][0] <= self._waiting_seen:
            waiter = heapq.heappop(self._seen_waiters)[2]
            if not waiter.done():
                waiter.set_result(None)

    def known_free(self) -> dict[str, int]:
        """Return the free count of each capacity-limited service, as this router last saw it."""
        return {service_id: free for service_id, (free, _) in self._free.items()}

    def waiting_ahead(self, referral_id: str) -> dict[str, int]:
        """Per service with a waiting list: how many children are ahead of this one (all, if not on it)."""
        ahead: dict[str, int] = {}
        for service_id, entries in self._waiting.items():
            own = entries.get(referral_id)
            order = self._waiting_order[service_id]
            ahead[service_id] = len(order) if own is None else bisect.bisect_left(order, own)
        return ahead

    def waiting_at(self, referral_id: str) -> frozenset[str]:
        """Return the services on whose waiting list the child is."""
        return frozenset(self._waiting_of.get(referral_id, ()))

    # --- waiting lists ---------------------------------------------------------------------------

    async def join_waiting(self, service_id: str, referral_id: str, now: datetime) -> None:
        """Put the child at the end of the service's waiting list (kept where it is when already on it).

        Returns once this router's view holds the entry and every one created before it, so the
        position computed next is the child's place in line.
        """
        since = now.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        entry = KvWrite(
            bucket_name(self._bucket),
            _waiting_key(service_id, referral_id),
            json.dumps({"since": since}).encode(),
            create=True,
        )
        # One call through ``send_all`` (lighter than ``KeyValue.create``). Refused when the key exists or
        # existed: ``KeyValue.create`` then tells the two apart (a child that left the list may rejoin it).
        revision = (await send_all(context_of(self._bucket), [entry]))[0]
        if not isinstance(revision, int):
            try:
                revision = await self._bucket.create(entry.key, entry.value)
            except KeyWrongLastSequenceError:
                return  # on the list already: its place in line stands
        if self._waiting_seen >= revision:
            return
        seen: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._seen_waiters, (revision, next(self._waiter_numbers), seen))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_WAITING_VIEW_TIMEOUT):
                await seen  # a join that gives up leaves its future cancelled, dropped once reached

    async def leave_waiting(self, service_id: str, referral_id: str) -> None:
        """Take the child off the service's waiting list (nothing happens when it is not on it)."""
        await self._bucket.delete(_waiting_key(service_id, referral_id))

    async def leave_every_list(self, referral_id: str) -> None:
        """Take the child off every waiting list it is on, as KV holds them (idempotent).

        Asks KV rather than this router's view: an entry another router created a moment ago counts.
        The listing names deleted entries too (their delete marker); deleting one again is harmless.
        """
        keys = await list_bucket_keys(self._bucket, f"{_WAITING}*.{referral_id}")
        services = {self._waiting_service(key) for key in keys} | set(self.waiting_at(referral_id))
        await asyncio.gather(*(self.leave_waiting(s, referral_id) for s in sorted(services)))

    @staticmethod
    def _waiting_service(key: str) -> str:
        return key.removeprefix(_WAITING).partition(".")[0]

    # --- places ----------------------------------------------------------------------------------

    async def seed(self, directory: Directory) -> None:
        """Create or adjust the free count of each service so that it follows the directory's places."""
        for service in directory.services:
            if service.places is not None:
                await self.sync_places(service.id, service.places.count)

    async def sync_places(self, service_id: str, total: int) -> None:
        """Make the free count follow a changed number of places (every router may call this at once).

        The first start creates both counts. A later change moves the free count by the difference;
        only the router whose compare-and-set on ``total`` wins applies it, so it is applied once.
        """
        for _ in range(_MAX_CAS_ATTEMPTS):
            try:
                entry = await self._bucket.get(_total_key(service_id))
            except KeyNotFoundError:
                try:
                    await self._bucket.create(_total_key(service_id), str(total).encode())
                except KeyWrongLastSequenceError:
                    continue  # another router created it first: read its value
                # A free count without a total predates totals: keep the live count.
                with contextlib.suppress(KeyWrongLastSequenceError):
                    await self._bucket.create(_free_key(service_id), str(total).encode())
                return
            previous = int(entry.value or b"0")
            if previous == total:
                return
            try:
                await self._bucket.update(_total_key(service_id), str(total).encode(), last=entry.revision)
            except KeyWrongLastSequenceError:
                continue
            await self._add_free(service_id, total - previous)
            return
        raise RuntimeError(f"could not change the places of {service_id}: too much contention")

    async def free_places(self, service_ids: Iterable[str]) -> dict[str, int]:
        """Read the free count of each service that has one from KV (not from this router's view)."""
        counts: dict[str, int] = {}
        for service_id in service_ids:
            try:
                entry = await self._bucket.get(_free_key(service_id))
            except KeyNotFoundError:
                continue
            if entry.value is not None:
                counts[service_id] = int(entry.value)
        return counts

    async def take_place(self, service_id: str) -> bool:
        """Take one place of ``service_id`` (no record yet); False when none is free.

        The caller then writes ``reservation_record`` for the task, or gives the place back. A crash
        before the record is written loses the place, which is safe: it is never given twice.
        """
        return await self._change_free(service_id, -1)

    async def give_places(self, service_id: str, count: int = 1) -> None:
        """Give back places taken with ``take_place`` that no reservation record holds."""
        await self._change_free(service_id, count)

    def reservation_record(self, task_id: str, service_id: str) -> KvWrite:
        """Return the write that records a place taken for a task, to send in a batch.

        It is a create: when the task holds a place already (the record exists), the write is refused
        and the caller gives back the place it just took, so a task never holds two.
        """
        return KvWrite(
            bucket_name(self._bucket),
            _reservation_key(task_id),
            _encode_reservation(service_id, False),
            create=True,
        )

    async def reservation(self, task_id: str) -> Reservation | None:
        """Return the place held for the task, or None."""
        try:
            entry = await self._bucket.get(_reservation_key(task_id))
        except KeyNotFoundError:
            return None
        if not entry.value or entry.revision is None:
            return None
        data = json.loads(entry.value)
        return Reservation(task_id, str(data["service"]), bool(data.get("accepted")), entry.revision)

    async def holds(self, task_id: str) -> bool:
        """Whether a place is held for the task."""
        return await self.reservation(task_id) is not None

    async def mark_accepted(self, task_id: str) -> bool:
        """Record that the provider accepted the task, so its place no longer expires; False if none held."""
        for _ in range(_MAX_CAS_ATTEMPTS):
            held = await self.reservation(task_id)
            if held is None:
                return False
            if held.accepted:
                return True
            try:
                await self._bucket.update(
                    _reservation_key(task_id), _encode_reservation(held.service_id, True), last=held.revision
                )
            except KeyWrongLastSequenceError:
                continue
            return True
        raise RuntimeError(f"could not mark {task_id} accepted: too much contention")

    async def release(self, task_id: str) -> str | None:
        """Give the task's place back; return its service id, or None when no place was held (idempotent).

        The record goes first, with compare-and-set, so only one of two concurrent releases returns the
        place; a crash before the count is raised loses a place rather than giving one twice.
        """
        for _ in range(_MAX_CAS_ATTEMPTS):
            held = await self.reservation(task_id)
            if held is None:
                return None
            if not await self._delete_at(_reservation_key(task_id), held.revision):
                continue  # released, or marked accepted, in between: look again
            await self._add_free(held.service_id, 1)
            return held.service_id
        raise RuntimeError(f"could not release the place of {task_id}: too much contention")

    async def _delete_at(self, key: str, revision: int) -> bool:
        """Delete ``key`` only if it is still at ``revision``; False when it moved on."""
        try:
            await self._bucket.delete(key, last=revision)
        except APIError as error:
            # nats-py raises the server's "wrong last sequence" (10071) as a plain APIError here.
            if error.err_code == _WRONG_LAST_SEQUENCE:
                return False
            raise
        return True

    async def _add_free(self, service_id: str, delta: int) -> None:
        await self._change_free(service_id, delta)

    async def _change_free(self, service_id: str, delta: int) -> bool:
        """Move the free count by ``delta`` with compare-and-set; False when a take finds no place.

        A service without a free count has no place limit: True, nothing written. Changes asked for
        while a compare-and-set of the service is in flight are applied together by the next one, so
        concurrent routings of this process share one write instead of queueing a round trip each.
        """
        change = _Change(delta, asyncio.get_running_loop().create_future())
        self._queued.setdefault(service_id, []).append(change)
        async with self._locks.setdefault(service_id, asyncio.Lock()):
            if not change.done.done():  # no earlier group served it: lead the next one
                await self._apply_queued(service_id, change)
        return change.done.result()

    async def _apply_queued(self, service_id: str, leader: _Change) -> None:
        """Apply every queued change of the service with one compare-and-set (more on a conflict).

        Settles each change's future, with the error when the group failed; if the leader is cancelled,
        the others go back to the queue for the next leader.
        """
        changes = self._queued.pop(service_id, [])
        try:
            for _ in range(_MAX_CAS_ATTEMPTS):
                if await self._apply_once(service_id, changes):
                    return
            raise RuntimeError(f"could not change the free places of {service_id}: too much contention")
        except asyncio.CancelledError:
            waiting = [c for c in changes if c is not leader and not c.done.done()]
            self._queued[service_id] = waiting + self._queued.get(service_id, [])
            raise
        except Exception as error:
            for change in changes:
                if not change.done.done():
                    change.done.set_exception(error)

    async def _apply_once(self, service_id: str, changes: list[_Change]) -> bool:
        """One compare-and-set for the group; False when another router changed the count first."""
        known = None if service_id in self._stale else self._free.get(service_id)
        free, granted = _settle(known[0], changes) if known is not None else (0, [])
        if known is None or not all(granted):
            # Not seen yet, lost a compare-and-set, or looks full: ask KV, not the view.
            try:
                entry = await self._bucket.get(_free_key(service_id))
            except KeyNotFoundError:
                for change in changes:
                    change.done.set_result(True)  # no place limit for this service
                return True
            self._stale.discard(service_id)
            known = (int(entry.value or b"0"), entry.revision or 0)
            self._note_free(service_id, *known)
            free, granted = _settle(known[0], changes)
        if free != known[0]:
            try:
                written = await self._bucket.update(_free_key(service_id), str(free).encode(), last=known[1])
            except KeyWrongLastSequenceError:
                self._stale.add(service_id)
                return False
            self._note_free(service_id, free, written)
        for change, ok in zip(changes, granted, strict=True):
            change.done.set_result(ok)
        return True
