"""Every pair, proven, by default: the default search against the truth, and against the IVF.

For each size, the seed-scale synthetic dataset (`synthetic.seed_scale` scaled up: 50 faces per
identity on average, crowded folders of 400 frames every 50th identity, planted copies; 512-d)
is generated in memory and searched at the threshold three ways, one after another in this
process (BLAS on every core):

* `default`: `find_pairs` with the default rules: above `flat_below` the folder-caps search
  (exact: every face against every other folder's cap, the rest scored);
* `ivf`: `index.type: ivf`, the default before this change (calibrated nprobe, not proven);
* `truth` (`--truth`): the flat search, every pair scored by blocked GEMM: the brute force
  (N^2 / 2 products; about 6 minutes at 300k on 2 cores). Without it, the default's pairs are
  the truth the IVF's are compared with (the default is proven exact).

It prints, per size: pairs found, pairs missed against the truth, seconds, and the proof's
share of the default search (cap tests against members scored), and writes
benchmarks/exact_default_results.json and .md.

    python benchmarks/exact_default.py --sizes 300000 --truth
    python benchmarks/exact_default.py --sizes 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from dataset_checks.rules import IndexRules  # noqa: E402
from dataset_checks.search import exactness, find_pairs  # noqa: E402
from dataset_checks.synthetic import seed_scale  # noqa: E402

THRESHOLD = 0.85


def dataset(n: int) -> tuple[np.ndarray, np.ndarray, dict]:
    params = dict(n_identities=max(200, n // 50), n_vectors=n, n_planted=max(60, n // 500), crowded_every=50,
                  crowd_size=400)
    data = seed_scale(**params)
    x = np.concatenate(data.vectors).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.repeat(np.arange(len(data.vectors)), [len(v) for v in data.vectors])
    return x, labels, params


def keys(result, n: int) -> np.ndarray:
    return np.unique(result.i.astype(np.int64) * n + result.j)


def run(n: int, truth: bool) -> dict:
    x, labels, params = dataset(n)
    row: dict = {"faces": len(x), "folders": int(labels.max()) + 1, "params": params, "threshold": THRESHOLD}
    found = {}
    for name, rules in (("default", IndexRules(gpu=False)), ("ivf", IndexRules(type="ivf", gpu=False)),
                        *((("truth", IndexRules(type="flat", gpu=False)),) if truth else ())):
        t0 = time.perf_counter()
        result = find_pairs(x, labels, THRESHOLD, rules)
        seconds = time.perf_counter() - t0
        found[name] = keys(result, len(x))
        info = result.info
        entry = {"index": info.get("index"), "pairs": int(found[name].size), "seconds": round(seconds, 2),
                 "stages": {k: round(v, 2) for k, v in info.get("timings", {}).items()},
                 "exact": exactness(info)}
        if name == "default":
            entry["cap_tests"] = info.get("certify_cap_tests")
            entry["cells"] = info.get("certify_cells")
            entry["caps"], entry["loose_rows"] = info.get("caps"), info.get("loose_rows")
        if name == "ivf":
            entry["nlist"], entry["nprobe"] = info.get("nlist"), info.get("nprobe")
        row[name] = entry
        print(n, name, json.dumps(entry), flush=True)
    reference = found["truth"] if truth else found["default"]
    row["truth"] = "flat (brute force)" if truth else "the default (proven exact)"
    for name in ("default", "ivf"):
        row[name]["missed"] = int(np.setdiff1d(reference, found[name]).size)
        row[name]["extra"] = int(np.setdiff1d(found[name], reference).size)
    return row


def markdown(rows: list[dict]) -> str:
    out = ["# benchmarks/exact_default.py", "",
           f"{os.cpu_count()}-core {platform.machine()} machine, BLAS on every core; threshold {THRESHOLD}; "
           "seconds of `find_pairs` alone (the search, not the whole run). The default is the folder-caps "
           "search above `flat_below`; ivf is `index.type: ivf`, the default before it; missed: pairs of the "
           "truth the search did not return.", "",
           "| faces | folders | truth | default: pairs / missed / s | ivf (old default): pairs / missed / s "
           "(nlist, nprobe) | default's cap tests | default exact? |",
           "|---:|---:|---|---|---|---:|---|"]
    for r in rows:
        d, v = r["default"], r["ivf"]
        out.append(f"| {r['faces']:,} | {r['folders']:,} | {r['truth']} | {d['pairs']:,} / {d['missed']} / "
                   f"{d['seconds']} | {v['pairs']:,} / {v['missed']} / {v['seconds']} ({v['nlist']}, {v['nprobe']}) | "
                   f"{d['cap_tests'] or 0:,} | {d['exact']['exact']} |")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="300000", help="comma-separated numbers of faces")
    ap.add_argument("--truth", action="store_true", help="also the flat search (brute force): N^2/2 products")
    ap.add_argument("--out", type=Path, default=HERE / "exact_default_results")
    args = ap.parse_args()
    path = args.out.with_suffix(".json")
    rows = json.loads(path.read_text()) if path.is_file() else []
    for n in (int(s) for s in args.sizes.split(",")):
        row = run(n, args.truth)
        rows = [r for r in rows if not (r["faces"] == row["faces"] and r["truth"] == row["truth"])] + [row]
        path.write_text(json.dumps(rows, indent=1))
        args.out.with_suffix(".md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
