"""Load every identity folder's embeddings into one table: identity, file, vector.

Two layouts are read, both as plain `.npz` archives, never unpickled:

* FACE01: `npKnown.npz` with `name` (file names) and the vectors under
  `efficientnetv2_arcface` ((N, 1, 512) or (N, 512)) or `dlib` ((N, 128)).
* plain: `embeddings.npz` with `files` (file names) and `vectors` ((N, D)),
  written with `np.savez(folder / "embeddings.npz", files=names, vectors=vecs)`.

Vectors are L2-normalised after loading, so cosine similarity is an inner product.
Anything wrong with a file becomes a `Problem` naming the file; loading goes on.
"""

from __future__ import annotations

import io
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from .discover import Identity, display_name
from .readahead import ordered_map
from .rules import KNOWN_VECTOR_KEYS

FACE01_FILE = "npKnown.npz"
PLAIN_FILE = "embeddings.npz"
PLAIN_NAMES, PLAIN_VECTORS = "files", "vectors"


@dataclass(frozen=True)
class Problem:
    """Something wrong with the input. `fatal` problems mean data could not be checked."""

    file: str
    message: str
    fatal: bool = True
    # A short stable kind (corrupt, nan, missing-array, ...): with the identity and file it keys
    # the problem in a baseline, so an accepted problem stays accepted and a new one fails.
    code: str = "input"

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"


@dataclass
class FolderVectors:
    identity: Identity
    source: Path | None = None
    names: list[str] = field(default_factory=list)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)


@dataclass
class VectorTable:
    """All usable vectors of a dataset, one row per face."""

    root: Path
    identities: list[Identity]
    identity_of: np.ndarray  # int32 (n,): index into `identities`
    files: list[str]  # (n,): file name inside the identity folder
    vectors: np.ndarray  # float32 (n, d), unit length
    key: str | None
    problems: dict[int, list[Problem]]  # identity index -> problems
    counts: np.ndarray  # int (len(identities),): vectors loaded per identity
    sources: dict[int, Path] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1]) if self.vectors.ndim == 2 else 0

    def __len__(self) -> int:
        return int(self.vectors.shape[0])


def _rel(root: Path, path: Path) -> str:
    try:
        return display_name(str(path.relative_to(root)))
    except ValueError:
        return display_name(str(path))


def embeddings_path(folder: Path) -> Path | None:
    """The folder's embeddings file: FACE01's npKnown.npz first, else the plain embeddings.npz."""
    for name in (FACE01_FILE, PLAIN_FILE):
        if (folder / name).is_file():
            return folder / name
    return None


def read_bytes(path: Path | None) -> bytes | OSError | None:
    """The whole file in one read (np.load on a path makes many small ones), or the error."""
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        return exc


