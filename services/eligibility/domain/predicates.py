"""The predicate kinds rules are written in, each implemented once and compiled at load time.

A rule's predicate is data (`{age_below: {years: 18}}`); `compile_predicate` turns it into a function of
a `Context` (one child on one date) returning a `Verdict`: pass / fail / unknown, the input values it
read, the facts it missed, and the next date on which its answer would change by itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from enum import StrEnum
from functools import partial
from typing import Any, NamedTuple, cast

from haven.reference import all_local_authorities, oda_africa_years
from services.eligibility.domain.age import add_months, describe_age
from services.eligibility.domain.facts import ChildFacts

_ONE_DAY = timedelta(days=1)


class RulebookError(ValueError):
    """The rule data is malformed: raised at load time, naming the rule."""


class RuleResult(StrEnum):
    """The result of one rule."""

    PASS = "pass"
    FAIL = "fail"
    UNKNOWN = "unknown"


PASS, FAIL, UNKNOWN = RuleResult.PASS, RuleResult.FAIL, RuleResult.UNKNOWN

Inputs = tuple[tuple[str, object], ...]


class Verdict(NamedTuple):
    """What a predicate found: result, inputs read, facts missing, next date it changes by itself."""

    result: RuleResult
    inputs: Inputs
    missing: tuple[str, ...]
    next_change: date | None


# A verdict made without the named tuple's generated __new__ (a Python function): dated predicates
# make one per new date of birth or window start.
_new_verdict = cast(Callable[[tuple[object, ...]], Verdict], partial(tuple.__new__, Verdict))


@dataclass(frozen=True, slots=True)
class Area:
    """A coverage area: member local authorities (GSS codes) and the dates it is served."""

    area_id: str
    name: str
    citation: str
    starts_on: date
    ends_on: date | None
    members: frozenset[str]

    def served_on(self, day: date) -> bool:
        """Return whether the area is served on `day`."""
        return self.starts_on <= day and (self.ends_on is None or day <= self.ends_on)


_AGE_VERDICT_LIMIT = 65536
_AGE_VERDICTS: dict[tuple[date | None, date], dict[object, Any]] = {}


class Context:
    """One child on one date, with the date of birth settled and the programme's enrolment start."""

    __slots__ = ("_age_inputs", "_age_verdicts", "date_of_birth", "facts", "on", "started_on")

    def __init__(self, facts: ChildFacts, on: date, date_of_birth: date | None) -> None:
        self.facts = facts
        self.on = on
        self.date_of_birth = date_of_birth
        self.started_on: date | None = None
        self._age_inputs: tuple[tuple[str, object], tuple[str, object]] | None = None
        self._age_verdicts: dict[object, Any] | None = None

    def age_verdicts(self) -> dict[object, Any]:
        """Return the age answers for this date of birth on this date, shared by every such context.

        Holds verdicts by (comparison, limit) and the engine's evaluations by rule: both are pure
        functions of (date of birth, date), so they never go stale. Every programme's "under 18" reads
        one verdict, and children born on the same day, assessed on the same date, share theirs.
        """
        verdicts = self._age_verdicts
        if verdicts is None:
            key = (self.date_of_birth, self.on)
            verdicts = _AGE_VERDICTS.get(key)
            if verdicts is None:
                if len(_AGE_VERDICTS) >= _AGE_VERDICT_LIMIT:
                    _AGE_VERDICTS.clear()
                verdicts = _AGE_VERDICTS[key] = {}
            self._age_verdicts = verdicts
        return verdicts

    def reached(self, date_of_birth: date, months: int) -> date:
        """Return the day the child reaches `months` of age.

        Not memoised: each age limit is worked out once per date of birth and date anyway, since
        its verdict is shared through `age_verdicts`.
        """
        return add_months(date_of_birth, months)

    def age_text(self, date_of_birth: date) -> str:
        """Return the child's age in words on the context's date (computed once)."""
        return str(self.age_inputs(date_of_birth)[1][1])

    def age_inputs(self, date_of_birth: date) -> tuple[tuple[str, object], tuple[str, object]]:
        """Return the inputs every age rule reads, (date of birth, age in words), made once and shared."""
        if self._age_inputs is None:
            self._age_inputs = (
                ("date_of_birth", date_of_birth),
                ("age", describe_age(date_of_birth, self.on)),
            )
        return self._age_inputs


