"""The eligibility engine: applies every programme's rules to a child's facts on a date. Pure and fast.

`assess(facts, on, rulebook)` returns an `Assessment`: per programme an entry outcome (eligible,
ineligible, unknown), every rule with its result, inputs and citation, the continuation of a child
already enrolled (continue / exit with reason), the route, whether a person must review it, and the
next date on which the decision would change by itself.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from enum import StrEnum
from functools import partial
from itertools import count
from operator import attrgetter, itemgetter
from typing import Any, NamedTuple, TypeVar, cast

from services.eligibility.domain.age import AgeBasis, add_months, describe_age, settle_date_of_birth
from services.eligibility.domain.facts import ChildFacts
from services.eligibility.domain.predicates import (
    PLAIN_MISSING,
    AgePredicate,
    Context,
    Inputs,
    Predicate,
    RuleResult,
    StaticPredicate,
    Verdict,
    WindowPredicate,
    passes,
)
from services.eligibility.domain.rulebook import Rule, Rulebook, RuleSet

PASS, FAIL, UNKNOWN = RuleResult.PASS, RuleResult.FAIL, RuleResult.UNKNOWN
# Each step of the search for the next change re-reads only the rules whose own answer changes; the
# cap only guards against malformed data, real rule sets settle within three or four steps.
_MAX_CHANGE_STEPS = 16
_ONE_DAY = timedelta(days=1)


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
    return _judged(rule, rule.predicate(ctx))


# Named tuples made without their generated __new__ (a Python function): tens are made per new child.
_new_evaluation = cast(Callable[[tuple[object, ...]], RuleEvaluation], partial(tuple.__new__, RuleEvaluation))


def _judged(rule: Rule, verdict: Verdict) -> RuleEvaluation:
    """Return the rule's evaluation from its predicate's verdict (`if_missing` applied)."""
    if verdict[0] is UNKNOWN and rule.if_missing is not None:
        return _new_evaluation((rule, rule.if_missing, verdict[1], (), verdict[3]))
    return _new_evaluation((rule, *verdict))


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
#   same for every child sharing those fact values on a date ("parts"), and put together from each
#   rule's own answer when a combination is new;
# - age rules: the same for every child born on the same day, assessed on the same date, and worked
#   out by band of dates of birth (`_AgeBands`): only the inputs and change days are a child's own;
# - time windows (months since a date fact): the same for every child whose window starts the same day.
# A decision puts the shared evaluations together in rule order; no rule is evaluated per child. The
# next change is projected from pass/fail counts alone: age and window answers flip at most once, on
# their `next_change`, so no later date needs evaluating. A rule set a plan cannot cover, or a static
# answer that changes by date (an area opening later, an ODA list change), is decided or projected
# rule by rule (`_decide_generic`, `_project_changes`), which is also the reference plans are tested
# against.
#
# The shared answers live in one table per date (`_LayoutDay`), not in one table keyed by date and
# value: a child's lookups then hash a fact tuple or a date of birth, not a tuple holding them and the
# date, and `assess` finds the day's tables for every programme with one lookup.

_PLAN_LIMIT = 256
_PART_LIMIT = 65536
# Dates with tables kept (the oldest goes first): today, and a few what-if dates besides.
_DAY_LIMIT = 8

# Outcome by index: 0 eligible, 1 unknown, 2 ineligible (the index is worked out from counts).
_OUTCOMES = (Outcome.ELIGIBLE, Outcome.UNKNOWN, Outcome.INELIGIBLE)
_NO_REVIEW = (False, "")
_NOT_ENROLLED = Continuation.NOT_ENROLLED
# A pending change of pass/fail: (day, change in failing entry rules, change in failing exit rules).
_Event = tuple[date, int, int]


def _flip(evaluation: RuleEvaluation, is_entry: bool) -> _Event:
    day: date = evaluation.next_change  # type: ignore[assignment]  # only called when it is set
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
    if len(events) == 1 and not enrolled:  # the usual case (one age limit ahead): no search needed
        ((day, entry_change, _),) = events
        return (day if (entry_fails > 0) is not (entry_fails + entry_change > 0) else None), None
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


_REVIEWS: dict[tuple[str, ...], tuple[bool, str]] = {}


def _review(reviews: tuple[str, ...]) -> tuple[bool, str]:
    """Return (needs review, the reasons joined once each), shared: few distinct lists of reasons exist."""
    if not reviews:
        return _NO_REVIEW
    found = _REVIEWS.get(reviews)
    if found is None:
        if len(_REVIEWS) >= _PART_LIMIT:
            _REVIEWS.clear()
        found = _REVIEWS[reviews] = (True, "; ".join(dict.fromkeys(reviews)))
    return found


class _Summary:
    """What a group of evaluations adds up to: counts, flags, pending changes, the outcome alone.

    Worked out once per group and read by every decision that uses the group, so no decision counts
    rule by rule.
    """

    __slots__ = (
        "any_unknown",
        "entry_fails",
        "events",
        "exit_fails",
        "free_next",
        "has_events",
        "index",
        "missing",
        "settled",
        "unknown_review",
        "unknown_reviews",
    )

    def __init__(self, evaluations: tuple[RuleEvaluation, ...]) -> None:
        entry_fails = exit_fails = 0
        entry_unknown = settled = any_unknown = False
        unknown_reviews: list[str] = []
        events: list[_Event] = []
        for e in evaluations:
            rule, result, next_change = e.rule, e.result, e.next_change
            is_entry = rule.kind == "entry"
            if result is FAIL:
                if is_entry:
                    entry_fails += 1
                else:
                    exit_fails += 1
                settled = settled or next_change is None  # a failure no date can undo
            elif result is UNKNOWN:
                any_unknown = True
                entry_unknown = entry_unknown or is_entry
                if rule.review_reason:
                    unknown_reviews.append(rule.review_reason)
            if next_change is not None:  # it flips then: a pass turns to fail, a fail to pass
                change = 1 if result is PASS else -1
                events.append((next_change, change, 0) if is_entry else (next_change, 0, change))
        self.entry_fails, self.exit_fails, self.settled = entry_fails, exit_fails, settled
        # The outcome these rules alone give (see `_OUTCOMES`): a decision takes the worse of the
        # groups' outcomes without counting again.
        self.index = 2 if entry_fails else 1 if entry_unknown else 0
        self.any_unknown = any_unknown
        self.missing = _plain_missing(evaluations) if any_unknown else ()
        self.unknown_reviews = tuple(unknown_reviews)
        self.unknown_review = bool(unknown_reviews)
        self.events = tuple(events)
        # For static rules: an answer that changes by date (an area opening later, a new ODA list),
        # which is projected rule by rule.
        self.has_events = bool(events)
        # For age rules: the next change of a child not enrolled when nothing else fails or changes.
        if len(events) == 1:  # one limit ahead (the usual case): it changes the outcome if it flips it
            ((day, change, _),) = events
            self.free_next = day if (entry_fails > 0) is not (entry_fails + change > 0) else None
        else:
            self.free_next = _project(entry_fails, 0, False, events)[0]


class _Conditions:
    """The route and review flags a layout chooses for one combination of the fact values they read."""

    __slots__ = ("flag_reviews", "route", "route_reviews", "tails")

    def __init__(self, layout: _Layout, ctx: Context) -> None:
        rule_set = layout.rule_set
        self.route, self.route_reviews = "", cast(tuple[str, ...], ())
        for candidate in rule_set.routes:
            if passes(candidate.predicate, ctx):
                self.route = candidate.route_id
                self.route_reviews = (candidate.review_reason,) if candidate.needs_review else ()
                break
        self.flag_reviews = tuple(
            flag.reason
            for flag in rule_set.reviews
            if (layout.enrolled or not flag.enrolled_only) and passes(flag.predicate, ctx)
        )
        self.tails: dict[tuple[str, ...], tuple[_Tail, _Tail, _Tail]] = {}

    def tails_by_index(self, unknown_reviews: tuple[str, ...]) -> tuple[_Tail, _Tail, _Tail]:
        """Return (outcome, route, needs review, reason) by outcome index, given the static rules' reviews.

        Kept per distinct list of reviews (a handful): used when no dated rule adds a review of its own.
        An ineligible child gets no route.
        """
        found = self.tails.get(unknown_reviews)
        if found is None:
            found = self.tails[unknown_reviews] = (
                (Outcome.ELIGIBLE, self.route, *_review(self.route_reviews + self.flag_reviews)),
                (
                    Outcome.UNKNOWN,
                    self.route,
                    *_review(unknown_reviews + self.route_reviews + self.flag_reviews),
                ),
                (Outcome.INELIGIBLE, "", *_review(self.flag_reviews)),
            )
        return found


# The last four fields of a decision for one outcome: (outcome, route, needs review, review reason).
_Tail = tuple[Outcome, str, bool, str]
# The static answers for one combination of fact values, flat so a decision reads them by unpacking:
# (static rules' evaluations, their outcome index, a failure no date undoes, an answer changes by
# date, missing facts, tails by outcome index, conditions, the rules' summary). The evaluations and
# summary are shared by every combination with the same values of the facts the rules read, the
# conditions likewise.
_Part = tuple[
    tuple[RuleEvaluation, ...],
    int,
    bool,
    bool,
    tuple[str, ...],
    tuple[_Tail, _Tail, _Tail],
    _Conditions,
    _Summary,
]
# The age rules' answers for one date of birth, flat likewise: (this programme's own evaluations,
# their outcome index, a failure no date undoes, a rule unknown, the next change of a child not
# enrolled, the summary of the counts (shared by every date of birth in the band, see `_AgeBands`),
# the pending changes with their dates (read by `_decide_in_full` only; empty for other layouts)).
# A part without its evaluations: the same for every combination whose rules answer alike.
_PartRest = tuple[int, bool, bool, tuple[str, ...], tuple[_Tail, _Tail, _Tail], _Conditions, _Summary]
_AgeGroup = tuple[tuple[RuleEvaluation, ...], int, bool, bool, date | None, _Summary, tuple[_Event, ...]]
_Order = Callable[[tuple[RuleEvaluation, ...]], tuple[RuleEvaluation, ...]]


_KEY_NUMBERS: dict[object, int] = {}


def _key_number(signature: object) -> int:
    """Return a number standing for `signature`, the same for equal ones (never reused: a few exist).

    Negative, so it never equals an age predicate's key (see `AgePredicate.key`) in the same table.
    """
    return _KEY_NUMBERS.setdefault(signature, -1 - len(_KEY_NUMBERS))


def _facts_getter(predicates: list[Predicate]) -> Callable[[ChildFacts], object]:
    """Return a function picking the facts static `predicates` read (one value, a tuple, or ())."""
    facts: dict[str, None] = {}
    for predicate in predicates:
        facts.update(dict.fromkeys(cast(StaticPredicate, predicate).facts_read))
    return attrgetter(*facts) if facts else lambda facts: ()


class _Layout:
    """A rule set's rules for a child not enrolled (entry rules) or enrolled (all), by group."""

    __slots__ = (
        "age_key",
        "age_verdicts",
        "ages",
        "conditions_of",
        "enrolled",
        "facts_of",
        "order",
        "plain",
        "readers",
        "rule_set",
        "static",
        "values_of",
        "window_readers",
        "windows",
    )

    def __init__(self, rule_set: RuleSet, enrolled: bool) -> None:
        rules = rule_set.rules if enrolled else tuple(r for r in rule_set.rules if r.kind == "entry")
        self.rule_set = rule_set
        self.enrolled = enrolled
        self.static = tuple(r for r in rules if r.cache_key is not None)
        # Only the conditions this layout reads: a flag for enrolled children only (a negative NRM
        # decision, say) never applies to a child not enrolled, so its fact does not key that
        # layout's parts (RISE's parts for children not enrolled: half as many combinations).
        conditions = [r.predicate for r in rule_set.routes] + [
            f.predicate for f in rule_set.reviews if enrolled or not f.enrolled_only
        ]
        # Every fact the layout's static answers read: the key of its parts.
        self.facts_of = _facts_getter([r.predicate for r in self.static] + conditions)
        # Each static rule and the conditions (routes, flags) are also answered apart, by the facts
        # each reads, and put together when a combination of all the facts is first seen: RISE's
        # four rules read four facts, each with a handful of values, so few answers are worked out.
        self.readers = tuple(_facts_getter([r.predicate]) for r in self.static)
        # When each static rule reads one fact (every kind does today): all their values in one call.
        names = [cast(StaticPredicate, r.predicate).facts_read for r in self.static]
        self.values_of: Callable[[ChildFacts], tuple[object, ...]] | None = None
        if names and all(len(read) == 1 for read in names):
            pick = attrgetter(*[read[0] for read in names])
            self.values_of = pick if len(names) > 1 else lambda facts: (pick(facts),)
        self.conditions_of = _facts_getter(conditions)
        self.ages = tuple(r for r in rules if isinstance(r.predicate, AgePredicate))
        self.age_verdicts = tuple((r, cast(AgePredicate, r.predicate)) for r in self.ages)
        # Everything the age rules' summary depends on besides the date of birth and the date, as a
        # small number (a key hashed on every new date of birth).
        self.age_key = _key_number(
            tuple(
                (predicate.signature, r.kind, r.review_reason, r.if_missing)
                for r, predicate in self.age_verdicts
            )
        )
        window_rules = [r for r in rules if isinstance(r.predicate, WindowPredicate)]
        self.windows = tuple(
            (position, rule, cast(WindowPredicate, rule.predicate), rule.kind == "entry")
            for position, rule in enumerate(window_rules)
        )
        # A child not enrolled, with no window to read: the short road in `_decide_on`.
        self.plain = not enrolled and not self.windows
        # For a child not enrolled: each window's table keyed by the facts it reads, as they are (an
        # attrgetter, no Python call per child); None for a window on the enrolment.
        self.window_readers = tuple(
            None
            if predicate.fact == "enrolment_started_on"
            else attrgetter(*filter(None, (predicate.requires_yes, predicate.fact)))
            for _, _, predicate, _ in self.windows
        )
        # Evaluations are gathered static, age, window; `order` puts them back in rule order.
        gathered = [*self.static, *self.ages, *window_rules]
        positions = [next(i for i, g in enumerate(gathered) if g is r) for r in rules]
        self.order: _Order | None = None
        if positions != list(range(len(rules))):
            self.order = cast(_Order, itemgetter(*positions))


