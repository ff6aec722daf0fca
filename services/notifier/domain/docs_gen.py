"""Generate the policy part of docs/notifications.md from services/notifier/policies/.

The page has a hand-written part (signing, delivery guarantees) and a generated part between two
marker lines; only the generated part is rewritten. Run `python -m services.notifier.domain.docs_gen`
to update it, or with `--check` to fail when it is stale.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path

from services.notifier.domain.policy import (
    FieldVocabulary,
    NotificationPolicy,
    RecipientRule,
    ScheduleEntry,
    load_policies,
    packaged_fields,
)

DOC = Path(__file__).resolve().parents[3] / "docs" / "notifications.md"
BEGIN = (
    "<!-- BEGIN GENERATED: python -m services.notifier.domain.docs_gen (from services/notifier/policies/) -->"
)
END = "<!-- END GENERATED -->"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _when(rule: RecipientRule | ScheduleEntry) -> str:
    if not rule.when:
        return "always"
    return "; ".join(f"{name} in {', '.join(sorted(values))}" for name, values in sorted(rule.when.items()))


def policy_section(policy: NotificationPolicy) -> str:
    """Return the Markdown section of one event type."""
    lines = [
        f"### `{policy.event_type}`",
        "",
        f"{_cell(policy.summary)} Source: {_cell(policy.citation)}. "
        f"Policy: `services/notifier/policies/{policy.path}`, version {policy.version}.",
        "",
        "| role | when | urgency | deadline | channel | required | basis | source |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.role} | {_cell(_when(r))} | {r.urgency} | {r.deadline_text} | {r.channel} "
        f"| {'yes' if r.required else 'no'} | {r.basis} | {_cell(r.citation)} |"
        for r in policy.recipients
    ]
    lines += ["", "| projection | fields sent (nothing else is) | to |", "|---|---|---|"]
    for name, fields in policy.projections.items():
        roles = ", ".join(dict.fromkeys(str(r.role) for r in policy.recipients if r.projection == name))
        lines.append(f"| `{name}` | {', '.join(f'`{f}`' for f in fields)} | {roles} |")
    if policy.schedule:
        lines += ["", "| scheduled | from | when | offset | raised | person confirms | basis | source |"]
        lines.append("|---|---|---|---|---|---|---|---|")
        for s in policy.schedule:
            raised = f"{s.notice_text} before" if s.notice_text else "when due"
            lines.append(
                f"| `{s.schedule_id}` | {s.anchor} | {_cell(_when(s))} | {s.offset.text} | {raised} "
                f"| {'yes' if s.confirm_by_person else 'no'} | {s.basis} | {_cell(s.citation)} |"
            )
    return "\n".join(lines)


def fields_section(vocabulary: FieldVocabulary) -> str:
    """Return the field vocabulary and the sensitivity classes as Markdown."""
    lines = [
        "### Fields a payload may carry",
        "",
        "| field | kind | sensitivity | meaning |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| `{f.name}` | {f.kind} | {f.sensitivity or '-'} | {_cell(f.description)} |"
        for f in vocabulary.fields.values()
    ]
    lines += ["", "| sensitivity | only these roles may receive it | why |", "|---|---|---|"]
    lines += [
        f"| {s.name} | {', '.join(sorted(s.roles))} | {_cell(s.why)} ({_cell(s.citation)}) |"
        for s in vocabulary.sensitivities.values()
    ]
    return "\n".join(lines)


def generated_part(policies: Mapping[str, NotificationPolicy], vocabulary: FieldVocabulary) -> str:
    """Return the generated part of the page, markers included."""
    parts = [
        BEGIN,
        "",
        "## Who is told what, and how fast",
        "",
        "Generated from the policy data; edit the YAML, then regenerate. `basis: decision` marks a choice",
        "made where the sources are silent; `stated` rows cite the seed line that states them.",
        "",
        *(policy_section(p) + "\n" for p in policies.values()),
        fields_section(vocabulary),
        "",
        END,
    ]
    return "\n".join(parts)


def render(current: str, policies: Mapping[str, NotificationPolicy], vocabulary: FieldVocabulary) -> str:
    """Return the page with its generated part replaced; the hand-written text is kept as it is."""
    start, end = current.find(BEGIN), current.find(END)
    if start < 0 or end < start:
        raise ValueError("docs/notifications.md lacks the generated-part markers")
    return current[:start] + generated_part(policies, vocabulary) + current[end + len(END) :]


def is_current(path: Path = DOC) -> bool:
    """Return whether the page matches what the policy data generates."""
    current = path.read_text(encoding="utf-8")
    return render(current, load_policies(), packaged_fields()) == current


def main(argv: list[str] | None = None) -> int:
    """Rewrite the generated part, or with --check report a stale page and return 1."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail when docs/notifications.md is stale")
    args = parser.parse_args(argv)
    if args.check:
        if is_current():
            return 0
        print("stale: docs/notifications.md (run python -m services.notifier.domain.docs_gen)")
        return 1
    current = DOC.read_text(encoding="utf-8")
    DOC.write_text(render(current, load_policies(), packaged_fields()), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
