"""Checks on ONS GSS codes of the local authorities responsible for children's services.

`is_known_local_authority` asks the shared reference data (`haven.reference`, the ONS codes shipped
with the project), so the gateway, the rules and the router agree on which authorities exist.
"""

from __future__ import annotations

import re

from haven.reference import local_authority

# Upper-tier (E06 unitary, E08 metropolitan district, E09 London borough, E10 county, W06 Welsh
# principal council) and E07 (shire district), which is well formed but has no children's services.
GSS_CODE_PATTERN = re.compile(r"(E06|E07|E08|E09|E10|W06)\d{6}")
SHIRE_DISTRICT_PREFIX = "E07"


def is_well_formed_gss_code(code: str) -> bool:
    """Whether `code` has the shape of a local-authority GSS code (for example E08000003)."""
    return GSS_CODE_PATTERN.fullmatch(code) is not None


def is_known_local_authority(code: str) -> bool:
    """Whether `code` names a local authority with children's services in England or Wales.

    Authorities abolished since 2019 are still known (a referral may name the old code); whether
    one was in force on a given date is for the shared reference loader to answer.
    """
    return local_authority(code) is not None
