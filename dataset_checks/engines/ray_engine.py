"""`engine: ray`: the ranges of engines/ranges.py as Ray tasks (pip install "dataset-checks[ray]").

A new local cluster is started (one CPU per core, a small object store, no dashboard) unless
Ray is already initialised in this process, `engine.address` names a cluster to join (`auto`:
the one `ray start --head` runs on this machine; `head:6379`; `ray://head:10001`: Ray Client)
or RAY_ADDRESS is set (as in a Ray job). A cluster this engine started is shut down when the
search ends, however it ends.

Each task takes one range of units and needs: the shipped index (one `ray.put`, its arrays read
in place from each node's object store) and the table. When the table is a file (the table
store's mapping) tasks map it by path, so on one machine or over a shared filesystem nothing is
copied; a task whose node cannot see the file (it checks a digest of sampled rows) fails with
`TableNotVisible`, and from then on the table goes through the object store (one `ray.put`)
and the range is run again. Every node must run the same dataset_checks (a task returns a digest
of its search code; the driver refuses another).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import ray

from ..search import SearchTooBroad
from .ranges import (Executor, ExecutorInfo, RangeEngine, RangeResult, RangeRun, ShippedParts, Table, TableFile,
                     TableNotVisible, run_range)

MIN_STORE = 128 << 20  # object store of a local cluster: at least this, else the shipped bytes twice


@ray.remote(num_cpus=1)
def _range_task(parts: ShippedParts, table: Table, start: int, end: int, threshold: float,
                max_pairs: int) -> RangeResult:
    return run_range(parts, table, start, end, threshold, max_pairs)


def _local_cpus() -> int:
    from ..blas import cores

    return cores()


class RayExecutor(Executor):
    name = "ray"

    def __init__(self, engine: "RayEngine", run: RangeRun):
        self.owned = not ray.is_initialized()
        # no address: RAY_ADDRESS when set (a Ray job), else a new local cluster ("local": never
        # a cluster someone started on this machine with `ray start`)
        target = engine.address or os.environ.get("RAY_ADDRESS") or None
        if self.owned:
            kw: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING, **engine.init_kwargs}
            if target and target.startswith("ray://"):
                ray.init(address=target, **kw)
            elif target:
                ray.init(address=target, include_dashboard=False, **kw)
            else:
                store = engine.object_store_memory or max(
                    MIN_STORE, 2 * run.shipped.nbytes + (0 if isinstance(run.table, TableFile) else run.x.nbytes))
                ray.init(address="local", num_cpus=engine.num_cpus or _local_cpus(), object_store_memory=int(store),
                         include_dashboard=False, **kw)
        self.where = target or ("local cluster" if self.owned else "the Ray already initialised here")
        # Ray leaves these two untyped (unused-ignore: where Ray is not installed, they are Any)
        resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call, unused-ignore]
        self.cpus = max(1, int(resources.get("CPU", 1)))
        nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call, unused-ignore]
        self.nodes = sum(1 for node in nodes if node.get("Alive"))
        self.pending: dict[ray.ObjectRef[RangeResult], tuple[int, int]] = {}
        self.fallback: str | None = None
        self.state: ray.ObjectRef[ShippedParts] | None = ray.put(run.shipped.parts())
        self.table: TableFile | ray.ObjectRef[Table] | None  # None: closed
        if isinstance(run.table, TableFile):
            self.table, self.table_mode = run.table, "file"
        else:
            self.table, self.table_mode = self._put_table(run), "object store"

    @staticmethod
    def _put_table(run: RangeRun) -> ray.ObjectRef[Table]:
        return ray.put(np.asarray(run.x))

    def _submit(self, run: RangeRun, r: tuple[int, int]) -> None:
        assert self.state is not None and self.table is not None, "a range submitted after close()"
        ref = _range_task.remote(self.state, self.table, r[0], r[1], run.threshold, run.max_pairs)
        self.pending[ref] = r

    def results(self, run: RangeRun, ranges: list[tuple[int, int]]) -> Iterator[tuple[tuple[int, int], RangeResult]]:
        for r in ranges:
            self._submit(run, r)
        while self.pending:
            ready, _ = ray.wait(list(self.pending), num_returns=1)
            r = self.pending.pop(ready[0])
            try:
                got = ray.get(ready[0])
            except ray.exceptions.RayTaskError as exc:
                cause = getattr(exc, "cause", None)
                if isinstance(cause, TableNotVisible) and isinstance(self.table, TableFile):
                    self.fallback = str(cause)  # from now on the table goes through the object store
                    self.table, self.table_mode = self._put_table(run), "object store"
                if isinstance(cause, TableNotVisible) and not isinstance(self.table, TableFile):
                    self._submit(run, r)
                    continue
                if isinstance(cause, SearchTooBroad):
                    raise cause from None  # as the local engine raises it (the run reports it as such)
                raise
            yield r, got

    def describe(self) -> ExecutorInfo:
        out: ExecutorInfo = {"address": self.where, "nodes": self.nodes, "cpus": self.cpus}
        if self.fallback:
            out["table_fallback"] = self.fallback
        return out

    def close(self) -> None:
        for ref in list(self.pending):
            try:
                ray.cancel(ref, force=False)
            except Exception:  # noqa: BLE001 - a task that ended meanwhile
                pass
        self.pending.clear()
        self.state = self.table = None
        if self.owned:
            ray.shutdown()


class RayEngine(RangeEngine):
    """`engine: ray`. `address`: None starts a local cluster (`num_cpus`, `object_store_memory`:
    its size; defaults: every core, the shipped bytes twice and at least 128 MB), else the
    cluster to join. `init_kwargs`: more `ray.init` arguments. See RangeEngine for the rest."""

    name = "ray"

    def __init__(self, address: str | None = None, ranges: int | None = None, checkpoints: Path | None = None,
                 after_range: Callable[[int], None] | None = None, num_cpus: int | None = None,
                 object_store_memory: int | None = None, init_kwargs: dict[str, Any] | None = None):
        super().__init__(ranges=ranges, checkpoints=checkpoints, after_range=after_range)
        self.address, self.num_cpus, self.object_store_memory = address, num_cpus, object_store_memory
        self.init_kwargs = dict(init_kwargs or {})

    def executor(self, run: RangeRun) -> Executor:
        return RayExecutor(self, run)
