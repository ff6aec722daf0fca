"""Turning a posted referral transaction Bundle into server-identified resources and coded facts.

All or nothing: every problem in the Bundle is collected and raised as one `FhirInputError`, and
nothing is returned unless the whole Bundle is acceptable.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.servicerequest import ServiceRequest
from pydantic import ValidationError

from haven.referral.v1 import referral_pb2 as pb

from . import facts as read
from . import profile as p
from .checks import Checks
from .issues import FhirInputError, Issue, IssueType, fhirpath, issues_from_validation_error

_MODELS: dict[str, Any] = {p.PATIENT: Patient, p.SERVICE_REQUEST: ServiceRequest, p.OBSERVATION: Observation}
_URN_UUID = "urn:uuid:"
_REQUESTER = ("requester", "reference")


@dataclass(frozen=True)
class ReferrerContext:
    """Who is posting, from the caller's credentials: never from the Bundle."""

    organisation_id: str
    kind: str

    def __post_init__(self) -> None:
        if self.kind not in p.REFERRER_KIND:
            raise ValueError(f"unknown referrer kind {self.kind!r}; known: {sorted(p.REFERRER_KIND)}")

    @property
    def organisation_reference(self) -> str:
        """The FHIR reference to the referring organisation."""
        return f"Organization/{self.organisation_id}"


@dataclass(frozen=True)
class ParsedReferral:
    """An accepted referral: resources with server ids (in the order posted) and their coded facts."""

    referral_id: str
    patient_id: str
    referrer_identifier: str | None
    resources: tuple[dict[str, Any], ...]
    facts: pb.ReferralFacts

    @property
    def locations(self) -> tuple[str, ...]:
        """`Type/id` of each resource, in the order of the request entries."""
        return tuple(f"{r['resourceType']}/{r['id']}" for r in self.resources)


@dataclass(frozen=True)
class _Entry:
    index: int
    full_url: str
    resource_type: str
    resource: dict[str, Any]
    structurally_valid: bool

    @property
    def at(self) -> str:
        return f"Bundle.entry[{self.index}].resource"


def parse_referral_bundle(body: Any, *, referrer: ReferrerContext, today: date) -> ParsedReferral:
    """Validate a referral transaction Bundle against the profile and return what the server stores.

    Raises FhirInputError listing every problem found. `today` is the server's date in the UK, after
    which no stated date may fall. `body` is not modified.
    """
    checks = Checks(today)
    bundle = _check_bundle_shell(body)
    entries = _check_entries(bundle, checks)
    patient, request = _the_one(entries, p.PATIENT, checks), _the_one(entries, p.SERVICE_REQUEST, checks)
    _check_references(entries, patient, request, referrer, checks)
    facts, identifier = _read_facts(entries, checks)
    if checks.issues:
        raise FhirInputError(checks.issues)
    assert patient is not None and request is not None  # both present, or an issue was raised above
    resources, references = _assign_ids(entries)
    request_resource = resources[entries.index(request)]
    request_resource["requester"] = {"reference": referrer.organisation_reference}
    facts.child_id = references[patient.full_url].split("/")[1]
    facts.referrer.organisation_id = referrer.organisation_id
    facts.referrer.kind = p.REFERRER_KIND[referrer.kind]
    return ParsedReferral(
        referral_id=request_resource["id"],
        patient_id=facts.child_id,
        referrer_identifier=identifier,
        resources=tuple(resources),
        facts=facts,
    )


def _check_bundle_shell(body: Any) -> dict[str, Any]:
    """Validate the Bundle minus its entries' resources with fhir.resources; raise at once if broken."""
    if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
        sent = body.get("resourceType") if isinstance(body, dict) else type(body).__name__
        raise FhirInputError(
            [
                Issue(
                    IssueType.STRUCTURE,
                    "Bundle",
                    f"Post a Bundle of type 'transaction' (got {sent!r}): the referral's Patient, "
                    "ServiceRequest and Observations travel together.",
                )
            ]
        )
    # No copy: nothing here writes to the posted JSON; `_assign_ids` builds new resources (`_rewrite`).
    bundle: dict[str, Any] = body
    entries = bundle.get("entry")
    shell = dict(bundle)
    if isinstance(entries, list):
        shell["entry"] = [
            {k: v for k, v in e.items() if k != "resource"} if isinstance(e, dict) else e for e in entries
        ]
    try:
        Bundle(**shell)  # the model's constructor: what ``model_validate`` runs, minus one dispatch
    except ValidationError as error:
        raise FhirInputError(issues_from_validation_error(error, "Bundle")) from None
    return bundle


