"""Unit tests for the shipped directory, its FHIR form and its coverage dates."""

from __future__ import annotations

import copy
import csv
from datetime import date
from pathlib import Path

import pytest

from haven.organisations import load_organisations
from services.referral_router.domain import (
    DirectoryError,
    directory_from_healthcare_services,
    healthcare_service_to_fhir,
    load_directory,
)

LA_CSV = Path("/work/shared/reference/la/local_authorities.csv")


def test_every_service_is_provided_by_a_registered_provider() -> None:
    organisations = load_organisations()
    for service in load_directory().services:
        assert organisations[service.provided_by].kind == "provider"


def test_ictg_sites_and_their_start_dates() -> None:
    ictg = load_directory().get("ictg")
    assert ictg is not None
    welsh = {p.gss for p in ictg.coverage if p.gss.startswith("W06")}
    assert len(welsh) == 22
    assert ictg.covers("E06000046", date(2017, 1, 1))  # Isle of Wight
    assert not ictg.covers("E08000026", date(2018, 9, 30)) and ictg.covers("E08000026", date(2018, 10, 1))
    assert not ictg.covers("E09000008", date(2019, 3, 31)) and ictg.covers("E09000008", date(2019, 4, 1))
    assert not ictg.covers("E09000025", date(2024, 1, 1))  # Newham: no ICTG site
    # Northamptonshire until its abolition, its successors after (reference/la/combined_areas.md).
    assert ictg.covers("E10000021", date(2021, 3, 31)) and not ictg.covers("E10000021", date(2021, 4, 1))
    assert ictg.covers("E06000062", date(2021, 4, 1))


@pytest.mark.skipif(not LA_CSV.exists(), reason="shared reference data not mounted")
def test_coverage_names_only_real_local_authorities() -> None:
    with LA_CSV.open(encoding="utf-8") as handle:
        known = {row["gss_code"] for row in csv.DictReader(handle)}
    for service in load_directory().services:
        assert {p.gss for p in service.coverage} <= known, service.id


def test_unseen_home_has_three_beds_and_a_confidential_location() -> None:
    home = load_directory().get("unseen-cssw-home")
    assert home is not None and home.places is not None
    assert home.places.count == 3 and home.all_day
    assert home.location is not None and home.location.address_confidential
    fhir = healthcare_service_to_fhir(home)
    assert "address" not in fhir["contained"][0]


def test_fhir_round_trip_gives_back_the_same_directory() -> None:
    directory = load_directory()
    resources = [healthcare_service_to_fhir(s) for s in directory.services]
    assert directory_from_healthcare_services(resources) == directory


def test_a_put_healthcare_service_replaces_one_entry() -> None:
    directory = load_directory()
    home = healthcare_service_to_fhir(directory.get("unseen-cssw-home"))  # type: ignore[arg-type]
    changed = copy.deepcopy(home)
    changed["extension"][-1]["extension"][1]["valueInteger"] = 4
    (replacement,) = directory_from_healthcare_services([changed]).services
    updated = directory.with_service(replacement)
    assert updated.get("unseen-cssw-home").places.count == 4  # type: ignore[union-attr]
    assert [s.id for s in updated.services] == [s.id for s in directory.services]


def test_unknown_provider_and_bad_coverage_are_refused() -> None:
    resource = healthcare_service_to_fhir(load_directory().services[0])
    unknown = copy.deepcopy(resource)
    unknown["providedBy"] = {"reference": "Organization/nobody"}
    with pytest.raises(DirectoryError, match="unknown providing organisation"):
        directory_from_healthcare_services([unknown])
    bad_date = copy.deepcopy(resource)
    bad_date["coverageArea"][0]["extension"][0]["valuePeriod"]["start"] = "2017"
    with pytest.raises(DirectoryError, match="ISO start"):
        directory_from_healthcare_services([bad_date])
    with pytest.raises(DirectoryError, match="duplicate"):
        directory_from_healthcare_services([resource, resource])
