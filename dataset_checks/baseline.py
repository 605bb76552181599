"""CI ratchet: a baseline file of accepted findings (findings.csv format).

`--baseline FILE`: findings listed in FILE are waived (reported, never failing); only new ones
fail. `--update-baseline`: the run accepts every current finding and writes them to FILE, so
fixed findings drop out and the file only ever shrinks unless someone accepts new ones.
Allowlisted findings (rules.yaml `allow`) never go into the baseline: the rules already cover them.
"""

from __future__ import annotations

import csv
from pathlib import Path

from .text import unshown
from .findings import CSV_HEADER, Finding, Findings, _atomic_write, read_csv

BASELINE_PREFIX = "baseline"


class BaselineError(ValueError):
    """The baseline file cannot be used; the message is meant for the user as is."""


def _raw(name: str) -> str:
    """Undo display_name(): a shown name back to the file system's name."""
    return unshown(name)


def _key(f: Finding) -> tuple[str, str, str, str]:
    return Finding(_raw(f.identity), _raw(f.file), _raw(f.other_identity), _raw(f.other_file), f.similarity).key()


class Baseline:
    def __init__(self, path: Path, entries: list[Finding] | None = None):
        self.path = Path(path)
        self.entries = entries or []
        self.keys = {_key(e) for e in self.entries}

    @classmethod
    def load(cls, path: Path, missing_ok: bool = False) -> "Baseline":
        path = Path(path)
        if not path.exists():
            if missing_ok:
                return cls(path)
            raise BaselineError(f"baseline file not found: {path} (create it with --update-baseline)")
        if not path.is_file():
            raise BaselineError(f"baseline is not a file: {path}")
        try:
            return cls(path, read_csv(path))
        except (ValueError, UnicodeDecodeError) as exc:
            raise BaselineError(f"baseline {exc}") from None

    @property
    def reason(self) -> str:
        return f"{BASELINE_PREFIX}: {self.path.name}"

    def waivers(self) -> list[tuple[tuple[str, str, str, str], str]]:
        return [(k, self.reason) for k in self.keys]

    @staticmethod
    def accept_all(findings: Findings, reason: str) -> list[tuple[tuple[str, str, str, str], str]]:
        """Waivers that accept every finding the rules do not already allow (--update-baseline)."""
        return [(f.key(), reason) for f in findings.pairs if is_baselinable(f)]

    def stale(self, findings: Findings) -> list[Finding]:
        """Baseline entries this run no longer finds (fixed, or below the threshold now)."""
        current = {f.key() for f in findings.pairs}
        return [e for e in self.entries if _key(e) not in current]

    def write(self, findings: Findings) -> Path:
        rows = [f.row() for f in findings.pairs if is_baselinable(f)]

        def write(fh):
            w = csv.writer(fh)
            w.writerow(CSV_HEADER)
            w.writerows(rows)

        _atomic_write(self.path, write)
        return self.path


def is_baselinable(f: Finding) -> bool:
    return f.waived is None or f.waived.startswith(BASELINE_PREFIX)
