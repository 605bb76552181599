"""The memory budget a run keeps to (rules `memory:`, `--memory`; default: half the machine).

Two kinds of memory grow with the dataset. The vector table is a read-only file mapping
(`table_store`): its pages belong to the page cache, so when this process's resident size nears
the budget a watcher drops them from the process (`madvise(MADV_DONTNEED)`) and later reads fault
them back from the file, at memory speed while the page cache holds them. Everything else
(labels, the lists' assignment, candidate pairs) is sized by the stages themselves: blocks of
bounded cells, one inverted list at a time. So a budget below the table's size costs page
faults, not a MemoryError.
"""

from __future__ import annotations

import mmap
import os
import re
import threading
import weakref
from typing import Any, TypedDict, TypeVar, cast

import numpy as np
from numpy.typing import ArrayLike, NDArray

_Item = TypeVar("_Item", bound=np.generic)  # a table's dtype: what a gather returns is the same

_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 2**10, "m": 1e6, "mb": 1e6, "mib": 2**20,
          "g": 1e9, "gb": 1e9, "gib": 2**30, "t": 1e12, "tb": 1e12, "tib": 2**40}
MINIMUM = 64 * 2**20  # below this the interpreter and faiss alone do not fit
DEFAULT_SHARE = 0.5
POLL_SECONDS = 0.005
HEADROOM = 0.85  # trim when resident memory passes this share of the budget


def parse_size(value: str | float) -> int:
    """Bytes from 4GB, 1.5 GiB, 512M, or a plain number of bytes; ValueError says what is wrong."""
    if isinstance(value, bool):
        raise ValueError("a size such as 4GB or 512MB")
    if isinstance(value, (int, float)):
        size = float(value)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
        if not m or m.group(2).lower() not in _UNITS:
            raise ValueError("a size such as 4GB or 512MB")
        size = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if not size >= MINIMUM:
        raise ValueError(f"at least {MINIMUM // 2**20} MiB")
    return int(size)


def size_text(n: int) -> str:
    """Bytes for people: 1.9 TiB, 40.0 MiB, 512 bytes."""
    if n < 1024:
        return f"{n} bytes"
    size = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        size /= 1024
        if size < 1024 or unit == "PiB":
            return f"{size:.1f} {unit}"
    raise AssertionError  # pragma: no cover