Predicate = Callable[[Context], Verdict]
# A key for predicates whose answer depends on fact values only, never on the date: the engine reuses
# their evaluations across children (a handful of possible values each), which keeps assessment fast.
CacheKey = Callable[[Context], object]


class StaticPredicate:
    """A predicate whose answer depends only on the facts it names and the date it is asked on.

    `key` picks out what decides the answer; `facts_read` lets the engine key a whole rule set's
    date-independent answers on one tuple of fact values. The metadata lives on the object (not in a
    registry keyed by `id`), so a predicate freed with its rulebook can never lend it to a new one.
    """

    __slots__ = ("check", "facts_read", "key")

    def __init__(self, check: Predicate, key: CacheKey, facts_read: tuple[str, ...]) -> None:
        self.check = check
        self.key = key
        self.facts_read = facts_read

    def __call__(self, ctx: Context) -> Verdict:
        """Return the verdict for the child and date of `ctx`."""
        return self.check(ctx)


def _static(check: Predicate, key: CacheKey, *facts_read: str) -> Predicate:
    return StaticPredicate(check, key, facts_read)


_PASSES: dict[tuple[Predicate, object], bool] = {}


def passes(predicate: Predicate, ctx: Context) -> bool:
    """Return whether a predicate passes, reusing answers of date-independent ones (routes, reviews)."""
    if not isinstance(predicate, StaticPredicate):
        return predicate(ctx).result is RuleResult.PASS
    # Keyed by the predicate itself, not its id: the dict keeps it alive, so the key stays unique.
    key = (predicate, predicate.key(ctx))
    answer = _PASSES.get(key)
    if answer is None:
        if len(_PASSES) >= 4096:
            _PASSES.clear()
        answer = _PASSES[key] = predicate(ctx).result is RuleResult.PASS
    return answer


def static_key(predicate: Predicate) -> CacheKey | None:
    """Return the cache key of a date-independent predicate, or None for one that reads the date."""
    return predicate.key if isinstance(predicate, StaticPredicate) else None


def _always_passes(ctx: Context) -> Verdict:
    return Verdict(RuleResult.PASS, (), (), None)


# A route with no condition: static (it reads nothing), so routes never need per-child work.
ALWAYS: Predicate = StaticPredicate(_always_passes, lambda ctx: None, ())


# Facts whose value means "not known"; a referrer saying "unknown" is no better than saying nothing.
_MISSING_VALUES = frozenset({"unspecified", "unknown"})

PLAIN_MISSING: dict[str, str] = {
    "dates_of_birth": "needs date of birth",
    "nationalities": "needs nationality",
    "sex": "needs sex",
    "trafficking_concern": "needs the trafficking concern (identified, suspected or at risk)",
    "trafficking_route": "needs the trafficking route (within the UK or across borders)",
    "nrm_status": "needs NRM status",
    "asylum_application_made": "needs whether an asylum application was made",
    "asylum_application_date": "needs asylum application date",
    "parental_responsibility_in_uk": "needs whether someone has parental responsibility in the UK",
    "local_authority_gss": "needs a valid responsible local authority",
    "referrer_kind": "needs the kind of referrer",
    "enrolment_started_on": "needs the date the child entered the programme",
}

_ENUM_FACTS = frozenset(
    {
        "sex",
        "trafficking_concern",
        "trafficking_route",
        "nrm_status",
        "asylum_application_made",
        "parental_responsibility_in_uk",
        "referrer_kind",
        "urgency",
        "service_asked",
    }
)
_DATE_FACTS = frozenset(
    {"asylum_application_date", "missing_since", "nrm_decision_date", "referral_date", "enrolment_started_on"}
)


def _months(params: Mapping[str, Any]) -> int:
    return int(params.get("years", 0)) * 12 + int(params.get("months", 0))


