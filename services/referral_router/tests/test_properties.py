"""Property tests: whatever the capacity and facts, a plan keeps the router's invariants."""

from __future__ import annotations

from datetime import date

from hypothesis import given, settings
from hypothesis import strategies as st

from services.referral_router.domain import (
    Assessment,
    Outcome,
    ProgrammeDecision,
    ReferrerKind,
    RoutingFacts,
    ServiceAsked,
    Urgency,
    load_directory,
    plan_routing,
)

DIRECTORY = load_directory()
SERVICE_IDS = [s.id for s in DIRECTORY.services]
PROGRAMMES = sorted({s.programme_id for s in DIRECTORY.services})
AREAS = ["E08000003", "E08000035", "E09000025", "E09000008", "W06000015", "E06000023"]


@settings(max_examples=150, deadline=None)
@given(
    area=st.sampled_from(AREAS),
    urgency=st.sampled_from(list(Urgency)),
    asked=st.sampled_from(list(ServiceAsked)),
    referrer=st.sampled_from(list(ReferrerKind)),
    outcomes=st.lists(st.sampled_from(list(Outcome)), min_size=len(PROGRAMMES), max_size=len(PROGRAMMES)),
    free=st.dictionaries(st.sampled_from(SERVICE_IDS), st.integers(0, 3)),
    waiting=st.dictionaries(st.sampled_from(SERVICE_IDS), st.integers(0, 5)),
)
def test_plan_invariants(
    area: str,
    urgency: Urgency,
    asked: ServiceAsked,
    referrer: ReferrerKind,
    outcomes: list[Outcome],
    free: dict[str, int],
    waiting: dict[str, int],
) -> None:
    assessment = Assessment(
        referral_id="ref",
        facts=RoutingFacts(
            local_authority_gss=area, urgency=urgency, service_asked=asked, referrer_kind=referrer
        ),
        decisions=tuple(ProgrammeDecision(p, o) for p, o in zip(PROGRAMMES, outcomes, strict=True)),
    )
    plan = plan_routing(assessment, DIRECTORY, free, waiting, date(2024, 6, 1))
    assert plan == plan_routing(assessment, DIRECTORY, dict(free), dict(waiting), date(2024, 6, 1))
    categories = [DIRECTORY.get(t.service_id).category for t in plan.tasks]  # type: ignore[union-attr]
    assert len(categories) == len(set(categories)), "at most one task per category"
    for task in plan.tasks:
        limited = DIRECTORY.get(task.service_id).places is not None  # type: ignore[union-attr]
        assert task.reserves_place == limited
        assert not limited or free.get(task.service_id, 1) > 0, "never a place from a full service"
        assert assessment.decision_for(task.programme_id).outcome is Outcome.ELIGIBLE  # type: ignore[union-attr]
    assert plan.fallback.inform_local_authority
    bed = any(t.programme_id == "unseen-specialist-accommodation" for t in plan.tasks)
    assert plan.fallback.escalate_to_edt == (urgency is Urgency.EMERGENCY and not bed)
    routed = {t.programme_id for t in plan.tasks}
    assert not routed & {u.programme_id for u in plan.unrouted}
