"""`Problem`: something wrong with the input, and the bound on how many one identity's message
shows. The bound is for display only: a verdict holds every problem, and a baseline keys each
one on its own, so a new problem never hides behind the count of the rest."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

# A failure message a person reads: past this, problems are counted, not listed.
MAX_PROBLEMS = 20
# Rows or names listed in one grouped message (zero vectors, stale files, ...).
SHOWN = 5


@dataclass(frozen=True)
class Problem:
    """Something wrong with the input. `fatal` problems mean data could not be checked."""

    file: str
    message: str
    fatal: bool = True
    # A short stable kind (corrupt, nan, missing-array, ...): with the identity and file it keys
    # the problem in a baseline, so an accepted problem stays accepted and a new one fails.
    # `file` is stable too (never a row number), for the same reason.
    code: str = "input"

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"


def capped(problems: Sequence[Problem], where: str, limit: int = MAX_PROBLEMS) -> list[Problem]:
    """At most `limit` problems to show: the first `limit - 1` and one counting the rest.

    For display only (warnings, findings.json's list): never a verdict's or a baseline's list.
    The counting problem is fatal when any problem it hides is. Fatal problems come first (in
    their order, then the notes), so the cut drops notes before anything worse."""
    problems = sorted(problems, key=lambda p: not p.fatal)
    if len(problems) <= limit:
        return problems
    kept, rest = problems[: limit - 1], problems[limit - 1 :]
    codes = sorted({p.code for p in rest})
    return kept + [Problem(where, f"... and {len(rest)} more problems ({', '.join(codes)})",
                           fatal=any(p.fatal for p in rest), code="more-problems")]


def few(items: Sequence[str], n: int = SHOWN, total: int | None = None) -> str:
    """The first `n` items joined, and how many there are (items must already be shown text).

    `total`: the full count when `items` is only the start of a longer list."""
    total = len(items) if total is None else total
    text = ", ".join(items[:n])
    return text + (f", ... first {n} of {total} shown" if total > n else "")
