"""Incremental runs: only what changed since the last run is searched, against everything.

A commit to a dataset repository adds a few hundred faces to millions; the search of the whole
table is then redone for nothing. Each run leaves its search state in the cache
(`search_state.py`: every row's content key, the pairs at the radius searched, the IVF index);
the next run on the same cache

1. builds its table from the stored one, reading only the folders whose listing changed
   (`update_table`; the table is the one a full load gives);
2. keys every row by content (`match`): a folder whose listing did not change keeps its keys,
   the rows of the others are hashed and matched to the stored rows of the same folder by (key,
   occurrence), so a renamed file is the same row and costs nothing, and a row that is new to
   its folder (added, modified, or moved from another folder) is new;
3. searches (`search`): the stored pairs whose rows are both still there are carried over
   (renumbered); the new rows are searched against every row, new ones included, by exact
   blocked matrix products (`backends.flat._exact_rows`) and re-scored in float64 like every
   pair. So the pairs are those of an exact full search over the new table whenever the stored
   ones were (the default full runs, flat and folder caps, are exact; an `index.type: ivf` one
   has its calibrated recall, and the new rows' pairs are exact);
4. saves the new state.

A full run is done instead, and the run says why (header, findings.json `incremental`), when
there is no usable state (none yet, damaged, another tool version), when the settings the
pairs depend on changed (index settings, vector key, centring), when the threshold went below
the stored radius, when the search moved to or from an IVF index, with `embeddings.centre` and any
change (the mean moves every vector), when more faces changed than `incremental.max_changed`
(a full run is then cheaper), or with `--full`.

The IVF index is kept too: a full run reuses its centroids and every unchanged row's nearest
lists (no k-means, no assignment of a million rows), incremental runs file new rows into their
lists, and it is trained again when it has drifted: its list balance grew past
`incremental.max_imbalance_growth` times what it was when trained, the table grew into another
`nlist`, or the last calibration asked for more than `incremental.max_nprobe_growth` times the
nprobe it was trained at.

Everything here happens under a lock on the dataset's cache folders (two runs on one cache take
turns) and nothing is written inside the dataset.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, NamedTuple, Sequence, cast

import numpy as np
from numpy.typing import NDArray

from . import __version__
from .search_state import (FORMAT, Damaged, IndexState, SearchState, imbalance, load, lock_folder, newest_other,
                           row_keys, save, state_folder)
from .text import file_text, shown as display_name

if TYPE_CHECKING:
    from .backends import Place, Progress, SearchTuning
    from .context import RunContext
    from .backends.ivf import IVFBackend, IVFIndex
    from .discover import Identity
    from .embed.folders import Prepared
    from .index_rules import IndexRules
    from .outputs import FolderLock
    from .rules import Rules
    from .search import SearchResult
    from .table_store import Rows, TableStore
    from .vectors import VectorTable

AUTO_MARGIN = 0.01  # threshold: auto moves by a few thousandths between runs on LFW-like data
DEFAULT_NPROBE = 8  # for the auto limit, before any full run has calibrated one
KEY_ROWS = 1 << 16  # rows keyed at a time (128 MiB of 512-d float32), their pages given back after


@dataclass
class Change:
    """This run's table against the stored state."""

    keys: NDArray[np.uint64]  # (rows, 2): content key of every row of the table
    old_of_new: NDArray[np.int64]  # (rows,): the stored row of each row, -1 for a row new to its folder
    removed: int  # stored rows that are gone from their folder (moved ones included)
    moved: int  # new rows whose content left another folder in the same change
    changed_folders: int  # folders whose listing changed (read again), added and removed ones included

    @property
    def new_rows(self) -> NDArray[np.intp]:
        return np.flatnonzero(self.old_of_new < 0)


class StoredIndex(NamedTuple):
    """The stored IVF index as a full run may reuse it."""

    centroids: NDArray[np.float32]
    probes: NDArray[np.signedinteger[Any]]  # every row of this run's table: its nearest lists


