"""Seed-scale benchmark: one end-to-end `pytest dataset_checks` run against brute force.

Generates the seed-scale synthetic dataset (57,637 512-d vectors in 1,291 identity folders,
crowded folders of video frames, 300 planted copies; FACE01 layout) and, per threshold, reports:

* `pytest dataset_checks`: one end-to-end run as a subprocess (wall time, peak RSS of the child,
  recall of the pairs in findings.csv against the exact pair set, stage timings from findings.json);
* numpy brute force: blocked float32 GEMM over the upper triangle of all pairs, cross-folder
  candidates kept at T - margin and recomputed in float64 (this is also the truth);
* the old recipe: one faiss IndexIVFFlat (inner product, nlist=100, default nprobe=1), top k=10,
  cross-folder hits >= T.

Brute force and the old recipe each run in a child process of their own (vectors loaded from the
npz files first, not timed), so every peak RSS is a child's max RSS (wait4). "wall s" for them is
the compute alone; for pytest it is the whole run, startup and loading included.

It also measures the exact-flat vs IVF crossover of `find_pairs` (N = 5k .. 57k) that justifies
`index.flat_below`.

    python benchmarks/seed_scale.py                 # full run, writes benchmarks/results.{md,json}
    python benchmarks/seed_scale.py --quick         # small dataset, smoke test (writes results_quick.*)
    python benchmarks/seed_scale.py --workdir /tmp/ss --keep   # reuse / keep the generated dataset
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

FACE01_FILE = "npKnown.npz"
KEY = "efficientnetv2_arcface"
BRUTE_MARGIN = 1e-3  # float32 GEMM candidates are gathered this far below T, then recomputed in float64
BRUTE_BLOCK = 2048
OLD_NLIST, OLD_K = 100, 10
CROSSOVER_SIZES = (5_000, 10_000, 15_000, 20_000, 40_000, 57_637)
QUICK_CROSSOVER_SIZES = (1_000, 2_000, 4_000, 8_000)


# -- dataset -------------------------------------------------------------------------------------


def generate(root: Path, quick: bool) -> dict:
    from dataset_checks.synthetic import seed_scale

    params = dict(n_identities=200, n_vectors=8_000, n_planted=60, crowded_every=25) if quick else {}
    marker = root / ".benchmark.json"
    if marker.is_file() and json.loads(marker.read_text()) == params:
        return params
    if root.exists():
        shutil.rmtree(root)
    ds = seed_scale(**params)
    ds.write(root)
    marker.write_text(json.dumps(params))
    return params


def load_vectors(root: Path):
    """Independent of dataset_checks.vectors: folders sorted by name, rows in file order.

    Rows are normalised the way the tool does it (float32 rows times the float32 reciprocal of
    their float64 norm), and every
    similarity is the float64 dot product of those float32 rows: the same definition of a pair.
    """
    keys, blocks, owners = [], [], []
    folders = sorted(p.name for p in os.scandir(root) if p.is_dir() and not p.name.startswith("."))
    for k, name in enumerate(folders):
        with np.load(root / name / FACE01_FILE, allow_pickle=False) as npz:
            files = [str(f) for f in npz["name"].tolist()]
            arr = npz[KEY]
        arr = arr.reshape(arr.shape[0], -1).astype(np.float32)
        norms = np.linalg.norm(arr.astype(np.float64), axis=1)
        arr = arr * (1.0 / norms).astype(np.float32)[:, None]
        blocks.append(arr)
        owners.append(np.full(len(files), k, np.int32))
        keys.extend((name, f) for f in files)
    return np.ascontiguousarray(np.concatenate(blocks)), np.concatenate(owners), keys


def pair_keys(keys, i: np.ndarray, j: np.ndarray) -> set:
    out = set()
    for a, b in zip(i.tolist(), j.tolist()):
        ka, kb = keys[a], keys[b]
        out.add((ka, kb) if ka <= kb else (kb, ka))
    return out


# -- methods (run in child processes) ------------------------------------------------------------


def brute_force(x: np.ndarray, labels: np.ndarray, threshold: float):
    """All cross-folder pairs >= threshold, exactly: float32 GEMM on the upper triangle, then the
    candidates near or above T recomputed in float64."""
    n = len(x)
    cand_i, cand_j = [], []
    lo = np.float32(threshold - BRUTE_MARGIN)
    for s in range(0, n, BRUTE_BLOCK):
        e = min(s + BRUTE_BLOCK, n)
        sims = x[s:e] @ x[s:].T  # (b, n - s): row r is vector s + r, column c is vector s + c
        r, c = np.nonzero(sims >= lo)
        c = c + s
        r = r + s
        keep = (r < c) & (labels[r] != labels[c])
        cand_i.append(r[keep])
        cand_j.append(c[keep])
    i = np.concatenate(cand_i).astype(np.int64)
    j = np.concatenate(cand_j).astype(np.int64)
    sim = np.einsum("ij,ij->i", x[i].astype(np.float64), x[j].astype(np.float64))
    ok = sim >= threshold
    return i[ok], j[ok], {"candidates": int(i.size)}


def old_recipe(x: np.ndarray, labels: np.ndarray, threshold: float):
    """What the project replaced: IVF (nlist=100, nprobe=1), top-10 neighbours per vector."""
    import faiss

    d = x.shape[1]
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, OLD_NLIST, faiss.METRIC_INNER_PRODUCT)
    index.train(x)
    index.add(x)
    _, nb = index.search(x, OLD_K)
    q = np.repeat(np.arange(len(x)), OLD_K)
    nb = nb.ravel()
    keep = (nb >= 0) & (labels[q] != labels[np.maximum(nb, 0)])
    q, nb = q[keep], nb[keep]
    a, b = np.minimum(q, nb), np.maximum(q, nb)
    sim = np.einsum("ij,ij->i", x[a].astype(np.float64), x[b].astype(np.float64))
    ok = sim >= threshold
    key = np.unique(a[ok].astype(np.int64) * len(x) + b[ok])
    return key // len(x), key % len(x), {"nlist": OLD_NLIST, "nprobe": int(index.nprobe), "k": OLD_K}


def crossover(x: np.ndarray, labels: np.ndarray, threshold: float, sizes, seed: int = 0) -> list[dict]:
    """find_pairs with type flat vs ivf on random subsets of N vectors (same subset for both)."""
    from dataset_checks.rules import IndexRules
    from dataset_checks.search import find_pairs

    rng = np.random.default_rng(seed)
    rows = []
    for n in sizes:
        n = min(n, len(x))
        idx = np.sort(rng.choice(len(x), size=n, replace=False))
        xs, ls = np.ascontiguousarray(x[idx]), labels[idx]
        row = {"n": n}
        pairs = {}
        for kind in ("flat", "ivf"):
            t0 = time.perf_counter()
            res = find_pairs(xs, ls, threshold, IndexRules(type=kind, gpu=False))
            row[f"{kind}_s"] = time.perf_counter() - t0
            row[f"{kind}_timings"] = {k: round(v, 3) for k, v in res.info.get("timings", {}).items()}
            if kind == "ivf":
                row["nlist"], row["nprobe"] = res.info.get("nlist"), res.info.get("nprobe")
            pairs[kind] = set(zip(res.i.tolist(), res.j.tolist()))
        row["pairs"] = len(pairs["flat"])
        row["ivf_recall"] = len(pairs["flat"] & pairs["ivf"]) / len(pairs["flat"]) if pairs["flat"] else 1.0
        rows.append(row)
        print(f"  crossover N={n}: flat {row['flat_s']:.2f}s, ivf {row['ivf_s']:.2f}s "
              f"(nlist {row['nlist']}, nprobe {row['nprobe']}), ivf recall {row['ivf_recall']:.4f}", flush=True)
    return rows


def child_main(args) -> None:
    root, out = Path(args.dataset), Path(args.child_out)
    x, labels, _ = load_vectors(root)
    if args.child == "crossover":
        sizes = [int(s) for s in args.sizes.split(",")]
        rows = crossover(x, labels, args.threshold, sizes)
        out.write_text(json.dumps(rows))
        return
    fn = {"brute": brute_force, "old": old_recipe}[args.child]
    t0 = time.perf_counter()
    i, j, info = fn(x, labels, args.threshold)
    seconds = time.perf_counter() - t0
    np.savez(out, i=i, j=j)
    out.with_suffix(".json").write_text(json.dumps({"seconds": seconds, "info": info}))


# -- parent --------------------------------------------------------------------------------------


def child_env() -> dict:
    """As on a normal install: with PYTHONDONTWRITEBYTECODE set, pytest re-does its assertion
    rewriting of every plugin distribution's modules (hypothesis: ~1 s) on every run."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def run_child(cmd: list[str], cwd: Path, log: Path) -> tuple[float, float, int]:
    """Run a command; wall seconds, peak RSS in MB of that child alone (wait4), exit status.

    The command is started from a small process of a forkserver, not from this one: a child's
    ru_maxrss includes what it was before its exec, a copy of the process that forked it, and
    this process holds the previous run's recall check (a budget run started from here measured
    3,149 MB, this process's own size, instead of its 1,405)."""
    import multiprocessing

    with multiprocessing.get_context("forkserver").Pool(1) as pool:
        return pool.apply(_run_measured, (cmd, str(cwd), str(log), child_env()))


