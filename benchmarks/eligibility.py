"""Benchmark of the eligibility engine on one core.

1. Evaluations per second: one child against every programme, with explanations (every rule's result,
   inputs and citation) and next-change dates, as `assess` returns them.
2. The time to compute the next change date for N synthetic open cases (1,000,000 by default; pass a
   smaller N to extrapolate, which the output says).
Each is given with the time of a baseline loop over the same inputs that does no rule work.
Run: `python benchmarks/eligibility.py [open-cases]`, or call `main()` (it returns the figures).
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import date, timedelta

from haven.kit.lifecycle import tune_garbage_collector
from services.eligibility.domain import (
    Answer,
    ChildFacts,
    DateOfBirthBasis,
    DateOfBirthStatement,
    Enrolment,
    NrmStatus,
    Sex,
    TraffickingConcern,
    TraffickingRoute,
    Urgency,
    assess,
    load_rulebook,
)

ON = date(2024, 3, 1)
AREAS = ["E08000003", "E08000035", "E09000025", "E09000008", "W06000015", "E06000024", "E10000014", ""]


def synthetic_children(count: int, seed: int = 7) -> list[ChildFacts]:
    """Return `count` varied children, a third of them enrolled somewhere (open cases)."""
    rng = random.Random(seed)
    children = []
    for index in range(count):
        dob = ON - timedelta(days=rng.randint(9 * 365, 19 * 365))
        statements = {DateOfBirthStatement(dob, rng.choice(list(DateOfBirthBasis)))}
        if rng.random() < 0.2:
            statements.add(DateOfBirthStatement(dob - timedelta(days=400), DateOfBirthBasis.ASSESSED))
        facts = ChildFacts(
            child_id=f"bench-{index}",
            dates_of_birth=frozenset(statements),
            sex=rng.choice(list(Sex)),
            nationalities=frozenset(
                rng.sample(["GB", "VN", "AL", "ER", "NG", "SD", "AF", "RO"], rng.randint(0, 2))
            ),
            trafficking_concern=rng.choice(list(TraffickingConcern)),
            trafficking_route=rng.choice(list(TraffickingRoute)),
            nrm_status=rng.choice(list(NrmStatus)),
            asylum_application_made=rng.choice(list(Answer)),
            asylum_application_date=ON - timedelta(days=rng.randint(0, 700)) if rng.random() < 0.6 else None,
            parental_responsibility_in_uk=rng.choice(list(Answer)),
            local_authority_gss=rng.choice(AREAS),
            urgency=rng.choice(list(Urgency)),
        )
        if rng.random() < 0.33:
            programme = rng.choice(
                ["ictg", "afruca", "unseen-specialist-accommodation", "childrens-society-rise"]
            )
            started = ON - timedelta(days=rng.randint(0, 500))
            facts = replace(facts, enrolments=frozenset({Enrolment(programme, started)}))
        children.append(facts)
    return children


def _timed(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def main(open_cases: int = 1_000_000, children_count: int = 20_000) -> dict[str, float]:
    """Measure, print and return the figures: evaluations/s and the open-case next-change time.

    Both are measured on fresh children (no result is reused from an earlier child with the same
    facts); the open-case batch repeats the `children_count` children, and is capped at 200,000 cases
    and extrapolated when `open_cases` is larger, which the output says.
    """
    rulebook = load_rulebook()
    children = synthetic_children(children_count)
    # Measure the engine as the eligibility process runs it: with the collector settings every Haven
    # service starts with (the collector stays on; start-up objects are frozen, young collections rarer).
    tune_garbage_collector()
    for child in children[:200]:  # warm caches (ODA list, reference data) outside the timing
        assess(child, ON, rulebook)

    work = _timed(lambda: [assess(c, ON, rulebook) for c in children])
    baseline = _timed(lambda: [(c, ON, rulebook) for c in children])
    rate = len(children) / work
    programmes = len(rulebook.in_force(ON))
    print(f"evaluations/s (one child x {programmes} programmes, explained; service GC settings): {rate:,.0f}")
    print(f"  {len(children):,} children; target 50,000/s: {'met' if rate >= 50_000 else 'NOT met'}")
    print(f"  baseline loop: {len(children) / baseline:,.0f}/s; engine takes {work / baseline:,.0f}x as long")

    batch = children * (min(open_cases, 200_000) // len(children) or 1)
    batch = batch[: min(open_cases, len(batch))]
    next_work = _timed(lambda: [assess(c, ON, rulebook).next_change for c in batch])
    next_baseline = _timed(lambda: [c.dates_of_birth for c in batch])
    scale = open_cases / len(batch)
    note = "" if scale == 1 else f" (measured {len(batch):,} cases, extrapolated x{scale:g})"
    print(f"next change date for {open_cases:,} open cases: {next_work * scale:.1f} s{note}")
    print(f"  baseline loop: {next_baseline * scale:.2f} s; ratio {next_work / next_baseline:,.0f}x")
    return {
        "evaluations_per_second": rate,
        "evaluation_baseline_ratio": work / baseline,
        "open_cases": float(open_cases),
        "open_cases_measured": float(len(batch)),
        "next_change_seconds": next_work * scale,
        "next_change_baseline_seconds": next_baseline * scale,
        "next_change_baseline_ratio": next_work / next_baseline,
    }


if __name__ == "__main__":
    main(*(int(arg) for arg in sys.argv[1:2]))
