"""The search state a run leaves in the cache for the next one (incremental runs).

What the cross-identity search found depends only on the table's rows (their vectors and
folders), the radius it searched at and the index settings. So the state keeps, in
`<cache>/search_state/<dataset>/` (never inside the dataset):

* every row's **content key**: 128 bits of the SHA-256 digest of its float32 bytes (the row as the
  table holds it, normalised); a row is known by (its folder's name, its key, which occurrence
  of that key in the folder it is), so renaming a file costs nothing and moving it to another
  folder makes it a new row there (its pairs change meaning);
* every folder's name, listing digest (`Prepared.folder_versions`) and row count: a folder whose
  listing did not change keeps its keys without hashing a row;
* the accepted pairs (row, row, float64 similarity) at the radius searched, with the settings
  they are valid for (`key`) and the dataset version of the table they describe (`version`);
* the IVF index of the last full run, when there was one: centroids and every row's nearest
  lists (nearest first; column 0 is the row's list), the nprobe it was calibrated to, and what
  it looked like when trained, so that its drift can be judged (list balance, calibration).

Written into a temporary folder and renamed into place; every array's size and SHA-256 digest
is in `state.json` and checked when loaded: a state that does not match is never trusted (the
run is a full one and says why).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .table_store import OWNER, dataset_folder, drop_staging, make_staging, sweep_staging

FORMAT = 1  # bump when the files or their meaning change: older states are then rebuilt
STATE = "state.json"
ARRAYS = ("keys", "pair_i", "pair_j", "pair_sim", "centroids", "probes")


def state_folder(cache_dir: Path, root: Path) -> Path:
    """One folder per dataset root, named like the table's (table_store.dataset_folder)."""
    table = dataset_folder(cache_dir, root)
    return Path(cache_dir) / "search_state" / table.name


def lock_folder(cache_dir: Path, root: Path) -> Path:
    """A folder that is never replaced, for the lock on the dataset's table and state."""
    return Path(cache_dir) / "locks" / dataset_folder(cache_dir, root).name


def newest_other(folder: Path) -> Path | None:
    """The most recently written state beside `folder` (another dataset path's), or None.

    A state is valid for any table whatever its path: rows are matched by folder name and
    content, so a CI checkout at another path (another runner's build folder) starts from the
    state its cache brought along instead of a full run."""
    best, when = None, None
    try:
        candidates = [p for p in Path(folder).parent.iterdir() if p != Path(folder) and not p.name.startswith(".")]
    except OSError:
        return None
    for p in candidates:
        try:
            t = (p / STATE).stat().st_mtime_ns
        except OSError:
            continue
        if when is None or t > when:
            best, when = p, t
    return best


def row_keys(vectors: np.ndarray, block: int = 4096) -> NDArray[np.uint64]:
    """(n, 2) uint64: the first 128 bits of the SHA-256 digest of each row's float32 bytes
    (SHA-256 rather than BLAKE2: most CPUs hash it in hardware, 2.6 s per million 512-d rows
    against 3.8 s on the 2-core development machine)."""
    n = len(vectors)
    out = np.empty((n, 2), dtype=np.uint64)
    sha = hashlib.sha256
    for s in range(0, n, block):
        rows = np.ascontiguousarray(vectors[s : s + block], dtype=np.float32)
        size = rows.shape[1] * 4 if rows.ndim == 2 else 0
        # `.data`: the array's own memoryview (numpy's stubs give ndarray no buffer protocol before 3.12)
        data = rows.reshape(-1).data.cast("B") if rows.size else b""
        digests = b"".join(sha(data[k * size : (k + 1) * size]).digest()[:16] for k in range(len(rows)))
        out[s : s + len(rows)] = np.frombuffer(digests, dtype=np.uint64).reshape(len(rows), 2)
    return out


