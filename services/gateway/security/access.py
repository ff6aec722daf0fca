"""The gateway's access policy: pure functions of a Principal and the scope of a record.

Every referral record (ServiceRequest, Task) carries a `RecordScope`: the local authority
responsible for the child, the organisation that referred, and the organisations that own tasks on
it. One function, `search_filter_for`, says which scopes a role may see; `can_read` is that filter
applied to one record, so a search and a read can never disagree. Anything not granted is refused.

| role        | read and search records | refer | update Task | subscriptions | audit | directory | view     |
|-------------|-------------------------|-------|-------------|---------------|-------|-----------|----------|
| referrer    | those it referred       | yes   | no          | no            | no    | no        | full     |
| la-platform | those in its area (gss) | no    | its own     | its own       | no    | no        | full     |
| provider    | those it owns a task on | no    | its own     | its own       | no    | no        | full     |
| operator    | all                     | no    | no          | no            | read  | no        | pipeline |
| admin       | all                     | no    | no          | any           | read  | yes       | full     |

Moving a referral to another local authority (`can_move_local_authority`): the responsible LA
platform, the referrer and operators. Closing a referral (`can_close_referral`): the responsible LA
platform and operators. A move re-scopes the referral's records, so the new LA reads them and the
old one no longer does (docs/adr/0007-a-move-of-local-authority-re-scopes-the-records.md).

"refer": POST a referral Bundle. "its own" Task: the caller's organisation is among the task's
owners. Reads by operator and admin are always audited (`must_audit`), as is every create, update,
delete and operation.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Literal, Protocol, assert_never

from haven.kit.resources import RecordScope
from haven.organisations import Role

from .principal import Principal

SERVICE_REQUEST: Final = "ServiceRequest"
TASK: Final = "Task"
SUBSCRIPTION: Final = "Subscription"
AUDIT_EVENT: Final = "AuditEvent"
# The resource types whose records carry a RecordScope and are filtered by `search_filter_for`.
SCOPED_RESOURCE_TYPES: Final = frozenset({SERVICE_REQUEST, TASK})

Action = Literal["C", "R", "U", "D", "E"]


class ScopeLike(Protocol):
    """Anything carrying a record's scope; the store's own scope class (`haven.kit.resources`) fits."""

    @property
    def local_authority_gss(self) -> str:
        """The GSS code of the local authority responsible for the child ("" while unknown)."""
        ...

    @property
    def referrer_organisation_id(self) -> str:
        """The organisation that sent the referral."""
        ...

    @property
    def owner_organisation_ids(self) -> frozenset[str]:
        """The organisations that own a task on the record."""
        ...


class ScopeField(StrEnum):
    """The one RecordScope field a SearchFilter constrains; named as the field so a store can map it."""

    ANY = "any"
    NONE = "none"
    LOCAL_AUTHORITY = "local_authority_gss"
    REFERRER = "referrer_organisation_id"
    OWNER = "owner_organisation_ids"


@dataclass(frozen=True)
class SearchFilter:
    """The records a search may return: those whose `field` is one of `values` (OWNER: shares one).

    ANY admits every record, NONE admits nothing; a store translates this into its own query.
    """

    field: ScopeField
    values: frozenset[str] = frozenset()

    def admits(self, scope: ScopeLike) -> bool:
        """Return whether a record with this scope passes the filter."""
        match self.field:
            case ScopeField.ANY:
                return True
            case ScopeField.NONE:
                return False
            case ScopeField.LOCAL_AUTHORITY:
                return scope.local_authority_gss in self.values
            case ScopeField.REFERRER:
                return scope.referrer_organisation_id in self.values
            case ScopeField.OWNER:
                return not self.values.isdisjoint(scope.owner_organisation_ids)
            case _:
                assert_never(self.field)


_ADMIT_NOTHING: Final = SearchFilter(ScopeField.NONE)


def _only(field_: ScopeField, values: Iterable[str]) -> SearchFilter:
    # An empty value set (an LA platform with no area) must mean nothing, never "no constraint".
    kept = frozenset(v for v in values if v)
    return SearchFilter(field_, kept) if kept else _ADMIT_NOTHING


def search_filter_for(principal: Principal) -> SearchFilter:
    """Return the filter every ServiceRequest and Task search (and read) by `principal` must apply."""
    match principal.role:
        case Role.REFERRER:
            return _only(ScopeField.REFERRER, [principal.organisation_id])
        case Role.LA_PLATFORM:
            return _only(ScopeField.LOCAL_AUTHORITY, principal.gss_codes)
        case Role.PROVIDER:
            return _only(ScopeField.OWNER, [principal.organisation_id])
        case Role.OPERATOR | Role.ADMIN:
            return SearchFilter(ScopeField.ANY)
        case _:
            assert_never(principal.role)


def can_read(principal: Principal, scope: ScopeLike) -> bool:
    """Return whether `principal` may read a ServiceRequest or Task with this scope."""
    return search_filter_for(principal).admits(scope)


def can_search(principal: Principal, resource_type: str) -> bool:
    """Return whether `principal` may search `resource_type` at all (results still go through a filter)."""
    if resource_type in SCOPED_RESOURCE_TYPES:
        return search_filter_for(principal).field is not ScopeField.NONE
    if resource_type == SUBSCRIPTION:
        return subscription_filter_for(principal).field is not ScopeField.NONE
    if resource_type == AUDIT_EVENT:
        return can_read_audit(principal)
    return False


def can_create_referral(principal: Principal) -> bool:
    """Return whether `principal` may POST a referral Bundle (police, EDT, an LA acting as referrer)."""
    return principal.role is Role.REFERRER


def can_move_local_authority(principal: Principal, referral_scope: ScopeLike) -> bool:
    """Return whether `principal` may move a referral to another local authority.

    The responsible local authority hands the child over, the referrer may correct where it sent the
    referral, and operators fix what partners cannot; providers never change who is responsible.
    """
    if principal.role not in (Role.LA_PLATFORM, Role.REFERRER, Role.OPERATOR):
        return False
    return can_read(principal, referral_scope)


def can_close_referral(principal: Principal, referral_scope: ScopeLike) -> bool:
    """Return whether `principal` may close a referral (completed or revoked).

    The responsible local authority decides the child's case is over; operators close what is stuck
    or sent in error. A referrer's part ends with the referral, a provider's with its Task.
    """
    if principal.role not in (Role.LA_PLATFORM, Role.OPERATOR):
        return False
    return can_read(principal, referral_scope)


def can_update_task(principal: Principal, task_scope: ScopeLike) -> bool:
    """Return whether `principal` may accept, decline or report on this Task: only a task's owner may."""
    # Operators and admin may read every task but decide none: the decision belongs to the partner.
    if principal.role not in (Role.PROVIDER, Role.LA_PLATFORM):
        return False
    return principal.organisation_id in task_scope.owner_organisation_ids