class _LayoutDay:
    """A layout's shared answers on one date: parts by fact values, age groups by date of birth, windows.

    The tables start empty and fill as children are assessed; each is cleared when it reaches
    `_PART_LIMIT` entries, which only costs answers worked out again.
    """

    __slots__ = (
        "ages",
        "answers",
        "bands",
        "classes",
        "conditions",
        "decide",
        "facts_of",
        "layout",
        "missing",
        "on",
        "order",
        "parts",
        "programme_id",
        "read_windows",
        "rests",
        "version",
        "windows",
    )

    def __init__(self, layout: _Layout, on: date) -> None:
        self.layout = layout
        # Copied from the layout and rule set: read for every child.
        self.facts_of = layout.facts_of
        self.order = layout.order
        self.programme_id = layout.rule_set.programme_id
        self.version = layout.rule_set.version
        self.decide: Callable[[_LayoutDay, Context, _AgeGroup], ProgrammeDecision] = (
            _decide_plain
            if layout.plain
            else _decide_windowed
            if not layout.enrolled and None not in layout.window_readers
            else _decide_in_full
        )
        self.parts: dict[object, _Part] = {}
        # Per static rule: its evaluation by the values of the facts it reads, with the number of its
        # class (result, next change, missing facts: all a summary reads besides the rule itself).
        self.answers: tuple[dict[object, tuple[RuleEvaluation, int]], ...] = tuple({} for _ in layout.static)
        self.classes: tuple[dict[object, int], ...] = tuple({} for _ in layout.static)
        # What a part holds besides its evaluations, by the static rules' classes and the conditions'
        # key: the same for every combination of fact values that answers alike.
        self.rests: dict[tuple[tuple[int, ...], object], _PartRest] = {}
        self.conditions: dict[object, _Conditions] = {}
        self.ages: dict[date | None, _AgeGroup] = {}
        # This layout's age rules answered by band of dates of birth (made when first needed).
        self.bands: _AgeBands | None = None
        self.on = on
        # One table per window rule, keyed by what decides it besides the date (`key_of`).
        self.windows: tuple[dict[object, RuleEvaluation], ...] = tuple({} for _ in layout.windows)
        # The same evaluations keyed by the facts as read (`_Layout.window_readers`).
        self.read_windows: tuple[dict[object, RuleEvaluation], ...] = tuple({} for _ in layout.windows)
        # The missing facts of a child whose window is unknown, by the static rules' summary and the
        # windows unknown (`_decide_windowed`).
        self.missing: dict[tuple[object, ...], tuple[str, ...]] = {}

    def add_part(self, ctx: Context, key: object) -> _Part:
        """Work out and keep the part for the fact values of `ctx` (`key`: those the layout reads).

        Put together from each static rule's answer and what the combination of their classes adds
        up to: a new combination of known values costs a few lookups, not an evaluation.
        """
        layout = self.layout
        facts = ctx.facts
        values_of = layout.values_of
        values = tuple([read(facts) for read in layout.readers]) if values_of is None else values_of(facts)
        found: list[Any] = list(map(dict.get, self.answers, values))  # (evaluation, class) by rule, or None
        if not all(found):  # an answer not worked out yet (an answer is a non-empty tuple)
            for position, value in enumerate(values):
                if found[position] is None:
                    found[position] = self._add_answer(position, value, ctx)
        static: tuple[RuleEvaluation, ...] = tuple(map(_first, found))
        rest_key = (tuple(map(_second, found)), layout.conditions_of(facts))
        rest = self.rests.get(rest_key)
        if rest is None:
            rest = _remember(self.rests, rest_key, self._rest(static, ctx))
        parts = self.parts
        if len(parts) >= _PART_LIMIT:
            parts.clear()
        part = parts[key] = (static, *rest)
        return part

    def _add_answer(self, position: int, value: object, ctx: Context) -> tuple[RuleEvaluation, int]:
        """Work out and keep static rule `position`'s answer for `value` (the values `ctx` holds)."""
        evaluation = evaluate_rule(self.layout.static[position], ctx)
        classes = self.classes[position]
        signature = (evaluation.result, evaluation.next_change, evaluation.missing_facts)
        number = classes.get(signature)
        if number is None:
            # A fresh number each time (`next` on a count is atomic): two threads meeting two new
            # classes at once can never give both the same number; setdefault keeps the first.
            number = classes.setdefault(signature, next(_CLASS_NUMBERS))
        return _remember(self.answers[position], value, (evaluation, number))

    def _rest(self, static: tuple[RuleEvaluation, ...], ctx: Context) -> _PartRest:
        """Return what a part holds besides `static`: the static rules' summary, with the conditions."""
        layout = self.layout
        conditions_key = layout.conditions_of(ctx.facts)
        conditions = self.conditions.get(conditions_key)
        if conditions is None:
            conditions = _remember(self.conditions, conditions_key, _Conditions(layout, ctx))
        summary = _Summary(static)
        tails = conditions.tails_by_index(summary.unknown_reviews)
        return (
            summary.index,
            summary.settled,
            summary.has_events,
            summary.missing,
            tails,
            conditions,
            summary,
        )

    def add_age_group(self, ctx: Context) -> _AgeGroup:
        """Work out and keep the age group for the date of birth of `ctx`."""
        dob = ctx.date_of_birth
        bands = self.bands
        if bands is None:
            bands = self.bands = _AgeBands((self.layout,), ctx.on)
        if dob is None or not bands.usable:
            group = _age_group_by_rule(self.layout, ctx)
        else:
            group = bands.group(dob, ctx)
        return _remember(self.ages, dob, group)

    def add_read_window(self, index: int, read: object, ctx: Context) -> RuleEvaluation:
        """Find window rule `index`'s evaluation for the facts of `ctx` (`read` off them) and keep it."""
        window_key = self.layout.windows[index][2].key_of(ctx.facts, ctx.started_on)
        evaluation = self.windows[index].get(window_key)
        if evaluation is None:
            evaluation = self.add_window(index, window_key, ctx)
        return _remember(self.read_windows[index], read, evaluation)

    def add_window(self, index: int, key: object, ctx: Context) -> RuleEvaluation:
        """Work out and keep window rule `index`'s evaluation for `key` (that of `ctx`)."""
        return _remember(self.windows[index], key, _evaluate(self.layout.windows[index][1], ctx))


