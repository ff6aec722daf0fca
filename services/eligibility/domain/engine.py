"""The eligibility engine: applies every programme's rules to a child's facts on a date. Pure and fast.

`assess(facts, on, rulebook)` returns an `Assessment`: per programme an entry outcome (eligible,
ineligible, unknown), every rule with its result, inputs and citation, the continuation of a child
already enrolled (continue / exit with reason), the route, whether a person must review it, and the
next date on which the decision would change by itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from operator import attrgetter
from typing import NamedTuple, cast

from services.eligibility.domain.age import AgeBasis, settle_date_of_birth
from services.eligibility.domain.facts import ChildFacts
from services.eligibility.domain.predicates import (
    PLAIN_MISSING,
    AgePredicate,
    Context,
    Inputs,
    RuleResult,
    StaticPredicate,
    passes,
)
from services.eligibility.domain.rulebook import Rule, Rulebook, RuleSet

PASS, FAIL, UNKNOWN = RuleResult.PASS, RuleResult.FAIL, RuleResult.UNKNOWN
# Each step of the search for the next change re-reads only the rules whose own answer changes; the
# cap only guards against malformed data, real rule sets settle within three or four steps.
_MAX_CHANGE_STEPS = 16


class Outcome(StrEnum):
    """Whether the child can enter a programme."""

    ELIGIBLE = "eligible"
    INELIGIBLE = "ineligible"
    UNKNOWN = "unknown"


class Continuation(StrEnum):
    """For a child already in the programme: stay or leave; NOT_ENROLLED otherwise."""

    NOT_ENROLLED = "not_enrolled"
    CONTINUE = "continue"
    EXIT = "exit"


class RuleEvaluation(NamedTuple):
    """One rule applied to the child's facts: result, the inputs it read, missing facts, next change.

    A named tuple, not a dataclass: tens of them are made per assessment and tuples are the cheapest.
    """

    rule: Rule
    result: RuleResult
    inputs: Inputs
    missing_facts: tuple[str, ...]
    next_change: date | None

    @property
    def rule_id(self) -> str:
        """Return the rule's stable id."""
        return self.rule.rule_id

    def inputs_text(self) -> dict[str, str]:
        """Return the inputs as text, dates in ISO form, for explanations and the wire."""
        return {
            name: value.isoformat() if isinstance(value, date) else str(value) for name, value in self.inputs
        }


class ProgrammeDecision(NamedTuple):
    """The decision for one programme, explaining itself rule by rule (a named tuple: made per programme)."""

    programme_id: str
    rule_set_version: str
    outcome: Outcome
    rules: tuple[RuleEvaluation, ...]
    missing_facts: tuple[str, ...]
    continuation: Continuation
    exit_reason: str
    next_change: date | None
    exit_on: date | None
    route: str
    needs_review: bool
    review_reason: str

    @property
    def excluded_by(self) -> tuple[str, ...]:
        """Return the ids of the entry rules that made the child ineligible (AFRUCA's ODA gap, say)."""
        return tuple(e.rule_id for e in self.rules if e.rule.kind == "entry" and e.result is FAIL)


@dataclass(frozen=True, slots=True)
class Assessment:
    """Every programme's decision for one child on one date, and the age basis used."""

    on: date
    age_basis: AgeBasis
    decisions: tuple[ProgrammeDecision, ...]
    next_change: date | None

    def decision(self, programme_id: str) -> ProgrammeDecision:
        """Return the decision for `programme_id` (KeyError when no rule set was in force)."""
        for decision in self.decisions:
            if decision.programme_id == programme_id:
                return decision
        raise KeyError(programme_id)


_MEMO_LIMIT = 4096


def evaluate_rule(rule: Rule, ctx: Context) -> RuleEvaluation:
    """Apply one rule in a context; `if_missing` turns "nothing recorded" into a pass or fail."""
    if rule.cache_key is not None:  # date-independent: reuse the evaluation made for the same value
        key = rule.cache_key(ctx)
        evaluation: RuleEvaluation | None = rule.memo.get(key)
        if evaluation is None:
            if len(rule.memo) >= _MEMO_LIMIT:
                rule.memo.clear()
            evaluation = rule.memo[key] = _evaluate(rule, ctx)
        return evaluation
    return _evaluate(rule, ctx)


def _evaluate(rule: Rule, ctx: Context) -> RuleEvaluation:
    verdict = rule.predicate(ctx)
    if verdict.result is UNKNOWN and rule.if_missing is not None:
        return RuleEvaluation(rule, rule.if_missing, verdict.inputs, (), verdict.next_change)
    return RuleEvaluation(rule, verdict.result, verdict.inputs, verdict.missing, verdict.next_change)


