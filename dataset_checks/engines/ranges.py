"""The candidates stage as ranges of units, run elsewhere, checkpointed; no Ray in this module.

A built index (`backends.BuiltIndex`) covers `range(units)`; disjoint ranges give disjoint
shares of the search whose union is the whole (backends/__init__.py). So the driver builds and
calibrates the index itself, *ships* it (below), cuts the units into ranges of about equal scan
cost, and lets workers run `built.candidates(emit, start, end)` on one range each. A worker
drops what the driver's collector would drop (below the threshold's margin, same folder),
dedups, and returns the range's pairs as sorted int64 keys (i * n + j, i < j); the driver feeds
them into the very collector of the local engine, which re-scores them in float64. The result is
the local engine's, whatever the ranges, their order or the machines.

Shipping: the built index is pickled (protocol 5) with three kinds of objects replaced by
references: the vector table (a worker maps the table's file by path, or gets the array from
the executor's shared store), faiss indexes (`faiss.serialize_index`: for the list scan, the
centroids and nprobe) and modules. Its numpy arrays (labels, each vector's nearest lists, the
lists' order) travel out of band, so a worker reads them in place (Ray's object store maps
them read-only) instead of unpickling copies. Whatever a backend keeps in its index object
travels the same way: a new attribute needs no change here.

Checkpoints: one file per finished range in `<cache>/ranges/<run digest>/`, the run digest
covering everything a range's result depends on: the shipped index (threshold, labels, probes,
centroids, nprobe, k-means seed, tuning), the table's identity, the collector's threshold and
pair limit, and the source of the search code. A rerun with the same digest skips the ranges
found there; a file that does not verify (checksum, key, shape) is ignored with a message.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import pickle
import shutil
import socket
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO, Callable, Iterator, TypedDict, cast

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from ..backends import BuiltIndex
    from ..search import _Collector

FORMAT = 1  # checkpoint files and run digests; bump when their meaning changes
KEEP_RUNS = 4  # run folders kept under <cache>/ranges (the newest; older ones are removed)
SAMPLE_ROWS = 64  # rows of the table compared to tell whether a worker maps the same file


class TableNotVisible(RuntimeError):
    """A worker cannot map the table's file (another machine without the shared filesystem)."""


class NotShippable(RuntimeError):
    """The built index holds something a worker cannot rebuild (a GPU index and its resources)."""


# -- the code a range runs ------------------------------------------------------------------------
_CODE: str | None = None


def code_digest() -> str:
    """The source of the modules a range runs: a checkpoint of other code is not trusted, and
    a worker running other code than the driver is refused."""
    global _CODE
    if _CODE is None:
        pkg = Path(__file__).resolve().parents[1]
        h = hashlib.sha256(str(FORMAT).encode())
        for path in [pkg / "search.py", *sorted((pkg / "backends").glob("*.py")), Path(__file__).resolve()]:
            h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        _CODE = h.hexdigest()
    return _CODE


# -- the table --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TableFile:
    """The vector table as a file a worker maps read-only: path, shape, and a digest of sampled
    rows that the worker checks before trusting what it mapped."""

    path: str
    rows: int
    dim: int
    sample: str  # sha256 of SAMPLE_ROWS evenly spaced rows
    identity: tuple[int, int, int]  # (size, mtime_ns, inode) on the driver's machine


# what a worker scans: the table's file, or the array itself (shipped through the executor)
Table = TableFile | np.ndarray


def _sample_digest(x: np.ndarray) -> str:
    rows = np.unique(np.linspace(0, len(x) - 1, SAMPLE_ROWS).astype(np.int64)) if len(x) else np.zeros(0, np.int64)
    return hashlib.sha256(np.ascontiguousarray(x[rows], dtype=np.float32).tobytes()).hexdigest()


