"""``plan_after_move``: what a move of local authority does to the tasks of a referral (pure).

A live task whose service does not cover the new area is cancelled and its category routed there,
part of the old task when the new one is for the same programme; a task whose service covers both
areas stays, under the usual re-assessment rules.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date

from haven.referral.v1 import referral_pb2
from services.referral_router.domain import (
    ExistingTask,
    UnroutedCode,
    assessment_from_proto,
    load_directory,
    plan_after_move,
)
from services.referral_router.domain.directory import CoveragePeriod
from services.referral_router.testing import assessed

ON = date(2024, 6, 1)
MANCHESTER = "E08000003"  # ICTG site
LONDON = "E09000001"  # City of London: no ICTG site; AFRUCA (England) and Rise (London) cover it
LEEDS = "E08000035"  # Barnardo's West Yorkshire, AFRUCA


def _task(
    task_id: str, programme: str, service: str, status: str = "requested", route: str = ""
) -> ExistingTask:
    return ExistingTask(
        task_id=task_id, programme_id=programme, service_id=service, route=route, status=status
    )


def test_a_task_whose_service_covers_the_new_area_stays_and_one_that_does_not_is_cancelled() -> None:
    ictg = _task("t-ictg", "ictg", "ictg", status="accepted", route="direct-worker")
    afruca = _task("t-afruca", "afruca", "afruca-therapy")
    moved = assessment_from_proto(assessed(LONDON, ["ictg", "afruca"]))

    change = plan_after_move([ictg, afruca], moved, load_directory(), {}, {}, ON)

    # ICTG has no site in the City of London: cancelled even though accepted (the child left the area).
    [closure] = change.closures
    assert (closure.task_id, closure.status, closure.moved) == ("t-ictg", "cancelled", True)
    assert LONDON in closure.reason
    # AFRUCA covers England: it stays, so therapy is not routed again; guardianship is, and finds nothing.
    assert not change.routing.tasks
    assert change.routing.local_authority_gss == LONDON
    unrouted = {u.programme_id: u.code for u in change.routing.unrouted}
    assert unrouted["ictg"] is UnroutedCode.NO_SERVICE_IN_AREA


def test_the_new_task_is_part_of_the_cancelled_one_for_the_same_programme() -> None:
    directory = load_directory()
    ictg = directory.get("ictg")
    assert ictg is not None
    london_ictg = replace(ictg, id="ictg-london", coverage=(CoveragePeriod(LONDON, date(2020, 1, 1)),))
    directory = directory.with_service(london_ictg)
    old = _task("t-ictg", "ictg", "ictg", route="direct-worker")
    moved = assessment_from_proto(assessed(LONDON, ["ictg"], asked=referral_pb2.SERVICE_ASKED_ICTG))

    change = plan_after_move([old], moved, directory, {}, {}, ON)

    assert [c.task_id for c in change.closures] == ["t-ictg"]
    [new] = change.routing.tasks
    assert (new.service_id, new.part_of_task_id) == ("ictg-london", "t-ictg")


def test_a_new_task_for_another_programme_stands_alone() -> None:
    # Leeds -> London: Barnardo's West Yorkshire covers only West Yorkshire; in London Rise takes therapy.
    group = _task("t-group", "barnardos-west-yorkshire", "barnardos-west-yorkshire-groups")
    moved = assessment_from_proto(
        assessed(
            LONDON,
            ["barnardos-west-yorkshire", "childrens-society-rise"],
            asked=referral_pb2.SERVICE_ASKED_THERAPEUTIC_SUPPORT,
        )
    )

    change = plan_after_move([group], moved, load_directory(), {}, {}, ON)

    assert [(c.task_id, c.moved) for c in change.closures] == [("t-group", True)]
    [rise] = change.routing.tasks
    assert rise.service_id == "childrens-society-rise"
    assert rise.part_of_task_id == ""  # another programme: not the same work carried on


def test_closed_tasks_are_left_alone_and_no_move_needs_no_closure() -> None:
    done = _task("t-done", "barnardos-west-yorkshire", "barnardos-west-yorkshire-groups", status="completed")
    afruca = _task("t-afruca", "afruca", "afruca-therapy")
    moved = assessment_from_proto(
        assessed(LONDON, ["afruca"], asked=referral_pb2.SERVICE_ASKED_THERAPEUTIC_SUPPORT)
    )

    change = plan_after_move([done, afruca], moved, load_directory(), {}, {}, ON)

    assert not change.closures  # a completed task is history; AFRUCA covers both areas
    assert not change.routing.tasks  # therapy is served by the task that stayed
