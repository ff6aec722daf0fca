"""Reading the coded facts of the profile out of Patient, ServiceRequest and Observation JSON.

Each reader checks the profile's rules for one resource (codes, dates, required elements) and writes
the facts it carries into a `ReferralFacts`; problems go to `Checks`, located by FHIRPath under `at`.
References between resources are the Bundle's business (`bundle.py`), not checked here.
"""

from __future__ import annotations

import re
from typing import Any

from haven.referral.v1 import referral_pb2 as pb

from . import profile as p
from .checks import Checks, extensions
from .issues import IssueType
from .local_authorities import SHIRE_DISTRICT_PREFIX, is_known_local_authority, is_well_formed_gss_code

_ISO_3166_ALPHA_2 = re.compile(r"[A-Z]{2}")


def read_patient(patient: dict[str, Any], at: str, checks: Checks, facts: pb.ReferralFacts) -> None:
    """Date of birth (with its basis), gender and nationalities of the child."""
    basis_extensions = extensions(patient, p.EXT_BIRTH_DATE_BASIS)
    basis: pb.DateOfBirthBasis.ValueType = pb.DATE_OF_BIRTH_BASIS_UNSPECIFIED
    for index, ext in basis_extensions[:1]:
        found = checks.coding(
            ext.get("valueCoding"),
            p.CS_DATE_OF_BIRTH_BASIS,
            p.DATE_OF_BIRTH_BASIS,
            f"{at}.extension[{index}].valueCoding",
            "basis of the date of birth",
        )
        basis = found[1] if found else basis
    if len(basis_extensions) > 1:
        checks.add(
            IssueType.INVALID,
            f"{at}.extension[{basis_extensions[1][0]}]",
            "Give birth-date-basis once; state other dates of birth as date-of-birth Observations.",
        )
    if "birthDate" in patient:
        born = checks.past_date(patient["birthDate"], f"{at}.birthDate", "date of birth")
        if born:
            facts.dates_of_birth.add(date=born.isoformat(), basis=basis)
    elif basis_extensions:
        checks.add(
            IssueType.REQUIRED,
            f"{at}.birthDate",
            "birth-date-basis says how the date of birth is known, but there is no birthDate.",
        )

    if "gender" in patient:
        if patient["gender"] in p.GENDER:
            facts.sex = p.GENDER[patient["gender"]]
        else:
            checks.add(
                IssueType.CODE_INVALID,
                f"{at}.gender",
                f"gender must be one of: {', '.join(p.GENDER)}.",
            )

    for index, ext in extensions(patient, p.EXT_PATIENT_NATIONALITY):
        country = _nationality(ext, f"{at}.extension[{index}]", checks)
        if country and country not in facts.nationalities:
            facts.nationalities.append(country)


def _nationality(ext: dict[str, Any], at: str, checks: Checks) -> str | None:
    for index, part in extensions(ext, "code"):
        codings = part.get("valueCodeableConcept", {}).get("coding", [])
        for coding_index, coding in enumerate(codings):
            if coding.get("system") != p.ISO_3166:
                continue
            code = str(coding.get("code", ""))
            if _ISO_3166_ALPHA_2.fullmatch(code):
                return code
            checks.add(
                IssueType.CODE_INVALID,
                f"{at}.extension[{index}].valueCodeableConcept.coding[{coding_index}].code",
                f"'{code}' is not an ISO 3166-1 alpha-2 country code (two capital letters, e.g. GB, VN).",
            )
            return None
    checks.add(
        IssueType.REQUIRED,
        f"{at}.extension",
        f"A nationality needs a 'code' extension with a {p.ISO_3166} coding; "
        "leave out the nationality extension when the nationality is unknown.",
    )
    return None


