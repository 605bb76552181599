"""The cyclic garbage collector and a run's long-lived results.

A run leaves millions of Python objects that live until pytest exits (the findings, the checks'
issues, 20,000 parametrized items and their reports). Every full collection walks all of them
again: pytest's collections while it runs tests, the several it makes when it unconfigures,
and the one at interpreter exit. At 1M faces / 20k identities those walks cost 6 s of a 59 s run
(measured with benchmarks/scale.py; 53 s without them).

`keep()` runs once the results exist: one full collection (the run's cyclic garbage, 120 MB at
1M faces, must not be frozen with them), the C heap's free pages back to the system (glibc's
malloc_trim: the checks' threads leave ~100 MB free but held in their arenas), then everything
alive moves into the collector's permanent generation (gc.freeze): later collections skip it.
`release()` gives it back to the collector (an in-process pytest run, as pytester makes, must
not pin its objects for the life of the interpreter), and one exit handler freezes again just
before the interpreter's final collection, which would otherwise walk everything only to free it.
"""

from __future__ import annotations

import atexit
import functools
import gc
from typing import Callable

_frozen = False
_at_exit = False


def keep() -> None:
    global _frozen, _at_exit
    gc.collect()
    _trim_heap()
    gc.freeze()
    _frozen = True
    if not _at_exit:
        atexit.register(gc.freeze)
        _at_exit = True


def release() -> None:
    global _frozen
    if _frozen:
        gc.unfreeze()
        _frozen = False


def _trim_heap() -> None:
    """glibc's malloc_trim(0); nothing elsewhere (musl, macOS, Windows)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the C library this process already runs on
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim
