"""near_duplicates: near-identical faces inside one folder (bursts, re-encodes, crops of one photo).

Not a label error: a folder whose faces are twenty frames of one shot looks like one face to
training and evaluation alike, so this is reported (severity info by default), never failing.

Each folder is compared with itself by blocked float32 GEMM (memory bounded by `BLOCK_CELLS`
whatever the folder size); pairs within `MARGIN` of the threshold are settled in float64 so
the result equals a float64 brute force. Per folder the `max_per_folder` most similar pairs
are listed and the rest counted, so a folder of 20,000 video frames costs time, not memory.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from . import register
from .base import Check, CheckData, CheckSettings, Issue, Param
from ..discover import display_name

BLOCK_CELLS = 1 << 22  # similarities held at once (16 MiB of float32)
MARGIN = 1e-5  # float32 GEMM error on unit vectors is ~1e-6: pairs this close are recomputed in float64
# `threshold: 0` (auto), measured on LFW's dlib descriptors: raw, pairs >= 0.993 are bursts and
# re-crops of one photo while 0.985-0.99 is mostly different photos of one person (dlib packs
# everyone near 0.95); centred, the same photo stays >= ~0.93 and different photos spread out.
AUTO = {("dlib", False): 0.993, ("dlib", True): 0.97}
AUTO_OTHER = 0.99  # ArcFace-like models: same person, different photo rarely passes 0.9


def auto_threshold(key: str | None, centred: bool) -> float:
    return AUTO.get((key or "", bool(centred)), AUTO_OTHER)


def folder_pairs(x, threshold: float, keep: int, block_cells: int = BLOCK_CELLS):
    """Pairs a < b of rows of `x` (unit float32, one folder) with float64 cosine >= threshold.

    Returns (a, b, sim) of the `keep` most similar pairs (sim descending), the total number of
    pairs, and per row the number of near-identical partners."""
    import numpy as np

    n = len(x)
    degree = np.zeros(n, dtype=np.int64)
    best_a = np.empty(0, np.int64)
    best_b = np.empty(0, np.int64)
    best_s = np.empty(0, np.float64)
    total = 0
    if n < 2:
        return best_a, best_b, best_s, total, degree
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows = max(1, min(n, block_cells // n))
    for s in range(0, n - 1, rows):
        e = min(n, s + rows)
        sims = x[s:e] @ x[s:].T  # (e-s, n-s): only columns >= s can be a partner b > a
        # keep the strict upper triangle: column c (offset s) pairs with row r only when c > r
        rr = np.arange(e - s)[:, None]
        cc = np.arange(n - s)[None, :]
        sims[cc <= rr] = -2.0
        sure = sims >= threshold + MARGIN
        near = (sims >= threshold - MARGIN) & ~sure
        if near.any():
            r, c = np.nonzero(near)
            exact = np.einsum("ij,ij->i", x[s + r].astype(np.float64), x[s + c].astype(np.float64))
            ok = exact >= threshold
            sure[r[ok], c[ok]] = True
            sims[r[ok], c[ok]] = exact[ok]
        count = int(sure.sum())
        if not count:
            continue
        total += count
        degree[s:e] += sure.sum(axis=1)
        degree[s:] += sure.sum(axis=0)
        if count > keep:
            # a crowded block (video frames): pick the top straight from the block, no index
            # arrays of every pair
            sims[~sure] = -2.0
            top = np.argpartition(sims.ravel(), -keep)[-keep:]
            r, c = np.divmod(top, sims.shape[1])
            vals = sims[r, c]
        else:
            r, c = np.nonzero(sure)
            vals = sims[r, c]
        best_a = np.concatenate([best_a, r + s])
        best_b = np.concatenate([best_b, c + s])
        best_s = np.concatenate([best_s, vals.astype(np.float64)])
        if len(best_s) > keep:
            top = np.argpartition(-best_s, keep - 1)[:keep]
            best_a, best_b, best_s = best_a[top], best_b[top], best_s[top]
    if len(best_s):
        # reported similarities in float64, ranked; ties by row for a stable order
        best_s = np.einsum("ij,ij->i", x[best_a].astype(np.float64), x[best_b].astype(np.float64))
        order = np.lexsort((best_b, best_a, -best_s))
        best_a, best_b, best_s = best_a[order], best_b[order], best_s[order]
    return best_a, best_b, best_s, total, degree


@register
class NearDuplicates(Check):
    name = "near_duplicates"
    title = "near-duplicate faces"
    doc = ("Near-identical faces inside one folder (bursts, re-encodes, crops of one photo): pairs of one "
           "folder whose cosine is at or above `threshold` (0: chosen for the model). They over-weight one "
           "photo in training and inflate evaluation; reported, not failing.")
    level = "identity"
    needs = frozenset({"vectors"})
    severity = "info"
    columns = {"score": "similarity"}
    params = {
        "threshold": Param(0.0, "cosine at or above which two faces of one folder are near-identical; 0: auto "
                                "(0.993 raw dlib, 0.97 centred dlib, 0.99 other models)", low=0.0, high=1.0),
        "max_per_folder": Param(20, "pairs listed per folder (the most similar); the rest are counted",
                                kind="int", low=1),
    }

    def __init__(self) -> None:
        self.facts: dict[str, Any] = {}

    def run(self, data: CheckData, settings: CheckSettings) -> list[Issue]:
        import numpy as np

        table = data.table
        threshold = float(settings["threshold"]) or auto_threshold(table.key, data.rules.centre)
        keep = int(settings["max_per_folder"])
        owner = np.asarray(table.identity_of)
        order = np.argsort(owner, kind="stable")
        bounds = np.searchsorted(owner[order], np.arange(len(table.identities) + 1))
        issues: list[Issue] = []
        folders = pairs = 0
        for idx, ident in enumerate(table.identities):
            rows = order[bounds[idx] : bounds[idx + 1]]
            if len(rows) < 2:
                continue
            a, b, sim, total, degree = folder_pairs(table.vectors[rows], threshold, keep)
            if not total:
                continue
            folders += 1
            pairs += total
            twins = int((degree > 0).sum())
            found = []
            for ra, rb, s in zip(a.tolist(), b.tolist(), sim.tolist()):
                fa, fb = table.files[rows[ra]], table.files[rows[rb]]
                if fb < fa:  # canonical key: the smaller file name first
                    fa, fb, ra, rb = fb, fa, rb, ra
                detail = (f"cosine {s:.4f} >= {threshold:g}; {display_name(fa)} has {int(degree[ra])} and "
                          f"{display_name(fb)} {int(degree[rb])} near-identical face(s) in this folder")
                found.append(Issue(self.name, ident.name, fa, ident.name, fb, score=float(s), detail=detail,
                                   severity=settings.severity))
            if total > len(found):
                found[-1] = replace(found[-1], detail=found[-1].detail + (
                    f"; {total - len(found)} more pair(s) not listed ({total} in all, {twins} of the folder's "
                    f"{len(rows)} faces have a near-identical twin)"))
            issues.extend(found)
        self.facts = {"threshold": threshold, "folders": folders, "pairs": pairs, "listed": len(issues)}
        return issues

    def summary(self) -> dict[str, Any]:
        return dict(self.facts)
