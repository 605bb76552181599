"""One similarity search over the whole dataset: every cross-folder pair at or above a threshold.

This is a range search, not a top-k search: a vector in a crowded folder (video frames, bursts)
has all its k nearest neighbours in its own folder, so a top-k recipe never sees its cross-folder
match. Here every neighbour with similarity >= the radius is returned, however many there are.

* `flat`: exact search by blocked GEMM over the upper triangle, rows in folder order so that a
  folder's own columns are skipped; chosen below `flat_below` vectors.
* `ivf`: `IndexIVFFlat` with inner product. `nprobe` is calibrated in the same run: the exact
  neighbours of a sample of queries are found by GEMM, and for each the smallest nprobe at which
  the index finds it is read off the lists' rankings; the smallest nprobe that reaches the
  rules' recall target on the sample (and misses no sampled clear match) is used.
* On a GPU (faiss-gpu with a visible device) the same indexes run there; GPU indexes have no range
  search, so a k-NN search is widened until it reaches below the radius for every query, and the
  few queries that still saturate the largest k fall back to a bounded CPU search.

Memory is bounded by blocks at every stage, however many same-folder neighbours a crowded
folder (video frames, identical copies) has: same-folder hits are dropped inside each block and
never gathered.

Similarities are recomputed in float64 for the candidates, and only pairs >= the threshold kept,
so the result is exact for whatever the index returns; candidates are gathered at a radius a
little below the threshold so that float32 rounding cannot drop a pair sitting on it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .rules import IndexRules

# float32 dot products of unit vectors are off by at most a few 1e-7 (d <= 4096); the margin
# keeps every pair whose exact similarity is >= threshold among the candidates.
RADIUS_MARGIN = 1e-4
QUERY_BATCH = 4096
# k-means iterations: 5 kept recall (1.0 at 0.85, 0.9998 at 0.5) and nprobe on the 57k benchmark
# while cutting training from 0.47 s to 0.27 s; calibration catches centroids that are worse.
KMEANS_NITER = 5
PROBES_KEPT = 16  # nearest lists kept per vector from the build (calibration rarely goes past 16)
SCAN_CELLS = 1 << 22  # score-matrix cells per BLAS product (list scan, flat scan): 16 MB of float32
# faiss range_search returns every hit of a batch at once, same folder included: a batch is cut
# so that the vectors its queries probe (an upper bound on its hits) stay below this.
RANGE_BATCH_PROBED = 1 << 22
# Calibration: score-matrix cells per exact product, and same-folder hits kept per product (a
# uniform sample, weighted back; see _choose_nprobe).
CALIBRATION_CELLS = 1 << 21
CALIBRATION_SAME_KEPT = 1 << 12
GPU_K_START, GPU_K_MAX = 128, 2048
CALIBRATION_QUERIES = 512
MAX_PAIRS_DEFAULT = 5_000_000
# A sampled miss this far above the threshold is never tolerated, whatever recall_target says:
# clear matches are the label errors users care about most.
CLEAR_MATCH_MARGIN = 0.05


class SearchTooBroad(RuntimeError):
    """The threshold matches so many cross-folder pairs that the result would be meaningless."""


@dataclass
class SearchResult:
    i: np.ndarray  # int64, i < j, row indices into the vector table
    j: np.ndarray
    sim: np.ndarray  # float64 cosine similarity, >= threshold
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.i.size)


def _faiss():
    import faiss  # deferred: importing faiss costs time that `--collect-only` must not pay

    return faiss


def gpu_count() -> int:
    faiss = _faiss()
    get = getattr(faiss, "get_num_gpus", None)
    try:
        return int(get()) if get else 0
    except Exception:  # a CUDA build with a broken driver: run on the CPU
        return 0


def auto_nlist(n: int) -> int:
    """About 2*sqrt(n) lists, a power of two: measured on the 57k benchmark as the best trade
    between k-means training (which grows with nlist) and scanning (which shrinks with it)."""
    if n < 64:
        return 1
    return int(2 ** round(math.log2(2 * math.sqrt(n))))


def exact_pairs(vectors: np.ndarray, labels: np.ndarray, threshold: float, block: int = 2048) -> SearchResult:
    """Numpy brute force: the reference every index is checked against (float64 similarities).

    Candidates come from float64 products over the upper triangle (blocks of at most
    SCAN_CELLS cells, same-folder hits dropped before they are gathered); the similarity kept is
    `pair_similarity`'s, the very number `find_pairs` reports, so both order ties alike."""
    x = np.asarray(vectors, dtype=np.float64)
    labels = np.asarray(labels)
    n = len(x)
    rows = max(1, min(block, SCAN_CELLS // max(n, 1)))
    out_i, out_j = [], []
    for s in range(0, n, rows):
        sims = x[s : s + rows] @ x[s:].T
        # 1e-9: float64 products of unit vectors are good to ~1e-15; pair_similarity decides
        hit = sims >= threshold - 1e-9
        hit &= labels[s : s + rows, None] != labels[None, s:]
        hit &= np.arange(s, s + len(sims))[:, None] < np.arange(s, n)[None, :]
        r, c = np.nonzero(hit)
        out_i.append(r + s)
        out_j.append(c + s)
    if not out_i:
        return _pack([], [], [])
    i, j = np.concatenate(out_i), np.concatenate(out_j)
    sim = pair_similarity(np.asarray(vectors, dtype=np.float32), i, j)
    ok = sim >= threshold
    return _pack([i[ok]], [j[ok]], [sim[ok]])


def _pack(out_i, out_j, out_s) -> SearchResult:
    if not out_i:
        return SearchResult(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64))
    i, j, s = (np.concatenate(a) for a in (out_i, out_j, out_s))
    order = np.lexsort((j, i, -s))
    return SearchResult(i[order].astype(np.int64), j[order].astype(np.int64), s[order].astype(np.float64))


class _Collector:
    """Turns raw (query, neighbour) candidates into unique cross-folder pairs >= threshold."""

    def __init__(self, vectors: np.ndarray, labels: np.ndarray, threshold: float, max_pairs: int):
        self.vectors, self.labels, self.threshold, self.max_pairs = vectors, labels, threshold, max_pairs
        self.keys: list[np.ndarray] = []
        self.total = 0
        self.candidates = 0

    def add(self, q: np.ndarray, nb: np.ndarray, dist: np.ndarray) -> None:
        self.candidates += q.size
        # faiss's float32 scores only select candidates; result() re-scores them in float64.
        keep = (nb >= 0) & (dist >= self.threshold - RADIUS_MARGIN)
        q, nb = q[keep], nb[keep]
        keep = self.labels[q] != self.labels[nb]
        q, nb = q[keep], nb[keep]
        if not q.size:
            return
        a, b = np.minimum(q, nb), np.maximum(q, nb)
        key = np.unique(a.astype(np.int64) * len(self.vectors) + b)
        self.keys.append(key)
        self.total += key.size
        if self.total > 2 * self.max_pairs:
            self.keys = [np.unique(np.concatenate(self.keys))]
            self.total = self.keys[0].size
            if self.total > self.max_pairs:
                raise SearchTooBroad(
                    f"more than {self.max_pairs:,} cross-folder pairs reach the threshold {self.threshold:g}: "
                    "the threshold is too low for these embeddings (descriptors such as dlib's are not centred; "
                    "different people score about 0.83 there)"
                )

    def result(self) -> SearchResult:
        n = len(self.vectors)
        key = np.unique(np.concatenate(self.keys)) if self.keys else np.zeros(0, np.int64)
        if key.size > self.max_pairs:
            raise SearchTooBroad(
                f"{key.size:,} cross-folder pairs reach the threshold {self.threshold:g}, more than the "
                f"limit of {self.max_pairs:,}: the threshold is too low for these embeddings"
            )
        i, j = key // max(n, 1), key % max(n, 1)
        s = pair_similarity(self.vectors, i, j)
        ok = s >= self.threshold
        return _pack([i[ok]], [j[ok]], [s[ok]])


def pair_similarity(vectors: np.ndarray, i: np.ndarray, j: np.ndarray, block: int = 1024) -> np.ndarray:
    """float64 dot products of rows i[k] and j[k] of float32 `vectors`: the exact similarity
    every reported pair carries. Blocks keep the float64 copies in cache (one big gather of
    all candidates cost 0.8 s at 40k pairs of 512-d, mostly page faults)."""
    out = np.empty(len(i), dtype=np.float64)
    for s in range(0, len(i), block):
        a = vectors[i[s : s + block]].astype(np.float64)
        b = vectors[j[s : s + block]].astype(np.float64)
        out[s : s + block] = np.einsum("ij,ij->i", a, b)
    return out


Emit = Callable[[np.ndarray, np.ndarray, np.ndarray], None]  # (query rows, neighbour rows, float32 scores)


class _bar:
    """A progress bar that may be absent."""

    def __init__(self, progress, total: int, desc: str, unit: str):
        self.bar = progress(total=total, desc=desc, unit=unit) if progress is not None else None

    def update(self, k: int) -> None:
        if self.bar is not None:
            self.bar.update(k)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _stage:
    """A one-step progress bar for a stage with no natural count (k-means, calibration)."""

    def __init__(self, progress, desc: str):
        self.bar = progress(total=1, desc=desc, unit="stage") if progress is not None else None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.update(1)
            self.bar.close()


def _cpu_range(index, radius: float) -> Callable[[np.ndarray], tuple]:
    def run(xb: np.ndarray):
        lims, dist, nb = index.range_search(xb, radius)
        q = np.repeat(np.arange(len(xb), dtype=np.int64), np.diff(lims.astype(np.int64)))
        return q, nb.astype(np.int64), dist

    return run


def _flat_scan(x: np.ndarray, labels: np.ndarray, radius: float, emit: Emit, progress=None,
               cells: int | None = None) -> None:
    """Exact range search of every row against every row, cross-label hits only, by GEMM.

    Replaces `IndexFlatIP.range_search`, which returns every same-folder hit before anything can
    drop it (20,000 near-identical frames: 400 million hits). Rows are taken in label order, so a
    block of queries from one folder skips that folder's columns altogether, and only the upper
    triangle is scored (each pair once). The score matrix never exceeds `cells` cells.
    """
    n = len(x)
    cells = cells or SCAN_CELLS
    order = np.argsort(labels, kind="stable")
    if np.array_equal(order, np.arange(n)):
        xs, ls = x, labels
    else:
        xs, ls = x[order], labels[order]  # one copy, as IndexFlatIP.add made
    change = np.flatnonzero(ls[1:] != ls[:-1]) + 1
    run_end = np.append(change, n)[np.searchsorted(change, np.arange(n), side="right")]
    rows = max(1, min(1024, cells // 4096))
    cols = max(1, cells // rows)
    bar = _bar(progress, n, "searching", "vec")
    for qs in range(0, n, rows):
        qe = min(n, qs + rows)
        lq = ls[qs:qe]
        single = lq[0] == lq[-1]  # sorted: one folder; its own columns (up to its end) are skipped
        start = int(run_end[qs]) if single else qs
        xq = xs[qs:qe]
        for cs in range(start, n, cols):
            ce = min(n, cs + cols)
            sims = xq @ xs[cs:ce].T
            hit = sims >= radius
            if not single:
                hit &= lq[:, None] != ls[None, cs:ce]
                if cs < qe:  # the diagonal block: each pair once
                    hit &= np.arange(qs, qe)[:, None] < np.arange(cs, ce)[None, :]
            r, c = np.nonzero(hit)
            if r.size:
                emit(order[qs + r], order[cs + c], sims[r, c])
        bar.update(qe - qs)
    bar.close()


def _exact_rows(x: np.ndarray, labels: np.ndarray, rows: np.ndarray, radius: float, emit: Emit,
                cells: int | None = None) -> None:
    """Exact cross-label range search of the given rows against all of `x`, in bounded blocks."""
    n = len(x)
    cells = cells or SCAN_CELLS
    qb = max(1, min(len(rows), 1024, cells // 4096))
    cols = max(1, cells // qb)
    for s in range(0, len(rows), qb):
        q = rows[s : s + qb]
        xq = x[q]
        for cs in range(0, n, cols):
            sims = xq @ x[cs : cs + cols].T
            hit = (sims >= radius) & (labels[q][:, None] != labels[None, cs : cs + cols])
            r, c = np.nonzero(hit)
            if r.size:
                emit(q[r], c + cs, sims[r, c])


def _ivf_range(index, x: np.ndarray, labels: np.ndarray, radius: float, emit: Emit, rows: np.ndarray | None = None,
               progress=None, budget: int | None = None) -> None:
    """`IndexIVFFlat.range_search` of `rows` (default: all), same-label hits dropped per batch.

    faiss returns a batch's hits all at once, same folder included, so a batch is cut where the
    vectors its queries probe (sizes of their nprobe nearest lists: an upper bound on their hits)
    would exceed `budget`; a query alone may exceed it, but its hits are at most the table."""
    rows = np.arange(len(x)) if rows is None else rows
    budget = budget or RANGE_BATCH_PROBED
    sizes = np.array([index.invlists.list_size(lst) for lst in range(index.nlist)], dtype=np.int64)
    nprobe = min(index.nprobe, index.nlist)
    bar = _bar(progress, len(rows), "searching", "vec")
    search = _cpu_range(index, radius)
    for s in range(0, len(rows), QUERY_BATCH):
        q = rows[s : s + QUERY_BATCH]
        xq = np.ascontiguousarray(x[q])
        _, near = index.quantizer.search(xq, nprobe)
        cost = np.cumsum(np.where(near >= 0, sizes[np.maximum(near, 0)], 0).sum(axis=1))
        lo = 0
        while lo < len(q):
            base = cost[lo - 1] if lo else 0
            hi = max(lo + 1, int(np.searchsorted(cost, base + budget, side="right")))
            qi, nb, dist = search(xq[lo:hi])
            keep = (nb >= 0) & (labels[q[lo:hi][qi]] != labels[np.maximum(nb, 0)])
            if keep.any():
                emit(q[lo:hi][qi[keep]], nb[keep], dist[keep])
            lo = hi
        bar.update(len(q))
    bar.close()


def _ivf_lists(faiss, index) -> list[tuple[np.ndarray, np.ndarray]]:
    """Zero-copy (vectors, ids) views of every inverted list of a CPU IndexIVFFlat."""
    invlists, d = index.invlists, index.d
    lists = []
    for lst in range(index.nlist):
        size = invlists.list_size(lst)
        if size == 0:
            lists.append((np.zeros((0, d), np.float32), np.zeros(0, np.int64)))
            continue
        codes = faiss.rev_swig_ptr(invlists.get_codes(lst), size * index.code_size)
        ids = faiss.rev_swig_ptr(invlists.get_ids(lst), size)
        lists.append((codes.view(np.float32).reshape(size, d), ids.view(np.int64)))
    return lists


def _list_of(faiss, index, n: int) -> np.ndarray:
    """The inverted list holding each vector (int32), read from the lists themselves."""
    out = np.full(n, -1, dtype=np.int32)
    for lst in range(index.nlist):
        size = index.invlists.list_size(lst)
        if size:
            out[faiss.rev_swig_ptr(index.invlists.get_ids(lst), size).view(np.int64)] = lst
    return out


def _nearest_lists(quantizer, x: np.ndarray, k: int, block: int = 65536) -> np.ndarray:
    """The k nearest lists of every row, nearest first, as int32 (a quarter of faiss's int64
    labels plus float32 distances: this array lives through the whole search)."""
    out = np.empty((len(x), k), dtype=np.int32)
    for s in range(0, len(x), block):
        _, near = quantizer.search(np.ascontiguousarray(x[s : s + block]), k)
        out[s : s + block] = near
    return out


# A list is split by label when its most common label holds at least this share of it: that
# folder's own queries then skip its members, whose hits would all be dropped as same-folder.
SPLIT_SHARE = 0.5
SPLIT_MIN = 64


def _list_scan_chunks(faiss, index, radius: float, xq: np.ndarray, labels: np.ndarray | None = None,
                      progress=None, lists: list | None = None, probes: np.ndarray | None = None,
                      stats: dict | None = None):
    """Yields (query, neighbour, score) candidates list by list; see `_list_scan`.
    `stats["scored_cells"]`: (query, vector) scores computed."""
    scored = 0
    lists = lists if lists is not None else _ivf_lists(faiss, index)
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    nprobe = min(index.nprobe, index.nlist)
    if probes is not None and len(probes) == len(xq) and probes.shape[1] >= nprobe:
        near = np.ascontiguousarray(probes[:, :nprobe])
    else:
        near = _nearest_lists(index.quantizer, xq, nprobe)
    flat = near.ravel()
    valid = flat >= 0
    order = np.argsort(np.where(valid, flat, index.nlist), kind="stable")
    query_of = (order // nprobe)[: int(valid.sum())]
    del order
    bounds = np.concatenate([[0], np.cumsum(np.bincount(flat[valid], minlength=index.nlist))])
    bar = _bar(progress, index.nlist, "searching", "list")
    for lst, (vecs, ids) in enumerate(lists):
        queries = query_of[bounds[lst] : bounds[lst + 1]]
        if queries.size and ids.size:
            parts = [(queries, vecs, ids)]
            if labels is not None and ids.size >= SPLIT_MIN:
                member = labels[ids]
                values, counts = np.unique(member, return_counts=True)
                top = int(np.argmax(counts))
                if counts[top] >= SPLIT_SHARE * ids.size:
                    own = labels[queries] == values[top]
                    rest = member != values[top]
                    parts = [(queries[~own], vecs, ids), (queries[own], vecs[rest], ids[rest])]
            for qs_, vs, ids_ in parts:
                if not qs_.size or not ids_.size:
                    continue
                lab_ids = labels[ids_][None, :] if labels is not None else None
                # bound the score matrix (a crowded list probed by many queries) to ~16 MB
                step = max(1, SCAN_CELLS // ids_.size)
                scored += qs_.size * ids_.size
                for s in range(0, qs_.size, step):
                    q = qs_[s : s + step]
                    sims = xq[q] @ vs.T
                    hit = sims >= radius
                    if labels is not None:
                        hit &= labels[q][:, None] != lab_ids
                    r, c = np.nonzero(hit)
                    if r.size:
                        yield q[r].astype(np.int64), ids_[c].astype(np.int64), sims[r, c]
        bar.update(1)
    bar.close()
    if stats is not None:
        stats["scored_cells"] = stats.get("scored_cells", 0) + scored


def _list_scan(faiss, index, radius: float, labels: np.ndarray | None = None, progress=None,
               lists: list | None = None, probes: np.ndarray | None = None) -> Callable[[np.ndarray], tuple]:
    """IndexIVFFlat range search, run list by list: every query that probes a list is scored
    against that list's vectors in one BLAS product.

    Same candidates as `index.range_search` at the same nprobe (the queries' nprobe nearest
    lists, every vector in them with score >= radius; tests check the two agree), but a GEMM
    per list instead of one dot product per (query, vector): 2.5x faster on 2 cores, where faiss
    scans each query's lists on its own. `labels`: drop same-label hits here (the main search
    never wants them; crowded folders make them millions), and skip a list's dominant folder for
    that folder's own queries. `probes`: the queries' nearest lists, already known (nearest
    first, at least nprobe columns), so the quantizer is not searched again.
    """

    def run(xq: np.ndarray):
        qs, nbs, ds = [], [], []
        for q, nb, d in _list_scan_chunks(faiss, index, radius, xq, labels, progress, lists, probes):
            qs.append(q)
            nbs.append(nb)
            ds.append(d)
        if not qs:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
        return np.concatenate(qs), np.concatenate(nbs), np.concatenate(ds)

    return run


def _gpu_scan(gpu_index, x: np.ndarray, labels: np.ndarray, radius: float, emit: Emit, stats: dict,
              fallback: Callable[[np.ndarray], None], progress=None) -> None:
    """Range search on an index that only has k-NN: widen k until every query reaches below
    radius. Each k-NN call holds at most SCAN_CELLS results, same-label hits are dropped before
    they are emitted, and queries that still saturate the largest k (a crowd bigger than it) go
    to `fallback(rows)`, a bounded CPU search."""
    n = len(x)
    bar = _bar(progress, n, "searching", "vec")
    for s in range(0, n, QUERY_BATCH):
        todo = np.arange(s, min(n, s + QUERY_BATCH))
        k = GPU_K_START
        while todo.size:
            k = min(k, gpu_index.ntotal)
            step = max(1, SCAN_CELLS // k)
            saturated_all = []
            for t in range(0, todo.size, step):
                rows = todo[t : t + step]
                dist, nb = gpu_index.search(np.ascontiguousarray(x[rows]), k)
                saturated = (dist[:, -1] >= radius) & (k < gpu_index.ntotal)
                hit = (dist >= radius) & ~saturated[:, None] & (nb >= 0)
                hit &= labels[rows][:, None] != labels[np.maximum(nb, 0)]
                r, c = np.nonzero(hit)
                if r.size:
                    emit(rows[r], nb[r, c].astype(np.int64), dist[r, c].astype(np.float32))
                saturated_all.append(rows[saturated])
            todo = np.concatenate(saturated_all)
            if todo.size and k >= GPU_K_MAX:
                stats["cpu_fallback_queries"] = stats.get("cpu_fallback_queries", 0) + int(todo.size)
                fallback(todo)
                break
            k *= 4
        bar.update(min(QUERY_BATCH, n - s))
    bar.close()


def _training_rows(labels: np.ndarray, nlist: int, per_centroid: int, seed: int) -> np.ndarray | None:
    """Rows to train k-means on, at most max(64, target / 64) per folder (target: the
    per_centroid * nlist points faiss subsamples to), more if the table is too small for that.

    k-means spends centroids where the points are: a crowd of 20,000 near-identical frames in a
    table of 40,000 drew half of 512 centroids, so every frame's neighbours were spread over
    256 lists and calibration (rightly) asked for nprobe=256: 470M scores, 3x the flat search.
    Capped, the crowd gets a few lists, which the list scan skips for its own queries. Folders
    below the cap are sampled as before. None: no folder is over the cap, train on everything.
    """
    _, inv, counts = np.unique(labels, return_inverse=True, return_counts=True)
    n = len(labels)
    need = min(n, 8 * nlist)  # faiss refuses fewer points than centroids; 8 each is rough but fine
    cap = max(64, per_centroid * nlist // 64)
    lo, hi = 1, int(counts.max())
    while lo < hi:  # the smallest per-folder cap that still leaves `need` rows
        mid = (lo + hi) // 2
        if np.minimum(counts, mid).sum() >= need:
            hi = mid
        else:
            lo = mid + 1
    cap = max(cap, lo)
    if counts.max() <= cap:
        return None
    key = np.random.default_rng(seed).random(n)
    order = np.lexsort((key, inv))
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(n) - start[inv[order]]
    return np.sort(order[rank < cap])


def find_pairs(
    vectors: np.ndarray,
    labels: np.ndarray,
    threshold: float,
    rules: IndexRules | None = None,
    progress: Callable[..., Any] | None = None,
    max_pairs: int = MAX_PAIRS_DEFAULT,
    seed: int = 0,
    ivf_scan: str | None = None,
) -> SearchResult:
    """Every pair of vectors with different labels and cosine similarity >= threshold.

    `vectors` must be unit length (float32); `labels` gives each row's identity.
    `ivf_scan` (default: `rules.scan`): "lists" (list-major BLAS scan of the IVF on the CPU) or
    "faiss" (`IndexIVFFlat.range_search`); both find the same pairs.

    Memory does not grow with the size of a folder: every stage works in blocks of bounded
    size and drops same-folder hits before gathering them, so one folder of a million identical
    frames costs time, not memory. Cross-folder pairs are bounded by `max_pairs`
    (SearchTooBroad).
    """
    rules = rules or IndexRules()
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    labels = np.asarray(labels)
    n, d = x.shape if x.ndim == 2 else (0, 0)
    info: dict[str, Any] = {"vectors": n, "dim": d, "threshold": threshold}
    timings: dict[str, float] = {}
    info["timings"] = timings
    if n == 0 or len(np.unique(labels)) < 2:
        info.update(index="none", device="cpu")
        empty = np.zeros(0, np.int64)
        return SearchResult(empty, empty.copy(), np.zeros(0), info)

    faiss = _faiss()
    radius = float(threshold) - RADIUS_MARGIN
    kind = rules.type
    if kind == "auto":
        kind = "flat" if n < rules.flat_below else "ivf"
    use_gpu = rules.gpu if rules.gpu is not None else gpu_count() > 0
    if use_gpu and gpu_count() == 0:
        raise RuntimeError("index.gpu is true in the rules, but faiss sees no GPU")
    info["device"] = "gpu" if use_gpu else "cpu"
    collector = _Collector(x, labels, float(threshold), max_pairs)

    t0 = time.perf_counter()
    cpu_index = None
    if kind == "flat":
        if use_gpu:
            cpu_index = faiss.IndexFlatIP(d)
            cpu_index.add(x)
        info.update(index="IndexFlatIP")
    else:
        # faiss wants >= 39 training points per list; more lists than that only add noise.
        nlist = min(rules.nlist or auto_nlist(n), max(1, n // 39))
        quantizer = faiss.IndexFlatIP(d)
        cpu_index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        # k-means on a subsample: training dominates the cost on CPUs and the lists only need to
        # be roughly balanced, not optimal (see benchmarks/ for the measurement).
        cpu_index.cp.max_points_per_centroid = 32
        cpu_index.cp.niter = KMEANS_NITER
        cpu_index.cp.seed = seed
        info.update(index="IndexIVFFlat", nlist=nlist)
    gpu_index, res = None, None
    if use_gpu:
        res = faiss.StandardGpuResources()
        gpu_index = faiss.index_cpu_to_gpu(res, 0, cpu_index)
    list_scan = kind == "ivf" and gpu_index is None and (ivf_scan or rules.scan) == "lists"
    probes = None
    if kind == "ivf":
        with _stage(progress, f"training IVF (nlist={info['nlist']})"):
            rows = _training_rows(labels, info["nlist"], cpu_index.cp.max_points_per_centroid, seed)
            (gpu_index or cpu_index).train(x if rows is None else np.ascontiguousarray(x[rows]))
            if list_scan:
                # One quantizer search serves both the add (nearest list) and the list scan (the
                # nearest nprobe lists of every vector), instead of one each.
                probes = _nearest_lists(cpu_index.quantizer, x, min(PROBES_KEPT, cpu_index.nlist))
                assign = np.ascontiguousarray(probes[:, 0], dtype=np.int64)
                cpu_index.add_core(n, faiss.swig_ptr(x), None, faiss.swig_ptr(assign))
            else:
                (gpu_index or cpu_index).add(x)
        if gpu_index is not None:
            cpu_index = faiss.index_gpu_to_cpu(gpu_index)
    timings["build"] = time.perf_counter() - t0

    stats: dict[str, Any] = {}
    lists = _ivf_lists(faiss, cpu_index) if list_scan else None

    if kind == "ivf":
        t0 = time.perf_counter()
        with _stage(progress, "calibrating nprobe"):
            list_of = probes[:, 0] if probes is not None else _list_of(faiss, cpu_index, n)
            nprobe, calib = _choose_nprobe(faiss, cpu_index, gpu_index, x, labels, radius, rules, seed,
                                           list_of=list_of, probes=probes)
        info.update(nprobe=nprobe, calibration=calib)
        timings["calibrate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    emit = collector.add
    if gpu_index is not None:
        if kind == "flat":
            def fallback(rows):
                _exact_rows(x, labels, rows, radius, emit)
        else:
            def fallback(rows):
                _ivf_range(cpu_index, x, labels, radius, emit, rows=rows)
        _gpu_scan(gpu_index, x, labels, radius, emit, stats, fallback, progress)
    elif kind == "flat":
        _flat_scan(x, labels, radius, emit, progress)
    elif list_scan:
        info["scan"] = "lists"
        for q, nb, dist in _list_scan_chunks(faiss, cpu_index, radius, x, labels=labels, progress=progress,
                                             lists=lists, probes=probes, stats=stats):
            emit(q, nb, dist)
    else:
        _ivf_range(cpu_index, x, labels, radius, emit, progress=progress)
    result = collector.result()
    timings["search"] = time.perf_counter() - t0
    info["candidates"] = collector.candidates
    info.update(stats)
    result.info = info
    return result


def _set_nprobe(faiss, cpu_index, gpu_index, nprobe: int) -> None:
    cpu_index.nprobe = nprobe
    if gpu_index is not None:
        faiss.GpuParameterSpace().set_index_parameter(gpu_index, "nprobe", nprobe)


def _choose_nprobe(faiss, cpu_index, gpu_index, x, labels, radius, rules: IndexRules, seed,
                   list_of: np.ndarray, probes: np.ndarray | None = None,
                   cells: int | None = None, same_kept: int | None = None) -> tuple[int, dict]:
    """Smallest nprobe whose recall on a random sample of queries reaches `recall_target`,
    with no sampled cross-folder miss at or above threshold + CLEAR_MATCH_MARGIN.

    No search is run: an IVF search at nprobe p finds a true pair (a, b) iff b's list is among
    a's p nearest lists or a's list among b's (every vector is a query). So the sample's exact
    neighbours are found by GEMM over blocks of the table, and for each the smallest such p is
    counted into a histogram; recall at p is a prefix sum. a's ranking of lists is computed to
    `a_cols` places; b's comes from `probes` (PROBES_KEPT places, kept from the build) or from
    the quantizer for just the hit columns of a block. A pair found only beyond the known places
    counts as missed: conservative. nprobe == nlist probes every list and is exact.

    Same-folder neighbours count too: the index cannot tell folders apart, and they are far
    more numerous than cross-folder pairs, so the estimate is tighter. But a crowded folder
    gives millions of them (and each costs a row of probes), so per block at most `same_kept`
    of them are drawn uniformly without replacement and weighted by count / drawn: an unbiased
    estimate whose memory does not depend on the crowd's size. Cross-folder neighbours
    are never sampled; they also decide the clear-match rule. Memory: one block of `cells`
    scores and its masks, plus (sample x nlist) ranks.
    """
    nlist = cpu_index.nlist
    if rules.nprobe:
        nprobe = min(rules.nprobe, nlist)
        _set_nprobe(faiss, cpu_index, gpu_index, nprobe)
        return nprobe, {"mode": "fixed"}
    n = len(x)
    cells, same_kept = cells or CALIBRATION_CELLS, same_kept or CALIBRATION_SAME_KEPT
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, size=min(CALIBRATION_QUERIES, n), replace=False))
    m = len(sample)
    xq = np.ascontiguousarray(x[sample])
    lq = labels[sample]
    a_cols = min(nlist, 1024)
    _, near_q = cpu_index.quantizer.search(xq, a_cols)
    rank_q = np.full((m, nlist), a_cols, dtype=np.int16)  # a's place of each list (a_cols: unknown)
    rows, cols_ = np.nonzero(near_q >= 0)
    rank_q[rows, near_q[rows, cols_]] = cols_
    b_cols = probes.shape[1] if probes is not None else min(nlist, PROBES_KEPT)
    unknown = max(a_cols, b_cols)  # first_p - 1 for a pair not found at any known place
    hist = np.zeros(unknown + 2, dtype=np.float64)
    clear_need = 0  # the smallest nprobe that finds every clear cross-folder match
    clear = radius + RADIUS_MARGIN + CLEAR_MATCH_MARGIN
    total_count = 0
    block = max(1, cells // m)
    for cs in range(0, n, block):
        ce = min(n, cs + block)
        sims = xq @ x[cs:ce].T
        hit = sims >= radius
        own = (sample >= cs) & (sample < ce)
        hit[np.flatnonzero(own), sample[own] - cs] = False  # a vector is not its own neighbour
        cross = lq[:, None] != labels[None, cs:ce]
        r_c, c_c = np.nonzero(hit & cross)
        hit &= ~cross
        n_same = int(np.count_nonzero(hit))
        total_count += n_same + r_c.size
        if n_same <= same_kept:
            r_s, c_s = np.nonzero(hit)
            w_s = 1.0
        else:
            where = np.flatnonzero(hit)  # at most `cells` int64
            r_s, c_s = np.divmod(where[rng.choice(where.size, same_kept, replace=False)], hit.shape[1])
            w_s = n_same / same_kept
            del where
        r = np.concatenate([r_c, r_s])
        c = np.concatenate([c_c, c_s])
        weights = np.concatenate([np.ones(r_c.size), np.full(r_s.size, w_s)])
        is_clear = np.zeros(r.size, dtype=bool)
        is_clear[: r_c.size] = sims[r_c, c_c] >= clear
        # a low threshold makes every cell a cross-folder hit: b's probes in chunks
        for k in range(0, r.size, 1 << 16):
            rk, bk = r[k : k + (1 << 16)], c[k : k + (1 << 16)] + cs
            pos_ab = rank_q[rk, list_of[bk]]
            if probes is not None:
                b_probes = probes[bk]
            else:
                ub, inv = np.unique(bk, return_inverse=True)
                _, near_b = cpu_index.quantizer.search(np.ascontiguousarray(x[ub]), b_cols)
                b_probes = near_b[inv]
            match = b_probes == list_of[sample[rk]][:, None]
            pos_ba = np.where(match.any(axis=1), match.argmax(axis=1), unknown)
            first_p = np.minimum(np.minimum(pos_ab, pos_ba), unknown) + 1
            hist += np.bincount(first_p, weights=weights[k : k + (1 << 16)], minlength=hist.size)
            ck = is_clear[k : k + (1 << 16)]
            if ck.any():
                clear_need = max(clear_need, int(first_p[ck].max()))
    total = hist.sum()
    found = np.cumsum(hist)
    nprobe = min(4, nlist)
    tried = {}
    while True:
        if nprobe >= nlist:
            recall, clear_ok = 1.0, True  # every list probed: exact
        else:
            recall = float(found[min(nprobe, unknown)] / total) if total else 1.0
            clear_ok = clear_need <= min(nprobe, unknown)
        tried[nprobe] = recall
        if (recall >= rules.recall_target and clear_ok) or nprobe >= nlist:
            break
        nprobe = min(nprobe * 2, nlist)
    _set_nprobe(faiss, cpu_index, gpu_index, nprobe)
    return nprobe, {"mode": "calibrated", "sample_queries": m,
                    "sample_neighbours": total_count, "recall_by_nprobe": tried}
