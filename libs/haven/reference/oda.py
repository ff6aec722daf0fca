"""The OECD DAC list of ODA recipients in force on a date, restricted to countries in Africa.

Each CSV row holds for the years `period_start_year`..`period_end_year` (a country has several rows
when its income group changed or it left the list within a period), so membership is read per year.
"""

from __future__ import annotations

import csv
from datetime import date
from functools import cache
from importlib import resources

_LIST_FILES = ("dac_list_2018-2020.csv", "dac_list_2021-2023.csv", "dac_list_2024-2026.csv")


@cache
def oda_africa_years() -> dict[int, frozenset[str]]:
    """Return, for every year the lists cover, the ISO alpha-2 codes of African ODA recipients."""
    by_year: dict[int, set[str]] = {}
    data = resources.files("haven.reference").joinpath("data")
    for name in _LIST_FILES:
        with data.joinpath(name).open(encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                for year in range(int(row["period_start_year"]), int(row["period_end_year"]) + 1):
                    members = by_year.setdefault(year, set())
                    if row["in_africa"] == "true":
                        members.add(row["iso3166_alpha2"])
    return {year: frozenset(codes) for year, codes in sorted(by_year.items())}


def oda_list_on(day: date) -> frozenset[str]:
    """Return the alpha-2 codes of African countries on the ODA list in force on `day`.

    Lists change on 1 January. Before the first year covered the earliest list is used, after the last
    year the latest one: a stale reference list must not make every child ineligible (say so in docs).
    """
    years = oda_africa_years()
    year = min(max(day.year, min(years)), max(years))
    return years[year]