def table_file(vectors: np.ndarray, x: np.ndarray) -> TableFile | None:
    """`vectors` as a file a worker can map (a float32 table file holding exactly x's rows,
    e.g. the table store's mapping), or None (an array in memory: it is shipped instead)."""
    name = getattr(vectors, "filename", None)
    if name is None or x.ndim != 2 or x.dtype != np.float32 or not len(x):
        return None
    try:
        st = os.stat(name)
    except OSError:
        return None
    n, d = x.shape
    if st.st_size != n * d * 4:
        return None
    sample = _sample_digest(x)
    if _sample_digest(np.memmap(name, dtype=np.float32, mode="r", shape=(n, d))) != sample:
        return None  # a slice, an offset or another file: not the rows the index was built on
    return TableFile(str(Path(name).resolve()), n, d, sample, (st.st_size, st.st_mtime_ns, st.st_ino))


def open_table(table: Table) -> np.ndarray:
    """The rows a worker scans: the array itself, or the table file mapped read-only."""
    if not isinstance(table, TableFile):
        return table
    try:
        x = np.memmap(table.path, dtype=np.float32, mode="r", shape=(table.rows, table.dim))
    except (OSError, ValueError) as exc:
        raise TableNotVisible(f"{socket.gethostname()} cannot map {table.path}: {exc}") from None
    if _sample_digest(x) != table.sample:
        raise TableNotVisible(f"{table.path} on {socket.gethostname()} holds other rows than the driver's")
    return x


def table_identity(table: TableFile | None, x: np.ndarray) -> str:
    """What the run digest records of the table: the file's identity, or an in-memory table's bytes."""
    if isinstance(table, TableFile):
        return json.dumps(["file", table.path, table.rows, table.dim, table.sample, list(table.identity)])
    h = hashlib.sha256(repr((x.shape, str(x.dtype))).encode())
    for s in range(0, len(x), 1 << 16):
        h.update(np.ascontiguousarray(x[s : s + (1 << 16)]).tobytes())
    return "array " + h.hexdigest()


# -- shipping a built index -------------------------------------------------------------------------
# (payload, buffers, blobs, extern): what a worker gets of a `Shipped`
ShippedParts = tuple[bytes, list[NDArray[np.uint8]], list[NDArray[np.uint8]], bytes]


@dataclass
class Shipped:
    """A built index as bytes: `payload` (pickle, protocol 5) with its numpy arrays as
    out-of-band `buffers` and its faiss indexes serialized in `blobs` (uint8 arrays both);
    `extern` pickles its `info` and `stats` (outputs, not inputs: left out of the digest)."""

    payload: bytes
    buffers: list[NDArray[np.uint8]]
    blobs: list[NDArray[np.uint8]]
    extern: bytes
    digest: str = ""

    def parts(self) -> ShippedParts:
        return self.payload, self.buffers, self.blobs, self.extern

    @property
    def nbytes(self) -> int:
        arrays = sum(int(b.nbytes) for b in (*self.buffers, *self.blobs))
        return len(self.payload) + arrays + len(self.extern)


class _Pickler(pickle.Pickler):
    def __init__(self, file: IO[bytes], table: np.ndarray, extern: dict[int, str]):
        super().__init__(file, protocol=5, buffer_callback=self._buffer)
        self.table, self.extern = table, extern
        self.buffers: list[NDArray[np.uint8]] = []
        self.blobs: list[NDArray[np.uint8]] = []
        self.faiss: dict[int, int] = {}

    def _buffer(self, buf: pickle.PickleBuffer) -> None:
        self.buffers.append(np.frombuffer(buf.raw(), dtype=np.uint8))

    def persistent_id(self, obj: Any) -> tuple[str] | tuple[str, str] | tuple[str, int] | None:
        if obj is self.table:
            return ("table",)
        if id(obj) in self.extern:
            return ("extern", self.extern[id(obj)])
        if isinstance(obj, types.ModuleType):
            return ("module", obj.__name__)
        if type(obj).__module__.startswith("faiss"):
            if not hasattr(obj, "ntotal"):
                raise NotShippable(f"{type(obj).__name__} (a faiss object that is not an index)")
            if id(obj) not in self.faiss:
                import faiss

                if hasattr(faiss, "GpuIndex") and isinstance(obj, faiss.GpuIndex):
                    raise NotShippable("a GPU index")
                self.faiss[id(obj)] = len(self.blobs)
                self.blobs.append(np.ascontiguousarray(faiss.serialize_index(obj)).view(np.uint8))
            return ("faiss", self.faiss[id(obj)])
        return None


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: IO[bytes], table: np.ndarray, extern: dict[str, Any], buffers: list[NDArray[np.uint8]],
                 blobs: list[NDArray[np.uint8]]):
        super().__init__(file, buffers=buffers)
        self.table, self.extern, self.blobs = table, extern, blobs
        self.faiss: dict[int, Any] = {}

    def persistent_load(self, pid: Any) -> object:  # (pickle's own signature: pid is what persistent_id gave)
        kind = pid[0]
        if kind == "table":
            return self.table
        if kind == "extern":
            return self.extern[pid[1]]
        if kind == "module":
            return importlib.import_module(pid[1])
        if kind == "faiss":
            if pid[1] not in self.faiss:
                import faiss

                self.faiss[pid[1]] = faiss.deserialize_index(np.asarray(self.blobs[pid[1]]))
            return self.faiss[pid[1]]
        raise pickle.UnpicklingError(f"unknown reference {pid!r}")


