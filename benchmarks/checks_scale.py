"""What the registered checks cost at scale: seconds and memory per check.

Loads a dataset (FACE01 / plain layout) into the vector table, runs the main cross-identity
search once (as a run does before its checks; `--no-search` skips it: no check reads its pairs
today), then runs every enabled check in registry order on one shared `CheckData`, as the
pipeline does (misfiled computes the folder fit that consistency reuses), and reports per check:

* seconds, wall and CPU (a pass without tracemalloc; CPU time counts every BLAS thread, and on a
  shared machine it is the steadier of the two);
* peak traced memory above the start of the check (a second pass under tracemalloc: numpy's
  buffers are traced) and peak RSS above the RSS at its start (/proc/self/clear_refs resets the
  high-water mark before each check; with `--memmap` the pages of the mapped table count in RSS
  as they are touched, the traced peak is the heap alone);
* a digest of its issues (every field), so that two runs (before / after a change) can be
  compared for identical results.

`--memmap DIR` saves the table's vectors to DIR/vectors.npy and gives the checks a READ-ONLY
memmap of it (as the vector cache will): a check that writes into the table fails, a check that
copies the whole table shows in the traced peak.

    python benchmarks/checks_scale.py /tmp/me/ds300k --threshold 0.85
    python benchmarks/checks_scale.py /tmp/me/ds300k --memmap /tmp/me/mm --json out.json
    python benchmarks/checks_scale.py /tmp/big1m --no-search --memmap /tmp/me/mm1m

Make a dataset with dataset_checks.synthetic.seed_scale(n_identities=6000, n_vectors=300_000,
crowded_every=50, crowd_size=400).write(root).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def _status(field: str) -> int:
    """A VmRSS / VmHWM line of /proc/self/status in bytes (0 where there is none)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        pass


def digest(issues) -> str:
    h = hashlib.sha256()
    for i in issues:
        h.update(repr((i.check, i.identity, i.file, i.other_identity, i.other_file, round(i.score, 9),
                       i.detail, i.severity, i.waived)).encode())
    return h.hexdigest()[:16]


def load(root: Path, memmap: Path | None):
    from dataset_checks.discover import discover_identities
    from dataset_checks.vectors import load_table

    identities = discover_identities(root)
    t0 = time.perf_counter()
    table = load_table(root, identities)
    seconds = time.perf_counter() - t0
    if memmap is not None:
        memmap.mkdir(parents=True, exist_ok=True)
        path = memmap / "vectors.npy"
        np.save(path, table.vectors)
        table.vectors = np.lib.format.open_memmap(path, mode="r")
    return identities, table, seconds


def run(args) -> dict:
    from dataset_checks.check_run import run_checks
    from dataset_checks.checks import CheckData, all_checks
    from dataset_checks.rules import Rules
    from dataset_checks.search import find_pairs

    root = Path(args.dataset)
    identities, table, load_s = load(root, Path(args.memmap) if args.memmap else None)
    rules = Rules(dataset=root, threshold=args.threshold)
    out = {"dataset": str(root), "faces": len(table), "dim": table.dim, "identities": len(identities),
           "threshold": args.threshold, "memmap": bool(args.memmap), "load_s": round(load_s, 2), "checks": {}}
    print(f"{len(table):,} x {table.dim} in {len(identities):,} folders, loaded in {load_s:.1f} s"
          f"{' (read-only memmap)' if args.memmap else ''}", flush=True)
    pairs = None
    if args.search:
        t0 = time.perf_counter()
        pairs = find_pairs(table.vectors, table.identity_of, args.threshold, rules.index)
        out["search_s"] = round(time.perf_counter() - t0, 2)
        print(f"search: {len(pairs.i):,} pairs in {out['search_s']} s", flush=True)
    names = [c.name for c in all_checks() if not c.builtin]
    if args.only:
        names = [n for n in names if n in args.only.split(",")]

    def one_pass(traced: bool) -> dict:
        data = CheckData(root=root, rules=rules, identities=identities, table=table, pairs=pairs,
                         threshold=args.threshold)
        rows = {}
        for name in names:
            gc.collect()
            rss0 = _status("VmRSS")
            _reset_peak()
            if traced:
                tracemalloc.start()
            t0, c0 = time.perf_counter(), time.process_time()
            result = run_checks(data, only=[name]).get(name)
            seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
            row = {"seconds": round(seconds, 3), "cpu_s": round(cpu, 3)}
            if traced:
                _, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
                row = {"traced_peak_mb": round(peak / 2**20, 1)}
            row["rss_peak_mb"] = round(max(0, _status("VmHWM") - rss0) / 2**20, 1)
            if result is None:
                row["skipped"] = True
            elif not traced:
                row.update(issues=len(result.issues), digest=digest(result.issues), error=result.error)
            rows[name] = row
        return rows

    timed = one_pass(False)
    traced = one_pass(True) if args.memory else {}
    for name in names:
        row = {**timed[name], **{f"traced_{k}" if k == "rss_peak_mb" else k: v
                                 for k, v in traced.get(name, {}).items()}}
        out["checks"][name] = row
        mem = (f"  traced peak {row['traced_peak_mb']:7.1f} MB" if "traced_peak_mb" in row else "")
        print(f"{name:18s} {row['seconds']:7.3f} s (cpu {row['cpu_s']:7.3f} s)  rss peak +{row['rss_peak_mb']:7.1f} MB{mem}"
              f"  issues {row.get('issues', '-')}  {row.get('digest', '')}"
              f"{'  ERROR ' + row['error'] if row.get('error') else ''}", flush=True)
    total = sum(r["seconds"] for r in out["checks"].values())
    out["checks_total_s"] = round(total, 2)
    print(f"{'all checks':18s} {total:7.3f} s", flush=True)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset")
    ap.add_argument("--threshold", type=float, default=0.85)
    ap.add_argument("--memmap", metavar="DIR", help="give the checks a read-only memmap of the table (saved in DIR)")
    ap.add_argument("--no-search", dest="search", action="store_false", help="skip the main search")
    ap.add_argument("--no-memory", dest="memory", action="store_false", help="skip the tracemalloc pass")
    ap.add_argument("--only", help="comma-separated check names")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    out = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