def imbalance(assign: np.ndarray, nlist: int) -> float:
    """faiss's imbalance factor of a list assignment: 1.0 when every list holds as many rows,
    larger as rows pile into fewer lists (the list scan's cost grows with it)."""
    sizes = np.bincount(np.asarray(assign, dtype=np.int64), minlength=nlist).astype(np.float64)
    total = sizes.sum()
    return float(nlist * (sizes**2).sum() / total**2) if total else 1.0


@dataclass
class IndexState:
    centroids: NDArray[np.float32]  # (nlist, d)
    probes: NDArray[np.signedinteger[Any]]  # (rows, P) int16 or int32: each row's nearest lists, nearest first
    nprobe: int  # calibrated by the last full run that searched with this index
    trained: dict[str, Any]  # rows, imbalance, nprobe, nlist when the centroids were trained
    rebuild: str | None = None  # why the next full run trains new centroids (drift seen since)

    @property
    def nlist(self) -> int:
        return int(self.centroids.shape[0])

    def imbalance(self) -> float:
        return imbalance(self.probes[:, 0], self.nlist)

    def as_json(self) -> dict[str, Any]:
        return {"nlist": self.nlist, "nprobe": self.nprobe, "trained": self.trained, "rebuild": self.rebuild}


@dataclass
class SearchState:
    key: dict[str, Any]  # the settings the pairs are valid for (incremental.state_key)
    radius: float  # every cross-folder pair at or above it is in the pairs
    threshold: float  # the run's lowest threshold (rules.min_threshold), for messages
    folders: list[str]  # per folder, in row order: name,
    folder_versions: list[str]  # listing digest,
    folder_rows: list[int]  # and rows
    keys: NDArray[np.uint64]  # (rows, 2)
    pair_i: NDArray[np.int64]  # i < j
    pair_j: NDArray[np.int64]
    pair_sim: NDArray[np.float64]
    info: dict[str, Any] = field(default_factory=dict)  # the last full run's search info
    index: IndexState | None = None
    history: dict[str, Any] = field(default_factory=dict)
    root: str = ""  # the dataset path it was written for (said when another path's state is used)
    version: str = ""  # the dataset version (table_store.Version digest) of the table it describes

    @property
    def rows(self) -> int:
        return int(self.keys.shape[0])


