"""merge_candidates.csv: identity pairs that may be one person, by the rank score."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, ClassVar

from .. import merge
from . import RunView, register

if TYPE_CHECKING:
    from ..rules import Rules


@register
class MergeCandidatesCsv:
    name: ClassVar[str] = "merge_candidates.csv"
    order: ClassVar[int] = 30

    def names(self, rules: Rules) -> list[str]:
        return [self.name]

    def files(self, view: RunView) -> list[tuple[str, Callable[[Path], object]]]:
        return [(self.name, lambda path: merge.write_merge_csv(list(view.candidates), path))]