def ship(built: BuiltIndex, labels: np.ndarray, x: np.ndarray) -> Shipped:
    """`(built, labels)` as bytes for workers; `x` (the table the index was built on) is left
    out wherever the index refers to it."""
    info, stats = getattr(built, "info", {}), getattr(built, "stats", {})
    extern = {id(info): "info", id(stats): "stats"}
    out = io.BytesIO()
    pickler = _Pickler(out, x, extern)
    try:
        pickler.dump((built, np.asarray(labels)))
    except NotShippable:
        raise
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        raise NotShippable(f"{type(built).__name__} cannot be sent to workers: {exc}") from None
    shipped = Shipped(out.getvalue(), pickler.buffers, pickler.blobs,
                      pickle.dumps({"info": info, "stats": stats}, protocol=5))
    h = hashlib.sha256(shipped.payload)
    for b in (*shipped.buffers, np.frombuffer(b"--", dtype=np.uint8), *shipped.blobs):
        h.update(len(b).to_bytes(8, "little"))
        h.update(b.data)  # (numpy's stubs give ndarray the buffer protocol only from Python 3.12)
    shipped.digest = h.hexdigest()
    return shipped


def unship(parts: ShippedParts, x: np.ndarray) -> tuple[BuiltIndex, np.ndarray]:
    """(built, labels) back from `Shipped.parts()`, over the worker's table `x`. Arrays are
    views of the buffers (read-only where the store hands out read-only memory)."""
    payload, buffers, blobs, extern = parts
    loaded: tuple[BuiltIndex, np.ndarray] = _Unpickler(io.BytesIO(payload), x, pickle.loads(extern), list(buffers),
                                                        list(blobs)).load()
    return loaded


# -- one range: the task body -----------------------------------------------------------------------
class RangePairs(TypedDict):
    """A range's result as the driver merges it, computed now (RangeResult) or read back from its
    checkpoint (SavedRange). Plain dicts, so that they pickle and checkpoint as before."""

    keys: NDArray[np.int64]  # unique, sorted: i * n + j, i < j
    candidates: int
    stats: dict[str, float]  # the index's counters, this range's share
    info: dict[str, Any]  # the index's info entries the range changed (JSON scalars)
    seconds: float
    scan_seconds: float
    host: str


class RangeResult(RangePairs):
    """What a worker returns (`run_range`)."""

    code: str  # code_digest() of the worker: the driver refuses other code
    pid: int


class SavedRange(RangePairs):
    """A range read back from its checkpoint file (`Checkpoints.load`)."""

    format: int
    key: str  # Checkpoints.range_key
    start: int
    end: int


def _scalars(d: dict[str, Any]) -> dict[str, Any]:
    """The JSON-able scalar entries of an info dict (what a checkpoint can keep)."""
    return {str(k): (v.item() if isinstance(v, np.generic) else v) for k, v in d.items()
            if isinstance(v, (str, int, float, bool, np.generic)) and not isinstance(v, np.ndarray)}


