"""Reference data shipped with Haven: the OECD DAC list of ODA recipients and local authorities.

The CSV and Markdown files in `data/` are copies of `/work/shared/reference/` with their SOURCES notes
(`ODA_SOURCES.md`, `LA_SOURCES.md`). The eligibility rules and the router both read them from here.
"""

from haven.reference.local_authorities import LocalAuthority, all_local_authorities, local_authority
from haven.reference.oda import oda_africa_years, oda_list_on

__all__ = [
    "LocalAuthority",
    "all_local_authorities",
    "local_authority",
    "oda_africa_years",
    "oda_list_on",
]
