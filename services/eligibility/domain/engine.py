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
from operator import attrgetter, itemgetter
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
    WindowPredicate,
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
# A plan splits a uniform rule set's rules into three groups, each answered once and shared:
# - static rules (coded facts: nationality, NRM status, area), with the route and review flags: the
#   same for every child sharing those fact values on a date ("parts");
# - age rules: the same for every child born on the same day, assessed on the same date;
# - time windows (months since a date fact): the same for every child whose window starts the same day.
# A decision puts the shared evaluations together in rule order; no rule is evaluated per child. The
# next change is projected from pass/fail counts alone: age and window answers flip at most once, on
# their `next_change`, so no later date needs evaluating. A rule set a plan cannot cover, or a static
# answer that changes by date (an area opening later, an ODA list change), is decided or projected
# rule by rule (`_decide_generic`, `_project_changes`), which is also the reference plans are tested
# against.

_PLAN_LIMIT = 256
_PART_LIMIT = 65536

# Outcome by index: 0 eligible, 1 unknown, 2 ineligible (the index is worked out from counts).
_OUTCOMES = (Outcome.ELIGIBLE, Outcome.UNKNOWN, Outcome.INELIGIBLE)
_NO_REVIEW = (False, "")
# A pending change of pass/fail: (day, change in failing entry rules, change in failing exit rules).
_Event = tuple[date, int, int]


def _flip(evaluation: RuleEvaluation, is_entry: bool) -> _Event:
    day = cast(date, evaluation.next_change)
    change = 1 if evaluation.result is PASS else -1  # a pass turns to fail, a fail to pass
    return (day, change, 0) if is_entry else (day, 0, change)


def _project(
    entry_fails: int, exit_fails: int, enrolled: bool, events: list[_Event] | tuple[_Event, ...]
) -> tuple[date | None, date | None]:
    """Return the next change and exit date from pass/fail counts, as `_project_changes` finds them.

    Valid when every pending change is a single flip (age and window rules): the outcome turns on
    whether any entry rule fails, the continuation on whether any exit rule fails.
    """
    if not events:
        return None, None
    failing = entry_fails > 0
    exiting = exit_fails > 0
    continuing = enrolled and not exiting
    next_change: date | None = None
    exit_on: date | None = None
    ordered = sorted(events)
    index, count, steps = 0, len(ordered), 0
    while index < count and steps < _MAX_CHANGE_STEPS:
        day = ordered[index][0]
        steps += 1
        while index < count and ordered[index][0] == day:
            entry_fails += ordered[index][1]
            exit_fails += ordered[index][2]
            index += 1
        later_exiting = exit_fails > 0
        if next_change is None and (
            (entry_fails > 0) is not failing or (enrolled and later_exiting is not exiting)
        ):
            next_change = day
        if exit_on is None and continuing and later_exiting:
            exit_on = day
        if next_change is not None and (exit_on is not None or not continuing):
            break
    return next_change, exit_on


class _StaticPart:
    """What a rule set's static rules, route and flags answer for one combination of fact values."""

    __slots__ = (
        "entry_fails",
        "entry_unknown",
        "evaluations",
        "exit_fails",
        "flag_reviews",
        "has_events",
        "missing",
        "reviews",
        "route",
        "route_reviews",
        "settled",
        "unknown_reviews",
    )

    def __init__(self, layout: _Layout, rule_set: RuleSet, ctx: Context, enrolled: bool) -> None:
        evaluations = tuple([evaluate_rule(r, ctx) for r in layout.static])
        self.evaluations = evaluations
        self.entry_fails, self.exit_fails, self.entry_unknown, self.settled, _, _ = _tally(evaluations)
        # An answer changing by date (an area opening later, a new ODA list): projected rule by rule.
        self.has_events = any(e.next_change is not None for e in evaluations)
        self.unknown_reviews = tuple(
            e.rule.review_reason for e in evaluations if e.result is UNKNOWN and e.rule.review_reason
        )
        self.missing = _plain_missing(evaluations)
        self.route, self.route_reviews = "", cast(tuple[str, ...], ())
        for candidate in rule_set.routes:
            if passes(candidate.predicate, ctx):
                self.route = candidate.route_id
                self.route_reviews = (candidate.review_reason,) if candidate.needs_review else ()
                break
        self.flag_reviews = tuple(
            flag.reason
            for flag in rule_set.reviews
            if (enrolled or not flag.enrolled_only) and passes(flag.predicate, ctx)
        )
        # (needs review, reason) by outcome index, when no dated rule adds a review of its own.
        self.reviews = (
            _review(self.route_reviews + self.flag_reviews),
            _review(self.unknown_reviews + self.route_reviews + self.flag_reviews),
            _review(self.flag_reviews),
        )


