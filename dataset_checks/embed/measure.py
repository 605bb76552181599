"""Measurements behind the numbers of docs/embeddings.md; run them yourself.

    python -m dataset_checks.embed.measure similarity ../shared/lfw          # cosine distributions
    python -m dataset_checks.embed.measure throughput ../shared/lfw -n 200   # images/second

`similarity` reads the `dlib` vectors of every FACE01 npKnown.npz under the root and prints the
same-person and different-person cosine distributions, raw and centred on the dataset mean, and
what candidate thresholds would do (false matches among different-person pairs, same-person
pairs reached). Every pair is counted exactly (blocked matrix products, fine histograms).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
from numpy.typing import NDArray

BINS = np.linspace(-1.0, 1.0, 20001)  # 1e-4 wide


class _Reach(TypedDict):
    different_at_or_above: int
    same_at_or_above_share: float


class _Summary(TypedDict):
    same_pairs: int
    different_pairs: int
    same: dict[str, float]
    different: dict[str, float]
    max_different: float
    thresholds: dict[str, _Reach]


def _load(root: Path, key: str) -> tuple[NDArray[np.float64], NDArray[np.int32]]:
    vecs: list[NDArray[Any]] = []
    owner: list[NDArray[np.int32]] = []
    for k, folder in enumerate(sorted(p for p in root.iterdir() if p.is_dir())):
        f = folder / "npKnown.npz"
        if not f.is_file():
            continue
        with np.load(f, allow_pickle=False) as z:
            v = z[key]
        v = v.reshape(v.shape[0], -1)
        vecs.append(v)
        owner.append(np.full(len(v), k, dtype=np.int32))
    return np.concatenate(vecs).astype(np.float64), np.concatenate(owner)


def _unit(x: NDArray[np.float64]) -> NDArray[np.float64]:
    out: NDArray[np.float64] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def _hists(x: NDArray[np.float64], owner: NDArray[np.int32], block: int = 2048
           ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    same = np.zeros(len(BINS) - 1, dtype=np.int64)
    diff = np.zeros(len(BINS) - 1, dtype=np.int64)
    x32 = x.astype(np.float32)
    n = len(x)
    for a in range(0, n, block):
        s = x32[a:a + block] @ x32.T  # rows a.., all columns
        rows = np.arange(a, min(n, a + block))
        upper = rows[:, None] < np.arange(n)[None, :]  # each unordered pair once
        same_mask = upper & (owner[rows][:, None] == owner[None, :])
        diff_mask = upper & ~same_mask
        same += np.histogram(s[same_mask], BINS)[0]
        diff += np.histogram(s[diff_mask], BINS)[0]
    return same, diff


def _quantile(h: NDArray[np.int64], q: float) -> float:
    c = np.cumsum(h)
    i = int(np.searchsorted(c, q * c[-1]))
    return float(BINS[min(i + 1, len(BINS) - 1)])


def _mean(h: NDArray[np.int64]) -> float:
    mid = (BINS[:-1] + BINS[1:]) / 2
    return float((h * mid).sum() / h.sum())


def _summary(same: NDArray[np.int64], diff: NDArray[np.int64]) -> _Summary:
    out: _Summary = {
        "same_pairs": int(same.sum()), "different_pairs": int(diff.sum()),
        "same": {"mean": _mean(same), **{f"p{q}": _quantile(same, q / 100) for q in (1, 5, 50, 95)}},
        "different": {"mean": _mean(diff), **{f"p{q}": _quantile(diff, q / 100) for q in (50, 99, 99.9, 99.99)}},
        "max_different": float(BINS[np.flatnonzero(diff)[-1] + 1]),
        "thresholds": {},
    }
    for t in np.round(np.arange(0.30, 1.0001, 0.01), 2):
        i = int(np.searchsorted(BINS, t - 1e-9))
        out["thresholds"][f"{t:.2f}"] = {
            "different_at_or_above": int(diff[i:].sum()),
            "same_at_or_above_share": round(float(same[i:].sum() / same.sum()), 4),
        }
    return out


def similarity(root: Path, key: str = "dlib") -> dict[str, int | _Summary]:
    x, owner = _load(root, key)
    raw = _unit(x)
    centred = _unit(raw - raw.mean(axis=0))
    res: dict[str, int | _Summary] = {"faces": int(len(x)), "identities": int(len(np.unique(owner)))}
    for name, v in (("raw", raw), ("centred", centred)):
        res[name] = _summary(*_hists(v, owner))
    return res


def throughput(root: Path, n: int, workers: int | None) -> dict[str, int | float | None]:
    from . import embed_images, get_embedder
    from .images import list_images

    paths: list[Path] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        paths += list_images(folder)
        if len(paths) >= n:
            break
    paths = paths[:n]
    with tempfile.TemporaryDirectory() as cache:
        emb = get_embedder("dlib")
        t0 = time.perf_counter()
        embed_images(paths, emb, Path(cache), workers=workers)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        embed_images(paths, emb, Path(cache), workers=workers)
        warm = time.perf_counter() - t0
    return {"images": len(paths), "workers": workers or os.cpu_count(), "seconds": round(cold, 2),
            "images_per_second": round(len(paths) / cold, 2), "cached_rerun_seconds": round(warm, 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dataset_checks.embed.measure")
    sub = ap.add_subparsers(dest="what", required=True)
    s = sub.add_parser("similarity")
    s.add_argument("root", type=Path)
    s.add_argument("--key", default="dlib")
    t = sub.add_parser("throughput")
    t.add_argument("root", type=Path)
    t.add_argument("-n", type=int, default=200)
    t.add_argument("--workers", type=int, default=None)
    a = ap.parse_args(argv)
    res = similarity(a.root, a.key) if a.what == "similarity" else throughput(a.root, a.n, a.workers)
    json.dump(res, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