def read_folder(
    identity: Identity,
    root: Path,
    vector_key: str | None,
    preread: tuple[Path | None, bytes | OSError | None] | None = None,
) -> FolderVectors:
    """Read one identity folder's embeddings file; never raises for bad data.

    `preread`: (embeddings_path(folder), read_bytes(that path)) already done, on a reader thread.
    """
    out = FolderVectors(identity)
    path, data = preread if preread is not None else (embeddings_path(identity.path), None)
    if path is None:
        where = _rel(root, identity.path) + "/"
        out.problems.append(Problem(where, f"no embeddings: neither {FACE01_FILE} nor {PLAIN_FILE} is in this folder"))
        return out
    if path.name == FACE01_FILE:
        names_key = "name"
        wanted = [vector_key] if vector_key else list(KNOWN_VECTOR_KEYS)
    else:
        names_key = PLAIN_NAMES
        wanted = [PLAIN_VECTORS]
    out.source = path
    rel = _rel(root, path)
    if data is None:
        data = read_bytes(path)
    if isinstance(data, OSError):
        out.problems.append(Problem(rel, f"cannot be read: {data.strerror or data}"))
        return out
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            keys = list(npz.files)
            if names_key not in keys:
                out.problems.append(Problem(rel, f"missing array '{names_key}' (arrays present: {', '.join(keys) or 'none'})"))
                return out
            present = [k for k in wanted if k in keys]
            if not present:
                expected = " or ".join(f"'{k}'" for k in wanted)
                out.problems.append(
                    Problem(rel, f"missing vector array {expected} (arrays present: {', '.join(keys) or 'none'})")
                )
                return out
            names = npz[names_key]
            arrays = {k: npz[k] for k in present}
    except ValueError as exc:
        if "allow_pickle" in str(exc) and zipfile.is_zipfile(io.BytesIO(data)):  # an npz whose arrays are objects
            msg = "holds Python objects (pickled arrays); re-save names with dtype=str and vectors as float arrays"
        else:
            msg = f"corrupt or truncated archive ({exc})"
        out.problems.append(Problem(rel, msg))
        return out
    except (zipfile.BadZipFile, EOFError, OSError, KeyError) as exc:
        out.problems.append(Problem(rel, f"corrupt or truncated archive ({type(exc).__name__}: {exc})"))
        return out

    if names.ndim != 1 or names.dtype.kind not in "US":
        out.problems.append(Problem(rel, f"'{names_key}' must be a 1-D array of file names, found dtype {names.dtype} shape {names.shape}"))
        return out
    out.names = [n.decode("utf-8", "backslashreplace") if isinstance(n, bytes) else str(n) for n in names.tolist()]
    for k, arr in arrays.items():
        if arr.ndim == 3 and arr.shape[1] == 1:
            arr = arr[:, 0, :]
        if arr.ndim != 2 or arr.dtype.kind not in "fiu":
            out.problems.append(Problem(rel, f"'{k}' must be an (N, D) or (N, 1, D) number array, found dtype {arr.dtype} shape {arr.shape}"))
            continue
        if arr.shape[0] != len(out.names):
            out.problems.append(
                Problem(rel, f"'{names_key}' lists {len(out.names)} files but '{k}' has {arr.shape[0]} vectors")
            )
            continue
        out.arrays[k] = arr
    return out


def read_folders(identities: list[Identity], root: Path, vector_key: str | None,
                 workers: int | None = None) -> Iterator[FolderVectors]:
    """read_folder for each identity, in order; file reads run ahead on threads."""

    def fetch(identity: Identity):
        path = embeddings_path(identity.path)
        return identity, path, read_bytes(path)

    for identity, path, data in ordered_map(fetch, identities, workers=workers or 8):
        yield read_folder(identity, root, vector_key, preread=(path, data))


def choose_key(folders: Iterable[FolderVectors], vector_key: str | None) -> str | None:
    """The dataset's vector array: as set in rules, else the known key present in most folders."""
    if vector_key:
        return vector_key
    seen = Counter(k for f in folders for k in f.arrays)
    if not seen:
        return None
    order = {k: i for i, k in enumerate((*KNOWN_VECTOR_KEYS, PLAIN_VECTORS))}
    return max(seen, key=lambda k: (seen[k], -order.get(k, 99)))