def _run_measured(cmd: list[str], cwd: str, log: str, env: dict) -> tuple[float, float, int]:
    with open(log, "w") as fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    return wall, usage.ru_maxrss / 1024.0, os.waitstatus_to_exitcode(status)


def self_child(kind: str, dataset: Path, threshold: float, out: Path, work: Path, sizes=None):
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--dataset", str(dataset),
           "--threshold", repr(threshold), "--child-out", str(out)]
    if sizes:
        cmd += ["--sizes", ",".join(map(str, sizes))]
    wall, rss, rc = run_child(cmd, work, out.with_suffix(".log"))
    if rc != 0:
        raise SystemExit(f"{kind} child failed (exit {rc}); see {out.with_suffix('.log')}:\n"
                         + out.with_suffix(".log").read_text()[-3000:])
    return wall, rss


FLOOR_TEST = """import pytest

FAILING = set(range({failed}))


@pytest.mark.parametrize("identity", [f"person_{{k:04d}}" for k in range({n})])
def test_identity(identity):
    if int(identity[7:]) in FAILING:
        pytest.fail(identity + ": 1 face pair(s) match another identity at cosine >= 0.85:\\n"
                    "  0001.jpg <-> person_9999/0001.jpg  0.9731", pytrace=False)
"""


def pytest_floor(work: Path, tag: str, n: int, failed: int) -> tuple[float, float]:
    """pytest alone: n parametrized tests that do nothing, `failed` of them failing with a short
    message, with an HTML report (as `pytest dataset_checks` writes one). No dataset_checks."""
    folder = work / f"floor_{tag}"
    folder.mkdir(exist_ok=True)
    (folder / "test_floor.py").write_text(FLOOR_TEST.format(n=n, failed=failed), encoding="utf-8")
    cmd = [sys.executable, "-m", "pytest", "test_floor.py", "-q", "-p", "no:cacheprovider", "-p", "no:dataset_checks",
           "--html", "report.html", "--self-contained-html"]
    run_child(cmd, folder, folder / "warmup.log")  # writes the bytecode
    wall, rss, rc = run_child(cmd, folder, folder / "pytest.log")
    if rc not in (0, 1):
        raise SystemExit(f"floor run failed (exit {rc}):\n" + (folder / "pytest.log").read_text()[-3000:])
    return wall, rss


