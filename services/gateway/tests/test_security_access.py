"""The access matrix as data: every role against records in and out of its area, referrals and tasks."""

import pytest

from haven.organisations import Role, get_organisation
from services.gateway.security import (
    Principal,
    ReadView,
    RecordScope,
    ScopeField,
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
from services.gateway.security.access import Action

MANCHESTER, LEEDS = "E08000003", "E08000035"


def acting(organisation_id: str, role: Role) -> Principal:
    org = get_organisation(organisation_id)
    assert role in org.roles
    return Principal(organisation_id, role, org.gss_codes, org.referrer_kind)


PRINCIPALS = {
    "police": acting("demo-police", Role.REFERRER),
    "edt-manchester": acting("demo-edt-manchester", Role.REFERRER),
    "la-manchester-referring": acting("demo-la-manchester", Role.REFERRER),
    "la-manchester-platform": acting("demo-la-manchester", Role.LA_PLATFORM),
    "la-leeds-platform": acting("demo-la-leeds", Role.LA_PLATFORM),
    "ictg": acting("ictg-provider", Role.PROVIDER),
    "barnardos": acting("barnardos-west-yorkshire", Role.PROVIDER),
    "afruca": acting("afruca", Role.PROVIDER),
    "operator": acting("demo-operator", Role.OPERATOR),
    "admin": acting("demo-operator", Role.ADMIN),
}

RECORDS = {
    "manchester, by police, ictg owns": RecordScope(MANCHESTER, "demo-police", frozenset({"ictg-provider"})),
    "manchester, by edt, no owner": RecordScope(MANCHESTER, "demo-edt-manchester"),
    "leeds, by leeds LA, barnardos owns": RecordScope(
        LEEDS, "demo-la-leeds", frozenset({"barnardos-west-yorkshire"})
    ),
    "leeds, by police, ictg and afruca own": RecordScope(
        LEEDS, "demo-police", frozenset({"ictg-provider", "afruca"})
    ),
    "no area yet, by manchester LA": RecordScope("", "demo-la-manchester"),
}

# Which records each principal may read; every other pair in PRINCIPALS x RECORDS must be refused.
READABLE = {
    # A referrer sees what it sent, even outside its area, and nothing else in its area.
    "police": {"manchester, by police, ictg owns", "leeds, by police, ictg and afruca own"},
    "edt-manchester": {"manchester, by edt, no owner"},
    "la-manchester-referring": {"no area yet, by manchester LA"},
    # An LA platform sees its area, whoever referred; not its own referral before an area is known.
    "la-manchester-platform": {"manchester, by police, ictg owns", "manchester, by edt, no owner"},
    "la-leeds-platform": {"leeds, by leeds LA, barnardos owns", "leeds, by police, ictg and afruca own"},
    # A provider sees only records it owns a task on, in any area.
    "ictg": {"manchester, by police, ictg owns", "leeds, by police, ictg and afruca own"},
    "barnardos": {"leeds, by leeds LA, barnardos owns"},
    "afruca": {"leeds, by police, ictg and afruca own"},
    "operator": set(RECORDS),
    "admin": set(RECORDS),
}


@pytest.mark.parametrize("principal", PRINCIPALS)
@pytest.mark.parametrize("record", RECORDS)
def test_read_matrix(principal: str, record: str) -> None:
    assert can_read(PRINCIPALS[principal], RECORDS[record]) is (record in READABLE[principal])


@pytest.mark.parametrize("principal", PRINCIPALS)
def test_search_filter_returns_exactly_the_readable_records(principal: str) -> None:
    search = search_filter_for(PRINCIPALS[principal])
    assert {name for name, scope in RECORDS.items() if search.admits(scope)} == READABLE[principal]


@pytest.mark.parametrize(
    ("principal", "expected"),
    [
        ("police", SearchFilter(ScopeField.REFERRER, frozenset({"demo-police"}))),
        ("la-manchester-platform", SearchFilter(ScopeField.LOCAL_AUTHORITY, frozenset({MANCHESTER}))),
        ("ictg", SearchFilter(ScopeField.OWNER, frozenset({"ictg-provider"}))),
        ("operator", SearchFilter(ScopeField.ANY)),
        ("admin", SearchFilter(ScopeField.ANY)),
    ],
)
def test_search_filter_names_the_scope_field_a_store_filters_on(
    principal: str, expected: SearchFilter
) -> None:
    assert search_filter_for(PRINCIPALS[principal]) == expected


def test_an_la_platform_with_no_area_sees_nothing_rather_than_everything() -> None:
    no_area = Principal("demo-la-manchester", Role.LA_PLATFORM, frozenset())
    assert search_filter_for(no_area) == SearchFilter(ScopeField.NONE)
    assert not any(can_read(no_area, scope) for scope in RECORDS.values())
    assert not can_search(no_area, "Task")


OWN_TASK = {
    "la-manchester-platform": RecordScope(MANCHESTER, "demo-police", frozenset({"demo-la-manchester"})),
    "ictg": RecordScope(MANCHESTER, "demo-police", frozenset({"ictg-provider"})),
}


@pytest.mark.parametrize("principal", PRINCIPALS)
@pytest.mark.parametrize("record", RECORDS)
def test_only_an_owner_updates_a_task(principal: str, record: str) -> None:
    who, task = PRINCIPALS[principal], RECORDS[record]
    expected = (
        who.role in (Role.PROVIDER, Role.LA_PLATFORM) and who.organisation_id in task.owner_organisation_ids
    )
    assert can_update_task(who, task) is expected


@pytest.mark.parametrize("principal", OWN_TASK)
def test_an_owner_updates_its_own_task(principal: str) -> None:
    assert can_update_task(PRINCIPALS[principal], OWN_TASK[principal])


def test_an_la_platform_does_not_decide_a_providers_task_in_its_own_area() -> None:
    assert not can_update_task(
        PRINCIPALS["la-manchester-platform"], RECORDS["manchester, by police, ictg owns"]
    )


# role: (create referral, read audit, edit directory, read view)
ROLE_RIGHTS: dict[str, tuple[bool, bool, bool, ReadView]] = {
    "police": (True, False, False, ReadView.FULL),
    "edt-manchester": (True, False, False, ReadView.FULL),
    "la-manchester-referring": (True, False, False, ReadView.FULL),
    "la-manchester-platform": (False, False, False, ReadView.FULL),
    "ictg": (False, False, False, ReadView.FULL),
    "operator": (False, True, False, ReadView.PIPELINE),
    "admin": (False, True, True, ReadView.FULL),
}


@pytest.mark.parametrize("principal", ROLE_RIGHTS)
def test_role_rights(principal: str) -> None:
    who = PRINCIPALS[principal]
    rights = (can_create_referral(who), can_read_audit(who), can_edit_directory(who), read_view(who))
    assert rights == ROLE_RIGHTS[principal]


# role: (own subscriptions, another organisation's subscriptions)
SUBSCRIPTION_RIGHTS = {
    "police": (False, False),
    "la-manchester-referring": (False, False),
    "la-manchester-platform": (True, False),
    "ictg": (True, False),
    "operator": (False, False),
    "admin": (True, True),
}


@pytest.mark.parametrize("principal", SUBSCRIPTION_RIGHTS)
def test_subscription_rights(principal: str) -> None:
    who = PRINCIPALS[principal]
    own, other = SUBSCRIPTION_RIGHTS[principal]
    assert can_manage_subscriptions(who, who.organisation_id) is own
    assert can_manage_subscriptions(who, "afruca" if who.organisation_id != "afruca" else "ictg") is other
    assert (subscription_filter_for(who).field is not ScopeField.NONE) is own


SEARCHABLE = {
    "police": {"ServiceRequest", "Task"},
    "la-manchester-platform": {"ServiceRequest", "Task", "Subscription"},
    "ictg": {"ServiceRequest", "Task", "Subscription"},
    "operator": {"ServiceRequest", "Task", "AuditEvent"},
    "admin": {"ServiceRequest", "Task", "Subscription", "AuditEvent"},
}
RESOURCE_TYPES = ["ServiceRequest", "Task", "Subscription", "AuditEvent", "Patient", "Observation", "Bundle"]


@pytest.mark.parametrize("principal", SEARCHABLE)
@pytest.mark.parametrize("resource_type", RESOURCE_TYPES)
def test_search_matrix(principal: str, resource_type: str) -> None:
    assert can_search(PRINCIPALS[principal], resource_type) is (resource_type in SEARCHABLE[principal])


AUDITED_READS = {"operator", "admin"}
ACTIONS: list[Action] = ["C", "R", "U", "D", "E"]


@pytest.mark.parametrize("principal", PRINCIPALS)
@pytest.mark.parametrize("action", ACTIONS)
def test_every_write_and_every_privileged_read_is_audited(principal: str, action: Action) -> None:
    assert must_audit(PRINCIPALS[principal], action) is (action != "R" or principal in AUDITED_READS)
