"""Shared fixtures: a ReferralRouted built in code, a directory, a copy of the policy folder, NATS."""

from __future__ import annotations

import shutil
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from haven.routing.v1 import routing_pb2
from services.notifier.domain import FieldKind, load_fields
from services.notifier.domain.recipients import RecipientDirectory

# The repository's real nats-server fixtures (tests/conftest.py), for the tests of the bus producers.
from tests.conftest import nats_client, nats_server

__all__ = ["nats_client", "nats_server"]

POLICIES = Path(__file__).resolve().parents[1] / "policies"
OCCURRED = datetime(2024, 3, 1, 2, 30, tzinfo=UTC)

SAMPLE_BY_KIND: dict[FieldKind, Any] = {
    FieldKind.ID: "id-1",
    FieldKind.IDS: ["id-1", "id-2"],
    FieldKind.CODE: "code-1",
    FieldKind.CODES: ["code-1"],
    FieldKind.DATE: date(2024, 1, 2),
    FieldKind.DATETIME: datetime(2024, 1, 2, 3, 4, tzinfo=UTC),
    FieldKind.BOOL: True,
    FieldKind.COUNT: 3,
    FieldKind.CODE_COUNTS: {"ictg": 2},
}


def every_fact() -> dict[str, Any]:
    """A valid value for every declared field: projecting it shows exactly the allow-list."""
    return {spec.name: SAMPLE_BY_KIND[spec.kind] for spec in load_fields().fields.values()}


def routed(
    *,
    tasks: tuple[tuple[str, str, str, str], ...] = (("t-1", "ictg", "ictg-gm", "ictg-provider"),),
    referrer: str = "demo-police",
    gss: str = "E08000003",
    escalate: bool = False,
    trigger: int = routing_pb2.ROUTING_TRIGGER_ASSESSED,
    waiting: tuple[tuple[str, str, int], ...] = (),
) -> routing_pb2.ReferralRouted:
    event = routing_pb2.ReferralRouted(
        event_id="ev-1",
        referral_id="ref-1",
        local_authority_gss=gss,
        referrer_organisation_id=referrer,
        sequence=2,
        trigger=trigger,  # type: ignore[arg-type]
    )
    event.occurred_at.FromDatetime(OCCURRED)
    for task_id, programme, service, owner in tasks:
        event.tasks.add(
            task_id=task_id,
            programme_id=programme,
            service_id=service,
            owner_organisation_id=owner,
            route="direct-worker",
            reason="plain words that must never be sent",
        )
    for service, programme, position in waiting:
        event.alternatives.add(
            service_id=service, programme_id=programme, waiting_position=position, reason="x y"
        )
    event.fallback.inform_local_authority = True
    event.fallback.escalate_to_edt = escalate
    event.fallback.summary = "free text summary"
    return event


@pytest.fixture
def directory() -> RecipientDirectory:
    return RecipientDirectory(
        police_by_gss={"E08000003": "gmp"},
        leaving_care_by_gss={"E08000003": "manchester-leaving-care"},
        nrm_competent_authority="single-competent-authority",
        on_call_manager="haven-on-call",
    )


@pytest.fixture
def policy_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "policies"
    shutil.copytree(POLICIES, folder)
    return folder
