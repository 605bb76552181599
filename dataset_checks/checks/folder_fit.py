"""How well every face fits its own folder and the others: what misfiled and consistency judge by.

A face is measured against folders as the mean cosine of the face to the faces of a folder, after
centring (the dataset mean is subtracted and rows re-normalised; raw dlib descriptors score 0.83
between strangers, so without centring every folder looks alike). With S_f the sum of folder f's
centred faces and n_f its size:

* own(i)  = x_i . (S_f - x_i) / (n_f - 1): mean similarity to the OTHER faces of its folder;
* other(i, g) = x_i . S_g / n_g: mean similarity to the faces of another folder g.

Both are means over faces of a folder, so they are on one scale and compare directly, and each is
one dot product per face per folder (no face pairs). The best other folder of a face comes from
an exact search of the face against the folder mean vectors S_g / n_g (blocked float32 GEMM, the
best ones re-scored in float64), and only for the faces that are already far from their own
folder (a few percent): the cost is O(n d) for everyone plus O(suspects x identities x d). When
only a folder at or above a floor can matter (misfiled: same-person level), most folders are ruled
out on the first 64-128 dimensions: their partial score plus |rest of the face| |rest of the
mean| (Cauchy-Schwarz) stays below the floor.

One fit per run (`folder_fit`, kept in the run's shared data): misfiled, consistency and the folder
means of the merge ranking (`folder_means`) share it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from ..memory import Budget
    from .base import CheckSettings
    from .data import CheckData

BLOCK_BYTES = 16 << 20  # float64 rows centred at a time (4096 at d=512): bounded memory at any size


@dataclass
class FolderFit:
    """How well every face fits its own folder, and (lazily) its best other folder."""

    counts: NDArray[np.int64]  # faces per identity
    own: NDArray[np.float64]  # (n,): own(i); nan where the folder has one face
    folder_mean: NDArray[np.float64]  # (n_ids,): mean pairwise similarity in the folder; nan below 2 faces
    sums: NDArray[np.float64]  # (n_ids, d): sums of centred faces
    centre: NDArray[np.float64]  # (d,)
    _starts: NDArray[np.int64]  # folder k's rows: _order[_starts[k]:_starts[k + 1]]
    _order: NDArray[np.intp] | None = None  # rows in folder order (None: the table is in folder order already)
    _best: dict[int, _BestOther] = field(default_factory=dict)  # min_other -> _BestOther
    extra: dict[str, Any] = field(default_factory=dict)
    budget: Budget | None = None  # the run's memory budget, checkpointed by the scattered reads

    def distribution(self, min_faces: int = 3) -> NDArray[np.float64]:
        """own(i) of faces in folders of at least `min_faces` (fewer if there are none)."""
        import numpy as np

        for m in (min_faces, 2):
            ok: NDArray[np.bool_] = self.counts[self._owner] >= m
            if ok.any():
                return self.own[ok]
        return np.empty(0)

    def threshold(self, value: Any, quantile: float, min_faces: int = 3) -> float:
        """The number in rules, or the quantile of the own-folder distribution."""
        import numpy as np

        if value != "auto":
            return float(value)
        dist = self.distribution(min_faces)
        return float(np.quantile(dist, quantile)) if dist.size else math.nan

    def centred(self, vectors: NDArray[Any], rows: NDArray[np.integer[Any]]) -> NDArray[np.float64]:
        """Rows (an index array or a slice) centred and re-normalised, float64: a new array, the
        table is only read."""
        import numpy as np

        from ..memory import gather

        x = gather(vectors, rows, budget=self.budget).astype(np.float64) - self.centre
        norms = np.sqrt(np.einsum("ij,ij->i", x, x))
        unit: NDArray[np.float64] = x / np.where(norms > 0, norms, 1.0)[:, None]
        return unit

    def members(self, folder: int) -> slice | NDArray[np.intp]:
        """The rows of `folder`: a slice when the table is in folder order, else an index array."""
        lo, hi = int(self._starts[folder]), int(self._starts[folder + 1])
        return slice(lo, hi) if self._order is None else self._order[lo:hi]

    def best_other(self, data: CheckData, rows: NDArray[np.integer[Any]], min_other: int = 2,
                   floor: float | NDArray[np.float64] | None = None) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """The best other folder of each face in `rows` (-1 if none) and the face's mean similarity
        to it (float64), among folders of at least `min_other` faces. Exact: every folder's mean
        vector is scored (blocked float32 GEMM), and the folders within float32 error of the best
        are re-scored in float64.

        `floor` (a number or one per row): only a best folder at or above it is wanted; a row
        whose best folder scores below its floor gets (-1, nan). Cheaper: a folder is ruled out
        on the first dimensions, by their partial score plus a bound on the rest."""
        import numpy as np

        if min_other not in self._best:
            self._best[min_other] = _BestOther(self, min_other)
        return self._best[min_other].get(data.table.vectors, np.asarray(rows, dtype=np.int64), floor)

    def best_face(self, data: CheckData, row: int, folder: int) -> tuple[int, float]:
        """The face of `folder` most similar to face `row` (centred cosine)."""
        import numpy as np

        members = np.arange(len(self.own))[self.members(folder)]
        sims = self.centred(data.table.vectors, members) @ self.centred(data.table.vectors, np.array([row]))[0]
        k = int(np.argmax(sims))
        return int(members[k]), float(sims[k])

    @property
    def _owner(self) -> NDArray[np.int64]:
        owner: NDArray[np.int64] = self.extra["owner"]
        return owner


# Error bound of a face-to-mean score computed in float32 in the rotated basis (|x|, |mean| <= 1,
# d <= 1024): rotating a vector in float32 moves it by at most d u sqrt(d) (7e-4 at d = 512, u =
# 2^-24), which moves a score, and the product of the norms of two rests, by at most twice that;
# the product itself adds d u. A folder is ruled out only when its bound misses the floor by more
# than this, and every folder within twice this of a face's best float32 score is re-scored in
# float64.
SCORE_TOL = 5e-3
STAGES = (1 / 8, 1 / 4, 1 / 2)  # fractions of the dimensions after which a floor search bounds the rest
KEPT = 0.5  # a stage's bound is skipped while it keeps more than this share of the scores on average
RETRY = 8  # ... and tried again after this many blocks
QUERY_CELLS = 1 << 21  # face-to-folder scores held at once (8 MiB of float32; a few such arrays at a time)
ROW_TILE = 1024  # at least this many faces per block, the folders in tiles: GEMMs stay compute-bound


class _BestOther:
    """best_other's state for one `min_other`: the candidate folders' means and what is known.

    The means and the faces are scored in the basis of the means' principal axes (an exact
    rotation): most of a mean's length then lies in the first dimensions, so that the bound on
    the rest is small early (on LFW's dlib descriptors 1% of the folders remain after 32 of 128
    dimensions; 57% in the original basis)."""

    def __init__(self, fit: FolderFit, min_other: int):
        import numpy as np

        n = len(fit.own)
        self.fit = fit
        ids = np.flatnonzero(fit.counts >= max(min_other, 1))
        d = fit.sums.shape[1]
        means = np.empty((len(ids), d), np.float32)
        for s in range(0, len(ids), 4096):  # no float64 copy of all the means
            means[s : s + 4096] = fit.sums[ids[s : s + 4096]] / fit.counts[ids[s : s + 4096], None]
        # the principal axes, largest first (any orthonormal basis would be exact; these make
        # the bounds tight early)
        _, axes = np.linalg.eigh((means.T @ means).astype(np.float64)) if len(ids) else (None, np.eye(d))
        self.axes = np.ascontiguousarray(axes[:, ::-1], dtype=np.float32)
        self.ids = ids
        self.means = means @ self.axes
        self.edges = sorted({e for e in (int(f * d) for f in STAGES) if 0 < e < d}) + [d]
        # the norm of each mean over the dimensions after each stage: the most they can add to
        # the score of a unit face (times the norm of the face over those dimensions)
        self.tails = [np.sqrt(np.einsum("ij,ij->i", self.means[:, e:], self.means[:, e:], dtype=np.float64))
                      .astype(np.float32) for e in self.edges[:-1]]
        self._bounding: dict[int, "np.ndarray"] = {}
        self.position = np.full(len(fit.counts), -1, np.int64)  # folder -> column among the candidates
        self.position[self.ids] = np.arange(len(self.ids))
        self.other = np.full(n, -1, np.int64)
        self.sim = np.full(n, np.nan)
        self.exact = np.zeros(n, bool)  # the best folder is known: (other, sim)
        self.below = np.full(n, np.inf)  # the best folder is known to score below this
        self._kept: dict[int, tuple[list[float], list[int]]] = {}  # stage -> (share of scores kept by recent bounds, [blocks skipped])

    def get(self, vectors: NDArray[Any], rows: NDArray[np.int64], floor: float | NDArray[np.float64] | None
            ) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        import numpy as np

        want = np.full(rows.size, -np.inf) if floor is None else np.broadcast_to(
            np.asarray(floor, dtype=np.float64), rows.shape).astype(np.float64)
        todo = ~self.exact[rows] & ~(self.below[rows] <= want)
        if todo.any():
            # rows in table order (a gather reads the table forwards); a row asked twice: its lowest floor
            r, w = rows[todo], want[todo]
            order = np.lexsort((w, r))
            r, w = r[order], w[order]
            first = np.r_[True, r[1:] != r[:-1]]
            self._compute(vectors, r[first], w[first])
        other, sim = self.other[rows].copy(), self.sim[rows].copy()
        low = ~self.exact[rows] | ~(sim >= want)
        other[low], sim[low] = -1, np.nan
        return other, sim

    def _compute(self, vectors: NDArray[Any], rows: NDArray[np.int64], floor: NDArray[np.float64]) -> None:
        import numpy as np

        if not len(self.ids):
            self.exact[rows] = True
            return
        # square-ish tiles keep the GEMMs compute-bound; all the folders at once where they fit
        block = max(min(ROW_TILE, math.isqrt(QUERY_CELLS)), QUERY_CELLS // len(self.ids))
        bounded = np.isfinite(floor)
        blocks = [part[s : s + block] for part in (np.flatnonzero(~bounded), np.flatnonzero(bounded))
                  for s in range(0, part.size, block)]
        from ..blas import cores

        workers = min(len(blocks), cores())
        if workers <= 1:
            for b in blocks:
                self._block(vectors, rows[b], floor[b])
            return
        # blocks on every core: each writes only its own rows' entries (rows are distinct), and
        # the stage statistics they share only choose which bounds to try, never a result
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="misfiled") as pool:
            list(pool.map(lambda b: self._block(vectors, rows[b], floor[b]), blocks))

    def _block(self, vectors: NDArray[Any], rows: NDArray[np.int64], floor: NDArray[np.float64]) -> None:
        """The best other folder of each of `rows`, over the candidate folders in tiles of
        columns: a tile's means are read once for all the block's rows (one block of a few rows
        against 100,000 means read 200 MB of means per block: memory-bound, 2.5x slower at 5M)."""
        import numpy as np

        qd = self.fit.centred(vectors, rows)
        q = qd.astype(np.float32) @ self.axes
        with_floor = bool(np.isfinite(floor).all())
        # the stages whose bound has paid off so far (a bound that rules out little costs more
        # than the dimensions it saves), then all dimensions
        edges = [e for e in self.edges[:-1] if with_floor and self.useful(e)] + [q.shape[1]]
        own = self.position[self.fit._owner[rows]]
        best = np.full(rows.size, -1, np.int64)
        best_sim = np.full(rows.size, -np.inf)
        tile = max(1, QUERY_CELLS // rows.size)
        for lo in range(0, len(self.ids), tile):
            at, g, sim = self._tile(q, qd, own, floor, edges, lo, min(lo + tile, len(self.ids)))
            # folders are in increasing order across tiles: on a tie the earlier (lower) one stays
            better = sim > best_sim[at]
            best[at[better]], best_sim[at[better]] = g[better], sim[better]
        # without a floor: the best folder. With one: the best of the folders that can reach the
        # floor, so the best folder where it does reach it, and "below the floor" elsewhere
        ok = (best >= 0) & (best_sim >= floor)
        self.other[rows[ok]], self.sim[rows[ok]] = best[ok], best_sim[ok]
        self.exact[rows[ok]] = True
        if with_floor:
            low = ~ok
            self.below[rows[low]] = np.minimum(self.below[rows[low]], floor[low])
        else:
            self.exact[rows] = True  # a row with no candidate has no other folder

    def _tile(self, q: NDArray[np.float32], qd: NDArray[np.float64], own: NDArray[np.int64],
              floor: NDArray[np.float64], edges: list[int], lo: int, hi: int
              ) -> tuple[NDArray[np.intp], NDArray[np.int64], NDArray[np.float64]]:
        """Score the rows against the folder means of columns [lo, hi), stage by stage of
        dimensions: (positions in the rows, folder, float64 score) of each row's best folder
        there, among those that can reach its floor. After each stage a folder stays only where
        its partial score plus |rest of the face| |rest of the mean| reaches the floor of some
        row, and a row stays only while some folder does: the next stages score only those."""
        import numpy as np

        from ..arrays import nonzero

        fit = self.fit
        d = q.shape[1]
        empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
        live = np.arange(q.shape[0])  # positions in the rows still open
        cols = np.arange(lo, hi)  # candidate folders still open (columns of self.means)
        mine = np.flatnonzero((own >= lo) & (own < hi))
        scores = None
        start = 0
        for end in edges:
            if scores is None and end < d:
                # the first bound, over every folder: |rest of the face| |rest of the mean| is one
                # more dimension of the product, so the GEMM gives the bound itself
                stage = self.edges.index(end)
                rest = self._rest(q[:, end:])
                bound = np.hstack([q[:, :end], rest[:, None]]) @ self.bounding(stage)[lo:hi].T
                bound[mine, own[mine] - lo] = -np.inf  # never its own folder
                left = bound >= self._need(floor)[:, None]
                open_rows = left.any(axis=1)
                open_cols = left[open_rows].any(axis=0)
                # the partial scores of what stays open
                scores = bound[np.ix_(open_rows, open_cols)]
                scores -= np.multiply.outer(rest[open_rows], self.tails[stage][lo:hi][open_cols])
            else:
                means = self.means[lo:hi, start:end] if cols.size == hi - lo else self.means[cols, start:end]
                part = (q[:, start:end] if live.size == q.shape[0] else q[live, start:end]) @ means.T
                if scores is None:
                    scores = part
                    scores[mine, own[mine] - lo] = -np.inf  # never its own folder
                else:
                    scores += part
                if end == d:
                    break
                open_rows, open_cols = self._reach(scores, q[live, end:], floor[live],
                                                   self.tails[self.edges.index(end)][cols])
                scores = scores[np.ix_(open_rows, open_cols)]
            start = end
            self.record(end, open_rows.mean() * open_cols.mean())
            if not open_rows.any():
                return empty
            live, cols = live[open_rows], cols[open_cols]
        # every dimension scored: the folders within float32 error of each row's best, in float64
        assert scores is not None  # the last of `edges` is d: its stage scores
        top = scores.max(axis=1)
        r, c = nonzero((scores >= (top - 2 * SCORE_TOL)[:, None]) & (scores > -np.inf))
        if not r.size:
            return empty
        at, g = live[r], self.ids[cols[c]]
        sim = np.einsum("ij,ij->i", qd[at], fit.sums[g]) / fit.counts[g]
        # per row: the highest score, then the lowest folder index
        order = np.lexsort((g, -sim, at))
        at, g, sim = at[order], g[order], sim[order]
        first = np.r_[True, at[1:] != at[:-1]]
        return at[first], g[first], sim[first]

    def bounding(self, stage: int) -> "np.ndarray":
        """The means' first dimensions up to a stage and the norm of their rest: with a face's
        first dimensions and the norm of its rest, one product gives the bound."""
        import numpy as np

        if stage not in self._bounding:
            self._bounding[stage] = np.hstack([self.means[:, : self.edges[stage]], self.tails[stage][:, None]])
        return self._bounding[stage]

    def useful(self, edge: int) -> bool:
        """Whether to bound after `edge` dimensions in the next block: unless the last bounds
        there kept more than KEPT of the scores on average; such a stage is still tried every
        RETRY blocks (the rows of other folders may be pruned better)."""
        kept, skipped = self._kept.setdefault(edge, ([], [0]))
        if not kept or sum(kept) / len(kept) <= KEPT or skipped[0] >= RETRY:
            skipped[0] = 0
            return True
        skipped[0] += 1
        return False

    def record(self, edge: int, kept: float) -> None:
        recent = self._kept.setdefault(edge, ([], [0]))[0]
        recent.append(kept)
        del recent[:-RETRY]

    @staticmethod
    def _rest(rest_q: NDArray[np.float32]) -> NDArray[np.float32]:
        """|rest of each face| (float32, rounded up)."""
        import numpy as np

        norms: NDArray[np.float64] = np.sqrt(np.einsum("ij,ij->i", rest_q, rest_q, dtype=np.float64))
        return (norms * (1 + SCORE_TOL)).astype(np.float32)

    @staticmethod
    def _need(floor: NDArray[np.float64]) -> NDArray[np.float32]:
        """The least bound that can still reach each floor (float32, rounded down)."""
        import numpy as np

        return (floor - SCORE_TOL).astype(np.float32)

    def _reach(self, scores: NDArray[np.float32], rest_q: NDArray[np.float32], floor: NDArray[np.float64],
               tails: NDArray[np.float32]) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
        """The rows and the folders (columns) of `scores` for which some (row, folder) can still
        reach the row's floor: partial score + |rest of the face| |rest of the mean| >= floor."""
        import numpy as np

        reach = np.multiply.outer(self._rest(rest_q), tails)
        reach += scores
        left = reach >= self._need(floor)[:, None]
        # (numpy's stubs allow a scalar for any(axis=); over one axis of a 2-d array it is 1-d)
        open_rows = cast("NDArray[np.bool_]", left.any(axis=1))
        return open_rows, cast("NDArray[np.bool_]", left[open_rows].any(axis=0))