_REVIEWS: dict[tuple[str, ...], tuple[bool, str]] = {}


def _review(reviews: tuple[str, ...]) -> tuple[bool, str]:
    if not reviews:
        return _NO_REVIEW
    found = _REVIEWS.get(reviews)
    if found is None:
        if len(_REVIEWS) >= _PART_LIMIT:
            _REVIEWS.clear()
        found = _REVIEWS[reviews] = (True, "; ".join(dict.fromkeys(reviews)))
    return found


def _tally(evaluations: tuple[RuleEvaluation, ...]) -> tuple[int, int, bool, bool, bool, bool]:
    """Count failing entry and exit rules; say if an entry rule is unknown, a failure is final, etc.

    The flags, in order: an entry rule is unknown, a failure is final, any rule is unknown, an unknown
    rule has a review reason of its own.
    """
    entry_fails = exit_fails = 0
    entry_unknown = settled = any_unknown = unknown_review = False
    for e in evaluations:
        result = e.result
        if result is FAIL:
            if e.rule.kind == "entry":
                entry_fails += 1
            else:
                exit_fails += 1
            settled = settled or e.next_change is None
        elif result is UNKNOWN:
            any_unknown = True
            entry_unknown = entry_unknown or e.rule.kind == "entry"
            unknown_review = unknown_review or bool(e.rule.review_reason)
    return entry_fails, exit_fails, entry_unknown, settled, any_unknown, unknown_review


class _AgeGroup:
    """What a rule set's age rules answer for one date of birth on one date, with their changes."""

    __slots__ = (
        "any_unknown",
        "entry_fails",
        "entry_unknown",
        "evaluations",
        "events",
        "exit_fails",
        "free_next",
        "settled",
        "unknown_review",
    )

    def __init__(self, layout: _Layout, ctx: Context) -> None:
        evaluations = tuple([_evaluate(r, ctx) for r in layout.ages])
        self.evaluations = evaluations
        (
            self.entry_fails,
            self.exit_fails,
            self.entry_unknown,
            self.settled,
            self.any_unknown,
            self.unknown_review,
        ) = _tally(evaluations)
        self.events = tuple(
            _flip(e, e.rule.kind == "entry") for e in evaluations if e.next_change is not None
        )
        # The next change of a child not enrolled when nothing else fails or changes: the usual case.
        self.free_next = _project(self.entry_fails, 0, False, self.events)[0]


class _Layout:
    """A rule set's rules for a child not enrolled (entry rules) or enrolled (all), by group."""

    __slots__ = ("age_groups", "ages", "order", "parts", "static", "window_memo", "windows")

    def __init__(self, rules: tuple[Rule, ...]) -> None:
        self.static = tuple(r for r in rules if r.cache_key is not None)
        self.ages = tuple(r for r in rules if isinstance(r.predicate, AgePredicate))
        window_rules = [r for r in rules if isinstance(r.predicate, WindowPredicate)]
        self.windows = tuple(
            (position, rule, cast(WindowPredicate, rule.predicate), rule.kind == "entry")
            for position, rule in enumerate(window_rules)
        )
        # Evaluations are gathered static, age, window; `order` puts them back in rule order.
        gathered = [*self.static, *self.ages, *window_rules]
        positions = [next(i for i, g in enumerate(gathered) if g is r) for r in rules]
        self.order: Callable[[tuple[RuleEvaluation, ...]], tuple[RuleEvaluation, ...]] | None = None
        if positions != list(range(len(rules))):
            self.order = cast(
                Callable[[tuple[RuleEvaluation, ...]], tuple[RuleEvaluation, ...]], itemgetter(*positions)
            )
        # Keyed by (date, fact values): the date because area and ODA answers depend on it.
        self.parts: dict[tuple[date, object], _StaticPart] = {}
        self.age_groups: dict[tuple[date, date | None], _AgeGroup] = {}
        self.window_memo: dict[tuple[int, date, object], RuleEvaluation] = {}


