"""`IndexIVFFlat` with inner product, above `index.flat_below` vectors.

`nprobe` is calibrated in the same run: the exact neighbours of a sample of queries are found by
GEMM, and for each the smallest nprobe at which the index finds it is read off the lists'
rankings; the smallest nprobe that reaches the rules' recall target on the sample (and misses no
sampled clear match) is used. Candidates come from a list-by-list BLAS scan (`index.scan:
lists`, units: inverted lists) or faiss's own range_search (`index.scan: faiss`, units: query
rows).
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal, Protocol, overload

import numpy as np
from numpy.typing import NDArray

from ..arrays import nonzero
from ..index_rules import IndexRules
from . import (CLEAR_MATCH_MARGIN, DEFAULT_TUNING, RADIUS_MARGIN, BackendRequest, BackendSpec, Emit, Place, Progress,
               SearchTuning, _bar, _faiss, _span, _stage, register)
from . import bounds as _bounds

if TYPE_CHECKING:
    from ..context import RunContext


# (query rows, neighbour rows, float32 scores); faiss indexes are untyped (Any) throughout
_Candidates = tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float32]]


class _InvertedLists(Protocol):
    """(vectors, ids) of list l: faiss's own lists (a list) or the table's (`_TableLists`)."""

    def __getitem__(self, lst: int, /) -> tuple[np.ndarray, np.ndarray]: ...


def auto_nlist(n: int) -> int:
    """About 2*sqrt(n) lists, a power of two: measured on the 57k benchmark as the best trade
    between k-means training (which grows with nlist) and scanning (which shrinks with it)."""
    if n < 64:
        return 1
    return int(2 ** round(math.log2(2 * math.sqrt(n))))


def _cpu_range(index: Any, radius: float) -> Callable[[np.ndarray], _Candidates]:
    def run(xb: np.ndarray) -> _Candidates:
        lims, dist, nb = index.range_search(xb, radius)
        q = np.repeat(np.arange(len(xb), dtype=np.int64), np.diff(lims.astype(np.int64)))
        return q, nb.astype(np.int64), dist

    return run



def _ivf_range(index: Any, x: np.ndarray, labels: np.ndarray, radius: float, emit: Emit, rows: np.ndarray | None = None,
               progress: Progress | None = None, budget: int | None = None,
               tuning: SearchTuning = DEFAULT_TUNING) -> None:
    """`IndexIVFFlat.range_search` of `rows` (default: all), same-label hits dropped per batch.

    faiss returns a batch's hits all at once, same folder included, so a batch is cut where the
    vectors its queries probe (sizes of their nprobe nearest lists: an upper bound on their hits)
    would exceed `budget`; a query alone may exceed it, but its hits are at most the table."""
    rows = np.arange(len(x)) if rows is None else rows
    budget = budget or tuning.range_batch_probed
    sizes = np.array([index.invlists.list_size(lst) for lst in range(index.nlist)], dtype=np.int64)
    nprobe = min(index.nprobe, index.nlist)
    bar = _bar(progress, len(rows), "searching", "vec")
    search = _cpu_range(index, radius)
    for s in range(0, len(rows), tuning.query_batch):
        q = rows[s : s + tuning.query_batch]
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


def _ivf_lists(faiss: ModuleType, index: Any) -> list[tuple[np.ndarray, np.ndarray]]:
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


class _TableLists:
    """The inverted lists as rows of the table: `lists[l]` is (vectors, ids) of list l, the
    vectors gathered from the table when asked (one list at a time is in memory)."""

    def __init__(self, x: np.ndarray, assign: np.ndarray, nlist: int):
        self.x = x
        self.order = np.argsort(assign, kind="stable").astype(np.int64)
        self.bounds = np.concatenate([[0], np.cumsum(np.bincount(assign, minlength=nlist))])

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def size(self, lst: int) -> int:
        return int(self.bounds[lst + 1] - self.bounds[lst])

    def __getitem__(self, lst: int) -> tuple[np.ndarray, np.ndarray]:
        ids = self.order[self.bounds[lst] : self.bounds[lst + 1]]
        return self.x[ids], ids


def _list_of(faiss: ModuleType, index: Any, n: int) -> np.ndarray:
    """The inverted list holding each vector (int32), read from the lists themselves."""
    out = np.full(n, -1, dtype=np.int32)
    for lst in range(index.nlist):
        size = index.invlists.list_size(lst)
        if size:
            out[faiss.rev_swig_ptr(index.invlists.get_ids(lst), size).view(np.int64)] = lst
    return out


@overload
def _nearest_lists(quantizer: Any, x: np.ndarray, k: int, block: int = ..., scores: Literal[False] = ..., *,
                   context: RunContext | None = ...) -> NDArray[np.int32]: ...


@overload
def _nearest_lists(quantizer: Any, x: np.ndarray, k: int, block: int = ..., *, scores: Literal[True],
                   context: RunContext | None = ...) -> tuple[NDArray[np.int32], NDArray[np.float32]]: ...


def _nearest_lists(quantizer: Any, x: np.ndarray, k: int, block: int = 65536, scores: bool = False, *,
                   context: RunContext | None = None
                   ) -> NDArray[np.int32] | tuple[NDArray[np.int32], NDArray[np.float32]]:
    """The k nearest lists of every row, nearest first, as int32 (a quarter of faiss's int64
    labels plus float32 distances: this array lives through the whole search). scores=True: also
    the quantizer's float32 products with them (the list bounds are proved from these).
    `context`: the run's (its memory budget is checkpointed between blocks); None: no budget."""
    out = np.empty((len(x), k), dtype=np.int32)
    dist = np.empty((len(x), k), dtype=np.float32) if scores else None
    for s in range(0, len(x), block):
        if context is not None:
            context.checkpoint()  # the memory budget, between blocks
        d, near = quantizer.search(np.ascontiguousarray(x[s : s + block]), k)
        out[s : s + block] = near
        if dist is not None:
            dist[s : s + block] = d
    return (out, dist) if dist is not None else out  # dist: only with scores