def _outcome(evaluations: tuple[RuleEvaluation, ...]) -> Outcome:
    outcome = Outcome.ELIGIBLE
    for evaluation in evaluations:
        if evaluation.rule.kind == "entry":
            if evaluation.result is FAIL:
                return Outcome.INELIGIBLE
            if evaluation.result is UNKNOWN:
                outcome = Outcome.UNKNOWN
    return outcome


def _first_exit(evaluations: tuple[RuleEvaluation, ...]) -> RuleEvaluation | None:
    return next((e for e in evaluations if e.rule.kind == "exit" and e.result is FAIL), None)


def _evaluate_all(rule_set: RuleSet, ctx: Context, enrolled: bool) -> tuple[RuleEvaluation, ...]:
    if rule_set.uniform:
        return tuple(evaluate_rule(rule, ctx) for rule in rule_set.rules if enrolled or rule.kind == "entry")
    return tuple(
        evaluate_rule(rule, ctx)
        for rule in rule_set.rules
        if (enrolled or rule.kind == "entry") and rule.in_force(ctx.on)
    )


def _continuation(evaluations: tuple[RuleEvaluation, ...], enrolled: bool) -> Continuation:
    if not enrolled:
        return Continuation.NOT_ENROLLED
    return Continuation.EXIT if _first_exit(evaluations) else Continuation.CONTINUE


def _next_candidate(
    evaluations: tuple[RuleEvaluation, ...], boundaries: tuple[date, ...], after: date
) -> date | None:
    dates = [e.next_change for e in evaluations if e.next_change is not None]
    dates.extend(b for b in boundaries if b > after)
    return min(dates) if dates else None


def _project_changes(
    rule_set: RuleSet, ctx: Context, evaluations: tuple[RuleEvaluation, ...], enrolled: bool
) -> tuple[date | None, date | None]:
    """Return the next date the outcome or continuation changes, and the date an enrolled child exits."""
    outcome, continuation = _outcome(evaluations), _continuation(evaluations, enrolled)
    boundaries = rule_set.boundaries
    # A failure no date can undo (nationality, area, NRM status) settles the decision for good.
    settled = any(e.result is FAIL and e.next_change is None for e in evaluations)
    if settled and not enrolled and not any(b > ctx.on for b in boundaries):
        return None, None
    next_change: date | None = None
    exit_on: date | None = None
    day = _next_candidate(evaluations, boundaries, ctx.on)
    for _ in range(_MAX_CHANGE_STEPS):
        if day is None:
            break
        later = Context(ctx.facts, day, ctx.date_of_birth)
        later.started_on = ctx.started_on
        if day in boundaries:
            evaluations = _evaluate_all(rule_set, later, enrolled)
        else:  # only rules whose own answer changes by `day` need reading again
            evaluations = tuple(
                evaluate_rule(e.rule, later) if e.next_change is not None and e.next_change <= day else e
                for e in evaluations
            )
        later_continuation = _continuation(evaluations, enrolled)
        if next_change is None and (
            _outcome(evaluations) is not outcome or later_continuation is not continuation
        ):
            next_change = day
        if (
            exit_on is None
            and continuation is Continuation.CONTINUE
            and later_continuation is Continuation.EXIT
        ):
            exit_on = day
        if next_change is not None and (exit_on is not None or continuation is not Continuation.CONTINUE):
            break
        day = _next_candidate(evaluations, boundaries, day)
    return next_change, exit_on


def _plain_missing(evaluations: tuple[RuleEvaluation, ...]) -> tuple[str, ...]:
    words: dict[str, None] = {}
    for evaluation in evaluations:
        if evaluation.result is UNKNOWN:
            for fact in evaluation.missing_facts:
                words[evaluation.rule.missing_text or PLAIN_MISSING.get(fact, f"needs {fact}")] = None
    return tuple(words)


def _decide_generic(rule_set: RuleSet, ctx: Context, enrolled: bool) -> ProgrammeDecision:
    """Decide one programme rule by rule: the reference the compiled plans must agree with."""
    evaluations = _evaluate_all(rule_set, ctx, enrolled)
    outcome = _outcome(evaluations)
    continuation = _continuation(evaluations, enrolled)
    exit_rule = _first_exit(evaluations) if enrolled else None
    reviews: list[str] = []
    if outcome is Outcome.UNKNOWN:
        reviews.extend(
            e.rule.review_reason for e in evaluations if e.result is UNKNOWN and e.rule.review_reason
        )
    route = ""
    if outcome is not Outcome.INELIGIBLE:
        for candidate in rule_set.routes:
            if passes(candidate.predicate, ctx):
                route = candidate.route_id
                if candidate.needs_review:
                    reviews.append(candidate.review_reason)
                break
    for flag in rule_set.reviews:
        if (enrolled or not flag.enrolled_only) and passes(flag.predicate, ctx):
            reviews.append(flag.reason)
    next_change, exit_on = _project_changes(rule_set, ctx, evaluations, enrolled)
    return ProgrammeDecision(
        programme_id=rule_set.programme_id,
        rule_set_version=rule_set.version,
        outcome=outcome,
        rules=evaluations,
        missing_facts=_plain_missing(evaluations),
        continuation=continuation,
        exit_reason=exit_rule.rule.exit_reason if exit_rule else "",
        next_change=next_change,
        exit_on=exit_on,
        route=route,
        needs_review=bool(reviews),
        review_reason="; ".join(dict.fromkeys(reviews)),
    )