def test_counts(log: Path) -> tuple[int, int]:
    """(tests, failed) from the summary line of a pytest log ("449 failed, 1177 passed, ...")."""
    import re

    last = [line for line in log.read_text(errors="replace").splitlines() if re.search(r"\d+ (passed|failed)", line)]
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|xfailed|xpassed|error)", last[-1])}
    return sum(counts.values()), counts.get("failed", 0)


def read_findings(report_dir: Path) -> tuple[set, dict]:
    pairs = set()
    with open(report_dir / "findings.csv", encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        next(reader)
        for ident, file, other, other_file, _ in reader:
            a, b = (ident, file), (other, other_file)
            pairs.add((a, b) if a <= b else (b, a))
    meta = json.loads((report_dir / "findings.json").read_text(encoding="utf-8"))
    return pairs, meta


def recall(found: set, truth: set) -> float:
    return len(found & truth) / len(truth) if truth else 1.0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small dataset (8,000 vectors), for smoke tests")
    p.add_argument("--workdir", type=Path, help="where the dataset and reports go (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the temp workdir")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.85, 0.5])
    p.add_argument("--no-crossover", action="store_true", help="skip the flat vs IVF crossover")
    p.add_argument("--crossover-threshold", type=float, default=0.85)
    p.add_argument("--out", type=Path, help="results file stem (default benchmarks/results[_quick])")
    p.add_argument("--repeat", type=int, default=3, help="timed pytest runs per threshold; the median is reported")
    # internal: one method in a child process
    p.add_argument("--child", choices=["brute", "old", "crossover"], help=argparse.SUPPRESS)
    p.add_argument("--dataset", help=argparse.SUPPRESS)
    p.add_argument("--threshold", type=float, help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    p.add_argument("--sizes", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child_main(args)
        return 0

    tmp = None
    if args.workdir is None:
        tmp = Path(tempfile.mkdtemp(prefix="dataset_checks_bench_"))
        work = tmp
    else:
        work = args.workdir.resolve()
        work.mkdir(parents=True, exist_ok=True)
    stem = args.out or HERE / ("results_quick" if args.quick else "results")
    try:
        dataset = work / "dataset"
        t0 = time.perf_counter()
        params = generate(dataset, args.quick)
        gen_s = time.perf_counter() - t0
        x, labels, keys = load_vectors(dataset)
        n, d = x.shape
        n_folders = int(labels.max()) + 1
        print(f"dataset: {n:,} vectors, {d}-d, {n_folders:,} folders at {dataset} (ready in {gen_s:.1f}s)", flush=True)
        del x

        # warm-up (untimed): the built-in demo, so pytest's rewritten-module cache is written
        run_child([sys.executable, "-m", "pytest", "dataset_checks", "--report-dir", str(work / "warmup"), "-q",
                   "-p", "no:cacheprovider"], work, work / "warmup.log")
        rows, details = [], []
        for t in args.thresholds:
            tag = f"{t:g}"
            # brute force: timing and truth
            out = work / f"brute_{tag}.npz"
            _, b_rss = self_child("brute", dataset, t, out, work)
            b = json.loads(out.with_suffix(".json").read_text())
            with np.load(out) as z:
                truth = pair_keys(keys, z["i"], z["j"])
            brute_s = b["seconds"]
            rows.append(dict(threshold=t, method="numpy brute force (float32 GEMM, upper triangle)",
                             wall_s=brute_s, rss_mb=b_rss, recall=1.0, pairs=len(truth)))
            print(f"T={tag}: brute force {brute_s:.2f}s, {len(truth):,} pairs", flush=True)

            # old recipe
            out = work / f"old_{tag}.npz"
            _, o_rss = self_child("old", dataset, t, out, work)
            o = json.loads(out.with_suffix(".json").read_text())
            with np.load(out) as z:
                found = pair_keys(keys, z["i"], z["j"])
            rows.append(dict(threshold=t, method=f"old recipe (IVFFlat nlist={OLD_NLIST}, nprobe=1, top-{OLD_K})",
                             wall_s=o["seconds"], rss_mb=o_rss, recall=recall(found, truth), pairs=len(found & truth)))
            print(f"T={tag}: old recipe {o['seconds']:.2f}s, recall {recall(found, truth):.4f}", flush=True)

            # the end-to-end pytest run: the median of --repeat runs (this machine is shared and noisy)
            report = work / f"report_{tag}"
            runs = []
            for _ in range(max(1, args.repeat)):
                if report.exists():
                    shutil.rmtree(report)
                cmd = [sys.executable, "-m", "pytest", "dataset_checks", "--dataset", str(dataset), "--threshold",
                       repr(t), "--report-dir", str(report), "-q", "-p", "no:cacheprovider",
                       "--full"]  # the whole search every time: a repeat on an unchanged dataset is incremental
                wall, rss, rc = run_child(cmd, work, work / f"pytest_{tag}.log")
                if rc not in (0, 1) or not (report / "findings.csv").is_file():
                    raise SystemExit(f"pytest run failed (exit {rc}):\n" + (work / f"pytest_{tag}.log").read_text()[-3000:])
                found, meta = read_findings(report)
                runs.append((wall, rss, rc, found, meta))
            runs.sort(key=lambda r: r[0])
            walls = [r[0] for r in runs]
            wall, rss, rc, found, meta = runs[len(runs) // 2]
            stages = meta.get("timings", {})
            search = meta.get("search", {})
            rows.append(dict(threshold=t, method="`pytest dataset_checks` (end to end)", wall_s=wall, rss_mb=rss,
                             recall=recall(found, truth), pairs=len(found & truth)))
            extra = len(found - truth)
            # pytest's own floor: as many tests that do nothing (every check's family counts), as
            # many of them failing, HTML report on
            tests, failed = test_counts(work / f"pytest_{tag}.log")
            floor_wall, floor_rss = pytest_floor(work, tag, tests, failed)
            rows.append(dict(threshold=t, method=f"pytest floor: {tests:,} empty tests, {failed:,} failing, report.html",
                             wall_s=floor_wall, rss_mb=floor_rss, recall=float("nan"), pairs=0))
            details.append(dict(threshold=t, pytest_exit=rc, pytest_wall_s=wall, pytest_walls=walls, stages=stages,
                                unaccounted_s=wall - sum(stages.values()), index=meta.get("index"),
                                nlist=search.get("nlist"), nprobe=search.get("nprobe"),
                                calibration=search.get("calibration"), candidates=search.get("candidates"),
                                found=len(found), truth=len(truth), false_pairs=extra, brute_candidates=b["info"]))
            print(f"T={tag}: pytest floor {floor_wall:.2f}s", flush=True)
            print(f"T={tag}: pytest {wall:.2f}s median of {', '.join(f'{w:.2f}' for w in walls)} (exit {rc}), "
                  f"recall {recall(found, truth):.5f}, "
                  f"stages {stages}, nprobe {search.get('nprobe')}", flush=True)
            for r in rows[-4:]:
                r["ratio"] = r["wall_s"] / brute_s

        cross = []
        if not args.no_crossover:
            sizes = QUICK_CROSSOVER_SIZES if args.quick else CROSSOVER_SIZES
            out = work / "crossover.json"
            print(f"crossover at T={args.crossover_threshold:g}:", flush=True)
            self_child("crossover", dataset, args.crossover_threshold, out, work, sizes)
            cross = json.loads(out.read_text())

        env = {"python": platform.python_version(), "numpy": np.__version__, "cpus": os.cpu_count(),
               "machine": platform.machine(), "dataset": params or "seed_scale() defaults",
               "vectors": n, "dim": d, "folders": n_folders}
        try:
            import faiss

            env["faiss"] = faiss.__version__
        except ImportError:
            pass
        md = render(rows, details, cross, env, args.crossover_threshold)
        print()
        print(md)
        Path(f"{stem}.md").write_text(md, encoding="utf-8")
        Path(f"{stem}.json").write_text(json.dumps({"environment": env, "results": rows, "pytest_runs": details,
                                                    "crossover": cross}, indent=2, default=str), encoding="utf-8")
        print(f"wrote {stem}.md and {stem}.json")
        goals_ok = all(
            (r["recall"] >= (1.0 if r["threshold"] >= 0.85 else 0.999)) and r["ratio"] <= 1 / 8
            for r in rows if r["method"].startswith("`pytest")
        )
        print("goals met" if goals_ok else "goals NOT met")
        return 0
    finally:
        if tmp is not None and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


def render(rows, details, cross, env, cross_t) -> str:
    lines = [
        "# Seed-scale benchmark",
        "",
        f"{env['vectors']:,} vectors, {env['dim']}-d, {env['folders']:,} identity folders (FACE01 npKnown.npz); "
        f"{env['cpus']} CPUs, numpy {env['numpy']}, faiss {env.get('faiss', '?')}, CPU only. "
        "Generated by `python benchmarks/seed_scale.py`.",
        "",
        "Brute force and the old recipe: compute time with the vectors already in memory, each in a child "
        "process (peak RSS includes loading the vectors). pytest: the whole "
        "`pytest dataset_checks --dataset DIR --threshold T --report-dir X -q -p no:cacheprovider --full` "
        "subprocess (startup, loading, search, findings, reports), after one untimed warm-up run, with "
        "bytecode writing on; the median of `--repeat` runs. pytest floor: pytest alone running as many "
        "parametrized tests that do nothing, as many of them failing, with an HTML report: the part of "
        "the run no search can remove. Recall: pairs in findings.csv (or "
        "returned) / exact cross-folder pairs >= T.",
        "",
        "| threshold | method | wall s | peak RSS MB | recall | ratio to brute force |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        rec = "-" if r["recall"] != r["recall"] else f"{r['recall']:.4f} ({r['pairs']:,})"
        lines.append(f"| {r['threshold']:g} | {r['method']} | {r['wall_s']:.2f} | {r['rss_mb']:.0f} | "
                     f"{rec} | {r['ratio']:.3f} |")
    lines += ["", "pytest run stages (seconds, from findings.json; `other` = pytest startup, collection, "
              "test reporting, writing the reports):", "",
              "| threshold | index | nlist | nprobe | " + " | ".join(
                  ["discover", "load", "build", "calibrate", "search", "findings", "other", "total"]) + " |",
              "|---|---|---:|---:|" + "---:|" * 8]
    for dt in details:
        s = dt["stages"]
        vals = [s.get(k) for k in ("discover", "load", "build", "calibrate", "search", "findings")]
        vals += [dt["unaccounted_s"], dt["pytest_wall_s"]]
        lines.append(f"| {dt['threshold']:g} | {dt['index']} | {dt['nlist'] or '-'} | {dt['nprobe'] or '-'} | "
                     + " | ".join("-" if v is None else f"{v:.2f}" for v in vals) + " |")
    checks = sorted({k for dt in details for k in dt["stages"] if k.startswith("check ")})
    if checks:  # the registered checks (dataset_checks.checks), each timed by the run itself
        lines += ["", "Checks (seconds, from findings.json):", "",
                  "| threshold | " + " | ".join(c[len("check "):] for c in checks) + " | all checks |",
                  "|---|" + "---:|" * (len(checks) + 1)]
        for dt in details:
            vals = [dt["stages"].get(c, 0.0) for c in checks]
            lines.append(f"| {dt['threshold']:g} | " + " | ".join(f"{v:.3f}" for v in vals) + f" | {sum(vals):.2f} |")
    if cross:
        lines += ["", f"## Exact flat vs IVF crossover (`find_pairs`, T={cross_t:g}, {env['dim']}-d, "
                  "random subsets of the dataset)", "",
                  "| N | flat s | ivf s | ivf / flat | ivf nlist | ivf nprobe | ivf build / calibrate / search s | ivf recall |",
                  "|---:|---:|---:|---:|---:|---:|---|---:|"]
        for c in cross:
            t = c["ivf_timings"]
            lines.append(f"| {c['n']:,} | {c['flat_s']:.2f} | {c['ivf_s']:.2f} | {c['ivf_s'] / c['flat_s']:.2f} | "
                         f"{c['nlist']} | {c['nprobe']} | {t.get('build', 0):.2f} / {t.get('calibrate', 0):.2f} / "
                         f"{t.get('search', 0):.2f} | {c['ivf_recall']:.4f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
