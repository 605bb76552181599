"""Read files ahead on threads, hand results over in order, parse on the calling thread.

Reading 1,291 small npz files on 8 threads that also parse them was 2-3x slower than one
thread on a 2-core machine: parsing holds the GIL, so the threads mostly wait for each other.
Raw reads release the GIL and overlap (which matters on network file systems), so only they
run on the pool; `window` bounds how many finished reads wait in memory.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int = 8, window: int = 64) -> Iterator[R]:
    """`map(fn, items)` with up to `workers` calls in flight and at most `window` results held."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque[Future[R]] = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
