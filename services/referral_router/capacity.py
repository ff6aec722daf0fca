"""Free places per service in JetStream KV, taken with compare-and-set so no place is given twice.

Several router processes may run at once: a reservation reads the free count with its revision and
writes count - 1 only if nobody wrote in between; on a conflict it reads again. A reservation record
per task makes a redelivered event take no second place. The place is taken before the record is
written, so a crash between the two can only lose a place (safe), never give one twice.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from services.referral_router.domain import Directory

_MAX_CAS_ATTEMPTS = 50


def _free_key(service_id: str) -> str:
    return f"free.{service_id}"


def _reservation_key(task_id: str) -> str:
    return f"reservation.{task_id}"


class CapacityLedger:
    """The free places of every capacity-limited service."""

    def __init__(self, bucket: KeyValue) -> None:
        self._bucket = bucket

    async def seed(self, directory: Directory) -> None:
        """Create the free count of each service from the directory, leaving existing counts alone."""
        for service in directory.services:
            if service.places is None:
                continue
            # Already seeded by an earlier start or another router: keep the live count.
            with contextlib.suppress(KeyWrongLastSequenceError):
                await self._bucket.create(_free_key(service.id), str(service.places.count).encode())

    async def free_places(self, service_ids: Iterable[str]) -> dict[str, int]:
        """Return the free count of each service that has one."""
        counts: dict[str, int] = {}
        for service_id in service_ids:
            try:
                entry = await self._bucket.get(_free_key(service_id))
            except KeyNotFoundError:
                continue
            if entry.value is not None:
                counts[service_id] = int(entry.value)
        return counts

    async def reserve(self, service_id: str, task_id: str) -> bool:
        """Take one place of ``service_id`` for ``task_id``; False when none is free.

        Repeating a reservation for the same task returns True without taking another place.
        """
        if await self.holds(task_id):
            return True
        for _ in range(_MAX_CAS_ATTEMPTS):
            try:
                entry = await self._bucket.get(_free_key(service_id))
            except KeyNotFoundError:
                return True  # no place limit for this service
            free = int(entry.value or b"0")
            if free <= 0:
                return False
            try:
                await self._bucket.update(_free_key(service_id), str(free - 1).encode(), last=entry.revision)
            except KeyWrongLastSequenceError:
                continue
            await self._bucket.put(_reservation_key(task_id), service_id.encode())
            return True
        raise RuntimeError(f"could not reserve a place at {service_id}: too much contention")

    async def holds(self, task_id: str) -> bool:
        """Whether a place is held for the task."""
        try:
            entry = await self._bucket.get(_reservation_key(task_id))
        except KeyNotFoundError:
            return False
        return entry.value is not None
