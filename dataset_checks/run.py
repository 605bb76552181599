"""The pipeline without pytest: rules -> vectors -> search -> findings -> checks, one typed result.

`Pipeline(...).execute()` runs everything once and returns a frozen `RunResult`. `CheckSession`
(the pytest plugin's run object) adds the lifecycle around it: discovery, the demo dataset, the
report folder's lock, writing the files; scripts and benchmarks can use either.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from . import __version__
from .baseline import Baseline
from .discover import Identity, discover_identities, display_name
from .cutoff import Threshold
from .findings import Findings, build_findings
from .issues import Issue
from .rules import Rules
from .backends import _stage
from .search import SearchTooBroad, exactness, find_pairs
from .vectors import load_table
from .verify import verify_search

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from .check_run import CheckResult
    from .checks.data import AgainstData
    from .context import RunContext
    from .embed.folders import FaceReport, Prepared
    from .engines.ranges import RangeEngine
    from .incremental import Incremental, KeptIVF
    from .issues import Key
    from .memory import Budget
    from .search import SearchResult
    from .threshold import ThresholdChoice
    from .vectors import VectorTable


class DatasetError(RuntimeError):
    """The dataset root itself cannot be used (missing, not a folder, unreadable)."""


@dataclass(frozen=True)
class RunResult:
    """Everything one run produced, for the writers, the terminal, the report and the tests.

    `issues` is every finding of the run as one list of `issues.Issue` (the search's pairs, the
    folders' input problems, the registered checks'); `findings.verdicts` the verdict per identity
    and `findings.outcomes` every identity's result over all its tests; `threshold` the threshold in
    force and where it came from (the rules stay as given)."""

    rules: Rules  # the configuration as given: never changed by the run
    threshold: Threshold
    findings: Findings  # pairs, per-identity verdicts and outcomes, every issue, run facts
    check_results: dict[str, CheckResult] = field(default_factory=dict)
    table: VectorTable | None = None  # None when the run failed before loading
    search: SearchResult | None = None  # None when the search failed
    faces: dict[str, FaceReport] = field(default_factory=dict)  # identity -> its images' outcomes
    embedding: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def issues(self) -> tuple[Issue, ...]:
        return self.findings.issues

    @property
    def threshold_choice(self) -> ThresholdChoice | None:
        """threshold.ThresholdChoice when this run calibrated `threshold: auto`, else None."""
        return self.threshold.choice


class Pipeline:
    """One run's state while it executes. `execute()` returns the RunResult; after a failure the
    partial state (`metadata()`) still says how far it got."""

    def __init__(self, rules: Rules, root: Path, identities: list[Identity], cache_dir: Path,
                 baseline: Baseline | None = None, update_baseline: bool = False, progress: bool = False,
                 is_demo: bool = False, timings: dict[str, float] | None = None, full: bool = False):
        self.rules = rules
        self.root = Path(root)
        self._identities = identities
        self.cache_dir = cache_dir
        self.baseline = baseline
        self.update_baseline = update_baseline
        self.progress = progress
        self.is_demo = is_demo
        self.timings: dict[str, float] = dict(timings or {})
        self.faces: dict[str, FaceReport] = {}
        self.embedding: dict[str, Any] = {}
        self.table: VectorTable | None = None
        self.search: SearchResult | None = None
        # the cross-identity threshold in force: the rules' until `threshold: auto` is resolved
        self.threshold = Threshold.of_rules(rules)
        self.check_results: dict[str, CheckResult] = {}
        # leakage: this dataset's mean when embeddings.centre is on
        self._centre_shift: NDArray[np.float64] | None = None
        self.table_source: str | None = None  # "stored" (mapped from the cache as it was) or "loaded"
        self.budget: Budget | None = None  # while the run executes
        self.context: RunContext | None = None  # the budget, bars and cache, handed to every stage
        self.notes: list[str] = []  # for the header: what the run did not do as asked, and why
        self.full = full  # incremental: --full (search everything, whatever the stored state)
        self.incremental: Incremental | None = None  # while the run executes
        self.cache_error: str | None = None  # hostile cache: the first write into the cache that failed
        self.folder_means: NDArray[np.float32] | None = None  # unit mean of every folder, for the merge ranking

    def identities(self) -> list[Identity]:
        return self._identities

    def _bar(self, iterable: Iterable[Any] | None = None, **kw: Any) -> Any:
        from tqdm import tqdm

        return tqdm(iterable, file=sys.stderr, leave=False, dynamic_ncols=True, **kw)

    def execute(self) -> RunResult:
        findings = self._run()
        return RunResult(rules=self.rules, threshold=self.threshold, findings=findings, check_results=self.check_results,
                         table=self.table, search=self.search, faces=self.faces,
                         embedding=self.embedding, timings=dict(self.timings))

    def _run(self) -> Findings:
        from .context import RunContext
        from .memory import Budget, default_budget

        self.budget = budget = Budget(self.rules.memory or default_budget())
        # handed explicitly to what checkpoints the budget (checks, the search): no module holds the run
        self.context = RunContext(budget=budget, progress=self._bar if self.progress else None,
                                  cache_dir=self.cache_dir)
        try:
            return self._run_within_budget(budget)
        finally:
            # The table is not read after the run: its pages go back to the page cache, so
            # pytest's reporting does not stack on top of them.
            budget.trim()
            budget.close()
            if self.incremental is not None:  # incremental
                self.incremental.release()

    def _run_within_budget(self, budget: Budget) -> Findings:
        progress = self._bar if self.progress else None
        identities = self.identities()
        t0 = time.perf_counter()
        prepared = self._embed(identities, progress)
        # -- incremental: begin -- (the stored search state, locked for this run)
        from .incremental import Incremental

        # (not for the demo: its dataset is a new temporary folder every time)
        self.incremental = inc = Incremental(None if self.is_demo else self.cache_dir, self.root, self.rules,
                                             full=self.full)
        inc.on_cache_error = self.cache_unusable  # hostile cache: one note for every failed write
        inc.acquire()
        # -- incremental: end --
        self.table = table = self._table(identities, prepared, progress)
        budget.watch(table.vectors)  # before anything reads the whole table
        inc.match(table, prepared)  # incremental: which rows are new since the stored state
        self._model_rules(table, prepared)
        self.timings["load"] = time.perf_counter() - t0 - self.timings.get("embed", 0.0)
        error = None
        try:
            def full_search(threshold: float, backend: KeptIVF | None) -> SearchResult:  # a full run, when one is needed
                return find_pairs(table.vectors, table.identity_of, threshold, self.rules.index, progress=progress,
                                  backend=backend, engine=self._engine(), context=self.context)

            self.search = inc.search(table, self.rules, full_search, threshold=self.threshold.radius,
                                     auto=self.threshold.auto, context=self.context)
            for stage, seconds in self.search.info.get("timings", {}).items():
                self.timings[stage] = seconds
        except SearchTooBroad as exc:
            error = str(exc)
            self.search = None
        verification = None
        if self.search is not None:
            t0 = time.perf_counter()
            with _stage(progress, "verifying a sample against brute force"):
                verification = verify_search(table.vectors, table.identity_of, self.threshold.radius,
                                             self.search.i, self.search.j)
            self._add_missed(table, verification.pop("_missed_rows", ((), ())), verification)
            def face(r: int) -> str:
                return f"{table.identities[table.identity_of[r]].display}/{table.files[r]}"

            verification["missed"] = [[face(a), face(b)] for a, b in verification["missed"]]
            self.timings["verify"] = time.perf_counter() - t0
            inc.save(table, self.search)  # incremental: the state for the next run
        self.notes += inc.notes  # incremental
        t0 = time.perf_counter()
        meta = {**self.metadata(), "verification": verification}
        waive = self.baseline.waivers() if self.baseline is not None else []
        findings = build_findings(table, self.search, self.rules, meta, waive=waive, error=error,
                                  threshold=self.threshold)
        if self.update_baseline and self.baseline is not None:
            accept = Baseline.accept_all(findings, f"{self.baseline.reason} (accepted by --update-baseline)")
            findings = build_findings(table, self.search, self.rules, meta, waive=accept, error=error,
                                      threshold=self.threshold)
        self.timings["findings"] = time.perf_counter() - t0
        self._checks(table, dict(waive))
        from .check_files import issues_json
        from .findings import identity_outcomes

        meta = {
            **meta,
            "checks": issues_json(self.check_results),
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
            "embedding": self.embedding,
            "copy_similarity": self._copy_similarity(table),  # patterns.py: "copies" at or above
            "faces": {r.identity.display: [o.line() for o in r.problems] or ([r.error] if r.error else [])
                      for r in self.faces.values() if r.problems or r.error},
        }
        # The one result: every issue in one list, and every identity's outcome over all its tests,
        # known before pytest runs them (every count, in the summary, report.html and
        # findings.json, comes from it). Built once here, never changed after.
        return replace(
            findings,
            metadata=meta,
            check_issues=tuple(i for r in self.check_results.values() for i in r.issues),
            evaluated={name: r.instance.evaluated for name, r in self.check_results.items()
                       if r.error is None and r.instance is not None},  # baseline
            outcomes=identity_outcomes(findings.verdicts, self.rules, self.check_results, self.faces),
        )

    def _copy_similarity(self, table: VectorTable) -> float:
        """The cosine at or above which one-to-one pairs are called copies (the same photo): the
        near_duplicates check's threshold (its rules setting, else its auto value for the model
        and centring), so that "copies" means what that check means by near-identical."""
        from .checks.near_duplicates import auto_threshold

        try:
            configured = float(self.rules.check_settings("near_duplicates")["threshold"])
        except (KeyError, TypeError, ValueError):
            configured = 0.0
        return configured or auto_threshold(table.key, self.rules.centre)

    def _engine(self) -> RangeEngine | None:
        """Where the candidates stage runs (rules `engine:`): None in this process, else an engine
        of dataset_checks.engines (Ray), checkpointing its ranges in the cache folder."""
        from .engines import make_engine

        engine = make_engine(self.rules.engine, self.cache_dir)
        if engine is not None and self.full:  # hostile cache: --full resumes from no checkpoint
            engine.resume = False
        return engine

    def _add_missed(self, table: VectorTable, rows: tuple[Any, Any], verification: dict[str, Any]) -> None:
        """Pairs the exact check found and the search did not: into the result. The sampled
        recall still reports the miss (the index needs a larger nprobe), but the gate never
        passes a pair it has seen."""
        import numpy as np

        from .search import SearchResult, pair_similarity

        mi, mj = (np.asarray(a, dtype=np.int64) for a in rows)
        if not mi.size:
            return
        s = self.search
        assert s is not None  # verified pairs exist only after a search
        sim = pair_similarity(table.vectors, mi, mj)
        i, j, sims = np.concatenate([s.i, mi]), np.concatenate([s.j, mj]), np.concatenate([s.sim, sim])
        order = np.lexsort((j, i, -sims))
        self.search = SearchResult(i[order], j[order], sims[order], s.info)
        verification["added_to_findings"] = int(mi.size)

    # -- the registered checks (dataset_checks.checks) -----------------------------------
    def _checks(self, table: VectorTable, waivers: dict[Key, str]) -> None:
        from .check_run import run_checks
        from .checks.data import CheckData

        data = CheckData(root=self.root, rules=self.rules, identities=self.identities(), table=table,
                         pairs=self.search, threshold=self.threshold.value, against=self._against_data(),
                         threshold_choice=self.threshold.choice,  # calibview
                         context=self.context)
        accept = (f"{self.baseline.reason} (accepted by --update-baseline)"
                  if self.update_baseline and self.baseline is not None else None)
        t0 = time.perf_counter()
        # a mapped table's pages go back before the checks (whose passes give theirs back as they
        # go): the checks' memory comes on top of the findings, not of a resident table
        if self.budget is not None:
            self.budget.trim()
        self.check_results = run_checks(data, waivers, accept)
        # one wall time: the checks run in parallel lanes (each check's own seconds are in
        # findings.json "checks")
        self.timings["checks"] = time.perf_counter() - t0
        # the merge ranking reuses the checks' folder means (float32: a ranking signal); the rest
        # of what the checks shared (the folder fit, 100+ MB at 20k identities) goes now
        if self.search is not None and len(self.search.i) and len(table):
            import numpy as np

            from .checks.folder_fit import folder_means

            self.folder_means = np.asarray(folder_means(data), dtype=np.float32)
        data.cache.clear()

    # -- leakage: begin ---------------------------------------------------------------------
    def _against_data(self) -> list[AgainstData]:
        """Other datasets (rules `against:`, --against) loaded for the leakage check; read only.

        Image-only folders there are embedded like ours (same embedder, same cache, the cache never
        inside the other dataset). Its vectors must be of this run's model (key) and dimension, and
        when `embeddings.centre` is on they are centred on THIS dataset's mean, so that one
        threshold means the same on both sides."""
        if not self.rules.against:
            return []
        from .checks.data import AgainstData
        from .embed import prepare
        from .outputs import is_inside, user_cache_dir
        from .vectors import normalise

        if self.table is None or not len(self.table):  # nothing of ours to compare (test_dataset says why)
            return []
        from .checks.leakage import judge_against

        key, dim = self.table.key, self.table.dim
        out = []
        for root in self.rules.against:
            shown = display_name(str(root))
            try:
                identities = discover_identities(root)
            except OSError as exc:  # the leakage check fails saying so (not mounted, no permission)
                out.append(AgainstData(root, [], None, unusable=f"{shown} cannot be listed: {exc.strerror or exc}"))
                continue
            cache = self.cache_dir
            if is_inside(cache, root):
                cache = user_cache_dir() / "embeddings"
            prepared = prepare(root, identities, key, self.rules.embedder, cache,
                               workers=self.rules.embed_workers, max_bytes=self.folder_bytes())
            table = load_table(root, identities, key, folders=prepared.folders)
            # empty, not mounted, another model, mostly unreadable: the leakage check fails saying so
            unusable, lost = judge_against(root, identities, table, key, dim,
                                           other_model=lambda: load_table(root, identities, None,  # noqa: B023 (called now)
                                                                          max_bytes=self.folder_bytes()))
            if unusable is not None:
                out.append(AgainstData(root, identities, None, unusable=unusable, lost=lost))
                continue
            if self.rules.centre and self._centre_shift is not None and len(table):
                table.vectors, _ = normalise(table.vectors, shift=self._centre_shift)
            out.append(AgainstData(root=root, identities=identities, table=table, lost=lost))
        return out
    # -- leakage: end -----------------------------------------------------------------------

    def folder_bytes(self) -> int:
        """The most one folder's arrays may declare in this run: a quarter of its memory budget
        (memory.folder_bound: --memory / rules `memory:`, else the default; capped at the
        machine's memory or cgroup limit). A folder over it is refused unread: that identity fails."""
        from .memory import folder_bound

        return folder_bound(self.budget.limit if self.budget is not None else self.rules.memory)

    def _embed(self, identities: list[Identity], progress: Any) -> Prepared:
        from .embed import prepare

        prepared = prepare(self.root, identities, self.rules.vector_key, self.rules.embedder, self.cache_dir,
                           workers=self.rules.embed_workers, progress=progress, max_bytes=self.folder_bytes(),
                           refresh=self.full)  # hostile cache: --full embeds every image again
        if prepared.stats is not None:
            self.timings["embed"] = prepared.embed_seconds
        self.faces = prepared.faces
        if prepared.stats is not None and prepared.embedder is not None:  # stats: images were embedded
            self.embedding = {**prepared.embedder.as_dict(), "cache": str(self.cache_dir),
                              **prepared.stats.as_dict()}
        elif prepared.embedder is None and any(r.error for r in prepared.faces.values()):
            self.embedding = {"embedder": self.rules.embedder, "error": next(r.error for r in prepared.faces.values() if r.error)}
        return prepared

    def _table(self, identities: list[Identity], prepared: Prepared, progress: Any) -> VectorTable:
        """The vector table: mapped from the cache when this dataset version was loaded before,
        else loaded folder by folder into the cache (in memory when there is no cache)."""
        from .table_store import TableStore
        from .vectors import stored_table

        from .table_store import CacheUnwritable

        store: TableStore | None = TableStore(self.cache_dir, self.root) if self.cache_dir is not None else None
        if store is not None and not self.full:  # hostile cache: --full reads every file again
            stored = store.open(prepared.version)
            if stored is not None and [i.name for i in identities] == stored.get("identities"):
                self.table_source = "stored"
                return stored_table(self.root, identities, stored)
            # -- incremental: begin -- (only the changed folders read, the rest copied)
            try:
                table = self.incremental.update_table(store, identities, prepared) if self.incremental else None
            except CacheUnwritable as exc:  # hostile cache: a full disk midway: in memory below
                self.cache_unusable(exc.where, exc.error)
                table, store = None, None
            if table is not None:
                self.table_source = "updated"
                return table
            # -- incremental: end --
        folders = prepared.folders
        if progress is not None:
            folders = progress(folders, total=len(identities), desc="loading", unit="folder")
        try:
            table = load_table(self.root, identities, self.rules.vector_key, folders=folders, store=store,
                               version=prepared.version, meta={"folder_versions": prepared.folder_versions})
        except CacheUnwritable as exc:  # hostile cache: writing failed midway: every folder again, in memory
            if prepared.read is None:
                raise
            self.cache_unusable(exc.where, exc.error)
            folders = prepared.read(list(range(len(identities))))
            if progress is not None:
                folders = progress(folders, total=len(identities), desc="loading", unit="folder")
            table = load_table(self.root, identities, self.rules.vector_key, folders=folders)
        self.table_source = "loaded"
        if store is not None and store.unwritable is not None:  # no staging folder: held in memory
            self.cache_unusable(store.unwritable.where, store.unwritable.error)
        if store is not None and store.note:
            self.notes.append(store.note)
        return table

    # -- hostile cache: begin ---------------------------------------------------------------
    def cache_unusable(self, where: object, exc: OSError) -> None:
        """A write into the cache failed (a full disk, a quota, a read-only file system, no
        permission): the run goes on without it, and says so once."""
        if self.cache_error is not None:
            return
        self.cache_error = f"{where}: {exc.strerror or exc}"
        self.notes.append(f"the cache {self.cache_dir} could not be written ({exc.strerror or exc}); the cache "
                          "was not used: this run goes on in memory and checks every identity (the next run "
                          "may read and search everything again)")
    # -- hostile cache: end -----------------------------------------------------------------

    def _model_rules(self, table: VectorTable, prepared: Prepared) -> None:
        """Centre the vectors (embeddings.centre) and resolve `threshold: auto` for the model."""
        from .embed import DEFAULT_THRESHOLDS
        from .threshold import DEFAULT_THRESHOLD
        from .vectors import centre_vectors

        if self.rules.centre:
            folder = getattr(table.vectors, "filename", None)
            if folder is not None and len(table.vectors) >= 2:  # a mapped table: the centred one is a file too
                from .table_store import centred

                table.vectors, self._centre_shift = centred(Path(folder).parent, table.vectors)
                if self.budget is not None:
                    self.budget.watch(table.vectors)
            else:
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
            # what the value depends on besides the data: a baseline records it with the value
            settings = {"key": display_name(table.key or ""), "centre": bool(self.rules.centre), "floor": float(floor),
                        "ceiling": float(ceiling), "chance_pairs": float(cal.chance_pairs),
                        "sample_pairs": int(cal.sample_pairs), "seed": int(cal.seed)}
            if self._baseline_threshold(settings):
                return
            with _stage(self._bar if self.progress else None, "calibrating the threshold (threshold: auto)"):
                choice = calibrate_threshold(table.vectors, table.identity_of, floor, chance_pairs=cal.chance_pairs,
                                             ceiling=ceiling, sample_pairs=cal.sample_pairs, seed=cal.seed,
                                             budget=self.budget)
            self.timings["threshold"] = choice.seconds
            self.threshold = replace(self.threshold, value=float(choice.value), source=choice.source_text(),
                                     choice=choice, record={"value": choice.value, "settings": settings})
        elif self.baseline is not None and self.baseline.threshold is not None and not self.update_baseline:
            self.notes.append(f"the threshold {self.threshold.value:g} from {display_name(self.rules.threshold_from)} "
                              f"wins over the baseline {display_name(self.baseline.path.name)}'s recorded "
                              f"{self.baseline.threshold['value']:g}")

    def _baseline_threshold(self, settings: dict[str, Any]) -> bool:
        """A gate run (--baseline without --update-baseline) keeps the `threshold: auto` value its
        baseline was accepted at, when the file records one under the same settings: the data
        changing (an error removed) never moves the gate; only --update-baseline (which
        recalibrates and records the new value) or --threshold does. True when it was used."""
        from .text import file_text

        base = self.baseline
        if base is None or self.update_baseline:
            return False
        record = base.threshold
        if record is None:
            self.notes.append(f"the baseline {display_name(base.path.name)} records no threshold (written before "
                              "thresholds were recorded): threshold: auto recalibrated on this data; "
                              "--update-baseline records it")
            return False
        if record["settings"] != settings:
            # the file's side is text from a file (escaped); this run's side is the tool's (key: shown)
            changed = ", ".join(f"{k} {file_text(record['settings'].get(k), 100)} -> {v}"
                                for k, v in sorted(settings.items()) if record["settings"].get(k) != v)
            changed = changed or "settings " + file_text(", ".join(sorted(set(record["settings"]) - set(settings))))
            self.notes.append(f"the baseline {display_name(base.path.name)}'s threshold {record['value']:g} was accepted "
                              f"under other calibration settings ({changed}): threshold: auto "
                              f"recalibrated on this data; --update-baseline records it")
            return False
        self.threshold = replace(self.threshold, value=float(record["value"]), auto=False,
                                 record={**record, "from": "baseline"},
                                 source="from " + display_name(f"the baseline {base.path.name}: threshold: auto as accepted by "
                                            f"--update-baseline, not recalibrated (--update-baseline recalibrates "
                                            f"it, --threshold overrides it)"))
        return True

    def threshold_source(self) -> str:
        return self.threshold.source

    def metadata(self) -> dict[str, Any]:
        info = dict(self.search.info) if self.search is not None else {}
        info.pop("timings", None)
        table = self.table
        return {
            "tool": f"dataset_checks {__version__}",
            "dataset": "built-in demo" if self.is_demo else str(self.root),
            "rules": str(self.rules.source) if self.rules.source else None,
            "threshold": self.threshold.value,
            "threshold_choice": self.threshold.source,
            "threshold_calibration": self.threshold.choice.as_dict() if self.threshold.choice is not None else None,
            "threshold_record": dict(self.threshold.record) if self.threshold.record is not None else None,  # baseline: recorded by --update-baseline, used by a gate
            "identity_thresholds": self.rules.identity_thresholds,
            "embedding_key": table.key if table is not None else None,
            "dim": table.dim if table is not None else None,
            "vectors": len(table) if table is not None else 0,
            "memory": {**(self.budget.as_dict() if self.budget is not None else {}),
                       "table": self.table_source, "table_bytes": int(table.vectors.nbytes) if table is not None else 0},
            "index": info.pop("index", None),
            "device": info.pop("device", None),
            "search": info,
            "exact": exactness(self.search.info if self.search is not None else None),
            "incremental": self.incremental.record if self.incremental is not None else None,
        }

