"""Load every identity folder's embeddings into one table: identity, file, vector.

Two layouts are read, both as plain `.npz` archives, never unpickled:

* FACE01: `npKnown.npz` with `name` (file names) and the vectors under
  `efficientnetv2_arcface` ((N, 1, 512) or (N, 512)) or `dlib` ((N, 128)). Also as FACE01
  itself writes them: a folder where it found no face (`name=[]` and empty vectors, both
  float64 (0,)) is a note, not a broken file; a v1 (2021) file saved without keywords
  (`arr_0` names, `arr_1` dlib vectors) is read when it has as many names as vectors.
* plain: `embeddings.npz` with `files` (file names) and `vectors` ((N, D)),
  written with `np.savez(folder / "embeddings.npz", files=names, vectors=vecs)`.

Vectors are L2-normalised after loading, so cosine similarity is an inner product.
Anything wrong with a file becomes a `Problem` naming the file; loading goes on. Every array's
.npy header is checked before the array is read: a shape that does not match the bytes the
archive holds, or one larger than `MEMORY_LIMIT`, is a problem of that folder, not a MemoryError.

Formats (issue #20). Each layout is an `EmbeddingsReader`: the file names it claims, the vector
keys it may give, and `read`, which turns the file's bytes into names, vectors and problems
(the two above are `NpzReader`s, FACE01_READER and PLAIN_READER). Everything else asks the
registry (`readers`, `embeddings_file_names`, `reader_for`): which file is a folder's embeddings
file and what a dataset version stamps (folderscan.scan_folder), embeddings_path, the
"no embeddings" problem, `key: auto`'s tie order, folderscan.why_no_identities; images without
an embeddings file go to `embed` whatever the formats. A folder holding several claimed files
is read from the first: the built-in readers first (FACE01, plain), then discovered ones.

A new format (say `embeddings.parquet`) touches exactly:

* one new module `dataset_checks/embeddings_<format>.py` (found by its name on first use; no
  other file names it): a class with `file_names`, `vector_keys` and `read` (`accept_arrays`
  does the checks every format shares), and `register_reader(TheReader())` at its end. Import
  a third-party library (pyarrow) inside `read`, so other datasets never pay for it; check the
  arrays' size against `limit` before allocating them;
* its tests (tests/test_vectors*.py).

The file is read whole by `read_bytes` (bounded by the memory limit) on the reader threads, and
its version stamp is its size, times, inode and `folderscan.zip_index` (for a file that is not
a zip archive, in effect a digest of its last 4 KiB): nothing to add for those.
"""

from __future__ import annotations

import functools
import io
import math
import re
import os
import zipfile
from collections import Counter
from dataclasses import astuple, dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, Iterable, Iterator, NamedTuple, overload

import numpy as np
from numpy.lib import format as npy_format
from numpy.typing import NDArray

from .arrays import normalise
from .formats import EmbeddingsReader, FolderVectors, embeddings_file_names, readers, register_reader
from .discover import KNOWN_VECTOR_KEYS, Identity, display_name, why
from .folderscan import FACE01_FILE, PLAIN_FILE, FolderScan, scan_folder
from .memory import FOLDER_SHARE, folder_bound, size_text  # noqa: F401  (size_text: importable from here as before)
from .problems import SHOWN, Problem, few
from .readahead import ordered_map

if TYPE_CHECKING:  # annotations only; the module is imported where used
    from .table_store import Meta, Rows, TableStore

PLAIN_NAMES, PLAIN_VECTORS = "files", "vectors"

# FACE01's own shapes (issue 21). A folder where FACE01 found no face gets
# `np.savez(name=[], efficientnetv2_arcface=[])`: both arrays float64 (0,). Nothing is wrong with
# it, there is nothing to check: a note, never a reason to fail the folder (findings.Verdict).
NO_FACE = "face01-no-face"
NO_FACE_NOTE = f"FACE01 found no face in this folder ({FACE01_FILE} lists none)"
# FACE01 v1 (2021) saved without keywords: `np.savez('npKnown', names, encodings)`. It dropped
# faces it could not encode from the vectors but not from the names, and nothing records which.
V1_NAMES, V1_VECTORS, V1_KEY = "arr_0", "arr_1", "dlib"
V1_FORMAT = f"FACE01 v1 {FACE01_FILE} ({V1_NAMES} names, {V1_VECTORS} vectors)"
V1_MISMATCH = "face01-v1-count-mismatch"

# (shape, fortran_order, dtype) of an .npy header
_Header = tuple[tuple[int, ...], bool, np.dtype[Any]]
_read_header_3: Callable[[IO[bytes], tuple[int, int]], _Header] | None
try:  # numpy 2 moved the implementation; 1.x has it in numpy.lib.format
    from numpy.lib._format_impl import _read_array_header as _read_header_3  # type: ignore[attr-defined,no-redef]  # private: not in numpy's stubs