def _list_scan_chunks(faiss: ModuleType, index: Any, radius: float, xq: np.ndarray, labels: np.ndarray | None = None,
                      progress: Progress | None = None, lists: _InvertedLists | None = None,
                      probes: np.ndarray | None = None, stats: dict[str, Any] | None = None,
                      tuning: SearchTuning = DEFAULT_TUNING, start_list: int = 0, end_list: int | None = None,
                      bounds: _bounds.ScanBounds | None = None,
                      context: RunContext | None = None) -> Iterator[_Candidates]:
    """Yields (query, neighbour, score) candidates list by list; see `_list_scan`.
    `stats["scored_cells"]`: (query, vector) scores computed. `start_list`/`end_list`: only
    these lists are scanned, each against every query that probes it. `bounds`: skip what the
    caps of bounds.py prove empty (same candidates). `context`: the run's, whose memory budget is
    checkpointed between lists (None: no budget; a range run elsewhere has none)."""
    scored = 0
    lists = lists if lists is not None else _ivf_lists(faiss, index)
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    nprobe = min(index.nprobe, index.nlist)
    list_caps = bounds.lists if bounds is not None else None  # bounds
    near_scores = None
    if probes is not None and len(probes) == len(xq) and probes.shape[1] >= nprobe:
        near = np.ascontiguousarray(probes[:, :nprobe])
        if list_caps is not None and len(list_caps.scores) == len(xq):
            near_scores = list_caps.scores[:, :nprobe]
    elif list_caps is not None:
        near, near_scores = _nearest_lists(index.quantizer, xq, nprobe, scores=True, context=context)
    else:
        near = _nearest_lists(index.quantizer, xq, nprobe, context=context)
    first, last = _span(index.nlist, start_list, end_list)
    # --- bounds: a probed list whose cap excludes the query is not scanned for it ---
    if near_scores is not None and bounds is not None:  # (near_scores: only with bounds)
        near = bounds.skip_probes(near, near_scores, stats, span=(first, last))
    caps = bounds if bounds is not None and bounds.folder_caps else None
    # --- end bounds ---
    # ranges: only the probes of lists in [first, last) are inverted (a range of 1/8 of the lists
    # sorted 1M x 8 probes in 0.08 s instead of 1.3 s); same queries, same order per list
    flat = near.ravel()
    where = np.flatnonzero((flat >= first) & (flat < last))
    inside = flat[where]
    query_of = where[np.argsort(inside, kind="stable")] // nprobe
    offsets = np.concatenate([[0], np.cumsum(np.bincount(inside, minlength=index.nlist))])
    del where, inside
    bar = _bar(progress, last - first, "searching", "list")
    for lst in range(first, last):
        if context is not None:
            context.checkpoint()  # the memory budget, between lists
        vecs, ids = lists[lst]
        queries = query_of[offsets[lst] : offsets[lst + 1]]
        # --- bounds: the list through per-folder caps ---
        if queries.size and ids.size and caps is not None and labels is not None:
            fcaps = caps.of_list(vecs, ids, queries.size)
            if fcaps is not None:
                yield from _bounds.caps_scan(xq, queries, labels, vecs, ids, fcaps, radius, tuning.scan_cells,
                                             stats if stats is not None else {})
                bar.update(1)
                continue
        # --- end bounds ---
        if queries.size and ids.size:
            parts = [(queries, vecs, ids)]
            if labels is not None and ids.size >= tuning.split_min:
                member = labels[ids]
                values, counts = np.unique(member, return_counts=True)
                top = int(np.argmax(counts))
                if counts[top] >= tuning.split_share * ids.size:
                    own = labels[queries] == values[top]
                    rest = member != values[top]
                    parts = [(queries[~own], vecs, ids), (queries[own], vecs[rest], ids[rest])]
            for qs_, vs, ids_ in parts:
                if not qs_.size or not ids_.size:
                    continue
                lab_ids = labels[ids_][None, :] if labels is not None else None
                # bound the score matrix (a crowded list probed by many queries) to ~16 MB
                step = max(1, tuning.scan_cells // ids_.size)
                scored += qs_.size * ids_.size
                for s in range(0, qs_.size, step):
                    q = qs_[s : s + step]
                    sims = xq[q] @ vs.T
                    hit = sims >= radius
                    if labels is not None:
                        hit &= labels[q][:, None] != lab_ids
                    r, c = nonzero(hit)
                    if r.size:
                        yield q[r].astype(np.int64), ids_[c].astype(np.int64), sims[r, c]
        bar.update(1)
    bar.close()
    if stats is not None:
        stats["scored_cells"] = stats.get("scored_cells", 0) + scored


def _list_scan(faiss: ModuleType, index: Any, radius: float, labels: np.ndarray | None = None,
               progress: Progress | None = None, lists: _InvertedLists | None = None,
               probes: np.ndarray | None = None, context: RunContext | None = None
               ) -> Callable[[np.ndarray], _Candidates]:
    """IndexIVFFlat range search, run list by list: every query that probes a list is scored
    against that list's vectors in one BLAS product.

    Same candidates as `index.range_search` at the same nprobe (the queries' nprobe nearest
    lists, every vector in them with score >= radius; tests check the two agree), but a GEMM
    per list instead of one dot product per (query, vector): 2.5x faster on 2 cores, where faiss
    scans each query's lists on its own. `labels`: drop same-label hits here (the main search
    never wants them; crowded folders make them millions), and skip a list's dominant folder for
    that folder's own queries. `probes`: the queries' nearest lists, already known (nearest
    first, at least nprobe columns), so the quantizer is not searched again. `context`: the run's
    (its memory budget is checkpointed); None: no budget.
    """

    def run(xq: np.ndarray) -> _Candidates:
        qs: list[NDArray[np.int64]] = []
        nbs: list[NDArray[np.int64]] = []
        ds: list[NDArray[np.float32]] = []
        for q, nb, d in _list_scan_chunks(faiss, index, radius, xq, labels, progress, lists, probes, context=context):
            qs.append(q)
            nbs.append(nb)
            ds.append(d)
        if not qs:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
        return np.concatenate(qs), np.concatenate(nbs), np.concatenate(ds)

    return run


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


def _set_nprobe(faiss: ModuleType, cpu_index: Any, gpu_index: Any, nprobe: int) -> None:
    cpu_index.nprobe = nprobe
    if gpu_index is not None:
        faiss.GpuParameterSpace().set_index_parameter(gpu_index, "nprobe", nprobe)


def _choose_nprobe(faiss: ModuleType, cpu_index: Any, gpu_index: Any, x: np.ndarray, labels: np.ndarray,
                   radius: float, rules: IndexRules, seed: int, list_of: np.ndarray, probes: np.ndarray | None = None,
                   cells: int | None = None, same_kept: int | None = None,
                   tuning: SearchTuning = DEFAULT_TUNING) -> tuple[int, dict[str, Any]]:
    """Smallest nprobe whose recall on a random sample of queries reaches `recall_target`,
    with no sampled cross-folder miss at or above threshold + CLEAR_MATCH_MARGIN.

    No search is run: an IVF search at nprobe p finds a true pair (a, b) iff b's list is among
    a's p nearest lists or a's list among b's (every vector is a query). So the sample's exact
    neighbours are found by GEMM over blocks of the table, and for each the smallest such p is
    counted into a histogram; recall at p is a prefix sum. a's ranking of lists is computed to
    `a_cols` places; b's comes from `probes` (`tuning.probes_kept` places, kept from the build) or from
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
    cells, same_kept = cells or tuning.calibration_cells, same_kept or tuning.calibration_same_kept
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, size=min(tuning.calibration_queries, n), replace=False))
    m = len(sample)
    xq = np.ascontiguousarray(x[sample])
    lq = labels[sample]
    a_cols = min(nlist, 1024)
    _, near_q = cpu_index.quantizer.search(xq, a_cols)
    rank_q = np.full((m, nlist), a_cols, dtype=np.int16)  # a's place of each list (a_cols: unknown)
    rows, cols_ = nonzero(near_q >= 0)
    rank_q[rows, near_q[rows, cols_]] = cols_
    b_cols = probes.shape[1] if probes is not None else min(nlist, tuning.probes_kept)
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
        r_c, c_c = nonzero(hit & cross)
        hit &= ~cross
        n_same = int(np.count_nonzero(hit))
        total_count += n_same + r_c.size
        if n_same <= same_kept:
            r_s, c_s = nonzero(hit)
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
    nprobe = min(tuning.nprobe_start, nlist)
    tried: dict[int, float] = {}
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


class IVFIndex:
    def __init__(self, faiss: ModuleType, cpu_index: Any, faiss_index: Any, x: NDArray[np.float32], labels: np.ndarray,
                 radius: float, rules: IndexRules, seed: int, tuning: SearchTuning, list_scan: bool,
                 probes: np.ndarray | None, info: dict[str, Any], probe_scores: np.ndarray | None = None):
        self.faiss, self.cpu_index, self.x, self.labels, self.radius = faiss, cpu_index, x, labels, radius
        self.faiss_index = faiss_index  # the device copy (GPU), or None
        self.rules, self.seed, self.tuning, self.list_scan, self.probes = rules, seed, tuning, list_scan, probes
        self.probe_scores = probe_scores  # the quantizer's products with `probes` (bounds)
        self.info: dict[str, Any] = info
        self.stats: dict[str, Any] = {}
        self.scan_bounds: _bounds.ScanBounds | None = None
        self.certificate: _bounds.Certificate | None = None
        self._certifier: _bounds.Certifier | None = None
        if list_scan and probes is None:
            raise ValueError("the list scan needs every row's probes")
        self.lists = _TableLists(x, probes[:, 0], cpu_index.nlist) if probes is not None and list_scan else None
        # the list scan shards by list (each list read once); faiss's range_search by query
        self.units: int
        self.unit: str
        self.units, self.unit = (cpu_index.nlist, "list") if list_scan else (len(x), "vec")

    def calibrate(self, progress: Progress | None = None) -> None:
        with _stage(progress, "calibrating nprobe"):
            probes = self.probes
            list_of = probes[:, 0] if probes is not None else _list_of(self.faiss, self.cpu_index, len(self.x))
            nprobe, calib = _choose_nprobe(self.faiss, self.cpu_index, self.faiss_index, self.x, self.labels,
                                           self.radius, self.rules, self.seed, list_of=list_of, probes=probes,
                                           tuning=self.tuning)
        self.info.update(nprobe=nprobe, calibration=calib)
        self._bounds_setup()  # bounds

    # --- bounds (backends/bounds.py): list caps, folder caps, the certificate, `certify` ---
    def _bounds_setup(self) -> None:
        tuning = self.tuning
        norms = _bounds.NormRange.of(self.x)
        lists, self.certificate = None, None
        if self.list_scan and tuning.list_bounds and self.probes is not None and self.probe_scores is not None:
            centroids = self.cpu_index.quantizer.reconstruct_n(0, self.cpu_index.nlist)
            lists = _bounds.ListBounds(centroids, self.probes, self.probe_scores, self.radius, norms)
            self.certificate = lists.certificate(self.cpu_index.nprobe)
        self.scan_bounds = _bounds.ScanBounds(self.radius, norms, lists, self.list_scan and tuning.folder_caps,
                                              min_size=tuning.cap_min, peel=tuning.cap_peel,
                                              min_saving=tuning.cap_min_saving, stats=self.stats)
        self.scan_bounds.labels = self.labels
        self._certified()

    def _certified(self, certified_rows: int = 0) -> None:
        """info["certified"]: how much of the search is proven exact (see docs/search.md)."""
        nlist, nprobe = self.cpu_index.nlist, min(self.cpu_index.nprobe, self.cpu_index.nlist)
        st, cert = self.stats, self.certificate
        out: dict[str, Any] = {"queries": None if cert is None else round(cert["queries"], 6)}
        if cert is not None:
            out["unprobed_list_probes"] = cert["unprobed"]
            out["unprobed_proven"] = round(cert["unprobed_proven"], 6)
        if st.get("list_probes"):
            out["probed_lists_skipped"] = st.get("list_probes_skipped", 0)
        if st.get("cap_probes"):
            out["folder_cap_probes"] = st["cap_probes"]
            out["folder_cap_probes_skipped"] = st["cap_probes"] - st.get("cap_probes_scanned", 0)
            if st.get("folder_caps_stopped"):
                out["folder_caps_stopped"] = True  # they excluded too little to pay (a low threshold)
        how = None
        if nprobe >= nlist:
            how = "every list probed"
        elif cert is not None and cert["queries"] >= 1.0:
            how = "list caps"
        elif self.rules.certify and certified_rows >= len(self.x):
            how = "certify"
        if self.rules.certify:
            out["certify"] = {"rows": certified_rows, "cells": st.get("certify_cells", 0),
                              "cap_tests": st.get("certify_cap_tests", 0),
                              "caps_scanned": st.get("certify_caps_scanned", 0),
                              "seconds": round(st.get("certify_seconds", 0.0), 3)}
        out["exact"] = how is not None
        out["how"] = how
        self.info["certified"] = out

    def certify_rows(self, rows: np.ndarray, emit: Emit) -> None:
        """Every cross-folder pair of these rows at or above the radius: folder caps and the
        scoring of what they cannot exclude (exact, whatever the probes missed)."""
        import time

        t0 = time.perf_counter()
        if self._certifier is None:
            norms = self.scan_bounds.norms if self.scan_bounds is not None else _bounds.NormRange.of(self.x)
            self._certifier = _bounds.Certifier(self.x, self.labels, self.radius, norms, min_size=self.tuning.cap_min,
                                                peel=self.tuning.cap_peel)
        self._certifier.search(rows, emit, self.stats, self.tuning.scan_cells)
        self.stats["certify_seconds"] = self.stats.get("certify_seconds", 0.0) + time.perf_counter() - t0
        # a stat, not an attribute: ranges run elsewhere (engines/) sum it like the others
        self.stats["certified_rows"] = self.stats.get("certified_rows", 0) + len(rows)
        self._certified(self.stats["certified_rows"])

    def ranges_merged(self) -> None:
        """engines/: the stats of ranges run elsewhere were summed into self.stats; the
        certificate follows them."""
        if self.scan_bounds is not None:
            self._certified(self.stats.get("certified_rows", 0))
    # --- end bounds ---

    def candidates(self, emit: Emit, start: int = 0, end: int | None = None, progress: Progress | None = None,
                   context: RunContext | None = None) -> None:
        """`context`: the run's, whose memory budget the list scan checkpoints (None: none; ranges
        run elsewhere have none). A parameter, not an attribute: the index is pickled for workers."""
        if self.list_scan:
            self.info["scan"] = "lists"
            for q, nb, dist in _list_scan_chunks(self.faiss, self.cpu_index, self.radius, self.x, labels=self.labels,
                                                 progress=progress, lists=self.lists, probes=self.probes,
                                                 stats=self.stats, tuning=self.tuning, start_list=start, end_list=end,
                                                 bounds=self.scan_bounds, context=context):
                emit(q, nb, dist)
            if self.rules.certify:  # bounds: the rows whose own list is in this range
                first, last = _span(self.cpu_index.nlist, start, end)
                home = self.probes[:, 0] if self.probes is not None else _list_of(self.faiss, self.cpu_index, len(self.x))
                with _stage(progress, "certifying"):
                    self.certify_rows(np.flatnonzero((home >= first) & (home < last)), emit)
        else:
            first, last = _span(len(self.x), start, end)
            rows = None if (first, last) == (0, len(self.x)) else np.arange(first, last)
            _ivf_range(self.cpu_index, self.x, self.labels, self.radius, emit, rows=rows, progress=progress,
                       tuning=self.tuning)
            if self.rules.certify:  # bounds
                with _stage(progress, "certifying"):
                    self.certify_rows(np.arange(first, last), emit)
        if self.scan_bounds is not None:
            self._certified(self.stats.get("certified_rows", 0))

    def exact_rows(self, rows: np.ndarray, emit: Emit) -> None:
        """The bounded CPU search of the GPU path's saturated queries."""
        _ivf_range(self.cpu_index, self.x, self.labels, self.radius, emit, rows=rows, tuning=self.tuning)


