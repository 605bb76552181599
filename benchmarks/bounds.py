"""Provable bounds in the IVF search (dataset_checks/backends/bounds.py): what they certify and what
they cost, on synthetic data and on LFW.

One IVF index is built and calibrated per dataset and threshold (as `find_pairs` does it), then
its search stage is run three ways on that same index and nprobe:

* `off`      no bounds: every member of every probed list is scored (the search before bounds);
* `bounds`   the defaults: whole-list caps (skip a probed list, certify unprobed ones) and
             folder caps inside each list;
* `certify`  the defaults plus `index.certify`: every face against every folder's cap, so the
             result is exact; its pairs are the truth the other two are compared with.

Reported per mode: pairs, pairs missed against `certify`, scored cells (products computed),
seconds (wall and CPU), and the `certified` entry of the search info (share of queries whose
search the list caps prove complete, share of unprobed (query, list) cells proven empty, folder
caps skipped).

    python benchmarks/bounds.py --synthetic 300000 6000 --thresholds 0.85
    python benchmarks/bounds.py --folders /tmp/big1m --thresholds 0.85
    python benchmarks/bounds.py --lfw ../shared/lfw
    python benchmarks/bounds.py ... --threads 1   # BLAS threads (set before numpy loads)

The timings on a shared machine vary by 2-3x; compare modes within one run (they alternate on
one index) and look at the cells, which do not vary.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path


def _threads_from_argv() -> None:
    if "--threads" in sys.argv:
        n = sys.argv[sys.argv.index("--threads") + 1]
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = n


_threads_from_argv()

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dataset_checks.backends import SearchTuning  # noqa: E402
from dataset_checks.backends.ivf import IVFBackend  # noqa: E402
from dataset_checks.rules import IndexRules  # noqa: E402
from dataset_checks.search import RADIUS_MARGIN, _Collector, auto_nlist  # noqa: E402
from dataset_checks.verify import verify_search  # noqa: E402


def synthetic(n: int, folders: int):
    from dataset_checks.synthetic import seed_scale

    ds = seed_scale(n_identities=folders, n_vectors=n, n_planted=max(1, n // 500), crowded_every=50, crowd_size=400)
    x = np.concatenate(ds.vectors).astype(np.float64)
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    labels = np.repeat(np.arange(len(ds.vectors)), [len(v) for v in ds.vectors])
    return x, labels


def lfw(root: Path, centred: bool):
    from dataset_checks.vectors import centre_vectors

    blocks, labels = [], []
    for k, name in enumerate(sorted(p.name for p in os.scandir(root) if p.is_dir())):
        f = root / name / "npKnown.npz"
        if f.exists():
            with np.load(f) as z:
                a = z["dlib"].astype(np.float64)
            blocks.append(a)
            labels.append(np.full(len(a), k))
    x = np.concatenate(blocks)
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    if centred:
        x = centre_vectors(x)
    return np.ascontiguousarray(x, dtype=np.float32), np.concatenate(labels)


def run_modes(x, labels, threshold, modes, seed=0):
    n = len(x)
    nlist = min(auto_nlist(n), max(1, n // 39))
    rules = IndexRules(type="ivf", gpu=False)
    radius = threshold - RADIUS_MARGIN
    t0 = time.perf_counter()
    built = IVFBackend(rules, nlist, seed=seed).build(x, labels, radius)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    built.calibrate()
    calibrate_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    built._bounds_setup()  # already run by calibrate; timed alone here
    bounds_setup_s = time.perf_counter() - t0
    base = {"n": n, "dim": int(x.shape[1]), "folders": int(len(np.unique(labels))), "threshold": threshold,
            "nlist": nlist, "nprobe": built.info["nprobe"], "build_s": round(build_s, 2),
            "calibrate_s": round(calibrate_s, 2), "bounds_setup_s": round(bounds_setup_s, 3)}
    rows, pairs = [], {}
    for mode in modes:
        tuning = SearchTuning() if mode != "off" else SearchTuning(list_bounds=False, folder_caps=False)
        built.tuning = tuning
        built.rules = replace(rules, certify=mode == "certify")
        built.stats = {}
        built._certified_rows = 0
        built._bounds_setup()
        collector = _Collector(x, labels, threshold, 50_000_000)
        c0, t0 = time.process_time(), time.perf_counter()
        built.candidates(collector.add)
        result = collector.result()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        pairs[mode] = set(zip(result.i.tolist(), result.j.tolist()))
        row = {**base, "mode": mode, "pairs": len(result), "search_s": round(wall, 2), "search_cpu_s": round(cpu, 2),
               "scored_cells": built.stats.get("scored_cells", 0), "certified": built.info["certified"]}
        if mode == "certify":
            check = verify_search(x, labels, threshold, result.i, result.j)
            row["verify_recall"] = check["recall"]
            row["certify_s"] = round(built.stats.get("certify_seconds", 0.0), 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if "certify" in pairs:
        for row in rows:
            row["missed_vs_certify"] = len(pairs["certify"] - pairs[row["mode"]])
            row["extra_vs_certify"] = len(pairs[row["mode"]] - pairs["certify"])
    return rows


def table(rows) -> str:
    out = ["| data | threshold | nprobe/nlist | mode | pairs | missed | scored cells | search s (cpu) | "
           "queries certified | unprobed cells proven | folder caps skipped |",
           "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        c = r["certified"]
        caps = (f"{c['folder_cap_probes_skipped'] / c['folder_cap_probes']:.3f}"
                if c.get("folder_cap_probes") else "-")
        q = "-" if c.get("queries") is None else f"{c['queries']:.4f}"
        u = "-" if c.get("unprobed_proven") is None else f"{c['unprobed_proven']:.4f}"
        out.append(f"| {r['data']} | {r['threshold']:g} | {r['nprobe']}/{r['nlist']} | {r['mode']} | {r['pairs']:,} | "
                   f"{r.get('missed_vs_certify', '-')} | {r['scored_cells']:,} | {r['search_s']} ({r['search_cpu_s']}) | "
                   f"{q} | {u} | {caps} |")
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--synthetic", type=int, nargs=2, metavar=("N", "FOLDERS"))
    p.add_argument("--npy", type=Path, nargs=2, metavar=("X", "LABELS"))
    p.add_argument("--folders", type=Path, help="a FACE01 dataset (efficientnetv2_arcface), e.g. /tmp/big1m")
    p.add_argument("--lfw", type=Path, help="LFW with npKnown.npz dlib arrays: raw (0.9749) and centred (0.9)")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.85])
    p.add_argument("--modes", nargs="+", default=["off", "bounds", "certify"])
    p.add_argument("--threads", type=int)
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    rows = []
    sets = []
    if a.synthetic:
        sets.append((f"synthetic {a.synthetic[0]:,}", lambda: synthetic(*a.synthetic), a.thresholds))
    if a.npy:
        sets.append((a.npy[0].parent.name, lambda: (np.load(a.npy[0]), np.load(a.npy[1])), a.thresholds))
    if a.folders:
        from seed_scale import load_vectors

        sets.append((a.folders.name, lambda: load_vectors(a.folders)[:2], a.thresholds))
    if a.lfw:
        # thresholds: what `threshold: auto` picks on LFW's dlib vectors, raw and centred
        sets.append(("LFW raw", lambda: lfw(a.lfw, False), [0.9749]))
        sets.append(("LFW centred", lambda: lfw(a.lfw, True), [0.9]))
    for name, load, thresholds in sets:
        t0 = time.perf_counter()
        x, labels = load()
        print(f"{name}: {x.shape} loaded in {time.perf_counter() - t0:.1f}s", flush=True)
        for t in thresholds:
            for r in run_modes(x, labels, t, a.modes):
                r["data"] = name
                rows.append(r)
        del x, labels
    print(table(rows))
    if a.out:
        a.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