def _age_group_by_rule(layout: _Layout, ctx: Context) -> _AgeGroup:
    """Work out an age group rule by rule: with no date of birth, or on a date bands cannot serve."""
    shared = ctx.age_verdicts()
    evaluations = tuple([_judged(r, shared.get(p.key) or p(ctx)) for r, p in layout.age_verdicts])
    # Another programme with the same age rules may have summed them up already.
    summary: _Summary | None = shared.get(layout.age_key)
    if summary is None:
        summary = shared[layout.age_key] = _Summary(evaluations)
    events = summary.events if layout.enrolled or layout.windows else ()
    return (
        evaluations,
        summary.index,
        summary.settled,
        summary.any_unknown,
        summary.free_next,
        summary,
        events,
    )


def _reached(dob: date, day: tuple[int, int] | None) -> date | None:
    """Return the day a limit of (months, a day later) brings a change for a child born on `dob`."""
    if day is None:
        return None
    months, later = day
    reached = add_months(dob, months)
    return reached + _ONE_DAY if later else reached


def _cutoff(predicate: AgePredicate, on: date) -> date:
    """Return the latest date of birth whose age limit is reached on or before the verdict's turning day.

    The turning day is `on` (below, at least: the limit reached on `on` counts) or the day before
    (at most). Reaching the limit (`add_months`) never moves earlier for a later date of birth, so the
    answer on `on` is one for every date of birth up to the cut-off and the other after it: searched
    by halving.
    """
    last = on - _ONE_DAY if predicate.comparison == "at_most" else on
    months = predicate.months
    if months < 0:
        raise ValueError("a negative age limit")
    low, high = last.toordinal() - 31 * months - 62, last.toordinal()
    if add_months(date.fromordinal(high), months) <= last:  # a limit of 0 months
        return last
    while high - low > 1:  # add_months(low) <= last < add_months(high)
        middle = (low + high) // 2
        if add_months(date.fromordinal(middle), months) <= last:
            low = middle
        else:
            high = middle
    return date.fromordinal(low)


