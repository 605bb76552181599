"""A check's settings: the parameters it declares and their resolved values in rules.yaml."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

SEVERITIES = ("fail", "warn", "info")
LEVELS = ("identity", "dataset")


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