def can_manage_subscriptions(principal: Principal, subscriber_organisation_id: str) -> bool:
    """Return whether `principal` may create, change or delete a Subscription held by that organisation."""
    return subscription_filter_for(principal).admits(
        RecordScope(owner_organisation_ids=frozenset({subscriber_organisation_id}))
    )


def subscription_filter_for(principal: Principal) -> SearchFilter:
    """Return the filter over Subscriptions (scoped by subscriber as OWNER) that `principal` may see."""
    match principal.role:
        case Role.LA_PLATFORM | Role.PROVIDER:
            return _only(ScopeField.OWNER, [principal.organisation_id])
        case Role.ADMIN:
            return SearchFilter(ScopeField.ANY)
        case Role.REFERRER | Role.OPERATOR:
            return _ADMIT_NOTHING
        case _:
            assert_never(principal.role)


def can_read_audit(principal: Principal) -> bool:
    """Return whether `principal` may read AuditEvents: operators and admin."""
    return principal.role in (Role.OPERATOR, Role.ADMIN)


def can_edit_directory(principal: Principal) -> bool:
    """Return whether `principal` may change the service directory (services, coverage, capacity): admin."""
    return principal.role is Role.ADMIN


class ReadView(StrEnum):
    """How much of a readable record to return."""

    FULL = "full"
    # Operators watch the pipeline: statuses, times, owners and references, not the child's facts.
    PIPELINE = "pipeline"


def read_view(principal: Principal) -> ReadView:
    """Return the view of a record `principal` gets once `can_read` has allowed it."""
    return ReadView.PIPELINE if principal.role is Role.OPERATOR else ReadView.FULL


def must_audit(principal: Principal, action: Action) -> bool:
    """Return whether this interaction must be recorded: every write, and every read by operator or admin."""
    # Operators and admin see every area, so their reads are the ones no relationship justifies.
    return action != "R" or principal.role in (Role.OPERATOR, Role.ADMIN)
