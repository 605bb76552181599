"""One check run, without pytest: rules -> identities -> vectors -> search -> findings -> files.

The pytest plugin holds one `CheckSession` and asks it for identities (at collection, cheap) and
verdicts (at the first test, which runs the one search). Scripts and benchmarks use it directly.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import __version__
from .discover import Identity, discover_identities, display_name
from .baseline import Baseline, BaselineError
from .findings import Findings, Verdict, build_findings, write_csv, write_json
from .merge import MergeCandidate, merge_candidates, write_merge_csv
from .rules import Rules
from .search import SearchTooBroad, find_pairs
from .verify import verify_search
from .vectors import load_table


class DatasetError(RuntimeError):
    """The dataset root itself cannot be used (missing, not a folder, unreadable)."""


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
        self._thumbs = None
        self.report_dir = Path(report_dir) if report_dir is not None else None
        self.progress = stderr_is_terminal() if progress is None else progress
        self._demo_dir: Path | None = None
        self.cache_root: Path | None = None  # where .dataset_checks_cache/ goes (the plugin sets the rootdir)
        self.faces: dict = {}  # identity name -> embed.FaceReport, for folders whose images were embedded
        self.embedding: dict[str, Any] = {}
        self._image_identities: list[Identity] | None = None
        self._identities: list[Identity] | None = None
        self._findings: Findings | None = None
        self.table = None
        self.search = None
        self.timings: dict[str, float] = {}
        self.written: list[Path] = []
        self.write_errors: list[str] = []  # outputs that could not be written (said in the summary)
        self.notes: list[str] = []  # what the plugin redirected or ignored (shown in the header)
        self.lock = None  # outputs.FolderLock on the report folder, held by the plugin
        self.threshold_choice = None  # threshold.ThresholdChoice when `threshold: auto` was resolved
        self.run_error: str | None = None  # the pipeline itself broke: every verdict says so
        self.check_results: dict = {}  # check name -> check_run.CheckResult
        self._centre_shift = None  # leakage: this dataset's mean when embeddings.centre is on
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
    def _bar(self, iterable=None, **kw):
        from tqdm import tqdm

        return tqdm(iterable, file=sys.stderr, leave=False, dynamic_ncols=True, **kw)

    def findings(self) -> Findings:
        """Load, search and judge once; later calls return the same result.

        An unexpected failure of the pipeline (a bug, the machine) is never a silent pass: every
        identity and the dataset-level test report it."""
        if self._findings is None:
            try:
                self._findings = self._run()
            except Exception as exc:  # noqa: BLE001 - reported in every verdict, with its traceback
                import traceback

                self.run_error = f"{type(exc).__name__}: {exc}"
                self.run_traceback = traceback.format_exc(limit=-6)
                self._findings = self._failed(self.run_error)
        return self._findings

    def _failed(self, error: str) -> Findings:
        verdicts = {i.name: Verdict(identity=i, threshold=self.rules.threshold, vectors=0,
                                    error=f"the run failed: {error}") for i in self.identities()}
        return Findings(pairs=[], verdicts=verdicts, metadata={**self.metadata(), "error": error})

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
        from .embed.images import IMAGE_EXTENSIONS
        from .vectors import FACE01_FILE, PLAIN_FILE

        root = self.root
        shown = display_name(str(root))
        try:
            entries = sorted(os.listdir(root))
        except OSError as exc:
            return f"{shown} cannot be listed: {exc.strerror or exc}"
        own = [e for e in entries if e in (FACE01_FILE, PLAIN_FILE) or os.path.splitext(e)[1].lower() in IMAGE_EXTENSIONS]
        if own:
            return (f"{shown} holds {display_name(own[0])} itself: it looks like ONE identity folder. --dataset must be "
                    f"the folder that holds one folder per identity (its parent, {display_name(str(root.parent))}?)")
        if not entries:
            return f"{shown} is empty: no identity folders (storage not mounted, or the wrong path?)"
        return (f"{shown} holds no identity folder ({len(entries)} entr{'y' if len(entries) == 1 else 'ies'}: "
                "files, hidden folders or FACE01 side folders only)")

    def threshold_source(self) -> str:
        """Where the threshold in use came from, in words (header, summary, report, findings.json)."""
        r = self.rules
        if not r.threshold_auto:
            return f"from {display_name(r.threshold_from)}"
        if self.threshold_choice is not None:
            return self.threshold_choice.source_text()
        return "auto: the model's default"

    def threshold_text(self) -> str:
        """The threshold in use and where it came from."""
        if self.rules.threshold_auto and self._findings is None:
            return "auto (chosen once the vectors are loaded)"
        return f"{self.rules.threshold:g} ({self.threshold_source()})"

    def _run(self) -> Findings:
        progress = self._bar if self.progress else None
        identities = self.identities()
        t0 = time.perf_counter()
        prepared = self._embed(identities, progress)
        self.table = table = load_table(self.root, identities, self.rules.vector_key, progress=progress,
                                        folders=prepared.folders)
        prepared.folders.clear()  # the raw per-folder arrays: the table holds the vectors now
        self._model_rules(table, prepared)
        self.timings["load"] = time.perf_counter() - t0 - self.timings.get("embed", 0.0)
        error = None
        try:
            self.search = find_pairs(
                table.vectors, table.identity_of, self.rules.min_threshold, self.rules.index, progress=progress
            )
            for stage, seconds in self.search.info.get("timings", {}).items():
                self.timings[stage] = seconds
        except SearchTooBroad as exc:
            error = str(exc)
            self.search = None
        verification = None
        if self.search is not None:
            t0 = time.perf_counter()
            verification = verify_search(table.vectors, table.identity_of, self.rules.min_threshold,
                                         self.search.i, self.search.j)
            face = lambda r: f"{table.identities[table.identity_of[r]].display}/{table.files[r]}"  # noqa: E731
            verification["missed"] = [[face(a), face(b)] for a, b in verification["missed"]]
            self.timings["verify"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        meta = {**self.metadata(), "verification": verification}
        waive = self.baseline.waivers() if self.baseline is not None else []
        findings = build_findings(table, self.search, self.rules, meta, waive=waive, error=error)
        if self.update_baseline and self.baseline is not None:
            accept = Baseline.accept_all(findings, f"{self.baseline.reason} (accepted by --update-baseline)")
            findings = build_findings(table, self.search, self.rules, meta, waive=accept, error=error)
        self.timings["findings"] = time.perf_counter() - t0
        self._checks(table, findings, dict(waive))
        findings.metadata["timings"] = {k: round(v, 4) for k, v in self.timings.items()}
        findings.metadata["embedding"] = self.embedding
        findings.metadata["faces"] = {
            r.identity.display: [o.line() for o in r.problems] or ([r.error] if r.error else [])
            for r in self.faces.values() if r.problems or r.error
        }
        return findings

    # -- the registered checks (dataset_checks.checks) -----------------------------------
    def _checks(self, table, findings: Findings, waivers: dict) -> None:
        from .check_run import run_checks
        from .checks import CheckData

        data = CheckData(root=self.root, rules=self.rules, identities=self.identities(), table=table,
                         pairs=self.search, threshold=self.rules.threshold, against=self._against_data(),
                         threshold_choice=self.threshold_choice)  # calibview
        accept = (f"{self.baseline.reason} (accepted by --update-baseline)"
                  if self.update_baseline and self.baseline is not None else None)
        self.check_results = run_checks(data, waivers, accept)
        for name, result in self.check_results.items():
            self.timings[f"check {name}"] = result.seconds
        findings.issues = [i for r in self.check_results.values() for i in r.issues]
        from .check_files import issues_json

        findings.metadata["checks"] = issues_json(self.check_results)

    # -- leakage: begin ---------------------------------------------------------------------
    def _against_data(self) -> list:
        """Other datasets (rules `against:`, --against) loaded for the leakage check; read only.

        Image-only folders there are embedded like ours (same embedder, same cache, the cache never
        inside the other dataset). Its vectors must be of this run's model (key) and dimension, and
        when `embeddings.centre` is on they are centred on THIS dataset's mean, so that one
        threshold means the same on both sides."""
        if not self.rules.against:
            return []
        from .checks import AgainstData
        from .embed import prepare
        from .outputs import is_inside, user_cache_dir
        from .vectors import normalise

        if self.table is None or not len(self.table):  # nothing of ours to compare (test_dataset says why)
            return []
        key, dim = self.table.key, self.table.dim
        out = []
        for root in self.rules.against:
            shown = display_name(str(root))
            try:
                identities = discover_identities(root)
            except OSError as exc:
                raise DatasetError(f"--against dataset {shown} cannot be read: {exc.strerror or exc}") from None
            cache = self.cache_dir
            if is_inside(cache, root):
                cache = user_cache_dir() / "embeddings"
            prepared = prepare(root, identities, key, self.rules.embedder, cache,
                               workers=self.rules.embed_workers)
            dims = {(k, int(a.shape[-1])) for f in prepared.folders for k, a in f.arrays.items()}
            table = load_table(root, identities, key, folders=prepared.folders)
            if not len(table) or table.dim != dim:
                found = ", ".join(f"{k} {d}-d" for k, d in sorted(dims)) or "no usable vectors"
                raise DatasetError(f"--against dataset {shown}: no vectors of this dataset's model ({key}, {dim}-d); "
                                   f"it holds {found}. Both datasets must be embedded by the same model")
            if self.rules.centre and self._centre_shift is not None and len(table):
                table.vectors, _ = normalise(table.vectors, shift=self._centre_shift)
            out.append(AgainstData(root=root, identities=identities, table=table))
        return out
    # -- leakage: end -----------------------------------------------------------------------

    def _table_key(self) -> str | None:
        return self.table.key if self.table is not None else self.rules.vector_key

    def check_result(self, name: str):
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

    def faces_report(self, name: str):
        self.findings()
        return self.faces.get(name)

    def _embed(self, identities, progress):
        from .embed import prepare

        prepared = prepare(self.root, identities, self.rules.vector_key, self.rules.embedder, self.cache_dir,
                           workers=self.rules.embed_workers, progress=progress)
        if prepared.stats is not None:
            self.timings["embed"] = prepared.embed_seconds
        self.faces = prepared.faces
        if prepared.stats is not None:
            self.embedding = {**prepared.embedder.as_dict(), "cache": str(self.cache_dir),
                              **prepared.stats.as_dict()}
        elif prepared.embedder is None and any(r.error for r in prepared.faces.values()):
            self.embedding = {"embedder": self.rules.embedder, "error": next(r.error for r in prepared.faces.values() if r.error)}
        return prepared

    def _model_rules(self, table, prepared) -> None:
        """Centre the vectors (embeddings.centre) and resolve `threshold: auto` for the model."""
        from dataclasses import replace

        from .embed import DEFAULT_THRESHOLDS
        from .rules import DEFAULT_THRESHOLD
        from .vectors import centre_vectors

        if self.rules.centre:
            if len(table.vectors) >= 2:  # leakage: --against data is centred on the same point
                self._centre_shift = table.vectors.mean(axis=0, dtype="float64")
            table.vectors = centre_vectors(table.vectors)
        if self.rules.threshold_auto:
            from .threshold import CEILING, CEILING_CENTRED, calibrate_threshold

            which = "centred" if self.rules.centre else "raw"
            emb = prepared.embedder
            if table.key in DEFAULT_THRESHOLDS:
                floor = DEFAULT_THRESHOLDS[table.key][which]
            elif emb is not None and table.key == emb.name and emb.default_threshold is not None and not self.rules.centre:
                floor = emb.default_threshold
            else:
                floor = DEFAULT_THRESHOLD
            cal = self.rules.calibration
            ceiling = cal.ceiling if cal.ceiling is not None else (CEILING_CENTRED if self.rules.centre else CEILING)
            choice = calibrate_threshold(table.vectors, table.identity_of, floor, chance_pairs=cal.chance_pairs,
                                         ceiling=ceiling, sample_pairs=cal.sample_pairs, seed=cal.seed)
            self.threshold_choice = choice
            self.timings["threshold"] = choice.seconds
            self.rules = replace(self.rules, threshold=choice.value)

    def verdict(self, name: str) -> Verdict:
        return self.findings().verdicts[name]

    def metadata(self) -> dict[str, Any]:
        info = dict(self.search.info) if self.search is not None else {}
        info.pop("timings", None)
        table = self.table
        return {
            "tool": f"dataset_checks {__version__}",
            "dataset": "built-in demo" if self.is_demo else str(self.root),
            "rules": str(self.rules.source) if self.rules.source else None,
            "threshold": self.rules.threshold,
            "threshold_choice": self.threshold_source(),
            "threshold_calibration": self.threshold_choice.as_dict() if self.threshold_choice is not None else None,
            "identity_thresholds": self.rules.identity_thresholds,
            "embedding_key": table.key if table is not None else None,
            "dim": table.dim if table is not None else None,
            "vectors": len(table) if table is not None else 0,
            "index": info.pop("index", None),
            "device": info.pop("device", None),
            "search": info,
        }

    def merge_candidates(self) -> list[MergeCandidate]:
        """Identity pairs that may be one person, best evidence first (see merge.py)."""
        if self._candidates is None:
            from .checks.names import matches_of

            f, t = self.findings(), self.table
            if t is None:  # the run failed before loading
                self._candidates = []
                return self._candidates
            self._candidates = merge_candidates(t.vectors, t.identity_of, [i.name for i in t.identities], f.pairs,
                                                name_matches=matches_of(self.check_results.values()))
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
    def thumbnails(self):
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

    def identity_rank(self) -> dict[str, int]:
        """Identity name -> position by evidence: failing ones first, strongest evidence first
        (patterns.rank_failing), then those that could not be checked, then the rest by name."""
        from .patterns import rank_failing

        findings = self.findings()
        rank = {r.verdict.identity.name: n for n, r in enumerate(rank_failing(findings, self.merge_candidates()))}
        rest = sorted((v for v in findings.verdicts.values() if v.identity.name not in rank),
                      key=lambda v: (v.status == "pass", v.identity.name))
        for v in rest:
            rank[v.identity.name] = len(rank)
        return rank

    def summary_html(self) -> str:
        from .report import summary_html

        if self._findings is None:
            return ""
        return summary_html(self._findings, self.merge_candidates(), [str(p) for p in self.report_files()],
                            self.baseline_status())

    def sections_html(self) -> list[str]:
        from .report import merge_html, waived_html

        if self._findings is None:
            return []
        from .check_files import issues_html

        checks = [issues_html(r, self.thumbnails()) for r in self.check_results.values()]
        return [merge_html(self.merge_candidates(), self.thumbnails()), *checks, waived_html(self._findings)]

    def identity_html(self, name: str) -> str:
        """Offending pairs with thumbnails for a failing identity; waived pairs by name."""
        from .report import identity_html

        if self._findings is None or name not in self._findings.verdicts:
            return ""
        verdict = self._findings.verdicts[name]
        return identity_html(verdict, self.thumbnails() if verdict.status == "fail" else None,
                             findings=self._findings, candidates=self.merge_candidates())

    def message(self, name: str) -> str:
        """The failure text of one identity's test: pattern lines and a few pairs (report.py)."""
        from .report import identity_message

        return identity_message(self.verdict(name), self.findings(), self.merge_candidates())

    # -- output --------------------------------------------------------------------------
    def write_reports(self) -> list[Path]:
        """Every findings file, each written atomically; a file that cannot be written is named in
        write_errors (the summary says so and the run fails) and the others are still written."""
        if self._findings is None or self.report_dir is None:
            return []
        jobs = [
            (self.report_dir / "findings.csv", lambda p: write_csv(self._findings, p)),
            (self.report_dir / "findings.json", lambda p: write_json(self._findings, p)),
            (self.report_dir / "merge_candidates.csv", lambda p: write_merge_csv(self.merge_candidates(), p)),
        ]
        from .check_files import write_issues_csv

        for name, result in self.check_results.items():
            jobs.append((self.report_dir / f"{name}.csv", lambda p, r=result: write_issues_csv(r, p)))
        self.written = []
        for path, write in jobs:
            try:
                self.written.append(write(path))
            except OSError as exc:
                self.write_errors.append(f"{display_name(str(path))}: {exc.strerror or exc}")
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
        lines = [
            f"dataset_checks: {where} ({len(self.identities())} identity folder(s))",
            f"dataset_checks: rules {display_name(str(r.source)) if r.source else '(built-in defaults)'}; "
            f"index {r.index.type}; report folder {display_name(str(self.report_dir))}",
            f"dataset_checks: cosine threshold {self.threshold_text()}{overrides}",
        ]
        return lines + [f"dataset_checks: note: {n}" for n in self.notes]

    def close(self) -> None:
        """Remove the demo dataset and drop the results (the run is over: pytest's final garbage
        collection then has ~100k fewer objects to walk)."""
        self._findings = self._candidates = self.table = self.search = None
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
        lines = summary_lines(f, self.merge_candidates(), limit=limit)
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
        lines += [f"wrote {display_name(str(p))}" for p in self.report_files()]
        lines += [f"COULD NOT WRITE {e}" for e in self.write_errors]
        return lines