class _Plan:
    """One rule set compiled: which facts key its static answers, and its two layouts."""

    __slots__ = ("facts_of", "layouts", "rule_set")

    def __init__(self, rule_set: RuleSet, facts_read: tuple[str, ...]) -> None:
        self.rule_set = rule_set
        self.facts_of: Callable[[ChildFacts], object] = (
            attrgetter(*facts_read) if facts_read else lambda facts: ()
        )
        # Index 0: a child not enrolled (entry rules only); index 1: enrolled (every rule).
        self.layouts = (
            _Layout(tuple(r for r in rule_set.rules if r.kind == "entry")),
            _Layout(rule_set.rules),
        )


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
    dated = [r.predicate for r in rule_set.rules if r.cache_key is None]
    if not all(isinstance(p, AgePredicate | WindowPredicate) for p in dated):
        return None  # a predicate of another kind: its changes cannot be projected from counts
    static = [r.predicate for r in rule_set.rules if r.cache_key is not None] + conditions
    facts_read: dict[str, None] = {}
    for predicate in static:
        if not isinstance(predicate, StaticPredicate):  # a cache key without the facts it reads
            return None
        facts_read.update(dict.fromkeys(predicate.facts_read))
    return _Plan(rule_set, tuple(facts_read))


_IN_FORCE_PLANS: dict[int, tuple[tuple[RuleSet, ...], tuple[tuple[RuleSet, _Plan | None], ...]]] = {}


def _plans_in_force(rulebook: Rulebook, on: date) -> tuple[tuple[RuleSet, _Plan | None], ...]:
    """Return each rule set in force on `on` with its plan (the rulebook memoises the tuple by date)."""
    rule_sets = rulebook.in_force(on)
    entry = _IN_FORCE_PLANS.get(id(rule_sets))
    if entry is not None and entry[0] is rule_sets:  # the entry holds the tuple, so ids stay unique
        return entry[1]
    plans = tuple((rule_set, _plan_for(rule_set)) for rule_set in rule_sets)
    if len(_IN_FORCE_PLANS) >= _PLAN_LIMIT:
        _IN_FORCE_PLANS.clear()
    _IN_FORCE_PLANS[id(rule_sets)] = (rule_sets, plans)
    return plans


