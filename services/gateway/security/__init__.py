"""The gateway's security: who is calling (tokens), what they may touch (access), what is recorded (audit).

Pure functions and small classes with no I/O beyond the dev key file and the JWKS fetch; the HTTP app
reads the bearer token, calls `verify_token`, asks `access` before every read and write, and stores
the `audit_event` it builds. The access matrix is documented in `README.md` beside this package.
"""

from haven.kit.resources import RecordScope

from .access import (
    ReadView,
    ScopeField,
    ScopeLike,
    SearchFilter,
    can_create_referral,
    can_edit_directory,
    can_manage_subscriptions,
    can_read,
    can_read_audit,
    can_search,
    can_update_task,
    must_audit,
    read_view,
    search_filter_for,
    subscription_filter_for,
)
from .audit import Outcome, Purpose, audit_event, outcome_for_status
from .errors import AuthenticationError, AuthFailure, KeySourceUnavailableError, SigningKeyError
from .keys import DEV_ISSUER, HmacTokenVerifier, JwksTokenVerifier, TokenVerifier, load_or_create_dev_key
from .principal import Principal
from .tokens import AUDIENCE, TokenRequestError, issue_token, token_from_authorization, verify_token

__all__ = [
    "AUDIENCE",
    "DEV_ISSUER",
    "AuthFailure",
    "AuthenticationError",
    "HmacTokenVerifier",
    "JwksTokenVerifier",
    "KeySourceUnavailableError",
    "Outcome",
    "Principal",
    "Purpose",
    "ReadView",
    "RecordScope",
    "ScopeField",
    "ScopeLike",
    "SearchFilter",
    "SigningKeyError",
    "TokenRequestError",
    "TokenVerifier",
    "audit_event",
    "can_create_referral",
    "can_edit_directory",
    "can_manage_subscriptions",
    "can_read",
    "can_read_audit",
    "can_search",
    "can_update_task",
    "issue_token",
    "load_or_create_dev_key",
    "must_audit",
    "outcome_for_status",
    "read_view",
    "search_filter_for",
    "subscription_filter_for",
    "token_from_authorization",
    "verify_token",
]