def run_range(parts: ShippedParts, table: Table, start: int, end: int, threshold: float, max_pairs: int) -> RangeResult:
    """Every pair of the units [start, end): unique int64 keys (i * n + j, i < j) of the
    candidates the driver's collector would keep, and what the range cost."""
    from ..search import _Collector

    t0 = time.perf_counter()
    x = open_table(table)
    built, labels = unship(parts, x)
    before_stats, before_info = dict(built.stats), dict(built.info)
    collector = _Collector(x, labels, threshold, max_pairs)
    t1 = time.perf_counter()
    built.candidates(collector.add, start, end)
    keys = collector.unique_keys()
    stats = {k: v - before_stats.get(k, 0) for k, v in built.stats.items() if isinstance(v, (int, float))}
    info = _scalars({k: v for k, v in built.info.items() if before_info.get(k, object()) != v})
    return {"keys": keys, "candidates": int(collector.candidates), "stats": stats, "info": info,
            "seconds": time.perf_counter() - t0, "scan_seconds": time.perf_counter() - t1,
            "code": code_digest(), "host": socket.gethostname(), "pid": os.getpid()}


# -- cutting the units ------------------------------------------------------------------------------
def unit_costs(built: BuiltIndex) -> NDArray[np.float64]:
    """About what each unit costs to scan. IVF list scan: the list's members times the queries
    that probe it (the cells its products score); flat scan: the row's upper-triangle columns;
    otherwise the index's own `unit_costs()` (folder caps), or every unit alike."""
    units = int(built.units)
    if hasattr(built, "unit_costs"):
        return np.asarray(built.unit_costs(), dtype=np.float64)
    probes, index = getattr(built, "probes", None), getattr(built, "cpu_index", None)
    if built.unit == "list" and probes is not None and index is not None:
        nprobe = min(int(index.nprobe), int(index.nlist))
        near = probes[:, :nprobe].ravel()
        probing = np.bincount(near[near >= 0], minlength=units)[:units].astype(np.float64)
        home = probes[:, 0]
        members = np.bincount(home[home >= 0], minlength=units)[:units].astype(np.float64)
        return probing * members + probing + members
    if built.unit == "vec" and type(built).__name__ == "FlatIndex":
        return (units - np.arange(units)).astype(np.float64)
    return np.ones(units, dtype=np.float64)


def partition(costs: np.ndarray, ranges: int) -> list[tuple[int, int]]:
    """Consecutive ranges of units, about equal in summed cost (a unit is never split)."""
    units = len(costs)
    if units == 0:
        return []
    ranges = max(1, min(int(ranges), units))
    cum = np.cumsum(np.asarray(costs, dtype=np.float64))
    targets = cum[-1] * np.arange(1, ranges) / ranges
    cuts = np.searchsorted(cum, targets, side="left") + 1
    bounds = np.unique(np.concatenate([[0], np.clip(cuts, 1, units - 1) if units > 1 else [], [units]]).astype(int))
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


# -- checkpoints ------------------------------------------------------------------------------------
def _write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    from ..safe_write import atomic_write  # the one writer: never through a link planted at `path`

    atomic_write(path, write, binary=True, fsync=True)


