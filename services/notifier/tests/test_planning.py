from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from haven.eligibility.v1 import eligibility_pb2
from haven.notification.v1 import notification_pb2
from haven.referral.v1 import referral_pb2
from haven.routing.v1 import routing_pb2
from haven.task.v1 import task_pb2
from services.notifier.domain import (
    Anchor,
    Channel,
    Recipient,
    RecipientDirectory,
    RecipientRole,
    SourceEvent,
    TaskRef,
    UnknownEventTypeError,
    UnresolvedRecipientError,
    Urgency,
    event_types_for_assessed,
    event_types_for_routed,
    notification_id,
    notifications_for,
    recipients_for_routed,
    scheduled_events,
    source_event_from_task_rejected,
)
from services.notifier.domain.planning import NOTIFICATION_NAMESPACE
from services.notifier.tests.conftest import OCCURRED, routed

R = RecipientRole


def test_recipients_for_routed_finds_la_by_gss_providers_and_referrer() -> None:
    event = routed(
        tasks=(("t-1", "ictg", "ictg-gm", "ictg-provider"), ("t-2", "unseen", "cssw", "unseen-south-west"))
    )
    assert recipients_for_routed(event) == [
        Recipient("demo-la-manchester", R.LA_CHILDRENS_SERVICES),
        Recipient("ictg-provider", R.TASK_OWNER),
        Recipient("unseen-south-west", R.TASK_OWNER),
        Recipient("demo-police", R.REFERRER),
    ]


def test_the_edt_with_the_same_gss_is_not_taken_for_the_la() -> None:
    # demo-edt-manchester also lists E08000003; only kind local-authority is the LA's children's services.
    la = [r for r in recipients_for_routed(routed()) if r.role is R.LA_CHILDRENS_SERVICES]
    assert [r.organisation_id for r in la] == ["demo-la-manchester"]
    assert not [
        r for r in recipients_for_routed(routed(gss="E09000008")) if r.role is R.LA_CHILDRENS_SERVICES
    ]


def test_notification_id_is_uuid5_of_event_recipient_and_type_and_stable() -> None:
    first = notifications_for("referral-routed", routed())
    again = notifications_for("referral-routed", routed())
    assert [n.notification_id for n in first] == [n.notification_id for n in again]
    la = first[0]
    assert la.notification_id == str(
        uuid.uuid5(NOTIFICATION_NAMESPACE, "ev-1|demo-la-manchester|referral-routed")
    )
    assert la.notification_id == notification_id("ev-1", "demo-la-manchester", "referral-routed")
    other_type = notifications_for("no-capacity", routed(waiting=(("cssw", "unseen", 1),)))
    assert la.notification_id not in {n.notification_id for n in other_type}
    assert len({n.notification_id for n in first}) == len(first)


def test_each_provider_sees_only_its_own_task() -> None:
    event = routed(
        tasks=(("t-1", "ictg", "ictg-gm", "ictg-provider"), ("t-2", "unseen", "cssw", "unseen-south-west"))
    )
    by_org = {n.recipient_organisation_id: n for n in notifications_for("referral-routed", event)}
    assert by_org["ictg-provider"].payload["own_task_ids"] == ["t-1"]
    assert by_org["unseen-south-west"].payload["own_service_ids"] == ["cssw"]
    assert "cssw" not in by_org["ictg-provider"].payload_json.decode()
    assert "cssw" not in by_org["demo-police"].payload_json.decode()
    assert "plain words" not in by_org["demo-la-manchester"].payload_json.decode()


def test_caller_supplied_own_facts_cannot_leak_to_other_organisations() -> None:
    source = SourceEvent(
        event_id="ev-9",
        occurred_at=OCCURRED,
        referral_id="ref-1",
        local_authority_gss="E08000003",
        tasks=(TaskRef("t-1", "ictg", "ictg-gm", "ictg-provider"),),
        facts={"own_task_ids": ["t-secret"], "exiting_programme_ids": ["ictg"]},
    )
    planned = {n.recipient_organisation_id: n for n in notifications_for("eligibility-changed", source)}
    assert planned["ictg-provider"].payload["own_task_ids"] == ["t-1"]
    assert "own_task_ids" not in planned["demo-la-manchester"].payload


