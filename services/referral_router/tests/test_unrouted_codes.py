"""Every unrouted programme carries its reason as a code, in the plan and in the ReferralRouted event.

One test per ``UnroutedReason``: the situation that gives it, the code on the wire, and the plain
words the notifier and people still read.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

from haven.eligibility.v1 import eligibility_pb2
from haven.referral.v1 import referral_pb2
from haven.routing.v1 import routing_pb2
from services.referral_router.domain import (
    ExistingTask,
    RoutingPlan,
    assessment_from_proto,
    load_directory,
    plan_reroute_after_rejection,
    plan_routing,
    plan_to_proto,
)
from services.referral_router.testing import assessed

ON = date(2024, 6, 1)
LONDON = "E09000001"  # AFRUCA (England) and Rise (London) cover it
CROYDON = "E09000008"  # ICTG site from 2019, Rise
MANCHESTER = "E08000003"  # ICTG site; no Rise
THERAPY = referral_pb2.SERVICE_ASKED_THERAPEUTIC_SUPPORT


def _codes(plan: RoutingPlan) -> dict[str, tuple[routing_pb2.UnroutedReason.ValueType, str]]:
    """The unrouted programmes of the plan's event: programme -> (code, reason)."""
    event = plan_to_proto(plan, plan.referral_id, sequence=1, occurred_at=datetime(2024, 6, 1, tzinfo=UTC))
    return {u.programme_id: (u.code, u.reason) for u in event.unrouted}


def _plan(event: eligibility_pb2.EligibilityAssessed, free: dict[str, int] | None = None) -> RoutingPlan:
    return plan_routing(assessment_from_proto(event), load_directory(), free or {}, {}, ON)


def test_an_ineligible_programme_is_coded_not_eligible() -> None:
    failed = eligibility_pb2.ProgrammeDecision(
        programme_id="afruca",
        outcome=eligibility_pb2.OUTCOME_INELIGIBLE,
        rules=[
            eligibility_pb2.RuleEvaluation(
                rule_id="afruca.entry.oda-country",
                statement="from an African ODA country",
                result=eligibility_pb2.RULE_RESULT_FAIL,
                citation="000 L1678",
            )
        ],
    )
    codes = _codes(_plan(assessed(LONDON, [], asked=THERAPY, decisions=[failed])))
    assert codes["afruca"][0] == routing_pb2.UNROUTED_REASON_NOT_ELIGIBLE
    assert "afruca.entry.oda-country" in codes["afruca"][1]
    # A programme with no decision at all is not eligible either (yet).
    assert codes["barnardos-west-yorkshire"][0] == routing_pb2.UNROUTED_REASON_NOT_ELIGIBLE


def test_a_programme_with_no_service_in_the_area_is_coded_no_service_in_area() -> None:
    elsewhere = eligibility_pb2.ProgrammeDecision(
        programme_id="coram-international", outcome=eligibility_pb2.OUTCOME_ELIGIBLE
    )
    codes = _codes(
        _plan(assessed(MANCHESTER, ["childrens-society-rise"], asked=THERAPY, decisions=[elsewhere]))
    )
    assert codes["childrens-society-rise"][0] == routing_pb2.UNROUTED_REASON_NO_SERVICE_IN_AREA
    assert "no childrens-society-rise service covers E08000003" in codes["childrens-society-rise"][1]
    # A programme the directory has no service for has none in the child's area either.
    assert codes["coram-international"][0] == routing_pb2.UNROUTED_REASON_NO_SERVICE_IN_AREA


def test_a_full_programme_is_coded_no_capacity() -> None:
    codes = _codes(_plan(assessed(LONDON, ["afruca"], asked=THERAPY), free={"afruca-therapy": 0}))
    assert codes["afruca"][0] == routing_pb2.UNROUTED_REASON_NO_CAPACITY
    assert codes["afruca"][1].startswith("no capacity")  # the notifier still reads these words


def test_an_eligible_programme_of_a_kind_not_asked_for_is_coded_not_asked() -> None:
    ictg = eligibility_pb2.ProgrammeDecision(
        programme_id="ictg", outcome=eligibility_pb2.OUTCOME_ELIGIBLE, route="direct-worker"
    )
    plan = _plan(
        assessed(CROYDON, ["childrens-society-rise"], asked=referral_pb2.SERVICE_ASKED_ICTG, decisions=[ictg])
    )
    codes = _codes(plan)
    assert [t.service_id for t in plan.tasks] == ["ictg"]
    assert codes["childrens-society-rise"][0] == routing_pb2.UNROUTED_REASON_NOT_ASKED
    assert [a.service_id for a in plan.alternatives] == ["childrens-society-rise"]
    # Not asked for is not an unmet need: the fallback does not list it as not routed.
    assert "childrens-society-rise" not in plan.fallback.summary


def test_a_programme_whose_every_service_declined_is_coded_candidates_exhausted() -> None:
    assessment = assessment_from_proto(assessed(MANCHESTER, ["afruca"], asked=THERAPY))
    declined = ExistingTask("task-1", "afruca", "afruca-therapy", "therapy", "rejected")
    plan = plan_reroute_after_rejection(assessment, load_directory(), {}, {}, ON, rejected=declined)
    codes = _codes(plan)
    assert plan.tasks == ()
    assert codes["afruca"][0] == routing_pb2.UNROUTED_REASON_CANDIDATES_EXHAUSTED
    assert "has declined" in codes["afruca"][1]


def test_every_unrouted_programme_has_a_code() -> None:
    for event in (
        assessed(LONDON, []),
        assessed(MANCHESTER, ["afruca", "unseen-specialist-accommodation"], asked=THERAPY),
        assessed(LONDON, ["afruca"], urgency=referral_pb2.URGENCY_EMERGENCY),
    ):
        codes = _codes(_plan(event, free={"afruca-therapy": 0, "unseen-cssw-home": 0}))
        assert codes
        assert all(code != routing_pb2.UNROUTED_REASON_UNSPECIFIED for code, _ in codes.values()), codes