def save(folder: Path, state: SearchState) -> None:
    """Write the state into a temporary folder beside `folder`, then rename it into place."""
    folder = Path(folder)
    started = time.time()
    staging = make_staging(folder.parent)  # hostile cache: locked while written, swept if killed
    sweep_staging(folder.parent, started)
    try:
        arrays: dict[str, np.ndarray] = {"keys": state.keys, "pair_i": state.pair_i, "pair_j": state.pair_j,
                                         "pair_sim": state.pair_sim}
        if state.index is not None:
            arrays["centroids"] = state.index.centroids
            arrays["probes"] = state.index.probes
        files = {}
        for name, arr in arrays.items():
            path = staging / f"{name}.npy"
            np.save(path, np.ascontiguousarray(arr), allow_pickle=False)
            files[name] = {"bytes": path.stat().st_size, "sha256": _digest(path)}
        doc = {"format": FORMAT, "key": state.key, "radius": state.radius, "threshold": state.threshold,
               "rows": state.rows, "pairs": int(state.pair_i.size), "folders": state.folders,
               "folder_versions": state.folder_versions, "folder_rows": state.folder_rows, "info": state.info,
               "index": state.index.as_json() if state.index is not None else None, "history": state.history,
               "root": state.root, "version": state.version, "files": files}
        (staging / STATE).write_text(json.dumps(doc, ensure_ascii=True, default=_plain))
        old = folder.with_name(folder.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            folder.rename(old)
        staging.rename(folder)
        (folder / OWNER).unlink(missing_ok=True)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        drop_staging(staging)  # gone when renamed; else removed, whatever failed (a full disk)


class Damaged(ValueError):
    """A stored state that does not match its own description."""


def load(folder: Path) -> SearchState | None:
    """The stored state, or None when there is none. Raises Damaged (with what is wrong) for a
    state that cannot be trusted: unreadable, another format, a file of the wrong size or digest,
    arrays that do not fit together."""
    folder = Path(folder)
    path = folder / STATE
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
        if doc.get("format") != FORMAT:
            raise Damaged(f"format {doc.get('format')!r}, this version writes {FORMAT}")
        arrays = {}
        for name, want in doc["files"].items():
            if name not in ARRAYS:
                raise Damaged(f"unknown file {name}")
            p = folder / f"{name}.npy"
            if p.stat().st_size != want["bytes"]:
                raise Damaged(f"{p.name} holds {p.stat().st_size} bytes, {want['bytes']} were written")
            if _digest(p) != want["sha256"]:
                raise Damaged(f"{p.name} does not match its SHA-256 digest")
            arrays[name] = np.load(p, allow_pickle=False)
        rows, folders = int(doc["rows"]), list(doc["folders"])
        folder_rows = [int(r) for r in doc["folder_rows"]]
        keys = arrays["keys"]
        i, j, sim = arrays["pair_i"], arrays["pair_j"], arrays["pair_sim"]
        if keys.shape != (rows, 2) or keys.dtype != np.uint64:
            raise Damaged(f"keys of shape {keys.shape} for {rows} rows")
        if len(folder_rows) != len(folders) or len(doc["folder_versions"]) != len(folders) \
                or sum(folder_rows) != rows or min(folder_rows, default=0) < 0:
            raise Damaged("the folders' rows do not add up to the table's")
        if not (i.shape == j.shape == sim.shape == (int(doc["pairs"]),)) or i.dtype != np.int64 \
                or j.dtype != np.int64 or sim.dtype != np.float64:
            raise Damaged("pair arrays of different lengths or types")
        if i.size and (i.min() < 0 or j.max() >= rows or not (i < j).all()):
            raise Damaged("pairs name rows outside the table")
        index = None
        if doc.get("index") is not None:
            meta = doc["index"]
            cent, probes = arrays["centroids"], arrays["probes"]
            if cent.ndim != 2 or cent.dtype != np.float32 or probes.ndim != 2 or probes.shape[0] != rows \
                    or probes.dtype.kind != "i" or (probes.size and (probes.min() < 0 or probes.max() >= len(cent))):
                raise Damaged("the index's centroids and lists do not fit the table")
            rebuild = meta.get("rebuild")
            index = IndexState(cent, probes, int(meta["nprobe"]), _shown_strings(dict(meta["trained"])),
                               None if rebuild is None else _shown_strings(str(rebuild)))
        return SearchState(key=dict(doc["key"]), radius=float(doc["radius"]), threshold=float(doc["threshold"]),
                           folders=folders, folder_versions=list(doc["folder_versions"]), folder_rows=folder_rows,
                           keys=keys, pair_i=i, pair_j=j, pair_sim=sim,
                           info=_shown_strings(dict(doc.get("info") or {})),
                           index=index, history=_shown_strings(dict(doc.get("history") or {})),
                           # never shown: no digest covers it (the note names the state's folder)
                           root=str(doc.get("root", "")),
                           version=str(doc.get("version", "")))
    except Damaged:
        raise
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:  # RecursionError: json nested deep
        raise Damaged(f"{type(exc).__name__}: {exc}") from None


def _shown_strings(value: Any) -> Any:
    """`value` with every string in it (keys too) shown as names are (text.shown): the parts of
    state.json that only describe (the last search's info, the index's history, why it is to be
    rebuilt) reach the header, findings.json and report.html, and no digest covers them. The
    tool's own strings there hold nothing that `shown` changes, so a state saved again is the same."""
    from .text import shown

    if isinstance(value, str):
        return shown(value)
    if isinstance(value, dict):
        return {_shown_strings(k) if isinstance(k, str) else k: _shown_strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shown_strings(v) for v in value]
    return value


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fp:
        for chunk in iter(lambda: fp.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _plain(value: object) -> object:
    """JSON for numpy scalars in the search info."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON")