except ImportError:  # pragma: no cover - depends on the numpy version
    _read_header_3 = getattr(npy_format, "_read_array_header", None)

__all__ = ["FACE01_FILE", "PLAIN_FILE", "MEMORY_LIMIT", "FolderVectors", "Problem", "VectorTable", "embeddings_path",
           "load_table", "read_bytes", "read_folder", "read_folders", "normalise", "centre_vectors",
           "EmbeddingsReader", "NpzReader", "accept_arrays", "embeddings_file_names", "reader_for", "readers",
           "register_reader", "NO_FACE", "NO_FACE_NOTE", "V1_FORMAT", "V1_MISMATCH"]


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


# The most one folder's arrays may declare when no bound is given (a run passes its own:
# memory.folder_bound of its budget): a quarter of the default budget, which is half of the
# machine's memory or of its cgroup's limit. The vectors are copied once more into the table,
# and other folders are read ahead meanwhile.
MEMORY_LIMIT = folder_bound()


class TooLarge(MemoryError):
    """A file or array over the memory bound (returned by read_bytes, never raised to callers)."""

    def __init__(self, size: int, limit: int):
        super().__init__(f"{size} bytes over the bound of {limit}")
        self.size, self.limit = size, limit


def reader_for(name: str) -> EmbeddingsReader:
    """The format of an embeddings file named `name`; a name none claims (a caller's own file)
    is read as a plain embeddings.npz, as it always was."""
    for reader in readers():
        if name in reader.file_names:
            return reader
    return PLAIN_READER


def _none_of(names: tuple[str, ...]) -> str:
    """'neither A nor B', 'none of A, B, C': the files a folder without embeddings lacks."""
    if len(names) == 2:
        return f"neither {names[0]} nor {names[1]}"
    return f"none of {', '.join(names)}" if len(names) > 2 else f"no {''.join(names)}"


@dataclass
class VectorTable:
    """All usable vectors of a dataset, one row per face."""

    root: Path
    identities: list[Identity]
    identity_of: NDArray[np.int32]  # (n,): index into `identities`
    files: list[str]  # (n,): file name inside the identity folder
    vectors: NDArray[np.float32]  # (n, d), unit length
    key: str | None
    problems: dict[int, list[Problem]]  # identity index -> every problem (shown capped: problems.capped)
    counts: NDArray[np.int64]  # (len(identities),): vectors loaded per identity
    sources: dict[int, Path] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1]) if self.vectors.ndim == 2 else 0

    def __len__(self) -> int:
        return int(self.vectors.shape[0])


@functools.lru_cache(maxsize=1 << 16)
def _rel(root: Path, path: Path) -> str:
    try:
        return display_name(str(path.relative_to(root)))
    except ValueError:
        return display_name(str(path))


def _file_text(value: object, limit: int = 300) -> str:
    """Text that came out of a file (npz member names, a dtype's field names, a reader's error
    quoting the archive): shown as names are, at most `limit` characters (text.file_text)."""
    from .text import file_text

    return file_text(value, limit)


def embeddings_path(folder: Path) -> Path | None:
    """The folder's embeddings file: FACE01's npKnown.npz first, else the plain embeddings.npz.

    None also when the folder cannot be looked at; `folderscan.scan_folder` says why.
    """
    for name in embeddings_file_names():
        try:
            if (folder / name).is_file():
                return folder / name
        except OSError:
            return None
    return None


@overload
def read_bytes(path: Path, max_bytes: int | None = None) -> bytes | OSError | MemoryError: ...
@overload
def read_bytes(path: Path | None, max_bytes: int | None = None) -> bytes | OSError | MemoryError | None: ...
def read_bytes(path: Path | None, max_bytes: int | None = None) -> bytes | OSError | MemoryError | None:
    """The whole file in one read (np.load on a path makes many small ones), or the error.

    A file over `max_bytes` (default MEMORY_LIMIT) is not read: `TooLarge`.
    """
    if path is None:
        return None
    limit = MEMORY_LIMIT if max_bytes is None else max_bytes
    try:
        import stat

        st = path.stat()
        if not stat.S_ISREG(st.st_mode):  # a FIFO would block the run: never opened
            return OSError(f"not a regular file: {'a folder' if stat.S_ISDIR(st.st_mode) else 'a FIFO or device'}")
        size = st.st_size
        if size > limit:
            return TooLarge(size, limit)
        return path.read_bytes()
    except OSError as exc:
        return exc
    except MemoryError as exc:
        return exc


