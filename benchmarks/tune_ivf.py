"""Sweep the IVF defaults of dataset_checks.search on the seed-scale dataset, stage by stage.

Needs a dataset and brute-force truth written by `seed_scale.py --workdir DIR` (brute_T.npz).
Builds the index the way find_pairs does, with the k-means / nlist / nprobe / calibration
settings given here, and reports build, calibrate and search time and recall against the truth.

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

import faiss  # noqa: E402

from dataset_checks import search as S  # noqa: E402
from dataset_checks.rules import IndexRules  # noqa: E402
from seed_scale import load_vectors  # noqa: E402


def run(x, labels, t, truth, nlist, mppc, niter, start, calib_q, batch, seed=0):
    d = x.shape[1]
    cpu0 = time.process_time()
    radius = t - S.RADIUS_MARGIN
    t0 = time.perf_counter()
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.max_points_per_centroid = mppc
    index.cp.niter = niter
    index.cp.seed = seed
    index.train(x)
    t_train = time.perf_counter() - t0
    index.add(x)
    t_build = time.perf_counter() - t0
    S.CALIBRATION_QUERIES, S.QUERY_BATCH = calib_q, batch
    orig_min = min
    # the starting nprobe is the literal `min(4, nlist)` in _choose_nprobe: patch `min` for that call
    first = [True]

    def patched_min(a, *b, **k):
        if first[0] and a == 4 and b:
            first[0] = False
            return orig_min(start, *b)
        return orig_min(a, *b, **k)

    S.min = patched_min
    try:
        t0 = time.perf_counter()
        nprobe, calib = S._choose_nprobe(faiss, index, None, x, labels, radius, IndexRules(), lambda: S._cpu_range(index, radius), seed)
        t_cal = time.perf_counter() - t0
    finally:
        del S.min
    t0 = time.perf_counter()
    col = S._Collector(x, labels, t, S.MAX_PAIRS_DEFAULT)
    S._range_batches(S._cpu_range(index, radius), x, col, None, "")
    t_range = time.perf_counter() - t0
    res = col.result()
    t_search = time.perf_counter() - t0
    found = set(zip(res.i.tolist(), res.j.tolist()))
    cpu = time.process_time() - cpu0
    rec = len(found & truth) / len(truth)
    return dict(t=t, nlist=nlist, mppc=mppc, niter=niter, start=start, calib_q=calib_q, batch=batch,
                train=t_train, build=t_build, calibrate=t_cal, range=t_range, search=t_search,
                total=t_build + t_cal + t_search, cpu=cpu, nprobe=nprobe, recall=rec, missed=len(truth - found),
                candidates=col.candidates, by_nprobe=calib.get("recall_by_nprobe"))


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
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    x, labels, _ = load_vectors(a.workdir / "dataset")
    rows = []
    for t in a.thresholds:
        with np.load(a.workdir / f"brute_{t:g}.npz") as z:
            truth = set(zip(z["i"].tolist(), z["j"].tolist()))
        for nlist, mppc, niter, start, cq, batch, seed in itertools.product(
                a.nlist, a.mppc, a.niter, a.start, a.calib, a.batch, a.seeds):
            r = run(x, labels, t, truth, nlist, mppc, niter, start, cq, batch, seed)
            r["seed"] = seed
            rows.append(r)
            print(f"T={t:g} nlist={nlist:5d} mppc={mppc:3d} niter={niter:2d} start={start} calib={cq:4d} "
                  f"batch={batch:5d} seed={seed}: build {r['build']:.2f} (train {r['train']:.2f}) "
                  f"cal {r['calibrate']:.2f} range {r['range']:.2f} search {r['search']:.2f} total {r['total']:.2f} cpu {r['cpu']:.2f} "
                  f"nprobe {r['nprobe']} recall {r['recall']:.5f} missed {r['missed']} {r['by_nprobe']}", flush=True)
    if a.out:
        a.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
