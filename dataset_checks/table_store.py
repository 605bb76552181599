"""The vector table on disk: one float32 file per dataset version in the cache, memory-mapped.

Loading a million vectors from 20,000 npz archives takes seconds and, held in memory next to
the archives' bytes, twice the table's size. So rows are normalised folder by folder and
appended to a file in the cache folder (never inside the dataset); the run then maps that file
read-only. Its pages are the page cache's: the memory budget (`memory.Budget`) can drop them
from this process at any time and they come back from the file.

A dataset version is the listing of every identity folder (names, sizes, mtimes and inodes of
its embeddings file and images) plus the settings that change what is read. When the next run
finds the same version, the table is mapped as it is and no archive is read. Everything is
written into a temporary folder and renamed into place, and validated when opened: a table
that does not match its metadata is rebuilt, with a note, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .problems import Problem

# Bump when the files or their meaning change: older tables are then rebuilt, and since every
# folder's version includes it, no stored folder is copied into a new table (incremental).
# 2: rows normalised as float32 times the float32 reciprocal of the float64 norm.
FORMAT = 2
VECTORS, META, IDENTITY_OF = "vectors.f32", "meta.json", "identity_of.npy"


def dataset_folder(cache_dir: Path, root: Path) -> Path:
    """One folder per dataset root: a new version replaces the old one instead of piling up."""
    try:
        where = str(Path(root).resolve())
    except OSError:
        where = str(root)
    return Path(cache_dir) / "tables" / hashlib.sha256(where.encode("utf-8", "surrogateescape")).hexdigest()[:20]


class Version:
    """Accumulates what a table depends on into one digest."""

    def __init__(self, *settings):
        self._h = hashlib.sha256(json.dumps([FORMAT, *map(str, settings)]).encode())

    def add(self, *parts) -> None:
        self._h.update(repr(parts).encode("utf-8", "surrogateescape"))
        self._h.update(b"\0")

    def hexdigest(self) -> str:
        return self._h.hexdigest()


class Rows:
    """The rows of one (vector key, dimension) group as they arrive, in memory or in a file."""

    def __init__(self, dim: int, folder: Path | None):
        self.dim, self.n = dim, 0
        self.identity_of: list[np.ndarray] = []
        self.files: list[str] = []
        self.counts: dict[int, int] = {}  # identity -> rows
        self.blocks: list[np.ndarray] = []
        self.path = None
        self._fp = None
        if folder is not None:
            fd, name = tempfile.mkstemp(prefix=f"rows-{dim}-", suffix=".f32", dir=folder)
            self.path, self._fp = Path(name), os.fdopen(fd, "wb")

    def add(self, identity: int, files: list[str], vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self._fp is not None:
            if vectors.size:  # a folder whose every row was bad adds none (and an empty view cannot be cast)
                self._fp.write(memoryview(vectors).cast("B"))
        else:
            self.blocks.append(vectors)
        self.identity_of.append(np.full(len(vectors), identity, dtype=np.int32))
        self.files.extend(files)
        self.counts[identity] = self.counts.get(identity, 0) + len(vectors)
        self.n += len(vectors)

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """(vectors, identity_of): a read-only map of the file, or one array in memory."""
        identity_of = np.concatenate(self.identity_of) if self.identity_of else np.zeros(0, np.int32)
        if self._fp is None:
            vectors = np.concatenate(self.blocks) if self.blocks else np.zeros((0, self.dim), np.float32)
            self.blocks = []
            return vectors, identity_of
        self._fp.close()
        self._fp = None
        return open_vectors(self.path, self.n, self.dim), identity_of

    # -- incremental: begin --
    def copy_rows(self, source, start: int, end: int) -> None:
        """Append rows [start, end) of a stored table's vectors file (`source`, open for reading),
        copied by the kernel where it can (copy_file_range), else read and written in blocks."""
        self._fp.flush()
        row = self.dim * 4
        offset, left = start * row, (end - start) * row
        out = self._fp.fileno()
        copy = getattr(os, "copy_file_range", None)
        while left and copy is not None:
            try:
                done = copy(source.fileno(), out, left, offset)
            except OSError:
                break
            if done <= 0:
                break
            offset, left = offset + done, left - done
        self._fp.seek(0, os.SEEK_END)
        if left:  # no copy_file_range here (or it stopped): plain reads
            source.seek(offset)
            while left:
                chunk = source.read(min(left, 1 << 24))
                if not chunk:
                    raise OSError(f"{source.name} ends before row {end}")
                self._fp.write(chunk)
                left -= len(chunk)
    # -- incremental: end --

    def close(self) -> None:
        if self._fp is not None:
            self._fp.close()
            self._fp = None

    def discard(self) -> None:
        if self._fp is not None:
            self._fp.close()
            self._fp = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def open_vectors(path: Path, n: int, dim: int) -> np.ndarray:
    if n == 0 or dim == 0:
        return np.zeros((n, dim), np.float32)
    return np.memmap(path, dtype=np.float32, mode="r", shape=(n, dim))


class TableStore:
    """The cache folder of one dataset's table. `staging()` gives a temporary folder for rows
    being written; `publish` moves a finished table into place; `open` maps it back."""

    def __init__(self, cache_dir: Path, root: Path):
        self.folder = dataset_folder(cache_dir, root)
        self.note: str | None = None  # why a stored table was not used (shown in the header)
        self._parsed: tuple | None = None  # incremental: (stat of meta.json, its parsed text), read once

    def staging(self) -> Path | None:
        """A new temporary folder beside the published one, or None when the cache cannot be
        written (the table is then built in memory)."""
        try:
            self.folder.parent.mkdir(parents=True, exist_ok=True)
            return Path(tempfile.mkdtemp(prefix=".staging-", dir=self.folder.parent))
        except OSError as exc:
            self.note = f"the table cache {self.folder.parent} cannot be written ({exc.strerror or exc}); " \
                        "vectors are held in memory"
            return None

    def publish(self, staging: Path, rows: Rows, version: str, meta: dict) -> np.ndarray:
        """Move the finished group's file and the table's metadata into place; the mapped vectors."""
        rows.close()
        vectors_path = staging / VECTORS
        rows.path.rename(vectors_path)
        rows.path = vectors_path
        identity_of = np.concatenate(rows.identity_of) if rows.identity_of else np.zeros(0, np.int32)
        np.save(staging / IDENTITY_OF, identity_of)
        meta = {**meta, "format": FORMAT, "version": version, "rows": rows.n, "dim": rows.dim, "files": rows.files}
        (staging / META).write_text(json.dumps(meta, ensure_ascii=True))
        old = self.folder.with_name(self.folder.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if self.folder.exists():
            self.folder.rename(old)
        staging.rename(self.folder)
        shutil.rmtree(old, ignore_errors=True)
        return open_vectors(self.folder / VECTORS, rows.n, rows.dim)

    def open(self, version: str | None) -> dict | None:
        """The stored table of this version (None: of any version; incremental): its metadata
        with `vectors` (mapped) and `identity_of`, or None (no table, another version, or a
        damaged one: `note` says)."""
        meta_path = self.folder / META
        if not meta_path.is_file():
            return None
        try:
            st = meta_path.stat()
            stamp = (st.st_size, st.st_mtime_ns, st.st_ino)
            if self._parsed is None or self._parsed[0] != stamp:  # incremental: opened twice per run
                self._parsed = (stamp, json.loads(meta_path.read_text()))
            meta = dict(self._parsed[1])
            if meta.get("format") != FORMAT or (version is not None and meta.get("version") != version):
                return None
            n, dim = int(meta["rows"]), int(meta["dim"])
            size = (self.folder / VECTORS).stat().st_size if n and dim else 0
            identity_of = np.load(self.folder / IDENTITY_OF, allow_pickle=False)
            if size != n * dim * 4 or identity_of.shape != (n,) or len(meta["files"]) != n:
                raise ValueError(f"{VECTORS} holds {size} bytes for {n} rows of {dim}")
            meta["vectors"] = open_vectors(self.folder / VECTORS, n, dim)
            meta["identity_of"] = identity_of
            return meta
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.note = f"the stored vector table in {self.folder} is damaged ({exc}); rebuilt from the dataset"
            return None


def centred(folder: Path, vectors: np.ndarray, block: int = 1 << 16) -> tuple[np.ndarray, np.ndarray]:
    """(centred table, the mean it subtracted) for `embeddings.centre`, kept beside the table.

    The centred rows are a second file mapping, written block by block, not an in-memory copy
    of the table; a published table folder is only ever replaced whole, so a centred file there
    belongs to the table beside it."""
    from .vectors import normalise

    path, mean_path = folder / "centred.f32", folder / "centred-mean.npy"
    n, dim = vectors.shape
    try:
        if path.stat().st_size == n * dim * 4:
            return open_vectors(path, n, dim), np.load(mean_path, allow_pickle=False)
    except (OSError, ValueError):
        pass
    mean = np.zeros(dim, dtype=np.float64)
    for s in range(0, n, block):
        mean += vectors[s : s + block].sum(axis=0, dtype=np.float64)
    mean /= max(n, 1)
    fd, tmp = tempfile.mkstemp(prefix=".centred-", dir=folder)
    with os.fdopen(fd, "wb") as fp:
        for s in range(0, n, block):
            out, _ = normalise(vectors[s : s + block], shift=mean)
            fp.write(memoryview(out).cast("B"))
    np.save(mean_path, mean)
    os.replace(tmp, path)
    return open_vectors(path, n, dim), mean


def problems_json(problems: dict[int, list[Problem]]) -> dict[str, list[dict]]:
    return {str(k): [asdict(p) for p in v] for k, v in problems.items()}


def problems_from_json(data: dict) -> dict[int, list[Problem]]:
    return {int(k): [Problem(**p) for p in v] for k, v in data.items()}
