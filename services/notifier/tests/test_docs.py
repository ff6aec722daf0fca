from __future__ import annotations

import dataclasses

from services.notifier.domain import docs_gen, load_policies
from services.notifier.domain.policy import packaged_fields


def test_docs_are_current() -> None:
    assert docs_gen.is_current(), "run python -m services.notifier.domain.docs_gen"
    assert docs_gen.main(["--check"]) == 0


def test_a_policy_change_makes_the_docs_stale_and_keeps_the_hand_written_part() -> None:
    current = docs_gen.DOC.read_text(encoding="utf-8")
    policies = load_policies()
    changed = dict(policies)
    bumped = policies["review-due"].version + 1
    changed["review-due"] = dataclasses.replace(policies["review-due"], version=bumped)
    rendered = docs_gen.render(current, changed, packaged_fields())
    assert rendered != current
    assert f"`services/notifier/policies/review-due.yaml`, version {bumped}" in rendered
    hand_written = current[: current.index(docs_gen.BEGIN)]
    assert rendered.startswith(hand_written) and "## Verifying a delivery" in hand_written


def test_generated_part_lists_every_event_type_and_citation() -> None:
    part = docs_gen.generated_part(load_policies(), packaged_fields())
    for policy in load_policies().values():
        assert f"### `{policy.event_type}`" in part
        for rule in policy.recipients:
            assert " ".join(rule.citation.split()).replace("|", "\\|") in part
