"""What a check is: a name, its rules.yaml section, what it needs, and a pure function from the
run's shared data to issues. No pytest here; the plugin turns each registered check into a test
family, the writers into a `<check>.csv`, a report section and entries in findings.json, and the
baseline keys each issue by (check, key) so that every check ratchets on its own.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

from .folder_fit import folder_fit

if TYPE_CHECKING:  # the pipeline's types; checks receive them at run time
    import numpy as np

    from ..discover import Identity
    from ..rules import Rules
    from ..search import SearchResult
    from ..vectors import VectorTable

SEVERITIES = ("fail", "warn", "info")
LEVELS = ("identity", "dataset")


@dataclass(frozen=True)
class Issue:
    """One thing a check found. It counts against `identity` (and `other_identity` too when the
    check is symmetric); `score` ranks issues by evidence, highest first."""

    check: str
    identity: str = ""  # raw folder name; "" for a dataset-level issue about no one folder
    file: str = ""
    other_identity: str = ""
    other_file: str = ""
    score: float = 0.0
    detail: str = ""  # the check's own words, names in it already shown (display_name): not escaped again
    severity: str = "fail"
    waived: str | None = None

    @property
    def key(self) -> tuple[str, str, str, str]:
        """What the baseline keys the issue by (with the check's name)."""
        return (self.identity, self.file, self.other_identity, self.other_file)

    def involves(self, identity: str, symmetric: bool) -> bool:
        return identity == self.identity or (symmetric and identity == self.other_identity)


@dataclass(frozen=True)
class Param:
    """One setting of a check's rules.yaml section, validated when the rules are read."""

    default: Any
    doc: str
    kind: str = "number"  # number | int | bool | choice
    low: float | None = None  # inclusive bounds for number / int
    high: float | None = None
    choices: tuple[str, ...] = ()

    def expected(self) -> str:
        if self.kind == "bool":
            return "true or false"
        if self.kind == "choice":
            return "one of " + ", ".join(self.choices)
        what = "a whole number" if self.kind == "int" else "a number"
        if self.low is not None and self.high is not None:
            return f"{what} in [{self.low:g}, {self.high:g}]"
        if self.low is not None:
            return f"{what} >= {self.low:g}"
        return what

    def valid(self, value: Any) -> bool:
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind == "choice":
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "int" and not isinstance(value, int):
            return False
        if not math.isfinite(float(value)):
            return False
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)


@dataclass(frozen=True)
class AutoNumber(Param):
    """A number, or `auto`: chosen from the data."""

    kind: str = "number"

    def expected(self) -> str:
        return "auto or " + super().expected()

    def valid(self, value: Any) -> bool:
        return value == "auto" or super().valid(value)


@dataclass(frozen=True)
class CheckSettings:
    """A check's resolved rules: on or off, what its issues do to a test, its parameters."""

    enabled: bool
    severity: str
    params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def __getitem__(self, name: str) -> Any:
        return self.params[name]


@dataclass
class CheckData:
    """The run's shared data, read-only for checks: one table, one search, the file listing."""

    root: Path
    rules: "Rules"
    identities: list["Identity"]
    table: "VectorTable"
    pairs: "SearchResult | None"  # cross-folder pairs at or above the search radius
    threshold: float  # the cross-identity threshold in force
    against: list["AgainstData"] = field(default_factory=list)
    cache: dict[str, Any] = field(default_factory=dict)  # shared lazily computed values (folder means...)
    # calibview: threshold.ThresholdChoice when `threshold: auto` was resolved, else None
    threshold_choice: Any = None
    # checks run in parallel lanes (check_run): a shared value is computed once, under this lock
    lock: Any = field(default_factory=threading.RLock, repr=False, compare=False)

    def folder_means(self) -> "np.ndarray":
        """Unit mean vector of every identity after centring (zero rows for empty identities):
        the folder sums of folder_fit (one pass over the table, shared with misfiled,
        consistency and the merge ranking), normalised."""
        with self.lock:
            if "folder_means" not in self.cache:
                import numpy as np

                sums = folder_fit(self).sums
                norms = np.sqrt(np.einsum("ij,ij->i", sums, sums))
                self.cache["folder_means"] = sums / np.where(norms > 0, norms, 1.0)[:, None]
            return self.cache["folder_means"]


@dataclass
class AgainstData:
    """Another dataset checked against this one (--against): its own table, never written.

    `unusable`: why it cannot be checked at all (leakage.judge_against: empty, another model, most
    folders unreadable), then the check fails; `lost`: its folders that gave no vectors, by their
    first problem (named in the check's notes)."""

    root: Path
    identities: list["Identity"]
    table: "VectorTable | None"
    unusable: str | None = None
    lost: list = field(default_factory=list)


class Check:
    """Base of every check. A subclass sets the class attributes and implements `run`."""

    name: ClassVar[str]
    title: ClassVar[str]  # a few words for the report section and the test's docstring
    doc: ClassVar[str]  # what it finds, one paragraph (the test's docstring, docs/checks.md)
    level: ClassVar[str] = "identity"  # identity: test_<name>[<identity>]; dataset: one test_<name>
    needs: ClassVar[frozenset[str]] = frozenset({"vectors"})  # vectors, pairs, images, names, against
    severity: ClassVar[str] = "fail"  # default: fail | warn | info
    enabled: ClassVar[bool] = True  # on by default
    symmetric: ClassVar[bool] = False  # an issue counts against both identities it names
    params: ClassVar[dict[str, Param]] = {}
    family: ClassVar[str | None] = None  # pytest function name; None: test_<name>
    # judged by the core pipeline (cross-identity pairs, faces, input problems): listed and
    # configured like any check, but with their own test functions, files and report rows
    builtin: ClassVar[bool] = False
    columns: ClassVar[dict[str, str]] = {"score": "score"}  # CSV header names for score (e.g. similarity)
    # checks naming the same lane run one after another in one thread (they share mutable state,
    # e.g. misfiled's folder fit); lanes run in parallel. None: a lane of its own
    lane: ClassVar[str | None] = None

    @classmethod
    def test_name(cls) -> str:
        return cls.family or f"test_{cls.name}"

    def run(self, data: CheckData, settings: CheckSettings) -> list[Issue]:  # pragma: no cover - abstract
        raise NotImplementedError

    def report_html(self) -> str:
        """Extra HTML for the check's report section (a plot, a table), from what `run` kept on
        the instance. Must escape every name (html.escape(display_name(...)))."""
        return ""

    def notes(self) -> list[str]:
        """What the check could not look at, one line each (after `run`): warnings of every test of
        its family and lines of the terminal summary (leakage: folders of the other dataset that
        gave no vectors)."""
        return []

    def evaluated(self, key: tuple[str, ...]) -> bool:
        """Whether this run (after `run`) could have found an issue with this baseline key: an
        accepted row it could not is kept by --update-baseline (leakage: a dataset not given)."""
        return True

    def summary(self) -> dict[str, Any]:
        """Extra JSON-ready facts for findings.json (thresholds chosen from the data, counts):
        by default what `run` kept in `self.facts`."""
        return dict(getattr(self, "facts", {}))