def folder_means(data: CheckData) -> NDArray[np.float64]:
    """Unit mean vector of every identity after centring (zero rows for empty identities): the
    folder sums of the run's one fit, normalised; shared by misfiled, consistency, names and the
    merge ranking."""
    with data.lock:
        if "folder_means" not in data.cache:
            import numpy as np

            sums = folder_fit(data).sums
            norms = np.sqrt(np.einsum("ij,ij->i", sums, sums))
            data.cache["folder_means"] = sums / np.where(norms > 0, norms, 1.0)[:, None]
        means: NDArray[np.float64] = data.cache["folder_means"]
        return means


def folder_fit(data: CheckData) -> FolderFit:
    """own(i) for every face and each folder's mean pairwise similarity, shared by the checks.

    One pass over the table in folder order, in blocks of whole folders (a folder larger than a
    block is read twice: its sum first). With c the dataset mean and w_i = 1 / |x_i - c|, a
    centred face is w_i (x_i - c), so a folder's sum is S = sum w_i x_i - (sum w_i) c and a
    face's dot product with it w_i (x_i . S - c . S): two matrix-vector products per folder on
    the block's float64 rows, no centred copy of them. The table is only read."""
    with data.lock:
        if "folder_fit" not in data.cache:
            data.cache["folder_fit"] = _folder_fit(data)
        fit: FolderFit = data.cache["folder_fit"]
        return fit


