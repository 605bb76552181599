"""One check run, without pytest: rules -> identities -> vectors -> search -> findings -> files.

The pytest plugin holds one `CheckSession` and asks it for identities (at collection, cheap) and
verdicts (at the first test, which runs the one search). Scripts and benchmarks use it directly.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import __version__
from .discover import Identity, discover_identities
from .findings import Findings, Verdict, build_findings, write_csv, write_json
from .rules import Rules
from .search import SearchTooBroad, find_pairs
from .vectors import load_table


class DatasetError(RuntimeError):
    """The dataset root itself cannot be used (missing, not a folder, unreadable)."""


class CheckSession:
    def __init__(self, rules: Rules, report_dir: Path | None = None, progress: bool | None = None):
        self.rules = rules
        self.report_dir = Path(report_dir) if report_dir is not None else None
        self.progress = sys.stderr.isatty() if progress is None else progress
        self._demo_dir: Path | None = None
        self._identities: list[Identity] | None = None
        self._findings: Findings | None = None
        self.table = None
        self.search = None
        self.timings: dict[str, float] = {}
        self.written: list[Path] = []

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
        """Load, search and judge once; later calls return the same result."""
        if self._findings is None:
            self._findings = self._run()
        return self._findings

    def _run(self) -> Findings:
        progress = self._bar if self.progress else None
        identities = self.identities()
        t0 = time.perf_counter()
        self.table = table = load_table(self.root, identities, self.rules.vector_key, progress=progress)
        self.timings["load"] = time.perf_counter() - t0
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
        t0 = time.perf_counter()
        findings = build_findings(table, self.search, self.rules, self.metadata(), error=error)
        self.timings["findings"] = time.perf_counter() - t0
        findings.metadata["timings"] = {k: round(v, 4) for k, v in self.timings.items()}
        return findings

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
            "identity_thresholds": self.rules.identity_thresholds,
            "embedding_key": table.key if table is not None else None,
            "dim": table.dim if table is not None else None,
            "vectors": len(table) if table is not None else 0,
            "index": info.pop("index", None),
            "device": info.pop("device", None),
            "search": info,
        }

    # -- output --------------------------------------------------------------------------
    def write_reports(self) -> list[Path]:
        if self._findings is None or self.report_dir is None:
            return []
        self.written = [
            write_csv(self._findings, self.report_dir / "findings.csv"),
            write_json(self._findings, self.report_dir / "findings.json"),
        ]
        return self.written

    def header_lines(self) -> list[str]:
        r = self.rules
        where = "built-in demo dataset (no dataset in rules.yaml or --dataset)" if self.is_demo else str(r.dataset)
        overrides = f", {len(r.identity_thresholds)} per-identity override(s)" if r.identity_thresholds else ""
        return [
            f"dataset_checks: {where}",
            f"dataset_checks: rules {r.source or '(defaults)'}; cosine threshold {r.threshold:g}{overrides}; "
            f"index {r.index.type}",
        ]

    def close(self) -> None:
        if self._demo_dir is not None:
            shutil.rmtree(self._demo_dir.parent, ignore_errors=True)
            self._demo_dir = None

    def summary_lines(self, limit: int = 10) -> list[str]:
        if self._findings is None:
            return []
        f = self._findings
        c = f.counts()
        meta = f.metadata
        lines = [
            f"{c['identities']} identities: {c['passed']} passed, {c['failed']} failed, "
            f"{c['not_checkable']} not checkable; {meta.get('vectors', 0)} faces; "
            f"{c['findings']} cross-identity pair(s) >= {self.rules.threshold:g}"
            + (f", {c['waived']} waived" if c["waived"] else ""),
        ]
        search = meta.get("search", {})
        if meta.get("index"):
            params = ", ".join(f"{k}={search[k]}" for k in ("nlist", "nprobe") if k in search)
            t = meta.get("timings", {})
            stages = ", ".join(f"{k} {v:.2f}s" for k, v in t.items())
            lines.append(f"search: {meta['index']}{' (' + params + ')' if params else ''} on {meta.get('device')}; {stages}")
        failing = [v for v in f.verdicts.values() if v.status == "fail"]
        failing.sort(key=lambda v: -max(m.similarity for m in v.failing_matches))
        for v in failing[:limit]:
            top = v.failing_matches[0]
            lines.append(f"  FAIL {v.identity.display}: {len(v.failing_matches)} pair(s), best {top.similarity:.4f} "
                         f"with {top.other_identity}")
        if len(failing) > limit:
            lines.append(f"  ... and {len(failing) - limit} more failing identities")
        lines += [f"wrote {p}" for p in self.written]
        return lines
