"""Sweep the IVF defaults of dataset_checks.search on the seed-scale dataset, stage by stage.

Needs a dataset and brute-force truth written by `seed_scale.py --workdir DIR` (brute_T.npz).
Runs find_pairs with the k-means / nlist / nprobe / calibration settings given here (as
`SearchTuning` and `IndexRules` parameters, nothing patched), and reports build, calibrate and
search time and recall against the truth.

    python benchmarks/tune_ivf.py --workdir /tmp/ss --nlist 512 1024 --mppc 16 32 --niter 5 10
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dataset_checks.rules import IndexRules  # noqa: E402
from dataset_checks.search import SearchTuning, find_pairs  # noqa: E402
from seed_scale import load_vectors  # noqa: E402


def run(x, labels, t, truth, nlist, mppc, niter, start, calib_q, batch, seed=0, scan="faiss"):
    # every knob goes in as a parameter: find_pairs builds, calibrates and searches as in a run
    tuning = SearchTuning(kmeans_points_per_centroid=mppc, kmeans_niter=niter, nprobe_start=start,
                          calibration_queries=calib_q, query_batch=batch)
    rules = IndexRules(type="ivf", nlist=nlist, gpu=False, scan=scan)
    cpu0 = time.process_time()
    res = find_pairs(x, labels, t, rules, seed=seed, tuning=tuning)
    cpu = time.process_time() - cpu0
    timings = res.info["timings"]
    found = set(zip(res.i.tolist(), res.j.tolist()))
    rec = len(found & truth) / len(truth)
    return dict(t=t, nlist=res.info["nlist"], mppc=mppc, niter=niter, start=start, calib_q=calib_q, batch=batch,
                scan=scan, build=timings["build"], calibrate=timings["calibrate"], search=timings["search"],
                total=sum(timings.values()), cpu=cpu, nprobe=res.info["nprobe"], recall=rec,
                missed=len(truth - found), candidates=res.info["candidates"],
                by_nprobe=res.info["calibration"].get("recall_by_nprobe"))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.85, 0.5])
    p.add_argument("--nlist", type=int, nargs="+", default=[512])
    p.add_argument("--mppc", type=int, nargs="+", default=[32])
    p.add_argument("--niter", type=int, nargs="+", default=[10])
    p.add_argument("--start", type=int, nargs="+", default=[4])
    p.add_argument("--calib", type=int, nargs="+", default=[512])
    p.add_argument("--batch", type=int, nargs="+", default=[4096])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--scan", choices=["lists", "faiss"], nargs="+", default=["faiss"])
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    x, labels, _ = load_vectors(a.workdir / "dataset")
    rows = []
    for t in a.thresholds:
        with np.load(a.workdir / f"brute_{t:g}.npz") as z:
            truth = set(zip(z["i"].tolist(), z["j"].tolist()))
        for nlist, mppc, niter, start, cq, batch, seed, scan in itertools.product(
                a.nlist, a.mppc, a.niter, a.start, a.calib, a.batch, a.seeds, a.scan):
            r = run(x, labels, t, truth, nlist, mppc, niter, start, cq, batch, seed, scan)
            r["seed"] = seed
            rows.append(r)
            print(f"T={t:g} nlist={nlist:5d} mppc={mppc:3d} niter={niter:2d} start={start} calib={cq:4d} "
                  f"batch={batch:5d} seed={seed} scan={scan}: build {r['build']:.2f} "
                  f"cal {r['calibrate']:.2f} search {r['search']:.2f} total {r['total']:.2f} cpu {r['cpu']:.2f} "
                  f"nprobe {r['nprobe']} recall {r['recall']:.5f} missed {r['missed']} {r['by_nprobe']}", flush=True)
    if a.out:
        a.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
