"""Embedding many images: content hash -> cache -> a process pool for the rest.

Each unique image content is embedded once per model (copies share the work), results go into
the cache as they arrive, and a tqdm-style progress bar counts images with an ETA. Workers are
separate processes (spawned, so nothing the parent holds — faiss, threads — leaks into them);
each loads the model once.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
from numpy.typing import NDArray

from .cache import Cache, Entry, file_hash
from .images import decode
from .models import EmbedderInfo, load_model, split_results

IN_PROCESS_BELOW = 6  # fewer images than this are embedded in this process (no pool start-up)


@dataclass
class EmbedStats:
    images: int = 0
    unique: int = 0
    cached: int = 0
    embedded: int = 0
    corrupt_cache: list[str] = field(default_factory=list)
    workers: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, int | float]:
        return {
            "images": self.images, "unique": self.unique, "cached": self.cached, "embedded": self.embedded,
            "corrupt_cache_entries": len(self.corrupt_cache), "workers": self.workers,
            "seconds": round(self.seconds, 3),
        }


def embed_batch(spec: str, items: list[tuple[str, bytes]]) -> list[tuple[str, Entry]]:
    """Decode and embed one batch; runs in a worker (or in-process). Never raises for bad images."""
    decoded = [(digest, decode(data)) for digest, data in items]
    usable = [(digest, d) for digest, d in decoded if d.array is not None]
    results: dict[str, Entry] = {}
    for digest, d in decoded:
        if d.array is None:
            results[digest] = Entry(None, -1, d.error, d.notes)
    if usable:
        model = load_model(spec)
        arrays = [d.array for _, d in usable if d.array is not None]  # every one (usable's test)
        outs: list[tuple[NDArray[np.float32] | None, int] | Exception]
        try:
            outs = list(split_results(model(arrays), len(usable)))
        except Exception:  # the model failed on this batch: one image at a time finds the culprit
            outs = []
            for array in arrays:
                try:
                    outs.append(split_results(model([array]), 1)[0])
                except Exception as exc:
                    outs.append(exc)
        for (digest, d), out in zip(usable, outs):
            if isinstance(out, Exception):
                results[digest] = Entry(None, -1, f"embedder failed ({type(out).__name__}: {out})", d.notes)
            else:
                results[digest] = Entry(out[0], out[1], None, d.notes)
    return [(digest, results[digest]) for digest, _ in items]


def _init_worker(spec: str) -> None:
    load_model(spec)


def _read(paths: dict[str, Path]) -> Iterator[tuple[str, bytes]]:
    for digest, path in paths.items():
        try:
            data = path.read_bytes()
        except OSError:
            data = b""  # decodes as "unreadable"; the read error is in the hash pass already
        yield digest, data


def embed_images(
    paths: Iterable[Path],
    embedder: EmbedderInfo,
    cache_dir: Path,
    workers: int | None = None,
    progress: Callable[..., Any] | None = None,  # tqdm-style: progress(total=, desc=, unit=) -> bar
    refresh: bool = False,
) -> tuple[dict[Path, Entry], EmbedStats]:
    """Every image's `Entry`, from the cache or freshly embedded (and then cached). `refresh`
    (--full): no cached entry is read, every image is embedded and its entry written anew."""
    import time

    t0 = time.perf_counter()
    paths = list(paths)
    stats = EmbedStats(images=len(paths))
    cache = Cache(cache_dir, embedder.slug, embedder.model_id)
    digest_of: dict[Path, str] = {}
    entries: dict[Path, Entry] = {}
    for p in paths:
        try:
            digest_of[p] = file_hash(p)
        except OSError as exc:
            entries[p] = Entry(None, -1, f"cannot be read ({exc.strerror or exc})")
    by_digest: dict[str, Path] = {}
    for p, d in digest_of.items():
        by_digest.setdefault(d, p)
    stats.unique = len(by_digest)
    done: dict[str, Entry] = {}
    todo: dict[str, Path] = {}
    for d, p in by_digest.items():
        e = None if refresh else cache.get(d)  # hostile cache: --full trusts no stored embedding
        if e is None:
            todo[d] = p
        else:
            done[d] = e
    stats.cached = len(done)
    stats.corrupt_cache = [str(p) for p in cache.corrupt]

    if todo:
        n_workers = workers or os.cpu_count() or 1
        n_workers = max(1, min(n_workers, len(todo) // 2 or 1))
        batch = max(1, min(embedder.batch_size, -(-len(todo) // (n_workers * 4))))
        bar = progress(total=len(todo), desc=f"embedding ({embedder.name})", unit="img") if progress else None
        items = _read(todo)

        def batches() -> Iterator[list[tuple[str, bytes]]]:
            chunk: list[tuple[str, bytes]] = []
            for item in items:
                chunk.append(item)
                if len(chunk) == batch:
                    yield chunk
                    chunk = []
            if chunk:
                yield chunk

        def take(result: list[tuple[str, Entry]]) -> None:
            for digest, entry in result:
                done[digest] = entry
                try:
                    cache.put(digest, entry)
                except OSError:
                    pass  # a read-only cache only costs time
            if bar is not None:
                bar.update(len(result))

        try:
            if n_workers == 1 or len(todo) < IN_PROCESS_BELOW:
                stats.workers = 1
                for chunk in batches():
                    take(embed_batch(embedder.spec, chunk))
            else:
                stats.workers = n_workers
                ctx = multiprocessing.get_context("spawn")
                with ProcessPoolExecutor(n_workers, mp_context=ctx, initializer=_init_worker,
                                         initargs=(embedder.spec,)) as pool:
                    pending: set[Future[list[tuple[str, Entry]]]] = set()
                    source = batches()
                    for chunk in source:
                        pending.add(pool.submit(embed_batch, embedder.spec, chunk))
                        if len(pending) >= n_workers * 3:
                            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                            for f in finished:
                                take(f.result())
                    for f in pending:
                        take(f.result())
        finally:
            if bar is not None:
                bar.close()
        stats.embedded = len(todo)

    for p, d in digest_of.items():
        entries[p] = done[d]
    stats.seconds = time.perf_counter() - t0
    return entries, stats
