"""Unit tests for waiting lists in the plan, and for telling when a KV watch's initial values are in."""

from __future__ import annotations

from datetime import date

from nats.js.kv import KeyValue

from haven.kit.kv_follow import InitialLoad
from haven.referral.v1 import referral_pb2
from services.referral_router.domain import (
    Assessment,
    ServiceCategory,
    assessment_from_proto,
    load_directory,
    plan_reroute_after_rejection,
    plan_routing,
)
from services.referral_router.domain.rerouting import ExistingTask
from services.referral_router.testing import assessed

ON = date(2025, 6, 1)
LONDON = "E09000001"  # AFRUCA and Rise both cover it
HOME = "unseen-cssw-home"
THERAPY = referral_pb2.SERVICE_ASKED_THERAPEUTIC_SUPPORT


def _therapy_child() -> Assessment:
    return assessment_from_proto(assessed(LONDON, ["afruca", "childrens-society-rise"], asked=THERAPY))


def test_a_child_with_no_free_place_waits_at_every_fitting_service_at_its_position() -> None:
    full = {"afruca-therapy": 0, "childrens-society-rise": 0}
    plan = plan_routing(_therapy_child(), load_directory(), full, {"afruca-therapy": 4}, ON)
    assert not plan.tasks
    assert set(plan.waiting_at) == {"afruca-therapy", "childrens-society-rise"}
    positions = {a.service_id: a.waiting_position for a in plan.alternatives}
    assert positions == {"afruca-therapy": 5, "childrens-society-rise": 1}  # 4 ahead; nobody ahead
    assert ServiceCategory.THERAPEUTIC_SUPPORT in plan.categories


def test_a_child_given_a_place_waits_nowhere_in_that_category() -> None:
    plan = plan_routing(_therapy_child(), load_directory(), {"afruca-therapy": 0}, {}, ON)
    assert [t.service_id for t in plan.tasks] == ["childrens-society-rise"]
    assert plan.waiting_at == ()  # AFRUCA is listed with a position, but the child has a place


def test_a_bed_not_asked_for_puts_no_one_on_the_homes_list() -> None:
    child = assessment_from_proto(
        assessed(LONDON, ["afruca", "unseen-specialist-accommodation"], asked=THERAPY)
    )
    plan = plan_routing(child, load_directory(), {HOME: 0}, {}, ON)
    assert HOME not in plan.waiting_at


def test_a_rerouting_names_only_its_own_category() -> None:
    child = assessment_from_proto(
        assessed(LONDON, ["afruca", "childrens-society-rise"], asked=referral_pb2.SERVICE_ASKED_ANY)
    )
    rejected = ExistingTask("t1", "afruca", "afruca-therapy", "casework", "rejected")
    plan = plan_reroute_after_rejection(
        child, load_directory(), {"childrens-society-rise": 0}, {}, ON, rejected=rejected
    )
    assert plan.categories == (ServiceCategory.THERAPEUTIC_SUPPORT,)
    assert plan.waiting_at == ("childrens-society-rise",)


def _entry(delta: int) -> KeyValue.Entry:
    return KeyValue.Entry("b", "k", b"v", 1, delta, None, None)


def test_the_initial_load_ends_at_the_servers_last_pending_entry_not_at_the_librarys_marker() -> None:
    initial = InitialLoad(keys_at_start=3)
    # nats-py may put its "initial values done" marker before the values on a loaded machine.
    assert not initial.see(None)
    assert not initial.see(_entry(2)) and not initial.see(_entry(1))
    assert initial.see(_entry(0)) and initial.done
    assert not initial.see(_entry(0))  # once only


def test_an_empty_pattern_is_loaded_at_once() -> None:
    assert InitialLoad(keys_at_start=0).done
