"""The run's shared data as checks receive it: one table, one search, the file listing, the other
datasets of --against. Read-only for checks; values computed once and shared live in `cache`."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Protocol

if TYPE_CHECKING:
    from ..problems import Problem
    from ..context import RunContext
    from ..discover import Identity
    from ..search import SearchResult
    from ..vectors import VectorTable
    from .settings import CheckSettings


class CalibrationView(Protocol):
    """rules `calibration:` as checks read it (rules.CalibrationRules)."""

    @property
    def chance_pairs(self) -> float: ...
    @property
    def ceiling(self) -> float | None: ...
    @property
    def sample_pairs(self) -> int: ...
    @property
    def seed(self) -> int: ...


class RulesView(Protocol):
    """What checks read of the rules (rules.Rules is one): a protocol, so that the checks, whose
    settings rules.py validates through the registry, never import rules.py."""

    @property
    def centre(self) -> bool: ...
    @property
    def calibration(self) -> CalibrationView: ...
    @property
    def identity_thresholds(self) -> Mapping[str, float]: ...
    def check_settings(self, name: str) -> CheckSettings: ...


@dataclass
class CheckData:
    """The run's shared data, read-only for checks: one table, one search, the file listing."""

    root: Path
    rules: RulesView | None  # None: a check run alone (tests) reads its defaults
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
    # the run's budget, progress and cache (None: a check run alone, e.g. in a test, keeps no budget)
    context: RunContext | None = field(default=None, repr=False, compare=False)


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
    lost: list[Problem] = field(default_factory=list)
