"""The service directory: which services exist, who provides them, where and from when, how many places.

The shipped directory is data (`services/referral_router/directory/services.yaml`), read once by
`load_directory()`. Entries are shaped like FHIR HealthcareService so that an admin can replace one
with `PUT HealthcareService/<id>` (see `directory_fhir`). Coverage is data with start dates, not code
(programmes.md, ICTG "Area").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from functools import cached_property
from importlib import resources
from typing import Any

import yaml

from haven.organisations import load_organisations


class DirectoryError(ValueError):
    """Raised for a directory entry that cannot be used (unknown provider, bad coverage, duplicate id)."""


class ServiceCategory(StrEnum):
    """What a service offers; the router treats each category by its own rules."""

    GUARDIANSHIP = "guardianship"
    THERAPEUTIC_SUPPORT = "therapeutic-support"
    SPECIALIST_ACCOMMODATION = "specialist-accommodation"


class PlaceUnit(StrEnum):
    """What one place of a service is."""

    BED = "bed"
    GROUP_PLACE = "group-place"
    CASELOAD = "caseload"


@dataclass(frozen=True)
class CoveragePeriod:
    """One local authority a service covers, from a date (inclusive) to an optional date (exclusive)."""

    gss: str
    start: date
    end: date | None = None

    def covers(self, gss: str, on: date) -> bool:
        """Whether this period covers the given LA on the given date."""
        return self.gss == gss and self.start <= on and (self.end is None or on < self.end)


@dataclass(frozen=True)
class Places:
    """How many children a service takes at once, and where that number comes from."""

    unit: PlaceUnit
    count: int
    basis: str


@dataclass(frozen=True)
class ContactPoint:
    """A contact point of a service (FHIR ContactPoint: system and value)."""

    system: str
    value: str


@dataclass(frozen=True)
class Location:
    """Where a service is. An address that must stay confidential is never stored, only its LA."""

    id: str
    name: str
    local_authority_gss: str
    address_confidential: bool = False


@dataclass(frozen=True)
class HealthcareService:
    """One service that can receive tasks for children."""

    id: str
    name: str
    provided_by: str
    programme_id: str
    category: ServiceCategory
    routes: tuple[str, ...]
    coverage: tuple[CoveragePeriod, ...]
    specificity: int = 0
    specificity_basis: str = ""
    all_day: bool = False
    all_day_basis: str = ""
    places: Places | None = None
    telecom: tuple[ContactPoint, ...] = ()
    location: Location | None = None
    active: bool = True

    def covers(self, gss: str, on: date) -> bool:
        """Whether the service is active and covers the LA on the date."""
        return self.active and any(period.covers(gss, on) for period in self._coverage_of.get(gss, ()))

    @cached_property
    def _coverage_of(self) -> dict[str, tuple[CoveragePeriod, ...]]:
        # Coverage by LA, built once per service: a national service lists some 350 LAs and every
        # routing asks about one of them.
        by_gss: dict[str, list[CoveragePeriod]] = {}
        for period in self.coverage:
            by_gss.setdefault(period.gss, []).append(period)
        return {gss: tuple(periods) for gss, periods in by_gss.items()}


@dataclass(frozen=True)
class Directory:
    """Every known service, in id order so that matching over it is deterministic."""

    services: tuple[HealthcareService, ...]

    def get(self, service_id: str) -> HealthcareService | None:
        """Return the service with this id, or None."""
        return next((s for s in self.services if s.id == service_id), None)

    def for_programme(self, programme_id: str) -> tuple[HealthcareService, ...]:
        """Return the services of a programme, in id order."""
        return tuple(s for s in self.services if s.programme_id == programme_id)

    def in_category(self, category: ServiceCategory) -> tuple[HealthcareService, ...]:
        """Return the services of a category, in id order."""
        return tuple(s for s in self.services if s.category is category)

    def with_service(self, service: HealthcareService) -> Directory:
        """Return a directory in which `service` is added or replaces the entry with its id."""
        others = [s for s in self.services if s.id != service.id]
        return make_directory([*others, service])


def make_directory(
    services: Iterable[HealthcareService], *, known_providers: Iterable[str] = ()
) -> Directory:
    """Check the services and return them as a Directory in id order.

    Providers are checked against the organisation registry (plus `known_providers`, for tests), because
    a task owned by an unknown organisation could never be accepted by anyone.
    """
    ordered = sorted(services, key=lambda s: s.id)
    providers = set(load_organisations()) | set(known_providers)
    seen: set[str] = set()
    for service in ordered:
        if service.id in seen:
            raise DirectoryError(f"duplicate service id {service.id!r}")
        seen.add(service.id)
        if service.provided_by not in providers:
            raise DirectoryError(f"{service.id}: unknown providing organisation {service.provided_by!r}")
        if not service.routes:
            raise DirectoryError(f"{service.id}: a service needs at least one route")
        if service.places is not None and service.places.count < 0:
            raise DirectoryError(f"{service.id}: places cannot be negative")
        for period in service.coverage:
            if period.end is not None and period.end <= period.start:
                raise DirectoryError(f"{service.id}: coverage of {period.gss} ends before it starts")
    return Directory(services=tuple(ordered))


def _as_date(value: Any, where: str) -> date:
    # PyYAML already turns an unquoted ISO date into a date; JSON brings a string.
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise DirectoryError(f"{where}: {value!r} is not an ISO date") from None


def _service_from_entry(entry: Mapping[str, Any]) -> HealthcareService:
    service_id = str(entry["id"])
    places = entry.get("places")
    location = entry.get("location")
    try:
        category = ServiceCategory(entry["category"])
        unit = PlaceUnit(places["unit"]) if places else None
    except ValueError as error:
        raise DirectoryError(f"{service_id}: {error}") from None
    return HealthcareService(
        id=service_id,
        name=str(entry["name"]),
        provided_by=str(entry["providedBy"]),
        programme_id=str(entry["programme"]),
        category=category,
        routes=tuple(str(r) for r in entry["routes"]),
        coverage=tuple(
            CoveragePeriod(
                gss=str(c["gss"]),
                start=_as_date(c["from"], service_id),
                end=_as_date(c["to"], service_id) if c.get("to") else None,
            )
            for c in entry.get("coverage") or ()
        ),
        specificity=int(entry.get("specificity", 0)),
        specificity_basis=str(entry.get("specificityBasis", "")),
        all_day=bool(entry.get("allDay", False)),
        all_day_basis=str(entry.get("allDayBasis", "")),
        places=Places(unit=unit, count=int(places["count"]), basis=str(places.get("basis", "")))
        if places and unit
        else None,
        telecom=tuple(ContactPoint(str(t["system"]), str(t["value"])) for t in entry.get("telecom") or ()),
        location=Location(
            id=str(location["id"]),
            name=str(location["name"]),
            local_authority_gss=str(location["localAuthority"]),
            address_confidential=bool(location.get("addressConfidential", False)),
        )
        if location
        else None,
        active=bool(entry.get("active", True)),
    )


def directory_from_entries(entries: Iterable[Mapping[str, Any]]) -> Directory:
    """Build a Directory from entries in the shape of `directory/services.yaml`."""
    try:
        return make_directory(_service_from_entry(e) for e in entries)
    except KeyError as missing:
        raise DirectoryError(f"directory entry without {missing}") from None


def load_directory() -> Directory:
    """Read the shipped service directory (`services/referral_router/directory/services.yaml`)."""
    text = (
        resources.files("services.referral_router")
        .joinpath("directory/services.yaml")
        .read_text(encoding="utf-8")
    )
    return directory_from_entries(yaml.safe_load(text)["services"])