class Checkpoints:
    """The finished ranges of one run digest: `<root>/<digest[:24]>/<start>-<end>.npz`, and the
    run's cut of the units (`plan.json`), so a resumed run cuts them the same way whatever the
    cluster's size now."""

    def __init__(self, root: Path, digest: str):
        self.root, self.digest = Path(root), digest
        self.folder = self.root / digest[:24]
        self.ignored: list[str] = []
        self.failed: str | None = None  # why checkpoints are not written (the search goes on)

    def _writing(self, what: Callable[[], None]) -> None:
        """Write, or note why not: a cache that cannot be written costs the resume, not the run."""
        if self.failed is not None:
            return
        try:
            what()
        except OSError as exc:
            self.failed = f"checkpoints cannot be written in {self.folder} ({exc.strerror or exc}); a killed run " \
                          "starts over"

    def range_key(self, start: int, end: int) -> str:
        return hashlib.sha256(f"{self.digest} {start} {end}".encode()).hexdigest()

    def path(self, start: int, end: int) -> Path:
        return self.folder / f"{start}-{end}.npz"

    def saved_plan(self, ranges: int | None) -> list[tuple[int, int]] | None:
        """The cut a run of this digest chose before (when `ranges` is unset or asked the same)."""
        try:
            plan = json.loads((self.folder / "plan.json").read_text())
            if plan.get("digest") != self.digest:
                return None
            bounds = [(int(a), int(b)) for a, b in plan["bounds"]]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return bounds if ranges is None or ranges == plan.get("requested") else None

    def save_plan(self, bounds: list[tuple[int, int]], requested: int | None) -> None:
        text = json.dumps({"format": FORMAT, "digest": self.digest, "requested": requested,
                           "bounds": bounds}).encode()

        def write() -> None:
            self.folder.mkdir(parents=True, exist_ok=True)
            _write_atomic(self.folder / "plan.json", lambda fp: fp.write(text))
            self._prune()

        self._writing(write)

    def _prune(self) -> None:
        """Keep the KEEP_RUNS most recent run folders (a finished run's ranges make its rerun
        instant; older searches' are dropped)."""
        try:
            runs = sorted((p for p in self.root.iterdir() if p.is_dir() and p != self.folder),
                          key=lambda p: p.stat().st_mtime, reverse=True)
        except OSError:
            return
        for old in runs[KEEP_RUNS - 1 :]:
            shutil.rmtree(old, ignore_errors=True)

    def save(self, start: int, end: int, result: RangeResult) -> None:
        keys = np.ascontiguousarray(result["keys"], dtype=np.int64)
        meta = {"format": FORMAT, "key": self.range_key(start, end), "start": start, "end": end,
                "candidates": result["candidates"], "stats": result["stats"], "info": result["info"],
                "seconds": result["seconds"], "scan_seconds": result["scan_seconds"], "host": result["host"]}
        meta_bytes = json.dumps(meta, sort_keys=True, default=float).encode()
        check = hashlib.sha256(keys.tobytes() + meta_bytes).hexdigest()

        def write(fp: BinaryIO) -> None:
            np.savez(fp, keys=keys, meta=np.frombuffer(meta_bytes, dtype=np.uint8), check=np.array(check))

        self._writing(lambda: _write_atomic(self.path(start, end), write))

    def load(self, start: int, end: int, n: int) -> SavedRange | None:
        """The range's result, or None (absent; or not trusted: `ignored` says why)."""
        path = self.path(start, end)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                keys, meta_bytes, check = z["keys"], z["meta"].tobytes(), str(z["check"])
            if hashlib.sha256(keys.tobytes() + meta_bytes).hexdigest() != check:
                raise ValueError("checksum mismatch")
            meta = json.loads(meta_bytes)
            if keys.dtype != np.int64 or keys.ndim != 1:
                raise ValueError(f"keys of dtype {keys.dtype}, {keys.ndim}-d")
            if keys.size and (keys[0] < 0 or keys[-1] >= n * n or np.any(np.diff(keys) <= 0)):
                raise ValueError("keys out of order or out of range")
        except Exception as exc:  # noqa: BLE001 - whatever is wrong with the file, it is recomputed
            from ..text import file_text  # the error may quote the file: shown as names are

            self.ignored.append(f"checkpoint {path.name} ignored (unreadable: {type(exc).__name__}: {file_text(exc)}); "
                                "the range is recomputed")
            return None
        if meta.get("key") != self.range_key(start, end) or meta.get("format") != FORMAT:
            self.ignored.append(f"checkpoint {path.name} ignored (made by another search: table, threshold, "
                                "index or code differ); the range is recomputed")
            return None
        return cast("SavedRange", {**meta, "keys": keys})  # meta: as `save` wrote it (checksum verified)


def run_digest(shipped: Shipped, table_id: str, threshold: float, max_pairs: int, built: BuiltIndex) -> str:
    h = hashlib.sha256()
    for part in (FORMAT, code_digest(), shipped.digest, table_id, repr(float(threshold)), int(max_pairs),
                 type(built).__name__, int(built.units), built.unit):
        h.update(str(part).encode() + b"\0")
    return h.hexdigest()


# -- the driver ---------------------------------------------------------------------------------------
@dataclass
class RangeRun:
    """What an executor runs: the shipped index, the table (its `TableFile`, or None: the array `x`) and the
    collector's threshold and pair limit."""

    shipped: Shipped
    table: TableFile | None  # None: workers get the array `x`
    x: np.ndarray
    threshold: float
    max_pairs: int
    stats: dict[str, Any] = field(default_factory=dict)