# --- Compiled plans -------------------------------------------------------------------------------
# Most rules read coded facts only (nationality, NRM status, area): for one rule set, their answers,
# the route and the review flags are the same for every child sharing those few fact values on a
# date. A plan works them out once per combination and keeps only the date-of-birth and date-window
# rules for each child. Plans cover uniform rule sets whose routes and flags are all static; any other
# rule set is decided rule by rule (`_decide_generic`), which is also the reference plans are tested
# against.

_PLAN_LIMIT = 256
_PART_LIMIT = 65536


class _StaticPart(NamedTuple):
    """What a rule set's static rules, route and flags answer for one combination of fact values."""

    template: list[RuleEvaluation | None]
    fails_entry: bool
    unknown_entry: bool
    settled: bool
    unknown_reviews: tuple[str, ...]
    missing: tuple[str, ...]
    route: str
    route_reviews: tuple[str, ...]
    flag_reviews: tuple[str, ...]


class _Plan:
    """One rule set compiled: which rules are static, which facts key them, and their answers so far."""

    __slots__ = ("dated", "facts_of", "parts", "rule_set", "rules")

    def __init__(self, rule_set: RuleSet, facts_read: tuple[str, ...]) -> None:
        self.rule_set = rule_set
        self.facts_of: Callable[[ChildFacts], object] = (
            attrgetter(*facts_read) if facts_read else lambda facts: ()
        )
        # Index 0: a child not enrolled (entry rules only); index 1: enrolled (every rule).
        self.rules = (tuple(r for r in rule_set.rules if r.kind == "entry"), rule_set.rules)
        self.dated = tuple(
            tuple(
                (i, r, r.kind == "entry", isinstance(r.predicate, AgePredicate))
                for i, r in enumerate(rules)
                if r.cache_key is None
            )
            for rules in self.rules
        )
        # Keyed by (date, enrolled, fact values): the date because area and ODA answers depend on it.
        self.parts: dict[tuple[date, bool, object], _StaticPart] = {}


_PLANS: dict[int, tuple[RuleSet, _Plan | None]] = {}


def _plan_for(rule_set: RuleSet) -> _Plan | None:
    """Return the rule set's plan (compiled once), or None when it must be decided rule by rule."""
    entry = _PLANS.get(id(rule_set))
    if entry is not None and entry[0] is rule_set:  # the entry holds the rule set, so ids stay unique
        return entry[1]
    plan = _compile(rule_set)
    if len(_PLANS) >= _PLAN_LIMIT:
        _PLANS.clear()
    _PLANS[id(rule_set)] = (rule_set, plan)
    return plan


def _compile(rule_set: RuleSet) -> _Plan | None:
    if not rule_set.uniform:
        return None
    conditions = [r.predicate for r in rule_set.routes] + [f.predicate for f in rule_set.reviews]
    if not all(isinstance(p, StaticPredicate) for p in conditions):
        return None
    static = [r.predicate for r in rule_set.rules if r.cache_key is not None] + conditions
    facts_read: dict[str, None] = {}
    for predicate in static:
        if not isinstance(predicate, StaticPredicate):  # a cache key without the facts it reads
            return None
        facts_read.update(dict.fromkeys(predicate.facts_read))
    return _Plan(rule_set, tuple(facts_read))


def _static_part(plan: _Plan, ctx: Context, enrolled: bool) -> _StaticPart:
    rules = plan.rules[enrolled]
    template = [evaluate_rule(r, ctx) if r.cache_key is not None else None for r in rules]
    static = [e for e in template if e is not None]
    route, route_reviews = "", cast(tuple[str, ...], ())
    for candidate in plan.rule_set.routes:
        if passes(candidate.predicate, ctx):
            route = candidate.route_id
            route_reviews = (candidate.review_reason,) if candidate.needs_review else ()
            break
    return _StaticPart(
        template=template,
        fails_entry=any(e.result is FAIL and e.rule.kind == "entry" for e in static),
        unknown_entry=any(e.result is UNKNOWN and e.rule.kind == "entry" for e in static),
        settled=any(e.result is FAIL and e.next_change is None for e in static),
        unknown_reviews=tuple(
            e.rule.review_reason for e in static if e.result is UNKNOWN and e.rule.review_reason
        ),
        missing=_plain_missing(tuple(static)),
        route=route,
        route_reviews=route_reviews,
        flag_reviews=tuple(
            flag.reason
            for flag in plan.rule_set.reviews
            if (enrolled or not flag.enrolled_only) and passes(flag.predicate, ctx)
        ),
    )