def test_an_la_that_referred_gets_one_notification_with_both_roles() -> None:
    event = routed(referrer="demo-la-manchester")
    planned = notifications_for("referral-routed", event)
    la = [n for n in planned if n.recipient_organisation_id == "demo-la-manchester"]
    assert len(la) == 1
    assert la[0].roles == (R.LA_CHILDRENS_SERVICES, R.REFERRER)
    # It placed the child, so it sees the placement through its LA role.
    assert la[0].payload["service_ids"] == ["ictg-gm"]
    assert la[0].urgency is Urgency.URGENT and la[0].deadline == timedelta(hours=1)


def test_emergency_without_bed_goes_to_edt_and_on_call_by_email(directory: RecipientDirectory) -> None:
    event = routed(tasks=(), escalate=True)
    assert event_types_for_routed(event) == ["referral-routed", "emergency-without-bed"]
    planned = {
        n.recipient_organisation_id: n
        for n in notifications_for("emergency-without-bed", event, directory=directory)
    }
    assert set(planned) == {"demo-edt-manchester", "haven-on-call", "demo-la-manchester", "demo-police"}
    assert planned["haven-on-call"].channel is Channel.EMAIL
    assert planned["demo-edt-manchester"].due_by == OCCURRED + timedelta(minutes=15)
    assert planned["demo-police"].payload == {
        "referral_id": "ref-1",
        "sequence": 2,
        "outcome": "no-service",
        "escalate_to_edt": True,
    }


def test_a_required_role_without_an_organisation_is_an_error() -> None:
    with pytest.raises(UnresolvedRecipientError, match="on-call-manager"):
        notifications_for("emergency-without-bed", routed(tasks=(), escalate=True))
    with pytest.raises(UnresolvedRecipientError, match="la-childrens-services"):
        notifications_for("referral-routed", routed(gss="E09000008"))
    with pytest.raises(UnknownEventTypeError):
        notifications_for("child-adopted", routed())


def test_event_types_for_a_rejection_with_no_free_place() -> None:
    event = routed(
        tasks=(),
        trigger=routing_pb2.ROUTING_TRIGGER_TASK_REJECTED,
        waiting=(("cssw", "unseen", 2), ("cssw-2", "unseen", 1)),
    )
    # task-rejected comes from the TaskStatusChanged (it alone has the reason), not from the re-route.
    assert event_types_for_routed(event) == ["referral-routed", "no-capacity"]
    la = notifications_for("no-capacity", event)[0]
    assert la.payload["waiting_list"] == {"unseen": 1} and la.payload["outcome"] == "waiting"


def test_no_capacity_also_when_a_programme_is_unrouted_for_lack_of_a_place() -> None:
    event = routed(tasks=())
    event.unrouted.add(programme_id="unseen", reason="no capacity: no covering service has a free place")
    assert event_types_for_routed(event) == ["referral-routed", "no-capacity"]
    other = routed(tasks=())
    other.unrouted.add(programme_id="unseen", reason="no service for this programme in the directory")
    assert event_types_for_routed(other) == ["referral-routed"]


def test_task_rejected_from_the_status_change_tells_la_and_referrer_not_the_provider() -> None:
    changed = task_pb2.TaskStatusChanged(
        event_id="tsc-1",
        referral_id="ref-1",
        task_id="task-9",
        programme_id="ictg",
        service_id="svc-1",
        owner_organisation_id="ictg-provider",
        local_authority_gss="E08000003",
        previous_status="requested",
        status="rejected",
        status_reason_code="no-capacity",
    )
    changed.occurred_at.FromDatetime(OCCURRED)
    source = source_event_from_task_rejected(changed, referrer_organisation_id="referrer-org")
    planned = {n.recipient_organisation_id: n for n in notifications_for("task-rejected", source)}
    assert "ictg-provider" not in planned and "referrer-org" in planned
    la = next(n for org, n in planned.items() if org != "referrer-org")
    assert la.payload["rejected_task_ids"] == ["task-9"]
    assert la.payload["rejection_reason_code"] == "no-capacity"
    assert planned["referrer-org"].payload == {
        "referral_id": "ref-1",
        "rejected_programme_ids": ["ictg"],
        "rejection_reason_code": "no-capacity",
    }
    assert len(planned) == 2  # no EDT: the re-route raises emergency-without-bed if it must


