"""The pytest plugin's run object: discovery, the demo dataset, the pipeline's result, the files.

`CheckSession` wraps one `run.Pipeline` (rules -> vectors -> search -> findings -> checks, no
pytest) with what a pytest run needs around it: identities at collection (cheap), the built-in
demo dataset, the report folder's lock, the files (`sinks.write_all`), the terminal text
(`report.summary_lines`) and report.html's pieces (`report`, `check_files`). The plugin only
adapts: its hooks call these methods.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .discover import Identity, discover_identities, display_name
from .baseline import Baseline, BaselineError
from .findings import Findings, Verdict
from .merge import MergeCandidate, merge_candidates
from .patterns import Pattern, RankedIdentity
from .rules import Rules
from .cutoff import Threshold
from .run import DatasetError, Pipeline, RunResult  # noqa: F401 - DatasetError: the plugin's import

if TYPE_CHECKING:
    from .check_run import CheckResult
    from .embed.folders import FaceReport
    from .outputs import FolderLock
    from .report import Brief
    from .search import SearchResult
    from .thumbnails import Thumbnails
    from .vectors import VectorTable


def stderr_is_terminal() -> bool:
    """Whether the process's own stderr is a terminal (progress bars go there).

    Not `sys.stderr`: under pytest that is the capture buffer when the session is created, so the
    bars would never show; the search itself runs with capture suspended."""
    stream = sys.__stderr__
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced by something without isatty
        return False


class CheckSession:
    def __init__(self, rules: Rules, report_dir: Path | None = None, progress: bool | None = None,
                 baseline: Baseline | None = None, update_baseline: bool = False):
        self.rules = rules
        self.baseline = baseline  # accepted findings (--baseline); None: every finding counts
        self.update_baseline = update_baseline  # accept this run's findings and rewrite the baseline
        self.baseline_refused: str | None = None  # why --update-baseline did not write the file
        self.html_path: Path | None = None  # report.html, written by pytest-html when it is on
        self._candidates: list[MergeCandidate] | None = None
        self._ranked: list[RankedIdentity] | None = None  # failing identities by evidence, once per run
        self._patterns: dict[str, list[Pattern]] = {}  # identity name -> its patterns (failing ones)
        self._row_order: dict[str, tuple[str, str]] | None = None
        self._rank: dict[str, int] | None = None  # identity_rank(), once per run
        self._thumbs: Thumbnails | None = None
        self.report_dir = Path(report_dir) if report_dir is not None else None
        self.progress = stderr_is_terminal() if progress is None else progress
        self._demo_dir: Path | None = None
        self.cache_root: Path | None = None  # where .dataset_checks_cache/ goes (the plugin sets the rootdir)
        self.faces: dict[str, FaceReport] = {}  # identity -> its images' outcomes (folders embedded here)
        self.embedding: dict[str, Any] = {}
        self._image_identities: list[Identity] | None = None
        self._identities: list[Identity] | None = None
        self._findings: Findings | None = None
        self.table: VectorTable | None = None
        self.search: SearchResult | None = None
        self.timings: dict[str, float] = {}
        self.written: list[Path] = []
        self.write_errors: list[str] = []  # outputs that could not be written (said in the summary)
        self.notes: list[str] = []  # what the plugin redirected or ignored (shown in the header)
        self.rules_from: str | None = None  # why that rules file: --rules, from the current folder, from the rootdir
        self.lock: FolderLock | None = None  # on the report folder, held by the plugin
        # the threshold in force: the rules' until the run resolves it (the rules stay as given)
        self.threshold = Threshold.of_rules(rules)
        self.run_error: str | None = None  # the pipeline itself broke: every verdict says so
        self.check_results: dict[str, CheckResult] = {}
        self.pipeline: Pipeline | None = None  # the run (dataset_checks.run), once findings() ran
        self.result: RunResult | None = None  # its typed result (None when it failed)
        self.full = False  # incremental: --full (search everything, whatever the stored state says)
        # failing tests that the terminal lists in our section only (plugin._terminal_budget);
        # 0: pytest lists them itself; None: not decided yet
        self.terminal_capped: int | None = None
        self.passing_rows_left_out = 0  # report.html: passing tests summarised, not listed (plugin)
        self.summarise_passing: bool | None = None  # whether it does (decided once, plugin._summarise_passing)
        if rules.dataset is None:
            from dataclasses import replace

            from .demo import DEMO_ALLOW
            from .rules import AllowedPair

            self.rules = replace(rules, allow=(*rules.allow, AllowedPair(frozenset(DEMO_ALLOW[0]), DEMO_ALLOW[1])))

    # -- dataset -------------------------------------------------------------------------
    @property
    def is_demo(self) -> bool:
        return self.rules.dataset is None

    @property
    def root(self) -> Path:
        if self.rules.dataset is not None:
            return self.rules.dataset
        if self._demo_dir is None:
            from .demo import write_demo

            self._demo_dir = Path(tempfile.mkdtemp(prefix="dataset_checks_demo_")) / "demo"
            write_demo(self._demo_dir)
        return self._demo_dir

    def identities(self) -> list[Identity]:
        if self._identities is None:
            t0 = time.perf_counter()
            from .face01_layout import root_layout

            # FACE01's project layout would pass as one identity of many people: refused, never
            # checked that way (the message says how to convert it)
            layout = root_layout(self.root)
            if layout is not None:
                raise DatasetError(layout)
            try:
                self._identities = discover_identities(self.root)
            except FileNotFoundError:
                raise DatasetError(f"dataset folder not found: {self.root}") from None
            except NotADirectoryError:
                raise DatasetError(f"dataset path is not a folder: {self.root}") from None
            except PermissionError:
                raise DatasetError(f"dataset folder cannot be read (permission denied): {self.root}") from None
            self.timings["discover"] = time.perf_counter() - t0
        return self._identities

    # -- the run -------------------------------------------------------------------------
    def findings(self) -> Findings:
        """Load, search and judge once; later calls return the same result.

        An unexpected failure of the pipeline (a bug, the machine) is never a silent pass: every
        identity and the dataset-level test report it."""
        if self._findings is None:
            self.pipeline = Pipeline(self.rules, self.root, self.identities(), self.cache_dir, self.baseline,
                                     self.update_baseline, self.progress, self.is_demo, self.timings, full=self.full)
            try:
                self.result = self.pipeline.execute()
                self._findings = self.result.findings
            except Exception as exc:  # noqa: BLE001 - reported in every verdict, with its traceback
                import traceback

                self.run_error = f"{type(exc).__name__}: {exc}"
                self.run_traceback = traceback.format_exc(limit=-6)
                self._findings = self._failed(self.run_error)
            p = self.pipeline  # what the run got to, also after a failure
            self.table, self.search, self.threshold = p.table, p.search, p.threshold
            self.check_results = p.check_results
            self.faces, self.embedding, self.timings = p.faces, p.embedding, p.timings
        return self._findings

    def _failed(self, error: str) -> Findings:
        verdicts = {i.name: Verdict(identity=i, threshold=self.threshold.value, vectors=0,
                                    error=f"the run failed: {error}") for i in self.identities()}
        facts = self.pipeline.metadata() if self.pipeline is not None else {}
        return Findings(pairs=[], verdicts=verdicts, metadata={**facts, "error": error})

    def dataset_problems(self) -> list[str]:
        """Why the dataset as a whole was not checked (test_dataset fails with these); [] when it was.

        A gate that passes without having checked is the second worst bug this tool can have: an
        empty folder, storage that is not mounted, a path that is one identity folder, or a run
        where no identity could be read must fail, never exit 0."""
        findings = self.findings()
        if self.run_error:
            return [f"the run failed: {self.run_error}", getattr(self, "run_traceback", "")]
        identities = self.identities()
        if not identities:
            return [self._why_no_identities()]
        out = []
        if findings.metadata.get("error"):
            out.append(f"the search failed, no identity was checked: {findings.metadata['error']}")
        unchecked = [v for v in findings.verdicts.values() if not v.checkable]
        if len(unchecked) == len(identities):
            from collections import Counter

            reasons = Counter(v.problems[0].code if v.problems else "no-vectors" for v in unchecked)
            out.append(f"none of the {len(identities)} identity folder(s) in {display_name(str(self.root))} could be "
                       "checked (" + ", ".join(f"{n} {code}" for code, n in reasons.most_common()) + "):")
            for v in unchecked[:5]:
                first = str(v.problems[0]) if v.problems else (v.error or "no usable embeddings")
                out.append(f"  {v.identity.display}: {first}")
            if len(unchecked) > 5:
                out.append(f"  ... and {len(unchecked) - 5} more")
        return out

    def _why_no_identities(self) -> str:
        from .folderscan import why_no_identities

        return why_no_identities(self.root)

    def threshold_source(self) -> str:
        """Where the threshold in use came from, in words (header, summary, report, findings.json)."""
        return self.threshold.source

    def threshold_text(self) -> str:
        """The threshold in use and where it came from."""
        if self.rules.threshold_auto and self._findings is None:
            return "auto (chosen once the vectors are loaded)"
        return self.threshold.text()

    def check_result(self, name: str) -> CheckResult | None:
        """The CheckResult of an enabled check (None when it is off)."""
        self.findings()
        return self.check_results.get(name)

    # -- images -> embeddings (dataset_checks.embed) -------------------------------------
    @property
    def cache_dir(self) -> Path:
        """Embedding cache: rules embeddings.cache, else .dataset_checks_cache/ in the rootdir;
        never inside the dataset (then the user cache folder is used)."""
        from .embed import DEFAULT_CACHE

        from .outputs import is_inside, user_cache_dir

        path = self.rules.cache_dir or (self.cache_root or Path.cwd()) / DEFAULT_CACHE
        if is_inside(path, self.root):
            path = user_cache_dir() / "embeddings"
        return path

    def image_identities(self) -> list[Identity]:
        """Identities whose images the tool embeds: images and no embeddings file (cheap: listings)."""
        if self._image_identities is None:
            from .embed import has_images
            from .vectors import embeddings_path

            self._image_identities = [
                i for i in self.identities() if has_images(i.path) and embeddings_path(i.path) is None
            ]
        return self._image_identities

    def faces_report(self, name: str) -> FaceReport | None:
        self.findings()
        return self.faces.get(name)

    def verdict(self, name: str) -> Verdict:
        return self.findings().verdicts[name]

    def merge_candidates(self) -> list[MergeCandidate]:
        """Identity pairs that may be one person, best evidence first (see merge.py)."""
        if self._candidates is None:
            from .checks.names import matches_of

            f, t = self.findings(), self.table
            if t is None:  # the run failed before loading
                self._candidates = []
                return self._candidates
            t0 = time.perf_counter()
            from .backends import _stage

            means = self.pipeline.folder_means if self.pipeline is not None else None
            bars = self.pipeline._bar if self.pipeline is not None and self.progress else None
            with _stage(bars, "ranking the folders that may be one person"):
                self._candidates = merge_candidates(t.vectors, t.identity_of, [i.name for i in t.identities], f.pairs,
                                                    name_matches=matches_of(self.check_results.values()),
                                                    means=means, copy_similarity=f.metadata.get("copy_similarity"))
            self.timings["merge"] = time.perf_counter() - t0  # a stage like the others (findings.json)
        return self._candidates

    # -- baseline (dataset_checks.baseline) ------------------------------------------------
    def baseline_status(self) -> dict[str, Any] | None:
        if self.baseline is None or self._findings is None:
            return None
        path = str(self.baseline.path)
        if self.update_baseline:
            try:
                entries = len(self.baseline.updated(self._findings))
            except BaselineError as exc:  # the run could not see everything: the file stays as it was
                return {"path": path, "entries": len(self.baseline.entries), "stale": 0, "refused": str(exc)}
            return {"path": path, "entries": entries, "updated": True, "stale": 0}
        return {"path": path, "entries": len(self.baseline.entries),
                "stale": len(self.baseline.stale(self._findings))}
    # -- end baseline ----------------------------------------------------------------------

    # -- report.html pieces (pytest-html hooks call these) ---------------------------------
    def thumbnails(self) -> Thumbnails:
        if self._thumbs is None:
            from .thumbnails import Thumbnails

            self._thumbs = Thumbnails(self.root)
        return self._thumbs

    def report_files(self) -> list[Path]:
        files = list(self.written)
        if self.html_path is not None and not any("report.html" in e or str(self.html_path) in e
                                                  for e in self.write_errors):
            files.append(self.html_path)
        return files

    def ranked(self) -> list[RankedIdentity]:
        """Failing identities, strongest evidence first, with their patterns (patterns.rank_failing):
        computed once per run, then read by the ordering, every failing test, report.html and the
        summary (at 20,000 identities each recomputing them cost seconds)."""
        if self._ranked is None:
            from .patterns import rank_failing

            self._ranked = rank_failing(self.findings(), self.merge_candidates())
            self._patterns = {r.verdict.identity.name: r.patterns for r in self._ranked}
        return self._ranked

    def patterns(self, name: str) -> list[Pattern] | None:
        """A failing identity's patterns, best evidence first (None: it does not fail on pairs)."""
        self.ranked()
        return self._patterns.get(name)

    def row_order(self) -> dict[str, tuple[str, str]]:
        """report.html's Evidence column: (sort key, label) per identity's display name (report.row_order)."""
        if self._row_order is None:
            from .report import row_order

            self._row_order = row_order(self.findings(), ranked=self.ranked())
        return self._row_order

    def identity_rank(self) -> dict[str, int]:
        """Identity name -> position by evidence: failing ones first, strongest evidence first
        (patterns.rank_failing), then those that could not be checked, then the rest by name. Once
        per run: the ordering and every report row read it."""
        if self._rank is not None:
            return self._rank
        findings = self.findings()
        rank = {r.verdict.identity.name: n for n, r in enumerate(self.ranked())}
        rest = sorted((v for v in findings.verdicts.values() if v.identity.name not in rank),
                      key=lambda v: (v.status == "pass", v.identity.name))
        for v in rest:
            rank[v.identity.name] = len(rank)
        self._rank = rank
        return rank

    def summary_html(self) -> str:
        from .report import summary_html

        if self._findings is None:
            return ""
        return summary_html(self._findings, self.merge_candidates(), [str(p) for p in self.report_files()],
                            self.baseline_status(), passing_rows_left_out=self.passing_rows_left_out)

    def sections_html(self) -> list[str]:
        from .report import merge_html, waived_html

        if self._findings is None:
            return []
        from .check_files import issues_html

        checks = [issues_html(r, self.thumbnails()) for r in self.check_results.values()]
        return [merge_html(self.merge_candidates(), self.thumbnails()), *checks, waived_html(self._findings)]

    def identity_html(self, name: str) -> str:
        """Offending pairs with thumbnails for a failing identity; waived pairs by name. Past the
        REPORT_DETAILED strongest failing identities: its best pair as text (findings.csv has
        every pair), so that report.html stays a page a browser opens at any size."""
        from .report import REPORT_DETAILED, identity_html

        if self._findings is None or name not in self._findings.verdicts:
            return ""
        verdict = self._findings.verdicts[name]
        if verdict.status == "fail" and self.identity_rank().get(name, 0) >= REPORT_DETAILED:
            return identity_html(verdict, None, limit=1, findings=self._findings, patterns=self.patterns(name),
                                 text_only=True)
        return identity_html(verdict, self.thumbnails() if verdict.status == "fail" else None,
                             findings=self._findings, patterns=self.patterns(name))

    def message(self, name: str) -> str:
        """The failure text of one identity's test: pattern lines and a few pairs (report.py)."""
        from .report import identity_message

        return identity_message(self.verdict(name), self.findings(), patterns=self.patterns(name))

    def brief(self, name: str | None, message: str, cross_identity: bool) -> Brief:
        """A failing test as the terminal shows it (report.Brief): for test_identity
        (`cross_identity`) its pattern and best pair per other folder, else the message's first lines."""
        from .report import identity_brief, message_brief

        findings = self._findings
        patterns = self.patterns(name) if cross_identity and name is not None and findings is not None else None
        if patterns and findings is not None and name is not None:
            return identity_brief(findings.verdicts[name], patterns)
        return message_brief(message)

    # -- output --------------------------------------------------------------------------
    def write_reports(self) -> list[Path]:
        """Every findings file, each written atomically; a file that cannot be written is named in
        write_errors (the summary says so and the run fails) and the others are still written."""
        if self._findings is None or self.report_dir is None:
            return []
        from .sinks import RunView, write_all

        merge_seconds = {"merge": self.timings["merge"]} if "merge" in self.timings else {}
        written = write_all(self.report_dir, RunView(self._findings, self.merge_candidates(), self.check_results,
                                                     timings=merge_seconds, rules=self.rules))
        self.written = written.files
        self.write_errors.extend(written.errors)
        if self.update_baseline and self.baseline is not None:  # baseline
            try:
                self.written.append(self.baseline.write(self._findings))
            except BaselineError as exc:
                self.baseline_refused = str(exc)
        return self.written

    def header_lines(self) -> list[str]:
        r = self.rules
        where = ("built-in demo dataset (no dataset in rules.yaml or --dataset)" if self.is_demo
                 else display_name(str(r.dataset)))
        overrides = f"; {len(r.identity_thresholds)} per-identity override(s)" if r.identity_thresholds else ""
        rules_from = f" ({self.rules_from})" if r.source and self.rules_from else ""
        lines = [
            f"dataset_checks: {where} ({len(self.identities())} identity folder(s))",
            f"dataset_checks: rules {display_name(str(r.source)) + rules_from if r.source else '(built-in defaults)'}; "
            f"index {r.index.type}; report folder {display_name(str(self.report_dir))}",
            f"dataset_checks: cosine threshold {self.threshold_text()}{overrides}",
        ]
        p = self.pipeline
        if p is not None and p.table is not None and len(p.table):
            from .memory import size_text

            table = p.table
            held = {"stored": "mapped from the cache (dataset unchanged since it was written)",
                     "updated": "updated in the cache (only the changed folders read)",
                     "loaded": "loaded into the cache" if isinstance(table.vectors, np.memmap) else "held in memory"}
            budget = p.budget.limit if p.budget is not None else None
            source = "--memory or rules.yaml" if r.memory else "auto: half the machine"
            lines.append(f"dataset_checks: {len(table):,} vectors x {table.dim} ({size_text(table.vectors.nbytes)}) "
                         f"{held.get(p.table_source or '', '')}; memory budget "
                         f"{size_text(budget) if budget else '?'} ({source}); engine {r.engine.type}")
        incremental = p.incremental.header() if p is not None and p.incremental is not None else None
        if incremental:
            lines.append(f"dataset_checks: {incremental}")
        notes = [*self.notes, *(p.notes if p is not None else [])]
        return lines + [f"dataset_checks: note: {n}" for n in notes]

    def close(self) -> None:
        """Remove the demo dataset and drop the results (the run is over: pytest's final garbage
        collection then has ~100k fewer objects to walk)."""
        self._findings = self._candidates = self.table = self.search = None
        self._ranked, self._patterns, self._row_order, self._rank = None, {}, None, None
        if self._demo_dir is not None:
            shutil.rmtree(self._demo_dir.parent, ignore_errors=True)
            self._demo_dir = None

    def summary_lines(self, limit: int = 10) -> list[str]:
        """The terminal section, printed after pytest's own summary (see report.summary_lines)."""
        from .report import summary_lines

        if self._findings is None:
            return []
        f = self._findings
        c = f.counts()
        lines = summary_lines(f, self.merge_candidates(), limit=limit, ranked=self.ranked())
        status = self.baseline_status()
        if status:  # baseline
            if self.baseline_refused or status.get("refused"):
                lines.append(f"BASELINE NOT UPDATED: {self.baseline_refused or status['refused']}")
            elif status.get("updated"):
                lines.append(f"baseline {status['path']}: rewritten with {status['entries']} accepted "
                             f"finding(s) and input problem(s)")
            else:
                stale = f"; {status['stale']} no longer found (--update-baseline drops them)" if status["stale"] else ""
                problems = f" and {c['waived_problems']} input problem(s)" if c.get("waived_problems") else ""
                lines.append(f"baseline {status['path']}: {status['entries']} accepted entries; "
                             f"{c['waived']} finding(s){problems} waived{stale}")
        for name, r in self.check_results.items():
            if r.error:
                lines.append(f"check {name}: FAILED TO RUN: {r.error}")
                continue
            failing = {x for i in r.active if i.severity == "fail" for x in (i.identity, i.other_identity if r.check.symmetric else "") if x}
            what = f"{len(r.issues)} issue(s)" + (f", {len(failing)} failing identities" if failing else "")
            lines.append(f"check {name} ({r.check.title}): {what}")
            lines += [f"check {name}: note: {note}" for note in (r.instance.notes() if r.instance is not None else ())]
        lines += [f"wrote {display_name(str(p))}" for p in self.report_files()]
        lines += [f"COULD NOT WRITE {e}" for e in self.write_errors]
        return lines
