"""Run the registered checks on the run's shared data; judge their issues per identity.

No pytest here: the plugin asks `CheckResult.outcome(identity)` for each test of a check's family.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Iterable, Literal, cast

from .backends import _bar
from .blas import cores, single_threaded
from .checks import Check, CheckSettings, all_checks
from .checks.data import CheckData
from .discover import display_name
from .issues import Issue
from .text import terminal_line

if TYPE_CHECKING:
    from .issues import Key
    from .rules import Rules

MESSAGE_ISSUES = 3  # issues shown per identity in the terminal; the rest in <check>.csv / report.html
# The modules the checks import inside their functions, imported here before the lanes start:
# imported for the first time in two lanes at once, under pytest's assertion rewriting (which
# parses a module's source with `ast`), CPython 3.11 raises a spurious "SystemError: AST
# constructor recursion depth mismatch" (cpython gh-106905), and the check fails. A test holds
# this list to what the checks' sources import.
LANE_IMPORTS = ("arrays", "backends", "blas", "context", "discover", "embed", "folderscan", "memory", "merge", "rules", "search",
                "table_store", "text", "threshold", "vectors")


@dataclass(frozen=True)
class Outcome:
    """One identity's (or the dataset's) result for one check."""

    status: Literal["pass", "fail", "warn"]  # warn: the test passes with warnings
    lines: tuple[str, ...] = ()

    def message(self) -> str:
        return "\n".join(self.lines)


@dataclass
class CheckResult:
    check: type[Check]
    settings: CheckSettings
    issues: list[Issue] = field(default_factory=list)  # ranked by score, highest first
    error: str | None = None  # the check itself broke: every test of its family fails with this
    seconds: float = 0.0
    instance: Check | None = None  # what ran (report_html, summary)
    _by_identity: dict[str, list[Issue]] | None = field(default=None, repr=False)
    _warn_line: str | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.check.name

    @property
    def active(self) -> list[Issue]:
        return [i for i in self.issues if i.waived is None and i.severity != "info"]

    def of(self, identity: str) -> list[Issue]:
        return self._index().get(identity, [])

    def _index(self) -> dict[str, list[Issue]]:
        """identity -> its issues (both sides' for a symmetric check), built on first use."""
        if self._by_identity is None:
            by: dict[str, list[Issue]] = {}
            for issue in self.issues:
                by.setdefault(issue.identity, []).append(issue)
                if self.check.symmetric and issue.other_identity and issue.other_identity != issue.identity:
                    by.setdefault(issue.other_identity, []).append(issue)
            self._by_identity = by
        return self._by_identity

    def warn_summary(self) -> str:
        """One line for every identity this check warns about (the same text for each, so pytest's
        warnings summary shows it once with a count, not one entry per identity)."""
        if self._warn_line is None:
            warned = [who for who, issues in self._index().items()
                      if any(i.waived is None and i.severity == "warn" for i in issues)
                      and not any(i.waived is None and i.severity == "fail" for i in issues)]
            count = sum(1 for i in self.issues if i.waived is None and i.severity == "warn")
            self._warn_line = (f"check {self.name} ({self.check.title}): {count} warning(s) in {len(warned)} "
                               f"passing identities; each one in {self.name}.csv and report.html")
        return self._warn_line

    def outcome(self, identity: str | None = None) -> Outcome:
        """identity None: the dataset-level outcome (every issue)."""
        if self.error:
            return Outcome("fail", (f"{self.name}: the check failed to run: {self.error}",))
        issues = self.issues if identity is None else self.of(identity)
        failing = [i for i in issues if i.waived is None and i.severity == "fail"]
        warning = [i for i in issues if i.waived is None and i.severity == "warn"]
        shown = failing or warning
        if not shown:
            return Outcome("pass")
        who = display_name(identity) if identity is not None else "dataset"
        lines = [f"{who}: {len(shown)} {self.check.title} issue(s):"]
        for issue in shown[:MESSAGE_ISSUES]:
            lines.append("  " + issue_line(issue, identity))
        if len(shown) > MESSAGE_ISSUES:
            lines.append(f"  ... and {len(shown) - MESSAGE_ISSUES} more ({self.name}.csv, report.html)")
        return Outcome("fail" if failing else "warn", tuple(terminal_line(x, limit=1000) for x in lines))


def issue_line(issue: Issue, identity: str | None = None) -> str:
    """One issue as text, seen from `identity` when given."""
    own_id, own_file, other_id, other_file = issue.identity, issue.file, issue.other_identity, issue.other_file
    if identity is not None and identity == other_id and identity != own_id:
        own_id, own_file, other_id, other_file = other_id, other_file, own_id, own_file
    where = display_name(own_file) if own_file else (display_name(own_id) + "/" if identity is None else "(folder)")
    if identity is None and own_file:
        where = f"{display_name(own_id)}/{where}"
    other = ""
    if other_id:
        other = f" ↔ {display_name(other_id)}" + (f"/{display_name(other_file)}" if other_file else "")
    detail = f": {issue.detail}" if issue.detail else ""
    return f"{where}{other}{detail}"


def run_checks(data: CheckData, waivers: dict[Key, str] | None = None, accept: str | None = None,
               only: Iterable[str] | None = None, workers: int | None = None) -> dict[str, CheckResult]:
    """Every enabled check on `data`; the results in registry order.

    waivers: (check, key) -> reason (a baseline). accept: the reason with which --update-baseline
    accepts every issue that fails or warns today. Allowlisted identity pairs (rules `allow`)
    waive issues between the two folders for every check.

    The checks run in lanes (`Check.lane`: checks sharing state run one after another), the lanes
    in `workers` threads (default: the CPU count): the checks are numpy passes that release the
    GIL, and each runs on one BLAS thread, so one lane per core keeps the cores busy where one
    check at a time left all but one idle."""
    from concurrent.futures import ThreadPoolExecutor

    # the run's full rules (the allowlist too); a CheckData without rules is a check run alone
    rules = cast("Rules", data.rules)
    waivers = waivers or {}
    wanted = set(only) if only is not None else None
    todo: list[CheckResult] = []
    for cls in all_checks():
        if wanted is not None and cls.name not in wanted:
            continue
        settings = rules.check_settings(cls.name)
        if cls.builtin or not settings.enabled or ("against" in cls.needs and not data.against):
            continue  # off, or nothing to check against: no tests, no file
        todo.append(CheckResult(cls, settings))
    lanes: dict[str, list[CheckResult]] = {}
    for result in todo:
        lanes.setdefault(getattr(result.check, "lane", None) or f"check:{result.name}", []).append(result)
    workers = max(1, min(workers or cores(), len(lanes)))
    if workers > 1:
        import importlib

        for name in LANE_IMPORTS:
            importlib.import_module(f"{__package__}.{name}")
        if any(cls.name == "leakage" for cls in (r.check for r in todo)):
            importlib.import_module("faiss")
    # one BLAS thread: the checks make many mid-sized products between numpy passes that run on
    # one core anyway; threads woken per product cost more than they save (3x on the 2-core
    # benchmark machine with other work running; see dataset_checks.blas). Set once around the
    # lanes: the setting is process-wide.
    # a bar of checks done (a run with progress shown: its context's bar factory)
    bar = _bar(data.context.progress if data.context is not None else None, len(todo), "checks", "check")
    with single_threaded():
        if workers == 1:
            for lane in lanes.values():
                _run_lane(lane, data, bar)
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="check") as pool:
                # the longest lanes first (most checks), so the short ones fill in beside them
                for future in [pool.submit(_run_lane, lane, data, bar)
                               for lane in sorted(lanes.values(), key=len, reverse=True)]:
                    future.result()
    bar.close()
    for result in todo:
        _judge(result, rules, waivers, accept)
    return {result.name: result for result in todo}


def _run_lane(lane: list[CheckResult], data: CheckData, bar: _bar) -> None:
    for result in lane:
        t0 = time.perf_counter()
        try:
            result.instance = result.check()
            result.issues = list(result.instance.run(data, result.settings))
        except Exception as exc:  # noqa: BLE001 - one broken check must not take the others down
            result.error = f"{type(exc).__name__}: {exc}"
            result.issues = []
        result.seconds = time.perf_counter() - t0
        bar.update(1)


def _judge(result: CheckResult, rules: Rules, waivers: dict[Key, str], accept: str | None) -> None:
    judged = []
    for issue in result.issues:
        reason = None
        if issue.other_identity and issue.identity and issue.other_identity != issue.identity:
            allowed = rules.allowed(issue.identity, issue.other_identity)
            reason = f"allowlisted: {allowed.reason}" if allowed else None
        if reason is None:
            reason = waivers.get((result.name, issue.key))
        if reason is None and accept is not None and issue.severity != "info":
            reason = accept
        judged.append(replace(issue, waived=reason) if reason else issue)
    judged.sort(key=lambda i: (-i.score, i.identity, i.file, i.other_identity, i.other_file))
    result.issues = judged
