"""From search pairs to findings, per-identity verdicts and the findings files."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Literal, Mapping, TextIO

from .cutoff import Threshold
from .discover import Identity, display_name
from .issues import INPUT_CHECK, PAIR_CHECK, Finding, Issue, Key, Match, input_issue, problem_key  # noqa: F401  (importable from here)
from .problems import Problem, capped
from .rules import Rules
from .safe_write import atomic_write
from .search import SearchResult
from .text import cell_name
from .vectors import NO_FACE, VectorTable

if TYPE_CHECKING:
    from .check_run import CheckResult
    from .embed import FaceReport

CSV_HEADER = ("identity", "file", "other_identity", "other_file", "similarity")
# The failure text is read in a terminal or a CI log; the full lists are in the files and report.
TERMINAL_PAIRS = 3
TERMINAL_PROBLEMS = 3
Status = Literal["pass", "fail", "error"]  # an identity's result (error: could not be checked)

@dataclass
class Verdict:
    identity: Identity
    threshold: float
    vectors: int
    matches: list[Match] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    bad_input: str = "fail"
    error: str | None = None  # the whole run could not check anything (e.g. search failed)
    # problem -> why it does not fail (accepted in a baseline); still listed, never hidden
    problem_waivers: dict[Problem, str] = field(default_factory=dict)

    @property
    def failing_matches(self) -> list[Match]:
        return [m for m in self.matches if m.waived is None]

    @property
    def waived_matches(self) -> list[Match]:
        return [m for m in self.matches if m.waived is not None]

    @property
    def fatal_problems(self) -> list[Problem]:
        return [p for p in self.problems if p.fatal]

    @property
    def failing_problems(self) -> list[Problem]:
        """Fatal problems not accepted in a baseline."""
        return [p for p in self.problems if p.fatal and p not in self.problem_waivers]

    @property
    def waived_problems(self) -> list[tuple[Problem, str]]:
        return [(p, self.problem_waivers[p]) for p in self.problems if p in self.problem_waivers]

    @property
    def checkable(self) -> bool:
        return self.error is None and self.vectors > 0

    @property
    def no_face(self) -> bool:
        """FACE01 found no face in the folder (its npKnown.npz lists none): nothing to check,
        and nothing wrong. Still not `checkable`: a dataset of such folders checked nothing."""
        return any(p.code == NO_FACE for p in self.problems)

    @property
    def unreadable(self) -> bool:
        """The folder could not be read at all: a baseline update keeps what it accepted before."""
        return self.vectors == 0 and bool(self.fatal_problems)

    @property
    def status(self) -> Status:
        """'fail' (matches another identity), 'error' (could not be checked), 'pass'.

        An identity whose only reasons to fail are accepted (baseline) problems passes, even
        when nothing of it could be checked: accepting an empty folder is the point of a
        baseline; a new problem in it fails again."""
        if any(m.waived is None for m in self.matches):
            return "fail"
        return self.input_status

    @property
    def input_status(self) -> Literal["error", "pass"]:
        """The status from everything but the pairs: 'error' or 'pass' (checks.cross_identity
        at warn or info, or off, still fails a folder that could not be checked). A folder
        FACE01 found no face in (`no_face`) passes unless something else fails it: a person's
        folder without a usable photo is FACE01's normal state, not a broken input."""
        if self.error is not None:
            return "error"
        if self.failing_problems and (self.bad_input == "fail" or self.vectors == 0):
            return "error"
        if self.vectors == 0 and not self.waived_problems and not self.no_face:
            return "error"
        return "pass"

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def message(self) -> str:
        lines = []
        name = self.identity.display
        if self.error:
            lines.append(f"{name}: not checked: {self.error}")
        elif self.vectors == 0:
            lines.append(f"{name}: not checked: no usable embeddings")
        failing = self.failing_matches
        if failing:
            lines.append(
                f"{name}: {len(failing)} face pair(s) match another identity at cosine >= {self.threshold:g}:"
            )
            lines += _capped([m.line() for m in failing], TERMINAL_PAIRS, "pair(s): see report.html / findings.csv")
        open_problems = [p for p in self.problems if p not in self.problem_waivers]
        open_problems.sort(key=lambda p: not p.fatal)  # worst first: the cut never hides a fatal one
        if open_problems:
            checked = f"{self.vectors} face(s) checked" if self.vectors else "nothing checked"
            lines.append(f"{name}: {len(open_problems)} input problem(s) ({checked}):")
            lines += _capped([str(p) for p in open_problems], TERMINAL_PROBLEMS,
                             "problem(s): see report.html / findings.json")
        waived_problems = self.waived_problems
        if waived_problems:
            lines.append(f"{name}: {len(waived_problems)} waived input problem(s):")
            lines += _capped([f"{p}  (waived: {why})" for p, why in waived_problems], TERMINAL_PROBLEMS,
                             "problem(s): see findings.json")
        if self.waived_matches:
            lines.append(f"{name}: {len(self.waived_matches)} waived pair(s):")
            lines += _capped([m.line() for m in self.waived_matches], TERMINAL_PAIRS,
                             "pair(s): see report.html / findings.json")
        return "\n".join(lines)


