"""What a check is: a name, its rules.yaml section, what it needs, and a pure function from the
run's shared data to issues. No pytest here; the plugin turns each registered check into a test
family, the writers into a `<check>.csv`, a report section and entries in findings.json, and the
baseline keys each issue by (check, key) so that every check ratchets on its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from ..issues import Issue  # noqa: F401  (a check's result type, importable from here)
from .settings import LEVELS, SEVERITIES, AutoNumber, CheckSettings, Param  # noqa: F401  (importable from here)

if TYPE_CHECKING:  # a check receives the run's data (checks/data.py, which imports the pipeline's types)
    from .data import CheckData


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
    # place in the report, findings.json and the test run, lowest first (registry.all_checks);
    # every shipped check sets its own, a check that does not comes after them
    order: ClassVar[int] = 1000

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


# what a check module imports from here, re-exports included (mypy --strict: no implicit re-export)
__all__ = ["LEVELS", "SEVERITIES", "AutoNumber", "Check", "CheckSettings", "Issue", "Param"]