def read_service_request(
    request: dict[str, Any], at: str, checks: Checks, facts: pb.ReferralFacts
) -> str | None:
    """Area, urgency, service asked for and referral date; returns the referrer's identifier, if any."""
    if request.get("status") != "active":
        checks.add(IssueType.VALUE, f"{at}.status", "A new referral must have status 'active'.")
    if request.get("intent") not in p.REQUEST_INTENTS:
        checks.add(
            IssueType.CODE_INVALID,
            f"{at}.intent",
            f"intent must be one of: {', '.join(sorted(p.REQUEST_INTENTS))} ('order' is usual).",
        )
    _read_local_authority(request, at, checks, facts)

    if "priority" in request:
        if request["priority"] in p.PRIORITY:
            facts.urgency = p.PRIORITY[request["priority"]]
        else:
            checks.add(
                IssueType.CODE_INVALID,
                f"{at}.priority",
                "priority must be routine, urgent, asap (read as urgent) or stat (emergency placement).",
            )
    if "code" in request:
        found = checks.coded(
            request["code"], p.CS_SERVICE_ASKED, p.SERVICE_ASKED, f"{at}.code", "service asked for"
        )
        if found:
            facts.service_asked = found[1]

    if "authoredOn" in request:
        authored = checks.past_date(request["authoredOn"], f"{at}.authoredOn", "referral date (authoredOn)")
        if authored:
            facts.referral_date = authored.isoformat()
    else:
        facts.referral_date = checks.today.isoformat()
    return _referrer_identifier(request, at, checks)


def _read_local_authority(request: dict[str, Any], at: str, checks: Checks, facts: pb.ReferralFacts) -> None:
    found = extensions(request, p.EXT_RESPONSIBLE_LOCAL_AUTHORITY)
    if len(found) != 1:
        checks.add(
            IssueType.REQUIRED,
            f"{at}.extension",
            f"Give the responsible local authority exactly once: an extension "
            f"{p.EXT_RESPONSIBLE_LOCAL_AUTHORITY} with valueIdentifier "
            f"(system {p.ONS_GSS}, value its GSS code, e.g. E08000003).",
        )
        return
    index, ext = found[0]
    identifier = ext.get("valueIdentifier", {})
    where = f"{at}.extension[{index}].valueIdentifier"
    if identifier.get("system") != p.ONS_GSS:
        checks.add(IssueType.VALUE, f"{where}.system", f"The identifier system must be {p.ONS_GSS}.")
        return
    code = str(identifier.get("value", ""))
    if _is_children_services_authority(code, f"{where}.value", checks):
        facts.local_authority_gss = code


def _is_children_services_authority(code: str, where: str, checks: Checks) -> bool:
    """Return whether `code` is the GSS code of a local authority with children's services; else say why."""
    if not is_well_formed_gss_code(code):
        checks.add(
            IssueType.VALUE,
            where,
            f"'{code}' is not a local-authority GSS code: E06, E08, E09, E10 or W06 and six digits.",
        )
    elif code.startswith(SHIRE_DISTRICT_PREFIX):
        checks.add(
            IssueType.VALUE,
            where,
            f"{code} is a district council, which has no children's services; give the county (E10) code.",
        )
    elif not is_known_local_authority(code):
        checks.add(
            IssueType.CODE_INVALID,
            where,
            f"{code} is not a local authority with children's services in England or Wales.",
        )
    else:
        return True
    return False


def _referrer_identifier(request: dict[str, Any], at: str, checks: Checks) -> str | None:
    identifiers = request.get("identifier", [])
    if not identifiers:
        return None
    # The first identifier is the referrer's own case number; others are kept but not indexed.
    first = identifiers[0]
    if not first.get("system") or not first.get("value"):
        checks.add(
            IssueType.REQUIRED,
            f"{at}.identifier[0]",
            "The referral identifier needs both a system (a URI your organisation owns) and a value.",
        )
        return None
    return f"{first['system']}|{first['value']}"


def observation_fact(observation: dict[str, Any], at: str, checks: Checks) -> str | None:
    """Return the fact code (CS_REFERRAL_FACT) an Observation carries, after checking its status."""
    if observation.get("status") not in p.OBSERVATION_STATUSES:
        checks.add(
            IssueType.VALUE,
            f"{at}.status",
            f"status must be one of: {', '.join(sorted(p.OBSERVATION_STATUSES))}.",
        )
    found = checks.coded(
        observation.get("code"),
        p.CS_REFERRAL_FACT,
        {code: code for code in p.REFERRAL_FACTS},
        f"{at}.code",
        "fact this Observation states",
    )
    return found[0] if found else None


