"""Writing one run's files into the report folder: each atomically, each failure named.

No pytest here. report.html is pytest-html's (the plugin makes it atomic too); the terminal text
is report.summary_lines; these are the data files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .check_files import write_issues_csv
from .discover import display_name
from .findings import Findings, write_csv, write_json
from .merge import MergeCandidate, write_merge_csv


@dataclass
class Written:
    files: list[Path] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # "<file>: <why>" for each file not written


def planned_files(report_dir: Path, rules) -> list[Path]:
    """Every file `write_files` may write (one <check>.csv per enabled check), and the report
    folder's lock file: checked for planted links before the run (plugin._check_writable)."""
    from .checks import all_checks
    from .outputs import LOCK_NAME

    names = ["findings.csv", "findings.json", "merge_candidates.csv", LOCK_NAME]
    names += [f"{c.name}.csv" for c in all_checks() if not c.builtin and rules.check_settings(c.name).enabled
              and ("against" not in c.needs or rules.against)]  # as check_run.run_checks
    return [Path(report_dir) / n for n in names]


def write_files(report_dir: Path, findings: Findings, candidates: list[MergeCandidate], check_results: dict
                ) -> Written:
    """findings.csv, findings.json, merge_candidates.csv and one <check>.csv per check that ran.
    A file that cannot be written (disk full, folder gone) is named in `errors`; the others are
    still written."""
    jobs: list[tuple[Path, Callable[[Path], Path]]] = [
        (report_dir / "findings.csv", lambda p: write_csv(findings, p)),
        (report_dir / "findings.json", lambda p: write_json(findings, p)),
        (report_dir / "merge_candidates.csv", lambda p: write_merge_csv(candidates, p)),
    ]
    for name, result in check_results.items():
        jobs.append((report_dir / f"{name}.csv", lambda p, r=result: write_issues_csv(r, p)))
    out = Written()
    for path, write in jobs:
        try:
            out.files.append(write(path))
        except OSError as exc:
            out.errors.append(f"{display_name(str(path))}: {exc.strerror or exc}")
    return out
