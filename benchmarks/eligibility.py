"""Benchmark of the eligibility engine on one core (issue 3).

1. Evaluations per second: one child against every programme in force, with the full explanation
   (every rule's result, inputs and citation, missing facts, continuation or exit, route, review, next
   change date), exactly as `assess` returns it to the service. Each round assesses 20,000 children
   never assessed before. The engine shares answers between children with the same fact values (the
   service does too): round 1 starts from tables holding only the 200 warm-up children, the coldest
   case and the figure the target is judged on; rounds 2 and 3 find the tables the rounds before them
   filled, as a running service does. Target: 50,000/s.
2. The time to compute the next change date for N synthetic open cases (1,000,000 by default), every
   case a distinct child, generated in chunks outside the timing. Target: under 60 s.

Both run in this one single-threaded process with the collector settings every Haven service starts
with, and each is given beside a baseline measured in the same run: the same loop over the same
inputs calling a function that does no rule work (timed several times, the fastest kept: it lasts a
millisecond or two). Times are the process's CPU time (one core, what the issue asks for), with the
wall-clock figure beside it. CPU time leaves out the time spent waiting for a core, not the slowdown
of sharing caches and memory with other work: on a loaded shared machine the rates of one run and
the next differ by up to half, so compare engines interleaved in one process, not run after run.
The rate of round 1's children assessed again (every answer shared) is printed too: the per-child
work alone, and, as a ratio to round 1 from the same run, what building the shared answers costs.

Run: `python -m benchmarks eligibility`, or `python benchmarks/eligibility.py [open-cases]`, or call
`main()` (it returns the figures).
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from functools import partial
from itertools import islice
from typing import Any

from haven.kit.lifecycle import tune_garbage_collector
from services.eligibility.domain import (
    Answer,
    ChildFacts,
    DateOfBirthBasis,
    DateOfBirthStatement,
    Enrolment,
    NrmStatus,
    Rulebook,
    Sex,
    TraffickingConcern,
    TraffickingRoute,
    Urgency,
    assess,
    load_rulebook,
)

ON = date(2024, 3, 1)
AREAS = ["E08000003", "E08000035", "E09000025", "E09000008", "W06000015", "E06000024", "E10000014", ""]
TARGET_PER_SECOND = 50_000
TARGET_OPEN_CASE_SECONDS = 60.0
_NATIONALITIES = ["GB", "VN", "AL", "ER", "NG", "SD", "AF", "RO"]
_PROGRAMMES = ["ictg", "afruca", "unseen-specialist-accommodation", "childrens-society-rise"]
# The members of each enum, listed once: listing an enum is slow, and a million children are made.
_BASES, _SEXES, _CONCERNS = list(DateOfBirthBasis), list(Sex), list(TraffickingConcern)
_ROUTES, _NRM, _ANSWERS, _URGENCIES = list(TraffickingRoute), list(NrmStatus), list(Answer), list(Urgency)


def iter_synthetic_children(count: int, seed: int = 7) -> Iterator[ChildFacts]:
    """Yield `count` varied children, a third of them enrolled somewhere (open cases)."""
    rng = random.Random(seed)
    for index in range(count):
        dob = ON - timedelta(days=rng.randint(9 * 365, 19 * 365))
        statements = {DateOfBirthStatement(dob, rng.choice(_BASES))}
        if rng.random() < 0.2:
            statements.add(DateOfBirthStatement(dob - timedelta(days=400), DateOfBirthBasis.ASSESSED))
        # Arguments are drawn in the order written: the same sequence for the same seed, always.
        values: dict[str, Any] = {
            "child_id": f"bench-{index}",
            "dates_of_birth": frozenset(statements),
            "sex": rng.choice(_SEXES),
            "nationalities": frozenset(rng.sample(_NATIONALITIES, rng.randint(0, 2))),
            "trafficking_concern": rng.choice(_CONCERNS),
            "trafficking_route": rng.choice(_ROUTES),
            "nrm_status": rng.choice(_NRM),
            "asylum_application_made": rng.choice(_ANSWERS),
            "asylum_application_date": (
                ON - timedelta(days=rng.randint(0, 700)) if rng.random() < 0.6 else None
            ),
            "parental_responsibility_in_uk": rng.choice(_ANSWERS),
            "local_authority_gss": rng.choice(AREAS),
            "urgency": rng.choice(_URGENCIES),
        }
        if rng.random() < 0.33:
            programme = rng.choice(_PROGRAMMES)
            started = ON - timedelta(days=rng.randint(0, 500))
            values["enrolments"] = frozenset({Enrolment(programme, started)})
        yield ChildFacts(**values)


def synthetic_children(count: int, seed: int = 7) -> list[ChildFacts]:
    """Return `count` varied children, a third of them enrolled somewhere (open cases)."""
    return list(iter_synthetic_children(count, seed))


def _no_rule_work(facts: ChildFacts, on: date, rulebook: Rulebook) -> None:
    """Do no rule work: the baseline, called exactly as `assess` is."""


# The baseline loop over a round takes a millisecond or two: timed once, a scheduler tick or another
# engineer's burst on the shared machine moves it by half. Timed this many times, the fastest kept.
_BASELINE_PASSES = 25


def _baseline_seconds(work: Callable[[], object]) -> float:
    """Return the CPU seconds of the fastest of `_BASELINE_PASSES` runs of the baseline `work`."""
    return min(_timed(work)[0] for _ in range(_BASELINE_PASSES))


def _timed(work: Callable[[], object]) -> tuple[float, float]:
    """Return (CPU seconds, wall seconds) taken by `work`."""
    cpu, wall = time.process_time(), time.perf_counter()
    work()
    return time.process_time() - cpu, time.perf_counter() - wall


def _assess_each(children: list[ChildFacts], rulebook: Rulebook, engine: Callable[..., object]) -> None:
    # The service converts each assessment and lets it go: nothing here keeps one either.
    for child in children:
        engine(child, ON, rulebook)


def _next_changes(children: list[ChildFacts], rulebook: Rulebook) -> None:
    for child in children:
        assess(child, ON, rulebook).next_change  # noqa: B018 - the figure the scheduler reads


def _baseline_next_changes(children: list[ChildFacts], rulebook: Rulebook) -> None:
    for child in children:
        _no_rule_work(child, ON, rulebook)


def main(open_cases: int = 1_000_000, children_count: int = 20_000, rounds: int = 3) -> dict[str, float]:
    """Measure, print and return the figures: evaluations/s and the open-case next-change time."""
    rulebook = load_rulebook()
    batches = [synthetic_children(children_count, seed=7 + round_) for round_ in range(rounds)]
    warm_up = synthetic_children(200, seed=1)
    # Measure the engine as the eligibility process runs it: with the collector settings every Haven
    # service starts with (the collector stays on; start-up objects are frozen, young collections rarer).
    tune_garbage_collector()
    for child in warm_up:  # reference data and compiled plans, outside the timing; other children
        assess(child, ON, rulebook)

    programmes = len(rulebook.in_force(ON))
    print(f"evaluations: one child against all {programmes} programmes, full explanations, one core")
    rates, wall_rates, ratios = [], [], []
    for number, children in enumerate(batches, 1):
        cpu, wall = _timed(partial(_assess_each, children, rulebook, assess))
        base_cpu = _baseline_seconds(partial(_assess_each, children, rulebook, _no_rule_work))
        rates.append(len(children) / cpu)
        wall_rates.append(len(children) / wall)
        ratios.append(cpu / base_cpu)
        print(
            f"  round {number}: {rates[-1]:,.0f}/s (wall clock {wall_rates[-1]:,.0f}/s);"
            f" baseline loop {len(children) / base_cpu:,.0f}/s; engine takes {ratios[-1]:,.0f}x the baseline"
        )
    rate = rates[0]
    verdict = "met" if rate >= TARGET_PER_SECOND else "NOT met"
    print(
        f"  round 1 (coldest tables) {rate:,.0f}/s, target 50,000/s: {verdict};"
        f" median of {rounds} rounds {statistics.median(rates):,.0f}/s"
    )
    # Not judged, for reading the figures: round 1's children again, every answer they need already
    # shared, is the per-child work alone; its ratio to round 1 is what building the shared answers
    # costs. The same work twice, the faster kept: a burst of other work on the machine slows one.
    hot_cpu = min(_timed(partial(_assess_each, batches[0], rulebook, assess))[0] for _ in range(2))
    hot_rate = len(batches[0]) / hot_cpu
    print(
        f"  round 1's children again (every shared answer ready): {hot_rate:,.0f}/s;"
        f" round 1 takes {hot_rate / rate:.2f}x as long"
    )

    next_cpu = next_wall = base_cpu = 0.0
    chunk_size = 50_000
    cases = iter_synthetic_children(open_cases, seed=101)
    while chunk := list(islice(cases, chunk_size)):
        cpu, wall = _timed(partial(_next_changes, chunk, rulebook))
        next_cpu, next_wall = next_cpu + cpu, next_wall + wall
        base_cpu += _timed(partial(_baseline_next_changes, chunk, rulebook))[0]
    verdict = "met" if next_cpu < TARGET_OPEN_CASE_SECONDS else "NOT met"
    print(f"next change date for {open_cases:,} open cases (each a distinct child): {next_cpu:.1f} s")
    print(
        f"  wall clock {next_wall:.1f} s; baseline loop {base_cpu:.2f} s; engine takes"
        f" {next_cpu / base_cpu:,.0f}x the baseline; target 60 s: {verdict}"
    )
    return {
        "evaluations_per_second": rate,
        "evaluations_per_second_median": statistics.median(rates),
        "evaluations_per_second_wall": wall_rates[0],
        "evaluation_baseline_ratio": ratios[0],
        "evaluations_per_second_hot": hot_rate,
        "open_cases": float(open_cases),
        "next_change_seconds": next_cpu,
        "next_change_wall_seconds": next_wall,
        "next_change_baseline_seconds": base_cpu,
        "next_change_baseline_ratio": next_cpu / base_cpu,
    }


if __name__ == "__main__":
    main(*(int(arg) for arg in sys.argv[1:2]))
