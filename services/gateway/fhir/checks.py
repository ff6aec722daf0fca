"""Small shared checks over plain FHIR JSON: dates, codings and the issue list they report into."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from typing import Any, TypeVar

from .issues import Issue, IssueType

T = TypeVar("T")

# A FHIR date or dateTime whose calendar day is known: YYYY-MM-DD, optionally followed by a time.
_FULL_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass
class Checks:
    """Collects issues while reading resources; `today` is the date no stated date may be after."""

    today: date
    issues: list[Issue] = field(default_factory=list)

    def add(self, code: IssueType, expression: str, diagnostics: str) -> None:
        """Record one issue."""
        self.issues.append(Issue(code, expression, diagnostics))

    def past_date(self, value: Any, expression: str, what: str) -> date | None:
        """Return the calendar day of a FHIR date/dateTime that must be complete and not in the future."""
        if not isinstance(value, str) or not _FULL_DATE.match(value):
            self.add(
                IssueType.VALUE,
                expression,
                f"The {what} must be a full date (YYYY-MM-DD); a year or a month alone is not enough.",
            )
            return None
        try:
            day = date.fromisoformat(value[:10])
        except ValueError:
            self.add(IssueType.VALUE, expression, f"The {what} is not a real calendar date.")
            return None
        if day > self.today:
            self.add(
                IssueType.VALUE,
                expression,
                f"The {what} ({day.isoformat()}) is in the future; today is {self.today.isoformat()}.",
            )
            return None
        return day

    def coded(
        self, concept: Any, system: str, codes: dict[str, T], expression: str, what: str
    ) -> tuple[str, T] | None:
        """Return (code, mapped value) of the first coding of `concept` in `system`, or report why not.

        Codings from other systems are allowed beside it (for example a local code) and ignored.
        """
        codings = concept.get("coding", []) if isinstance(concept, dict) else []
        for index, coding in enumerate(codings):
            if coding.get("system") != system:
                continue
            code = coding.get("code")
            if code in codes:
                return code, codes[code]
            self.add(
                IssueType.CODE_INVALID,
                f"{expression}.coding[{index}].code",
                f"'{code}' is not a code of {system} for the {what}; use one of: {', '.join(codes)}.",
            )
            return None
        self.add(
            IssueType.CODE_INVALID,
            f"{expression}.coding",
            f"The {what} needs a coding with system {system} and one of the codes: {', '.join(codes)}.",
        )
        return None

    def coding(
        self, coding: Any, system: str, codes: dict[str, T], expression: str, what: str
    ) -> tuple[str, T] | None:
        """Like `coded`, for a single Coding instead of a CodeableConcept."""
        if not isinstance(coding, dict) or coding.get("system") != system or coding.get("code") not in codes:
            self.add(
                IssueType.CODE_INVALID,
                expression,
                f"The {what} must be a Coding with system {system} and one of the codes: {', '.join(codes)}.",
            )
            return None
        code = str(coding["code"])
        return code, codes[code]


def extensions(element: dict[str, Any], url: str) -> list[tuple[int, dict[str, Any]]]:
    """Return the (index, extension) pairs of `element` with the given url."""
    return [(i, ext) for i, ext in enumerate(element.get("extension", [])) if ext.get("url") == url]