class ExecutorInfo(TypedDict, total=False):
    """What an executor says of where the ranges ran (merged into the engine's info)."""

    address: str
    nodes: int
    cpus: int
    table_fallback: str  # why the table went through the object store instead of its file


class _RangeRowRequired(TypedDict):
    start: int
    end: int
    pairs: int
    seconds: float
    resumed: bool  # read from its checkpoint, not computed in this run


class RangeRow(_RangeRowRequired, total=False):
    """One range in the engine's info (`per_range`)."""

    scored_cells: int


class Executor:
    """Runs ranges somewhere. `results(run, ranges)` yields ((start, end), result) as ranges
    finish, in any order; `close()` stops what is still running."""

    name = "in process"
    cpus = 1
    nodes = 1
    table_mode = "array"

    def default_ranges(self, units: int) -> int:
        return max(1, 4 * self.cpus)

    def results(self, run: RangeRun, ranges: list[tuple[int, int]]) -> Iterator[tuple[tuple[int, int], RangeResult]]:
        raise NotImplementedError

    def describe(self) -> ExecutorInfo:
        return {}

    def close(self) -> None:
        pass


class SerialExecutor(Executor):
    """Every range in this process, one after the other, through the same shipping and task body
    as a worker's (the engine's tests run without Ray; read-only buffers as Ray's store gives)."""

    def results(self, run: RangeRun, ranges: list[tuple[int, int]]) -> Iterator[tuple[tuple[int, int], RangeResult]]:
        payload, buffers, blobs, extern = run.shipped.parts()
        views: list[NDArray[np.uint8]] = []
        for b in buffers:
            view = b.view()
            view.flags.writeable = False
            views.append(view)
        table = run.table if isinstance(run.table, TableFile) else run.x
        self.table_mode = "file" if isinstance(run.table, TableFile) else "array"
        for start, end in ranges:
            yield (start, end), run_range((payload, views, blobs, extern), table, start, end, run.threshold,
                                          run.max_pairs)