class IVFBackend:
    def __init__(self, rules: IndexRules, nlist: int, scan: str = "lists", seed: int = 0,
                 tuning: SearchTuning = DEFAULT_TUNING, context: RunContext | None = None):
        self.rules, self.nlist, self.scan, self.seed, self.tuning = rules, nlist, scan, seed, tuning
        self.context = context  # the run's: its memory budget is checkpointed while every row is assigned

    def build(self, x: NDArray[np.float32], labels: np.ndarray, radius: float, progress: Progress | None = None,
              place: Place | None = None) -> IVFIndex:
        """`place(cpu_index) -> device index`: train and fill the index there (faiss's list scan
        is then not used: the device searches), and keep a CPU copy for calibration and fallback."""
        faiss, d, tuning = _faiss(), x.shape[1], self.tuning
        quantizer = faiss.IndexFlatIP(d)
        cpu_index = faiss.IndexIVFFlat(quantizer, d, self.nlist, faiss.METRIC_INNER_PRODUCT)
        cpu_index.cp.max_points_per_centroid = tuning.kmeans_points_per_centroid
        cpu_index.cp.niter = tuning.kmeans_niter
        cpu_index.cp.seed = self.seed
        info: dict[str, Any] = {"index": "IndexIVFFlat", "nlist": self.nlist}
        gpu_index = place(cpu_index) if place is not None else None
        list_scan = gpu_index is None and self.scan == "lists"
        probes: NDArray[np.int32] | None = None
        probe_scores: NDArray[np.float32] | None = None
        with _stage(progress, f"training IVF (nlist={self.nlist})"):
            rows = _training_rows(labels, self.nlist, cpu_index.cp.max_points_per_centroid, self.seed)
            (gpu_index or cpu_index).train(x if rows is None else np.ascontiguousarray(x[rows]))
            if list_scan:
                # One quantizer search serves both the assignment (nearest list) and the list scan
                # (the nearest nprobe lists of every vector). The vectors are not added to the
                # index: the scan gathers each list's rows from the table, so the table is held
                # once (faiss's copy doubled peak memory) and may stay a file mapping.
                probes, probe_scores = _nearest_lists(cpu_index.quantizer, x, min(tuning.probes_kept, cpu_index.nlist),
                                                      scores=True, context=self.context)  # scores: for the bounds
            else:
                (gpu_index or cpu_index).add(x)
        if gpu_index is not None:
            cpu_index = faiss.index_gpu_to_cpu(gpu_index)
        return IVFIndex(faiss, cpu_index, gpu_index, x, labels, radius, self.rules, self.seed, tuning, list_scan,
                        probes, info, probe_scores=probe_scores)


def _ivf(request: BackendRequest) -> IVFBackend:
    # faiss wants >= 39 training points per list; more lists than that only add noise.
    nlist = min(request.rules.nlist or auto_nlist(request.n), max(1, request.n // 39))
    return IVFBackend(request.rules, nlist, scan=request.scan, seed=request.seed, tuning=request.tuning,
                      context=request.context)


register(BackendSpec("ivf", _ivf, order=30, gpu=True, calibrated=True))