@pytest.mark.parametrize(
    ("trigger", "changed", "expected"),
    [
        (eligibility_pb2.TRIGGER_FACTS_UPDATED, ["ictg"], ["eligibility-changed"]),
        (eligibility_pb2.TRIGGER_SCHEDULED, ["ictg"], ["eligibility-changed"]),
        (eligibility_pb2.TRIGGER_REFERRAL_RECEIVED, ["ictg"], []),
        (eligibility_pb2.TRIGGER_UNSPECIFIED, ["ictg"], []),
        (eligibility_pb2.TRIGGER_SCHEDULED, [], []),
    ],
)
def test_eligibility_changed_only_for_a_later_assessment_that_changed_a_decision(
    trigger: eligibility_pb2.Trigger.ValueType, changed: list[str], expected: list[str]
) -> None:
    event = eligibility_pb2.EligibilityAssessed(
        event_id="a-1", referral_id="ref-1", trigger=trigger, changed_programmes=changed
    )
    assert event_types_for_assessed(event) == expected


def _missing(status: str, nrm: str = "rg-positive") -> SourceEvent:
    return SourceEvent(
        event_id="miss-1",
        occurred_at=OCCURRED,
        referral_id="ref-1",
        local_authority_gss="E08000003",
        tasks=(
            TaskRef("t-1", "ictg", "ictg-gm", "ictg-provider"),
            TaskRef("t-2", "unseen", "cssw", "unseen-south-west"),
        ),
        facts={
            "episode_id": "ep-1",
            "episode_status": status,
            "missing_since": OCCURRED - timedelta(hours=2),
            "last_seen_site_id": "cssw-site",
            "nrm_status": nrm,
            "child_id": "c-1",
        },
    )


def test_missing_child_reaches_police_la_edt_ictg_and_nrm_authority(directory: RecipientDirectory) -> None:
    planned = {
        n.recipient_organisation_id: n
        for n in notifications_for("missing-episode-reported", _missing("missing"), directory=directory)
    }
    assert {
        "gmp",
        "demo-la-manchester",
        "demo-edt-manchester",
        "ictg-provider",
        "single-competent-authority",
        "unseen-south-west",
    } == set(planned)
    assert planned["gmp"].payload["last_seen_site_id"] == "cssw-site"
    assert planned["gmp"].urgency is Urgency.IMMEDIATE
    assert planned["single-competent-authority"].channel is Channel.EMAIL
    assert "last_seen_site_id" not in planned["single-competent-authority"].payload
    # The ICTG that owns a task is told once, as ICTG and as task owner, at the stronger urgency.
    assert planned["ictg-provider"].roles == (R.ICTG, R.TASK_OWNER)
    assert planned["ictg-provider"].urgency is Urgency.URGENT


def test_found_child_is_told_to_the_nrm_authority_to_reopen(directory: RecipientDirectory) -> None:
    planned = notifications_for("missing-episode-reported", _missing("found"), directory=directory)
    nrm = next(n for n in planned if n.recipient_organisation_id == "single-competent-authority")
    assert nrm.payload["episode_status"] == "found"


def test_child_not_in_the_nrm_is_not_sent_to_the_competent_authority(directory: RecipientDirectory) -> None:
    planned = notifications_for(
        "missing-episode-reported", _missing("missing", "not-referred"), directory=directory
    )
    assert "single-competent-authority" not in {n.recipient_organisation_id for n in planned}


def test_missing_without_a_police_force_configured_is_an_error() -> None:
    with pytest.raises(UnresolvedRecipientError, match="police"):
        notifications_for(
            "missing-episode-reported",
            _missing("missing"),
            directory=RecipientDirectory(nrm_competent_authority="sca"),
        )


def test_scheduled_missing_reviews_and_long_term_closure_needs_a_person(
    directory: RecipientDirectory,
) -> None:
    since = datetime(2024, 1, 31, 22, 0, tzinfo=UTC)
    events = scheduled_events(Anchor.MISSING_SINCE, since)
    assert [(e.schedule_id, e.due_at) for e in events] == [
        ("multi-agency-missing-review", since + timedelta(days=28)),
        ("long-term-missing-closure", datetime(2024, 7, 31, 22, 0, tzinfo=UTC)),
    ]
    closure = events[1]
    assert closure.event_id("ref-1") == closure.event_id("ref-1") != events[0].event_id("ref-1")
    source = SourceEvent(
        event_id=closure.event_id("ref-1"),
        occurred_at=closure.raise_at,
        referral_id="ref-1",
        local_authority_gss="E08000003",
        tasks=(TaskRef("t-1", "ictg", "ictg-gm", "ictg-provider"),),
        facts={**closure.facts(), "episode_id": "ep-1"},
    )
    planned = {
        n.recipient_organisation_id: n for n in notifications_for("review-due", source, directory=directory)
    }
    assert set(planned) == {"demo-la-manchester", "ictg-provider"}
    assert planned["ictg-provider"].payload["requires_confirmation"] is True
    assert planned["ictg-provider"].payload["review_kind"] == "long-term-missing-closure"


