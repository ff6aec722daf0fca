"""Recipient gaps, no-capacity by code, and who is an LA platform on NATS: the pure rules."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from haven.kit.nats_server import server_config
from haven.organisations import Organisation, RegistryError, Role, _parse, load_organisations
from haven.routing.v1 import routing_pb2
from haven.system import platform_user
from services.notifier.deliverer import PartnerNats, nats_key, unresolved_key
from services.notifier.domain import (
    RecipientDirectory,
    RecipientRole,
    SourceEvent,
    UnresolvedRecipientError,
    event_types_for_routed,
    lacks_capacity,
    load_policies,
    notification_id,
    notifications_for,
)
from services.notifier.domain.planning import gap_notification_id, plan_notifications
from services.notifier.tests.conftest import OCCURRED, routed


def _missing() -> SourceEvent:
    return SourceEvent(
        event_id="miss-1",
        occurred_at=OCCURRED,
        referral_id="ref-1",
        local_authority_gss="E08000003",
        facts={
            "episode_id": "ep-1",
            "episode_status": "missing",
            "missing_since": OCCURRED - timedelta(hours=2),
            "nrm_status": "not-referred",
            "child_id": "c-1",
        },
    )


# ---- 1. a required role without an organisation --------------------------------------------------


def test_a_missing_police_force_leaves_a_gap_and_the_la_is_still_planned() -> None:
    plan = plan_notifications("missing-episode-reported", _missing(), directory=RecipientDirectory())
    assert "demo-la-manchester" in {n.recipient_organisation_id for n in plan.notifications}
    assert [g.role for g in plan.gaps] == [RecipientRole.POLICE]
    gap = plan.gaps[0]
    assert gap.reason == "no organisation for required role police"
    assert gap.notification_id == gap_notification_id(
        "miss-1", RecipientRole.POLICE, "missing-episode-reported"
    )
    assert gap.local_authority_gss == "E08000003"
    assert gap.due_by == OCCURRED + timedelta(minutes=15)
    police_fields = next(
        r for r in load_policies()["missing-episode-reported"].recipients if r.role == "police"
    )
    assert set(gap.payload) <= set(police_fields.fields) and gap.payload["episode_id"] == "ep-1"
    # The strict form still refuses, naming the role.
    with pytest.raises(UnresolvedRecipientError, match="police"):
        notifications_for("missing-episode-reported", _missing(), directory=RecipientDirectory())


def test_a_gap_planned_later_is_the_notification_a_configured_force_would_have_had() -> None:
    gap = plan_notifications("missing-episode-reported", _missing(), directory=RecipientDirectory()).gaps[0]
    configured = RecipientDirectory(police_by_gss={"E08000003": "gmp"})
    expected = next(
        n
        for n in notifications_for("missing-episode-reported", _missing(), directory=configured)
        if n.recipient_organisation_id == "gmp"
    )
    later = gap.planned_for("gmp")
    assert (
        later.notification_id == expected.notification_id == notification_id("miss-1", "gmp", gap.event_type)
    )
    assert later.payload_json == expected.payload_json
    assert later.due_by == expected.due_by
    item = gap.to_proto(unresolved_key("police"))
    assert item.recipient_organisation_id == "" and item.subscription_id == "unresolved-police"
    assert json.loads(item.payload_json) == dict(gap.payload)


def test_no_gap_when_every_required_role_resolves() -> None:
    configured = RecipientDirectory(police_by_gss={"E08000003": "gmp"})
    assert plan_notifications("missing-episode-reported", _missing(), directory=configured).gaps == []


# ---- 2. no-capacity from the code ----------------------------------------------------------------


def _unrouted(code: int, reason: str) -> routing_pb2.ReferralRouted:
    event = routed(tasks=())
    event.unrouted.add(programme_id="unseen", reason=reason, code=code)
    return event


def test_no_capacity_is_read_from_the_code() -> None:
    assert lacks_capacity(_unrouted(routing_pb2.UNROUTED_REASON_NO_CAPACITY, "services are full today"))
    # A reason that reads like no capacity does not count when the code says otherwise.
    assert not lacks_capacity(_unrouted(routing_pb2.UNROUTED_REASON_NOT_ELIGIBLE, "no capacity (stale text)"))
    assert not lacks_capacity(_unrouted(routing_pb2.UNROUTED_REASON_NO_SERVICE_IN_AREA, ""))
    assert "no-capacity" in event_types_for_routed(_unrouted(routing_pb2.UNROUTED_REASON_NO_CAPACITY, ""))


def test_events_from_before_the_code_fall_back_to_the_reason_text() -> None:
    unspecified = routing_pb2.UNROUTED_REASON_UNSPECIFIED
    assert lacks_capacity(_unrouted(unspecified, "No capacity: every service is full"))
    assert not lacks_capacity(_unrouted(unspecified, "not eligible (ictg.age)"))


# ---- 3. LA platforms on NATS ---------------------------------------------------------------------


def test_only_an_la_platform_with_nats_gss_and_a_secret_is_on_nats() -> None:
    partners = PartnerNats({"demo-la-manchester": "m" * 32, "demo-police": "p" * 32})
    assert partners.gss_for("demo-la-manchester") == "E08000003"
    assert partners.gss_for("demo-la-leeds") is None  # on the registry, but no secret configured
    assert partners.gss_for("demo-police") is None  # a secret, but not an LA platform
    assert partners.gss_for("nobody") is None
    assert nats_key("demo-la-manchester") == "nats-demo-la-manchester"


def test_the_registry_refuses_nats_gss_outside_the_platforms_own_area() -> None:
    base = {"id": "la-x", "name": "X", "kind": "local-authority", "gss_codes": ["E08000003"]}
    with pytest.raises(RegistryError, match="la-x: nats_gss must be one of its gss_codes"):
        _parse({**base, "roles": ["la-platform"], "nats_gss": "E08000035"})
    with pytest.raises(RegistryError, match="la-x: nats_gss must be one of its gss_codes"):
        _parse({**base, "roles": ["referrer"], "nats_gss": "E08000003"})
    with pytest.raises(RegistryError, match=r"la\.x.*\[A-Za-z0-9_-\]"):
        _parse({**base, "id": "la.x", "roles": ["la-platform"], "nats_gss": "E08000003"})
    assert _parse({**base, "roles": ["la-platform"], "nats_gss": "E08000003"}).nats_gss == "E08000003"


def test_a_platform_user_may_read_its_own_partner_subjects_and_consumer_only() -> None:
    manchester = load_organisations()["demo-la-manchester"]
    user = platform_user(manchester, "pw")
    assert user.subscribe == (
        "haven.routing.v1.routed.E08000003",
        "haven.partner.v1.E08000003.notification.>",
        "_INBOX.la-demo-la-manchester.>",
    )
    assert user.publish == (
        "$JS.API.CONSUMER.MSG.NEXT.HAVEN_PARTNER.partner-demo-la-manchester",
        "$JS.API.CONSUMER.INFO.HAVEN_PARTNER.partner-demo-la-manchester",
        "$JS.ACK.HAVEN_PARTNER.partner-demo-la-manchester.>",
    )
    config = json.loads(server_config([user]))["authorization"]["users"][0]["permissions"]
    assert config["publish"] == {"allow": list(user.publish)}
    # Without nats_gss a platform keeps its routing subjects and publishes nothing.
    plain = Organisation(
        "la-y", "Y", "local-authority", frozenset({Role.LA_PLATFORM}), gss_codes=frozenset({"E1"})
    )
    assert platform_user(plain, "pw").subscribe == ("haven.routing.v1.routed.E1",)
    assert json.loads(server_config([platform_user(plain, "pw")]))["authorization"]["users"][0][
        "permissions"
    ]["publish"] == {"deny": [">"]}