def _check_entries(bundle: dict[str, Any], checks: Checks) -> list[_Entry]:
    if bundle.get("type") != "transaction":
        checks.add(IssueType.VALUE, "Bundle.type", "A referral is posted as a Bundle of type 'transaction'.")
    raw_entries = bundle.get("entry") or []
    if not raw_entries:
        checks.add(IssueType.REQUIRED, "Bundle.entry", "The Bundle has no entries.")
    full_urls = Counter(e.get("fullUrl") for e in raw_entries)
    entries = []
    for index, raw in enumerate(raw_entries):
        at = f"Bundle.entry[{index}]"
        resource = raw.get("resource")
        if not isinstance(resource, dict):
            checks.add(IssueType.REQUIRED, f"{at}.resource", "Each entry must carry a resource.")
            continue
        resource_type = str(resource.get("resourceType"))
        if resource_type not in p.SUPPORTED_RESOURCE_TYPES:
            checks.add(
                IssueType.NOT_SUPPORTED,
                f"{at}.resource.resourceType",
                f"A referral Bundle carries only {', '.join(p.SUPPORTED_RESOURCE_TYPES)}, "
                f"not {resource_type}.",
            )
            continue
        full_url = str(raw.get("fullUrl", ""))
        _check_full_url(full_url, at, full_urls[full_url] > 1, checks)
        _check_request(raw.get("request"), resource_type, at, checks)
        valid = structurally_valid(resource, f"{at}.resource", checks)
        entries.append(_Entry(index, full_url, resource_type, resource, valid))
    return entries


def _check_full_url(full_url: str, at: str, duplicated: bool, checks: Checks) -> None:
    try:
        valid = full_url.startswith(_URN_UUID) and bool(uuid.UUID(full_url.removeprefix(_URN_UUID)))
    except ValueError:
        valid = False
    if not valid:
        checks.add(
            IssueType.VALUE,
            f"{at}.fullUrl",
            "fullUrl must be 'urn:uuid:' and a UUID you generate; the server assigns the resource ids.",
        )
    elif duplicated:
        checks.add(IssueType.DUPLICATE, f"{at}.fullUrl", "Two entries have the same fullUrl.")


def _check_request(request: Any, resource_type: str, at: str, checks: Checks) -> None:
    if not isinstance(request, dict):
        checks.add(IssueType.REQUIRED, f"{at}.request", f"Add request: POST {resource_type}.")
        return
    if request.get("method") != "POST":
        checks.add(IssueType.NOT_SUPPORTED, f"{at}.request.method", "Only POST (create) is accepted here.")
    if request.get("url") != resource_type:
        checks.add(IssueType.VALUE, f"{at}.request.url", f"request.url must be '{resource_type}'.")


def structurally_valid(resource: dict[str, Any], at: str, checks: Checks) -> bool:
    """Validate one resource with its fhir.resources R4B model; report problems under `at`."""
    try:
        # The constructor, not ``model_validate``: the models override ``__init__``, so
        # ``model_validate`` only dispatches to it through one more validator call (about 13% dearer).
        _MODELS[resource["resourceType"]](**resource)
    except ValidationError as error:
        checks.issues.extend(issues_from_validation_error(error, at))
        return False
    except (KeyError, TypeError, ValueError) as error:
        # fhir.resources raises bare errors for some shapes (e.g. unknown contained resource types).
        checks.add(IssueType.STRUCTURE, at, f"Not a valid {resource['resourceType']}: {error}.")
        return False
    return True


def _the_one(entries: list[_Entry], resource_type: str, checks: Checks) -> _Entry | None:
    found = [e for e in entries if e.resource_type == resource_type]
    if not found:
        checks.add(
            IssueType.REQUIRED, "Bundle.entry", f"A referral Bundle needs one {resource_type}; none sent."
        )
        return None
    for extra in found[1:]:
        checks.add(
            IssueType.INVALID,
            f"Bundle.entry[{extra.index}]",
            f"A referral Bundle carries exactly one {resource_type}; post each child as its own referral.",
        )
    return found[0]


Location = tuple[str | int, ...]


