"""The seam between `search.find_pairs` and the indexes it drives.

A backend turns the vector table into candidates: `build` returns a `BuiltIndex`, whose
`candidates(emit, start, end)` emits every (query, neighbour, float32 score) at or above the
radius for one range of its units (inverted lists for the IVF list scan, query rows otherwise).
The ranges are disjoint and their union is the whole search, so a sharded or distributed backend
runs `candidates` on slices of `range(units)` and needs no other hook (the shape of faiss's
`contrib/big_batch_search.py`, where `start_list`/`end_list` split the work). Candidates may
repeat and may be same-folder: the driver's collector dedups, drops and re-scores in float64.

Tuning knobs are fields of `SearchTuning`, passed down, never patched: the module constants
below are only their defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np

# float32 dot products of unit vectors are off by at most a few 1e-7 (d <= 4096); the margin
# keeps every pair whose exact similarity is >= threshold among the candidates.
RADIUS_MARGIN = 1e-4
# A sampled miss this far above the threshold is never tolerated, whatever recall_target says:
# clear matches are the label errors users care about most.
CLEAR_MATCH_MARGIN = 0.05

QUERY_BATCH = 4096
# k-means iterations: 5 kept recall (1.0 at 0.85, 0.9998 at 0.5) and nprobe on the 57k benchmark
# while cutting training from 0.47 s to 0.27 s; calibration catches centroids that are worse.
KMEANS_NITER = 5
# k-means on a subsample: training dominates the cost on CPUs and the lists only need to be
# roughly balanced, not optimal (see benchmarks/ for the measurement).
KMEANS_POINTS_PER_CENTROID = 32
PROBES_KEPT = 16  # nearest lists kept per vector from the build (calibration rarely goes past 16)
SCAN_CELLS = 1 << 22  # score-matrix cells per BLAS product (list scan, flat scan): 16 MB of float32
# faiss range_search returns every hit of a batch at once, same folder included: a batch is cut
# so that the vectors its queries probe (an upper bound on its hits) stay below this.
RANGE_BATCH_PROBED = 1 << 22
# Calibration: score-matrix cells per exact product, and same-folder hits kept per product (a
# uniform sample, weighted back; see ivf._choose_nprobe).
CALIBRATION_CELLS = 1 << 21
CALIBRATION_SAME_KEPT = 1 << 12
CALIBRATION_QUERIES = 512
NPROBE_START = 4
GPU_K_START, GPU_K_MAX = 128, 2048
# A list is split by label when its most common label holds at least this share of it: that
# folder's own queries then skip its members, whose hits would all be dropped as same-folder.
SPLIT_SHARE = 0.5
SPLIT_MIN = 64
# Bounds (backends/bounds.py): caps of whole lists skip probed lists and certify unprobed ones;
# caps of the folders inside a list (at least CAP_MIN members, outliers beyond CAP_PEEL times
# the median angle + 3 degrees scored one by one) skip a folder's members for the queries the
# cap excludes.
CAP_MIN = 3
CAP_PEEL = 1.3
# A list is scanned through its folder caps only when (queries x members in caps) reaches this
# and a quarter of its members are in caps: on LFW (folders of 1-2 faces) they cost more than
# they save.
CAP_MIN_SAVING = 1 << 16


@dataclass(frozen=True)
class SearchTuning:
    """Knobs that change speed and memory, never which pairs are found (calibration's sample
    size and starting nprobe excepted: they pick nprobe)."""

    query_batch: int = QUERY_BATCH
    kmeans_niter: int = KMEANS_NITER
    kmeans_points_per_centroid: int = KMEANS_POINTS_PER_CENTROID
    probes_kept: int = PROBES_KEPT
    scan_cells: int = SCAN_CELLS
    range_batch_probed: int = RANGE_BATCH_PROBED
    calibration_cells: int = CALIBRATION_CELLS
    calibration_same_kept: int = CALIBRATION_SAME_KEPT
    calibration_queries: int = CALIBRATION_QUERIES
    nprobe_start: int = NPROBE_START
    gpu_k_start: int = GPU_K_START
    gpu_k_max: int = GPU_K_MAX
    split_share: float = SPLIT_SHARE
    split_min: int = SPLIT_MIN
    # provable bounds in the IVF list scan (bounds.py): list caps (skip and certificate), and
    # per-folder caps inside each list (off: every member of a probed list is scored)
    list_bounds: bool = True
    folder_caps: bool = True
    cap_min: int = CAP_MIN
    cap_peel: float = CAP_PEEL
    cap_min_saving: int = CAP_MIN_SAVING


DEFAULT_TUNING = SearchTuning()

Emit = Callable[[np.ndarray, np.ndarray, np.ndarray], None]  # (query rows, neighbour rows, float32 scores)


class BuiltIndex(Protocol):
    info: dict[str, Any]  # merged into SearchResult.info after each stage (index, nlist, nprobe, ...)
    stats: dict[str, Any]  # counters merged after the search (scored_cells, cpu_fallback_queries)
    units: int  # candidates() covers range(units)
    unit: str  # "list" or "vec": what a unit is

    def calibrate(self, progress=None) -> None: ...

    def candidates(self, emit: Emit, start: int = 0, end: int | None = None, progress=None) -> None: ...

    # Optional (engines/): called once after the stats of ranges run elsewhere were summed into
    # `stats`, so that info derived from them (IVF's certificate) covers the whole search.
    # def ranges_merged(self) -> None: ...


class Backend(Protocol):
    def build(self, x: np.ndarray, labels: np.ndarray, radius: float, progress=None) -> BuiltIndex: ...


def _faiss():
    import faiss  # deferred: importing faiss costs time that `--collect-only` must not pay

    return faiss


def _span(units: int, start: int, end: int | None) -> tuple[int, int]:
    end = units if end is None else min(end, units)
    start = max(0, start)
    return start, max(start, end)


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
