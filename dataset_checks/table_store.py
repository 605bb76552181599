"""The vector table on disk: one float32 file per dataset version in the cache, memory-mapped.

Loading a million vectors from 20,000 npz archives takes seconds and, held in memory next to
the archives' bytes, twice the table's size. So rows are normalised folder by folder and
appended to a file in the cache folder (never inside the dataset); the run then maps that file
read-only. Its pages are the page cache's: the memory budget (`memory.Budget`) can drop them
from this process at any time and they come back from the file.

A dataset version is the listing of every identity folder (names, sizes, mtimes, ctimes, inodes
and devices of its embeddings file and images, and its zip index: folderscan.zip_index) plus the settings that change what is read. When the next run
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
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from numpy.typing import NDArray

from .arrays import normalise
from .problems import Problem
from .safe_write import atomic_write
from .text import own_text

# Bump when the files or their meaning change: older tables are then rebuilt, and since every
# folder's version includes it, no stored folder is copied into a new table (incremental).
# 2: rows normalised as float32 times the float32 reciprocal of the float64 norm.
# 3: every input problem stored (no "... and N more problems" entry: the cap is for display only).
FORMAT = 3
# meta.json's object (JSON values: the table's key, problems, counts, sources, identities,
# records, whatever its writer adds), and once opened also `vectors` and `identity_of` (arrays)
Meta = dict[str, Any]
VECTORS, META, IDENTITY_OF = "vectors.f32", "meta.json", "identity_of.npy"
STAGING, OWNER = ".staging-", ".owner"  # hostile cache: a folder being written, and its writer's lock
ORPHAN_GRACE = 600  # s: how much older than the run a staging folder without an owner file must be


class CacheUnwritable(Exception):
    """Writing into the cache failed (a full disk, a quota, a read-only file system, no
    permission): the run goes on without the cache, in memory (run.Pipeline says so once)."""

    def __init__(self, where: Path | None, exc: OSError):
        super().__init__(f"{where}: {exc.strerror or exc}")
        self.where, self.error = where, exc

    @property
    def reason(self) -> str:
        return str(self.error.strerror or self.error)


# -- hostile cache: begin -- (staging folders: made with their writer's lock, swept when orphaned)
_OWNERS: dict[str, int] = {}  # staging folder -> the descriptor of its locked owner file


def make_staging(parent: Path) -> Path:
    """A new `.staging-*` folder in `parent` (one of this tool's cache folders) holding
    `.owner`, locked (flock) by this process until `drop_staging` or `release_staging`: a run
    that is killed releases the lock, and `sweep_staging` of a later run removes its folder."""
    import fcntl

    parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=STAGING, dir=parent))
    try:
        fd = os.open(path / OWNER, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    _OWNERS[str(path)] = fd
    return path


def release_staging(path: Path) -> None:
    """Give up the owner lock of a staging folder (renamed into place, or removed)."""
    fd = _OWNERS.pop(str(path), None)
    if fd is not None:
        os.close(fd)


def drop_staging(path: Path | None) -> None:
    """Remove a staging folder of this process, whatever is in it; never raises."""
    if path is None:
        return
    shutil.rmtree(path, ignore_errors=True)
    release_staging(path)


def sweep_staging(parent: Path, before: float) -> list[str]:
    """Remove the staging folders in `parent` that killed runs left: only `.staging-*` folders
    (not links) last changed before `before` (this run's start) whose owner lock nobody holds
    (one without an owner file: older than ORPHAN_GRACE before it). The names removed."""
    import fcntl

    removed: list[str] = []
    try:
        entries = [e for e in os.scandir(parent) if e.name.startswith(STAGING) and str(Path(e.path)) not in _OWNERS]
    except OSError:
        return removed
    for entry in entries:
        fd = None
        try:
            st = entry.stat(follow_symlinks=False)
            if not entry.is_dir(follow_symlinks=False) or st.st_mtime >= before:
                continue
            try:
                fd = os.open(os.path.join(entry.path, OWNER), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                if st.st_mtime >= before - ORPHAN_GRACE:  # its writer may be about to lock it
                    continue
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises while its writer lives
            shutil.rmtree(entry.path)
            removed.append(entry.name)
        except OSError:
            continue
        finally:
            if fd is not None:
                os.close(fd)
    return removed
# -- hostile cache: end --


def dataset_folder(cache_dir: Path, root: Path) -> Path:
    """One folder per dataset root: a new version replaces the old one instead of piling up."""
    try:
        where = str(Path(root).resolve())
    except OSError:
        where = str(root)
    return Path(cache_dir) / "tables" / hashlib.sha256(where.encode("utf-8", "surrogateescape")).hexdigest()[:20]


class Version:
    """Accumulates what a table depends on into one digest."""

    def __init__(self, *settings: object):
        self._h = hashlib.sha256(json.dumps([FORMAT, *map(str, settings)]).encode())

    def add(self, *parts: object) -> None:
        self._h.update(repr(parts).encode("utf-8", "surrogateescape"))
        self._h.update(b"\0")

    def hexdigest(self) -> str:
        return self._h.hexdigest()


class Rows:
    """The rows of one (vector key, dimension) group as they arrive, in memory or in a file."""

    def __init__(self, dim: int, folder: Path | None):
        self.dim, self.n = dim, 0
        self.identity_of: list[NDArray[np.int32]] = []
        self.files: list[str] = []
        self.counts: dict[int, int] = {}  # identity -> rows
        self.blocks: list[NDArray[np.float32]] = []
        self.path: Path | None = None
        self._fp: BinaryIO | None = None
        if folder is not None:
            fd, name = tempfile.mkstemp(prefix=f"rows-{dim}-", suffix=".f32", dir=folder)
            self.path, self._fp = Path(name), os.fdopen(fd, "wb")

    def add(self, identity: int, files: list[str], vectors: NDArray[np.floating[Any]]) -> None:
        rows = np.ascontiguousarray(vectors, dtype=np.float32)
        if self._fp is not None:
            if rows.size:  # a folder whose every row was bad adds none (and an empty view cannot be cast)
                try:
                    self._fp.write(rows.data.cast("B"))
                except OSError as exc:  # hostile cache: a full disk, a quota, ...
                    raise CacheUnwritable(self.path, exc) from exc
        else:
            self.blocks.append(rows)
        self.identity_of.append(np.full(len(rows), identity, dtype=np.int32))
        self.files.extend(files)
        self.counts[identity] = self.counts.get(identity, 0) + len(rows)
        self.n += len(rows)

    def finish(self) -> tuple[NDArray[np.float32], NDArray[np.int32]]:
        """(vectors, identity_of): a read-only map of the file, or one array in memory."""
        identity_of = np.concatenate(self.identity_of) if self.identity_of else np.zeros(0, np.int32)
        if self._fp is None:
            vectors = np.concatenate(self.blocks) if self.blocks else np.zeros((0, self.dim), np.float32)
            self.blocks = []
            return vectors, identity_of
        self.close()
        assert self.path is not None  # set with _fp
        return open_vectors(self.path, self.n, self.dim), identity_of

    # -- incremental: begin --
    def copy_rows(self, source: BinaryIO, start: int, end: int) -> None:
        """Append rows [start, end) of a stored table's vectors file (`source`, open for reading),
        copied by the kernel where it can (copy_file_range), else read and written in blocks."""
        try:
            self._copy_rows(source, start, end)
        except OSError as exc:  # hostile cache: the stored file or the new one (a full disk, ...)
            raise CacheUnwritable(self.path, exc) from exc

    def _copy_rows(self, source: BinaryIO, start: int, end: int) -> None:
        assert self._fp is not None  # incremental updates write to a staging folder, never in memory
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
            fp, self._fp = self._fp, None
            try:
                fp.close()  # flushes the last rows: a full disk says so here
            except OSError as exc:
                raise CacheUnwritable(self.path, exc) from exc

    def discard(self) -> None:
        """Close and remove the file; never raises (a full disk cannot flush the last rows)."""
        if self._fp is not None:
            fp, self._fp = self._fp, None
            try:
                fp.close()
            except OSError:
                pass  # (the descriptor is closed all the same)
        if self.path is not None:
            try:
                self.path.unlink(missing_ok=True)
            except OSError:
                pass


def open_vectors(path: Path, n: int, dim: int) -> NDArray[np.float32]:
    if n == 0 or dim == 0:
        return np.zeros((n, dim), np.float32)
    return np.memmap(path, dtype=np.float32, mode="r", shape=(n, dim))


class TableStore:
    """The cache folder of one dataset's table. `staging()` gives a temporary folder for rows
    being written; `publish` moves a finished table into place; `open` maps it back."""

    def __init__(self, cache_dir: Path, root: Path):
        self.folder = dataset_folder(cache_dir, root)
        self.note: str | None = None  # why a stored table was not used (shown in the header)
        self.unwritable: CacheUnwritable | None = None  # hostile cache: why no table could be written
        self.started = time.time()  # hostile cache: staging folders older than this may be a killed run's
        self.swept: list[str] = []
        self._parsed: tuple[tuple[int, int, int], Meta] | None = None  # incremental: (stat of meta.json, its parsed text), read once

    def staging(self) -> Path | None:
        """A new temporary folder beside the published one, or None when the cache cannot be
        written (the table is then built in memory)."""
        try:
            staging = make_staging(self.folder.parent)
        except OSError as exc:
            self.unwritable = CacheUnwritable(self.folder.parent, exc)
            return None
        self.swept += sweep_staging(self.folder.parent, self.started)  # killed runs' leftovers
        return staging

    def publish(self, staging: Path, rows: Rows, version: str, meta: Meta) -> NDArray[np.float32]:
        """Move the finished group's file and the table's metadata into place; the mapped vectors.
        Raises CacheUnwritable when that fails (the staging folder is then the caller's to drop)."""
        try:
            self._publish(staging, rows, version, meta)
        except OSError as exc:  # hostile cache: a full disk, a quota, a read-only file system
            raise CacheUnwritable(self.folder.parent, exc) from exc
        return open_vectors(self.folder / VECTORS, rows.n, rows.dim)

    def _publish(self, staging: Path, rows: Rows, version: str, meta: Meta) -> None:
        rows.close()
        assert rows.path is not None  # vectors.TableBuilder publishes only a group written to a file
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
        release_staging(staging)
        (self.folder / OWNER).unlink(missing_ok=True)
        shutil.rmtree(old, ignore_errors=True)

    def open(self, version: str | None) -> Meta | None:
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
            from .text import file_text  # the error may quote meta.json: shown as names are

            self.note = (f"the stored vector table in {self.folder} is damaged ({file_text(exc)}); rebuilt from "
                         "the dataset")
            return None


def centred(folder: Path, vectors: NDArray[np.float32], block: int = 1 << 16
            ) -> tuple[NDArray[np.float32], NDArray[np.float64]]:
    """(centred table, the mean it subtracted) for `embeddings.centre`, kept beside the table.

    The centred rows are a second file mapping, written block by block, not an in-memory copy
    of the table; a published table folder is only ever replaced whole, so a centred file there
    belongs to the table beside it."""
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

    def rows(fp: BinaryIO) -> None:
        for s in range(0, n, block):
            out, _ = normalise(vectors[s : s + block], shift=mean)
            fp.write(out.data.cast("B"))

    # the table folder already exists (it may come with a checkout): the one writer, which
    # refuses a link planted at either name instead of writing through it
    try:
        atomic_write(mean_path, lambda fp: np.save(fp, mean), binary=True)
        atomic_write(path, rows, binary=True)
    except OSError:  # a read-only cache, or a link at either name (refused): centred in memory
        return normalise(vectors, shift=mean)[0], mean
    return open_vectors(path, n, dim), mean


def problems_json(problems: dict[int, list[Problem]]) -> dict[str, list[dict[str, Any]]]:
    return {str(k): [asdict(p) for p in v] for k, v in problems.items()}


def problems_from_json(data: dict[str, list[dict[str, Any]]]) -> dict[int, list[Problem]]:
    # the cache is not the tool: a message read back from it is shown as the tool's own text
    # (control and bidi characters escaped), never raw
    return {int(k): [Problem(**{**p, "message": own_text(str(p.get("message", "")))}) for p in v]
            for k, v in data.items()}
