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

Registry
--------
Each backend module registers itself when imported: `register(BackendSpec(...))` with the
`index.type` value that selects it, a factory (`BackendRequest` -> `Backend`), its place in the
listing of types, whether it runs on a GPU (`GpuBackend` then wraps it) and whether it has a
calibration stage. Every module of this package is imported the first time the registry is read
(`backend_spec`, `index_types`), so no list of backends exists to update: the rules parser (`index.type`: "auto" or a
registered type),
`search.choose_backend` and `search.find_pairs` (GPU or not, calibration stage or not) all ask
the registry. bounds.py (a helper) and gpu.py (the device wrapper) register nothing. A backend
module defers heavy or optional imports (faiss: `_faiss()`) to its build: reading the registry,
which the rules parser does, imports every module here.

A new backend touches exactly one module, its own backends/<name>.py (the index, the backend,
the factory and its `register` call), plus its tests (tests/test_search*.py) and its line in
docs/search.md. Only making it the one `index.type: auto` picks would also touch the auto policy,
`search.resolve_kind`.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Protocol

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from ..context import RunContext
    from ..index_rules import IndexRules

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

# (query rows, neighbour rows, float32 scores)
Emit = Callable[[NDArray[np.integer[Any]], NDArray[np.integer[Any]], NDArray[np.floating[Any]]], None]
# faiss is untyped: a faiss index is Any. `place(cpu_index) -> the device's index`
Place = Callable[[Any], Any]


class ProgressBar(Protocol):
    def update(self, n: int, /) -> object: ...

    def close(self) -> None: ...


# tqdm-like: `progress(total=..., desc=..., unit=...)` opens a bar
Progress = Callable[..., ProgressBar]


class BuiltIndex(Protocol):
    info: dict[str, Any]  # merged into SearchResult.info after each stage (index, nlist, nprobe, ...)
    stats: dict[str, Any]  # counters merged after the search (scored_cells, cpu_fallback_queries)
    units: int  # candidates() covers range(units)
    unit: str  # "list" or "vec": what a unit is

    def calibrate(self, progress: Progress | None = None) -> None: ...

    def candidates(self, emit: Emit, start: int = 0, end: int | None = None,
                   progress: Progress | None = None, context: RunContext | None = None) -> None: ...

    # Optional (engines/): called once after the stats of ranges run elsewhere were summed into
    # `stats`, so that info derived from them (IVF's certificate) covers the whole search.
    # def ranges_merged(self) -> None: ...


class Backend(Protocol):
    def build(self, x: NDArray[np.float32], labels: np.ndarray, radius: float,
              progress: Progress | None = None) -> BuiltIndex: ...


@dataclass(frozen=True)
class BackendRequest:
    """What a factory may read to make its backend for one search."""

    n: int  # vectors in the table
    rules: IndexRules
    scan: str  # `index.scan` or the caller's override (IVF on the CPU)
    seed: int
    tuning: SearchTuning
    context: RunContext | None = None  # the run's (its memory budget); None: a search run alone


@dataclass(frozen=True)
class BackendSpec:
    index_type: str  # the `index.type` value that selects this backend
    factory: Callable[[BackendRequest], Backend]
    order: int  # place in `index_types()`, which the rules' error message lists in this order
    gpu: bool = False  # on a GPU, `GpuBackend` wraps it (its `build` then takes `place`)
    calibrated: bool = False  # find_pairs runs `calibrate` after the build, as a timed stage


_REGISTRY: dict[str, BackendSpec] = {}
_loaded = False


def register(spec: BackendSpec) -> BackendSpec:
    if spec.index_type == "auto":
        raise ValueError("index.type auto is the search's own choice, not a backend")
    known = _REGISTRY.get(spec.index_type)
    if known is not None and known.factory is not spec.factory:
        raise ValueError(f"two backends for index.type {spec.index_type!r}")
    _REGISTRY[spec.index_type] = spec
    return spec


def _load() -> None:
    """Import every module of this package once, so that each registers its backend."""
    global _loaded
    if _loaded:
        return
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    _loaded = True


def index_types() -> tuple[str, ...]:
    """The registered `index.type` values, in their listing order."""
    _load()
    return tuple(sorted(_REGISTRY, key=lambda t: (_REGISTRY[t].order, t)))


def backend_spec(index_type: str) -> BackendSpec:
    _load()
    spec = _REGISTRY.get(index_type)
    if spec is None:
        raise ValueError(f"no search backend for index.type {index_type!r}: one of {', '.join(index_types())}")
    return spec


def _faiss() -> ModuleType:
    import faiss  # deferred: importing faiss costs time that `--collect-only` must not pay

    return faiss


def _span(units: int, start: int, end: int | None) -> tuple[int, int]:
    end = units if end is None else min(end, units)
    start = max(0, start)
    return start, max(start, end)


class _bar:
    """A progress bar that may be absent."""

    def __init__(self, progress: Progress | None, total: int, desc: str, unit: str):
        self.bar = progress(total=total, desc=desc, unit=unit) if progress is not None else None

    def update(self, k: int) -> None:
        if self.bar is not None:
            self.bar.update(k)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _stage:
    """A one-step progress bar for a stage with no natural count (k-means, calibration)."""

    def __init__(self, progress: Progress | None, desc: str):
        self.bar = progress(total=1, desc=desc, unit="stage") if progress is not None else None

    def __enter__(self) -> _stage:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.close()