# One layout's age rules in one band (`_AgeBands`): (where its evaluations start and end among the
# band's, outcome index, a failure no date undoes, the summary of the counts, the index of the next
# change of a child not enrolled (-1: none), the pending changes as (date index, entry change, exit
# change), or None when the layout never reads them).
_BandLayout = tuple[int, int, int, bool, _Summary, int, tuple[tuple[int, int, int], ...] | None]
# A band: (the change days to work out as (index, months, a day later), every layout's age rules in
# order with their result, the index of their inputs and of their next change (-1: none), the layouts).
_BandTemplate = tuple[
    tuple[tuple[int, int, int], ...], tuple[tuple[Rule, RuleResult, int, int], ...], tuple[_BandLayout, ...]
]


class _AgeBands:
    """The age rules of some layouts on one date, answered by band of dates of birth.

    On a given date every age limit is a cut-off on the date of birth: each rule's answer is the same
    for every date of birth between two consecutive cut-offs (a band), and so are the counts, the
    outcome and which limit brings the next change (limits are reached in the order of their months
    for any date of birth). A band's answers are worked out once; a new date of birth then costs only
    what is its own: its age in words, the inputs and the days it reaches the limits that bring a
    change. A few dozen bands replace thousands of dates of birth, and no rule is evaluated per child.
    """

    __slots__ = ("cutoffs", "days", "layouts", "limits", "on", "position", "templates", "usable")

    def __init__(self, layouts: tuple[_Layout, ...], on: date) -> None:
        self.layouts = layouts
        self.on = on
        predicates = {p.signature: p for layout in layouts for _, p in layout.age_verdicts}
        # The inputs every age rule shows besides the date of birth and age: its limit in words.
        self.limits = tuple(dict.fromkeys(("limit", p.limit) for p in predicates.values()))
        # The day a limit brings a change: (months, 1 when the day after reaching them).
        self.days = tuple(
            dict.fromkeys((p.months, 1 if p.comparison == "at_most" else 0) for p in predicates.values())
        )
        self.templates: dict[int, _BandTemplate] = {}
        try:
            cutoffs = {signature: _cutoff(p, on) for signature, p in predicates.items()}
        except (ValueError, OverflowError):  # a date at the edge of the calendar: rule by rule
            cutoffs = {}
            self.usable = False
        else:
            self.usable = True
        self.cutoffs = sorted(set(cutoffs.values()))
        self.position = {signature: self.cutoffs.index(cutoff) for signature, cutoff in cutoffs.items()}

    def row(self, dob: date, ctx: Context) -> tuple[_AgeGroup, ...]:
        """Return the age group of every layout, in order, for a child born on `dob` (that of `ctx`).

        The date of birth and age in words are made once per context: the age row and the group of
        the programme the child is enrolled in share them. Every layout's evaluations are made in one
        go and sliced apart.
        """
        band = bisect_left(self.cutoffs, dob)
        template = self.templates.get(band)
        if template is None:
            template = self._template(band, dob)
        needed, recipe, layouts = template
        born, age = ctx.age_inputs(dob)
        inputs = [(born, age, limit) for limit in self.limits]
        days: list[Any] = [None] * (len(self.days) + 1)  # dates or None; the last stays None (index -1)
        for index, months, later in needed:
            day = add_months(dob, months)
            days[index] = day + _ONE_DAY if later else day
        evaluations = tuple(
            [_new_evaluation((rule, result, inputs[i], (), days[d])) for rule, result, i, d in recipe]
        )
        return tuple(
            [
                (
                    evaluations[start:end],
                    index,
                    settled,
                    False,
                    days[free_next],
                    summary,
                    ()
                    if changes is None
                    else tuple([(days[d], entry, leave) for d, entry, leave in changes]),
                )
                for start, end, index, settled, summary, free_next, changes in layouts
            ]
        )

    def group(self, dob: date, ctx: Context) -> _AgeGroup:
        """Return the one layout's age group for a child born on `dob`: `row` for a single layout."""
        band = bisect_left(self.cutoffs, dob)
        template = self.templates.get(band)
        if template is None:
            template = self._template(band, dob)
        needed, recipe, ((_, _, index, settled, summary, free_next, changes),) = template
        born, age = ctx.age_inputs(dob)
        inputs = [(born, age, limit) for limit in self.limits]
        days: list[Any] = [None] * (len(self.days) + 1)  # dates or None; the last stays None (index -1)
        for position, months, later in needed:
            day = add_months(dob, months)
            days[position] = day + _ONE_DAY if later else day
        evaluations = tuple(
            [_new_evaluation((rule, result, inputs[i], (), days[d])) for rule, result, i, d in recipe]
        )
        events = () if changes is None else tuple([(days[d], e, x) for d, e, x in changes])
        return (evaluations, index, settled, False, days[free_next], summary, events)

    def _template(self, band: int, dob: date) -> _BandTemplate:
        """Work out and keep band `band`'s answers (`dob` is in it: its evaluations sum them up)."""
        inputs = [
            (("date_of_birth", dob), ("age", describe_age(dob, self.on)), limit) for limit in self.limits
        ]
        needed: dict[int, None] = {}
        recipes: list[tuple[Rule, RuleResult, int, int]] = []
        layouts: list[_BandLayout] = []
        for layout in self.layouts:
            recipe = []
            for rule, predicate in layout.age_verdicts:
                reaches = self.position[predicate.signature] >= band  # the limit already reached
                result = PASS if reaches is (predicate.comparison == "at_least") else FAIL
                # Below and at most: a pass ends when the limit is reached; at least: a fail.
                changes = result is (FAIL if predicate.comparison == "at_least" else PASS)
                day = self.days.index((predicate.months, 1 if predicate.comparison == "at_most" else 0))
                if changes:
                    needed[day] = None
                recipe.append(
                    (rule, result, self.limits.index(("limit", predicate.limit)), day if changes else -1)
                )
            # The counts, from this date of birth's evaluations (the same for any in the band).
            days = [None if d < 0 else self.days[d] for *_, d in recipe]
            summary = _Summary(
                tuple(
                    [
                        _new_evaluation((rule, result, inputs[i], (), _reached(dob, day)))
                        for (rule, result, i, _), day in zip(recipe, days, strict=True)
                    ]
                )
            )
            # Pending changes by limit: reached in the order of (months, a day later) for any date of
            # birth, so the next change of a child not enrolled is the same limit across the band.
            symbolic = [
                (day, 1 if result is PASS else -1, rule.kind == "entry")
                for (rule, result, _, _), day in zip(recipe, days, strict=True)
                if day is not None
            ]
            events = [(day, change, 0) if entry else (day, 0, change) for day, change, entry in symbolic]
            free = _project(summary.entry_fails, 0, False, cast(list[_Event], events))[0]
            free_next = -1 if free is None else self.days.index(free)  # a (months, a day later) here
            changes_of = None
            if layout.enrolled or None in layout.window_readers:  # read by `_decide_in_full` only
                changes_of = tuple(
                    (self.days.index(day), entry_change, exit_change)
                    for day, entry_change, exit_change in events
                )
            start = len(recipes)
            recipes.extend(recipe)
            layouts.append(
                (start, len(recipes), summary.index, summary.settled, summary, free_next, changes_of)
            )
        template = (tuple((d, *self.days[d]) for d in needed), tuple(recipes), tuple(layouts))
        self.templates[band] = template
        return template


