"""BLAS threads for a while: one thread for many small products.

OpenBLAS splits a product over its threads as soon as it is a few hundred thousand
multiply-adds; for thousands of small products in a row (one per identity folder) waking and
joining the threads costs more than it saves, and on a machine shared with other busy processes
far more (2,000 products of a 60 x 512 folder with itself: 0.3 s on one thread, 2.5 s on two on
the 2-core benchmark machine). `single_threaded()` sets numpy's OpenBLAS (and any other OpenBLAS
loaded, faiss's) to one thread and restores the previous count; with another BLAS, or where the
loaded libraries cannot be listed (not Linux), it changes nothing.
"""

from __future__ import annotations

import ctypes
import functools
import os
from contextlib import contextmanager
from typing import Callable, Iterator

_PREFIXES = ("", "scipy_")
_SUFFIXES = ("", "64_", "_64_")

# (openblas_set_num_threads, openblas_get_num_threads) of one loaded library
_Threads = tuple[Callable[[int], object], Callable[[], int]]


@functools.lru_cache(maxsize=1)
def _openblas() -> tuple[_Threads, ...]:
    """(set_num_threads, get_num_threads) of every OpenBLAS loaded in this process."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as fh:
            paths = {line.split(None, 5)[5].strip() for line in fh
                     if "openblas" in line.lower() and len(line.split(None, 5)) == 6}
    except OSError:
        return ()
    found: list[_Threads] = []
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path, mode=getattr(os, "RTLD_NOLOAD", 0) | ctypes.RTLD_LOCAL)
        except OSError:
            continue
        for prefix in _PREFIXES:
            for suffix in _SUFFIXES:
                set_, get = (getattr(lib, f"{prefix}openblas_{what}_num_threads{suffix}", None)
                             for what in ("set", "get"))
                if set_ is not None and get is not None:
                    get.restype = ctypes.c_int
                    found.append((set_, get))
                    break
            else:
                continue
            break
    return tuple(found)


@contextmanager
def single_threaded() -> Iterator[None]:
    libs = _openblas()
    before = [get() for _, get in libs]
    for set_, _ in libs:
        set_(1)
    try:
        yield
    finally:
        for (set_, _), n in zip(libs, before):
            set_(n)


def cores() -> int:
    """The CPUs this process may run on (its affinity, where the system says; else the count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
