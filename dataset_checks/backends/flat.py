"""Exact flat search by blocked GEMM (below `index.flat_below` vectors)."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..arrays import nonzero
from ..context import RunContext
from . import (DEFAULT_TUNING, SCAN_CELLS, BackendRequest, BackendSpec, Emit, Place, Progress, SearchTuning, _bar,
               _faiss, _span, register)


def _flat_scan(x: np.ndarray, labels: np.ndarray, radius: float, emit: Emit, progress: Progress | None = None,
               cells: int | None = None, start: int = 0, end: int | None = None) -> None:
    """Exact range search of every row against every row, cross-label hits only, by GEMM.

    Replaces `IndexFlatIP.range_search`, which returns every same-folder hit before anything can
    drop it (20,000 near-identical frames: 400 million hits). Rows are taken in label order, so a
    block of queries from one folder skips that folder's columns altogether, and only the upper
    triangle is scored (each pair once). The score matrix never exceeds `cells` cells.
    `start`/`end`: the query rows, counted in label order; each pair is scored from its first
    row's side only, so disjoint ranges give disjoint candidates.
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
    first, last = _span(n, start, end)
    bar = _bar(progress, last - first, "searching", "vec")
    for qs in range(first, last, rows):
        qe = min(last, qs + rows)
        lq = ls[qs:qe]
        single = lq[0] == lq[-1]  # sorted: one folder; its own columns (up to its end) are skipped
        col0 = int(run_end[qs]) if single else qs
        xq = xs[qs:qe]
        for cs in range(col0, n, cols):
            ce = min(n, cs + cols)
            sims = xq @ xs[cs:ce].T
            hit = sims >= radius
            if not single:
                hit &= lq[:, None] != ls[None, cs:ce]
                if cs < qe:  # the diagonal block: each pair once
                    hit &= np.arange(qs, qe)[:, None] < np.arange(cs, ce)[None, :]
            r, c = nonzero(hit)
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
            r, c = nonzero(sims >= radius)  # few hits: their labels are compared, not the block's
            cross = labels[q[r]] != labels[c + cs]
            r, c = r[cross], c[cross]
            if r.size:
                emit(q[r], c + cs, sims[r, c])


class FlatIndex:
    unit = "vec"  # units: rows in label order (the scan's order), so a range is a run of folders

    def __init__(self, x: NDArray[np.float32], labels: np.ndarray, radius: float, tuning: SearchTuning,
                 faiss_index: Any = None):
        self.x, self.labels, self.radius, self.tuning = x, labels, radius, tuning
        self.faiss_index = faiss_index  # only built for a device that needs a faiss index (GPU)
        self.units = len(x)
        self.info: dict[str, Any] = {"index": "IndexFlatIP",
                                     "certified": {"exact": True, "how": "flat: every pair scored"}}
        self.stats: dict[str, Any] = {}

    def calibrate(self, progress: Progress | None = None) -> None:
        pass  # exact: nothing to calibrate

    def candidates(self, emit: Emit, start: int = 0, end: int | None = None,
                   progress: Progress | None = None, context: RunContext | None = None) -> None:
        # `context` unused: the flat scan's blocks are bounded and read the table in order
        _flat_scan(self.x, self.labels, self.radius, emit, progress, cells=self.tuning.scan_cells,
                   start=start, end=end)

    def exact_rows(self, rows: np.ndarray, emit: Emit) -> None:
        _exact_rows(self.x, self.labels, rows, self.radius, emit, cells=self.tuning.scan_cells)


class FlatBackend:
    def __init__(self, tuning: SearchTuning = DEFAULT_TUNING):
        self.tuning = tuning

    def build(self, x: NDArray[np.float32], labels: np.ndarray, radius: float, progress: Progress | None = None,
              place: Place | None = None) -> FlatIndex:
        """`place(cpu_index) -> device index`: also build an IndexFlatIP and move it there."""
        device_index = None
        if place is not None:
            cpu_index = _faiss().IndexFlatIP(x.shape[1])
            cpu_index.add(x)
            device_index = place(cpu_index)
        return FlatIndex(x, labels, radius, self.tuning, device_index)


def _flat(request: BackendRequest) -> FlatBackend:
    return FlatBackend(request.tuning)


register(BackendSpec("flat", _flat, order=10, gpu=True))
