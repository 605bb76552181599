"""findings.csv (the pairs at or above the threshold) and findings.json (the whole result)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, ClassVar

from .. import findings
from . import RunView, register

if TYPE_CHECKING:
    from ..rules import Rules


@register
class FindingsCsv:
    name: ClassVar[str] = "findings.csv"
    order: ClassVar[int] = 10

    def names(self, rules: Rules) -> list[str]:
        return [self.name]

    def files(self, view: RunView) -> list[tuple[str, Callable[[Path], object]]]:
        return [(self.name, lambda path: findings.write_csv(view.findings, path))]


@register
class FindingsJson:
    name: ClassVar[str] = "findings.json"
    order: ClassVar[int] = 20

    def names(self, rules: Rules) -> list[str]:
        return [self.name]

    def files(self, view: RunView) -> list[tuple[str, Callable[[Path], object]]]:
        return [(self.name, lambda path: findings.write_json(view.findings, path, timings=view.timings))]
