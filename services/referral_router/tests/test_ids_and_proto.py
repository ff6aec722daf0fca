"""Unit tests for deterministic ids, the ReferralRouted converter and the EligibilityAssessed reader."""

from __future__ import annotations

from datetime import UTC, date, datetime

from haven.eligibility.v1 import eligibility_pb2
from haven.referral.v1 import referral_pb2
from haven.routing.v1 import routing_pb2
from services.referral_router.domain import (
    Answer,
    Outcome,
    ReferrerKind,
    ServiceAsked,
    Urgency,
    assessment_from_proto,
    load_directory,
    plan_routing,
    plan_to_proto,
    task_id_for,
)
from services.referral_router.domain.to_proto import routed_event_id_for


def _event() -> eligibility_pb2.EligibilityAssessed:
    facts = referral_pb2.ReferralFacts(
        local_authority_gss="E08000003",
        urgency=referral_pb2.URGENCY_EMERGENCY,
        service_asked=referral_pb2.SERVICE_ASKED_ANY,
        referrer=referral_pb2.Referrer(organisation_id="demo-police", kind=referral_pb2.REFERRER_KIND_POLICE),
        nrm_status=referral_pb2.NRM_STATUS_NOT_REFERRED,
        parental_responsibility_in_uk=referral_pb2.ANSWER_NO,
    )
    ictg = eligibility_pb2.ProgrammeDecision(
        programme_id="ictg", outcome=eligibility_pb2.OUTCOME_ELIGIBLE, route="direct-worker"
    )
    home = eligibility_pb2.ProgrammeDecision(
        programme_id="unseen-specialist-accommodation", outcome=eligibility_pb2.OUTCOME_ELIGIBLE
    )
    afruca = eligibility_pb2.ProgrammeDecision(
        programme_id="afruca",
        outcome=eligibility_pb2.OUTCOME_INELIGIBLE,
        rules=[
            eligibility_pb2.RuleEvaluation(
                rule_id="afruca.entry.age", result=eligibility_pb2.RULE_RESULT_PASS
            ),
            eligibility_pb2.RuleEvaluation(
                rule_id="afruca.entry.oda-country",
                statement="from an African ODA country",
                result=eligibility_pb2.RULE_RESULT_FAIL,
                citation="000 L1678",
            ),
        ],
    )
    return eligibility_pb2.EligibilityAssessed(
        referral_id="ref-42", facts=facts, decisions=[ictg, home, afruca]
    )


def test_assessment_from_proto_reads_routing_facts_and_failing_rules() -> None:
    assessment = assessment_from_proto(_event())
    assert assessment.facts.urgency is Urgency.EMERGENCY
    assert assessment.facts.service_asked is ServiceAsked.ANY
    assert assessment.facts.referrer_kind is ReferrerKind.POLICE
    assert assessment.facts.parental_responsibility_in_uk is Answer.NO
    afruca = assessment.decision_for("afruca")
    assert afruca is not None and afruca.outcome is Outcome.INELIGIBLE
    assert [r.rule_id for r in afruca.failed_rules] == ["afruca.entry.oda-country"]


def test_task_ids_are_stable_and_distinct() -> None:
    assert task_id_for("ref-1", 1, "ictg", 0) == task_id_for("ref-1", 1, "ictg", 0)
    ids = {
        task_id_for("ref-1", 1, "ictg", 0),
        task_id_for("ref-2", 1, "ictg", 0),
        task_id_for("ref-1", 2, "ictg", 0),
        task_id_for("ref-1", 1, "unseen-cssw-home", 0),
        task_id_for("ref-1", 1, "ictg", 1),
    }
    assert len(ids) == 5
    assert routed_event_id_for("ref-1", 1) != routed_event_id_for("ref-1", 2)


def test_plan_to_proto_is_the_same_event_on_redelivery() -> None:
    plan = plan_routing(assessment_from_proto(_event()), load_directory(), {}, {}, date(2024, 6, 1))
    at = datetime(2024, 6, 1, 2, 30, tzinfo=UTC)
    event = plan_to_proto(plan, "ref-42", sequence=3, occurred_at=at)
    again = plan_to_proto(plan, "ref-42", sequence=3, occurred_at=at)
    assert event.SerializeToString(deterministic=True) == again.SerializeToString(deterministic=True)
    assert event.event_id == routed_event_id_for("ref-42", 3)
    assert event.trigger == routing_pb2.ROUTING_TRIGGER_ASSESSED
    assert [(t.service_id, t.route, t.owner_organisation_id) for t in event.tasks] == [
        ("ictg", "direct-worker", "ictg-provider"),
        ("unseen-cssw-home", "emergency-placement", "demo-edt-manchester"),
    ]
    assert [t.task_id for t in event.tasks] == [
        task_id_for("ref-42", 3, "ictg", 0),
        task_id_for("ref-42", 3, "unseen-cssw-home", 1),
    ]
    assert all(t.status == "requested" for t in event.tasks)
    assert event.fallback.inform_local_authority and not event.fallback.escalate_to_edt
    assert {u.programme_id for u in event.unrouted} >= {"afruca"}
    assert event.occurred_at.ToDatetime(tzinfo=UTC) == at
    assert plan.places_to_reserve == ("unseen-cssw-home",)
