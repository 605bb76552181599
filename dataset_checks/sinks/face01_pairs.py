"""pairs_face01.csv: the pairs in the layout of the FACE01 seed's duplicate search, written only
when rules.yaml asks for it (`outputs: [face01_pairs]`).

The seed's script writes a headerless CSV `file,other_file,similarity` with bare file names (the
person is the prefix before the first `_`), and the user's next script aggregates it per folder
pair; findings.csv (a header, identity and file apart) does not drop into it. One row per
finding, in findings.csv's order; cells formula-safe and escaped as findings.csv's are.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ClassVar, TextIO

from ..safe_write import atomic_write
from ..text import name_cell
from . import RunView, register

if TYPE_CHECKING:
    from ..findings import Findings
    from ..rules import Rules


def bare(file: str) -> str:
    """The file's own name: the seed's rows hold no folder (a face resolved in same_face/ too)."""
    return file.rsplit("/", 1)[-1]


def write_pairs(findings: Findings, path: Path) -> Path:
    def write(fh: TextIO) -> None:
        csv.writer(fh).writerows((name_cell(bare(f.file)), name_cell(bare(f.other_file)), f"{f.similarity:.6f}")
                                 for f in findings.active)

    atomic_write(path, write, readable=True)
    return path


@register
class Face01PairsCsv:
    name: ClassVar[str] = "pairs_face01.csv"
    output: ClassVar[str] = "face01_pairs"  # rules `outputs:` asks for it by this name
    order: ClassVar[int] = 15  # listed beside findings.csv

    def names(self, rules: Rules) -> list[str]:
        return [self.name] if self.output in rules.outputs else []

    def files(self, view: RunView) -> list[tuple[str, Callable[[Path], object]]]:
        if view.rules is None or self.output not in view.rules.outputs:
            return []
        return [(self.name, lambda path: write_pairs(view.findings, path))]
