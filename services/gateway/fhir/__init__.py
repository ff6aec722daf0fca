"""The gateway's FHIR R4 profile: posted referral Bundles and later Observations in, coded facts out.

Pure functions with no I/O; the HTTP app authenticates, stores and publishes around them.
The profile itself is described in docs/fhir/profile.md and encoded in `profile.py`.
"""

from .bundle import ParsedReferral, ReferrerContext, parse_referral_bundle
from .issues import FhirInputError, Issue, IssueType, operation_outcome
from .local_authorities import is_known_local_authority, is_well_formed_gss_code
from .observation import facts_from_observation, referral_id_from_observation
from .response import transaction_response_bundle

__all__ = [
    "FhirInputError",
    "Issue",
    "IssueType",
    "ParsedReferral",
    "ReferrerContext",
    "facts_from_observation",
    "is_known_local_authority",
    "is_well_formed_gss_code",
    "operation_outcome",
    "parse_referral_bundle",
    "referral_id_from_observation",
    "transaction_response_bundle",
]
