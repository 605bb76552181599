"""What a run hands its stages explicitly: its memory budget, its progress bars, its cache folder.

No module holds the run in progress: two pipelines in one process (tests, a notebook) each pass
their own RunContext, so one run's budget never trims, or counts against, the other's table.
Frozen: checks read it from parallel lanes (check_run); the Budget it holds is itself safe to
share between threads (its trims are under a lock).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .memory import Budget

# The tqdm-like bar factory of a run with progress shown: (iterable=None, **tqdm keywords) -> bar
ProgressFactory = Callable[..., Any]


@dataclass(frozen=True)
class RunContext:
    """`budget`: the run's memory.Budget (None: no budget kept); `progress`: the bar factory (None:
    no bars); `cache_dir`: the run's cache folder (None: none)."""

    budget: Budget | None = None
    progress: ProgressFactory | None = None
    cache_dir: Path | None = None

    def checkpoint(self) -> None:
        """Between the steps of long loops: the budget trims now when its limit is near
        (memory.Budget.checkpoint); a no-op without a budget."""
        if self.budget is not None:
            self.budget.checkpoint()


def budget_of(context: RunContext | None) -> Budget | None:
    """The budget of `context` (None: a stage run alone, e.g. a check in a test, keeps none)."""
    return context.budget if context is not None else None
