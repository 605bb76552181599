"""near_duplicates: near-identical faces inside one folder (bursts, re-encodes, crops of one photo).

Not a label error: a folder whose faces are twenty frames of one shot looks like one face to
training and evaluation alike, so this is reported (severity info by default), never failing.

Each folder is compared with itself by blocked float32 GEMM (memory bounded by `BLOCK_CELLS`
whatever the folder size); pairs within `MARGIN` of the threshold are settled in float64 so
the result equals a float64 brute force. Per folder the `max_per_folder` most similar pairs
are listed and the rest counted, so a folder of 20,000 video frames costs time, not memory.
Bit-identical rows are multiplied once (`identical_rows`, weighted counts): a folder of a
million copies of one vector costs a pass over its rows, not 5e11 pairs. Ties rank by (a, b).
Folders of up to `SMALL` faces (most of them) go many at a time: zero-padded to a common size
and multiplied as one stack (`batch_pairs`), which saves the per-folder overhead that dominated
at 20,000 folders.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Sequence, TypeAlias

from . import register
from .base import Check, CheckSettings, Issue, Param
from .data import CheckData
from ..discover import display_name

if TYPE_CHECKING:  # annotations only; numpy is imported where used
    import numpy as np
    from numpy.typing import NDArray

    from ..memory import Budget

# folder_pairs' result: (a, b, sim) of the kept pairs, the number of pairs, each row's partners
FolderPairs: TypeAlias = "tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64], int, NDArray[np.int64]]"

BLOCK_CELLS = 1 << 22  # similarities held at once (16 MiB of float32)
HASH_BLOCK_BYTES = 8 << 20  # rows fingerprinted / compared at once (identical_rows)
SMALL = 128  # folders up to this size are compared many at a time (batch_pairs)
BATCH_BYTES = 16 << 20  # padded rows and their similarities per stack
DENSE = 256  # a folder with more candidate pairs than this in a stack is settled by folder_pairs
MARGIN = 1e-5  # float32 GEMM error on unit vectors is ~1e-6: pairs this close are recomputed in float64
RESCORE_PAIRS = 1 << 13  # pairs re-scored in float64 at a time (two 32 MiB gathers at d = 512)
# `threshold: 0` (auto), measured on LFW's dlib descriptors: raw, pairs >= 0.993 are bursts and
# re-crops of one photo while 0.985-0.99 is mostly different photos of one person (dlib packs
# everyone near 0.95); centred, the same photo stays >= ~0.93 and different photos spread out.
AUTO = {("dlib", False): 0.993, ("dlib", True): 0.97}
AUTO_OTHER = 0.99  # ArcFace-like models: same person, different photo rarely passes 0.9


def auto_threshold(key: str | None, centred: bool) -> float:
    return AUTO.get((key or "", bool(centred)), AUTO_OTHER)


def identical_rows(x: NDArray[Any], block_bytes: int = HASH_BLOCK_BYTES, *, budget: Budget | None = None
                   ) -> tuple[NDArray[np.int64], NDArray[np.intp]]:
    """(first, group) for the rows of `x` (2-d, C-contiguous): `first` the smallest row index of
    each distinct bit pattern (ascending), `group` (n,) each row's index into `first`. `budget`:
    the run's memory budget, checkpointed between blocks (None: none).

    A 64-bit fingerprint per row (its 32-bit words times fixed odd weights, summed mod 2^64), in
    blocks of rows; rows whose fingerprints collide are then compared bit for bit against the
    first row of their fingerprint, in blocks. O(n log n), memory O(n) indices plus one block."""
    import numpy as np

    n = len(x)
    words = x.view(np.uint32) if x.dtype.itemsize == 4 else x.view(np.uint8)
    rng = np.random.default_rng(0xD0B1E)
    weights = rng.integers(1, 2**63, size=words.shape[1], dtype=np.uint64) | np.uint64(1)
    block = max(1, block_bytes // max(8 * words.shape[1], 1))
    prints = np.empty(n, dtype=np.uint64)
    for s in range(0, n, block):
        prints[s : s + block] = np.einsum("ij,j->i", words[s : s + block].astype(np.uint64), weights)
        if budget is not None:
            budget.checkpoint()
    order = np.argsort(prints, kind="stable")  # equal fingerprints: ascending rows
    sp = prints[order]
    del prints
    start = np.r_[True, sp[1:] != sp[:-1]]
    label = order[np.maximum.accumulate(np.where(start, np.arange(n), 0))]  # first row of the fingerprint
    del sp, start
    # bit for bit: each row against the first row of its fingerprint
    differ_parts: list[NDArray[np.intp]] = []
    for s in range(0, n, block):
        rows = order[s : s + block]
        same = (words[rows] == words[label[s : s + block]]).all(axis=1)
        differ_parts.append(rows[~same])
        if budget is not None:
            budget.checkpoint()
    out = np.empty(n, dtype=np.int64)
    out[order] = label
    differ = np.sort(np.concatenate(differ_parts))
    if differ.size:  # fingerprint collisions of different rows (rare): grouped by their bytes
        seen: dict[bytes, int] = {}
        for r in differ.tolist():
            out[r] = seen.setdefault(words[r].tobytes(), r)
    first, group = np.unique(out, return_inverse=True)
    return first, group.reshape(-1)


def _first_pairs(p: NDArray[np.intp], q: NDArray[np.intp] | None, keep: int) -> list[tuple[int, int]]:
    """The `keep` smallest pairs (lo, hi), lo < hi, of rows p[i] and q[j] (sorted, disjoint), or
    of two rows of p when q is None, in order."""
    import numpy as np

    out: list[tuple[int, int]] = []
    u = p if q is None else np.sort(np.concatenate([p, q]))
    from_p = None if q is None else np.isin(u, p)
    for k, v in enumerate(u.tolist()):
        other = p if q is None or from_p is None else (q if from_p[k] else p)
        later = other[np.searchsorted(other, v, side="right") :][: keep - len(out)]
        out.extend((v, int(t)) for t in later.tolist())
        if len(out) >= keep:
            break
    return out


def folder_pairs(x: NDArray[Any], threshold: float, keep: int, block_cells: int = BLOCK_CELLS, *,
                 budget: Budget | None = None) -> FolderPairs:
    """Pairs a < b of rows of `x` (unit float32, one folder) with float64 cosine >= threshold.

    Returns (a, b, sim) of the `keep` most similar pairs (sim descending, ties by (a, b)), the
    total number of pairs, and per row the number of near-identical partners.

    Bit-identical rows are compared once: the distinct rows go through the blocked GEMM
    (`_scored_pairs`) weighted by how often each occurs, and a row's copies count as partners
    when its float64 self-similarity reaches the threshold. A folder of 200,000 copies of one
    vector is one row to compare, not 2e10 pairs; the result is the brute force's. `budget`: the
    run's memory budget (identical_rows checkpoints it)."""
    import numpy as np

    n = len(x)
    if n < 2:
        return _scored_pairs(x, threshold, keep, block_cells)
    x = np.ascontiguousarray(x, dtype=np.float32)
    first, group = identical_rows(x, budget=budget)
    if first.size == n:
        return _scored_pairs(x, threshold, keep, block_cells)
    w = np.bincount(group, minlength=first.size).astype(np.int64)
    reps = x[first]
    ra, rb, rs, total, deg = _scored_pairs(reps, threshold, keep, block_cells, weights=w)
    members = np.argsort(group, kind="stable")  # each group's rows, ascending
    starts = np.r_[0, np.cumsum(w)]
    multi = np.flatnonzero(w > 1)
    r64 = reps[multi].astype(np.float64)
    self_sim = np.einsum("ij,ij->i", r64, r64)
    ok = self_sim >= threshold
    multi, self_sim = multi[ok], self_sim[ok]
    total += int((w[multi] * (w[multi] - 1) // 2).sum())
    deg[multi] += w[multi] - 1
    degree = deg[group]
    # the `keep` best row pairs come from the `keep` best group pairs ranked by (-sim, their
    # smallest row pair): a group pair outside those has `keep` better row pairs before its best
    second = members[starts[multi] + 1]
    top = np.lexsort((second, first[multi], -self_sim))[:keep]
    cand: list[tuple[float, int, int | None]] = [(float(s), int(i), None) for i, s in zip(multi[top], self_sim[top])]
    cand += [(float(s), int(i), int(j)) for i, j, s in zip(ra.tolist(), rb.tolist(), rs.tolist())]
    pa: list[int] = []
    pb: list[int] = []
    ps: list[float] = []
    for s, i, j in cand:
        p = members[starts[i] : starts[i] + min(int(w[i]), keep + 1)]
        q = None if j is None else members[starts[j] : starts[j] + min(int(w[j]), keep)]
        for lo, hi in _first_pairs(p, q, keep):
            pa.append(lo)
            pb.append(hi)
            ps.append(s)
    a, b, sims = np.asarray(pa, np.int64), np.asarray(pb, np.int64), np.asarray(ps, np.float64)
    order = np.lexsort((b, a, -sims))[:keep]
    return a[order], b[order], sims[order], total, degree


def _scored_pairs(x: NDArray[Any], threshold: float, keep: int, block_cells: int = BLOCK_CELLS,
                  weights: NDArray[np.int64] | None = None) -> FolderPairs:
    """folder_pairs by blocked GEMM over every pair of rows of `x`; with `weights` (each row
    standing for that many identical rows), totals and degrees count the rows stood for, and
    the kept pairs are the `keep` best pairs of rows of `x` by (-sim, a, b)."""
    import numpy as np

    n = len(x)
    degree = np.zeros(n, dtype=np.int64)
    best_a = np.empty(0, np.int64)
    best_b = np.empty(0, np.int64)
    best_s = np.empty(0, np.float64)
    total = 0
    if n < 2:
        return best_a, best_b, best_s, total, degree
    from ..arrays import nonzero
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
            r, c = nonzero(near)
            exact = np.einsum("ij,ij->i", x[s + r].astype(np.float64), x[s + c].astype(np.float64))
            ok = exact >= threshold
            sure[r[ok], c[ok]] = True
            sims[r[ok], c[ok]] = exact[ok]
        count = int(sure.sum())
        if not count:
            continue
        if weights is None:
            total += count
            degree[s:e] += sure.sum(axis=1)
            degree[s:] += sure.sum(axis=0)
        else:  # exact in float64 below 2^53 pairs
            wf = weights.astype(np.float64)
            by_row = sure @ wf[s:]
            total += int(round(float(wf[s:e] @ by_row)))
            degree[s:e] += np.rint(by_row).astype(np.int64)
            degree[s:] += np.rint(wf[s:e] @ sure).astype(np.int64)
        # the kept pairs are the `keep` most similar in float64: a pair can only be among them
        # if its float32 score is within 2 MARGIN of the keep-th best (float32 errs by at most
        # MARGIN each way), so only those are re-scored (in a burst of frames, not every pair)
        floor = best_s.min() - 2 * MARGIN if len(best_s) >= keep else -np.inf
        if count > keep:
            sims[~sure] = -2.0
            kth = np.partition(sims.ravel(), -keep)[-keep]
            floor = max(floor, float(kth) - 2 * MARGIN)
        r, c = nonzero(sure & (sims >= floor))
        for k in range(0, r.size, RESCORE_PAIRS):
            rk, ck = r[k : k + RESCORE_PAIRS] + s, c[k : k + RESCORE_PAIRS] + s
            exact = np.einsum("ij,ij->i", x[rk].astype(np.float64), x[ck].astype(np.float64))
            best_a, best_b = np.concatenate([best_a, rk]), np.concatenate([best_b, ck])
            best_s = np.concatenate([best_s, exact])
            if len(best_s) > keep:  # the best by (-sim, a, b): ties never depend on the blocks
                top = np.lexsort((best_b, best_a, -best_s))[:keep]
                best_a, best_b, best_s = best_a[top], best_b[top], best_s[top]
    if len(best_s):
        # ranked; ties by row for a stable order
        order = np.lexsort((best_b, best_a, -best_s))
        best_a, best_b, best_s = best_a[order], best_b[order], best_s[order]
    return best_a, best_b, best_s, total, degree


def batch_pairs(x: NDArray[Any], folders: Sequence[NDArray[np.intp]], threshold: float, keep: int, *,
                budget: Budget | None = None) -> list[FolderPairs]:
    """folder_pairs for many small folders at once: `folders` holds each folder's rows of `x` (at
    most `SMALL`); returns folder_pairs' (a, b, sim, total, degree) for each. The folders are
    zero-padded to the largest size among them and multiplied as one stack (float32); every
    pair within MARGIN of the threshold is then settled in float64."""
    import numpy as np

    from ..arrays import nonzero

    sizes = np.array([len(r) for r in folders], dtype=np.int64)
    size = int(sizes.max()) if len(folders) else 0
    out: list[FolderPairs] = []
    if size < 2:
        return [folder_pairs(x[rows], threshold, keep, budget=budget) for rows in folders]
    rows = np.concatenate(folders)
    slot = np.repeat(np.arange(len(folders)), sizes)
    pos = np.arange(rows.size) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    # padding is NaN: its similarities compare false with any threshold
    stack = np.full((len(folders), size, x.shape[1]), np.nan, np.float32)
    stack[slot, pos] = x[rows]
    sims = np.matmul(stack, stack.transpose(0, 2, 1))
    f, a, b = nonzero(sims >= threshold - MARGIN)
    del sims
    ok = a < b
    f, a, b = f[ok], a[ok], b[ok]
    # a folder with many candidates (a burst of frames) goes to folder_pairs, which settles in
    # float64 only what float32 cannot
    dense = np.flatnonzero(np.bincount(f, minlength=len(folders)) > DENSE)
    if dense.size:
        ok = ~np.isin(f, dense)
        f, a, b = f[ok], a[ok], b[ok]
    sim = np.einsum("ij,ij->i", stack[f, a].astype(np.float64), stack[f, b].astype(np.float64))
    ok = sim >= threshold
    f, a, b, sim = f[ok], a[ok], b[ok], sim[ok]
    totals = np.bincount(f, minlength=len(folders))
    degree = (np.bincount(f * size + a, minlength=len(folders) * size)
              + np.bincount(f * size + b, minlength=len(folders) * size)).reshape(len(folders), size)
    # per folder: the most similar first, then by rows
    order = np.lexsort((b, a, -sim, f))
    f, a, b, sim = f[order], a[order], b[order], sim[order]
    first = np.searchsorted(f, np.arange(len(folders) + 1))
    for k, n in enumerate(sizes.tolist()):
        lo, hi = int(first[k]), min(int(first[k + 1]), int(first[k]) + keep)
        out.append((a[lo:hi], b[lo:hi], sim[lo:hi], int(totals[k]), degree[k, :n].astype(np.int64)))
    for k in dense.tolist():
        out[k] = folder_pairs(stack[k, : sizes[k]], threshold, keep, budget=budget)
    return out


@register
class NearDuplicates(Check):
    name = "near_duplicates"
    order = 40
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

        from ..context import budget_of
        from ..memory import release_rows

        table = data.table
        budget = budget_of(data.context)
        threshold = float(settings["threshold"])
        if not threshold:  # 0: auto, for the model and the rules' centring
            assert data.rules is not None, "near_duplicates' auto threshold reads the rules' centring"
            threshold = auto_threshold(table.key, data.rules.centre)
        keep = int(settings["max_per_folder"])
        owner = np.asarray(table.identity_of)
        order = np.argsort(owner, kind="stable")
        bounds = np.searchsorted(owner[order], np.arange(len(table.identities) + 1))
        sizes = np.diff(bounds)
        issues: list[Issue] = []
        folders = pairs = 0
        found_in: dict[int, FolderPairs] = {}  # folder -> folder_pairs' result, for folders with pairs
        small = np.flatnonzero((sizes >= 2) & (sizes <= SMALL))
        # small folders by padded size (a multiple of 8), as many per stack as BATCH_BYTES holds
        padded = -(-sizes[small] // 8) * 8
        for size in np.unique(padded).tolist():
            group = small[padded == size]
            per = max(1, BATCH_BYTES // (size * (table.vectors.shape[1] + size) * 4))
            for s in range(0, group.size, per):
                part = group[s : s + per].tolist()
                members = [order[bounds[k] : bounds[k + 1]] for k in part]
                results = batch_pairs(table.vectors, members, threshold, keep, budget=budget)
                found_in.update((k, r) for k, r in zip(part, results) if r[3])
                for rows in members:  # a mapped table's rows, given back once read (peak memory)
                    release_rows(table.vectors, rows, budget=budget)
        for k in np.flatnonzero(sizes > SMALL).tolist():
            rows = order[bounds[k] : bounds[k + 1]]
            lo, hi = int(rows[0]), int(rows[-1]) + 1
            # a folder in table order is one slice (no gather)
            vecs = table.vectors[lo:hi] if hi - lo == rows.size else table.vectors[rows]
            r = folder_pairs(vecs, threshold, keep, budget=budget)
            release_rows(table.vectors, rows, budget=budget)
            if r[3]:
                found_in[k] = r
        for idx in sorted(found_in):
            ident = table.identities[idx]
            rows = order[bounds[idx] : bounds[idx + 1]]
            a, b, sim, total, degree = found_in[idx]
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
