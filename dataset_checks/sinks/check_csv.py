"""<check>.csv: one file per registered check that ran, its issues ranked by evidence."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, ClassVar

from .. import check_files
from . import RunView, register

if TYPE_CHECKING:
    from ..check_run import CheckResult
    from ..rules import Rules


@register
class CheckCsv:
    name: ClassVar[str] = "<check>.csv"
    order: ClassVar[int] = 40

    def names(self, rules: Rules) -> list[str]:
        from ..checks import all_checks

        # as check_run.run_checks: an enabled check with something to compare with
        return [f"{c.name}.csv" for c in all_checks() if not c.builtin
                and rules.check_settings(c.name).enabled and ("against" not in c.needs or rules.against)]

    def files(self, view: RunView) -> list[tuple[str, Callable[[Path], object]]]:
        return [(f"{name}.csv", _writer(result)) for name, result in view.check_results.items()]


def _writer(result: CheckResult) -> Callable[[Path], object]:
    return lambda path: check_files.write_issues_csv(result, path)