def _folder_fit(data: CheckData) -> FolderFit:
    import numpy as np

    from ..context import budget_of

    t = data.table
    x = t.vectors
    owner = np.asarray(t.identity_of, dtype=np.int64)
    n_ids = len(t.identities)
    d = x.shape[1] if x.ndim == 2 else 0
    counts = np.bincount(owner, minlength=n_ids).astype(np.int64) if len(owner) else np.zeros(n_ids, np.int64)
    centre = x.mean(axis=0, dtype=np.float64) if len(x) else np.zeros(d)
    fit = FolderFit(counts=counts, own=np.full(len(x), np.nan), folder_mean=np.full(n_ids, np.nan),
                    sums=np.zeros((n_ids, d)), centre=centre, _starts=np.concatenate([[0], np.cumsum(counts)]),
                    extra={"owner": owner}, budget=budget_of(data.context))
    if len(owner) and (owner[1:] < owner[:-1]).any():
        fit._order = np.argsort(owner, kind="stable")
    rows_per_block = max(1, BLOCK_BYTES // (8 * max(d, 1)))
    from ..memory import release, release_rows

    first = 0
    while first < n_ids:
        # the folders [first, last) fill one block; one folder larger than a block is alone
        last = int(np.searchsorted(fit._starts, fit._starts[first] + rows_per_block, side="right")) - 1
        last = min(max(last, first + 1), n_ids)
        lo, hi = int(fit._starts[first]), int(fit._starts[last])
        # each block's rows are given back once read (a mapped table): the pass leaves no
        # resident copy of the table behind it (peak memory)
        if hi - lo > rows_per_block:
            _big_folder(fit, x, first, rows_per_block)
            if fit._order is None:
                release(x, lo, hi)
        elif hi > lo:
            rows = slice(lo, hi) if fit._order is None else fit._order[lo:hi]
            xb, w = _weighted(fit, x, rows)
            release_rows(x, rows, budget=fit.budget)
            dot = np.empty(hi - lo)
            for k in np.flatnonzero(counts[first:last]).tolist():
                a, b = int(fit._starts[first + k]) - lo, int(fit._starts[first + k + 1]) - lo
                fit.sums[first + k] = w[a:b] @ xb[a:b] - w[a:b].sum() * centre
                dot[a:b] = _dots(fit, xb[a:b], w[a:b], fit.sums[first + k])
            _score_own(fit, rows, dot, np.repeat(counts[first:last], counts[first:last]))
        first = last
    # mean of the n(n-1) ordered pairs: (|S|^2 - n) / (n (n - 1))
    sq = np.einsum("ij,ij->i", fit.sums, fit.sums)
    with np.errstate(invalid="ignore", divide="ignore"):
        fit.folder_mean = np.where(counts > 1, (sq - counts) / (counts * (counts - 1.0)), np.nan)
    return fit


def _weighted(fit: FolderFit, x: NDArray[Any], rows: slice | NDArray[np.intp]
              ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The rows in float64 and w = 1 / |row - centre| (1 where that is 0, as `centred` does)."""
    import numpy as np

    xb = x[rows].astype(np.float64)
    c = fit.centre
    norms = np.sqrt(np.maximum(np.einsum("ij,ij->i", xb, xb) - 2 * (xb @ c) + c @ c, 0.0))
    return xb, 1.0 / np.where(norms > 0, norms, 1.0)


def _dots(fit: FolderFit, xb: NDArray[np.float64], w: NDArray[np.float64], folder_sum: NDArray[np.float64]
          ) -> NDArray[np.float64]:
    """Each centred face's dot product with its folder's sum."""
    return w * (xb @ folder_sum - fit.centre @ folder_sum)


def _score_own(fit: FolderFit, rows: slice | NDArray[np.intp], dot: NDArray[np.float64], n: NDArray[np.int64]) -> None:
    """own(i) from each face's dot product with its folder's sum (itself included) and the sizes."""
    import numpy as np

    with np.errstate(invalid="ignore", divide="ignore"):
        fit.own[rows] = np.where(n > 1, (dot - 1.0) / (n - 1), np.nan)


def _big_folder(fit: FolderFit, x: NDArray[Any], folder: int, rows_per_block: int) -> None:
    import numpy as np

    members = np.arange(len(fit.own))[fit.members(folder)]
    total = np.zeros_like(fit.centre)
    for s in range(0, members.size, rows_per_block):
        xb, w = _weighted(fit, x, members[s : s + rows_per_block])
        total += w @ xb - w.sum() * fit.centre
    fit.sums[folder] = total
    n = int(fit.counts[folder])
    for s in range(0, members.size, rows_per_block):
        rows = members[s : s + rows_per_block]
        xb, w = _weighted(fit, x, rows)
        _score_own(fit, rows, _dots(fit, xb, w, total), np.full(rows.size, n))


def outlier_rows(fit: FolderFit, settings: CheckSettings) -> NDArray[np.intp]:
    """The faces judged as outliers by consistency: far below the own-folder distribution, in
    folders large enough to tell (each needs its best other folder exactly)."""
    import numpy as np

    outlier = fit.threshold(settings["outlier"], settings["outlier_quantile"])
    return np.flatnonzero((fit.counts[fit._owner] >= settings["min_faces"]) & (fit.own < outlier))


def crowding(means: np.ndarray, rows: np.ndarray, k: int, block: int = 256) -> np.ndarray:
    """Mean cosine of each of `rows`' mean vectors to its k nearest other (non-empty) means.

    float32 products (a ranking signal; 4x less memory traffic than float64 blocks, which cost
    1.6 s at 20k identities), blocks of `block` rows."""
    import numpy as np

    present = np.flatnonzero(np.einsum("ij,ij->i", means, means) > 0)
    k = min(k, present.size - 1)
    out = np.zeros(rows.size)
    if k <= 0:
        return out
    m = np.ascontiguousarray(means[present], dtype=np.float32)
    column = np.full(len(means), -1, dtype=np.int64)  # identity -> its column of m
    column[present] = np.arange(present.size)
    for s in range(0, rows.size, block):
        q = rows[s : s + block]
        sims = np.asarray(means[q], dtype=np.float32) @ m.T
        own = column[q]
        mine = np.flatnonzero(own >= 0)
        sims[mine, own[mine]] = -np.inf  # not itself
        top = np.partition(sims, sims.shape[1] - k, axis=1)[:, -k:]
        out[s : s + block] = top.mean(axis=1, dtype=np.float64)
    return out
