"""Provable bounds for the IVF search: which (query, list) and (query, group) cells cannot hold a
vector at or above the radius, so that skipping them loses nothing; the share of the search that
is thereby certified exact; and a `certify` pass that makes the whole search exact.

The inequality
--------------
A *cap* is a centre direction c and an angular radius θ: every member x has ∠(x, c) <= θ. For a
query q at angle φ = ∠(q, c) the triangle inequality for angles on the sphere gives
∠(q, x) >= φ − θ, and cos decreases on [0, π], so

    cos ∠(q, x) <= cos(max(0, φ − θ))          for every member x.

No member reaches a cosine r when φ − θ > arccos(r), i.e. when

    cos φ < cos(θ + arccos r)                   (θ + arccos r < π; otherwise never).

So each cap gets ONE number, its cutoff, and a query is tested by ONE comparison of the float32
product q·c that the search computes anyway: the quantizer's product for an inverted list (the
build's assignment computes it; faiss returns it with the probes), a product with the group
centres for a group inside a list.

Rounding (outward: a bound may be loose, never too tight)
--------------------------------------------------------
* Rows are unit only to float32 precision, and a pair's similarity is the raw product
  q·x = |q||x| cos ∠(q, x). With every row norm in [lo, hi] (`NormRange`, rounded outward),
  cos ∠ < r proves q·x < radius for r = radius / hi² (radius > 0) or radius / lo² (radius <= 0).
* float32 products: |fl32(q·c) − q·c| <= γ_d |q||c| for ANY order of summation, with or
  without FMA (BLAS, faiss), γ_d = d·u / (1 − d·u), u = 2⁻²⁴; 2·d·u is used. So
  cos φ <= fl32(q·c) / (|q||c|) + γ, and the cutoff is lowered by γ and multiplied by the norms
  in the direction that keeps it an under-estimate.
* θ comes from the members' cosines to the centre (float64 products of float32 rows, or the
  quantizer's float32 products with γ). That cosine is lowered by SLACK *before* arccos, because
  arccos is ill-conditioned near 1 (an error e in the argument is an error sqrt(2e) in the
  angle): the argument is shifted, never the result. arccos and cos results are widened by SLACK
  too. SLACK = 1e-9 is four orders above float64's error on these quantities (~1e-13 for
  d <= 4096).
* The cutoff is rounded down to float32 and compared with `<` against the float32 product: a
  product equal to the cutoff is scanned.
* The scan's radius is the threshold minus RADIUS_MARGIN (1e-4), and the bounds are proved
  against that radius: a skipped cell holds nothing whose exact similarity is even within 1e-4
  below the threshold.

Together the slacks cost about γ + 4e-9 of cosine (3e-5 at d = 512): negligible next to the
radii of real lists.

What it buys (measured by `benchmarks/bounds.py`, numbers in benchmarks/bounds.md)
-------------------------------------------------------------------------------
Whole inverted lists have angular radii of 83° (512-d synthetic), 22° (raw dlib LFW) and 66°
(centred LFW): at any useful threshold their caps prove nothing (`ListBounds`: certified
queries 0.0000 on all three; it costs nothing, being read off the quantizer's own products).
Caps per (list, folder) are tight (identity clusters: ~38° synthetic): inside a probed list, one
product with a group's centre replaces the products with its members for every query the
group's cap excludes (`caps_scan`): 10x fewer scored cells at 300k, 6x at 1M, half the search
time. Certifying the UNprobed part needs every query tested against every folder
(`Certifier`): exact, at a cost of about N·F/2 products (+28 s on a 20 s search at 300k).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypedDict

import numpy as np
from numpy.typing import NDArray

from ..arrays import nonzero
from . import Emit

U32 = 2.0**-24  # float32 unit roundoff
SLACK = 1e-9  # added outward to every float64 quantity the bounds are computed from
CHUNK_ROWS = 1 << 15  # rows gathered at a time
# Folder caps are no longer built once this many (query, cap) tests have skipped less than this
# share: at a low threshold (0.5 on 512-d faces) a cap excludes ~10% and only adds products.
STOP_AFTER_PROBES = 1 << 20
STOP_BELOW_SKIPPED = 0.3


def gemm_slack(dim: int) -> float:
    """Bound on |fl32(a·b) − a·b| / (|a||b|) for d-dimensional float32 products, any order."""
    du = dim * U32
    if du >= 0.5:
        raise ValueError(f"dimension {dim} too large for a float32 error bound")
    return 2.0 * du


@dataclass(frozen=True)
class NormRange:
    """Every row norm of a table lies in [lo, hi] (rounded outward)."""

    lo: float
    hi: float
    dim: int

    @classmethod
    def of(cls, x: np.ndarray, block: int = 1 << 16) -> "NormRange":
        d = int(x.shape[1])
        g = gemm_slack(d)
        lo, hi = math.inf, 0.0
        for s in range(0, len(x), block):
            xb = x[s : s + block]
            sq = np.einsum("ij,ij->i", xb, xb)  # float32: within g of the true square norm
            lo, hi = min(lo, float(sq.min())), max(hi, float(sq.max()))
        if not len(x):
            return cls(1.0, 1.0, d)
        lo = math.sqrt(max(0.0, lo * (1 - g))) * (1 - SLACK)
        hi = math.sqrt(hi * (1 + 2 * g)) * (1 + SLACK)
        return cls(lo, hi, d)


def reach_cosine(radius: float, norms: NormRange) -> float:
    """r such that cos ∠(q, x) < r proves q·x < radius for rows with norms in [lo, hi]."""
    if radius > 0:
        r = radius / (norms.hi * norms.hi)
    elif norms.lo > 0:
        r = radius / (norms.lo * norms.lo)
    else:
        return -1.0  # a zero row and a radius <= 0: nothing can be proved
    return min(1.0, max(-1.0, r - SLACK))


def float32_floor(k: np.ndarray) -> np.ndarray:
    """The largest float32 <= each float64 value (infinities kept)."""
    k = np.asarray(k, dtype=np.float64)
    k32 = k.astype(np.float32)
    up = k32.astype(np.float64) > k
    k32[up] = np.nextafter(k32[up], np.float32(-np.inf))
    return k32


def cutoffs(cos_lo: np.ndarray, centre_lo: np.ndarray, centre_hi: np.ndarray, radius: float,
            norms: NormRange) -> np.ndarray:
    """Per cap, the float32 cutoff K: fl32(q·c) < K proves q·x < radius for every member x.

    cos_lo: a lower bound on every member's cosine to the cap's centre direction (NaN or +inf:
    the cap has no member; its cutoff is +inf); centre_lo/hi: bounds on the norm of the float32
    centre c the products are taken with."""
    cos_lo = np.asarray(cos_lo, dtype=np.float64)
    empty = ~np.isfinite(cos_lo) | (cos_lo > 1.0 + 1e-6)
    theta = np.arccos(np.clip(np.where(empty, 1.0, cos_lo) - SLACK, -1.0, 1.0)) + SLACK
    alpha = math.acos(reach_cosine(radius, norms)) + SLACK
    total = theta + alpha
    tau = np.cos(np.minimum(total, np.pi)) - SLACK
    g = tau - gemm_slack(norms.dim)
    k = np.where(g >= 0, g * norms.lo * centre_lo, g * norms.hi * centre_hi)
    k = k - np.abs(k) * 1e-12
    k = np.where(total >= np.pi, -np.inf, k)
    k = np.where(empty, np.inf, k)
    return float32_floor(k)


def centre_norms(c32: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = np.sqrt(np.einsum("ij,ij->i", c32.astype(np.float64), c32.astype(np.float64)))
    return n * (1 - SLACK), n * (1 + SLACK)


def cosine_lower_from_float32(s: np.ndarray, centre_lo: np.ndarray, centre_hi: np.ndarray,
                              norms: NormRange) -> np.ndarray:
    """A lower bound on cos ∠(x, c) from the float32 product s = fl32(x·c) (the quantizer's)."""
    s = np.asarray(s, dtype=np.float64)
    cos = np.where(s >= 0, s / (norms.hi * centre_hi), s / (norms.lo * np.maximum(centre_lo, 1e-300)))
    return cos - gemm_slack(norms.dim) - SLACK


# -- whole inverted lists ----------------------------------------------------------------------


class Certificate(TypedDict):
    queries: float  # share of queries whose unprobed lists are all proven empty
    unprobed_proven: float  # share of (query, unprobed list) cells proven empty
    unprobed: int  # (query, unprobed list) cells


class ListBounds:
    """Caps of the inverted lists around the quantizer's centroids, from the build's own products.

    `probes` (N, k) and `scores` (N, k): every vector's k nearest lists and the float32 products
    the quantizer computed for them (column 0: the list it was added to). A list's radius comes
    from its members' column-0 products; a query's product with a list beyond its k nearest is at
    most its k-th product (the quantizer ranked them), so a list whose cutoff exceeds that is
    excluded without computing anything more.
    """

    def __init__(self, centroids: np.ndarray, probes: np.ndarray, scores: np.ndarray, radius: float,
                 norms: NormRange):
        nlist = len(centroids)
        self.nlist, self.radius, self.norms = nlist, radius, norms
        c_lo, c_hi = centre_norms(np.asarray(centroids, dtype=np.float32))
        assign = probes[:, 0].astype(np.int64)
        cos = cosine_lower_from_float32(scores[:, 0], c_lo[assign], c_hi[assign], norms)
        cos_lo = np.full(nlist, np.inf)
        np.minimum.at(cos_lo, assign, cos)
        self.cutoff = cutoffs(cos_lo, c_lo, c_hi, radius, norms)  # (nlist,) float32
        self.probes, self.scores = probes, scores

    def skipped(self, near: np.ndarray, near_scores: np.ndarray) -> NDArray[np.bool_]:
        """(rows, p) mask: probed list proven to hold nothing at or above the radius."""
        mask: NDArray[np.bool_] = near_scores < self.cutoff[np.maximum(near, 0)]
        return mask

    def proven_unprobed(self, nprobe: int, rows: slice = slice(None)) -> NDArray[np.int64]:
        """Per query (of `rows`), how many of its unprobed lists are proven to hold nothing at
        or above the radius; a query with all nlist − nprobe of them proven is certified: its
        search is exact whatever the calibration's sample said."""
        nlist, k = self.nlist, self.probes.shape[1]
        p = min(nprobe, nlist)
        pr = self.probes[rows].astype(np.int64)
        sc = self.scores[rows]
        if p >= nlist:
            return np.zeros(len(pr), np.int64)
        valid = pr >= 0
        cut = self.cutoff[np.maximum(pr, 0)]
        # ranks p..k-1: by their own products
        mid: NDArray[np.int64] = ((sc[:, p:] < cut[:, p:]) & valid[:, p:]).sum(axis=1)
        if k >= nlist:
            return mid
        # beyond rank k: the quantizer ranked them, so their product is <= the k-th one; a list
        # whose cutoff exceeds that is proven (counted over all lists, less those in the top k)
        last = sc[:, k - 1]
        above = nlist - np.searchsorted(np.sort(self.cutoff), last, side="right")
        in_top = ((cut > last[:, None]) & valid).sum(axis=1)
        proven: NDArray[np.int64] = mid + np.maximum(0, above - in_top)
        return proven

    def certificate(self, nprobe: int, block: int = 1 << 16) -> Certificate:
        """Share of queries certified (see `proven_unprobed`) and share of (query, unprobed
        list) cells proven empty."""
        nlist, n = self.nlist, len(self.probes)
        p = min(nprobe, nlist)
        if p >= nlist or n == 0:
            return {"queries": 1.0, "unprobed_proven": 1.0, "unprobed": 0}
        certified = proven = 0
        for s in range(0, n, block):
            got = self.proven_unprobed(nprobe, slice(s, s + block))
            proven += int(got.sum())
            certified += int(np.count_nonzero(got >= nlist - p))
        return {"queries": certified / n, "unprobed_proven": proven / (n * (nlist - p)),
                "unprobed": n * (nlist - p)}


class ScanBounds:
    """What the IVF list scan asks of the bounds: which probes to drop (list caps) and, per list,
    its folder caps (None: scan the list as it is)."""

    def __init__(self, radius: float, norms: NormRange, lists: ListBounds | None, folder_caps: bool,
                 min_size: int = 3, peel: float = 1.3, min_saving: int = 1 << 16, stats: dict[str, Any] | None = None):
        self.radius, self.norms, self.lists, self.stats = radius, norms, lists, stats
        self.folder_caps, self.min_size, self.peel, self.min_saving = folder_caps, min_size, peel, min_saving
        self.labels: np.ndarray | None = None

    def skip_probes(self, near: np.ndarray, near_scores: np.ndarray, stats: dict[str, Any] | None,
                    span: tuple[int, int] | None = None) -> np.ndarray:
        """near with the probes a list cap proves empty replaced by -1 (not scanned).
        near_scores: the quantizer's float32 products with those lists. `span`: the lists this
        scan covers (a range of an engine's); only their probes are counted."""
        assert self.lists is not None, "skip_probes needs the list caps"
        skip = self.lists.skipped(near, near_scores) & (near >= 0)
        if stats is not None:
            counted = near >= 0 if span is None else (near >= span[0]) & (near < span[1])
            stats["list_probes"] = stats.get("list_probes", 0) + int(np.count_nonzero(counted))
            stats["list_probes_skipped"] = stats.get("list_probes_skipped", 0) + int(np.count_nonzero(skip & counted))
        return np.where(skip, -1, near) if skip.any() else near

    def of_list(self, vecs: np.ndarray, ids: np.ndarray, queries: int) -> "Caps | None":
        """The list's folder caps, or None where they cannot pay: fewer than a quarter of its
        members in folders of `min_size`, or a scan too small to repay building them (measured
        on LFW, whose folders are mostly 1-2 faces: caps there cost more than they saved)."""
        if not self.folder_caps or self.labels is None or len(ids) < self.min_size:
            return None
        member = self.labels[ids]
        _, counts = np.unique(member, return_counts=True)
        grouped = int(counts[counts >= self.min_size].sum())
        if 4 * grouped < len(ids) or queries * grouped < self.min_saving:
            return None
        st = self.stats
        if st is not None and st.get("cap_probes", 0) >= STOP_AFTER_PROBES:
            if st.get("cap_probes_scanned", 0) > (1 - STOP_BELOW_SKIPPED) * st["cap_probes"]:
                st["folder_caps_stopped"] = True  # a low threshold: caps exclude too little to pay
                return None
        caps = build_caps(vecs, np.arange(len(ids)), member, self.radius, self.norms,
                          min_size=self.min_size, peel=self.peel)
        return caps if len(caps.cutoff) else None


# -- caps of groups (folders) inside a set of rows ----------------------------------------------


@dataclass
class Caps:
    """Groups of rows (by label) bounded by caps; the rest ('loose') are scored one by one."""

    centres: np.ndarray  # (G, d) float32 centre of each cap
    cutoff: np.ndarray  # (G,) float32: skip cap g for q when fl32(q·c_g) < cutoff[g]
    group: np.ndarray  # (G,) the group (label) of each cap
    ptr: np.ndarray  # (G + 1,) cap g holds rows[ptr[g]:ptr[g + 1]]
    rows: np.ndarray  # member rows, cap by cap
    loose: np.ndarray  # rows in no cap
    loose_group: np.ndarray

    @property
    def size(self) -> np.ndarray:
        return np.diff(self.ptr)


def _group_sums(x: np.ndarray, rows: np.ndarray, starts: np.ndarray, n_groups: int) -> np.ndarray:
    """Sum of x[rows] per run (rows sorted by group, run g from starts[g]), float32: only a
    direction is wanted, and the radius is then measured around whatever direction this is."""
    if len(rows) <= CHUNK_ROWS:
        return np.add.reduceat(x[rows], starts, axis=0)
    sums = np.zeros((n_groups, x.shape[1]), np.float32)
    for s in range(0, len(rows), CHUNK_ROWS):
        e = min(len(rows), s + CHUNK_ROWS)
        g0 = int(np.searchsorted(starts, s, side="right")) - 1  # the run holding row s
        g1 = int(np.searchsorted(starts, e, side="left"))  # runs g0..g1-1 meet [s, e)
        cut = np.maximum(starts[g0:g1], s) - s
        sums[g0:g1] += np.add.reduceat(x[rows[s:e]], cut, axis=0)
    return sums


def _products(x: np.ndarray, rows: np.ndarray, centre_of: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """float32 product of each x[rows[i]] with centres[centre_of[i]] (bounded by gemm_slack)."""
    out = np.empty(len(rows), np.float32)
    for s in range(0, len(rows), CHUNK_ROWS):
        out[s : s + CHUNK_ROWS] = np.einsum("ij,ij->i", x[rows[s : s + CHUNK_ROWS]],
                                            centres[centre_of[s : s + CHUNK_ROWS]])
    return out


def build_caps(x: np.ndarray, rows: np.ndarray, groups: np.ndarray, radius: float, norms: NormRange,
               min_size: int = 3, peel: float = 1.3, peel_deg: float = 3.0) -> Caps:
    """Caps of the rows x[rows], one per group of at least `min_size` rows.

    A cap's centre is its members' normalised mean (float32); its radius comes from the members'
    float32 products with it, widened by gemm_slack (`cosine_lower_from_float32`). Members
    farther from it than `peel` times the group's median angle plus `peel_deg` degrees (a
    misfiled face) leave the cap and are scored one by one: one outlier would otherwise widen
    the cap to 90° and prove nothing. These choices only move cost; any partition and any
    centre give sound bounds.
    """
    rows = np.asarray(rows, dtype=np.int64)
    groups = np.asarray(groups)
    d = x.shape[1]
    empty = Caps(np.zeros((0, d), np.float32), np.zeros(0, np.float32), groups[:0], np.zeros(1, np.int64),
                 rows[:0], rows, groups)
    if len(rows) < min_size:
        return empty
    order = np.argsort(groups, kind="stable")
    rows_s, groups_s = rows[order], groups[order]
    change = np.flatnonzero(groups_s[1:] != groups_s[:-1]) + 1
    starts = np.concatenate([[0], change])
    counts = np.diff(np.append(starts, len(rows_s)))
    big = counts >= min_size
    if not big.any():
        return empty
    in_big = np.repeat(big, counts)
    b_rows, b_groups = rows_s[in_big], groups_s[in_big]
    b_counts = counts[big]
    b_starts = np.concatenate([[0], np.cumsum(b_counts)[:-1]])
    sums = _group_sums(x, b_rows, b_starts, len(b_counts))
    norm = np.sqrt(np.einsum("ij,ij->i", sums.astype(np.float64), sums.astype(np.float64)))
    # a group whose members cancel (antipodal rows) has no direction: its rows stay loose
    ok = norm > 1e-3 * b_counts * norms.lo
    c32 = (sums / np.where(ok, norm, 1.0)[:, None]).astype(np.float32)
    c_lo, c_hi = centre_norms(c32)
    gid = np.repeat(np.arange(len(b_counts)), b_counts)
    prod = _products(x, b_rows, gid, c32)
    with np.errstate(divide="ignore", invalid="ignore"):  # groups without a direction: dropped below
        cos = cosine_lower_from_float32(prod, c_lo[gid], c_hi[gid], norms)
    keep = ok[gid]
    if peel:
        ang = np.arccos(np.clip(cos, -1.0, 1.0))
        srt = np.lexsort((ang, gid))
        med = ang[srt[b_starts + b_counts // 2]]
        keep &= ang <= med[gid] * peel + math.radians(peel_deg)
    core = np.bincount(gid[keep], minlength=len(b_counts))
    cap_ok = ok & (core >= min_size)
    keep &= cap_ok[gid]
    cos_lo = np.full(len(b_counts), np.inf)
    np.minimum.at(cos_lo, gid[keep], cos[keep])
    cut = cutoffs(cos_lo, c_lo, c_hi, radius, norms)
    cap_ok &= np.isfinite(cut)  # -inf: a cap that can never be skipped is no use
    keep &= cap_ok[gid]
    caps = np.flatnonzero(cap_ok)
    sizes = np.bincount(gid[keep], minlength=len(b_counts))[caps]
    loose_mask = np.ones(len(rows_s), dtype=bool)
    loose_mask[np.flatnonzero(in_big)[keep]] = False
    return Caps(centres=np.ascontiguousarray(c32[caps]), cutoff=cut[caps], group=b_groups[b_starts[caps]],
                ptr=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64), rows=b_rows[keep],
                loose=rows_s[loose_mask], loose_group=groups_s[loose_mask])


GEMM_CALL_CELLS = 4096  # what one more (small) BLAS call costs, in scored cells (measured roughly)


def _score_caps(xb: np.ndarray, qid: np.ndarray, need: np.ndarray, caps: Caps, members: np.ndarray,
                member_id: np.ndarray, radius: float, cells: int
                ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
    """Score the query rows xb (ids qid) against the members of the caps `need` (B x G bool)
    does not exclude. members: the array the caps' rows index (a list's vectors, or the table);
    member_id maps a cap row to the id emitted. Yields (query, neighbour, score, scored cells).

    Cap by cap (one product per needed cap's members) when few caps are needed; one product
    with the union of the needed caps, masked, when many are (a low threshold, where caps
    exclude little): whichever costs fewer cells, counting a BLAS call as GEMM_CALL_CELLS."""
    r, g = nonzero(need)
    if not r.size:
        return
    size = caps.size
    used = np.unique(g)
    sparse = int(size[g].sum()) + GEMM_CALL_CELLS * len(used)
    dense = len(xb) * int(size[used].sum())
    if dense <= sparse:
        starts = caps.ptr[used]
        counts = size[used]
        offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
        col_rows = caps.rows[np.arange(int(counts.sum())) + offsets]
        col_cap = np.repeat(used, counts)
        step = max(1, cells // max(1, len(xb)))
        for cs in range(0, len(col_rows), step):
            rows = col_rows[cs : cs + step]
            sims = xb @ members[rows].T
            hit = (sims >= radius) & need[:, col_cap[cs : cs + step]]
            rr, cc = nonzero(hit)
            yield qid[rr], member_id[rows[cc]], sims[rr, cc], sims.size
        return
    order = np.argsort(g, kind="stable")
    r, g = r[order], g[order]
    bounds = np.flatnonzero(np.diff(g)) + 1
    for a, b in zip(np.concatenate([[0], bounds]), np.append(bounds, len(g))):
        cap = int(g[a])
        mem = caps.rows[caps.ptr[cap] : caps.ptr[cap + 1]]
        rs = r[a:b]
        vm = members[mem]
        step = max(1, cells // max(1, len(mem)))
        for s in range(0, len(rs), step):
            rr_ = rs[s : s + step]
            sims = xb[rr_] @ vm.T
            rr, cc = nonzero(sims >= radius)
            yield qid[rr_[rr]], member_id[mem[cc]], sims[rr, cc], sims.size


def caps_scan(xq: np.ndarray, queries: np.ndarray, labels: np.ndarray, vecs: np.ndarray, ids: np.ndarray,
              caps: Caps, radius: float, cells: int, stats: dict[str, Any]
              ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """One inverted list against the queries that probe it, through its caps: one product per
    (query, cap) and per (query, loose member); a cap's members are scored only for the queries
    it does not exclude, and never for the cap's own folder. Same candidates as scoring every
    member (the caps prove the rest below the radius)."""
    G, M = len(caps.cutoff), len(caps.loose)
    cols = np.concatenate([caps.centres, vecs[caps.loose]]) if M else caps.centres
    loose_lab = labels[ids[caps.loose]]
    step = max(1, cells // (G + M))
    for s in range(0, len(queries), step):
        q = queries[s : s + step]
        xb = xq[q]
        sims = xb @ cols.T
        stats["scored_cells"] = stats.get("scored_cells", 0) + len(q) * (G + M)
        lq = labels[q]
        if M:
            hit = (sims[:, G:] >= radius) & (lq[:, None] != loose_lab[None, :])
            r, c = nonzero(hit)
            if r.size:
                yield q[r].astype(np.int64), ids[caps.loose[c]].astype(np.int64), sims[:, G:][r, c]
        need = (sims[:, :G] >= caps.cutoff[None, :]) & (lq[:, None] != caps.group[None, :])
        stats["cap_probes"] = stats.get("cap_probes", 0) + len(q) * G
        stats["cap_probes_scanned"] = stats.get("cap_probes_scanned", 0) + int(np.count_nonzero(need))
        for qq, nb, sc, scored in _score_caps(xb, q, need, caps, vecs, ids, radius, cells):
            stats["scored_cells"] += scored
            if qq.size:
                yield qq.astype(np.int64), nb.astype(np.int64), sc


# -- certify: every query against every folder --------------------------------------------------


class Certifier:
    """Exact search by folder caps: each row is tested against the cap of every folder after its
    own and scored against the members of the caps it cannot exclude and against every loose
    row (peeled outliers, folders too small for a cap) of those folders.

    Every cross-folder pair (a, b), folder(a) before folder(b), is thereby either proven below
    the radius by b's folder cap or scored from a's side: the search is exact. Folders are
    ordered by size, smallest first, so that each folder pair is tested from its smaller side:
    about sum over folder pairs of min(|a|, |b|) cap tests (46% of the N x F / 2 of label order on
    the heavy-tailed seed-scale data), plus the needed members and the loose rows.

    `search(rows, both_sides=True)` tests the rows against every other folder (an incremental
    run's new rows against everything).
    """

    def __init__(self, x: np.ndarray, labels: np.ndarray, radius: float, norms: NormRange,
                 min_size: int = 3, peel: float = 1.3):
        self.x, self.radius = x, radius
        _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        rank = np.empty(len(counts), dtype=np.int64)
        rank[np.lexsort((np.arange(len(counts)), counts))] = np.arange(len(counts))
        self.folder = rank[inverse.reshape(-1)]  # folders by size, smallest first
        n = len(x)
        self.caps = build_caps(x, np.arange(n), self.folder, radius, norms, min_size=min_size, peel=peel)
        order = np.argsort(self.caps.loose_group, kind="stable")
        self.loose, self.loose_folder = self.caps.loose[order], self.caps.loose_group[order]
        self.loose_vecs = np.ascontiguousarray(x[self.loose]) if len(self.loose) else np.zeros((0, x.shape[1]),
                                                                                                 np.float32)
        self.ids = np.arange(n, dtype=np.int64)

    def order(self) -> np.ndarray:
        """Every row, in the folder order the search takes them (smallest folders first)."""
        return np.argsort(self.folder, kind="stable")

    def search(self, rows: np.ndarray, emit: Emit, stats: dict[str, Any], cells: int, both_sides: bool = False,
               progress: Callable[[int], None] | None = None) -> None:
        caps, x = self.caps, self.x
        rows = np.asarray(rows, dtype=np.int64)
        rows = rows[np.argsort(self.folder[rows], kind="stable")]
        G, M = len(caps.cutoff), len(self.loose)
        # blocks of at least 256 queries: the cap tests are one GEMM per block, and BLAS runs at
        # full speed only on tall blocks (1.15x over 200-row blocks at 6,000 folders)
        step = max(1, min(max(256, cells // max(1, G + M)), 4096))
        scored = tests = needed = 0
        for s in range(0, len(rows), step):
            q = rows[s : s + step]
            fq = self.folder[q]
            if both_sides:
                g0 = l0 = 0
            else:
                f0 = int(fq[0])  # rows sorted by folder: the block's first folder
                g0 = int(np.searchsorted(caps.group, f0, side="right"))  # caps of folders after f0
                l0 = int(np.searchsorted(self.loose_folder, f0, side="right"))
            xq = x[q]
            if l0 < M:
                sims = xq @ self.loose_vecs[l0:].T
                scored += sims.size
                lf = self.loose_folder[None, l0:]
                hit = (sims >= self.radius) & ((fq[:, None] != lf) if both_sides else (fq[:, None] < lf))
                r, c = nonzero(hit)
                if r.size:
                    emit(q[r], self.loose[l0 + c], sims[r, c])
            if g0 < G:
                sims = xq @ caps.centres[g0:].T
                scored += sims.size
                tests += sims.size
                need = np.zeros((len(q), G), dtype=bool)
                cg = caps.group[None, g0:]
                need[:, g0:] = (sims >= caps.cutoff[None, g0:]) & ((fq[:, None] != cg) if both_sides
                                                                    else (fq[:, None] < cg))
                needed += int(np.count_nonzero(need))
                for qq, nb, sc, k in _score_caps(xq, q, need, caps, x, self.ids, self.radius, cells):
                    scored += k
                    if qq.size:
                        emit(qq, nb, sc)
            if progress is not None:
                progress(len(q))
        stats["certify_cells"] = stats.get("certify_cells", 0) + scored
        stats["certify_cap_tests"] = stats.get("certify_cap_tests", 0) + tests
        stats["certify_caps_scanned"] = stats.get("certify_caps_scanned", 0) + needed