def _describe_limit(months: int) -> str:
    years, rest = divmod(months, 12)
    parts = [f"{years} year{'s' * (years != 1)}"] if years else []
    parts += [f"{rest} month{'s' * (rest != 1)}"] if rest else []
    return " ".join(parts) or "0 months"


# A number per age signature (comparison, months), never reused: a rulebook has a handful.
_AGE_KEYS: dict[tuple[str, int], int] = {}


def _age_predicate(params: Mapping[str, Any], comparison: str) -> Predicate:
    return AgePredicate(comparison, _months(params))


class AgePredicate:
    """A predicate reading only the settled date of birth and the date: its answers can be shared.

    It flips at most once: on its `next_change` a pass turns to fail (or a fail to pass) for good,
    with no later change, so the engine projects future answers without asking again. `signature`
    (comparison, months) names the answer: predicates with the same signature answer alike, and the
    verdict is kept under it in `Context.age_verdicts()`, so every programme's "under 18" and every
    child born the same day, assessed the same day, read one verdict.
    """

    __slots__ = ("_limit_input", "comparison", "key", "limit", "months", "signature")

    def __init__(self, comparison: str, months: int) -> None:
        if comparison not in ("below", "at_least", "at_most"):
            raise RulebookError(f"unknown age comparison {comparison!r}")
        self.comparison = comparison
        self.months = months
        self.limit = _describe_limit(months)
        self._limit_input = ("limit", self.limit)
        self.signature = (comparison, months)
        # The signature as a small number: the verdict's key in `age_verdicts`, hashed on every read.
        self.key = _AGE_KEYS.setdefault(self.signature, len(_AGE_KEYS))

    def __call__(self, ctx: Context) -> Verdict:
        """Return the verdict for the child and date of `ctx` (shared, see the class)."""
        verdicts = ctx.age_verdicts()
        verdict: Verdict | None = verdicts.get(self.key)
        if verdict is None:
            verdict = verdicts[self.key] = self.decide(ctx)
        return verdict

    def decide(self, ctx: Context) -> Verdict:
        """Work the verdict out (`__call__` shares it)."""
        dob = ctx.date_of_birth
        if dob is None:
            return Verdict(UNKNOWN, (self._limit_input,), ("dates_of_birth",), None)
        reached = add_months(dob, self.months)  # the day the child reaches the limit
        on = ctx.on
        inputs = (*ctx.age_inputs(dob), self._limit_input)
        comparison = self.comparison
        if comparison == "below":  # true until the day before `reached`
            return _new_verdict((PASS, inputs, (), reached) if on < reached else (FAIL, inputs, (), None))
        if comparison == "at_least":  # true from `reached`
            return _new_verdict((PASS, inputs, (), None) if on >= reached else (FAIL, inputs, (), reached))
        # at_most: true up to and including the day `reached`
        if on <= reached:
            return _new_verdict((PASS, inputs, (), reached + _ONE_DAY))
        return _new_verdict((FAIL, inputs, (), None))


class WindowPredicate:
    """A time window after a date fact (`months_since_*`): reads `fact`, `requires_yes` and the date.

    Its answer is a function of the date and `key_of` (the window's start, None when not known, or
    "no" when `requires_yes` answers "no"). Like an age predicate it flips at most once: a pass turns
    to fail for good on its `next_change`; a fail or unknown never changes by itself.
    """

    __slots__ = ("check", "fact", "requires_yes")

    def __init__(self, check: Predicate, fact: str, requires_yes: str | None) -> None:
        self.check = check
        self.fact = fact
        self.requires_yes = requires_yes

    def __call__(self, ctx: Context) -> Verdict:
        """Return the verdict for the child and date of `ctx`."""
        return self.check(ctx)

    def key_of(self, facts: ChildFacts, started_on: date | None) -> date | str | None:
        """Return what decides the answer besides the date: "no", or the window's start (None: unknown)."""
        if self.requires_yes is not None and str(getattr(facts, self.requires_yes)) == "no":
            return "no"
        if self.fact == "enrolment_started_on":
            return started_on
        value: date | None = getattr(facts, self.fact)
        return value