def load_table(
    root: str | Path,
    identities: list[Identity],
    vector_key: str | None = None,
    progress: Callable[..., Iterable] | None = None,
    workers: int | None = None,
    folders: list[FolderVectors] | None = None,
) -> VectorTable:
    """Load all identity folders into one `VectorTable`.

    `folders`: already-read folders, one per identity in order (images embedded by
    `dataset_checks.embed.prepare`); then no file is read here.
    """
    root = Path(root)
    if folders is None:
        results: Iterable[FolderVectors] = read_folders(identities, root, vector_key, workers=workers)
        if progress is not None:
            results = progress(results, total=len(identities), desc="loading", unit="folder")
        folders = list(results)

    key = choose_key(folders, vector_key)
    # The dataset's dimension is the most common one under the chosen key, so one stray folder
    # cannot make every other folder "wrong".
    dims = Counter(int(f.arrays[key].shape[1]) for f in folders if key in f.arrays)
    dim = dims.most_common(1)[0][0] if dims else 0

    problems: dict[int, list[Problem]] = {}
    counts, sources = np.zeros(len(identities), dtype=np.int64), {}
    usable: list[tuple[int, str, FolderVectors, np.ndarray]] = []
    for idx, f in enumerate(folders):
        probs = problems.setdefault(idx, list(f.problems))
        for note in f.identity.notes:
            probs.append(Problem(_rel(root, f.identity.path) + "/", note, fatal=False))
        if f.source is not None:
            sources[idx] = f.source
        arr = f.arrays.get(key) if key else None
        if f.source is not None and arr is None and not f.problems:
            others = ", ".join(f.arrays) or "none"
            probs.append(Problem(_rel(root, f.source), f"no '{key}' vectors (this folder has: {others}); the dataset uses '{key}' "
                                                      "(vectors of two models are never compared)"))
        if arr is not None:
            rel = _rel(root, f.source)
            if arr.shape[1] != dim:
                probs.append(Problem(rel, f"vectors have dimension {arr.shape[1]}, the rest of the dataset has {dim}"))
            elif arr.shape[0] == 0:
                probs.append(Problem(rel, "holds no vectors (empty folder)"))
            else:
                usable.append((idx, rel, f, arr))

    # Each folder is normalised straight into its rows of one preallocated table: no
    # concatenated raw copy (first-touch memory is slow on VMs, and it doubled peak memory).
    total = sum(arr.shape[0] for *_, arr in usable)
    vectors = np.empty((total, dim), dtype=np.float32)
    identity_of = np.empty(total, dtype=np.int32)
    files: list[str] = []
    start = 0
    for idx, rel, f, arr in usable:
        probs = problems[idx]
        vec, bad = normalise(arr)
        for row in np.flatnonzero(bad):
            what = "NaN or infinite values" if not np.isfinite(arr[row]).all() else "an all-zero vector"
            probs.append(Problem(f"{rel} [{row}] {display_name(f.names[row])}", f"{what}; this face is skipped"))
        if bad.any():
            vec = vec[~bad]
            files.extend(f.names[r] for r in np.flatnonzero(~bad))
        else:
            files.extend(f.names)
        if not len(vec) and not probs:
            probs.append(Problem(rel, "no usable vectors"))
        vectors[start : start + len(vec)] = vec
        identity_of[start : start + len(vec)] = idx
        counts[idx] = len(vec)
        start += len(vec)
    problems = {k: v for k, v in problems.items() if v}
    vectors, identity_of = vectors[:start], identity_of[:start]  # skipped rows leave a tail
    return VectorTable(
        root=root,
        identities=identities,
        identity_of=identity_of,
        files=files,
        vectors=np.ascontiguousarray(vectors, dtype=np.float32),
        key=key,
        problems=problems,
        counts=counts,
        sources=sources,
    )


def centre_vectors(vectors: np.ndarray) -> np.ndarray:
    """Unit rows minus their mean, re-normalised (rules embeddings.centre). Rows that end at zero
    length (only possible with one vector) stay zero."""
    if len(vectors) < 2:
        return vectors
    centred, _ = normalise(vectors, shift=vectors.mean(axis=0, dtype=np.float64))
    return centred


def normalise(arr: np.ndarray, block: int = 512, shift: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Unit-length float32 rows of `arr - shift`, and a mask of rows that cannot be normalised
    (NaN, inf, zero).

    Norms and division in float64, in blocks of rows that stay in cache (a whole-table float64
    copy was 4x slower and doubled the memory of the largest array)."""
    arr = np.asarray(arr)
    out = np.empty(arr.shape, dtype=np.float32)
    bad = np.zeros(arr.shape[0], dtype=bool)
    for s in range(0, arr.shape[0], block):
        x = np.asarray(arr[s : s + block], dtype=np.float64)
        if shift is not None:
            x = x - shift
        with np.errstate(invalid="ignore", over="ignore"):
            norms = np.sqrt(np.einsum("ij,ij->i", x, x))
        b = ~np.isfinite(norms) | (norms <= np.finfo(np.float32).tiny)
        safe = np.where(b, 1.0, norms)
        with np.errstate(invalid="ignore"):
            out[s : s + block] = x / safe[:, None]
        out[s : s + block][b] = 0.0
        bad[s : s + block] = b
    return out, bad
