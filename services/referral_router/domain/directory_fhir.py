"""FHIR R4 HealthcareService JSON to and from directory entries, so an admin can PUT one service.

Standard elements carry what they mean (providedBy, program, category, telecom, availableTime,
location); Haven extensions carry what FHIR has no element for: the dated coverage of each LA (on each
`coverageArea` reference, which names the LA by its GSS identifier), the places, the routes and the
ranking weight. A confidential Location travels as a contained resource without an address.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date
from typing import Any, Final

from haven.canonical import CANONICAL_BASE, CS_PROGRAMME, ONS_GSS
from services.referral_router.domain.directory import (
    ContactPoint,
    CoveragePeriod,
    Directory,
    DirectoryError,
    HealthcareService,
    Location,
    Places,
    PlaceUnit,
    ServiceCategory,
    make_directory,
)

BASE: Final = CANONICAL_BASE
CS_SERVICE_CATEGORY: Final = f"{BASE}/CodeSystem/service-category"
CS_PLACE_UNIT: Final = f"{BASE}/CodeSystem/place-unit"
EXT_COVERAGE_PERIOD: Final = f"{BASE}/StructureDefinition/coverage-period"
EXT_PLACES: Final = f"{BASE}/StructureDefinition/service-places"
EXT_ROUTE: Final = f"{BASE}/StructureDefinition/service-route"
EXT_SPECIFICITY: Final = f"{BASE}/StructureDefinition/service-specificity"
EXT_ADDRESS_CONFIDENTIAL: Final = f"{BASE}/StructureDefinition/address-confidential"
ALL_DAYS: Final = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def _organisation_id(reference: str) -> str:
    prefix = "Organization/"
    if not reference.startswith(prefix):
        raise DirectoryError(f"providedBy must reference an Organization, not {reference!r}")
    return reference.removeprefix(prefix)


def _extensions(element: Mapping[str, Any], url: str) -> list[Mapping[str, Any]]:
    return [e for e in element.get("extension", []) if e.get("url") == url]


def _sub_value(extension: Mapping[str, Any], url: str, kind: str) -> Any:
    for sub in extension.get("extension", []):
        if sub.get("url") == url:
            return sub.get(kind)
    return None


def _code(concepts: Iterable[Mapping[str, Any]], system: str) -> str:
    for concept in concepts:
        for coding in concept.get("coding", []):
            if coding.get("system") == system:
                return str(coding["code"])
    raise DirectoryError(f"no coding from {system}")


def _coverage(area: Mapping[str, Any], service_id: str) -> CoveragePeriod:
    identifier = area.get("identifier", {})
    if identifier.get("system") != ONS_GSS:
        raise DirectoryError(f"{service_id}: coverageArea must name an LA by its ONS GSS identifier")
    periods = _extensions(area, EXT_COVERAGE_PERIOD)
    if len(periods) != 1:
        raise DirectoryError(f"{service_id}: each coverageArea needs one coverage-period extension")
    period = periods[0].get("valuePeriod", {})
    try:
        start = date.fromisoformat(period["start"])
        end = date.fromisoformat(period["end"]) if period.get("end") else None
    except (KeyError, ValueError):
        raise DirectoryError(
            f"{service_id}: coverage of {identifier.get('value')} needs an ISO start"
        ) from None
    return CoveragePeriod(gss=str(identifier["value"]), start=start, end=end)


def _specificity(resource: Mapping[str, Any], url: str, kind: str) -> Any:
    found = _extensions(resource, EXT_SPECIFICITY)
    return _sub_value(found[0], url, kind) if found else None


def _places(resource: Mapping[str, Any]) -> Places | None:
    found = _extensions(resource, EXT_PLACES)
    if not found:
        return None
    unit = _sub_value(found[0], "unit", "valueCoding") or {}
    return Places(
        unit=PlaceUnit(str(unit.get("code"))),
        count=int(_sub_value(found[0], "count", "valueInteger")),
        basis=str(_sub_value(found[0], "basis", "valueString") or ""),
    )


def _location(resource: Mapping[str, Any]) -> Location | None:
    contained = [r for r in resource.get("contained", []) if r.get("resourceType") == "Location"]
    if not contained:
        return None
    found = contained[0]
    la = found.get("managingOrganization", {}).get("identifier", {})
    return Location(
        id=str(found["id"]),
        name=str(found.get("name", "")),
        local_authority_gss=str(la.get("value", "")),
        address_confidential=any(e.get("valueBoolean") for e in _extensions(found, EXT_ADDRESS_CONFIDENTIAL)),
    )


def healthcare_service_from_fhir(resource: Mapping[str, Any]) -> HealthcareService:
    """Read one FHIR HealthcareService resource; raise DirectoryError when it cannot be used."""
    if resource.get("resourceType") != "HealthcareService":
        raise DirectoryError("not a HealthcareService")
    service_id = str(resource.get("id", ""))
    try:
        available = resource.get("availableTime", [])
        return HealthcareService(
            id=service_id,
            name=str(resource.get("name", "")),
            provided_by=_organisation_id(resource["providedBy"]["reference"]),
            programme_id=_code(resource.get("program", []), CS_PROGRAMME),
            category=ServiceCategory(_code(resource.get("category", []), CS_SERVICE_CATEGORY)),
            routes=tuple(str(e["valueCode"]) for e in _extensions(resource, EXT_ROUTE)),
            coverage=tuple(_coverage(a, service_id) for a in resource.get("coverageArea", [])),
            specificity=int(_specificity(resource, "weight", "valueInteger") or 0),
            specificity_basis=str(_specificity(resource, "basis", "valueString") or ""),
            all_day=any(t.get("allDay") and set(t.get("daysOfWeek", [])) == set(ALL_DAYS) for t in available),
            all_day_basis=str(resource.get("availabilityExceptions", "")),
            places=_places(resource),
            telecom=tuple(
                ContactPoint(str(t["system"]), str(t["value"])) for t in resource.get("telecom", [])
            ),
            location=_location(resource),
            active=bool(resource.get("active", True)),
        )
    except (KeyError, TypeError, ValueError) as error:
        if isinstance(error, DirectoryError):
            raise
        raise DirectoryError(f"{service_id or 'HealthcareService'}: {error!r}") from None


def directory_from_healthcare_services(resources: Iterable[Mapping[str, Any]]) -> Directory:
    """Build a Directory from FHIR HealthcareService resources (one per service)."""
    return make_directory(healthcare_service_from_fhir(r) for r in resources)


def _coverage_area(period: CoveragePeriod) -> dict[str, Any]:
    value_period = {"start": period.start.isoformat()}
    if period.end is not None:
        value_period["end"] = period.end.isoformat()
    return {
        "identifier": {"system": ONS_GSS, "value": period.gss},
        "extension": [{"url": EXT_COVERAGE_PERIOD, "valuePeriod": value_period}],
    }


def _location_resource(location: Location) -> dict[str, Any]:
    # No address element at all: a confidential home's address must not leave Haven (002 L1839).
    return {
        "resourceType": "Location",
        "id": location.id,
        "name": location.name,
        "managingOrganization": {"identifier": {"system": ONS_GSS, "value": location.local_authority_gss}},
        "extension": [{"url": EXT_ADDRESS_CONFIDENTIAL, "valueBoolean": location.address_confidential}],
    }


def healthcare_service_to_fhir(service: HealthcareService) -> dict[str, Any]:
    """Write one service as a FHIR R4 HealthcareService resource (the inverse of the reader)."""
    extension: list[dict[str, Any]] = [{"url": EXT_ROUTE, "valueCode": r} for r in service.routes]
    extension.append(
        {
            "url": EXT_SPECIFICITY,
            "extension": [
                {"url": "weight", "valueInteger": service.specificity},
                {"url": "basis", "valueString": service.specificity_basis},
            ],
        }
    )
    if service.places is not None:
        extension.append(
            {
                "url": EXT_PLACES,
                "extension": [
                    {
                        "url": "unit",
                        "valueCoding": {"system": CS_PLACE_UNIT, "code": str(service.places.unit)},
                    },
                    {"url": "count", "valueInteger": service.places.count},
                    {"url": "basis", "valueString": service.places.basis},
                ],
            }
        )
    resource: dict[str, Any] = {
        "resourceType": "HealthcareService",
        "id": service.id,
        "active": service.active,
        "name": service.name,
        "providedBy": {"reference": f"Organization/{service.provided_by}"},
        "program": [{"coding": [{"system": CS_PROGRAMME, "code": service.programme_id}]}],
        "category": [{"coding": [{"system": CS_SERVICE_CATEGORY, "code": str(service.category)}]}],
        "coverageArea": [_coverage_area(p) for p in service.coverage],
        "telecom": [{"system": t.system, "value": t.value} for t in service.telecom],
        "extension": extension,
    }
    if service.all_day:
        resource["availableTime"] = [{"daysOfWeek": ALL_DAYS, "allDay": True}]
    if service.all_day_basis:
        resource["availabilityExceptions"] = service.all_day_basis
    if service.location is not None:
        resource["contained"] = [_location_resource(service.location)]
        resource["location"] = [{"reference": f"#{service.location.id}"}]
    return resource