# -- one identity's result across every test of it --------------------------------------------


@dataclass(frozen=True)
class IdentityOutcome:
    """What pytest will report for one identity, across every test of it: 'fail' (a test of it
    fails), 'error' (it fails, and test_identity could not check it: not checkable) or 'pass'.
    `failing`: the test families that fail it (test_identity, test_faces_detected, test_<check>)."""

    status: Status
    failing: tuple[str, ...] = ()


def identity_test_status(verdict: Verdict, rules: Rules) -> Status:
    """test_identity's result: 'fail', 'error' (not checkable) or 'pass'. Pairs fail it only with
    checks.cross_identity on at severity fail; an unusable folder fails it always."""
    status = verdict.status
    cross = rules.check_settings("cross_identity")
    if status == "fail" and (cross.severity != "fail" or not cross.enabled):
        status = verdict.input_status
    return status


def faces_test_fails(report: FaceReport | None, rules: Rules) -> bool:
    """Whether test_faces_detected fails for this embed.FaceReport (None: nothing embedded): the
    images could not be embedded at all, or (bad_input and the check at fail) an image gave no face,
    or a group photo with `several_faces: fail`."""
    settings = rules.check_settings("faces_detected")
    if report is None or not settings.enabled:
        return False
    if report.error:
        return True
    several = settings.params.get("several_faces", "warn")  # a group photo: soft unless configured
    fails = rules.bad_input == "fail" and settings.severity == "fail"
    return bool(fails and (report.hard or (report.several and several == "fail")))


def identity_outcomes(verdicts: dict[str, Verdict], rules: Rules, check_results: Mapping[str, CheckResult] | None = None,
                      faces: Mapping[str, FaceReport] | None = None) -> dict[str, IdentityOutcome]:
    """Every identity's outcome over all its tests, computed from the run's results before pytest
    runs them (the tests judge with the same functions): test_identity (`identity_test_status`),
    test_faces_detected (`faces_test_fails`) and each registered check's family
    (check_run.CheckResult.outcome: a check that failed to run fails every identity). The counts
    of the summary, report.html and findings.json come from here."""
    per_identity = [(name, r) for name, r in (check_results or {}).items()
                    if getattr(r.check, "level", "identity") == "identity"]
    faces = faces or {}
    out = {}
    for name, verdict in verdicts.items():
        status = identity_test_status(verdict, rules)
        failing = ["test_identity"] if status != "pass" else []
        if faces_test_fails(faces.get(name), rules):
            failing.append("test_faces_detected")
        failing += [r.check.test_name() for _, r in per_identity if r.outcome(name).status == "fail"]
        out[name] = IdentityOutcome("error" if status == "error" else "fail" if failing else "pass", tuple(failing))
    return out


