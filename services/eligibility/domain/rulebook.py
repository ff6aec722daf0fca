"""The rule data: one versioned rule set per programme file, loaded and compiled once.

Files live in `services/eligibility/rules/`: `areas.yaml` (coverage areas with GSS codes and start
dates) and one `<programme>.yaml` per programme rule-set version. Adding a programme, or a new version
of a rule (same id, a later effective period), is a data change plus its cases: no code.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import cache
from importlib import resources
from typing import Any, Literal

import yaml

from services.eligibility.domain.predicates import (
    ALWAYS,
    Area,
    CacheKey,
    Predicate,
    RulebookError,
    RuleResult,
    compile_predicate,
    static_key,
)

RuleKind = Literal["entry", "exit"]
_IF_MISSING = {"unknown": None, "pass": RuleResult.PASS, "fail": RuleResult.FAIL}


@dataclass(frozen=True, slots=True)
class RuleCase:
    """An example the rule must answer as stated: facts on a date, and the expected result."""

    name: str
    on: date
    facts: Mapping[str, Any]
    expect: RuleResult


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule: stable id, plain statement, citation, period in force, kind and compiled predicate."""

    rule_id: str
    kind: RuleKind
    statement: str
    citation: str
    effective_from: date
    effective_to: date | None
    predicate_spec: Mapping[str, Any]
    predicate: Predicate
    # What an unknown becomes when the missing fact means "nothing to report" (e.g. not missing).
    if_missing: RuleResult | None
    # Set when an unknown here needs a person to decide, not just another fact (decisions in data).
    review_reason: str
    missing_text: str
    exit_reason: str
    cases: tuple[RuleCase, ...]
    # For date-independent predicates: the fact value that decides, and evaluations already made.
    cache_key: CacheKey | None = field(default=None, compare=False)
    memo: dict[object, Any] = field(default_factory=dict, compare=False, repr=False)

    def in_force(self, on: date) -> bool:
        """Return whether the rule applies on `on`."""
        return self.effective_from <= on and (self.effective_to is None or on <= self.effective_to)


@dataclass(frozen=True, slots=True)
class Route:
    """A variant of the programme (e.g. ICTG direct worker) chosen by the first predicate that passes."""

    route_id: str
    statement: str
    citation: str
    predicate: Predicate
    needs_review: bool
    review_reason: str


@dataclass(frozen=True, slots=True)
class ReviewFlag:
    """A condition under which a person must confirm the decision (e.g. negative NRM, other programmes)."""

    flag_id: str
    reason: str
    citation: str
    enrolled_only: bool
    predicate: Predicate


@dataclass(frozen=True, slots=True)
class RuleSet:
    """One version of one programme's rules, in force for a period."""

    programme_id: str
    name: str
    version: str
    provider: str
    service: str
    summary: str
    source_period: str
    effective_from: date
    effective_to: date | None
    coverage: tuple[str, ...]
    coverage_note: str
    rules: tuple[Rule, ...]
    routes: tuple[Route, ...]
    reviews: tuple[ReviewFlag, ...]
    path: str
    boundaries: tuple[date, ...] = ()
    # True when every rule is in force for the whole rule set, so no per-rule date check is needed.
    uniform: bool = True

    def in_force(self, on: date) -> bool:
        """Return whether this rule set decides on `on`."""
        return self.effective_from <= on and (self.effective_to is None or on <= self.effective_to)