_V = TypeVar("_V")
# Numbers for the classes of static answers (`_LayoutDay._add_answer`), never reused.
_CLASS_NUMBERS = count()
_first, _second = itemgetter(0), itemgetter(1)


def _remember(table: dict[Any, _V], key: object, value: _V) -> _V:
    """Keep `value` under `key` and return it; a full table is emptied first (it is only a cache)."""
    if len(table) >= _PART_LIMIT:
        table.clear()
    table[key] = value
    return value


class _Plan:
    """One rule set compiled: which facts key its static answers, its two layouts, and their days."""

    __slots__ = ("days", "layouts", "rule_set")

    def __init__(self, rule_set: RuleSet) -> None:
        self.rule_set = rule_set
        # Index 0: a child not enrolled (entry rules only); index 1: enrolled (every rule).
        self.layouts = (_Layout(rule_set, False), _Layout(rule_set, True))
        self.days: dict[date, tuple[_LayoutDay, _LayoutDay]] = {}

    def day(self, on: date) -> tuple[_LayoutDay, _LayoutDay]:
        """Return the tables of both layouts for `on` (made when first asked for)."""
        found = self.days.get(on)
        if found is None:
            if len(self.days) >= _DAY_LIMIT:
                # The oldest date; pop, not del: a thread deciding in parallel may have dropped it.
                self.days.pop(next(iter(self.days), on), None)
            found = self.days[on] = (_LayoutDay(self.layouts[0], on), _LayoutDay(self.layouts[1], on))
        return found


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
    static = [r.predicate for r in rule_set.rules if r.cache_key is not None]
    if not all(isinstance(p, StaticPredicate) for p in static):  # a cache key without the facts it reads
        return None
    return _Plan(rule_set)


