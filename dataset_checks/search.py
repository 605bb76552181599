"""One similarity search over the whole dataset: every cross-folder pair at or above a threshold.

This is a range search, not a top-k search: a vector in a crowded folder (video frames, bursts)
has all its k nearest neighbours in its own folder, so a top-k recipe never sees its cross-folder
match. Here every neighbour with similarity >= the radius is returned, however many there are.

The default (`index.type: auto`) is exact at every size, proven rather than sampled:

* `flat`: exact search by blocked GEMM over the upper triangle, rows in folder order so that a
  folder's own columns are skipped; chosen below `flat_below` vectors.
* `caps`: exact search by folder caps (backends/caps.py): every face against the provable bound
  of every other folder, the members of the caps it cannot exclude scored; chosen above
  `flat_below` on the CPU (on a GPU: the IVF there, with the same proof after it).
* `ivf` (only when asked for; not proven exact unless `index.certify`): `IndexIVFFlat` with inner product. `nprobe` is calibrated in the same run: the exact
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

import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, TypedDict, cast

import numpy as np
from numpy.typing import NDArray

from .arrays import nonzero
from .context import RunContext
from .backends import (  # noqa: F401  (the defaults, importable from here as before)
    CALIBRATION_CELLS, CALIBRATION_QUERIES, CALIBRATION_SAME_KEPT, CLEAR_MATCH_MARGIN, DEFAULT_TUNING, GPU_K_MAX,
    GPU_K_START, KMEANS_NITER, PROBES_KEPT, QUERY_BATCH, RADIUS_MARGIN, RANGE_BATCH_PROBED, SCAN_CELLS, SPLIT_MIN,
    SPLIT_SHARE, Backend, BackendRequest, BuiltIndex, Emit, SearchTuning, _bar, _faiss, _stage, backend_spec)
from .backends.caps import CAPS_MAX_SCANNED, CapsBackend  # noqa: F401
from .backends.flat import FlatBackend, _exact_rows, _flat_scan  # noqa: F401
from .backends.gpu import DeviceBackend, GpuBackend, _gpu_scan  # noqa: F401
from .backends.ivf import (  # noqa: F401
    IVFBackend, _choose_nprobe, _cpu_range, _ivf_lists, _ivf_range, _list_of, _list_scan, _list_scan_chunks,
    _nearest_lists, _set_nprobe, _training_rows, auto_nlist)
from .index_rules import IndexRules

MAX_PAIRS_DEFAULT = 5_000_000



class SearchTooBroad(RuntimeError):
    """The threshold matches so many cross-folder pairs that the result would be meaningless."""


@dataclass
class SearchResult:
    i: NDArray[np.int64]  # i < j, row indices into the vector table
    j: NDArray[np.int64]
    sim: NDArray[np.float64]  # cosine similarity, >= threshold
    # An open JSON record, not a fixed schema: find_pairs' own keys (vectors, dim, threshold,
    # timings, device, candidates, engine) plus whatever the backend's `info` and `stats` hold,
    # in the order they were merged; findings.json and the search state store it as it is.
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.i.size)


def gpu_count() -> int:
    faiss = _faiss()
    get = getattr(faiss, "get_num_gpus", None)
    try:
        return int(get()) if get else 0
    except Exception:  # a CUDA build with a broken driver: run on the CPU
        return 0


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
        r, c = nonzero(hit)
        out_i.append(r + s)
        out_j.append(c + s)
    if not out_i:
        return _pack([], [], [])
    i, j = np.concatenate(out_i), np.concatenate(out_j)
    sim = pair_similarity(np.asarray(vectors, dtype=np.float32), i, j)
    ok = sim >= threshold
    return _pack([i[ok]], [j[ok]], [sim[ok]])


def _pack(out_i: list[np.ndarray], out_j: list[np.ndarray], out_s: list[np.ndarray]) -> SearchResult:
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
        self.add_keys(np.unique(a.astype(np.int64) * len(self.vectors) + b))

    def add_keys(self, key: np.ndarray) -> None:
        """Unique pair keys (i * n + j, i < j) already filtered as `add` does: a range's result
        from an engine's worker (engines/)."""
        if not key.size:
            return
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

    def unique_keys(self) -> np.ndarray:
        return np.unique(np.concatenate(self.keys)) if self.keys else np.zeros(0, np.int64)

    def result(self) -> SearchResult:
        n = len(self.vectors)
        key = self.unique_keys()
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




class Exactness(TypedDict):
    exact: bool
    how: str


