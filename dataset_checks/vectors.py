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

import os
import zipfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .discover import Identity, display_name
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


def read_folder(identity: Identity, root: Path, vector_key: str | None) -> FolderVectors:
    """Read one identity folder's embeddings file; never raises for bad data."""
    out = FolderVectors(identity)
    face01, plain = identity.path / FACE01_FILE, identity.path / PLAIN_FILE
    if face01.is_file():
        path, names_key = face01, "name"
        wanted = [vector_key] if vector_key else list(KNOWN_VECTOR_KEYS)
    elif plain.is_file():
        path, names_key = plain, PLAIN_NAMES
        wanted = [PLAIN_VECTORS]
    else:
        where = _rel(root, identity.path) + "/"
        out.problems.append(Problem(where, f"no embeddings: neither {FACE01_FILE} nor {PLAIN_FILE} is in this folder"))
        return out
    out.source = path
    rel = _rel(root, path)
    try:
        with np.load(path, allow_pickle=False) as npz:
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
    except PermissionError as exc:
        out.problems.append(Problem(rel, f"cannot be read: {exc.strerror or exc}"))
        return out
    except ValueError as exc:
        if "allow_pickle" in str(exc) and zipfile.is_zipfile(path):  # an npz whose arrays are objects
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
    workers = workers or min(8, (os.cpu_count() or 1) * 2)
    if folders is None:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = pool.map(lambda ident: read_folder(ident, root, vector_key), identities)
            if progress is not None:
                results = progress(results, total=len(identities), desc="loading", unit="folder")
            folders = list(results)

    key = choose_key(folders, vector_key)
    # The dataset's dimension is the most common one under the chosen key, so one stray folder
    # cannot make every other folder "wrong".
    dims = Counter(int(f.arrays[key].shape[1]) for f in folders if key in f.arrays)
    dim = dims.most_common(1)[0][0] if dims else 0

    problems: dict[int, list[Problem]] = {}
    blocks, owners, files, counts, sources = [], [], [], np.zeros(len(identities), dtype=np.int64), {}
    for idx, f in enumerate(folders):
        probs = list(f.problems)
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
                vec, bad = normalise(arr)
                for row in np.flatnonzero(bad):
                    what = "NaN or infinite values" if not np.isfinite(arr[row]).all() else "an all-zero vector"
                    probs.append(Problem(f"{rel} [{row}] {display_name(f.names[row])}", f"{what}; this face is skipped"))
                keep = np.flatnonzero(~bad)
                if keep.size:
                    blocks.append(vec[keep])
                    owners.append(np.full(keep.size, idx, dtype=np.int32))
                    files.extend(f.names[i] for i in keep)
                    counts[idx] = keep.size
                elif not probs:
                    probs.append(Problem(rel, "no usable vectors"))
        if probs:
            problems[idx] = probs

    vectors = np.concatenate(blocks) if blocks else np.zeros((0, dim), dtype=np.float32)
    identity_of = np.concatenate(owners) if owners else np.zeros(0, dtype=np.int32)
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
    centred, _ = normalise(vectors.astype(np.float64) - vectors.mean(axis=0, dtype=np.float64))
    return np.ascontiguousarray(centred, dtype=np.float32)


def normalise(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit-length float32 rows, and a mask of rows that cannot be normalised (NaN, inf, zero)."""
    x = np.asarray(arr, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    bad = ~np.isfinite(norms) | (norms <= np.finfo(np.float32).tiny)
    safe = np.where(bad, 1.0, norms)
    with np.errstate(invalid="ignore"):
        out = (x / safe[:, None]).astype(np.float32)
    out[bad] = 0.0
    return out, bad
