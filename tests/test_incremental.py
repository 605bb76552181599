"""Incremental runs (dataset_checks.incremental, search_state): only what changed is searched,
and the findings are those of a full run, whatever the sequence of changes.

The Hypothesis test applies random sequences of changes to a small dataset (faces added,
removed, moved to another folder, renamed, modified, duplicated, made NaN; folders added,
removed, renamed, emptied) and after every step compares the incremental run on a persistent
cache with a full run without any cache: the same table, the same pairs with the same float64
similarities, the same findings, verdicts and check issues.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataset_checks.discover import discover_identities
from dataset_checks.incremental import _match, _occurrence
from dataset_checks.rules import parse_rules
from dataset_checks.run import Pipeline
from dataset_checks.search_state import load, row_keys, state_folder

from helpers import ARC, cross_identity_only, tree_state

DIM = 8
PEOPLE = 10
NOISE = 0.22
MTIME0 = 1_700_000_000 * 10**9


class Dataset:
    """A dataset in memory, written folder by folder: only the folders a step changed are
    rewritten (a new file renamed into place, with an mtime later than any before)."""

    def __init__(self, root: Path, seed: int, people: int = PEOPLE):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.rng = np.random.default_rng(seed)
        self.people = self.rng.standard_normal((people, DIM))
        self.folders: dict[str, list[tuple[str, np.ndarray]]] = {}
        self.dirty: set[str] = set()
        self.empty: set[str] = set()  # folders written with an empty archive (bad input)
        self.clock = 0
        self.serial = 0

    def face(self, person: int | None = None) -> np.ndarray:
        p = self.people[person if person is not None else self.rng.integers(len(self.people))]
        return (p / np.linalg.norm(p) + NOISE * self.rng.standard_normal(DIM) / np.sqrt(DIM)).astype(np.float32)

    def name(self) -> str:
        self.serial += 1
        return f"img_{self.serial:04d}.jpg"

    def write(self) -> None:
        for folder in sorted(self.dirty):
            path = self.root / folder
            rows = self.folders.get(folder)
            if rows is None:
                shutil.rmtree(path, ignore_errors=True)
                continue
            path.mkdir(parents=True, exist_ok=True)
            names = [n for n, _ in rows]
            vecs = np.array([v for _, v in rows], dtype=np.float32).reshape(len(rows), DIM)
            tmp = path / ".npKnown.tmp.npz"
            np.savez(tmp, name=np.array(names, dtype=str), **{ARC: vecs})
            os.replace(tmp, path / "npKnown.npz")
            self.clock += 1
            os.utime(path / "npKnown.npz", ns=(MTIME0 + self.clock * 10**9, MTIME0 + self.clock * 10**9))
        self.dirty.clear()


def _apply(ds: Dataset, data) -> str:
    """One random change; returns what it was (for Hypothesis' report)."""
    names = sorted(ds.folders)
    ops = ["add_folder"] + (["add", "remove", "move", "rename", "modify", "duplicate", "nan", "remove_folder",
                             "rename_folder", "empty", "nothing"] if names else [])
    op = data.draw(st.sampled_from(ops), label="op")
    if op == "add_folder":
        folder = f"person_{ds.serial:04d}_{data.draw(st.integers(0, 99), label='suffix'):02d}"
        n = data.draw(st.integers(1, 6), label="rows")
        person = data.draw(st.integers(0, PEOPLE - 1), label="person")
        ds.folders[folder] = [(ds.name(), ds.face(person)) for _ in range(n)]
        ds.dirty.add(folder)
        return f"{op} {folder} ({n})"
    folder = data.draw(st.sampled_from(names), label="folder")
    rows = ds.folders[folder]
    ds.dirty.add(folder)
    if op == "add":
        n = data.draw(st.integers(1, 4), label="rows")
        rows += [(ds.name(), ds.face()) for _ in range(n)]
    elif op == "remove" and rows:
        del rows[data.draw(st.integers(0, len(rows) - 1), label="row")]
    elif op == "move" and rows and len(names) > 1:
        other = data.draw(st.sampled_from([n for n in names if n != folder]), label="to")
        ds.folders[other].append(rows.pop(data.draw(st.integers(0, len(rows) - 1), label="row")))
        ds.dirty.add(other)
    elif op == "rename" and rows:
        k = data.draw(st.integers(0, len(rows) - 1), label="row")
        rows[k] = (ds.name(), rows[k][1])
    elif op == "modify" and rows:
        k = data.draw(st.integers(0, len(rows) - 1), label="row")
        rows[k] = (rows[k][0], ds.face())
    elif op == "duplicate" and rows:
        k = data.draw(st.integers(0, len(rows) - 1), label="row")
        rows.insert(data.draw(st.integers(0, len(rows)), label="at"), (ds.name(), rows[k][1].copy()))
    elif op == "nan" and rows:
        k = data.draw(st.integers(0, len(rows) - 1), label="row")
        bad = rows[k][1].copy()
        bad[0] = np.nan
        rows.append((ds.name(), bad))
    elif op == "remove_folder":
        ds.folders[folder] = None
        del ds.folders[folder]
    elif op == "rename_folder":
        new = folder + "_r"
        ds.folders[new] = ds.folders.pop(folder)
        ds.dirty.add(new)
    elif op == "empty":
        rows.clear()
    elif op == "nothing":
        ds.dirty.discard(folder)
    return f"{op} {folder}"


def _rules(threshold: float = 0.9, **extra):
    return parse_rules({"threshold": threshold, "incremental": {"max_changed": "100%"}, **extra}, None)


def _run(root: Path, cache: Path | None, rules, full: bool = False):
    pipeline = Pipeline(rules, root, discover_identities(root), cache, full=full)
    return pipeline, pipeline.execute()


def _pairs(result) -> list[tuple]:
    s = result.search
    return list(zip(s.i.tolist(), s.j.tolist(), s.sim.tolist()))


def assert_same_result(a, b) -> None:
    """Two runs' results are the same: table, pairs (with their float64 similarities), findings,
    verdicts, the checks' issues and the verification."""
    ta, tb = a.table, b.table
    assert np.array_equal(np.asarray(ta.vectors), np.asarray(tb.vectors))
    assert np.array_equal(ta.identity_of, tb.identity_of) and ta.files == tb.files
    assert {k: [str(p) for p in v] for k, v in ta.problems.items()} == \
        {k: [str(p) for p in v] for k, v in tb.problems.items()}
    assert _pairs(a) == _pairs(b)
    assert a.findings.pairs == b.findings.pairs
    va, vb = a.findings.verdicts, b.findings.verdicts
    assert va.keys() == vb.keys()
    for name in va:
        assert (va[name].status, va[name].matches, [str(p) for p in va[name].problems]) == \
            (vb[name].status, vb[name].matches, [str(p) for p in vb[name].problems]), name
    assert [repr(i) for i in a.findings.issues] == [repr(i) for i in b.findings.issues]
    assert a.findings.metadata["verification"] == b.findings.metadata["verification"]
    assert a.findings.metadata["threshold"] == b.findings.metadata["threshold"]


VARIANTS = {
    "fixed": {"threshold": 0.9},
    "auto": {},  # threshold: auto (the model's floor on data this small), gathered 0.01 below it
    "ivf": {"threshold": 0.9, "index": {"type": "ivf", "nlist": 4, "nprobe": 4}},  # every list probed
    "caps": {"threshold": 0.9, "index": {"flat_below": 0}},  # the default above flat_below: folder caps
}


@pytest.mark.parametrize("variant", VARIANTS)
@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_incremental_findings_equal_a_full_run_after_any_sequence_of_changes(variant, data):
    seed = data.draw(st.integers(0, 2**16), label="seed")
    steps = data.draw(st.integers(1, 6), label="steps")
    with tempfile.TemporaryDirectory(prefix="incr-") as tmp:
        ds = Dataset(Path(tmp) / "ds", seed)
        for _ in range(3):
            _apply(ds, data)
        ds.write()
        cache = Path(tmp) / "cache"
        rules = parse_rules({**VARIANTS[variant], "incremental": {"max_changed": "100%"}}, None)
        pipeline, first = _run(ds.root, cache, rules)
        assert pipeline.incremental.record["mode"] == "full"
        for _step in range(steps):
            done = [_apply(ds, data) for _ in range(data.draw(st.integers(1, 3), label="changes"))]
            ds.write()
            before = tree_state(ds.root)
            pipeline, inc = _run(ds.root, cache, rules)
            assert tree_state(ds.root) == before  # the dataset is never written
            record = pipeline.incremental.record
            assert record["mode"] == "incremental", (done, record)
            _, full = _run(ds.root, None, rules)
            assert_same_result(inc, full)
            assert record["searched"] <= len(inc.table)
            # the state left for the next run describes this table
            state = load(state_folder(cache, ds.root))
            assert state.rows == len(inc.table)
            assert np.array_equal(state.keys, row_keys(np.asarray(inc.table.vectors)))


def test_only_new_rows_are_searched_and_renames_cost_nothing(tmp_path):
    ds = Dataset(tmp_path / "ds", 1)
    for k in range(6):
        ds.folders[f"p{k}"] = [(ds.name(), ds.face(k % 3)) for _ in range(4)]
        ds.dirty.add(f"p{k}")
    ds.write()
    cache = tmp_path / "cache"
    rules = _rules()
    _run(ds.root, cache, rules)
    # rename two files: the same rows, nothing to search
    for folder in ("p1", "p2"):
        ds.folders[folder][0] = (ds.name(), ds.folders[folder][0][1])
        ds.dirty.add(folder)
    ds.write()
    pipeline, inc = _run(ds.root, cache, rules)
    rec = pipeline.incremental.record
    assert (rec["mode"], rec["searched"], rec["added"], rec["removed"], rec["moved"]) == ("incremental", 0, 0, 0, 0)
    assert rec["changed_folders"] == 2
    assert pipeline.table_source == "updated"
    assert_same_result(inc, _run(ds.root, None, rules)[1])
    # move one face to another folder, add two, remove one
    ds.folders["p4"].append(ds.folders["p3"].pop(0))
    ds.folders["p5"] += [(ds.name(), ds.face(0)), (ds.name(), ds.face(1))]
    ds.folders["p0"].pop()
    ds.dirty |= {"p0", "p3", "p4", "p5"}
    ds.write()
    pipeline, inc = _run(ds.root, cache, rules)
    rec = pipeline.incremental.record
    assert (rec["searched"], rec["added"], rec["moved"], rec["removed"], rec["changed_folders"]) == (3, 2, 1, 1, 4)
    assert_same_result(inc, _run(ds.root, None, rules)[1])
    meta = inc.findings.metadata["incremental"]
    assert meta["mode"] == "incremental" and meta["search_seconds"] >= 0


def _small(tmp_path, seed=2, folders=8, rows=5):
    ds = Dataset(tmp_path / "ds", seed)
    for k in range(folders):
        ds.folders[f"p{k}"] = [(ds.name(), ds.face(k % 4)) for _ in range(rows)]
        ds.dirty.add(f"p{k}")
    ds.write()
    return ds


def test_full_forces_a_full_run_and_writes_the_state_anew(tmp_path):
    ds = _small(tmp_path)
    cache = tmp_path / "cache"
    _run(ds.root, cache, _rules())
    pipeline, full = _run(ds.root, cache, _rules(), full=True)
    assert pipeline.incremental.record["mode"] == "full"
    assert pipeline.incremental.record["reason"] == "--full"
    assert pipeline.incremental.header() == "incremental: full run: --full"
    pipeline, inc = _run(ds.root, cache, _rules())
    assert pipeline.incremental.record["mode"] == "incremental"
    assert_same_result(inc, full)


@pytest.mark.parametrize("damage", ["digest", "truncate", "json", "missing", "format", "rows"])
def test_a_damaged_state_is_never_trusted_a_full_run_rebuilds_it(tmp_path, damage):
    ds = _small(tmp_path)
    cache = tmp_path / "cache"
    _run(ds.root, cache, _rules())
    folder = state_folder(cache, ds.root)
    if damage == "digest":  # same size, other bytes: pairs that were never found
        path = folder / "pair_sim.npy"
        raw = bytearray(path.read_bytes())
        raw[-1] ^= 0xFF
        path.write_bytes(bytes(raw))
    elif damage == "truncate":
        with open(folder / "keys.npy", "r+b") as fp:
            fp.truncate(64)
    elif damage == "json":
        (folder / "state.json").write_text("{not json")
    elif damage == "missing":
        (folder / "pair_i.npy").unlink()
    else:
        doc = json.loads((folder / "state.json").read_text())
        if damage == "format":
            doc["format"] = 999
        else:
            doc["folder_rows"][0] += 1
        (folder / "state.json").write_text(json.dumps(doc))
    ds.folders["p0"].append((ds.name(), ds.face(1)))
    ds.dirty.add("p0")
    ds.write()
    pipeline, result = _run(ds.root, cache, _rules())
    rec = pipeline.incremental.record
    assert rec["mode"] == "full" and rec["reason"].startswith("the search state was damaged"), rec
    assert any("search state" in n and "damaged" in n for n in pipeline.notes)
    assert_same_result(result, _run(ds.root, None, _rules())[1])
    # rebuilt: the next run is incremental again
    pipeline, _ = _run(ds.root, cache, _rules())
    assert pipeline.incremental.record["mode"] == "incremental"


def test_a_lower_threshold_runs_in_full_and_says_why_a_higher_one_does_not(tmp_path):
    ds = _small(tmp_path)
    cache = tmp_path / "cache"
    _run(ds.root, cache, _rules(0.85))
    pipeline, inc = _run(ds.root, cache, _rules(0.9))  # a subset of the stored pairs
    assert pipeline.incremental.record["mode"] == "incremental"
    assert_same_result(inc, _run(ds.root, None, _rules(0.9))[1])
    pipeline, full = _run(ds.root, cache, _rules(0.8))  # the last run's state searched at 0.9
    rec = pipeline.incremental.record
    assert (rec["mode"], rec["reason"]) == ("full", "threshold lowered 0.9 -> 0.8")
    assert pipeline.incremental.header() == "incremental: full run: threshold lowered 0.9 -> 0.8"
    assert full.findings.metadata["incremental"]["reason"] == "threshold lowered 0.9 -> 0.8"
    # a per-identity threshold below the state's radius lowers the search radius too
    rules = parse_rules({"threshold": 0.8, "identity_thresholds": {"p1": 0.75},
                         "incremental": {"max_changed": "100%"}}, None)
    pipeline, _ = _run(ds.root, cache, rules)
    assert pipeline.incremental.record["reason"] == "threshold lowered 0.8 -> 0.75"


def test_threshold_auto_gathers_below_it_so_that_a_small_move_stays_incremental(tmp_path):
    ds = _small(tmp_path)
    cache = tmp_path / "cache"
    rules = parse_rules({"incremental": {"max_changed": "100%"}}, None)  # threshold: auto
    pipeline, first = _run(ds.root, cache, rules)
    threshold = first.findings.metadata["threshold"]
    assert pipeline.incremental.record["radius"] == pytest.approx(threshold - 0.01)
    assert all(f.similarity >= threshold for f in first.findings.pairs)
    # the auto threshold moving down within the margin: still incremental, same findings
    fixed = parse_rules({"threshold": threshold - 0.005, "incremental": {"max_changed": "100%"}}, None)
    pipeline, inc = _run(ds.root, cache, fixed)
    assert pipeline.incremental.record["mode"] == "incremental"
    assert_same_result(inc, _run(ds.root, None, fixed)[1])


def test_settings_the_pairs_depend_on_force_a_full_run_naming_the_change(tmp_path):
    ds = _small(tmp_path)
    cache = tmp_path / "cache"
    _run(ds.root, cache, _rules())
    pipeline, _ = _run(ds.root, cache, _rules(index={"nlist": 64}))
    assert pipeline.incremental.record["reason"] == "settings changed: index.nlist auto -> 64"
    pipeline, _ = _run(ds.root, cache, _rules(index={"nlist": 64}, embeddings={"centre": True}))
    assert pipeline.incremental.record["reason"] == "settings changed: embeddings.centre False -> True"
    # with centring, nothing changed: incremental; any change moves the mean: full
    pipeline, _ = _run(ds.root, cache, _rules(index={"nlist": 64}, embeddings={"centre": True}))
    assert pipeline.incremental.record["mode"] == "incremental"
    ds.folders["p3"].reverse()  # the same rows in another order: the mean's sum changes in its last bits
    ds.dirty.add("p3")
    ds.write()
    pipeline, result = _run(ds.root, cache, _rules(index={"nlist": 64}, embeddings={"centre": True}))
    assert pipeline.incremental.record["reason"].startswith("embeddings.centre: every change moves")
    ds.folders["p2"].pop()
    ds.dirty.add("p2")
    ds.write()
    pipeline, result = _run(ds.root, cache, _rules(index={"nlist": 64}, embeddings={"centre": True}))
    assert pipeline.incremental.record["reason"].startswith("embeddings.centre: every change moves")
    assert_same_result(result, _run(ds.root, None, _rules(index={"nlist": 64}, embeddings={"centre": True}))[1])


def test_more_changes_than_the_limit_run_in_full(tmp_path):
    ds = _small(tmp_path)
    cache = tmp_path / "cache"
    rules = _rules(incremental={"max_changed": 3})
    _run(ds.root, cache, rules)
    ds.folders["p1"] += [(ds.name(), ds.face(0)) for _ in range(4)]
    ds.dirty.add("p1")
    ds.write()
    pipeline, _ = _run(ds.root, cache, rules)
    assert pipeline.incremental.record["reason"] == (
        "4 new or changed faces, over the limit of 3 (incremental.max_changed: 3): a full run is cheaper")
    pipeline, _ = _run(ds.root, cache, _rules(incremental={"enabled": False}))
    assert pipeline.incremental.record["reason"] == "incremental runs are off (incremental.enabled: false)"


def test_ivf_index_is_kept_reused_by_full_runs_and_retrained_when_it_drifts(tmp_path):
    ds = Dataset(tmp_path / "ds", 5, people=60)
    for k in range(40):
        ds.folders[f"p{k:02d}"] = [(ds.name(), ds.face(k)) for _ in range(30)]
        ds.dirty.add(f"p{k:02d}")
    ds.write()
    cache = tmp_path / "cache"
    # every list probed: the IVF is exact, so a full run is the reference to the last pair
    index = {"type": "ivf", "nlist": 8, "nprobe": 8}
    rules = _rules(index=index, incremental={"max_changed": "100%", "max_imbalance_growth": 1.3})
    pipeline, _ = _run(ds.root, cache, rules)
    assert pipeline.incremental.record["index"]["action"] == "trained"
    # new faces: searched exactly, filed into the stored index's lists
    ds.folders["p03"] += [(ds.name(), ds.face(1)) for _ in range(5)]  # person 1 is p01's
    ds.dirty.add("p03")
    ds.write()
    pipeline, inc = _run(ds.root, cache, rules)
    rec = pipeline.incremental.record
    assert rec["mode"] == "incremental" and rec["index"]["action"] == "kept"
    assert_same_result(inc, _run(ds.root, None, rules)[1])
    state = load(state_folder(cache, ds.root))
    assert state.index.probes.shape[0] == len(inc.table)
    # a full run (here: a lower threshold) reuses the centroids and the stored lists
    lower = _rules(0.88, index=index, incremental={"max_changed": "100%", "max_imbalance_growth": 1.3})
    pipeline, full = _run(ds.root, cache, lower)
    assert pipeline.incremental.record["index"]["action"].startswith("reused")
    assert full.search.info.get("centroids") == "stored"
    assert_same_result(full, _run(ds.root, None, lower)[1])
    # a crowd of one person's faces piles into one list: the balance drifts past the limit
    ds.folders["q0"] = [(ds.name(), ds.face(50)) for _ in range(800)]
    ds.dirty.add("q0")
    ds.write()
    pipeline, inc = _run(ds.root, cache, lower)
    rec = pipeline.incremental.record
    assert rec["mode"] == "incremental"
    assert rec["index"]["action"].startswith("kept; retrained at the next full run: list balance"), rec["index"]
    assert "IVF index kept; retrained" in pipeline.incremental.header()
    assert_same_result(inc, _run(ds.root, None, lower)[1])
    pipeline, full = _run(ds.root, cache, lower, full=True)
    assert pipeline.incremental.record["index"]["action"] == "trained"  # --full trains from scratch
    state = load(state_folder(cache, ds.root))
    assert state.index.rebuild is None and state.index.trained["rows"] == len(full.table)


def test_a_second_run_on_the_same_cache_waits_for_the_first(tmp_path, monkeypatch):
    from dataset_checks import outputs
    from dataset_checks.search_state import lock_folder

    ds = _small(tmp_path)
    cache = tmp_path / "cache"
    _run(ds.root, cache, _rules())
    where = lock_folder(cache, ds.root)
    held = outputs.FolderLock(where)
    assert held.acquire() is None
    waiting = threading.Event()
    real = outputs.FolderLock.acquire

    def acquire(self, wait=False):
        if wait:
            waiting.set()
        return real(self, wait)

    monkeypatch.setattr(outputs.FolderLock, "acquire", acquire)
    out = {}
    worker = threading.Thread(target=lambda: out.update(run=_run(ds.root, cache, _rules())))
    worker.start()
    waiting.wait()
    assert "run" not in out  # blocked on the lock
    held.release()
    worker.join()
    pipeline, _ = out["run"]
    assert any(n.startswith("waited") and "same cache" in n for n in pipeline.notes)
    assert pipeline.incremental.record["mode"] == "incremental"


def test_content_keys_match_by_folder_key_and_occurrence():
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((5, 4)).astype(np.float32)
    keys = row_keys(rows)
    assert len({tuple(k) for k in keys.tolist()}) == 5
    assert np.array_equal(row_keys(rows[[2, 2]]), keys[[2, 2]])
    # a: rows 0, 1, 1 in folder 0; b: row 1 (twice) and 0 in folder 0, row 0 in folder 1
    fa, ka = np.array([0, 0, 0]), keys[[0, 1, 1]]
    fb, kb = np.array([0, 1, 0, 0]), keys[[1, 0, 0, 1]]
    assert _occurrence(fa, ka).tolist() == [0, 0, 1]
    ia, ib = _match(fa, ka, fb, kb)
    assert sorted(zip(ia.tolist(), ib.tolist())) == [(0, 2), (1, 0), (2, 3)]


def test_the_plugin_runs_incrementally_and_full_on_demand(tmp_path, pytester):
    pkg = str(Path(__file__).resolve().parents[1] / "dataset_checks")
    ds = _small(tmp_path, folders=5)
    rules_file = cross_identity_only(tmp_path, extra="threshold: 0.9\nembeddings: {cache: %s}\n" % (tmp_path / "c"))
    before = tree_state(ds.root)

    def go(out: str, *extra: str):
        result = pytester.runpytest_inprocess(pkg, "-p", "no:cacheprovider", "-p", "no:randomly", "--dataset",
                                              str(ds.root), "--rules", str(rules_file), "--report-dir",
                                              str(tmp_path / out), *extra)
        assert result.ret in (0, 1)
        return result, json.loads((tmp_path / out / "findings.json").read_text())["incremental"]

    result, meta = go("r1")
    assert meta["reason"] == "no search state yet (first run on this cache)"
    result.stdout.fnmatch_lines(["dataset_checks: incremental: full run: no search state yet (first run on this cache)"])
    assert tree_state(ds.root) == before
    ds.folders["p0"].append((ds.name(), ds.face(2)))
    ds.dirty.add("p0")
    ds.write()
    before = tree_state(ds.root)
    result, meta = go("r2")
    assert (meta["mode"], meta["searched"], meta["changed_folders"]) == ("incremental", 1, 1)
    result.stdout.fnmatch_lines(["dataset_checks: *vectors x 8 * updated in the cache (only the changed folders read)*",
                                 "dataset_checks: incremental: 1 new or changed face(s) searched against 26 in *"
                                 "(1 added, 0 moved, 0 removed, 1 changed folder(s)); * pair(s) carried over"])
    result, meta = go("r3", "--full")
    assert (meta["mode"], meta["reason"]) == ("full", "--full")
    result.stdout.fnmatch_lines(["dataset_checks: incremental: full run: --full"])
    assert tree_state(ds.root) == before  # the dataset is never written


def test_a_checkout_at_another_path_starts_from_the_state_the_cache_brought(tmp_path):
    ds = _small(tmp_path)
    cache = tmp_path / "cache"
    _run(ds.root, cache, _rules())
    moved = tmp_path / "elsewhere" / "ds"
    shutil.copytree(ds.root, moved)  # a fresh checkout: other path, other mtimes and inodes
    ds.root = moved
    ds.folders["p3"].append((ds.name(), ds.face(0)))
    ds.dirty.add("p3")
    ds.write()
    pipeline, inc = _run(moved, cache, _rules())
    rec = pipeline.incremental.record
    assert (rec["mode"], rec["searched"]) == ("incremental", 1)
    assert rec["changed_folders"] == len(ds.folders)  # every listing is new; the rows are matched by content
    assert any("no search state for this dataset path" in n for n in pipeline.notes)
    assert_same_result(inc, _run(moved, None, _rules())[1])