class _Refused(Exception):
    """An array that must not be read; carries the problem."""

    def __init__(self, problem: Problem):
        super().__init__(problem.message)
        self.problem = problem


# numpy writes every header as this literal; parsing it with a regular expression instead of
# ast.literal_eval made reading 20,000 archives 3 s faster. Anything else goes to numpy's parser.
_HEADER = re.compile(rb"\{'descr': '([<>|=][a-zA-Z][0-9]+)', 'fortran_order': (True|False), 'shape': \(([0-9, ]*)\), \}")


@functools.lru_cache(maxsize=256)
def _dtype(descr: bytes) -> np.dtype[Any]:
    return np.dtype(descr.decode("ascii"))


def _quick_header(fp: IO[bytes]) -> _Header | None:
    """(shape, fortran_order, dtype) of a version 1.0 header in numpy's own layout, else None
    (the stream is then back where it was)."""
    start = fp.tell()
    magic = fp.read(10)
    if len(magic) == 10 and magic[:8] == b"\x93NUMPY\x01\x00":
        length = int.from_bytes(magic[8:10], "little")
        m = _HEADER.match(fp.read(length).rstrip(b" \n"))
        if m is not None:
            dtype = _dtype(m.group(1))
            if not dtype.hasobject:
                shape = tuple(int(v) for v in m.group(3).split(b",") if v.strip())
                return shape, m.group(2) == b"True", dtype
    fp.seek(start)
    return None


def _member(zf: zipfile.ZipFile, key: str, rel: str) -> tuple[tuple[int, ...], np.dtype[Any], int, bool, int]:
    """Shape, dtype and bytes the .npy member `key` declares, checked against what the archive holds.

    Only the header is decompressed: a header may declare any shape, and numpy allocates the
    declared array before reading a byte of it.
    """
    names = zf.namelist()
    info = zf.getinfo(key + ".npy" if key + ".npy" in names else key)
    with zf.open(info) as fp:
        quick = _quick_header(fp)
        version = (1, 0) if quick is not None else npy_format.read_magic(fp)
        if quick is not None:
            shape, fortran, dtype = quick
        elif version == (1, 0):
            shape, fortran, dtype = npy_format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, fortran, dtype = npy_format.read_array_header_2_0(fp)
        elif version == (3, 0) and _read_header_3 is not None:  # utf-8 field names: no public reader
            shape, fortran, dtype = _read_header_3(fp, version)
        else:
            raise _Refused(Problem(rel, f"corrupt or truncated archive: '{_file_text(key)}' has .npy format "
                                        f"version {version}",
                                   code="corrupt"))
        header = fp.tell()
    if dtype.hasobject:
        raise _Refused(Problem(rel, f"'{_file_text(key)}' holds Python objects (pickled arrays); re-save names "
                                    "with dtype=str "
                                    "and vectors as float arrays", code="pickled"))
    declared = math.prod(shape) * dtype.itemsize
    held = info.file_size - header
    if declared != held:
        raise _Refused(Problem(rel, f"corrupt or truncated archive: '{_file_text(key)}' declares shape {shape} "
                                    f"{_file_text(dtype)} "
                                    f"({size_text(declared)}) but holds {size_text(max(held, 0))}", code="corrupt"))
    return shape, dtype, declared, fortran, header


def _stored_array(data: bytes, zf: zipfile.ZipFile, key: str, shape: tuple[int, ...], dtype: np.dtype[Any],
                  fortran: bool, header: int) -> NDArray[Any] | None:
    """A zero-copy view of an uncompressed member's array inside the archive bytes, or None
    (compressed member, or a local header that does not match): then numpy reads it.

    np.load copies every array through zipfile in 8 KiB reads and checks its CRC: 70% of the
    time of loading a million vectors. The member's size was checked against its header."""
    names = zf.namelist()
    info = zf.getinfo(key + ".npy" if key + ".npy" in names else key)
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    local = info.header_offset
    if data[local : local + 4] != b"PK\x03\x04":
        return None
    start = local + 30 + int.from_bytes(data[local + 26 : local + 28], "little") \
        + int.from_bytes(data[local + 28 : local + 30], "little") + header
    count = math.prod(shape)
    if start + count * dtype.itemsize > len(data):
        return None
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=start)
    view: NDArray[Any] = arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)
    return view


class _Loaded(NamedTuple):
    names: NDArray[Any]
    arrays: dict[str, NDArray[Any]]  # vector key -> array as stored
    names_key: str  # the member the names came from (FACE01 v1: arr_0)
    no_face: bool = False  # names and every vector array empty lists (FACE01: no face found)


