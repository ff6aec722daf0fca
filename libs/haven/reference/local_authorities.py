"""Upper-tier local authorities (children's services) in England and Wales, by ONS GSS code.

Validity comes from `valid_from_year` / `valid_to_year`: reorganisations end on 31 March and the
successor starts on 1 April (LA_SOURCES.md), except the Barnsley and Sheffield recoding of 2025.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import date
from functools import cache
from importlib import resources

# LA_SOURCES.md: "Barnsley/Sheffield end 30 Apr 2025, new codes 1 May 2025" (not 31 March / 1 April).
_ENDS_ON: dict[str, date] = {"E08000016": date(2025, 4, 30), "E08000019": date(2025, 4, 30)}
_STARTS_ON: dict[str, date] = {"E08000038": date(2025, 5, 1), "E08000039": date(2025, 5, 1)}


@dataclass(frozen=True, slots=True)
class LocalAuthority:
    """One authority code with its name, region, type and the dates the code is in force."""

    gss_code: str
    name: str
    region: str
    type: str
    valid_from: date
    valid_to: date | None

    def is_valid_on(self, day: date) -> bool:
        """Return whether the code is in force on `day` (both ends inclusive)."""
        return self.valid_from <= day and (self.valid_to is None or day <= self.valid_to)


@cache
def all_local_authorities() -> dict[str, LocalAuthority]:
    """Return every local authority in the reference file, keyed by GSS code."""
    path = resources.files("haven.reference").joinpath("data", "local_authorities.csv")
    authorities: dict[str, LocalAuthority] = {}
    with path.open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            code = row["gss_code"]
            to_year = row["valid_to_year"]
            authorities[code] = LocalAuthority(
                gss_code=code,
                name=row["name"],
                region=row["region"],
                type=row["type"],
                valid_from=_STARTS_ON.get(code, date(int(row["valid_from_year"]), 4, 1)),
                valid_to=_ENDS_ON.get(code, date(int(to_year), 3, 31)) if to_year else None,
            )
    return authorities


def local_authority(gss_code: str) -> LocalAuthority | None:
    """Return the authority with this GSS code, or None when the code is not in the reference."""
    return all_local_authorities().get(gss_code)