def read_observation(
    observation: dict[str, Any],
    fact: str,
    at: str,
    checks: Checks,
    facts: pb.ReferralFacts,
    *,
    later: bool = False,
) -> None:
    """Write the fact one Observation states into `facts` (repeatable facts are added to).

    `later` is True for an Observation posted on its own after the referral; some facts
    (`profile.LATER_ONLY_FACTS`) are refused inside a referral Bundle.
    """
    if fact in p.LATER_ONLY_FACTS and not later:
        checks.add(
            IssueType.INVALID,
            f"{at}.code",
            f"'{fact}' is posted later, on its own (POST /fhir/Observation); in a referral Bundle "
            "give the responsible local authority on the ServiceRequest.",
        )
        return
    if fact == p.FACT_DATE_OF_BIRTH:
        _read_date_of_birth(observation, at, checks, facts)
    elif fact == p.FACT_TRAFFICKING_CONCERN:
        found = _value_code(observation, p.CS_TRAFFICKING_CONCERN, p.TRAFFICKING_CONCERN, at, checks, fact)
        if found:
            facts.trafficking_concern = found[1]
    elif fact == p.FACT_TRAFFICKING_ROUTE:
        route = _value_code(observation, p.CS_TRAFFICKING_ROUTE, p.TRAFFICKING_ROUTE, at, checks, fact)
        if route:
            facts.trafficking_route = route[1]
    elif fact == p.FACT_EXPLOITATION_TYPE:
        kind = _value_code(observation, p.CS_EXPLOITATION_TYPE, p.EXPLOITATION_TYPE, at, checks, fact)
        if kind and kind[1] not in facts.exploitation_types:
            facts.exploitation_types.append(kind[1])
    elif fact == p.FACT_NRM_STATUS:
        _read_nrm_status(observation, at, checks, facts)
    elif fact == p.FACT_ASYLUM_APPLICATION:
        _read_asylum_application(observation, at, checks, facts)
    elif fact == p.FACT_PARENTAL_RESPONSIBILITY_IN_UK:
        facts.parental_responsibility_in_uk = _answer(observation, at, checks)
    elif fact == p.FACT_MISSING_EPISODE:
        _read_missing_episode(observation, at, checks, facts)
    elif fact == p.FACT_RESPONSIBLE_LOCAL_AUTHORITY:
        _read_local_authority_move(observation, at, checks, facts)


def _read_local_authority_move(
    observation: dict[str, Any], at: str, checks: Checks, facts: pb.ReferralFacts
) -> None:
    where = f"{at}.valueCodeableConcept"
    concept = observation.get("valueCodeableConcept")
    codings = concept.get("coding") if isinstance(concept, dict) else None
    if not isinstance(codings, list):
        checks.add(
            IssueType.REQUIRED,
            where,
            f"A {p.FACT_RESPONSIBLE_LOCAL_AUTHORITY} needs valueCodeableConcept with a coding "
            f"(system {p.ONS_GSS}, code the new local authority's GSS code, e.g. E08000035).",
        )
        return
    found = [(i, c) for i, c in enumerate(codings) if isinstance(c, dict) and c.get("system") == p.ONS_GSS]
    if len(found) != 1:
        checks.add(
            IssueType.CODE_INVALID,
            f"{where}.coding",
            f"Give exactly one coding with system {p.ONS_GSS}: the new local authority's GSS code.",
        )
        return
    index, coding = found[0]
    code = str(coding.get("code", ""))
    if _is_children_services_authority(code, f"{where}.coding[{index}].code", checks):
        facts.local_authority_gss = code


def _value_code(
    observation: dict[str, Any], system: str, codes: dict[str, Any], at: str, checks: Checks, what: str
) -> tuple[str, Any] | None:
    where = f"{at}.valueCodeableConcept"
    if "valueCodeableConcept" not in observation:
        checks.add(IssueType.REQUIRED, where, f"A {what} needs a valueCodeableConcept.")
        return None
    return checks.coded(observation["valueCodeableConcept"], system, codes, where, what.replace("-", " "))


