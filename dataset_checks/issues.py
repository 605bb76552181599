"""One result model: everything a run finds is an `Issue`.

The cross-identity search's pairs (`Finding`, an Issue of check `cross_identity` whose score is
the cosine), an input problem of a folder (`input_issue`: check `input`, its reason code) and
every registered check's findings are the same type, keyed the same way for the baseline
(`Issue.baseline_key`), so every output (terminal, files, report, baseline) reads one list.
"""

from __future__ import annotations

from dataclasses import dataclass

from .discover import display_name
from .problems import Problem
from .text import name_cell, unshown

PAIR_CHECK = "cross_identity"  # the cross-identity search's pairs
INPUT_CHECK = "input"  # input problems (rules: checks.bad_input); the baseline files' name for them
Key = tuple[str, tuple[str, ...]]  # (check, key): what a baseline row accepts


@dataclass(frozen=True)
class Issue:
    """One thing a check found. It counts against `identity` (and `other_identity` too when the
    check is symmetric); `score` ranks issues by evidence, highest first; `code` says which kind
    of finding it is when a check has several (an input problem's reason: corrupt, nan, ...)."""

    check: str
    identity: str = ""  # raw folder name; "" for a dataset-level issue about no one folder
    file: str = ""
    other_identity: str = ""
    other_file: str = ""
    score: float = 0.0
    detail: str = ""  # the check's own words, names in it already shown (display_name): not escaped again
    severity: str = "fail"
    waived: str | None = None  # why it does not fail (allowlist, baseline); still listed, never hidden
    code: str = ""

    @property
    def key(self) -> tuple[str, str, str, str]:
        """What the baseline keys a registered check's issue by (with the check's name)."""
        return (self.identity, self.file, self.other_identity, self.other_file)

    @property
    def reason(self) -> str:
        """The reason code: `code`, else the check's name."""
        return self.code or self.check

    def baseline_key(self) -> Key:
        """The baseline row that accepts this issue: a pair on its two (identity, file) sides,
        order-free; an input problem on (identity, file, code); any other issue on `key`."""
        if self.check == PAIR_CHECK:
            a, b = (self.identity, self.file), (self.other_identity, self.other_file)
            return (PAIR_CHECK, (*min(a, b), *max(a, b)))
        if self.check == INPUT_CHECK:
            return (INPUT_CHECK, (self.identity, self.file, self.code))
        return (self.check, self.key)

    def involves(self, identity: str, symmetric: bool) -> bool:
        return identity == self.identity or (symmetric and identity == self.other_identity)


@dataclass(frozen=True, init=False)
class Finding(Issue):
    """Two faces in different identity folders at or above the threshold (an unordered pair): the
    cross-identity search's Issue, its score the cosine."""

    def __init__(self, identity: str, file: str, other_identity: str, other_file: str, similarity: float,
                 waived: str | None = None):
        super().__init__(PAIR_CHECK, identity, file, other_identity, other_file, float(similarity), waived=waived,
                         code="same-face")

    @property
    def similarity(self) -> float:
        return self.score

    def row(self) -> tuple[str, str, str, str, str]:
        """findings.csv cells: names shown and formula-safe (`text.cell_name` reads them back)."""
        return (
            name_cell(self.identity),
            name_cell(self.file),
            name_cell(self.other_identity),
            name_cell(self.other_file),
            f"{self.similarity:.6f}",
        )

    def pair_key(self) -> tuple[str, ...]:
        """Order-free identity of the pair, for baselines and deduplication."""
        return self.baseline_key()[1]

    def seen_from(self, identity: str) -> Match:
        if identity == self.identity:
            return Match(self.file, self.other_identity, self.other_file, self.similarity, self.waived)
        return Match(self.other_file, self.identity, self.file, self.similarity, self.waived)


@dataclass(frozen=True)
class Match:
    """A finding as seen from one identity: its own file and the face it matches elsewhere."""

    file: str
    other_identity: str
    other_file: str
    similarity: float
    waived: str | None = None

    def line(self) -> str:
        text = (f"{display_name(self.file)} ↔ {display_name(self.other_identity)}/{display_name(self.other_file)}  "
                f"{self.similarity:.4f}")
        return f"{text}  (waived: {self.waived})" if self.waived else text


def problem_key(identity: str, problem: Problem) -> Key:
    """A problem's baseline key: (input, (identity, file, code)); the message is not part of it,
    so rewording a message does not turn an accepted problem into a new one."""
    return (INPUT_CHECK, (identity, unshown(problem.file), problem.code))


def input_issue(identity: str, problem: Problem, waived: str | None = None) -> Issue:
    """An input problem of `identity`'s folder as an Issue: fatal ones fail (bad_input), notes warn."""
    return Issue(INPUT_CHECK, identity, unshown(problem.file), detail=problem.message,
                 severity="fail" if problem.fatal else "warn", waived=waived, code=problem.code)
