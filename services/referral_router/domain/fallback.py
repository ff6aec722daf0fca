"""What happens when not every need is met: inform the LA, escalate to its EDT, name the first responder.

- The responsible LA's children's services are always informed: the statutory duty sits there
  (programmes.md, "When nothing fits").
- An emergency (a placement needed now, 002 L973) with no bed planned is escalated to the LA's
  Emergency Duty Team at once.
- A child not (known to be) referred to the NRM, referred by an organisation that is not a first
  responder, is named as the LA's to refer: NRM rules excluded children nobody had referred
  (000 L711-715).
"""

from __future__ import annotations

from typing import Final

from services.referral_router.domain.assessment import NrmStatus, ReferrerKind, RoutingFacts, Urgency

# Kinds of referrer that are NRM first responders. Social workers (000 L714), police, Border Force and
# a social worker made the NRM referrals of the Unseen children (002 L1138); an EDT is the LA's own
# social-work team out of hours. Health and "other" are not designated first responders.
FIRST_RESPONDER_KINDS: Final = frozenset(
    {ReferrerKind.POLICE, ReferrerKind.BORDER_FORCE, ReferrerKind.LOCAL_AUTHORITY, ReferrerKind.EDT}
)

# Only some NGOs are designated first responders, so an NGO counts only when it is named here. The
# sources name one: Unseen "as a 'first responder'" (002 L1074).
FIRST_RESPONDER_ORGANISATIONS: Final = frozenset({"unseen-south-west"})

# "Not in the NRM": not referred, or NRM status not stated (decision: an unknown status is not taken
# as a referral, so the LA is asked to check rather than assume someone referred the child).
_NOT_IN_NRM: Final = frozenset({NrmStatus.NOT_REFERRED, NrmStatus.UNSPECIFIED})


def is_first_responder(kind: ReferrerKind, organisation_id: str) -> bool:
    """Whether the referrer can itself refer the child to the NRM."""
    return kind in FIRST_RESPONDER_KINDS or organisation_id in FIRST_RESPONDER_ORGANISATIONS


def local_authority_must_refer_to_nrm(facts: RoutingFacts) -> bool:
    """Whether the LA is named as first responder: child not in the NRM, referrer not a first responder."""
    return facts.nrm_status in _NOT_IN_NRM and not is_first_responder(
        facts.referrer_kind, facts.referrer_organisation_id
    )


def must_escalate_to_edt(facts: RoutingFacts, bed_planned: bool) -> bool:
    """Whether an emergency is left without a bed, so the LA's EDT must act at once."""
    return facts.urgency is Urgency.EMERGENCY and not bed_planned


def fallback_summary(
    facts: RoutingFacts, *, escalate: bool, first_responder: bool, unmet: tuple[str, ...]
) -> str:
    """Plain-words summary of the fallback, for the LA and the referrer."""
    gss = facts.local_authority_gss
    parts = [f"Children's services of {gss} are informed."]
    if escalate:
        parts.append(f"Emergency with no specialist bed: escalated to the {gss} Emergency Duty Team now.")
    if first_responder:
        parts.append(
            f"The child is not known to be referred to the NRM and the referrer is not a first responder: "
            f"{gss} is the first responder to consider an NRM referral."
        )
    if unmet:
        parts.append("Not routed: " + ", ".join(unmet) + ".")
    return " ".join(parts)