class _Day:
    """What `assess` reads for one date: each rule set in force with its layouts' tables, and age rows.

    An age row holds, for one date of birth, the age group of every programme for a child enrolled in
    none of them (most children): one lookup per child instead of one per programme.
    """

    __slots__ = ("bands", "deciders", "entries", "not_enrolled", "rows")

    def __init__(self, rulebook: Rulebook, on: date) -> None:
        entries = []
        for rule_set in rulebook.in_force(on):
            plan = _plan_for(rule_set)
            entries.append((rule_set, None if plan is None else plan.day(on)))
        self.entries: tuple[tuple[RuleSet, tuple[_LayoutDay, _LayoutDay] | None], ...] = tuple(entries)
        # The tables of every programme for a child enrolled nowhere; None when one must be decided
        # rule by rule (then `assess` takes the general road).
        self.not_enrolled: tuple[_LayoutDay, ...] | None = None
        if all(days is not None for _, days in entries):
            self.not_enrolled = tuple(cast(tuple[_LayoutDay, _LayoutDay], days)[0] for _, days in entries)
        self.rows: dict[date | None, tuple[_AgeGroup, ...]] = {}
        # The age rules of the layouts of a child enrolled nowhere, by band (made when first needed).
        self.bands: _AgeBands | None = None
        # With each, the function deciding for a child not enrolled (`_LayoutDay.decide`).
        self.deciders = tuple((day.decide, day) for day in self.not_enrolled or ())

    def add_row(self, days: tuple[_LayoutDay, ...], ctx: Context) -> tuple[_AgeGroup, ...]:
        """Work out and keep the age row for the date of birth of `ctx` (groups of `days`, in order)."""
        dob = ctx.date_of_birth
        bands = self.bands
        if bands is None:
            bands = self.bands = _AgeBands(tuple(day.layout for day in days), ctx.on)
        if dob is None or not bands.usable:
            row = tuple([_age_group_by_rule(day.layout, ctx) for day in days])
        else:
            row = bands.row(dob, ctx)
        return _remember(self.rows, dob, row)


def _day_plan(rulebook: Rulebook, on: date) -> _Day:
    """Return what `assess` reads for `on`, kept on the rulebook (the oldest date goes first)."""
    found: _Day | None = rulebook.day_memo.get(on)
    if found is None:
        if len(rulebook.day_memo) >= _DAY_LIMIT:
            # The oldest date (pop: a thread deciding in parallel may have dropped it already).
            rulebook.day_memo.pop(next(iter(rulebook.day_memo), on), None)
        found = rulebook.day_memo[on] = _Day(rulebook, on)
    return found


def _decide_on(day: _LayoutDay, ctx: Context, ages: _AgeGroup | None = None) -> ProgrammeDecision:
    """Decide one programme from its tables for the date: the same decision as `_decide_generic`.

    `ctx` (its `started_on` set for this programme) is read for the keys, and evaluated only when a
    shared answer is missing; `ages` is the child's age group when the caller has it already.
    """
    if ages is None:
        ages = day.ages.get(ctx.date_of_birth)
        if ages is None:
            ages = day.add_age_group(ctx)
    return day.decide(day, ctx, ages)


def _decide_plain(day: _LayoutDay, ctx: Context, ages: _AgeGroup) -> ProgrammeDecision:
    """Decide for a child not enrolled in a programme without time windows (`_LayoutDay.decide`).

    The outcome is the worse of the two groups', the rest is read off the groups. The common case,
    so kept short.
    """
    key = day.facts_of(ctx.facts)
    part = day.parts.get(key)
    if part is None:
        part = day.add_part(ctx, key)
    static, index, settled, has_events, missing, tails, conditions, _ = part
    dated, ages_index, ages_settled, ages_unknown, next_change, _, _ = ages
    if ages_index > index:
        index = ages_index
    gathered = static + dated
    order = day.order
    evaluations = gathered if order is None else order(gathered)
    if ages_unknown:  # no date of birth: its missing fact (and any review) join in rule order
        missing = _plain_missing(evaluations)
        outcome, route, needs_review, review_reason = _dated_tail(evaluations, conditions, ages, index, tails)
    else:
        outcome, route, needs_review, review_reason = tails[index]
    if settled or ages_settled:  # a failure no date can undo
        next_change = None
    elif has_events:
        next_change = _project_changes(day.layout.rule_set, ctx, evaluations, False)[0]
    return tuple.__new__(
        ProgrammeDecision,
        (
            day.programme_id,
            day.version,
            outcome,
            evaluations,
            missing,
            _NOT_ENROLLED,
            "",
            next_change,
            None,
            route,
            needs_review,
            review_reason,
        ),
    )


def _dated_tail(
    evaluations: tuple[RuleEvaluation, ...],
    conditions: _Conditions,
    ages: _AgeGroup,
    index: int,
    tails: tuple[_Tail, _Tail, _Tail],
) -> _Tail:
    """Return the tail when an age rule is unknown: one with a review reason of its own adds it."""
    if index == 1 and ages[5].unknown_review:
        return (Outcome.UNKNOWN, conditions.route, *_dated_review(evaluations, conditions))
    return tails[index]