def _decide_planned(plan: _Plan, ctx: Context) -> ProgrammeDecision:
    """Decide one programme from its plan: the same decision as `_decide_generic`, made faster.

    `ctx` is read only when a shared answer is missing (its `started_on` set for this programme).
    """
    facts, on, dob, started_on = ctx.facts, ctx.on, ctx.date_of_birth, ctx.started_on
    enrolled = started_on is not None
    layout = plan.layouts[enrolled]
    key = (on, plan.facts_of(facts))
    part = layout.parts.get(key)
    if part is None:
        if len(layout.parts) >= _PART_LIMIT:
            layout.parts.clear()
        part = layout.parts[key] = _StaticPart(layout, plan.rule_set, ctx, enrolled)
    age_key = (on, dob)
    ages = layout.age_groups.get(age_key)
    if ages is None:
        if len(layout.age_groups) >= _PART_LIMIT:
            layout.age_groups.clear()
        ages = layout.age_groups[age_key] = _AgeGroup(layout, ctx)
    entry_fails = part.entry_fails + ages.entry_fails
    exit_fails = part.exit_fails + ages.exit_fails
    unknown = part.entry_unknown or ages.entry_unknown
    dated_unknown, dated_review, settled = ages.any_unknown, ages.unknown_review, part.settled or ages.settled
    events: tuple[_Event, ...] | list[_Event] = ages.events
    if layout.windows:
        found: list[RuleEvaluation] = []
        memo = layout.window_memo
        for position, rule, predicate, is_entry in layout.windows:
            window_key = (position, on, predicate.key_of(facts, started_on))
            evaluation = memo.get(window_key)
            if evaluation is None:
                if len(memo) >= _PART_LIMIT:
                    memo.clear()
                evaluation = memo[window_key] = _evaluate(rule, ctx)
            found.append(evaluation)
            result = evaluation.result
            if result is FAIL:
                if is_entry:
                    entry_fails += 1
                else:
                    exit_fails += 1
                settled = settled or evaluation.next_change is None
            elif result is UNKNOWN:
                dated_unknown = True
                unknown = unknown or is_entry
                dated_review = dated_review or bool(rule.review_reason)
            if evaluation.next_change is not None:
                events = [*events, _flip(evaluation, is_entry)]
        gathered = part.evaluations + ages.evaluations + tuple(found)
    else:
        gathered = part.evaluations + ages.evaluations
    evaluations = gathered if layout.order is None else layout.order(gathered)
    index = 2 if entry_fails else 1 if unknown else 0
    outcome = _OUTCOMES[index]

    if dated_review and index == 1:  # a dated rule's unknown adds its own review, in rule order
        needs_review, review_reason = _review(
            tuple([e.rule.review_reason for e in evaluations if e.result is UNKNOWN and e.rule.review_reason])
            + part.route_reviews
            + part.flag_reviews
        )
    else:
        needs_review, review_reason = part.reviews[index]

    if not enrolled:
        continuation, exit_reason, exit_on = Continuation.NOT_ENROLLED, "", None
        if settled:  # a failure no date can undo
            next_change = None
        elif part.has_events:
            next_change, exit_on = _project_changes(plan.rule_set, ctx, evaluations, enrolled)
        elif events is ages.events:
            next_change = ages.free_next
        else:
            next_change = _project(entry_fails, 0, False, events)[0]
    else:
        if exit_fails:
            continuation = Continuation.EXIT
            exit_reason = next(
                e for e in evaluations if e.result is FAIL and e.rule.kind == "exit"
            ).rule.exit_reason
        else:
            continuation, exit_reason = Continuation.CONTINUE, ""
        if part.has_events:
            next_change, exit_on = _project_changes(plan.rule_set, ctx, evaluations, enrolled)
        else:
            next_change, exit_on = _project(entry_fails, exit_fails, True, events)
    return tuple.__new__(
        ProgrammeDecision,
        (
            plan.rule_set.programme_id,
            plan.rule_set.version,
            outcome,
            evaluations,
            _plain_missing(evaluations) if dated_unknown else part.missing,
            continuation,
            exit_reason,
            next_change,
            exit_on,
            part.route if index != 2 else "",
            needs_review,
            review_reason,
        ),
    )


def decide_programme(rule_set: RuleSet, ctx: Context) -> ProgrammeDecision:
    """Decide one programme for the child and date of `ctx`."""
    facts = ctx.facts
    ctx.started_on = facts.enrolment_started_on(rule_set.programme_id) if facts.enrolments else None
    plan = _plan_for(rule_set)
    if plan is None:
        return _decide_generic(rule_set, ctx, ctx.started_on is not None)
    return _decide_planned(plan, ctx)


def _enrolment_starts(facts: ChildFacts) -> dict[str, date]:
    """Return when the child's current stay in each programme started (the latest enrolment)."""
    starts: dict[str, date] = {}
    for enrolment in facts.enrolments:
        known = starts.get(enrolment.programme_id)
        if known is None or enrolment.started_on > known:
            starts[enrolment.programme_id] = enrolment.started_on
    return starts


def assess(facts: ChildFacts, on: date, rulebook: Rulebook) -> Assessment:
    """Decide every programme in force on `on` for the child; pure, no I/O."""
    age_basis = settle_date_of_birth(facts.dates_of_birth)
    dob = age_basis.date_of_birth
    starts = _enrolment_starts(facts) if facts.enrolments else None
    decisions: list[ProgrammeDecision] = []
    next_change: date | None = None
    ctx = Context(facts, on, dob)  # shared by the programmes: ages are worked out once
    for rule_set, plan in _plans_in_force(rulebook, on):
        ctx.started_on = starts.get(rule_set.programme_id) if starts else None
        if plan is None:
            decision = _decide_generic(rule_set, ctx, ctx.started_on is not None)
        else:
            decision = _decide_planned(plan, ctx)
        decisions.append(decision)
        change = decision.next_change
        if change is not None and (next_change is None or change < next_change):
            next_change = change
    return Assessment(on=on, age_basis=age_basis, decisions=tuple(decisions), next_change=next_change)
