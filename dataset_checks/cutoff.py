"""The cross-identity threshold in force for one run, and where it came from.

The rules stay what the user wrote (`threshold: auto` stays auto): the value a run resolves, from
the rules, --threshold, the data (`threshold: auto`) or a baseline's record, is this result, passed
to what needs it and carried by the run's result; it is never written back into the rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping, TypedDict

from .discover import display_name

if TYPE_CHECKING:
    from .rules import Rules
    from .threshold import ThresholdChoice


class ThresholdRecord(TypedDict):
    """A `threshold: auto` value and the calibration settings it was chosen under, as
    --update-baseline records it (baseline.THRESHOLD_ROW)."""

    value: float
    settings: dict[str, Any]  # JSON: compared whole with this run's (run.Pipeline)


@dataclass(frozen=True)
class Threshold:
    value: float
    source: str  # in words, for the header, the summary, report.html and findings.json
    auto: bool = False  # chosen from this run's data (a margin is kept for incremental runs)
    per_identity: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    choice: ThresholdChoice | None = None  # when calibrated by this run
    # what --update-baseline records under `threshold: auto`: a ThresholdRecord, plus "from":
    # "baseline" when this run took it from its baseline
    record: Mapping[str, Any] | None = None

    @classmethod
    def of_rules(cls, rules: Rules) -> Threshold:
        """The threshold the rules give before any data is read (under `threshold: auto`, the
        model's default until the run calibrates it)."""
        source = "auto: the model's default" if rules.threshold_auto else f"from {display_name(rules.threshold_from)}"
        return cls(float(rules.threshold), source, bool(rules.threshold_auto),
                   MappingProxyType(dict(rules.identity_thresholds)))

    def for_identity(self, identity: str) -> float:
        return self.per_identity.get(identity, self.value)

    @property
    def radius(self) -> float:
        """The search radius: low enough for every per-identity override."""
        return min([self.value, *self.per_identity.values()])

    def text(self) -> str:
        return f"{self.value:g} ({self.source})"