def _read_date_of_birth(
    observation: dict[str, Any], at: str, checks: Checks, facts: pb.ReferralFacts
) -> None:
    if "valueDateTime" not in observation:
        checks.add(IssueType.REQUIRED, f"{at}.valueDateTime", "A date-of-birth needs valueDateTime.")
        return
    born = checks.past_date(observation["valueDateTime"], f"{at}.valueDateTime", "date of birth")
    # Observation.method says how the date is known: the standard element for "how it was determined".
    basis = checks.coded(
        observation.get("method"),
        p.CS_DATE_OF_BIRTH_BASIS,
        p.DATE_OF_BIRTH_BASIS,
        f"{at}.method",
        "basis of the date of birth",
    )
    if born and basis:
        statement = pb.DateOfBirthStatement(date=born.isoformat(), basis=basis[1])
        if statement not in facts.dates_of_birth:
            facts.dates_of_birth.append(statement)


def _read_nrm_status(observation: dict[str, Any], at: str, checks: Checks, facts: pb.ReferralFacts) -> None:
    status = _value_code(observation, p.CS_NRM_STATUS, p.NRM_STATUS, at, checks, p.FACT_NRM_STATUS)
    if not status:
        return
    code, value = status
    decided = ""
    if code in p.NRM_DECISIONS:
        if "effectiveDateTime" not in observation:
            checks.add(
                IssueType.REQUIRED,
                f"{at}.effectiveDateTime",
                f"An NRM decision ({code}) needs its decision date in effectiveDateTime.",
            )
            return
        day = checks.past_date(observation["effectiveDateTime"], f"{at}.effectiveDateTime", "decision date")
        if not day:
            return
        decided = day.isoformat()
    facts.nrm_status = value
    facts.nrm_decision_date = decided


def _read_asylum_application(
    observation: dict[str, Any], at: str, checks: Checks, facts: pb.ReferralFacts
) -> None:
    if "valueDateTime" in observation:
        day = checks.past_date(observation["valueDateTime"], f"{at}.valueDateTime", "asylum application date")
        if day:
            facts.asylum_application_made = pb.ANSWER_YES
            facts.asylum_application_date = day.isoformat()
    elif "valueBoolean" in observation:
        # true: an application was made on a date not known; false: no application.
        facts.asylum_application_made = pb.ANSWER_YES if observation["valueBoolean"] else pb.ANSWER_NO
        facts.asylum_application_date = ""
    else:
        checks.add(
            IssueType.REQUIRED,
            f"{at}.value[x]",
            "An asylum-application needs valueDateTime (the application date) or valueBoolean "
            "(false: no application; true: made, date unknown).",
        )


def _answer(observation: dict[str, Any], at: str, checks: Checks) -> pb.Answer.ValueType:
    if "valueBoolean" in observation:
        return pb.ANSWER_YES if observation["valueBoolean"] else pb.ANSWER_NO
    if "dataAbsentReason" in observation:
        return pb.ANSWER_UNSPECIFIED
    checks.add(
        IssueType.REQUIRED,
        f"{at}.valueBoolean",
        "Give valueBoolean (true or false), or dataAbsentReason when it is not known.",
    )
    return pb.ANSWER_UNSPECIFIED


def _read_missing_episode(
    observation: dict[str, Any], at: str, checks: Checks, facts: pb.ReferralFacts
) -> None:
    period = observation.get("effectivePeriod")
    if not period or "start" not in period:
        checks.add(
            IssueType.REQUIRED,
            f"{at}.effectivePeriod.start",
            "A missing episode needs effectivePeriod.start (when the child went missing); "
            "add effectivePeriod.end when the child is found.",
        )
        return
    start = checks.past_date(period["start"], f"{at}.effectivePeriod.start", "start of the missing episode")
    end = period.get("end")
    if end is not None:
        found = checks.past_date(end, f"{at}.effectivePeriod.end", "end of the missing episode")
        if start and found:
            facts.missing_since = ""
    elif start:
        facts.missing_since = start.isoformat()