def _enum_fact(params: Mapping[str, Any], negate: bool) -> Predicate:
    fact = str(params["fact"])
    if fact not in _ENUM_FACTS:
        raise RulebookError(f"fact_in reads a coded fact, not {fact!r}")
    values = frozenset(str(v) for v in params["values"])
    unknown_values = frozenset(str(v) for v in params.get("unknown_values", ()))

    def check(ctx: Context) -> Verdict:
        value = str(getattr(ctx.facts, fact))
        inputs = ((fact, value),)
        if value in _MISSING_VALUES or value in unknown_values:
            return Verdict(UNKNOWN, inputs, (fact,), None)
        return Verdict(PASS if (value in values) != negate else FAIL, inputs, (), None)

    return _static(check, lambda ctx: getattr(ctx.facts, fact), fact)


def _fact_unknown(params: Mapping[str, Any]) -> Predicate:
    fact = str(params["fact"])
    if fact not in _ENUM_FACTS:
        raise RulebookError(f"fact_unknown reads a coded fact, not {fact!r}")

    def check(ctx: Context) -> Verdict:
        value = str(getattr(ctx.facts, fact))
        return Verdict(PASS if value in _MISSING_VALUES else FAIL, ((fact, value),), (), None)

    return _static(check, lambda ctx: getattr(ctx.facts, fact), fact)


def _nationality_not_in(params: Mapping[str, Any]) -> Predicate:
    excluded = frozenset(str(c).upper() for c in params["countries"])

    def check(ctx: Context) -> Verdict:
        nationalities = ctx.facts.nationalities
        inputs = (("nationalities", ",".join(sorted(nationalities))),)
        if not nationalities:
            return Verdict(UNKNOWN, inputs, ("nationalities",), None)
        # A dual national holding an excluded nationality (e.g. GB) is one of its nationals.
        return Verdict(FAIL if nationalities & excluded else PASS, inputs, (), None)

    return _static(check, lambda ctx: ctx.facts.nationalities, "nationalities")


def _nationality_in_oda_africa(params: Mapping[str, Any]) -> Predicate:
    years = oda_africa_years()
    first, last = min(years), max(years)

    def in_list(nationalities: frozenset[str], year: int) -> bool:
        return bool(nationalities & years[min(max(year, first), last)])

    def check(ctx: Context) -> Verdict:
        nationalities = ctx.facts.nationalities
        year = ctx.on.year
        list_year = min(max(year, first), last)
        inputs: Inputs = (("nationalities", ",".join(sorted(nationalities))), ("oda_list_year", list_year))
        if not nationalities:
            return Verdict(UNKNOWN, inputs, ("nationalities",), None)
        now = in_list(nationalities, year)
        # Lists change on 1 January; look for the next year whose list answers differently.
        change = next((y for y in range(year + 1, last + 1) if in_list(nationalities, y) != now), None)
        return Verdict(PASS if now else FAIL, inputs, (), date(change, 1, 1) if change else None)

    # The answer depends on the year only, so the evaluation is reused within a year.
    return _static(check, lambda ctx: (ctx.facts.nationalities, ctx.on.year), "nationalities")