@dataclass(frozen=True, slots=True)
class Rulebook:
    """Every programme's rule sets and the coverage areas they name."""

    rule_sets: tuple[RuleSet, ...]
    areas: Mapping[str, Area]
    # Rule sets in force by date: the rule sets are a frozen tuple, so an entry can never go stale.
    in_force_memo: dict[date, tuple[RuleSet, ...]] = field(default_factory=dict, compare=False, repr=False)
    # The engine's tables for a date (rule sets in force with their shared answers), kept here so they
    # live and die with the rulebook they were made from.
    day_memo: dict[date, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def programme_ids(self) -> tuple[str, ...]:
        """Return the programme ids in file order, each once."""
        return tuple(dict.fromkeys(rs.programme_id for rs in self.rule_sets))

    def in_force(self, on: date) -> tuple[RuleSet, ...]:
        """Return the rule set of each programme in force on `on` (programmes not yet running have none)."""
        found = self.in_force_memo.get(on)
        if found is None:
            if len(self.in_force_memo) >= 4096:
                self.in_force_memo.clear()
            found = self.in_force_memo[on] = self._choose_in_force(on)
        return found

    def _choose_in_force(self, on: date) -> tuple[RuleSet, ...]:
        chosen: dict[str, RuleSet] = {}
        for rule_set in self.rule_sets:
            if not rule_set.in_force(on):
                continue
            current = chosen.get(rule_set.programme_id)
            # Overlapping versions: the one that started last is the newer rule set.
            if current is None or rule_set.effective_from > current.effective_from:
                chosen[rule_set.programme_id] = rule_set
        return tuple(chosen.values())


def _date(value: Any, where: str) -> date:
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise RulebookError(f"{where}: {value!r} is not an ISO date") from None


def _optional_date(value: Any, where: str) -> date | None:
    return None if value in (None, "") else _date(value, where)


def _load_areas(document: Mapping[str, Any]) -> dict[str, Area]:
    areas: dict[str, Area] = {}
    for area_id, spec in document["areas"].items():
        areas[area_id] = Area(
            area_id=area_id,
            name=str(spec["name"]),
            citation=str(spec["citation"]),
            starts_on=_date(spec["starts_on"], area_id),
            ends_on=_optional_date(spec.get("ends_on"), area_id),
            members=frozenset(str(m) for m in spec["members"]),
        )
    return areas


def _load_rule(spec: Mapping[str, Any], rule_set: Mapping[str, Any], areas: Mapping[str, Area]) -> Rule:
    rule_id = str(spec["id"])
    try:
        kind = str(spec["kind"])
        if kind not in ("entry", "exit"):
            raise RulebookError(f"kind must be entry or exit, not {kind!r}")
        if spec.get("if_missing", "unknown") not in _IF_MISSING:
            raise RulebookError(f"if_missing must be one of {sorted(_IF_MISSING)}")
        return Rule(
            rule_id=rule_id,
            kind="entry" if kind == "entry" else "exit",
            statement=str(spec["statement"]),
            citation=str(spec["citation"]),
            effective_from=_date(spec.get("effective_from", rule_set["effective_from"]), rule_id),
            effective_to=_optional_date(spec.get("effective_to", rule_set.get("effective_to")), rule_id),
            predicate_spec=spec["predicate"],
            predicate=(predicate := compile_predicate(spec["predicate"], areas)),
            cache_key=static_key(predicate),
            if_missing=_IF_MISSING[spec.get("if_missing", "unknown")],
            review_reason=str(spec.get("review_reason", "")),
            missing_text=str(spec.get("missing_text", "")),
            exit_reason=str(spec.get("exit_reason", "")),
            cases=tuple(
                RuleCase(
                    name=str(case.get("name", "")),
                    on=_date(case["assessed_on"], rule_id),
                    facts=case.get("facts") or {},
                    expect=RuleResult(case["expect"]),
                )
                for case in spec.get("cases", ())
            ),
        )
    except (KeyError, RulebookError, ValueError) as error:
        raise RulebookError(f"rule {rule_id}: {error}") from None


def _load_rule_set(document: Mapping[str, Any], areas: Mapping[str, Area], path: str) -> RuleSet:
    programme_id = str(document["programme"])
    rules = tuple(_load_rule(spec, document, areas) for spec in document["rules"])
    ids = [r.rule_id for r in rules]
    duplicates = {i for i in ids if ids.count(i) > 1}
    for rule_id in duplicates:  # a rule id may repeat only as versions that never overlap in time
        versions = sorted((r for r in rules if r.rule_id == rule_id), key=lambda r: r.effective_from)
        for earlier, later in itertools.pairwise(versions):
            if earlier.effective_to is None or earlier.effective_to >= later.effective_from:
                raise RulebookError(f"{path}: versions of {rule_id} overlap in time")
    for rule in rules:
        if not rule.rule_id.startswith(programme_id + "."):
            raise RulebookError(f"{path}: rule id {rule.rule_id} must start with {programme_id}.")
        if rule.kind == "exit" and not rule.exit_reason:
            raise RulebookError(f"{path}: exit rule {rule.rule_id} needs an exit_reason")
    starts = _date(document["effective_from"], path)
    ends = _optional_date(document.get("effective_to"), path)
    edges = {r.effective_from for r in rules if r.effective_from > starts} | {
        r.effective_to + timedelta(days=1) for r in rules if r.effective_to and r.effective_to != ends
    }
    return RuleSet(
        boundaries=tuple(sorted(edges)),
        uniform=not edges,
        programme_id=programme_id,
        name=str(document["name"]),
        version=str(document["version"]),
        provider=str(document.get("provider", "")),
        service=str(document.get("service", "")),
        summary=str(document.get("summary", "")).strip(),
        source_period=str(document.get("source_period", "")),
        effective_from=starts,
        effective_to=ends,
        coverage=tuple(str(a) for a in document.get("coverage", ())),
        coverage_note=str(document.get("coverage_note", "")).strip(),
        rules=rules,
        routes=tuple(
            Route(
                route_id=str(r["id"]),
                statement=str(r["statement"]),
                citation=str(r["citation"]),
                predicate=compile_predicate(r["when"], areas) if r.get("when") else ALWAYS,
                needs_review=bool(r.get("needs_review", False)),
                review_reason=str(r.get("review_reason", "")),
            )
            for r in document.get("routes", ())
        ),
        reviews=tuple(
            ReviewFlag(
                flag_id=str(r["id"]),
                reason=str(r["reason"]),
                citation=str(r["citation"]),
                enrolled_only=bool(r.get("enrolled_only", False)),
                predicate=compile_predicate(r["when"], areas),
            )
            for r in document.get("reviews", ())
        ),
        path=path,
    )


def load_rulebook_from(texts: Mapping[str, str], areas_text: str) -> Rulebook:
    """Build a rulebook from YAML texts (programme file name -> text) and the areas YAML."""
    areas = _load_areas(yaml.safe_load(areas_text))
    rule_sets = tuple(
        _load_rule_set(yaml.safe_load(text), areas, name) for name, text in sorted(texts.items())
    )
    return Rulebook(rule_sets=rule_sets, areas=areas)


@cache
def load_rulebook() -> Rulebook:
    """Load and compile the rules shipped in `services/eligibility/rules/` (cached: load once)."""
    folder = resources.files("services.eligibility.rules")
    texts = {
        entry.name: entry.read_text(encoding="utf-8")
        for entry in folder.iterdir()
        if entry.name.endswith(".yaml") and entry.name != "areas.yaml"
    }
    return load_rulebook_from(texts, folder.joinpath("areas.yaml").read_text(encoding="utf-8"))
