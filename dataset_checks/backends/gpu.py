"""On a GPU (faiss-gpu with a visible device): the flat or IVF index runs there. GPU indexes have
no range search, so a k-NN search is widened until it reaches below the radius for every query,
and the few queries that still saturate the largest k fall back to a bounded CPU search."""

from __future__ import annotations

from typing import Any, Callable, Protocol

import numpy as np
from numpy.typing import NDArray

from ..arrays import nonzero
from ..context import RunContext
from . import DEFAULT_TUNING, BuiltIndex, Emit, Place, Progress, SearchTuning, _bar, _faiss, _span


class DeviceIndex(BuiltIndex, Protocol):
    """What `GpuIndex` reads of the CPU-side index its backend built with `place`."""

    x: NDArray[np.float32]
    labels: np.ndarray
    radius: float
    faiss_index: Any  # the device's faiss index (faiss is untyped)

    def exact_rows(self, rows: np.ndarray, emit: Emit) -> None: ...


class DeviceBackend(Protocol):
    def build(self, x: NDArray[np.float32], labels: np.ndarray, radius: float, progress: Progress | None = None,
              place: Place | None = None) -> DeviceIndex: ...


def _gpu_scan(gpu_index: Any, x: np.ndarray, labels: np.ndarray, radius: float, emit: Emit, stats: dict[str, Any],
              fallback: Callable[[np.ndarray], None], progress: Progress | None = None,
              tuning: SearchTuning = DEFAULT_TUNING,
              start: int = 0, end: int | None = None) -> None:
    """Range search on an index that only has k-NN: widen k until every query reaches below
    radius. Each k-NN call holds at most `tuning.scan_cells` results, same-label hits are dropped before
    they are emitted, and queries that still saturate the largest k (a crowd bigger than it) go
    to `fallback(rows)`, a bounded CPU search. `start`/`end`: the query rows searched."""
    first, last = _span(len(x), start, end)
    batch = tuning.query_batch
    bar = _bar(progress, last - first, "searching", "vec")
    for s in range(first, last, batch):
        todo = np.arange(s, min(last, s + batch))
        k = tuning.gpu_k_start
        while todo.size:
            k = min(k, gpu_index.ntotal)
            step = max(1, tuning.scan_cells // k)
            saturated_all = []
            for t in range(0, todo.size, step):
                rows = todo[t : t + step]
                dist, nb = gpu_index.search(np.ascontiguousarray(x[rows]), k)
                saturated = (dist[:, -1] >= radius) & (k < gpu_index.ntotal)
                hit = (dist >= radius) & ~saturated[:, None] & (nb >= 0)
                hit &= labels[rows][:, None] != labels[np.maximum(nb, 0)]
                r, c = nonzero(hit)
                if r.size:
                    emit(rows[r], nb[r, c].astype(np.int64), dist[r, c].astype(np.float32))
                saturated_all.append(rows[saturated])
            todo = np.concatenate(saturated_all)
            if todo.size and k >= tuning.gpu_k_max:
                stats["cpu_fallback_queries"] = stats.get("cpu_fallback_queries", 0) + int(todo.size)
                fallback(todo)
                break
            k *= 4
        bar.update(min(batch, last - s))
    bar.close()



class GpuIndex:
    unit = "vec"

    def __init__(self, inner: DeviceIndex, res: Any, tuning: SearchTuning):
        self.inner, self.res, self.tuning = inner, res, tuning  # res: the device index lives in it
        self.info = inner.info
        self.stats: dict[str, Any] = {}
        self.units = len(inner.x)

    def calibrate(self, progress: Progress | None = None) -> None:
        self.inner.calibrate(progress)  # sets nprobe on the device index too

    def candidates(self, emit: Emit, start: int = 0, end: int | None = None,
                   progress: Progress | None = None, context: RunContext | None = None) -> None:
        inner = self.inner
        _gpu_scan(inner.faiss_index, inner.x, inner.labels, inner.radius, emit, self.stats,
                  lambda rows: inner.exact_rows(rows, emit), progress, tuning=self.tuning, start=start, end=end)
        # IVF only (backends/bounds.py); a flat index has neither rules nor certify_rows
        certify_rows: Callable[[np.ndarray, Emit], None] | None = getattr(inner, "certify_rows", None)
        if certify_rows is not None and getattr(getattr(inner, "rules", None), "certify", False):
            first, last = _span(len(inner.x), start, end)
            certify_rows(np.arange(first, last), emit)


class GpuBackend:
    """Wraps a CPU backend (flat or IVF) whose `build` accepts `place`: the index is built (and,
    for IVF, trained) on the device; the CPU copy serves calibration and the fallback."""

    def __init__(self, inner: DeviceBackend, tuning: SearchTuning = DEFAULT_TUNING):
        self.inner, self.tuning = inner, tuning

    def build(self, x: NDArray[np.float32], labels: np.ndarray, radius: float,
              progress: Progress | None = None) -> GpuIndex:
        faiss = _faiss()
        res = faiss.StandardGpuResources()
        built = self.inner.build(x, labels, radius, progress, place=lambda index: faiss.index_cpu_to_gpu(res, 0, index))
        return GpuIndex(built, res, self.tuning)
