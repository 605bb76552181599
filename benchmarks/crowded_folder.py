"""Crowded-folder benchmark: peak RSS and wall time of `find_pairs` + `verify_search` when one
folder holds a huge crowd of (near-)identical vectors.

Cases (each run in a child process of its own; peak RSS is that child's max RSS from wait4):

* `a`: one folder of 20,000 near-identical 512-d frames (cosine ~0.995 to each other) plus 2,000
  folders of 10 ArcFace-like faces, one frame copied into another folder. Auto index: IVF.
* `b`: one folder of N identical 128-d vectors (default 1,000,000) plus 300 folders of 10 faces,
  the crowd's vector copied into one of them.
* `a-flat`: case a with `index.type: flat` (the exact path).

    python benchmarks/crowded_folder.py                      # cases a, a-flat, b with this checkout
    python benchmarks/crowded_folder.py --repo /tmp/base     # the same with another checkout
    python benchmarks/crowded_folder.py --cases b --crowd 300000 --limit-gb 8

Measured on 2 cores (24 GB shared machine), `--limit-gb 8`, case b with 1,000,000 identical
vectors (1,003,000 rows):

    case    before (c28d6ba)                               after
    a       MemoryError (asked 8.18 GiB more; 1.5 GB RSS)  1.7 s, 467 MB, nprobe 4, recall 1.0
    a-flat  33.8 s, 4,586 MB                               4.1 s, 340 MB, recall 1.0
    b       MemoryError (32 MiB more at 6.4 GB RSS)        13.4 s, 1,998 MB, nprobe 4, recall 1.0

(b's 2 GB: generating the table (two 512 MB arrays while concatenating), faiss's copy of it
in the lists (512 MB) and per-vector arrays (probes: 64 MB); linear in rows, nothing per pair.)

`--limit-gb` caps each child's address space (prlimit RLIMIT_AS) so that a version that
explodes dies with MemoryError instead of taking the shared machine with it; the row then
says "MemoryError".
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def make_case(case: str, crowd: int):
    import numpy as np

    rng = np.random.default_rng(0)
    if case.startswith("a"):
        dim, folders, size, crowd_n, frame_cos = 512, 2000, 10, 20_000, 0.995
    else:
        dim, folders, size, crowd_n, frame_cos = 128, 300, 10, crowd, 1.0
    centre = rng.standard_normal(dim).astype(np.float32)
    centre /= np.linalg.norm(centre)
    if frame_cos < 1.0:
        sigma = np.sqrt(1.0 / frame_cos - 1.0) / np.sqrt(dim)
        crowd_v = centre + (sigma * rng.standard_normal((crowd_n, dim))).astype(np.float32)
    else:
        crowd_v = np.empty((crowd_n, dim), np.float32)
        crowd_v[:] = centre
    sigma = np.sqrt(1.0 / 0.6 - 1.0) / np.sqrt(dim)
    centres = rng.standard_normal((folders, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    others = np.repeat(centres, size, axis=0) + (sigma * rng.standard_normal((folders * size, dim))).astype(np.float32)
    others[0] = crowd_v[0]  # the label error: a frame of the crowd filed under another name
    x = np.concatenate([crowd_v, others]).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.concatenate([np.zeros(crowd_n, np.int64), 1 + np.repeat(np.arange(folders), size)])
    return x, labels


def child(case: str, crowd: int, repo: str) -> None:
    sys.path.insert(0, repo)
    from dataset_checks.rules import IndexRules
    from dataset_checks.search import find_pairs
    from dataset_checks.verify import verify_search

    x, labels = make_case(case, crowd)
    rules = IndexRules(type="flat" if case.endswith("flat") else "auto", gpu=False)
    out = {"n": len(x), "dim": x.shape[1]}
    t0 = time.perf_counter()
    try:
        res = find_pairs(x, labels, 0.85, rules)
        out["search_s"] = round(time.perf_counter() - t0, 2)
        out["pairs"] = len(res)
        out["index"] = res.info.get("index")
        out["nprobe"] = res.info.get("nprobe")
        out["timings"] = {k: round(v, 2) for k, v in res.info.get("timings", {}).items()}
        t0 = time.perf_counter()
        ver = verify_search(x, labels, 0.85, res.i, res.j)
        out["verify_s"] = round(time.perf_counter() - t0, 2)
        out["recall"] = ver["recall"]
    except MemoryError as exc:
        out["error"] = f"MemoryError {exc}"
    print(json.dumps(out))


def run_case(case: str, crowd: int, repo: str, limit_gb: float | None) -> dict:
    cmd = [sys.executable, __file__, "--child", case, "--crowd", str(crowd), "--repo", repo]

    def limit():
        if limit_gb:
            cap = int(limit_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=limit,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    row = {"case": case, "wall_s": round(wall, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024), "status": status}
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    if lines:
        row.update(json.loads(lines[-1]))
    else:
        tail = [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith("WARNING clustering")]
        row["error"] = "; ".join(tail[-2:]) or f"exit status {status}"
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="a,a-flat,b")
    ap.add_argument("--crowd", type=int, default=1_000_000, help="crowd size of case b")
    ap.add_argument("--repo", default=str(HERE.parent))
    ap.add_argument("--limit-gb", type=float, default=8.0)
    ap.add_argument("--child")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.crowd, args.repo)
        return
    for case in args.cases.split(","):
        print(json.dumps(run_case(case, args.crowd, args.repo, args.limit_gb)), flush=True)


if __name__ == "__main__":
    main()