class Incremental:
    """One run's use of the search state: `acquire` (lock, load), `update_table`, `match`,
    `search`, `save`, `release`. `record` is what findings.json and the header say."""

    def __init__(self, cache_dir: Path | None, root: Path, rules: Rules, full: bool = False):
        self.rules = rules
        self.cache_dir, self.root = cache_dir, Path(root)
        self.enabled = cache_dir is not None and rules.incremental.enabled
        self.forced = full
        self.folder = state_folder(cache_dir, root) if self.enabled and cache_dir is not None else None
        self.state: SearchState | None = None
        self.damaged: str | None = None
        self.change: Change | None = None
        self.notes: list[str] = []
        self.record: dict[str, Any] = {"mode": "full", "reason": None}
        self._lock: FolderLock | None = None
        # the search's pairs at the state's radius (a full run's are below the threshold)
        self._all: SearchResult | None = None
        self._radius: float | None = None
        self._threshold = 0.0  # the lowest threshold in force (search)
        self._index: IndexState | None = None
        self._kind: str | None = None
        self._versions: list[str] | None = None  # the folders' listing digests, saved with the state
        self._version = ""  # the dataset version of this run's table
        self.on_cache_error: Callable[[Path, OSError], None] | None = None  # hostile cache: state not written

    # -- lock and state ---------------------------------------------------------------------
    def acquire(self) -> None:
        """Lock the dataset's table and state against other runs on this cache (waiting for
        one that holds it), then load the state."""
        if not self.enabled or self.cache_dir is None or self.folder is None:  # (enabled: both are set)
            return
        from .outputs import FolderLock

        where = lock_folder(self.cache_dir, self.root)
        try:
            where.mkdir(parents=True, exist_ok=True)
            lock = FolderLock(where)
            holder = lock.acquire()
            if holder:
                t0 = time.perf_counter()
                lock.acquire(wait=True)
                self.notes.append(f"waited {time.perf_counter() - t0:.1f} s for another run on the same cache "
                                  f"({holder.removeprefix('in use by another dataset_checks run ')})")
            self._lock = lock
        except OSError as exc:
            self.enabled = False
            self.record["reason"] = f"the cache {where} cannot be locked ({exc.strerror or exc}); no search state"
            return
        if self.forced:  # hostile cache: --full trusts nothing stored (every row keyed, a new state)
            return
        try:
            self.state = load(self.folder)
        except Damaged as exc:
            self.damaged = file_text(exc)  # it may quote state.json: shown as names are
            self.notes.append(f"the search state in {self.folder} is damaged ({self.damaged}); a full run rebuilds it")
            return
        other = newest_other(self.folder) if self.state is None else None
        if other is not None:
            try:
                self.state = load(other)
            except Damaged:
                return  # someone else's damaged state: this run is a full one, as without it
            if self.state is not None:
                # the state's folder, never its `root` (state.json text that no digest covers)
                self.notes.append(f"no search state for this dataset path; the one in {display_name(str(other))} "
                                  "is used (rows are matched by folder and content)")

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # -- the table --------------------------------------------------------------------------
    def update_table(self, store: TableStore, identities: list[Identity], prepared: Prepared) -> VectorTable | None:
        """The table of this dataset version built from the stored table of another: unchanged
        folders' rows copied from its file, only changed folders read. None when there is no
        stored table to start from (then everything is loaded)."""
        from .table_store import VECTORS
        from .vectors import NeedsFullLoad, TableBuilder

        if not self.enabled or prepared.read is None or len(prepared.folder_versions) != len(identities):
            return None
        old = store.open(None)
        if old is None or "records" not in old or len(old.get("folder_versions", ())) != len(old["identities"]):
            return None
        names, versions, records = old["identities"], old["folder_versions"], old["records"]
        where = {name: k for k, name in enumerate(names)}
        counts = np.bincount(old["identity_of"], minlength=len(names))
        starts = np.concatenate([[0], np.cumsum(counts)])
        reuse: dict[int, int] = {}  # identity -> its folder in the stored table
        for idx, ident in enumerate(identities):
            k = where.get(ident.name)
            if k is not None and versions[k] == prepared.folder_versions[idx]:
                reuse[idx] = k
        if not reuse:
            return None
        group = (old["key"], int(old["dim"]))
        files = old["files"]
        folders = prepared.read([idx for idx in range(len(identities)) if idx not in reuse])
        builder = TableBuilder(self.root, identities, self.rules.vector_key, store.staging())
        if builder.staging is None:
            return None
        try:
            with open(store.folder / VECTORS, "rb") as source:
                for idx in range(len(identities)):
                    k = reuse.get(idx)
                    if k is None:
                        builder.add(idx, next(folders))
                        continue
                    a, b = int(starts[k]), int(starts[k + 1])
                    builder.add_stored(idx, records[k], group, files[a:b], _copier(source, a, b))
                return builder.finish(store, prepared.version, {"folder_versions": prepared.folder_versions})
        except NeedsFullLoad as exc:
            self.notes.append(f"the stored table could not be updated ({exc}); every folder is read")
            return None
        finally:
            builder.discard()

    # -- what changed -----------------------------------------------------------------------
    def match(self, table: VectorTable, prepared: Prepared) -> None:
        """Every row's content key, and which stored row it is (before the table is centred)."""
        if not self.enabled:
            return
        from .memory import release

        t0 = time.perf_counter()
        state = self.state
        n = len(table)
        names = [i.name for i in table.identities]
        counts = np.bincount(np.asarray(table.identity_of, dtype=np.int64), minlength=len(names))
        starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        versions: Sequence[str | None] = \
            prepared.folder_versions if len(prepared.folder_versions) == len(names) else [None] * len(names)
        self._versions = [v or "" for v in versions]
        self._version = prepared.version
        keys = np.empty((n, 2), dtype=np.uint64)
        old_of_new = np.full(n, -1, dtype=np.int64)
        pos = {name: k for k, name in enumerate(state.folders)} if state is not None else {}
        # (no state: no folder is found in `pos`, so no row of s_starts is read)
        s_starts = np.concatenate([[0], np.cumsum(state.folder_rows)]).astype(np.int64) if state is not None else \
            np.zeros(1, dtype=np.int64)
        same: set[int] = set()
        changed: list[int] = []
        for idx, name in enumerate(names):
            a, b = int(starts[idx]), int(starts[idx + 1])
            k = pos.get(name)
            if k is not None and state is not None and versions[idx] is not None \
                    and state.folder_versions[k] == versions[idx] and state.folder_rows[k] == b - a:
                sa = int(s_starts[k])
                keys[a:b] = state.keys[sa : sa + b - a]
                old_of_new[a:b] = np.arange(sa, sa + b - a)
                same.add(k)
            else:
                changed.append(idx)
                # a first run keys every row: the pass leaves no resident copy of the table
                # (nor of one crowded folder)
                for s in range(a, b, KEY_ROWS):
                    e = min(b, s + KEY_ROWS)
                    keys[s:e] = row_keys(table.vectors[s:e])
                    release(table.vectors, s, e)
        removed = moved = 0
        gone_folders = 0
        if state is not None:
            other = [k for k in range(len(state.folders)) if k not in same]
            present = set(names)
            gone_folders = sum(1 for k in other if state.folders[k] not in present)
            ids = {name: f for f, name in enumerate(dict.fromkeys([names[i] for i in changed] +
                                                                   [state.folders[k] for k in other]))}
            new_rows = _ranges([(int(starts[i]), int(starts[i + 1])) for i in changed])
            old_rows = _ranges([(int(s_starts[k]), int(s_starts[k + 1])) for k in other])
            new_f = np.repeat([ids[names[i]] for i in changed], [int(counts[i]) for i in changed]).astype(np.int64)
            old_f = np.repeat([ids[state.folders[k]] for k in other],
                              [state.folder_rows[k] for k in other]).astype(np.int64)
            ia, ib = _match(new_f, keys[new_rows], old_f, state.keys[old_rows])
            old_of_new[new_rows[ia]] = old_rows[ib]
            left_new = np.setdiff1d(np.arange(new_rows.size), ia)
            left_old = np.setdiff1d(np.arange(old_rows.size), ib)
            removed = int(left_old.size)
            zeros = np.zeros
            ma, _ = _match(zeros(left_new.size, np.int64), keys[new_rows[left_new]],
                           zeros(left_old.size, np.int64), state.keys[old_rows[left_old]])
            moved = int(ma.size)
        self.change = Change(keys=keys, old_of_new=old_of_new, removed=removed, moved=moved,
                             changed_folders=len(changed) + gone_folders)
        self.record["match_seconds"] = round(time.perf_counter() - t0, 4)

    # -- the search -------------------------------------------------------------------------
    def search(self, table: VectorTable, rules: Rules, run_full: Callable[[float, KeptIVF | None], SearchResult],
               threshold: float | None = None, auto: bool | None = None,
               context: RunContext | None = None) -> SearchResult:
        """The cross-identity search of this run: incremental when the state allows it, else
        `run_full(radius, backend)` (the pipeline's full search; `backend` None or the IVF
        backend that keeps or reuses the index). Returns the SearchResult at `threshold` (the lowest
        threshold in force, resolved by the run; default rules.min_threshold); `auto`: the threshold
        was chosen from the data (a margin is kept), default rules.threshold_auto; `context`: the
        run's (a kept IVF index checkpoints its memory budget while it assigns rows)."""
        from .search import SearchTooBroad

        self.rules = rules
        t0 = time.perf_counter()
        threshold = rules.min_threshold if threshold is None else threshold
        self._threshold = threshold
        margin = self._margin(rules, rules.threshold_auto if auto is None else auto)
        self._kind = _kind(len(table), table.identity_of, rules.index)
        reason = self._why_full(table, rules, threshold)
        if reason is None:
            result = self._incremental(table, threshold, margin)
        else:
            self.record.update(mode="full", reason=reason)
            backend = self._ivf_backend(table, rules, context)
            radius = threshold - margin if self.enabled else threshold
            try:
                found = run_full(radius, backend)
            except SearchTooBroad:
                if radius >= threshold:
                    raise
                radius = threshold  # the margin's pairs are too many: the threshold's alone
                found = run_full(radius, backend)
            self._radius, self._all = radius, found
            self._keep_index(table, backend)
            result = _at_least(found, threshold)
        seconds = time.perf_counter() - t0
        self._describe(table, seconds)
        return result

    def _differences(self, state: SearchState, table: VectorTable) -> list[str]:
        """The settings that changed since the stored state; an empty table (or state) has no
        vector key or dimension to compare."""
        old, new = dict(state.key), state_key(self.rules, table)
        if not state.rows or not len(table):
            for k in ("vector_key", "dim"):
                old.pop(k, None)
                new.pop(k, None)
        return _differences(old, new)

    def _margin(self, rules: Rules, auto: bool) -> float:
        if rules.incremental.margin is not None:
            return rules.incremental.margin
        return AUTO_MARGIN if auto else 0.0

    def _why_full(self, table: VectorTable, rules: Rules, threshold: float) -> str | None:
        state, change = self.state, self.change
        if not self.enabled:
            return self.record.get("reason") or ("incremental runs are off (incremental.enabled: false)"
                                                 if self.cache_dir is not None else "no cache folder")
        if self.forced:
            return "--full"
        if self.damaged:
            return f"the search state was damaged ({self.damaged}); rebuilt"
        if state is None:
            return "no search state yet (first run on this cache)"
        differences = self._differences(state, table)
        if differences:
            return "settings changed: " + "; ".join(differences)
        if threshold < state.radius - 1e-12:
            if threshold < state.threshold:
                return f"threshold lowered {state.threshold:g} -> {threshold:g}"
            return f"threshold {threshold:g} is below the stored search radius {state.radius:g}"
        kind = state.history.get("kind")
        # flat and caps are both exact: their pairs carry over to each other. An IVF's do not
        # ("none": one folder or none, no pairs either way)
        if kind != self._kind and "ivf" in (kind, self._kind) and "none" not in (kind, self._kind):
            return (f"the table of {len(table):,} faces now gets the {self._kind} search "
                    f"(index.flat_below {rules.index.flat_below:,}), the stored pairs came from the {kind} search")
        assert change is not None  # match() ran: it does whenever the run is enabled
        new = int(change.new_rows.size)
        if rules.centre and (new or change.removed or not np.array_equal(change.old_of_new, np.arange(len(table)))):
            # (rows in another order too: the mean is summed in another order, to the last bit)
            return "embeddings.centre: every change moves the dataset's mean and with it every vector"
        limit, how = self._limit(len(table), len(table.identities))
        if new > limit:
            return f"{new:,} new or changed faces, over the limit of {limit:,} ({how}): a full run is cheaper"
        return None

    def _limit(self, n: int, folders: int = 1) -> tuple[int, str]:
        """New rows above which a full run is done: a fixed number, a share, or (auto) where the
        exact search of the new rows (new x n scores) would cost more than a full run's scan and
        build (n x nprobe x n / nlist scores, plus n x nlist for the assignment); flat: n / 2;
        folder caps: a quarter of the folders (its cap tests are about n x folders / 4 on the
        seed-scale data, smaller folders testing larger ones' caps)."""
        inc = self.rules.incremental
        if inc.max_changed is not None:
            return inc.max_changed, f"incremental.max_changed: {inc.max_changed}"
        if inc.max_changed_share is not None:
            return int(inc.max_changed_share * n), f"incremental.max_changed: {inc.max_changed_share:.0%}"
        if self._kind == "caps":
            return max(1, folders // 4), f"auto: a quarter of the {folders:,} folders for the folder-caps search"
        if self._kind != "ivf":
            return max(1, n // 2), "auto: half the table for the exact search"
        index = self.state.index if self.state is not None else None
        nlist = index.nlist if index is not None else _auto_nlist(n, self.rules.index)
        nprobe = index.nprobe if index is not None else DEFAULT_NPROBE
        return int(nprobe * n / max(nlist, 1) + nlist), f"auto: nprobe {nprobe} x {n:,} / nlist {nlist} + nlist"

    def _incremental(self, table: VectorTable, threshold: float, margin: float) -> SearchResult:
        from .backends import RADIUS_MARGIN
        from .backends.flat import _exact_rows
        from .search import MAX_PAIRS_DEFAULT, SearchResult, SearchTooBroad, _Collector, _pack

        state, change = self.state, self.change
        assert state is not None and change is not None  # _why_full found both
        self.record.update(mode="incremental", reason=None)
        radius = max(state.radius, threshold - margin)
        n = len(table)
        new_rows = change.new_rows
        old_to_new = np.full(state.rows, -1, dtype=np.int64)
        kept = np.flatnonzero(change.old_of_new >= 0)
        old_to_new[change.old_of_new[kept]] = kept
        a, b = old_to_new[state.pair_i], old_to_new[state.pair_j]
        ok = (a >= 0) & (b >= 0) & (state.pair_sim >= radius)
        ci, cj, cs = np.minimum(a[ok], b[ok]), np.maximum(a[ok], b[ok]), state.pair_sim[ok]
        t0 = time.perf_counter()
        x = table.vectors
        labels = np.asarray(table.identity_of)
        collector = _Collector(x, labels, radius, MAX_PAIRS_DEFAULT)
        if new_rows.size and n:
            _exact_rows(x, labels, new_rows, radius - RADIUS_MARGIN, collector.add)
        new = collector.result()
        seconds = time.perf_counter() - t0
        if ci.size + new.i.size > MAX_PAIRS_DEFAULT:
            raise SearchTooBroad(f"{ci.size + new.i.size:,} cross-folder pairs reach {radius:g}, more than the "
                                 f"limit of {MAX_PAIRS_DEFAULT:,}: the threshold is too low for these embeddings")
        found = _pack([ci, new.i], [cj, new.j], [cs, new.sim])
        info = {k: v for k, v in state.info.items() if k != "timings"}
        info.update(vectors=n, dim=table.dim, threshold=radius, candidates=collector.candidates,
                    timings={"search": seconds})
        found = SearchResult(found.i, found.j, found.sim, info)
        self._radius, self._all = radius, found
        self.record.update(carried_pairs=int(ci.size), new_pairs=int(new.i.size))
        self._file_new_rows(table, state, change)
        return _at_least(found, threshold)

    # -- the IVF index --------------------------------------------------------------------
    def _ivf_backend(self, table: VectorTable, rules: Rules, context: RunContext | None = None) -> KeptIVF | None:
        """For a full IVF run on the CPU with the list scan: the backend find_pairs would use,
        wrapped so that the index is kept (and, when the stored one is still fit, reused)."""
        if not self.enabled or self._kind != "ivf" or rules.index.scan != "lists":
            return None
        from .search import choose_backend, gpu_count

        if rules.index.gpu or (rules.index.gpu is None and gpu_count() > 0):
            return None
        n = len(table)
        # (kind "ivf" off the GPU: the IVF backend itself)
        inner = cast("IVFBackend", choose_backend("ivf", False, n, rules.index, rules.index.scan, 0, _tuning(), context))
        stored, why = self._reusable(table, inner.nlist)
        return KeptIVF(inner, stored, why)

    def _reusable(self, table: VectorTable, nlist: int) -> tuple[StoredIndex | None, str | None]:
        """(centroids, every row's nearest lists) of the stored index when a full run may reuse
        it, else None; and why it is not reused (None when there was nothing to reuse)."""
        state, change = self.state, self.change
        if self.forced or state is None or state.index is None or change is None:
            return None, None
        index = state.index
        if self.damaged or self._differences(state, table):
            return None, None
        if index.rebuild:
            return None, index.rebuild
        if index.nlist != nlist:
            return None, f"the table of {len(table):,} faces takes nlist {nlist}, the index has {index.nlist}"
        probes = self._probes(table, index, change)
        now, then = imbalance(probes[:, 0], index.nlist), float(index.trained.get("imbalance", 1.0))
        limit = self.rules.incremental.max_imbalance_growth
        if now > limit * then:
            return None, f"list balance {now:.2f} over {limit:g} x {then:.2f} when trained"
        return StoredIndex(index.centroids, probes), None

    def _probes(self, table: VectorTable, index: IndexState, change: Change) -> NDArray[np.signedinteger[Any]]:
        """Every row's nearest lists (in the stored array's type): the stored ones for stored
        rows, the quantizer's for new rows."""
        if not len(table):
            return np.zeros((0, index.probes.shape[1]), dtype=index.probes.dtype)
        probes = index.probes[np.maximum(change.old_of_new, 0)] if index.probes.size else \
            np.zeros((len(table), index.probes.shape[1]), dtype=index.probes.dtype)
        new = change.new_rows
        if new.size:
            probes[new] = nearest_lists(index.centroids, np.asarray(table.vectors[new]), probes.shape[1])
        return probes

    def _keep_index(self, table: VectorTable, backend: KeptIVF | None) -> None:
        """After a full run: the index it searched with, for the state."""
        from .backends.ivf import IVFIndex

        self._index = None
        built = getattr(backend, "built", None)
        if backend is None or not isinstance(built, IVFIndex) or built.probes is None:
            self.record["index"] = None
            return
        nprobe = int(built.info.get("nprobe") or 1)
        probes = _narrow(built.probes)
        if backend.stored is not None:
            assert self.state is not None and self.state.index is not None  # what backend.stored came from
            trained = dict(self.state.index.trained)
            index = IndexState(backend.stored[0], probes, nprobe, trained)
            growth = self.rules.incremental.max_nprobe_growth
            if nprobe > growth * int(trained.get("nprobe", nprobe)):
                index.rebuild = (f"calibration asked for nprobe {nprobe}, over {growth:g} x the {trained['nprobe']} "
                                 "it was trained at")
            how = "reused (no k-means, no assignment of stored rows)"
        else:
            centroids = built.cpu_index.quantizer.reconstruct_n(0, built.cpu_index.nlist).astype(np.float32)
            trained = {"rows": len(table), "nlist": int(centroids.shape[0]), "nprobe": nprobe,
                       "imbalance": imbalance(probes[:, 0], centroids.shape[0])}
            index = IndexState(centroids, probes, nprobe, trained)
            how = f"rebuilt: {backend.why}" if backend.why else "trained"
        self._index = index
        self.record["index"] = {"action": how, **self._index_json(index)}

    def _file_new_rows(self, table: VectorTable, state: SearchState, change: Change) -> None:
        """After an incremental run: the stored index with the new rows filed into their lists,
        and whether it has drifted (then the next full run trains it again)."""
        index = state.index
        if index is None:
            self._index = None
            self.record["index"] = None
            return
        probes = self._probes(table, index, change)
        updated = IndexState(index.centroids, probes, index.nprobe, dict(index.trained), index.rebuild)
        if updated.rebuild is None:
            now, then = updated.imbalance(), float(index.trained.get("imbalance", 1.0))
            limit = self.rules.incremental.max_imbalance_growth
            nlist = _auto_nlist(len(table), self.rules.index)
            if now > limit * then:
                updated.rebuild = f"list balance {now:.2f} over {limit:g} x {then:.2f} when trained"
            elif nlist != index.nlist:
                updated.rebuild = f"the table of {len(table):,} faces takes nlist {nlist}, the index has {index.nlist}"
        self._index = updated
        action = f"kept; retrained at the next full run: {updated.rebuild}" if updated.rebuild else "kept"
        self.record["index"] = {"action": action, **self._index_json(updated)}

    @staticmethod
    def _index_json(index: IndexState) -> dict[str, Any]:
        return {"nlist": index.nlist, "nprobe": index.nprobe, "imbalance": round(index.imbalance(), 4),
                "trained": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in index.trained.items()},
                "rebuild": index.rebuild}

    # -- the record and the state -----------------------------------------------------------
    def _describe(self, table: VectorTable, seconds: float) -> None:
        change = self.change
        rec = self.record
        rec["search_seconds"] = round(seconds, 4)
        rec["faces"] = len(table)
        if self.folder is not None:
            rec["state"] = str(self.folder)
        if change is not None and self.state is not None:
            new = int(change.new_rows.size)
            rec.update(searched=new if rec["mode"] == "incremental" else len(table), added=new - change.moved,
                       moved=change.moved, removed=change.removed - change.moved,
                       changed_folders=change.changed_folders)
        if self._radius is not None:
            rec["radius"] = round(self._radius, 6)

    def header(self) -> str | None:
        """The header's line about this run's search."""
        rec = self.record
        if self.cache_dir is None:  # no cache (the demo, a table in memory): nothing to say
            return None
        if rec.get("mode") == "incremental":
            line = (f"incremental: {rec['searched']:,} new or changed face(s) searched against {rec['faces']:,} in "
                    f"{rec['search_seconds']:.2f} s ({rec['added']:,} added, {rec['moved']:,} moved, "
                    f"{rec['removed']:,} removed, {rec['changed_folders']:,} changed folder(s)); "
                    f"{rec['carried_pairs']:,} pair(s) carried over")
        elif rec.get("reason"):
            line = f"incremental: full run: {rec['reason']}"
        else:
            return None
        index = rec.get("index")
        if index and index.get("action", "").startswith(("rebuilt", "kept; retrained")):
            line += f"; IVF index {index['action']}"
        return line

    def save(self, table: VectorTable, final: SearchResult) -> None:
        """Write the state of this run: the table's keys, the pairs at the radius (and any pair
        the final result holds besides, such as those the verification added), the index."""
        if not self.enabled or self._all is None or self.change is None or self._radius is None \
                or self.folder is None:  # (_radius: set with _all; folder: whenever enabled)
            return
        from .search import _pack

        found = self._all
        n = max(len(table), 1)
        key = np.concatenate([found.i * n + found.j, final.i * n + final.j])
        sims = np.concatenate([found.sim, final.sim])
        key, first = np.unique(key, return_index=True)
        packed = _pack([key // n], [key % n], [sims[first]])
        names = [i.name for i in table.identities]
        counts = np.bincount(np.asarray(table.identity_of, dtype=np.int64), minlength=len(names))
        versions = self._versions or [""] * len(names)
        history = dict(self.state.history) if self.state is not None else {}
        if self.record["mode"] == "full":
            history.update(full_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), runs_since_full=0)
        else:
            history["runs_since_full"] = int(history.get("runs_since_full", 0)) + 1
        history.update(kind=self._kind, last=self.record["mode"])
        info = self.state.info if self.record["mode"] == "incremental" and self.state is not None else \
            {k: v for k, v in found.info.items() if k != "timings"}
        state = SearchState(key=state_key(self.rules, table), radius=float(self._radius),
                            threshold=float(self._threshold), folders=names,
                            folder_versions=list(versions), folder_rows=[int(c) for c in counts],
                            keys=self.change.keys, pair_i=packed.i, pair_j=packed.j, pair_sim=packed.sim,
                            info=info, index=self._index, history=history, root=str(self.root),
                            version=self._version)
        try:
            save(self.folder, state)
        except OSError as exc:
            if self.on_cache_error is not None:  # hostile cache: the run says once that the cache failed
                self.on_cache_error(self.folder, exc)
                return
            self.notes.append(f"the search state could not be written to {self.folder} ({exc.strerror or exc}); "
                              "the next run is a full one")


class KeptIVF:
    """The IVF backend of a full run, keeping the index it built (`built`) for the search state;
    with `stored` (centroids, every row's nearest lists) it skips k-means and the assignment and
    searches with the stored index (calibrated again, as every full run is)."""

    def __init__(self, inner: IVFBackend, stored: StoredIndex | None = None, why: str | None = None):
        self.inner, self.stored, self.why = inner, stored, why
        self.nlist = inner.nlist
        self.built: IVFIndex | None = None

    def build(self, x: NDArray[np.float32], labels: np.ndarray, radius: float, progress: Progress | None = None,
              place: Place | None = None) -> IVFIndex:
        if self.stored is None or place is not None:
            self.stored = None
            self.built = self.inner.build(x, labels, radius, progress, place)
            return self.built
        from .backends import _faiss
        from .backends.ivf import IVFIndex

        faiss = _faiss()
        centroids, probes = self.stored
        nlist, d = centroids.shape
        quantizer = faiss.IndexFlatIP(d)
        quantizer.add(np.ascontiguousarray(centroids, dtype=np.float32))
        cpu_index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        cpu_index.is_trained = True
        inner = self.inner
        self.built = IVFIndex(faiss, cpu_index, None, x, labels, radius, inner.rules, inner.seed, inner.tuning, True,
                              np.ascontiguousarray(probes, dtype=np.int32),
                              {"index": "IndexIVFFlat", "nlist": nlist, "centroids": "stored"})
        return self.built


def nearest_lists(centroids: np.ndarray, x: np.ndarray, k: int, block: int = 4096) -> np.ndarray:
    """The k nearest lists of each row (nearest first, int32): inner products with the centroids,
    as the quantizer's flat search ranks them (numpy: an incremental run does not import faiss)."""
    out = np.empty((len(x), k), dtype=np.int32)
    c = np.ascontiguousarray(centroids, dtype=np.float32)
    for s in range(0, len(x), block):
        scores = np.asarray(x[s : s + block], dtype=np.float32) @ c.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else \
            np.broadcast_to(np.arange(scores.shape[1]), scores.shape).copy()
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        out[s : s + block] = np.take_along_axis(top, order, axis=1)
    return out


def state_key(rules: Rules, table: VectorTable) -> dict[str, Any]:
    """What the stored pairs are valid for besides the rows and the radius."""
    ix = rules.index
    return {"tool": __version__, "format": FORMAT, "vector_key": table.key, "dim": table.dim,
            "centre": bool(rules.centre),
            "index": {"type": ix.type, "flat_below": ix.flat_below, "nlist": ix.nlist, "nprobe": ix.nprobe,
                      "recall_target": ix.recall_target, "scan": ix.scan, "gpu": ix.gpu}}


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    names = {"tool": "tool version", "vector_key": "embeddings.key", "centre": "embeddings.centre",
             "format": "state format"}
    out: list[str] = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{file_text(names.get(prefix + k, prefix + k))} {_text(a)} -> {_text(b)}")
    return out


def _text(value: object) -> str:
    """A setting for a message; the stored one is state.json text: shown as names are."""
    return "auto" if value is None else file_text(value, 100)


def _kind(n: int, labels: np.ndarray, rules: IndexRules) -> str:
    """The search a full run does on this table (search.find_pairs' choice)."""
    labels = np.asarray(labels)
    if n == 0 or labels.min() == labels.max():  # (find_pairs: fewer than two folders)
        return "none"
    from .search import resolve_kind

    if rules.type != "auto" or n < rules.flat_below or rules.gpu is False:
        return resolve_kind(n, rules, False)
    from .search import gpu_count  # (imports faiss: only where a GPU could change the choice)

    return resolve_kind(n, rules, bool(rules.gpu) or gpu_count() > 0)


def _auto_nlist(n: int, rules: IndexRules) -> int:
    from .backends.ivf import auto_nlist

    return min(rules.nlist or auto_nlist(n), max(1, n // 39))


def _tuning() -> SearchTuning:
    from .backends import DEFAULT_TUNING

    return DEFAULT_TUNING


def _narrow(probes: np.ndarray) -> np.ndarray:
    return probes.astype(np.int16) if probes.size == 0 or probes.max() < 2**15 else probes.astype(np.int32)


def _at_least(found: SearchResult, threshold: float) -> SearchResult:
    """The pairs at or above the threshold (the search may have gathered some below)."""
    from .search import SearchResult

    info = {**found.info, "threshold": threshold}
    if found.info.get("threshold") is not None and found.info["threshold"] < threshold:
        info["gathered_at"] = found.info["threshold"]
    keep = found.sim >= threshold
    if keep.all():
        return SearchResult(found.i, found.j, found.sim, info)
    return SearchResult(found.i[keep], found.j[keep], found.sim[keep], info)


def _copier(source: BinaryIO, a: int, b: int) -> Callable[[Rows], None]:
    """Appends rows [a, b) of the stored table (its file open as `source`) to a new table's group."""
    return lambda rows: rows.copy_rows(source, a, b)


def _ranges(spans: list[tuple[int, int]]) -> np.ndarray:
    if not spans:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in spans])


def _occurrence(folder: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Which occurrence (0, 1, ...) of its (folder, key) each row is, in row order."""
    n = len(folder)
    if not n:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((np.arange(n), keys[:, 1], keys[:, 0], folder))
    f, k0, k1 = folder[order], keys[order, 0], keys[order, 1]
    start = np.ones(n, dtype=bool)
    start[1:] = (f[1:] != f[:-1]) | (k0[1:] != k0[:-1]) | (k1[1:] != k1[:-1])
    first = np.maximum.accumulate(np.where(start, np.arange(n), 0))
    occ = np.empty(n, dtype=np.int64)
    occ[order] = np.arange(n) - first
    return occ


def _match(fa: np.ndarray, ka: np.ndarray, fb: np.ndarray, kb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows of a, rows of b) with equal folder, key and occurrence: the same row on both sides."""
    na, nb = len(fa), len(fb)
    if not na or not nb:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    f = np.concatenate([fa, fb])
    k = np.concatenate([ka, kb])
    occ = np.concatenate([_occurrence(fa, ka), _occurrence(fb, kb)])
    side = np.concatenate([np.zeros(na, dtype=np.int8), np.ones(nb, dtype=np.int8)])
    row = np.concatenate([np.arange(na), np.arange(nb)])
    order = np.lexsort((side, occ, k[:, 1], k[:, 0], f))
    f, k0, k1, occ, side, row = f[order], k[order, 0], k[order, 1], occ[order], side[order], row[order]
    pair = (side[:-1] == 0) & (side[1:] == 1) & (f[:-1] == f[1:]) & (k0[:-1] == k0[1:]) & (k1[:-1] == k1[1:]) \
        & (occ[:-1] == occ[1:])
    at = np.flatnonzero(pair)
    return row[at], row[at + 1]