class RangeEngine:
    """Runs the candidates stage as ranges on an executor, checkpointing each finished range.

    `ranges`: how many (default: the executor's, 4 per CPU; a resumed run keeps its cut).
    `checkpoints`: the folder (None: none are kept). `after_range(k)`: called after the k-th
    computed range is checkpointed and merged (tests interrupt a run there)."""

    name = "ranges"
    resume = True  # False (--full): no checkpoint is read, every range is computed and written anew

    def __init__(self, ranges: int | None = None, checkpoints: Path | None = None,
                 after_range: Callable[[int], None] | None = None):
        self.ranges, self.checkpoints, self.after_range = ranges, checkpoints, after_range

    def executor(self, run: RangeRun) -> Executor:
        return SerialExecutor()

    def local_reason(self, built: BuiltIndex) -> str | None:
        """Why this index is searched in this process instead (None: it is shipped)."""
        if type(built).__name__ == "GpuIndex":
            return "the GPU index runs on this machine's GPU"
        return None

    def candidates(self, built: BuiltIndex, collector: _Collector, vectors: np.ndarray, x: np.ndarray,
                   progress: Callable[..., Any] | None = None) -> dict[str, Any]:
        from ..backends import _bar

        t0 = time.perf_counter()
        info: dict[str, Any] = {"type": self.name}
        why = self.local_reason(built)
        if why is not None:
            built.candidates(collector.add, progress=progress)
            info.update(ran="in this process", why=why)
            return info
        shipped = ship(built, collector.labels, x)
        table = table_file(vectors, x)
        table_id = table_identity(table, x)
        n, units = len(x), int(built.units)
        run = RangeRun(shipped, table, x, collector.threshold, collector.max_pairs)
        digest = run_digest(shipped, table_id, collector.threshold, collector.max_pairs, built)
        store = Checkpoints(self.checkpoints, digest) if self.checkpoints is not None else None
        # hostile cache: --full (resume False) reads no checkpoint; its ranges are written anew
        bounds = store.saved_plan(self.ranges) if store is not None and self.resume else None
        done: dict[tuple[int, int], SavedRange] = {}
        if store is not None and bounds is not None:
            for start, end in bounds:
                saved = store.load(start, end, n)
                if saved is not None:
                    done[(start, end)] = saved
        info["ship_seconds"] = round(time.perf_counter() - t0, 4)
        executor: Executor | None = None
        per_range: list[RangeRow] = []
        bar = _bar(progress, units, f"searching ({self.name})", built.unit)
        try:
            if bounds is None or len(done) < len(bounds):
                t1 = time.perf_counter()
                executor = self.executor(run)
                info["startup_seconds"] = round(time.perf_counter() - t1, 4)
                if bounds is None:
                    requested = self.ranges or executor.default_ranges(units)
                    bounds = partition(unit_costs(built), requested)
                    if store is not None:
                        store.save_plan(bounds, requested)
            for (start, end), saved in sorted(done.items()):
                self._merge(built, collector, saved)
                per_range.append(self._row(start, end, saved, resumed=True))
                bar.update(end - start)
            todo = [r for r in bounds if r not in done]
            computed = 0
            t2 = time.perf_counter()
            if todo:
                assert executor is not None  # started above: not every range was done
                for (start, end), got in executor.results(run, todo):
                    if got["code"] != code_digest():
                        raise RuntimeError(f"a worker on {got['host']} runs other dataset_checks search code than "
                                           "this machine: install the same version on every node")
                    if store is not None:
                        store.save(start, end, got)
                    self._merge(built, collector, got)
                    per_range.append(self._row(start, end, got, resumed=False))
                    bar.update(end - start)
                    computed += 1
                    if self.after_range is not None:
                        self.after_range(computed)
            info["ranges_seconds"] = round(time.perf_counter() - t2, 4)
            merged = getattr(built, "ranges_merged", None)  # the index's info from the summed stats
            if merged is not None:
                merged()
        finally:
            bar.close()
            if executor is not None:
                info.update(executor.describe())
                executor.close()
        per_range.sort(key=lambda r: r["start"])
        scan = [r["seconds"] for r in per_range if not r["resumed"]]
        info.update(
            ranges=len(bounds), units=units, unit=built.unit, resumed=len(done), computed=len(bounds) - len(done),
            table="file" if table is not None else "array", shipped_bytes=shipped.nbytes,
            checkpoints=str(store.folder) if store is not None else None,
            range_seconds={"min": round(min(scan), 4), "median": round(float(np.median(scan)), 4),
                           "max": round(max(scan), 4), "sum": round(sum(scan), 4)} if scan else None,
            per_range=per_range if len(per_range) <= 256 else None,
        )
        if executor is not None:
            info["table"] = executor.table_mode
        if store is not None and store.ignored:
            info["ignored_checkpoints"] = store.ignored
        if store is not None and store.failed:
            info["checkpoints_failed"] = store.failed
        info["seconds"] = round(time.perf_counter() - t0, 4)
        return info

    @staticmethod
    def _merge(built: BuiltIndex, collector: _Collector, got: RangePairs) -> None:
        collector.candidates += int(got.get("candidates", 0))
        collector.add_keys(np.asarray(got["keys"], dtype=np.int64))
        for k, v in (got.get("stats") or {}).items():
            built.stats[k] = built.stats.get(k, 0) + v
        built.info.update(got.get("info") or {})

    @staticmethod
    def _row(start: int, end: int, got: RangePairs, resumed: bool) -> RangeRow:
        row: RangeRow = {"start": start, "end": end, "pairs": int(np.asarray(got["keys"]).size),
                         "seconds": round(float(got.get("seconds", 0.0)), 4), "resumed": resumed}
        cells = (got.get("stats") or {}).get("scored_cells")
        if cells:
            row["scored_cells"] = int(cells)
        return row


def describe(info: dict[str, Any] | None) -> str | None:
    """A few words on the engine for the report's search line (None for the local engine)."""
    if not info:
        return None
    if info.get("ran") == "in this process":
        return f"engine {info.get('type')}: ran in this process ({info.get('why')})"
    text = f"engine {info.get('type')}: {info.get('ranges')} ranges of {info.get('unit')}s"
    if info.get("cpus"):
        text += f" on {info['cpus']} CPU(s)"
    if info.get("resumed"):
        text += f", {info['resumed']} resumed from checkpoints"
    return text