def _load_arrays(data: bytes, rel: str, names_key: str, wanted: list[str], limit: int, out: FolderVectors,
                 no_face: bool = False, unnamed: str | None = None) -> _Loaded | None:
    """Names and {key: array} read from the archive bytes, or None with the problem added to `out`.

    `no_face`: a file whose names and other arrays are all shape (0,) (empty lists saved) is
    `_Loaded.no_face`, whatever key its vectors had. `unnamed`: the key the vectors of a file
    saved without keywords (exactly arr_0 names, arr_1 vectors: FACE01 v1) are read as."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        keys = list(npz.files)
        there = f"(arrays present: {_file_text(', '.join(keys), 1000) or 'none'})"  # member names: file text
        present = [k for k in wanted if k in keys]
        v1 = unnamed is not None and names_key not in keys and sorted(keys) == [V1_NAMES, V1_VECTORS]
        if v1:
            names_key, present = V1_NAMES, [V1_VECTORS]
        if names_key not in keys:
            out.problems.append(Problem(rel, f"missing array '{_file_text(names_key)}' {there}", code="missing-array"))
            return None
        # every header first (only headers are decompressed): the folder's declared total is
        # checked before any array is read or inflated
        names_member = _member(npz.zip, names_key, rel)
        if no_face and names_member[0] == (0,) and all(_member(npz.zip, k, rel)[0] == (0,)
                                                       for k in keys if k != names_key):
            return _Loaded(np.zeros(0), {}, names_key, no_face=True)
        if not present:
            expected = " or ".join(f"'{_file_text(k)}'" for k in wanted)
            out.problems.append(Problem(rel, f"missing vector array {expected} {there}", code="missing-array"))
            return None
        members = {names_key: names_member, **{k: _member(npz.zip, k, rel) for k in present}}
        total = sum(m[2] for m in members.values())
        if total > limit:
            k, (shape, dtype, size, _, _) = max(members.items(), key=lambda m: m[1][2])
            raise _Refused(Problem(rel, f"'{_file_text(k)}' declares shape {shape} {_file_text(dtype)} "
                                        f"({size_text(size)}); this folder's arrays declare {size_text(total)}, over "
                                        f"its memory bound of {size_text(limit)} (a quarter of the run's memory "
                                        f"budget of {size_text(int(limit / FOLDER_SHARE))}: --memory / rules memory:); "
                                        "not read", code="too-large"))
        read: dict[str, NDArray[Any]] = {}
        for k, (shape, dtype, _size, fortran, header) in members.items():
            arr = _stored_array(data, npz.zip, k, shape, dtype, fortran, header)
            read[k] = arr if arr is not None else npz[k]
        names = read[names_key]
        arrays = {k: read[k] for k in present}
        if v1 and unnamed is not None:
            arrays = {unnamed: read[V1_VECTORS]}
    return _Loaded(names, arrays, names_key)


def accept_arrays(out: FolderVectors, rel: str, names_key: str, names: NDArray[Any],
                  arrays: dict[str, NDArray[Any]]) -> None:
    """`names` (file names) and `arrays` (vector key -> vectors) as a file held them, into `out`
    when they have the shapes every format needs, else a problem each (`names_key`: what the
    file calls its names, for the message)."""
    if names.ndim != 1 or names.dtype.kind not in "US":
        out.problems.append(Problem(rel, f"'{names_key}' must be a 1-D array of file names, found dtype "
                                         f"{_file_text(names.dtype)} "
                                         f"shape {names.shape}", code="bad-names"))
        return
    out.names = [n.decode("utf-8", "backslashreplace") if isinstance(n, bytes) else str(n) for n in names.tolist()]
    for k, arr in arrays.items():
        if arr.ndim == 3 and arr.shape[1] == 1:
            arr = arr[:, 0, :]
        if arr.ndim != 2 or arr.dtype.kind not in "fiu":
            out.problems.append(Problem(rel, f"'{k}' must be an (N, D) or (N, 1, D) number array, found dtype "
                                             f"{_file_text(arr.dtype)} shape {arr.shape}", code="bad-shape"))
            continue
        if arr.shape[0] != len(out.names):
            out.problems.append(Problem(rel, f"'{names_key}' lists {len(out.names)} files but '{k}' has "
                                             f"{arr.shape[0]} vectors", code="count-mismatch"))
            continue
        out.arrays[k] = arr


@dataclass(frozen=True)
class NpzReader:
    """An `.npz` archive with the file names under `names_key` and the vectors under one of
    `vector_keys` (`follows_key`: the rules' key, when set, names the one wanted).

    `face01`: the shapes FACE01 itself writes are read too: a file of empty lists (no face found)
    is a note, and a v1 file saved without keywords (arr_0 names, arr_1 dlib vectors) is read
    when it has as many names as vectors."""

    file_names: tuple[str, ...]
    names_key: str
    vector_keys: tuple[str, ...]
    follows_key: bool = False
    face01: bool = False

    def read(self, data: bytes, rel: str, vector_key: str | None, limit: int, out: FolderVectors) -> None:
        wanted = [vector_key] if self.follows_key and vector_key else list(self.vector_keys)
        try:
            loaded = _load_arrays(data, rel, self.names_key, wanted, limit, out, no_face=self.face01,
                                  unnamed=V1_KEY if self.face01 else None)
        except _Refused as exc:
            out.problems.append(exc.problem)
            return
        except MemoryError:
            # The bound is a guess about free memory; other folders and processes share it.
            out.problems.append(Problem(rel, f"not enough memory to read its arrays (memory bound {size_text(limit)})",
                                        code="too-large"))
            return
        except ValueError as exc:
            if "allow_pickle" in str(exc) and zipfile.is_zipfile(io.BytesIO(data)):  # an npz whose arrays are objects
                out.problems.append(Problem(rel, "holds Python objects (pickled arrays); re-save names with dtype=str "
                                                 "and vectors as float arrays", code="pickled"))
            else:
                out.problems.append(Problem(rel, f"corrupt or truncated archive ({_file_text(exc)})", code="corrupt"))
            return
        except (zipfile.BadZipFile, EOFError, OSError, KeyError, zipfile.LargeZipFile) as exc:
            out.problems.append(Problem(rel, f"corrupt or truncated archive ({type(exc).__name__}: {_file_text(exc)})",
                                        code="corrupt"))
            return
        if loaded is None:
            return
        if loaded.no_face:  # out.source is set: load_table reports no "other model" for it
            out.problems.append(Problem(rel, NO_FACE_NOTE, fatal=False, code=NO_FACE))
            return
        names, arrays = loaded.names, loaded.arrays
        vecs = arrays.get(V1_KEY) if loaded.names_key == V1_NAMES else None
        if vecs is not None and names.ndim == 1 and vecs.ndim and vecs.shape[0] != len(names):
            # never guess which names lost their vector
            out.problems.append(Problem(rel, f"{V1_FORMAT} lists {len(names)} names but {vecs.shape[0]} vectors: "
                                             "it cannot be matched name-to-vector (nothing records which names have "
                                             "no vector); not read: re-create it with current FACE01",
                                        code=V1_MISMATCH))
            return
        accept_arrays(out, rel, loaded.names_key, names, arrays)


FACE01_READER = NpzReader((FACE01_FILE,), "name", KNOWN_VECTOR_KEYS, follows_key=True, face01=True)
PLAIN_READER = NpzReader((PLAIN_FILE,), PLAIN_NAMES, (PLAIN_VECTORS,))
register_reader(FACE01_READER)
register_reader(PLAIN_READER)


def read_folder(
    identity: Identity,
    root: Path,
    vector_key: str | None,
    preread: tuple[Path | None, bytes | OSError | MemoryError | None] | None = None,
    *,
    scan: FolderScan | None = None,
    max_bytes: int | None = None,
) -> FolderVectors:
    """Read one identity folder's embeddings file; never raises for bad data.

    `scan`: the folder's listing (scan_folder), and `preread` (path, read_bytes(path)) the
    file already read, both done on a reader thread. `max_bytes`: the memory bound for this
    folder's arrays (default MEMORY_LIMIT). Nothing is read from a folder whose identity has a
    fatal problem (load_table reports those).
    """
    out = FolderVectors(identity)
    if identity.fatal:
        return out
    limit = MEMORY_LIMIT if max_bytes is None else max_bytes
    folder = _rel(root, identity.path)
    data: bytes | OSError | MemoryError | None = None
    if scan is None and preread is not None:
        scan = FolderScan(embeddings=preread[0])
    if scan is None:
        scan = scan_folder(identity.path, folder)
    if preread is not None:
        data = preread[1]
    out.problems.extend(scan.problems)
    path = scan.embeddings
    if path is None:
        if isinstance(data, OSError):  # callers that looked for the file themselves
            out.problems.append(Problem(folder + "/", f"cannot be read: {why(data)}", code="unreadable"))
        elif not any(p.fatal for p in out.problems):
            out.problems.append(Problem(folder + "/", f"no embeddings: {_none_of(embeddings_file_names())} is "
                                                      "in this folder", code="no-embeddings"))
        return out
    out.source = path
    rel = _rel(root, path)
    if data is None:
        data = read_bytes(path, limit)
    if isinstance(data, TooLarge):
        out.problems.append(Problem(rel, f"file of {size_text(data.size)} exceeds the memory bound of "
                                         f"{size_text(data.limit)}; not read", code="too-large"))
        return out
    if isinstance(data, MemoryError):
        out.problems.append(Problem(rel, "not enough memory to read it", code="too-large"))
        return out
    if isinstance(data, OSError):
        out.problems.append(Problem(rel, f"cannot be read: {data.strerror or data}", code="unreadable"))
        return out
    reader_for(path.name).read(data, rel, vector_key, limit, out)
    return out


def fetch_folder(identity: Identity, root: Path, max_bytes: int | None = None
                 ) -> tuple[FolderScan | None, bytes | OSError | MemoryError | None]:
    """The listing and raw embeddings file of one folder (for a reader thread); nothing for a
    folder whose identity has a fatal problem."""
    if identity.fatal:
        return None, None
    scan = scan_folder(identity.path, _rel(root, identity.path))
    return scan, read_bytes(scan.embeddings, max_bytes)


def read_folders(identities: list[Identity], root: Path, vector_key: str | None,
                 workers: int | None = None, max_bytes: int | None = None) -> Iterator[FolderVectors]:
    """read_folder for each identity, in order; file reads run ahead on threads."""

    def fetch(identity: Identity) -> tuple[Identity, FolderScan | None, bytes | OSError | MemoryError | None]:
        return identity, *fetch_folder(identity, root, max_bytes)

    for identity, scan, data in ordered_map(fetch, identities, workers=workers or 8):
        if scan is None:
            yield FolderVectors(identity)
            continue
        yield read_folder(identity, root, vector_key, (scan.embeddings, data), scan=scan, max_bytes=max_bytes)


def identity_problems(identity: Identity, root: Path) -> list[Problem]:
    """What discovery found about the folder itself, as problems (old string notes included)."""
    where = _rel(root, identity.path) + "/"
    return [*identity.problems, *(Problem(where, note, fatal=False, code="note") for note in identity.notes)]


def _bad_rows(rel: str, names: list[str], rows: NDArray[np.intp], what: str, code: str) -> Problem:
    """One problem for all rows of one kind in one file: a million zero vectors is one line."""
    n = len(rows)
    listed = [f"{r} ({display_name(names[r])})" for r in rows[:SHOWN].tolist()]
    faces = "1 face has" if n == 1 else f"{n} faces have"
    return Problem(rel, f"{faces} {what}, skipped (row{'s' if n > 1 else ''} {few(listed, total=n)})", code=code)


class NeedsFullLoad(Exception):
    """A table update cannot reproduce a full load (the dataset's key or dimension moved to a
    group whose rows the stored table does not hold): load every folder instead."""


class TableBuilder:
    """load_table's accumulation, one identity folder at a time, in identity order.

    `add` takes a folder as read (`FolderVectors`); `add_stored` takes a folder from a stored
    table instead: its rows, already normalised, copied from the stored file, and its record
    (what the table needs of the folder besides its rows: problems, source, array shapes, bad
    rows), so that `finish` gives the very table a full load gives. Every folder's record goes
    into the published table's metadata for the next update."""

    def __init__(self, root: Path, identities: list[Identity], vector_key: str | None, staging: Path | None):
        self.root, self.identities, self.vector_key, self.staging = root, identities, vector_key, staging
        # Rows are written per (key, dimension) as they come; which group is the dataset's is
        # decided at the end (the key in most folders, its most common dimension), so one stray
        # folder cannot make every other folder "wrong", and nothing is read twice.
        self.groups: dict[tuple[str, int], Rows] = {}
        self.bad_rows: dict[tuple[str, int], dict[int, list[Problem]]] = {}
        self.shapes: list[dict[str, tuple[int, int]]] = []  # per identity: key -> (rows, dim)
        self.folder_fatal: list[bool] = []
        self.problems: dict[int, list[Problem]] = {}
        self.sources: dict[int, Path] = {}
        self.own: list[int] = []  # per identity: where its folder's own problems start in `problems`
        self.stored_group: tuple[str, int] | None = None  # the group stored folders' rows belong to

    def _group(self, group: tuple[str, int]) -> "Rows":
        from .table_store import Rows

        if group not in self.groups:
            self.groups[group] = Rows(group[1], self.staging)
        return self.groups[group]

    def add(self, idx: int, f: FolderVectors) -> None:
        root, vector_key = self.root, self.vector_key
        if f.identity.fatal:  # a folder discovery could not read contributes nothing
            f = FolderVectors(f.identity)
        self.problems[idx] = identity_problems(f.identity, root) + list(f.problems)
        self.own.append(len(self.problems[idx]) - len(f.problems))
        if f.source is not None:
            self.sources[idx] = f.source
        self.shapes.append({k: (int(a.shape[0]), int(a.shape[1])) for k, a in f.arrays.items()})
        self.folder_fatal.append(any(p.fatal for p in f.problems))
        if vector_key is not None and vector_key not in f.arrays:
            return
        rel = _rel(root, f.source) if f.source is not None else ""
        for k, arr in f.arrays.items():
            if (vector_key is not None and k != vector_key) or not arr.shape[0]:
                continue
            group = (k, int(arr.shape[1]))
            rows_of = self._group(group)
            vec, bad = normalise(arr)
            names = f.names
            if bad.any():
                rows = np.flatnonzero(bad)
                finite = np.isfinite(arr[rows]).all(axis=1)
                found = self.bad_rows.setdefault(group, {}).setdefault(idx, [])
                if (~finite).any():
                    found.append(_bad_rows(rel, f.names, rows[~finite], "NaN or infinite values", "nan"))
                if finite.any():
                    found.append(_bad_rows(rel, f.names, rows[finite], "an all-zero vector", "zero"))
                vec = vec[~bad]
                names = [f.names[r] for r in np.flatnonzero(~bad)]
            rows_of.add(idx, list(names), vec)
        f.arrays = {}  # the raw arrays (views of the archive's bytes) are done with

    def add_stored(self, idx: int, record: list[Any], group: tuple[str, int], files: list[str],
                   copy: Callable[[Rows], None] | None) -> None:
        """One folder from a stored table: its `record`, its rows' `files` and `copy(rows)`,
        which appends its rows of `group` (the stored table's key and dimension)."""
        source, shapes, fatal, own, bad = record
        first = identity_problems(self.identities[idx], self.root)
        self.problems[idx] = first + [Problem(*p) for p in own]
        self.own.append(len(first))
        if source is not None:
            self.sources[idx] = Path(source)
        self.shapes.append({k: (int(n), int(d)) for k, n, d in shapes})
        self.folder_fatal.append(bool(fatal))
        for k, dim, found in bad:
            self.bad_rows.setdefault((k, int(dim)), {})[idx] = [Problem(*p) for p in found]
        self.stored_group = group
        if files:
            assert copy is not None  # given with every folder that has rows
            rows = self._group(group)
            copy(rows)
            rows.identity_of.append(np.full(len(files), idx, dtype=np.int32))
            rows.files.extend(files)
            rows.counts[idx] = rows.counts.get(idx, 0) + len(files)
            rows.n += len(files)

    def records(self) -> list[list[Any]]:
        """Per identity, what the table needs of its folder besides its rows, as JSON-ready lists:
        [source, [[key, rows, dim], ...], fatal, [its own problems], [[key, dim, [bad-row problems]], ...]]
        (problems as [file, message, fatal, code]). Before `finish` adds its problems."""
        bad: dict[int, list[list[Any]]] = {}
        for (k, dim), by_idx in self.bad_rows.items():
            for idx, found in by_idx.items():
                bad.setdefault(idx, []).append([k, dim, [list(astuple(p)) for p in found]])
        return [[str(self.sources[idx]) if idx in self.sources else None, [[k, n, d] for k, (n, d) in shapes.items()],
                 self.folder_fatal[idx], [list(astuple(p)) for p in self.problems[idx][self.own[idx]:]],
                 bad.get(idx, [])]
                for idx, shapes in enumerate(self.shapes)]

    def finish(self, store: TableStore | None = None, version: str | None = None,
               meta: Meta | None = None) -> VectorTable:
        """The table: published in the store when there is one (with every folder's record and
        `meta`), else in memory. Raises NeedsFullLoad when stored folders' rows are not those of
        the group the dataset turned out to use."""
        from .table_store import Rows, problems_json

        root, identities, shapes, vector_key = self.root, self.identities, self.shapes, self.vector_key
        key = vector_key
        if key is None:
            seen = Counter(k for s in shapes for k in s)
            if seen:
                order: dict[str, int] = {}
                for k in (k for reader in readers() for k in reader.vector_keys):
                    order.setdefault(k, len(order))
                key = max(seen, key=lambda k: (seen[k], -order.get(k, 99)))
        dims = Counter(s[key][1] for s in shapes if key in s)
        dim = dims.most_common(1)[0][0] if dims else 0
        if self.stored_group is not None and self.stored_group != (key, dim):
            raise NeedsFullLoad(f"the dataset's vectors are now {key} {dim}-d, the stored table's "
                                f"{self.stored_group[0]} {self.stored_group[1]}-d")
        chosen = (self.groups.pop((key, dim), None) if key is not None else None) or Rows(dim, None)
        records = self.records() if self.staging is not None and chosen.path is not None else None
        counts = np.zeros(len(identities), dtype=np.int64)
        problems = self.problems
        for idx, s in enumerate(shapes):
            probs = problems[idx]
            source = self.sources.get(idx)
            if source is None:
                continue
            rel = _rel(root, source)
            if key not in s:
                if not self.folder_fatal[idx] and not any(p.code == NO_FACE for p in probs):
                    others = ", ".join(s) or "none"
                    probs.append(Problem(rel, f"no '{key}' vectors (this folder has: {others}); the dataset uses "
                                              f"'{key}' (vectors of two models are never compared)", code="other-model"))
                continue
            n_rows, d = s[key]
            if d != dim:
                probs.append(Problem(rel, f"vectors have dimension {d}, the rest of the dataset has {dim}",
                                     code="dimension"))
            elif n_rows == 0:
                probs.append(Problem(rel, "holds no vectors (empty folder)", code="empty"))
            else:
                found = self.bad_rows.get((key, dim), {}).get(idx, [])
                probs.extend(found)
                counts[idx] = chosen.counts.get(idx, 0)
                if counts[idx] == 0 and not found:
                    probs.append(Problem(rel, "no usable vectors", code="empty"))
        # every problem, uncapped: each is a baseline key of its own (problems.capped is for display)
        problems = {k: v for k, v in problems.items() if v}
        files = chosen.files
        if self.staging is not None and chosen.path is not None:
            assert store is not None  # the staging folder is the store's
            vectors = store.publish(self.staging, chosen, version or "", {
                "key": key, "problems": problems_json(problems), "counts": counts.tolist(),
                "sources": {str(k): str(v) for k, v in self.sources.items()},
                "identities": [i.name for i in identities], "records": records, **(meta or {})})
            identity_of = np.concatenate(chosen.identity_of) if chosen.identity_of else np.zeros(0, np.int32)
        else:
            vectors, identity_of = chosen.finish()
        return VectorTable(root=root, identities=identities, identity_of=identity_of, files=files, vectors=vectors,
                           key=key, problems=problems, counts=counts, sources=self.sources)

    def discard(self) -> None:
        from .table_store import drop_staging

        for rows in self.groups.values():
            rows.discard()  # never raises (a full disk cannot flush the last rows)
        drop_staging(self.staging)  # hostile cache: and its owner lock


def load_table(
    root: str | Path,
    identities: list[Identity],
    vector_key: str | None = None,
    progress: Callable[..., Iterable[FolderVectors]] | None = None,
    workers: int | None = None,
    folders: Iterable[FolderVectors] | None = None,
    max_bytes: int | None = None,
    store: TableStore | None = None,
    version: str | None = None,
    meta: Meta | None = None,
) -> VectorTable:
    """Load all identity folders into one `VectorTable`.

    `folders`: the folders' vectors, one per identity in order, read or embedded by
    `dataset_checks.embed.prepare` (any iterable: each folder is normalised into the table and
    dropped before the next is read, so memory holds one folder, not the dataset); None: read
    here. `max_bytes`: memory bound for one folder's arrays (default MEMORY_LIMIT).
    `store` (`table_store.TableStore`) with its dataset `version`: the rows go to a file in the
    cache, which the table maps read-only (`meta`: more to keep in its metadata); without one
    they are held in memory.
    """
    root = Path(root)
    if folders is None:
        folders = read_folders(identities, root, vector_key, workers=workers, max_bytes=max_bytes)
        if progress is not None:
            folders = progress(folders, total=len(identities), desc="loading", unit="folder")
    builder = TableBuilder(root, identities, vector_key, store.staging() if store is not None else None)
    try:
        for idx, f in enumerate(folders):
            builder.add(idx, f)
        return builder.finish(store, version, meta)
    finally:
        builder.discard()


def stored_table(root: Path, identities: list[Identity], meta: Meta) -> VectorTable:
    """The VectorTable of a table the store opened (`TableStore.open`)."""
    from .table_store import problems_from_json

    return VectorTable(root=Path(root), identities=identities, identity_of=meta["identity_of"], files=meta["files"],
                       vectors=meta["vectors"], key=meta["key"], problems=problems_from_json(meta["problems"]),
                       counts=np.asarray(meta["counts"], dtype=np.int64),
                       sources={int(k): Path(v) for k, v in meta["sources"].items()})


def centre_vectors(vectors: NDArray[np.float32]) -> NDArray[np.float32]:
    """Unit rows minus their mean, re-normalised (rules embeddings.centre). Rows that end at zero
    length (only possible with one vector) stay zero."""
    if len(vectors) < 2:
        return vectors
    centred, _ = normalise(vectors, shift=vectors.mean(axis=0, dtype=np.float64))
    return centred