def _capped(lines: list[str], limit: int, more: str) -> list[str]:
    out = ["  " + line for line in lines[:limit]]
    if len(lines) > limit:
        out.append(f"  ... and {len(lines) - limit} more {more}")
    return out


@dataclass(frozen=True)
class Findings:
    """Everything one run found: pairs, per-identity verdicts, every issue, and the run's facts.
    Built once by the run (run.Pipeline) and not changed after."""

    pairs: list[Finding]  # the search's pairs at or above the threshold, waived ones included
    verdicts: dict[str, Verdict]
    metadata: dict[str, Any]  # the run's facts, as findings.json writes them
    # the registered checks' issues (dataset_checks.checks), ranked within each check
    check_issues: tuple[Issue, ...] = ()
    # What this run could evaluate, for --update-baseline (baseline.Coverage): a baseline row about
    # anything else is kept as it was. `evaluated`: check name -> Check.evaluated (a predicate on
    # an entry's key) for each registered check that ran without error; a check absent here was
    # off, had nothing to compare with, or failed. None: not known (findings built without the
    # checks). `partial`: identity -> the files of its faces in the table, for an identity checked
    # only in part (vectors, and a fatal input problem: NaN rows, an unreadable image, ...).
    evaluated: dict[str, Callable[[tuple[str, ...]], bool]] | None = None
    partial: dict[str, frozenset[str]] = field(default_factory=dict)
    # identity -> its outcome over every test of it (`identity_outcomes`), set by the run once the
    # checks and face detection are done; None: findings built without them (test_identity only)
    outcomes: dict[str, IdentityOutcome] | None = None

    @cached_property
    def issues(self) -> tuple[Issue, ...]:
        """Every issue of the run in one list: the search's pairs, the folders' input problems, then
        the registered checks' (what the baseline accepts and keys, `Issue.baseline_key`)."""
        problems = (input_issue(v.identity.name, p, v.problem_waivers.get(p))
                    for v in self.verdicts.values() for p in v.problems)
        return (*self.pairs, *problems, *self.check_issues)

    def identity_outcomes(self) -> dict[str, IdentityOutcome]:
        """The outcome of every identity over all its tests: the one source of every count."""
        if self.outcomes is not None:
            return self.outcomes
        return {name: IdentityOutcome(v.status, ("test_identity",) if v.status != "pass" else ())
                for name, v in self.verdicts.items()}

    @property
    def active(self) -> list[Finding]:
        return [f for f in self.pairs if f.waived is None]

    @property
    def waived(self) -> list[Finding]:
        return [f for f in self.pairs if f.waived is not None]

    def counts(self) -> dict[str, int]:
        """`failed`: identities with at least one failing test (any family), the not checkable
        ones among them; `passed`: the rest (every test of theirs passes)."""
        statuses = [o.status for o in self.identity_outcomes().values()]
        counts = {
            "identities": len(statuses),
            "passed": statuses.count("pass"),
            "failed": len(statuses) - statuses.count("pass"),
            "not_checkable": statuses.count("error"),
            "findings": len(self.active),
            "waived": len(self.waived),
        }
        waived_problems = sum(len(v.problem_waivers) for v in self.verdicts.values())
        if waived_problems:  # only with a baseline that accepts input problems
            counts["waived_problems"] = waived_problems
        return counts

    @property
    def error(self) -> str | None:
        """Why the run could not see everything (the search failed), if it could not."""
        return next((v.error for v in self.verdicts.values() if v.error), None)