def test_review_kind_alone_gets_confirmation_from_the_policy() -> None:
    source = SourceEvent(
        "ev-r", OCCURRED, "ref-1", "E08000003", facts={"review_kind": "long-term-missing-closure"}
    )
    (la,) = notifications_for("review-due", source)
    assert la.payload["requires_confirmation"] is True


def test_exit_alerts_and_leaving_care_only_at_18(directory: RecipientDirectory) -> None:
    def plan(kind: str) -> set[str]:
        source = SourceEvent(
            "ev-x",
            OCCURRED,
            "ref-1",
            "E08000003",
            tasks=(TaskRef("t-1", "ictg", "ictg-gm", "ictg-provider"),),
            facts={
                "schedule_id": "exit-90-days",
                "exit_date": "2025-06-01",
                "days_before_exit": 90,
                "exit_kind": kind,
                "programme_id": "ictg",
            },
        )
        return {
            n.recipient_organisation_id for n in notifications_for("exit-due", source, directory=directory)
        }

    assert plan("turns-18") == {"ictg-provider", "demo-la-manchester", "manchester-leaving-care"}
    assert plan("time-limit") == {"ictg-provider", "demo-la-manchester"}


def test_placement_reviews_start_at_72_hours() -> None:
    start = datetime(2024, 3, 31, 12, tzinfo=UTC)
    events = {e.schedule_id: e for e in scheduled_events(Anchor.PLACEMENT_START, start)}
    assert events["isa-72-hour"].due_at == start + timedelta(hours=72)
    assert events["review-1-month"].due_at == datetime(2024, 4, 30, 12, tzinfo=UTC)  # clamped to month end
    assert events["stay-limit-12-months"].raise_at == datetime(2025, 3, 3, 12, tzinfo=UTC)


def test_referral_received_emergency_goes_to_edt() -> None:
    event = referral_pb2.ReferralReceived(event_id="rr-1", referral_id="ref-1")
    event.occurred_at.FromDatetime(OCCURRED)
    event.facts.local_authority_gss = "E08000003"
    event.facts.urgency = referral_pb2.URGENCY_EMERGENCY
    event.facts.child_id = "c-1"
    event.facts.referrer.organisation_id = "demo-police"
    event.facts.referrer.kind = referral_pb2.REFERRER_KIND_POLICE
    event.facts.dates_of_birth.add(date="2009-05-01", basis=referral_pb2.DATE_OF_BIRTH_BASIS_CLAIMED)
    event.facts.dates_of_birth.add(date="2008-05-01", basis=referral_pb2.DATE_OF_BIRTH_BASIS_DOCUMENTED)
    planned = {n.recipient_organisation_id: n for n in notifications_for("referral-received", event)}
    assert set(planned) == {"demo-la-manchester", "demo-edt-manchester"}
    edt = planned["demo-edt-manchester"].payload
    assert edt["urgency"] == "emergency" and edt["referrer_kind"] == "police"
    assert edt["date_of_birth"] == "2008-05-01"  # the documented date wins over a claimed one
    assert "nrm_status" not in edt and planned["demo-la-manchester"].payload["nrm_status"] == "unknown"
    event.facts.urgency = referral_pb2.URGENCY_ROUTINE
    assert {n.recipient_organisation_id for n in notifications_for("referral-received", event)} == {
        "demo-la-manchester"
    }


def test_to_proto_carries_the_signed_bytes_and_deadline() -> None:
    planned = notifications_for("referral-routed", routed())[0]
    message = planned.to_proto(subscription_id="sub-1")
    assert message.notification_id == planned.notification_id
    assert message.channel == notification_pb2.CHANNEL_REST_HOOK
    assert json.loads(message.payload_json) == planned.payload
    assert message.due_by.ToDatetime(tzinfo=UTC) == OCCURRED + timedelta(hours=1)
    assert message.event_id == planned.to_proto().event_id != planned.notification_id