def _area_in(params: Mapping[str, Any], areas: Mapping[str, Area]) -> Predicate:
    try:
        chosen = tuple(areas[str(a)] for a in params["areas"])
    except KeyError as missing:
        raise RulebookError(f"unknown area {missing}") from None
    authorities = all_local_authorities()
    unknown_codes = {m for area in chosen for m in area.members} - authorities.keys()
    if unknown_codes:
        raise RulebookError(f"area members not in the reference: {sorted(unknown_codes)}")

    def check(ctx: Context) -> Verdict:
        code = ctx.facts.local_authority_gss
        authority = authorities.get(code)
        if authority is None or not authority.is_valid_on(ctx.on):
            return Verdict(UNKNOWN, (("local_authority_gss", code),), ("local_authority_gss",), None)
        holding = [a for a in chosen if code in a.members]
        serving = [a for a in holding if a.served_on(ctx.on)]
        inputs: Inputs = (
            ("local_authority_gss", code),
            ("local_authority", authority.name),
            ("area", ",".join(a.area_id for a in serving)),
        )
        if serving:
            ends = [a.ends_on + _ONE_DAY for a in serving if a.ends_on is not None]
            return Verdict(PASS, inputs, (), max(ends) if len(ends) == len(serving) else None)
        starts = [a.starts_on for a in holding if a.starts_on > ctx.on]
        return Verdict(FAIL, inputs, (), min(starts) if starts else None)

    # Every case assessed on the same day shares the answer for its authority.
    return _static(check, lambda ctx: (ctx.facts.local_authority_gss, ctx.on), "local_authority_gss")


def _date_fact(ctx: Context, fact: str) -> date | None:
    if fact == "enrolment_started_on":
        return ctx.started_on
    value: date | None = getattr(ctx.facts, fact)
    return value


def _months_since(params: Mapping[str, Any], inclusive: bool) -> Predicate:
    fact = str(params["fact"])
    if fact not in _DATE_FACTS:
        raise RulebookError(f"months_since reads a date fact, not {fact!r}")
    months = _months(params)
    # An answer that rules the window out, e.g. no asylum application at all (000 L1680).
    requires_yes = params.get("requires_yes")
    limit = _describe_limit(months)

    def check(ctx: Context) -> Verdict:
        # Verdicts made without the named tuple's Python-level constructor: one per new window start.
        if requires_yes is not None and str(getattr(ctx.facts, requires_yes)) == "no":
            return _new_verdict((FAIL, ((requires_yes, "no"),), (), None))
        since = _date_fact(ctx, fact)
        if since is None:
            return _new_verdict((UNKNOWN, (("limit", limit),), (fact,), None))
        end = add_months(since, months)
        inputs = ((fact, since), ("limit", limit), ("window_ends", end))
        last_day = end if inclusive else end - _ONE_DAY
        if ctx.on <= last_day:
            return _new_verdict((PASS, inputs, (), last_day + _ONE_DAY))
        return _new_verdict((FAIL, inputs, (), None))

    return WindowPredicate(check, fact, None if requires_yes is None else str(requires_yes))


def compile_predicate(spec: Any, areas: Mapping[str, Area]) -> Predicate:
    """Compile one predicate written as data into a function of a `Context`.

    Kinds: age_below / age_at_least / age_at_most {years, months}; fact_in / fact_not_in {fact, values,
    unknown_values}; fact_unknown {fact}; nationality_not_in {countries}; nationality_in_oda_africa {};
    area_in {areas}; months_since_below / months_since_at_most {fact, years, months, requires_yes}.
    """
    if not isinstance(spec, Mapping) or len(spec) != 1:
        raise RulebookError(f"a predicate is one {{kind: params}} mapping, not {spec!r}")
    ((kind, params),) = spec.items()
    params = params or {}
    try:
        builders: dict[str, Callable[[], Predicate]] = {
            "age_below": lambda: _age_predicate(params, "below"),
            "age_at_least": lambda: _age_predicate(params, "at_least"),
            "age_at_most": lambda: _age_predicate(params, "at_most"),
            "fact_in": lambda: _enum_fact(params, negate=False),
            "fact_not_in": lambda: _enum_fact(params, negate=True),
            "fact_unknown": lambda: _fact_unknown(params),
            "nationality_not_in": lambda: _nationality_not_in(params),
            "nationality_in_oda_africa": lambda: _nationality_in_oda_africa(params),
            "area_in": lambda: _area_in(params, areas),
            "months_since_below": lambda: _months_since(params, inclusive=False),
            "months_since_at_most": lambda: _months_since(params, inclusive=True),
        }
        if kind not in builders:
            raise RulebookError(f"unknown predicate kind {kind!r}")
        return builders[kind]()
    except KeyError as missing:
        raise RulebookError(f"predicate {kind!r} needs parameter {missing}") from None
