"""What `engine: ray` costs on one machine: local engine vs Ray (a local cluster of `--cpus`).

For each dataset (FACE01 folders, e.g. `dataset_checks.synthetic.seed_scale` written out):

1. `pytest dataset_checks --dataset D` once with the local engine: loads the table into the cache
   (not timed: later runs map it) and chooses the threshold (`threshold: auto`);
2. the search alone, in a child process per engine: `find_pairs` on the cached table file at that
   threshold, local vs `RayEngine(num_cpus=--cpus)` (cluster start included, no checkpoints);
3. the whole run, `pytest dataset_checks --dataset D [--engine ray]`, each engine `--runs` times,
   alternating; the Ray run's checkpoints are removed before each run (every range computed),
   then one more Ray run resumes them all.

Peak memory is sampled every 0.2 s over the child's whole process tree (driver, raylet, GCS, Ray
workers): RSS of the driver, and the PSS sum of the tree (PSS shares the mapped table's and the
object store's pages out among the processes that map them, so the sum counts them once).
Per-range throughput comes from findings.json (`search.engine.per_range`: scored cells and
seconds of every range).

    python benchmarks/ray_overhead.py --dataset /tmp/ray_300k --dataset /tmp/big1m --runs 1
    python benchmarks/ray_overhead.py --dataset /tmp/big1m --search-only 3 --out search1m.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PKG = str(HERE.parent / "dataset_checks")


# -- memory of a process tree -------------------------------------------------------------------------
def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def _kb(pid: int, field: str, name: str) -> int:
    try:
        with open(f"/proc/{pid}/{name}") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class TreeMemory(threading.Thread):
    """Peak driver RSS and peak PSS sum of the process tree under `pid`, sampled."""

    def __init__(self, pid: int, every: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.every, self.stop = pid, every, threading.Event()
        self.driver_rss = self.tree_pss = self.processes = 0

    def run(self) -> None:
        while not self.stop.is_set():
            kids, tree, todo = _children(), [], [self.pid]
            while todo:
                p = todo.pop()
                tree.append(p)
                todo.extend(kids.get(p, []))
            self.driver_rss = max(self.driver_rss, _kb(self.pid, "VmRSS", "status"))
            self.tree_pss = max(self.tree_pss, sum(_kb(p, "Pss", "smaps_rollup") for p in tree))
            self.processes = max(self.processes, len(tree))
            self.stop.wait(self.every)

    def result(self) -> dict:
        return {"driver_rss_mb": round(self.driver_rss / 1024), "tree_pss_mb": round(self.tree_pss / 1024),
                "processes": self.processes}


def run_measured(cmd: list[str], cwd: Path, env: dict | None = None) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})})
    mem = TreeMemory(proc.pid)
    mem.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    mem.stop.set()
    mem.join()
    return {"wall_s": round(wall, 2), "returncode": proc.returncode, **mem.result(), "stdout": out, "stderr": err}


# -- the search alone, in a child -------------------------------------------------------------------------
def search_child(table: str, labels: str, threshold: float, engine: str, cpus: int) -> None:
    import numpy as np

    from dataset_checks.rules import IndexRules
    from dataset_checks.search import find_pairs

    ids = np.load(labels)
    x = np.memmap(table, dtype=np.float32, mode="r").reshape(len(ids), -1)
    kw = {}
    if engine == "ray":
        from dataset_checks.engines.ray_engine import RayEngine

        kw["engine"] = RayEngine(num_cpus=cpus)
    t0 = time.perf_counter()
    res = find_pairs(x, ids, threshold, IndexRules(), **kw)
    total = time.perf_counter() - t0
    info = res.info
    print(json.dumps({"seconds": round(total, 2), "pairs": len(res), "nlist": info.get("nlist"),
                      "nprobe": info.get("nprobe"), "scored_cells": info.get("scored_cells"),
                      "timings": {k: round(v, 2) for k, v in info["timings"].items()},
                      "engine": info.get("engine")}))


def pytest_cmd(dataset: Path, report: Path, engine: str, threshold: float | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "pytest", PKG, "--dataset", str(dataset), "--report-dir", str(report),
           "-q", "-p", "no:randomly", "-p", "no:cacheprovider", "--rootdir", ".", "--engine", engine]
    return cmd + (["--threshold", str(threshold)] if threshold is not None else [])


def throughput(engine: dict | None, n: int) -> dict:
    rows = [r for r in (engine or {}).get("per_range") or [] if not r["resumed"]]
    if not rows:
        return {}
    seconds = sum(r["seconds"] for r in rows)
    cells = sum(r.get("scored_cells", 0) for r in rows)
    per = sorted(r.get("scored_cells", 0) / r["seconds"] for r in rows if r["seconds"] > 0)
    return {"ranges": len(rows), "range_seconds_sum": round(seconds, 2),
            "cells_per_s_per_worker": round(cells / seconds) if seconds else None,
            "cells_per_s_median_range": round(per[len(per) // 2]) if per else None,
            "vectors_per_s_per_worker": round(n / seconds) if seconds else None,
            "slowest_range_s": max(r["seconds"] for r in rows)}


def search_only(table: Path, threshold: float, work: Path, repeats: int, cpus: int) -> dict:
    """The search stage alone, engines alternating `repeats` times: local (BLAS threads as
    they come), local with one BLAS thread (a Ray worker's setting: per-core throughput), Ray."""
    import numpy as np

    labels = table.parent / "identity_of.npy"
    n = len(np.load(labels, mmap_mode="r"))
    engines = {"local": ("local", {}), "local-1-thread": ("local", {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}),
               "ray": ("ray", {})}
    out: dict = {name: [] for name in engines}
    for _ in range(repeats):
        for name, (engine, env) in engines.items():
            res = run_measured([sys.executable, __file__, "--child", str(table), str(labels), str(threshold), engine,
                                str(cpus)], work, env)
            line = [ln for ln in res["stdout"].splitlines() if ln.startswith("{")]
            got = json.loads(line[-1]) if line else {"error": res["stderr"][-2000:]}
            row = {"search_s": got.get("timings", {}).get("search"), "scored_cells": got.get("scored_cells"),
                   "load_avg": os.getloadavg()[0], "tree_pss_mb": res["tree_pss_mb"]}
            if got.get("engine"):
                eng = got["engine"]
                row.update(startup_s=eng.get("startup_seconds"), ship_s=eng.get("ship_seconds"),
                           ranges_s=eng.get("ranges_seconds"), **throughput(eng, n))
            elif row["search_s"]:
                row["cells_per_s"] = round(got["scored_cells"] / row["search_s"])
            out[name].append(row)
            print(json.dumps({name: row}), flush=True)
    return out


def bench(dataset: Path, work: Path, runs: int, cpus: int) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    cache = work / ".dataset_checks_cache"
    out: dict = {"dataset": str(dataset)}
    first = run_measured(pytest_cmd(dataset, work / "rep-first", "local"), work)
    meta = json.loads((work / "rep-first" / "findings.json").read_text())
    n, threshold = meta["vectors"], meta["threshold"]
    out.update(vectors=n, threshold=threshold, first_run_s=first["wall_s"])
    table = next(cache.glob("tables/*/vectors.f32"))
    labels = table.parent / "identity_of.npy"
    # 2. the search alone
    for engine in ("local", "ray"):
        res = run_measured([sys.executable, __file__, "--child", str(table), str(labels), str(threshold), engine,
                            str(cpus)], work)
        line = [ln for ln in res["stdout"].splitlines() if ln.startswith("{")]
        got = json.loads(line[-1]) if line else {"error": res["stderr"][-2000:]}
        if got.get("engine"):
            got["throughput"] = throughput(got["engine"], n)
            got["engine"].pop("per_range", None)
        out[f"search_{engine}"] = {**got, **{k: res[k] for k in ("wall_s", "driver_rss_mb", "tree_pss_mb", "processes")}}
        print(json.dumps({engine: out[f"search_{engine}"]}), flush=True)
    # 3. the whole run
    for r in range(runs):
        for engine in ("local", "ray"):
            shutil.rmtree(cache / "ranges", ignore_errors=True)
            rep = work / f"rep-{engine}-{r}"
            res = run_measured(pytest_cmd(dataset, rep, engine, threshold), work)
            meta = json.loads((rep / "findings.json").read_text())
            row = {k: res[k] for k in ("wall_s", "returncode", "driver_rss_mb", "tree_pss_mb", "processes")}
            row["timings"] = meta["timings"]
            eng = meta["search"].get("engine")
            if eng:
                row["throughput"] = throughput(eng, n)
                row["engine"] = {k: v for k, v in eng.items() if k != "per_range"}
            out.setdefault(f"whole_{engine}", []).append(row)
            print(json.dumps({f"whole {engine}": row}), flush=True)
    rep = work / "rep-resumed"
    res = run_measured(pytest_cmd(dataset, rep, "ray", threshold), work)
    meta = json.loads((rep / "findings.json").read_text())
    out["whole_ray_resumed"] = {"wall_s": res["wall_s"], "search_s": meta["timings"].get("search"),
                                "engine": {k: v for k, v in meta["search"]["engine"].items() if k != "per_range"}}
    print(json.dumps({"resumed": out["whole_ray_resumed"]}), flush=True)
    same = all((work / f"rep-{e}-{r}" / "findings.csv").read_bytes() == (work / "rep-first" / "findings.csv").read_bytes()
               for e in ("local", "ray") for r in range(runs))
    out["findings_identical"] = same and (rep / "findings.csv").read_bytes() == (work / "rep-first" / "findings.csv").read_bytes()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", action="append", default=[])
    ap.add_argument("--work", default="/tmp/ray_bench")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "ray_overhead.json"))
    ap.add_argument("--child", nargs=5)
    ap.add_argument("--search-only", type=int, metavar="REPEATS",
                    help="only the search stage, engines alternating (the dataset's table must be in --work's cache)")
    ap.add_argument("--threshold", type=float, default=0.85)
    args = ap.parse_args()
    if args.child:
        table, labels, threshold, engine, cpus = args.child
        search_child(table, labels, float(threshold), engine, int(cpus))
        return
    if args.search_only:
        results = []
        for d in args.dataset:
            work = Path(args.work) / Path(d).name
            table = next((work / ".dataset_checks_cache").glob("tables/*/vectors.f32"))
            results.append({"dataset": d, **search_only(table, args.threshold, work, args.search_only, args.cpus)})
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
        return
    results = []
    for d in args.dataset:
        results.append(bench(Path(d), Path(args.work) / Path(d).name, args.runs, args.cpus))
        print(json.dumps(results[-1]), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