def exactness(info: dict[str, Any] | None) -> Exactness:
    """Whether the search that gave these pairs is proven exact, and how (findings.json `exact`,
    the summary's search line): flat and folder caps always; an IVF index only with its proof
    (`index.certify`) or with every list probed."""
    if info is None:
        return {"exact": False, "how": "no search: it failed"}
    if info.get("index") == "none":
        return {"exact": True, "how": "fewer than two folders: no pair to find"}
    certified = info.get("certified") or {}
    if certified.get("exact"):
        return {"exact": True, "how": str(certified.get("how") or "")}
    return {"exact": False, "how": "index.type ivf: an IVF index with a sampled nprobe"}


def resolve_kind(n: int, rules: IndexRules, use_gpu: bool) -> str:
    """The search `index.type` means for n vectors: `auto` is exact, flat below `flat_below`,
    else the folder-caps search (on a GPU: the IVF index there, with the folder-caps proof)."""
    if rules.type != "auto":
        return rules.type
    if n < rules.flat_below:
        return "flat"
    return "ivf" if use_gpu else "caps"


def choose_backend(kind: str, use_gpu: bool, n: int, rules: IndexRules, scan: str, seed: int,
                   tuning: SearchTuning, context: RunContext | None = None) -> Backend:
    """The backend for a resolved index type (a registered one, backends/__init__.py) and
    device; one that does not run on a GPU ignores `use_gpu`."""
    spec = backend_spec(kind)
    backend = spec.factory(BackendRequest(n=n, rules=rules, scan=scan, seed=seed, tuning=tuning, context=context))
    if use_gpu and spec.gpu:  # BackendSpec.gpu promises a `build` that takes `place`
        return GpuBackend(cast(DeviceBackend, backend), tuning)
    return backend


def find_pairs(
    vectors: np.ndarray,
    labels: np.ndarray,
    threshold: float,
    rules: IndexRules | None = None,
    progress: Callable[..., Any] | None = None,
    max_pairs: int = MAX_PAIRS_DEFAULT,
    seed: int = 0,
    ivf_scan: str | None = None,
    tuning: SearchTuning = DEFAULT_TUNING,
    engine: Any = None,
    backend: Backend | None = None,
    context: RunContext | None = None,
) -> SearchResult:
    """Every pair of vectors with different labels and cosine similarity >= threshold.

    `vectors` must be unit length (float32); `labels` gives each row's identity.
    `ivf_scan` (default: `rules.scan`): "lists" (list-major BLAS scan of the IVF on the CPU) or
    "faiss" (`IndexIVFFlat.range_search`); both find the same pairs. `tuning`: block sizes,
    k-means and calibration knobs (see `SearchTuning`). `engine` (engines/, e.g. `RayEngine`):
    runs the candidates stage as ranges of the index's units elsewhere; None: in this process.
    `backend`: the one to use instead of `choose_backend`'s, of the same kind (the search
    state's IVF with stored centroids). `context`: the run's (its memory budget is checkpointed
    by the stages that read the table out of order).

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

    radius = float(threshold) - RADIUS_MARGIN
    use_gpu = rules.gpu if rules.gpu is not None else gpu_count() > 0
    if use_gpu and gpu_count() == 0:
        raise RuntimeError("index.gpu is true in the rules, but faiss sees no GPU")
    kind = resolve_kind(n, rules, use_gpu)
    if rules.type == "auto" and kind == "ivf":
        rules = replace(rules, certify=True)  # the default is exact: the GPU's IVF with its proof
    spec = backend_spec(kind)
    use_gpu = use_gpu and spec.gpu
    info["device"] = "gpu" if use_gpu else "cpu"
    backend = backend or choose_backend(kind, use_gpu, n, rules, ivf_scan or rules.scan, seed, tuning, context)
    collector = _Collector(x, labels, float(threshold), max_pairs)

    t0 = time.perf_counter()
    built = backend.build(x, labels, radius, progress)
    info.update(built.info)
    timings["build"] = time.perf_counter() - t0

    if spec.calibrated:
        t0 = time.perf_counter()
        built.calibrate(progress)
        info.update(built.info)
        timings["calibrate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if engine is None:
        built.candidates(collector.add, progress=progress, context=context)
    else:  # engines/: the same ranges of units, run as tasks, into the same collector
        info["engine"] = engine.candidates(built, collector, vectors, x, progress=progress)
    result = collector.result()
    timings["search"] = time.perf_counter() - t0
    info.update(built.info)
    info["candidates"] = collector.candidates
    info.update(built.stats)
    result.info = info
    return result