def references_in(element: Any, location: Location = ()) -> Iterator[tuple[Location, str]]:
    """Yield every (location, reference string) in a JSON element, depth first."""
    if isinstance(element, dict):
        for key, value in element.items():
            if key == "reference" and isinstance(value, str):
                yield (*location, key), value
            else:
                yield from references_in(value, (*location, key))
    elif isinstance(element, list):
        for index, value in enumerate(element):
            yield from references_in(value, (*location, index))


def _check_references(
    entries: list[_Entry],
    patient: _Entry | None,
    request: _Entry | None,
    referrer: ReferrerContext,
    checks: Checks,
) -> None:
    known = {e.full_url for e in entries}
    for entry in entries:
        for location, reference in references_in(entry.resource):
            expression = fhirpath(entry.at, location)
            if entry.resource_type == p.SERVICE_REQUEST and location == _REQUESTER:
                if reference != referrer.organisation_reference:
                    checks.add(
                        IssueType.FORBIDDEN,
                        expression,
                        f"The requester is the organisation you authenticated as "
                        f"({referrer.organisation_reference}); leave requester out or give that.",
                    )
            elif reference not in known and reference != referrer.organisation_reference:
                checks.add(
                    IssueType.NOT_FOUND,
                    expression,
                    f"'{reference}' does not resolve: refer to another entry by its fullUrl (urn:uuid:...).",
                )
    patient_url = patient.full_url if patient else None
    request_url = request.full_url if request else None
    for entry in entries:
        if entry.resource_type in (p.SERVICE_REQUEST, p.OBSERVATION):
            _check_points_to(entry, "subject", patient_url, known, checks)
        if entry.resource_type == p.OBSERVATION:
            for index, based_on in enumerate(entry.resource.get("basedOn", [])):
                reference = based_on.get("reference")
                if request_url and reference in known and reference != request_url:
                    checks.add(
                        IssueType.VALUE,
                        f"{entry.at}.basedOn[{index}].reference",
                        "basedOn must point to the referral's ServiceRequest entry (or be left out).",
                    )


def _check_points_to(
    entry: _Entry, element: str, target: str | None, known: set[str], checks: Checks
) -> None:
    what = f"{element} must refer to the child's Patient entry."
    reference = entry.resource.get(element, {}).get("reference")
    if reference is None:
        checks.add(IssueType.REQUIRED, f"{entry.at}.{element}", what)
    # An unresolved reference is already reported as not-found.
    elif target and reference in known and reference != target:
        checks.add(IssueType.VALUE, f"{entry.at}.{element}.reference", what)


def _read_facts(entries: list[_Entry], checks: Checks) -> tuple[pb.ReferralFacts, str | None]:
    facts = pb.ReferralFacts()
    identifier = None
    # Patient first: its birthDate is the first date-of-birth statement, whatever the entry order.
    ordered = sorted(entries, key=lambda e: e.resource_type != p.PATIENT)
    stated: dict[str, int] = {}
    for entry in (e for e in ordered if e.structurally_valid):
        if entry.resource_type == p.PATIENT:
            read.read_patient(entry.resource, entry.at, checks, facts)
        elif entry.resource_type == p.SERVICE_REQUEST:
            identifier = read.read_service_request(entry.resource, entry.at, checks, facts)
        else:
            fact = read.observation_fact(entry.resource, entry.at, checks)
            if fact is None:
                continue
            if fact in stated and fact not in p.REPEATABLE_FACTS:
                checks.add(
                    IssueType.DUPLICATE,
                    f"{entry.at}.code",
                    f"'{fact}' is already stated by Bundle.entry[{stated[fact]}]; state each fact once.",
                )
                continue
            stated[fact] = entry.index
            read.read_observation(entry.resource, fact, entry.at, checks, facts)
    return facts, identifier


def _assign_ids(entries: list[_Entry]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Give every resource a new id and rewrite every urn:uuid reference to `Type/id`."""
    references = {e.full_url: f"{e.resource_type}/{uuid.uuid4()}" for e in entries}
    resources = []
    for entry in entries:
        resource = _rewrite(entry.resource, references)
        resource["id"] = references[entry.full_url].split("/")[1]
        resources.append(resource)
    return resources, references


def _rewrite(element: Any, references: dict[str, str]) -> Any:
    if isinstance(element, dict):
        return {
            key: references.get(value, value)
            if key == "reference" and isinstance(value, str)
            else _rewrite(value, references)
            for key, value in element.items()
        }
    if isinstance(element, list):
        return [_rewrite(value, references) for value in element]
    return element
