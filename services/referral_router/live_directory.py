"""The directory the router matches against: HealthcareService resources in the store, watched live.

At start the shipped directory (``directory/services.yaml``) is written to the resource store as FHIR
HealthcareService resources, leaving any entry an admin has already changed alone. Every router then
watches ``HealthcareService.*`` in the resources bucket: an admin's ``PUT HealthcareService/<id>``
replaces the entry in every running router without a restart, and a changed number of places moves
the free count (``CapacityLedger.sync_places``). An entry that cannot be read is logged and skipped;
the routers keep the last good version of it. ``loaded`` is set only once every entry present at
start is applied and the free counts follow it (``haven.kit.kv_follow``), so a ready router has its directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import datetime

from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from haven.kit.kv_follow import follow
from haven.kit.logs import log_event
from haven.kit.resources import AlreadyExistsError, RecordScope, ResourceStore
from haven.kit.topology import BUCKET_RESOURCES
from services.referral_router.capacity import CapacityLedger
from services.referral_router.domain import (
    Directory,
    DirectoryError,
    HealthcareService,
    healthcare_service_from_fhir,
    healthcare_service_to_fhir,
)
from services.referral_router.domain.directory import make_directory

_log = logging.getLogger(__name__)
_KEYS = "HealthcareService.*"


async def seed_directory(store: ResourceStore, shipped: Directory, now: datetime) -> None:
    """Write each shipped service that the store does not hold yet (an admin's version wins)."""

    async def create(service: HealthcareService) -> None:
        with contextlib.suppress(AlreadyExistsError):
            await store.create(healthcare_service_to_fhir(service), RecordScope(), now)

    await asyncio.gather(*(create(service) for service in shipped.services))


class LiveDirectory:
    """The current directory, kept up to date by a KV watch; read ``current`` for each routing."""

    def __init__(self, js: JetStreamContext, ledger: CapacityLedger) -> None:
        self._js = js
        self._ledger = ledger
        self._services: dict[str, HealthcareService] = {}
        self.current = Directory(services=())
        self.changes = 0  # how many changes were applied after the initial load (for tests and logs)

    async def run(self, loaded: asyncio.Event, stop: asyncio.Event) -> None:
        """Load every entry and seed the free counts, set ``loaded``, then apply changes until ``stop``."""

        async def initial_values_in() -> None:
            await self._rebuild(initial=True)
            loaded.set()

        await follow(self._js, BUCKET_RESOURCES, _KEYS, self._apply, initial_values_in, stop)

    async def _apply(self, entry: KeyValue.Entry, live: bool) -> None:
        if not entry.value or entry.operation is not None:
            return  # deleted or purged: the routers keep the last version (set active: false instead)
        try:
            service = healthcare_service_from_fhir(json.loads(entry.value)["resource"])
        except (DirectoryError, ValueError, KeyError) as error:
            log_event(
                _log, "skipped unreadable directory entry", logging.WARNING, key=entry.key, error=str(error)
            )
            return
        self._services[service.id] = service
        if live:
            await self._rebuild(initial=False)

    async def _rebuild(self, *, initial: bool) -> None:
        try:
            directory = make_directory(self._services.values())
        except DirectoryError as error:
            log_event(_log, "kept the previous directory", logging.WARNING, error=str(error))
            return
        previous = {s.id: s for s in self.current.services}
        for service in directory.services:
            old = previous.get(service.id)
            if service.places is not None and (old is None or old.places != service.places):
                await self._ledger.sync_places(service.id, service.places.count)
        self.current = directory
        if not initial:
            self.changes += 1
            log_event(_log, "directory changed", services=len(directory.services))