def _dated_review(evaluations: tuple[RuleEvaluation, ...], conditions: _Conditions) -> tuple[bool, str]:
    """Return the review when a dated rule's unknown adds its own reason: every reason in rule order."""
    return _review(
        tuple([e.rule.review_reason for e in evaluations if e.result is UNKNOWN and e.rule.review_reason])
        + conditions.route_reviews
        + conditions.flag_reviews
    )


def _window_missing(
    day: _LayoutDay, rules: _Summary, unknown: list[object], evaluations: tuple[RuleEvaluation, ...]
) -> tuple[str, ...]:
    """Return the missing facts of a decision whose windows in `unknown` are unknown (a date of birth known).

    They are the static rules' and the windows', in rule order, so they are shared by the static
    rules' summary (it stands for their results and missing facts, see `_LayoutDay._rest`) and the
    windows unknown with their missing facts. The key holds the summary, so it cannot be freed and
    its identity reused while the entry lives.
    """
    unknown.append(rules)
    key = tuple(unknown)
    found = day.missing.get(key)
    if found is None:
        found = _remember(day.missing, key, _plain_missing(evaluations))
    return found


def _decide_windowed(day: _LayoutDay, ctx: Context, ages: _AgeGroup) -> ProgrammeDecision:
    """Decide for a child not enrolled in a programme with time windows on facts (AFRUCA's asylum).

    `_decide_in_full` for this case, shorter: every rule is an entry rule, no window reads the
    enrolment, and each window's evaluation is found by the facts it reads as they are.
    """
    facts = ctx.facts
    key = day.facts_of(facts)
    part = day.parts.get(key)
    if part is None:
        part = day.add_part(ctx, key)
    static, index, settled, has_events, missing, tails, conditions, rules = part
    dated, ages_index, ages_settled, ages_unknown, next_change, ages_summary, _ = ages
    if ages_index > index:
        index = ages_index
    settled = settled or ages_settled
    dated_review = ages_summary.unknown_review
    window_fails = 0
    first_flip: date | None = None  # the earliest day a window's answer changes
    unknown: list[object] = []  # the windows that are unknown, with their missing facts
    layout = day.layout
    found: list[RuleEvaluation] = []
    tables = day.read_windows
    for position, read in enumerate(layout.window_readers):
        value = read(facts)  # type: ignore[misc]  # no None here (see `_LayoutDay.decide`)
        evaluation = tables[position].get(value)
        if evaluation is None:
            evaluation = day.add_read_window(position, value, ctx)
        found.append(evaluation)
        result = evaluation.result
        if result is FAIL:
            index = 2
            window_fails += 1
            settled = settled or evaluation.next_change is None
        elif result is UNKNOWN:
            unknown.append((position, evaluation.missing_facts))
            if index == 0:
                index = 1
            dated_review = dated_review or bool(layout.windows[position][1].review_reason)
        window_next = evaluation.next_change
        if window_next is not None and (first_flip is None or window_next < first_flip):
            first_flip = window_next
    gathered = static + dated + tuple(found)
    evaluations = gathered if layout.order is None else layout.order(gathered)
    if dated_review and index == 1:  # a dated rule's unknown adds its own review, in rule order
        outcome, route, needs_review, review_reason = (
            Outcome.UNKNOWN,
            conditions.route,
            *_dated_review(evaluations, conditions),
        )
    else:
        outcome, route, needs_review, review_reason = tails[index]
    if settled:  # a failure no date can undo
        next_change = None
    elif has_events:
        next_change = _project_changes(layout.rule_set, ctx, evaluations, False)[0]
    elif first_flip is not None:  # a window changes too: the next change from the counts
        entry_fails = rules.entry_fails + ages_summary.entry_fails + window_fails
        if entry_fails:
            # Every rule is an entry rule; the age group keeps no pending changes for this layout.
            events = [_flip(e, True) for e in (*dated, *found) if e.next_change is not None]
            next_change = _project(entry_fails, 0, False, events)[0]
        elif next_change is None or first_flip < next_change:
            # Nothing fails, so every pending change is a pass turning to fail: the first one
            # changes the outcome (`next_change` is the age rules' first, by the same reasoning).
            next_change = first_flip
    if ages_unknown:  # no date of birth
        missing = _plain_missing(evaluations)
    elif unknown:
        missing = _window_missing(day, rules, unknown, evaluations)
    return tuple.__new__(
        ProgrammeDecision,
        (
            day.programme_id,
            day.version,
            outcome,
            evaluations,
            missing,
            _NOT_ENROLLED,
            "",
            next_change,
            None,
            route,
            needs_review,
            review_reason,
        ),
    )