def _decide_planned(plan: _Plan, ctx: Context, enrolled: bool) -> ProgrammeDecision:
    """Decide one programme from its plan: the same decision as `_decide_generic`, made faster."""
    key = (ctx.on, enrolled, plan.facts_of(ctx.facts))
    part = plan.parts.get(key)
    if part is None:
        if len(plan.parts) >= _PART_LIMIT:
            plan.parts.clear()
        part = plan.parts[key] = _static_part(plan, ctx, enrolled)
    slots = part.template.copy()
    fails, unknown, settled, dated_unknown = part.fails_entry, part.unknown_entry, part.settled, False
    for index, rule, is_entry, by_age in plan.dated[enrolled]:
        if by_age:  # shared by every child with this date of birth on this date: fewer new objects
            shared = ctx.age_verdicts()
            evaluation = shared.get(id(rule))
            # Rules are unhashable, so keyed by id; the evaluation names its rule, so a reused id
            # (a rulebook freed and another loaded) is caught here rather than answered wrongly.
            if evaluation is None or evaluation.rule is not rule:
                evaluation = shared[id(rule)] = evaluate_rule(rule, ctx)
        else:
            evaluation = evaluate_rule(rule, ctx)
        slots[index] = evaluation
        result = evaluation.result
        if result is FAIL:
            fails = fails or is_entry
            settled = settled or evaluation.next_change is None
        elif result is UNKNOWN:
            dated_unknown = True
            unknown = unknown or is_entry
    evaluations = cast(tuple[RuleEvaluation, ...], tuple(slots))
    outcome = Outcome.INELIGIBLE if fails else Outcome.UNKNOWN if unknown else Outcome.ELIGIBLE
    exit_rule = _first_exit(evaluations) if enrolled else None
    continuation = (
        (Continuation.EXIT if exit_rule else Continuation.CONTINUE) if enrolled else Continuation.NOT_ENROLLED
    )
    reviews: list[str] = []
    if outcome is Outcome.UNKNOWN:
        # A date-of-birth rule answering unknown may carry its own review reason, in rule order.
        reviews.extend(
            (e.rule.review_reason for e in evaluations if e.result is UNKNOWN and e.rule.review_reason)
            if dated_unknown
            else part.unknown_reviews
        )
    route = ""
    if outcome is not Outcome.INELIGIBLE:
        route = part.route
        reviews.extend(part.route_reviews)
    reviews.extend(part.flag_reviews)
    if settled and not enrolled:  # a failure no date can undo, and no rule-set boundary ahead
        next_change, exit_on = None, None
    else:
        next_change, exit_on = _project_changes(plan.rule_set, ctx, evaluations, enrolled)
    return tuple.__new__(
        ProgrammeDecision,
        (
            plan.rule_set.programme_id,
            plan.rule_set.version,
            outcome,
            evaluations,
            _plain_missing(evaluations) if dated_unknown else part.missing,
            continuation,
            exit_rule.rule.exit_reason if exit_rule else "",
            next_change,
            exit_on,
            route,
            bool(reviews),
            "; ".join(dict.fromkeys(reviews)),
        ),
    )


def decide_programme(rule_set: RuleSet, ctx: Context) -> ProgrammeDecision:
    """Decide one programme for the child and date of `ctx` (shared across programmes: ages memoised)."""
    facts = ctx.facts
    ctx.started_on = facts.enrolment_started_on(rule_set.programme_id) if facts.enrolments else None
    enrolled = ctx.started_on is not None
    plan = _plan_for(rule_set)
    if plan is None:
        return _decide_generic(rule_set, ctx, enrolled)
    return _decide_planned(plan, ctx, enrolled)


def assess(facts: ChildFacts, on: date, rulebook: Rulebook) -> Assessment:
    """Decide every programme in force on `on` for the child; pure, no I/O."""
    age_basis = settle_date_of_birth(facts.dates_of_birth)
    ctx = Context(facts, on, age_basis.date_of_birth)
    decisions = tuple(decide_programme(rule_set, ctx) for rule_set in rulebook.in_force(on))
    changes = [d.next_change for d in decisions if d.next_change is not None]
    return Assessment(
        on=on, age_basis=age_basis, decisions=decisions, next_change=min(changes) if changes else None
    )