def build_findings(
    table: VectorTable,
    result: SearchResult | None,
    rules: Rules,
    metadata: dict[str, Any] | None = None,
    waive: Iterable[tuple[Key, str]] = (),
    error: str | None = None,
    threshold: Threshold | None = None,
) -> Findings:
    """Turn search pairs into findings and one verdict per identity.

    A pair counts against an identity when its similarity reaches *that identity's* threshold
    (per-identity overrides); it is a finding when it counts against at least one side.
    `waive`: (baseline key, reason) of accepted pairs and problems (see `problem_key`).
    """
    waivers = dict(waive)
    threshold = threshold if threshold is not None else Threshold.of_rules(rules)
    names = [ident.name for ident in table.identities]
    verdicts = {
        ident.name: Verdict(
            identity=ident,
            threshold=threshold.for_identity(ident.name),
            vectors=int(table.counts[k]),
            problems=list(table.problems.get(k, [])),
            bad_input=rules.bad_input,
            error=error,
        )
        for k, ident in enumerate(table.identities)
    }
    if waivers:
        for v in verdicts.values():
            for p in v.problems:
                reason = waivers.get(problem_key(v.identity.name, p))
                if reason:
                    v.problem_waivers[p] = reason
    pairs: list[Finding] = []
    if result is not None:
        files = table.files
        thresholds = [threshold.for_identity(n) for n in names]
        allowed_cache: dict[tuple[int, int], str | None] = {}
        owner_i = table.identity_of[result.i].tolist()
        owner_j = table.identity_of[result.j].tolist()
        for i, j, oi, oj, s in zip(result.i.tolist(), result.j.tolist(), owner_i, owner_j, result.sim.tolist()):
            hits_i, hits_j = s >= thresholds[oi], s >= thresholds[oj]
            if not (hits_i or hits_j):
                continue
            a, b, fa, fb = names[oi], names[oj], files[i], files[j]
            if (a, fa) > (b, fb):
                a, b, fa, fb, hits_i, hits_j = b, a, fb, fa, hits_j, hits_i
            pair_key = (oi, oj) if oi < oj else (oj, oi)
            if pair_key not in allowed_cache:
                allowed = rules.allowed(a, b)
                allowed_cache[pair_key] = f"allowlisted: {allowed.reason}" if allowed else None
            reason = allowed_cache[pair_key]
            finding = Finding(a, fa, b, fb, s)
            if reason is None and waivers:
                reason = waivers.get(finding.baseline_key())
            if reason:
                finding = Finding(a, fa, b, fb, s, reason)
            pairs.append(finding)
            if hits_i:
                verdicts[a].matches.append(finding.seen_from(a))
            if hits_j:
                verdicts[b].matches.append(finding.seen_from(b))
    pairs.sort(key=lambda f: (-f.similarity, f.identity, f.file, f.other_identity, f.other_file))
    for v in verdicts.values():
        v.matches.sort(key=lambda m: (-m.similarity, m.file, m.other_identity, m.other_file))
    return Findings(pairs=pairs, verdicts=verdicts, metadata=dict(metadata or {}), partial=_partial(table, verdicts))


def _partial(table: VectorTable, verdicts: dict[str, Verdict]) -> dict[str, frozenset[str]]:
    """Identity -> the files of its faces in the table, for identities checked only in part
    (some vectors, and a fatal problem): a baseline update keeps their rows about other files."""
    import numpy as np

    index = {ident.name: k for k, ident in enumerate(table.identities)}
    wanted = [index[n] for n, v in verdicts.items() if v.vectors > 0 and v.fatal_problems]
    if not wanted:
        return {}
    rows = np.flatnonzero(np.isin(table.identity_of, wanted))
    out: dict[str, set[str]] = {table.identities[k].name: set() for k in wanted}
    for r, k in zip(rows.tolist(), table.identity_of[rows].tolist()):
        out[table.identities[k].name].add(table.files[r])
    return {n: frozenset(f) for n, f in out.items()}


def _atomic_write(path: Path, write: Callable[[TextIO], object]) -> None:
    """A report file (readable by others), through the one writer: never through a planted link."""
    atomic_write(path, write, readable=True)