def _decide_in_full(day: _LayoutDay, ctx: Context, ages: _AgeGroup) -> ProgrammeDecision:
    """Decide for a child enrolled, or a layout with time windows: windows, exit and projection too."""
    layout = day.layout
    key = day.facts_of(ctx.facts)
    part = day.parts.get(key)
    if part is None:
        part = day.add_part(ctx, key)
    enrolled = layout.enrolled
    static, _, _, _, _, tails, conditions, rules = part
    dated, _, _, _, free_next, ages_summary, ages_events = ages
    entry_fails = rules.entry_fails + ages_summary.entry_fails
    exit_fails = rules.exit_fails + ages_summary.exit_fails
    index = rules.index if rules.index >= ages_summary.index else ages_summary.index
    dated_unknown, dated_review = ages_summary.any_unknown, ages_summary.unknown_review
    settled = rules.settled or ages_summary.settled
    events: tuple[_Event, ...] | list[_Event] = ages_events
    if layout.windows:
        facts, started_on = ctx.facts, ctx.started_on
        found: list[RuleEvaluation] = []
        unknown: list[object] = []  # the windows that are unknown, with their missing facts
        tables = day.windows
        for (position, rule, predicate, is_entry), read in zip(
            layout.windows, layout.window_readers, strict=True
        ):
            if read is not None:  # a window on facts: found by the facts as read (`_decide_windowed`)
                value = read(facts)
                found_window = day.read_windows[position].get(value)
                evaluation = found_window or day.add_read_window(position, value, ctx)
            else:  # a window on the enrolment: keyed by its start (or "no")
                window_key = (
                    started_on if predicate.requires_yes is None else predicate.key_of(facts, started_on)
                )
                found_window = tables[position].get(window_key)
                evaluation = found_window or day.add_window(position, window_key, ctx)
            found.append(evaluation)
            result = evaluation.result
            if result is FAIL:
                if is_entry:
                    entry_fails += 1
                    index = 2
                else:
                    exit_fails += 1
                settled = settled or evaluation.next_change is None
            elif result is UNKNOWN:
                unknown.append((position, evaluation.missing_facts))
                if is_entry and index == 0:
                    index = 1
                dated_review = dated_review or bool(rule.review_reason)
            window_next = evaluation.next_change
            if window_next is not None:  # it flips then: a pass turns to fail (`_flip`)
                change = 1 if result is PASS else -1
                events = [*events, (window_next, change, 0) if is_entry else (window_next, 0, change)]
        gathered = static + dated + tuple(found)
    else:
        gathered = static + dated
    evaluations = gathered if layout.order is None else layout.order(gathered)

    if dated_review and index == 1:  # a dated rule's unknown adds its own review, in rule order
        outcome, route, needs_review, review_reason = (
            Outcome.UNKNOWN,
            conditions.route,
            *_dated_review(evaluations, conditions),
        )
    else:
        outcome, route, needs_review, review_reason = tails[index]

    if dated_unknown:  # no date of birth
        missing = _plain_missing(evaluations)
    elif layout.windows and unknown:
        missing = _window_missing(day, rules, unknown, evaluations)
    else:
        missing = rules.missing

    exit_on: date | None
    if not enrolled:
        continuation, exit_reason, exit_on = _NOT_ENROLLED, "", None
        if settled:  # a failure no date can undo
            next_change = None
        elif rules.has_events:
            next_change, exit_on = _project_changes(layout.rule_set, ctx, evaluations, enrolled)
        elif events is ages_events:
            next_change = free_next
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
        if rules.has_events:
            next_change, exit_on = _project_changes(layout.rule_set, ctx, evaluations, enrolled)
        else:
            next_change, exit_on = _project(entry_fails, exit_fails, True, events)
    return tuple.__new__(
        ProgrammeDecision,
        (
            day.programme_id,
            day.version,
            outcome,
            evaluations,
            missing,
            continuation,
            exit_reason,
            next_change,
            exit_on,
            route,
            needs_review,
            review_reason,
        ),
    )


def _decide_planned(plan: _Plan, ctx: Context) -> ProgrammeDecision:
    """Decide one programme from its plan (`ctx.started_on` set for it): as `_decide_generic` does."""
    return _decide_on(plan.day(ctx.on)[ctx.started_on is not None], ctx)


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
    if len(facts.enrolments) == 1:  # the usual case
        (only,) = facts.enrolments
        return {only.programme_id: only.started_on}
    starts: dict[str, date] = {}
    for enrolment in facts.enrolments:
        known = starts.get(enrolment.programme_id)
        if known is None or enrolment.started_on > known:
            starts[enrolment.programme_id] = enrolment.started_on
    return starts


# An assessment is made per child: its fields are set through their slots, as the frozen dataclass's
# own __init__ does through object.__setattr__, at half the cost.
_new_object = object.__new__


def _slot_setter(name: str) -> Callable[[Assessment, Any], None]:
    """Return the setter of the assessment's slot `name` (it bypasses the frozen __setattr__)."""
    setter: Callable[[Assessment, Any], None] = vars(Assessment)[name].__set__
    return setter


_set_on, _set_age_basis, _set_decisions, _set_next_change = map(
    _slot_setter, ("on", "age_basis", "decisions", "next_change")
)


_next_change_of = cast(
    Callable[[ProgrammeDecision], date | None], itemgetter(ProgrammeDecision._fields.index("next_change"))
)


def assess(facts: ChildFacts, on: date, rulebook: Rulebook) -> Assessment:
    """Decide every programme in force on `on` for the child; pure, no I/O."""
    age_basis = settle_date_of_birth(facts.dates_of_birth)
    dob = age_basis.date_of_birth
    ctx = Context(facts, on, dob)  # shared by the programmes: ages are worked out once
    day = rulebook.day_memo.get(on) or _day_plan(rulebook, on)
    plain_days = day.not_enrolled
    decisions: list[ProgrammeDecision]
    if plain_days is None:  # a rule set without a plan
        decisions = _decide_each(day, ctx, None)
    else:  # one age row for every programme the child is not in
        row = day.rows.get(dob)
        if row is None:
            row = day.add_row(plain_days, ctx)
        if facts.enrolments:
            decisions = _decide_each(day, ctx, row)
        else:  # most children
            decisions = [
                decide(layout_day, ctx, ages)
                for (decide, layout_day), ages in zip(day.deciders, row, strict=True)
            ]
    next_change = min(filter(None, map(_next_change_of, decisions)), default=None)
    assessment = _new_object(Assessment)
    _set_on(assessment, on)
    _set_age_basis(assessment, age_basis)
    _set_decisions(assessment, tuple(decisions))
    _set_next_change(assessment, next_change)
    return assessment


def _decide_each(day: _Day, ctx: Context, row: tuple[_AgeGroup, ...] | None) -> list[ProgrammeDecision]:
    """Decide programme by programme: for a child enrolled somewhere, or a rule set without a plan.

    `row` is the child's age row (every rule set planned), read for the programmes the child is not in.
    """
    facts = ctx.facts
    starts = _enrolment_starts(facts) if facts.enrolments else None
    dob = ctx.date_of_birth
    decisions = []
    for index, (rule_set, days) in enumerate(day.entries):
        started_on = ctx.started_on = starts.get(rule_set.programme_id) if starts else None
        if days is None:
            decisions.append(_decide_generic(rule_set, ctx, started_on is not None))
            continue
        # As `_decide_on`, inline: one call fewer per programme.
        layout_day = days[started_on is not None]
        ages = row[index] if row is not None and started_on is None else layout_day.ages.get(dob)
        if ages is None:
            ages = layout_day.add_age_group(ctx)
        decisions.append(layout_day.decide(layout_day, ctx, ages))
    return decisions
