"""One similarity search over the whole dataset: every cross-folder pair at or above a threshold.

This is a range search, not a top-k search: a vector in a crowded folder (video frames, bursts)
has all its k nearest neighbours in its own folder, so a top-k recipe never sees its cross-folder
match. Here every neighbour with similarity >= the radius is returned, however many there are.

* `flat`: exact `IndexFlatIP` range search (BLAS); chosen below `flat_below` vectors.
* `ivf`: `IndexIVFFlat` with inner product. `nprobe` is calibrated in the same run: a sample of
  queries is searched exactly and with the IVF index, and the smallest nprobe that reaches the
  rules' recall target on it (and misses no sampled clear match) is used.
* On a GPU (faiss-gpu with a visible device) the same indexes run there; GPU indexes have no range
  search, so a k-NN search is widened until it reaches below the radius for every query, and the
  few queries that still saturate the largest k fall back to the CPU range search.

Similarities are recomputed in float64 for the candidates, and only pairs >= the threshold kept,
so the result is exact for whatever the index returns; candidates are gathered at a radius a
little below the threshold so that float32 rounding cannot drop a pair sitting on it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

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
SCAN_CELLS = 1 << 22  # score-matrix cells per BLAS product in the list scan
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
    """Numpy brute force: the reference every index is checked against (float64 similarities)."""
    x = np.asarray(vectors, dtype=np.float64)
    out_i, out_j, out_s = [], [], []
    for s in range(0, len(x), block):
        sims = x[s : s + block] @ x.T
        r, c = np.nonzero(sims >= threshold)
        r = r + s
        keep = (r < c) & (labels[r] != labels[c])
        out_i.append(r[keep])
        out_j.append(c[keep])
        out_s.append(sims[r[keep] - s, c[keep]])
    return _pack(out_i, out_j, out_s)


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


def _range_batches(search: Callable[[np.ndarray], tuple], x: np.ndarray, collector: _Collector, progress, desc: str):
    starts = range(0, len(x), QUERY_BATCH)
    it: Iterable[int] = starts
    bar = None
    if progress is not None:
        bar = progress(total=len(x), desc=desc, unit="vec")
    for s in it:
        q_idx, nb, dist = search(x[s : s + QUERY_BATCH])
        collector.add(q_idx + s, nb, dist)
        if bar is not None:
            bar.update(min(QUERY_BATCH, len(x) - s))
    if bar is not None:
        bar.close()


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


def _nearest_lists(quantizer, x: np.ndarray, k: int, block: int = 65536) -> np.ndarray:
    """The k nearest lists of every row, nearest first, as int32 (a quarter of faiss's int64
    labels plus float32 distances: this array lives through the whole search)."""
    out = np.empty((len(x), k), dtype=np.int32)
    for s in range(0, len(x), block):
        _, near = quantizer.search(x[s : s + block], k)
        out[s : s + block] = near
    return out


def _list_scan(faiss, index, radius: float, labels: np.ndarray | None = None, progress=None,
               lists: list | None = None, probes: np.ndarray | None = None) -> Callable[[np.ndarray], tuple]:
    """IndexIVFFlat range search, run list by list: every query that probes a list is scored
    against that list's vectors in one BLAS product.

    Same candidates as `index.range_search` at the same nprobe (the queries' nprobe nearest
    lists, every vector in them with score >= radius; tests check the two agree), but a GEMM
    per list instead of one dot product per (query, vector): 2.5x faster on 2 cores, where faiss
    scans each query's lists on its own. `labels`: drop same-label hits here (the main search
    never wants them; crowded folders make them millions). `probes`: the queries' nearest lists,
    already known (nearest first, at least nprobe columns), so the quantizer is not searched again.
    """
    lists = lists if lists is not None else _ivf_lists(faiss, index)

    def run(xq: np.ndarray):
        xq = np.ascontiguousarray(xq, dtype=np.float32)
        nprobe = min(index.nprobe, index.nlist)
        if probes is not None and len(probes) == len(xq) and probes.shape[1] >= nprobe:
            near = np.ascontiguousarray(probes[:, :nprobe])
        else:
            _, near = index.quantizer.search(xq, nprobe)
        flat = near.ravel()
        valid = flat >= 0
        order = np.argsort(np.where(valid, flat, index.nlist), kind="stable")
        query_of = (order // nprobe)[: int(valid.sum())]
        bounds = np.concatenate([[0], np.cumsum(np.bincount(flat[valid], minlength=index.nlist))])
        qs, nbs, ds = [], [], []
        bar = progress(total=index.nlist, desc="searching", unit="list") if progress is not None else None
        for lst, (vecs, ids) in enumerate(lists):
            queries = query_of[bounds[lst] : bounds[lst + 1]]
            if queries.size and ids.size:
                # bound the score matrix (a crowded list probed by many queries) to ~16 MB
                step = max(1, SCAN_CELLS // ids.size)
                for s in range(0, queries.size, step):
                    q = queries[s : s + step]
                    sims = xq[q] @ vecs.T
                    r, c = np.nonzero(sims >= radius)
                    if labels is not None:
                        cross = labels[q[r]] != labels[ids[c]]
                        r, c = r[cross], c[cross]
                    qs.append(q[r])
                    nbs.append(ids[c])
                    ds.append(sims[r, c])
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        if not qs:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
        return np.concatenate(qs).astype(np.int64), np.concatenate(nbs).astype(np.int64), np.concatenate(ds)

    return run


def _exact_range(x: np.ndarray, radius: float, block: int = 16384) -> Callable[[np.ndarray], tuple]:
    """Brute-force range search of a few queries by GEMM over blocks of `x` (no index: an
    IndexFlatIP would copy every vector once more just to answer a calibration sample)."""

    def run(xq: np.ndarray):
        qs, nbs, ds = [], [], []
        for s in range(0, len(x), block):
            sims = xq @ x[s : s + block].T
            r, c = np.nonzero(sims >= radius)
            qs.append(r.astype(np.int64))
            nbs.append(c.astype(np.int64) + s)
            ds.append(sims[r, c])
        return np.concatenate(qs), np.concatenate(nbs), np.concatenate(ds)

    return run


def _gpu_range(gpu_index, cpu_index, radius: float, stats: dict) -> Callable[[np.ndarray], tuple]:
    """Range search on an index that only has k-NN: widen k until every query reaches below radius."""

    def run(xb: np.ndarray):
        qs, nbs, ds = [], [], []
        todo = np.arange(len(xb))
        k = GPU_K_START
        while todo.size:
            k = min(k, gpu_index.ntotal)
            dist, nb = gpu_index.search(np.ascontiguousarray(xb[todo]), k)
            saturated = (dist[:, -1] >= radius) & (k < gpu_index.ntotal)
            done = ~saturated
            hit = (dist >= radius) & done[:, None]
            r, c = np.nonzero(hit)
            qs.append(todo[r])
            nbs.append(nb[r, c])
            ds.append(dist[r, c])
            todo = todo[saturated]
            if todo.size and k >= GPU_K_MAX:
                stats["cpu_fallback_queries"] = stats.get("cpu_fallback_queries", 0) + int(todo.size)
                q, n, dd = _cpu_range(cpu_index, radius)(np.ascontiguousarray(xb[todo]))
                qs.append(todo[q])
                nbs.append(n)
                ds.append(dd)
                break
            k *= 4
        return (np.concatenate(qs).astype(np.int64), np.concatenate(nbs).astype(np.int64),
                np.concatenate(ds).astype(np.float32))

    return run


def _sample_recall(found: list[set], truth: list[set]) -> float:
    total = sum(len(t) for t in truth)
    if total == 0:
        return 1.0
    return sum(len(f & t) for f, t in zip(found, truth)) / total


def _neighbour_sets(search: Callable, xq: np.ndarray) -> list[set]:
    q, nb, _ = search(xq)
    sets: list[set] = [set() for _ in range(len(xq))]
    for a, b in zip(q.tolist(), nb.tolist()):
        sets[a].add(b)
    return sets


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
    if kind == "flat":
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
            (gpu_index or cpu_index).train(x)
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

    def searcher():
        if gpu_index is not None:
            return _gpu_range(gpu_index, cpu_index, radius, stats)
        if list_scan:
            return _list_scan(faiss, cpu_index, radius, lists=lists)
        return _cpu_range(cpu_index, radius)

    if kind == "ivf":
        t0 = time.perf_counter()
        with _stage(progress, "calibrating nprobe"):
            nprobe, calib = _choose_nprobe(faiss, cpu_index, gpu_index, x, labels, radius, rules, searcher, seed)
        info.update(nprobe=nprobe, calibration=calib)
        timings["calibrate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if list_scan:
        info["scan"] = "lists"
        q, nb, dist = _list_scan(faiss, cpu_index, radius, labels=labels, progress=progress, lists=lists,
                                 probes=probes)(x)
        collector.add(q, nb, dist)
    else:
        _range_batches(searcher(), x, collector, progress, "searching")
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


def _choose_nprobe(faiss, cpu_index, gpu_index, x, labels, radius, rules: IndexRules, searcher, seed) -> tuple[int, dict]:
    """Smallest nprobe whose recall on a random sample of queries reaches `recall_target`,
    with no sampled cross-folder miss at or above threshold + CLEAR_MATCH_MARGIN.

    The sample's truth comes from exact search in the same run. Every neighbour counts, same
    folder included: the index cannot tell folders apart, and they are far more numerous than
    cross-folder pairs, so the estimate is tighter. A pair (a, b) is found when the search from
    a probes b's list *or* the search from b probes a's list, since every vector is a query.
    """
    nlist = cpu_index.nlist
    if rules.nprobe:
        nprobe = min(rules.nprobe, nlist)
        _set_nprobe(faiss, cpu_index, gpu_index, nprobe)
        return nprobe, {"mode": "fixed"}
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(len(x), size=min(CALIBRATION_QUERIES, len(x)), replace=False))
    xq = np.ascontiguousarray(x[sample])
    truth = _neighbour_sets(_exact_range(x, radius), xq)
    total = sum(len(t) for t in truth)
    _, own_list = cpu_index.quantizer.search(xq, 1)
    nprobe = min(4, nlist)
    tried = {}
    while True:
        _set_nprobe(faiss, cpu_index, gpu_index, nprobe)
        found = _neighbour_sets(searcher(), xq)
        missed = [(a, b) for a in range(len(xq)) for b in truth[a] - found[a]]
        n_missed, clear_missed = 0, 0
        if missed:
            # The reverse search from b reaches a when a's list is among b's nprobe nearest lists.
            a_idx = np.array([a for a, _ in missed])
            b_idx = np.array([b for _, b in missed])
            _, probes = cpu_index.quantizer.search(np.ascontiguousarray(x[b_idx]), nprobe)
            lost = ~(probes == own_list[a_idx]).any(axis=1)
            n_missed = int(lost.sum())
            a_lost, b_lost = a_idx[lost], b_idx[lost]
            sims = np.einsum("ij,ij->i", xq[a_lost], x[b_lost])
            cross = labels[sample[a_lost]] != labels[b_lost]
            clear_missed = int((cross & (sims >= radius + RADIUS_MARGIN + CLEAR_MATCH_MARGIN)).sum())
        recall = 1.0 - n_missed / total if total else 1.0
        tried[nprobe] = recall
        if (recall >= rules.recall_target and clear_missed == 0) or nprobe >= nlist:
            break
        nprobe = min(nprobe * 2, nlist)
    return nprobe, {"mode": "calibrated", "sample_queries": len(sample),
                    "sample_neighbours": total, "recall_by_nprobe": tried}
