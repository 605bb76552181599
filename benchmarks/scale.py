"""Scale benchmark: whole `pytest dataset_checks` runs at 100k and 1M faces (optionally 5M, 10M).

For each size it generates the synthetic dataset (`synthetic.seed_scale` scaled up: 50 faces per
identity on average, crowded folders of 400 video frames every 50th identity, planted copies;
FACE01 layout, 512-d float32) once under --workdir, then runs `pytest dataset_checks` as a child
process, several ways:

* `local cold`: a fresh cache folder: every archive is read and the table written to the cache;
* `local warm`: the same cache again, `--full`: the table is mapped as it is (the dataset did not
  change), the whole search is done again (no incremental run);
* `budget 1GB`: warm, with `--memory 1GB`;
* `ray`: warm, `--engine ray` (only when ray is installed; a local cluster);
* `ivf-warm`: warm, with `index.type: ivf` (the default search before the folder caps: an IVF
  index with a sampled nprobe, not proven exact), for a before/after on the same machine.

Every run reports wall time and peak RSS of the child alone (wait4), pytest's share (wall time
minus the run's own stages, from findings.json: what pytest, its plugins and the reports cost)
per identity, and the sampled recall of findings.csv against brute force: `--recall-queries`
random faces are compared with every face by float64 GEMM over the table the run mapped, and
every cross-folder pair at or above the threshold among them must be in findings.csv.
Brute force over all pairs would take (n^2 / 2) x d multiply-adds: its time is extrapolated
from the sample's measured GEMM rate.

    python benchmarks/scale.py --workdir /tmp/scale                  # 100k and 1M
    python benchmarks/scale.py --workdir /tmp/scale --sizes 5000000  # one more size
    python benchmarks/scale.py --workdir /tmp/scale --runs local-warm,budget
    python benchmarks/scale.py --workdir /tmp/scale --sizes 10000000 --dtype float16 --runs local-cold
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

from report_size import chromium_seconds  # noqa: E402
from seed_scale import run_child  # noqa: E402

THRESHOLD = 0.85
RUNS = ("local-cold", "local-warm", "budget", "ray", "ivf-warm")


def generate(root: Path, n: int, dtype: str = "float32") -> dict:
    params = dict(n_identities=max(200, n // 50), n_vectors=n, n_planted=max(60, n // 500), crowded_every=50,
                  crowd_size=400)
    if dtype != "float32":
        params["dtype"] = dtype
    marker = root / ".benchmark.json"
    if marker.is_file() and json.loads(marker.read_text()) == params:
        return params
    if root.exists():
        shutil.rmtree(root)
    t0 = time.perf_counter()
    # folder by folder, in a process of its own: memory the generator freed in small blocks
    # stays with the process that freed it, away from the runs' page cache
    import multiprocessing

    with multiprocessing.get_context("forkserver").Pool(1) as pool:
        pool.apply(_write, (str(root), params))
    marker.write_text(json.dumps(params))
    print(f"  generated {n:,} vectors in {time.perf_counter() - t0:.0f} s", flush=True)
    return params


def _write(root: str, params: dict) -> None:
    from dataset_checks.synthetic import write_seed_scale

    write_seed_scale(Path(root), **params)


def read_pairs(report_dir: Path) -> set:
    pairs = set()
    with open(report_dir / "findings.csv", encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            if row.get("status", "fail") in ("fail", "waived", "warn", ""):
                a = (row["identity"], row["file"])
                b = (row["other_identity"], row["other_file"])
                pairs.add((a, b) if a <= b else (b, a))
    return pairs


def sampled_recall(cache: Path, found: set, queries: int, seed: int = 0) -> dict:
    """Exact pairs of `queries` random faces against all, from the table the run mapped."""
    (folder,) = [p for p in (cache / "tables").iterdir() if (p / "meta.json").is_file()]
    meta = json.loads((folder / "meta.json").read_text())
    n, d = meta["rows"], meta["dim"]
    x = np.memmap(folder / "vectors.f32", dtype=np.float32, mode="r", shape=(n, d))
    labels = np.load(folder / "identity_of.npy")
    names = meta["identities"]
    files = meta["files"]
    rng = np.random.default_rng(seed)
    q = np.sort(rng.choice(n, size=min(queries, n), replace=False))
    xq = x[q].astype(np.float64)
    truth = set()
    t0 = time.perf_counter()
    block = 1 << 16
    for s in range(0, n, block):
        sims = xq @ x[s : s + block].astype(np.float64).T
        r, c = np.nonzero(sims >= THRESHOLD)
        for a, b in zip(q[r].tolist(), (c + s).tolist()):
            if labels[a] != labels[b]:
                pa, pb = (names[labels[a]], files[a]), (names[labels[b]], files[b])
                truth.add((pa, pb) if pa <= pb else (pb, pa))
    seconds = time.perf_counter() - t0
    missed = truth - found
    brute = seconds / len(q) * n / 2  # upper triangle: n/2 queries' worth of GEMM
    return {"queries": len(q), "exact_pairs": len(truth), "missed": len(missed),
            "recall": 1.0 if not truth else 1 - len(missed) / len(truth), "brute_force_s_estimate": brute}


def one_run(kind: str, dataset: Path, work: Path, n: int, identities: int, queries: int) -> dict | None:
    cache = work / "cache"  # cold: wiped first; the later runs find the table it stored
    if kind == "local-cold":
        shutil.rmtree(cache, ignore_errors=True)
    if kind == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            return None
    run_dir = work / f"run-{kind}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    # ivf-warm: local-warm with the search that was the default before the folder caps (an IVF
    # index with a sampled nprobe; not proven exact), for a before/after in one session
    index = "index:\n  type: ivf\n" if kind == "ivf-warm" else ""
    (run_dir / "rules.yaml").write_text(f"threshold: {THRESHOLD}\nembeddings:\n  cache: {cache}\n{index}")
    cmd = [sys.executable, "-m", "pytest", "dataset_checks", "--dataset", str(dataset), "--rules", "rules.yaml",
           "-p", "no:randomly", "-q", "--report-dir", str(run_dir / "out")]
    if kind != "local-cold":
        cmd += ["--full"]  # the whole search again (else an unchanged dataset is an incremental run)
    if kind == "budget":
        cmd += ["--memory", "1GB"]
    if kind == "ray":
        cmd += ["--engine", "ray"]
    wall, rss, rc = run_child(cmd, run_dir, run_dir / "pytest.log")
    if rc not in (0, 1):
        raise SystemExit(f"{kind} run failed (exit {rc}):\n" + (run_dir / "pytest.log").read_text()[-3000:])
    meta = json.loads((run_dir / "out" / "findings.json").read_text())
    timings = meta.get("timings", {})
    stages = sum(v for v in timings.values())
    found = read_pairs(run_dir / "out")
    rec = sampled_recall(cache, found, queries)
    report = run_dir / "out" / "report.html"
    return {"run": kind, "vectors": n, "identities": identities, "wall_s": round(wall, 1), "peak_rss_mb": round(rss),
            "table_mb": round(n * 512 * 4 / 2**20), "rss_over_table": round(rss / (n * 512 * 4 / 2**20), 2),
            "stages_s": round(stages, 1), "pytest_s": round(wall - stages, 1),
            "pytest_ms_per_identity": round((wall - stages) / identities * 1000, 2),
            "timings": {k: round(v, 2) for k, v in timings.items()},
            # each check's own seconds (they run in parallel lanes: "checks" above is their wall time)
            "checks_s": {k: round(v.get("seconds", 0.0), 2) for k, v in (meta.get("checks") or {}).items()},
            "pairs": len(found),
            "nprobe": meta.get("search", {}).get("nprobe"), "memory": meta.get("memory"),
            "index": meta.get("index"), "exact": (meta.get("exact") or {}).get("exact"),
            "report_html_mb": round(report.stat().st_size / 2**20, 1) if report.is_file() else None,
            # headless Chromium until its first screen (nan without Chromium)
            "report_first_screen_s": round(chromium_seconds(report, "screenshot"), 1) if report.is_file() else None,
            # what a CI log holds of the run (-q): stdout and stderr, lines
            "terminal_lines": len((run_dir / "pytest.log").read_text(errors="replace").splitlines()),
            **{f"recall_{k}": v for k, v in rec.items()}}


def render(rows: list[dict], env: str) -> str:
    out = ["# Scale benchmark (`benchmarks/scale.py`)", "", env, "",
           f"Threshold {THRESHOLD}; 512-d float32; peak RSS of the child alone; pytest share = wall - the run's "
           "own stages (findings.json timings).", "",
           "| vectors | identities | run | wall s | peak RSS MB | RSS / table | pytest s (ms/identity) | "
           "sampled recall | brute force (est.) |",
           "|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r.get("archive_dtype", "float32") != "float32":
            r = {**r, "run": f"{r['run']} ({r['archive_dtype']} archives)"}
        out.append(f"| {r['vectors']:,} | {r['identities']:,} | {r['run']} | {r['wall_s']} | {r['peak_rss_mb']:,} | "
                   f"{r['rss_over_table']} | {r['pytest_s']} ({r['pytest_ms_per_identity']}) | "
                   f"{r['recall_recall']:.4f} ({r['recall_exact_pairs']} pairs) | "
                   f"{r['recall_brute_force_s_estimate'] / 60:.1f} min |")
    out += ["", "Review (what a person and a CI log get): report.html MB, its first screen in headless Chromium, "
            "terminal lines with -q:", ""]
    for r in rows:
        if r.get("terminal_lines") is not None:
            out.append(f"- {r['vectors']:,} {r['run']}: report.html {r.get('report_html_mb')} MB, first screen "
                       f"{r.get('report_first_screen_s')} s, {r['terminal_lines']:,} terminal lines")
    out += ["", "Stages (seconds):", ""]
    for r in rows:
        out.append(f"- {r['vectors']:,} {r['run']}: " + ", ".join(f"{k} {v}" for k, v in r["timings"].items())
                   + ("; each check: " + ", ".join(f"{k} {v}" for k, v in r["checks_s"].items())
                      if r.get("checks_s") else ""))
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--sizes", default="100000,1000000", help="comma-separated numbers of vectors")
    p.add_argument("--runs", default=",".join(RUNS), help="any of " + ", ".join(RUNS))
    p.add_argument("--recall-queries", type=int, default=500)
    p.add_argument("--out", type=Path, default=HERE / "scale_results")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16"),
                   help="of the archives written (float16: half the disk; the table is float32 either way)")
    args = p.parse_args(argv)
    runs = [r for r in args.runs.split(",") if r]
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        work = args.workdir / f"n{n}"
        dataset = work / "dataset"
        work.mkdir(parents=True, exist_ok=True)
        params = generate(dataset, n, args.dtype)
        for kind in runs:
            print(f"{n:,} {kind} ...", flush=True)
            row = one_run(kind, dataset, work, n, params["n_identities"], args.recall_queries)
            if row is None:
                print("  skipped (ray is not installed)")
                continue
            row["archive_dtype"] = args.dtype
            print("  " + json.dumps({k: v for k, v in row.items() if k not in ("timings", "memory")}), flush=True)
            rows.append(row)
    env = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
           f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM, Python "
           f"{platform.python_version()}")
    # rows of other sizes and runs measured earlier stay (a 10M run need not redo 100k)
    out_json = args.out.with_suffix(".json")
    done = {(r["vectors"], r["run"]) for r in rows}
    if out_json.is_file():
        earlier = [r for r in json.loads(out_json.read_text()) if (r["vectors"], r["run"]) not in done]
        rows = sorted(earlier + rows, key=lambda r: (r["vectors"], RUNS.index(r["run"]) if r["run"] in RUNS else 9))
    out_json.write_text(json.dumps(rows, indent=1))
    args.out.with_suffix(".md").write_text(render(rows, env))
    print(render(rows, env))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