def write_csv(findings: Findings, path: Path) -> Path:
    def write(fh: TextIO) -> None:
        w = csv.writer(fh)
        w.writerow(CSV_HEADER)
        w.writerows(f.row() for f in findings.active)

    _atomic_write(path, write)
    return path


def _finding_json(f: Finding) -> dict[str, str | float]:
    # JSON is not a spreadsheet: names shown, without csv_cell's formula guard
    names = (f.identity, f.file, f.other_identity, f.other_file)
    d: dict[str, str | float] = {k: display_name(n) for k, n in zip(CSV_HEADER, names)}
    d["similarity"] = round(f.similarity, 6)
    if f.waived:
        d["waived"] = f.waived
    return d


def write_json(findings: Findings, path: Path, timings: Mapping[str, float] | None = None) -> Path:
    """findings.json; `timings`: seconds of stages run after the run's result was built (the
    merge ranking), listed with the run's own."""
    outcomes = findings.identity_outcomes()
    meta = dict(findings.metadata)
    if timings:
        meta["timings"] = {**meta.get("timings", {}), **{k: round(v, 4) for k, v in timings.items()}}
    doc = {
        **meta,
        "counts": findings.counts(),
        "findings": [_finding_json(f) for f in findings.active],
        "waived": [_finding_json(f) for f in findings.waived],
        "identities": {
            v.identity.display: {
                "status": v.status,
                "vectors": v.vectors,
                "threshold": v.threshold,
                "matches": len(v.failing_matches),
                "problems": [str(p) for p in capped(v.problems, v.identity.display + "/")],
                **({"waived_problems": [{"file": p.file, "code": p.code, "message": p.message, "waived": why}
                                        for p, why in v.waived_problems]} if v.problem_waivers else {}),
                # every test of it that fails (test_identity's own result is `status`)
                **({"failed_tests": list(outcomes[v.identity.name].failing)}
                   if v.identity.name in outcomes and outcomes[v.identity.name].failing else {}),
            }
            for v in findings.verdicts.values()
        },
    }
    _atomic_write(path, lambda fh: _dump_lines(doc, fh))
    return path


def _dump_lines(doc: Mapping[str, Any], fh: TextIO) -> None:
    """JSON with one top-level key, and one finding or identity, per line.

    Readable in a diff or a pager, and it uses json's C encoder line by line: `indent=` falls
    back to the pure-Python encoder (1.1 s for 40k findings on the benchmark; this is ~0.15 s)."""
    enc = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": "), default=str)
    fh.write("{")
    for n, (key, value) in enumerate(doc.items()):
        fh.write(("," if n else "") + "\n " + enc.encode(key) + ": ")
        if isinstance(value, list) and value:
            fh.write("[\n  " + ",\n  ".join(enc.encode(v) for v in value) + "\n ]")
        elif isinstance(value, dict) and value and key == "identities":
            fh.write("{\n  " + ",\n  ".join(f"{enc.encode(k)}: {enc.encode(v)}" for k, v in value.items()) + "\n }")
        else:
            fh.write(enc.encode(value))
    fh.write("\n}\n")


def read_csv(path: Path) -> list[Finding]:
    """Read a findings.csv: names back to the file system's names (`text.cell_name`)."""
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or tuple(header) != CSV_HEADER:
            raise ValueError(f"{path}: expected the header {','.join(CSV_HEADER)}, found {header!r}")
        out = []
        for line, row in enumerate(reader, start=2):
            if len(row) != len(CSV_HEADER):
                raise ValueError(f"{path}: line {line}: expected {len(CSV_HEADER)} fields, found {len(row)}")
            try:
                sim = float(row[4])
            except ValueError:
                raise ValueError(f"{path}: line {line}: similarity is not a number: {row[4]!r}") from None
            out.append(Finding(cell_name(row[0]), cell_name(row[1]), cell_name(row[2]), cell_name(row[3]), sim))
        return out