def machine_memory() -> int:
    """Physical memory, or the cgroup's limit when that is lower (containers, CI runners)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as fp:
                text = fp.read().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def default_budget() -> int:
    return max(MINIMUM, int(machine_memory() * DEFAULT_SHARE))


# One identity folder's arrays may declare at most this share of the run's budget: reading a
# folder holds its file's bytes, its arrays and their normalised float32 copy at once (about
# three times what the arrays declare when the file is stored, less when compressed), on top
# of the interpreter and the table's trimmed pages. A folder over it is refused before a byte
# of its arrays is read or decompressed (vectors.read_folder): that identity fails, the run
# goes on.
FOLDER_SHARE = 0.25


def folder_bound(budget: int | None = None) -> int:
    """The most one folder's arrays may declare: FOLDER_SHARE of `budget` (the run's, from
    --memory / rules `memory:`; None: the default budget), the budget itself capped at the
    machine's memory or its cgroup's limit (machine_memory)."""
    limit = default_budget() if budget is None else min(int(budget), machine_memory())
    return max(1, int(limit * FOLDER_SHARE))


def resident_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as fp:
            return int(fp.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def release(array: np.ndarray, start: int, stop: int) -> None:
    """Drop rows [start, stop) of a file-mapped table from this process (they stay in the page
    cache): for passes over the whole table after the run, where no budget watcher runs. A no-op
    for arrays that are not np.memmap."""
    mm = getattr(array, "_mmap", None)
    if mm is None or not hasattr(mm, "madvise") or array.ndim != 2 or stop <= start:
        return
    page = mmap.PAGESIZE
    row = array.strides[0]
    base = getattr(array, "offset", 0)
    lo = -(-(base + start * row) // page) * page  # inward: pages shared with other rows stay
    hi = (base + stop * row) // page * page
    if hi > lo:
        try:
            mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
        except (OSError, ValueError):
            pass


GATHER_BYTES = 256 * 2**20  # scattered reads of a mapped table add at most about this much resident
# A read fault on a file mapping maps the pages around it too (fault-around, and whole large
# folios of the page cache): one random row of a 2 GB table left 370-550 KB resident on the
# benchmark machine (MADV_RANDOM and MADV_NOHUGEPAGE change nothing). So gathers are read in
# pieces and the process's resident file pages are measured after each.
GATHER_PIECE = 256  # rows


def _mapping(array: object) -> mmap.mmap | None:
    """The mmap behind an array (np.memmap, or a view of one such as np.asarray gives)."""
    while array is not None:
        if isinstance(array, mmap.mmap):
            return array
        mm = getattr(array, "_mmap", None)
        if mm is not None:
            return cast(mmap.mmap, mm)  # np.memmap's private attribute: untyped
        array = getattr(array, "base", None)
    return None


def file_resident_bytes() -> int:
    """Resident file-backed (and shared) pages of this process (statm's third field), 0 where
    /proc is missing."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[2]) * mmap.PAGESIZE
    except (OSError, ValueError, IndexError):
        return 0


_base: "weakref.WeakKeyDictionary[mmap.mmap, int]" = weakref.WeakKeyDictionary()  # mapping -> resident
# file bytes right after its last trim (0 before the first)
_gather_lock = threading.Lock()


def gather(array: NDArray[_Item], rows: ArrayLike, limit: int = GATHER_BYTES, *,
           budget: Budget | None = None) -> NDArray[_Item]:
    """array[rows] (rows: integer indices of any shape), for scattered reads of a mapped table
    (samples, a check's suspects): read in pieces, and whenever the process's resident file
    pages have grown by `limit` since the last trim, the whole mapping is dropped from the
    process (the page cache keeps it). A sampled pass over a 2 GB table otherwise left most of
    it resident. `budget`: the run's (its checkpoint between pieces); None: no budget."""
    mm = _mapping(array)
    if mm is None or not hasattr(mm, "madvise") or array.ndim != 2:
        whole: NDArray[_Item] = array[rows]  # type: ignore[index]  # numpy's stubs: no index for ArrayLike
        return whole
    index = np.asarray(rows)
    flat = index.reshape(-1)
    out = np.empty((flat.size, array.shape[1]), dtype=array.dtype)
    for s in range(0, flat.size, GATHER_PIECE):
        out[s : s + GATHER_PIECE] = array[flat[s : s + GATHER_PIECE]]
        _bound(mm, limit)
        if budget is not None:
            budget.checkpoint()
    return out.reshape(index.shape + (array.shape[1],))


def _bound(mm: mmap.mmap, limit: int) -> None:
    with _gather_lock:
        if file_resident_bytes() - _base.get(mm, 0) > limit:
            try:
                mm.madvise(mmap.MADV_DONTNEED)
            except (OSError, ValueError):
                pass
            _base[mm] = file_resident_bytes()


def release_rows(array: NDArray[Any], rows: slice | ArrayLike, *, budget: Budget | None = None) -> None:
    """`release` for the rows a pass just read: a slice, or an index array when it is one run of
    consecutive rows (a folder of a table in folder order); scattered rows are left to `budget`'s
    checkpoint (the run's; None: no budget)."""
    if isinstance(rows, slice):
        release(array, rows.start or 0, len(array) if rows.stop is None else rows.stop)
        return
    index = np.asarray(rows)
    if index.ndim == 1 and index.size and int(index[-1]) - int(index[0]) == index.size - 1:
        release(array, int(index[0]), int(index[-1]) + 1)
    elif budget is not None:
        budget.checkpoint()


class BudgetRecord(TypedDict):
    """Budget.as_dict: the run's memory budget as the findings' metadata records it."""

    budget: int
    budget_text: str
    trims: int
    peak_seen: int


class Budget:
    """Keeps the mapped table's resident pages under `limit` while `watch`ed (a context manager
    around the run). `trims`: how often pages were dropped; `peak`: the largest resident size seen."""

    def __init__(self, limit: int):
        self.limit = int(limit)
        self.trims = 0
        self.peak = 0  # the largest resident size the watcher saw (it polls; the true peak may be higher)
        self._maps: list[mmap.mmap] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # checkpoint() trims only while the watcher runs: an unwatched budget's loops pay no /proc read
        self._running = False

    def watch(self, array: np.ndarray) -> None:
        """Add a file mapping (np.memmap) whose pages may be dropped; a no-op for other arrays."""
        mm = getattr(array, "_mmap", None)
        if mm is None or not hasattr(mm, "madvise") or array.nbytes == 0:
            return
        self._maps.append(mm)
        if self._thread is None and array.nbytes > self.limit * (1 - HEADROOM):
            self._thread = threading.Thread(target=self._run, name="dataset_checks memory budget", daemon=True)
            self._thread.start()
            self._running = True

    def checkpoint(self) -> None:
        """Called between the steps of the long loops (inverted lists, row blocks): while this
        budget runs (a table past its margin is watched, not yet closed), the table's pages are
        dropped now when its limit is near. The watcher thread polls too, but a busy interpreter
        (several compute threads on two cores) can keep it waiting for the GIL long enough for a
        pass to fill the mapping: one 1 GB-budget run at 1M peaked at 3.1 GB."""
        if self._running:
            self.check()

    def check(self) -> None:
        """Trim now if resident memory is past the headroom (the watcher's test, run inline)."""
        rss = resident_bytes()
        self.peak = max(self.peak, rss)
        if rss > self.limit * HEADROOM:
            self.trim()

    def trim(self) -> None:
        with self._lock:
            if not self._maps:  # nothing mapped (a table in memory): nothing to drop, nothing to count
                return
            for mm in self._maps:
                try:
                    mm.madvise(mmap.MADV_DONTNEED)
                except (OSError, ValueError, AttributeError):  # closed, or no madvise here: nothing to drop
                    pass
            self.trims += 1

    def _run(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            self.check()

    def close(self) -> None:
        self._running = False
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._maps.clear()

    def as_dict(self) -> BudgetRecord:
        return {"budget": self.limit, "budget_text": size_text(self.limit), "trims": self.trims,
                "peak_seen": self.peak}
