"""exact_duplicates and near_duplicates: against hashing / brute force, through pytest, on LFW."""

from __future__ import annotations

import csv
import hashlib
import tempfile
from collections import defaultdict
from pathlib import Path

import faiss  # noqa: F401  - before pytester's sys.modules snapshot (see test_plugin.py)
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from dataset_checks.checks import CheckData, get
from dataset_checks.checks import exact_duplicates as exact_mod
from dataset_checks.checks.near_duplicates import auto_threshold, batch_pairs, folder_pairs
from dataset_checks.discover import discover_identities
from dataset_checks.rules import default_settings, load_rules
from dataset_checks.vectors import load_table
from helpers import family_outcomes, tree_state, write_face01, write_plain

PKG = str(Path(__file__).resolve().parents[1] / "dataset_checks")
LFW = Path(__file__).resolve().parents[2] / "shared" / "lfw"


def _data(root: Path) -> CheckData:
    ids = discover_identities(root)
    return CheckData(root=root, rules=load_rules(None), identities=ids, table=load_table(root, ids), pairs=None,
                     threshold=0.9)


def _run(name: str, data: CheckData, **params):
    cls = get(name)
    s = default_settings(cls)
    s = type(s)(s.enabled, s.severity, {**s.params, **params})
    check = cls()
    return check.run(data, s), check


def _brute(x: np.ndarray, t: float) -> dict[tuple[int, int], float]:
    x = x.astype(np.float64)
    sims = x @ x.T
    return {(a, b): sims[a, b] for a in range(len(x)) for b in range(a + 1, len(x)) if sims[a, b] >= t}


# -- near_duplicates ------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 40), dim=st.sampled_from([4, 16, 64]),
       threshold=st.floats(0.5, 0.999), copies=st.integers(0, 10), cells=st.sampled_from([1, 7, 64, 1 << 22]),
       keep=st.integers(1, 50))
def test_folder_pairs_equal_brute_force(seed, n, dim, threshold, copies, cells, keep):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim))
    for _ in range(copies if n > 1 else 0):  # near-copies (a burst): the pairs this check exists for
        a, b = rng.integers(n, size=2)
        x[b] = x[a] + rng.uniform(0, 0.1) * rng.standard_normal(dim) / np.sqrt(dim)
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32) if n else np.zeros((0, dim), np.float32)
    want = _brute(x, threshold)
    a, b, s, total, degree = folder_pairs(x, threshold, keep, block_cells=cells)
    assert total == len(want)
    got = list(zip(a.tolist(), b.tolist()))
    assert len(got) == min(keep, len(want)) and set(got) <= set(want)
    # the listed ones are the most similar
    if want:
        kth = sorted(want.values(), reverse=True)[len(got) - 1]
        assert min(s) >= kth - 1e-12 and np.allclose(s, [want[p] for p in got])
    deg = np.zeros(n, int)
    for p, q in want:
        deg[p] += 1
        deg[q] += 1
    assert degree.tolist() == deg.tolist()


def _check_pairs(x, threshold, keep, result):
    """folder_pairs' result for the folder `x` against brute force."""
    a, b, s, total, degree = result
    want = _brute(x, threshold)
    assert total == len(want)
    got = list(zip(a.tolist(), b.tolist()))
    assert len(got) == min(keep, len(want)) and set(got) <= set(want)
    if want:  # the most similar, ranked, in float64
        kth = sorted(want.values(), reverse=True)[len(got) - 1]
        assert min(s) >= kth - 1e-12 and np.allclose(s, [want[p] for p in got])
        assert list(s) == sorted(s, reverse=True)
    deg = np.zeros(len(x), int)
    for p, q in want:
        deg[p] += 1
        deg[q] += 1
    assert degree.tolist() == deg.tolist()


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), sizes=st.lists(st.integers(0, 20), min_size=1, max_size=8),
       dim=st.sampled_from([4, 16, 64]), threshold=st.floats(0.0, 0.999), copies=st.integers(0, 30),
       keep=st.integers(1, 30), dense=st.sampled_from([0, 5, 256]))
def test_batch_pairs_equal_brute_force(seed, sizes, dim, threshold, copies, keep, dense):
    """Many folders in one padded stack: each folder's pairs as if it were alone (padding, empty
    and one-face folders included; folders with many candidate pairs handed to folder_pairs)."""
    from unittest import mock

    from dataset_checks.checks import near_duplicates

    rng = np.random.default_rng(seed)
    n = sum(sizes)
    x = rng.standard_normal((n, dim))
    starts = np.cumsum([0] + sizes)
    for _ in range(copies if n > 1 else 0):  # bursts inside folders
        f = int(rng.integers(len(sizes)))
        if sizes[f] > 1:
            a, b = starts[f] + rng.integers(sizes[f], size=2)
            x[b] = x[a] + rng.uniform(0, 0.1) * rng.standard_normal(dim) / np.sqrt(dim)
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32) if n else np.zeros((0, dim), np.float32)
    order = rng.permutation(n)  # a folder's rows anywhere in the table
    table = np.empty_like(x)
    table[order] = x
    folders = [order[starts[f] : starts[f + 1]] for f in range(len(sizes))]
    with mock.patch.object(near_duplicates, "DENSE", dense):
        results = batch_pairs(table, folders, threshold, keep)
    assert len(results) == len(sizes)
    for f, result in enumerate(results):
        _check_pairs(x[starts[f] : starts[f + 1]], threshold, keep, result)


def test_crowded_folder_is_bounded_and_counted():
    rng = np.random.default_rng(0)
    base = rng.standard_normal(64)
    x = base + 0.01 * rng.standard_normal((3000, 64))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    a, b, s, total, degree = folder_pairs(x, 0.99, 5, block_cells=1 << 16)
    assert total == 3000 * 2999 // 2 and len(s) == 5 and (degree == 2999).all()


def test_near_duplicates_check_lists_capped_pairs_per_folder(tmp_path):
    rng = np.random.default_rng(1)
    burst = rng.standard_normal(32) + 0.001 * rng.standard_normal((8, 32))
    write_face01(tmp_path, "Burst", burst)
    write_face01(tmp_path, "Plain", rng.standard_normal((6, 32)))
    before = tree_state(tmp_path)
    issues, check = _run("near_duplicates", _data(tmp_path), threshold=0.99, max_per_folder=3)
    assert tree_state(tmp_path) == before
    assert [i.identity for i in issues] == ["Burst"] * 3
    assert all(i.severity == "info" and i.file < i.other_file for i in issues)
    assert "25 more pair(s)" in issues[-1].detail and check.summary()["pairs"] == 28


def test_auto_threshold_depends_on_model_and_centring():
    assert auto_threshold("dlib", False) > auto_threshold("dlib", True)
    assert auto_threshold("efficientnetv2_arcface", False) == 0.99


# -- exact_duplicates -----------------------------------------------------------------------------


def _expected_exact(root: Path) -> dict[tuple, str]:
    """Independent reference: full SHA-256 of every image; each copy against the smallest copy."""
    by: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for p in sorted(root.glob("*/*.jpg")):
        by[hashlib.sha256(p.read_bytes()).hexdigest()].append((p.parent.name, p.name))
    out = {}
    for members in by.values():
        members.sort()
        for m in members[1:]:
            out[(*members[0], *m)] = "in" if m[0] == members[0][0] else "cross"
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), folders=st.integers(1, 4), files=st.lists(st.integers(0, 6), min_size=1,
                                                                                 max_size=14),
       head=st.sampled_from([4, 64 << 10]))
def test_exact_duplicates_equal_full_hashing(seed, folders, files, head):
    rng = np.random.default_rng(seed)
    # a pool of contents: same size with different heads, same head with different tails
    base = rng.bytes(40)
    pool = [base, base[:-1] + b"x", b"HEAD" + rng.bytes(36), b"HEAD" + rng.bytes(36), rng.bytes(7), b"", base + b"!"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for k, content in enumerate(files):
            folder = f"P{int(rng.integers(folders))}"
            (root / folder).mkdir(exist_ok=True)
            (root / folder / f"f{k:02d}.jpg").write_bytes(pool[content])
        for folder in sorted(p.name for p in root.iterdir()):
            names = sorted(p.name for p in (root / folder).iterdir())
            write_face01(root, folder, rng.standard_normal((len(names), 8)), files=names)
        before = tree_state(root)
        old = exact_mod.HEAD
        exact_mod.HEAD = head
        try:
            issues, _ = _run("exact_duplicates", _data(root), max_per_folder=1000)
        finally:
            exact_mod.HEAD = old
        assert tree_state(root) == before
        got = {i.key: i.severity for i in issues}
        want = {k: ("warn" if v == "in" else "fail") for k, v in _expected_exact(root).items()}
        assert got == want
        assert all((i.identity, i.file) < (i.other_identity, i.other_file) for i in issues)


def test_one_file_in_fifty_folders_is_49_issues_against_the_first(tmp_path):
    photo = b"\xff\xd8 the same photo"
    for k in range(50):
        write_face01(tmp_path, f"F{k:02d}", np.eye(2, 8, k % 7), files=["x.jpg", "own.jpg"])
        (tmp_path / f"F{k:02d}" / "x.jpg").write_bytes(photo)
        (tmp_path / f"F{k:02d}" / "own.jpg").write_bytes(f"own {k}".encode())
    issues, check = _run("exact_duplicates", _data(tmp_path))
    assert len(issues) == 49 and {(i.identity, i.file) for i in issues} == {("F00", "x.jpg")}
    assert all(i.severity == "fail" and i.score == 50 for i in issues)
    assert check.summary()["cross_folder"] == 49


def test_crowded_copies_are_capped_per_folder_and_counted(tmp_path):
    write_face01(tmp_path, "Video", np.eye(30, 32), files=[f"frame{k:03d}.jpg" for k in range(30)])
    for k in range(30):
        (tmp_path / "Video" / f"frame{k:03d}.jpg").write_bytes(b"frozen frame")
    issues, check = _run("exact_duplicates", _data(tmp_path), max_per_folder=5)
    assert len(issues) == 5 and all(i.severity == "warn" for i in issues)
    assert "24 more duplicate(s)" in issues[-1].detail and check.summary()["duplicates"] == 29


def test_links_to_one_file_are_duplicates(tmp_path):
    write_face01(tmp_path, "A", np.eye(1, 8), files=["a.jpg"])
    write_face01(tmp_path, "B", np.eye(1, 8, 1), files=["b.jpg"])
    (tmp_path / "A" / "a.jpg").write_bytes(b"one photo")
    (tmp_path / "B" / "b.jpg").symlink_to(tmp_path / "A" / "a.jpg")
    issues, _ = _run("exact_duplicates", _data(tmp_path))
    assert [i.key for i in issues] == [("A", "a.jpg", "B", "b.jpg")] and "link" in issues[0].detail


_NAME = st.text(st.sampled_from("aAbB\u00e9\u00c9e\u0301\u00df/\x00._"), max_size=4)


@settings(max_examples=200, deadline=None)
@given(names=st.lists(_NAME, max_size=12), listing=st.frozensets(_NAME, max_size=6))
def test_names_looked_up_are_those_a_folding_file_system_could_find(names, listing):
    """A name in the embeddings is looked up on disk (stat) only if the folder's listing holds it,
    or holds it but for case and Unicode normalisation, or if it is a path with a separator."""
    import os
    import unicodedata

    fold = lambda n: unicodedata.normalize("NFC", n).casefold()  # noqa: E731
    want = [k for k, n in enumerate(names)
            if n in listing or os.sep in n or fold(n) in {fold(e) for e in listing}]
    assert exact_mod._on_disk(names, listing) == want


def test_vectors_only_rows_in_a_folder_with_other_files(tmp_path):
    """Rows whose files are on disk are compared as files; only the others by their vectors."""
    rng = np.random.default_rng(5)
    v = rng.standard_normal((3, 8)).astype(np.float32)
    write_plain(tmp_path, "A", v[[0, 1, 2]], files=["a.jpg", "gone1.jpg", "gone2.jpg"])
    write_plain(tmp_path, "B", v[[1, 1, 0]], files=["b.jpg", "gone3.jpg", "gone4.jpg"])
    (tmp_path / "A" / "a.jpg").write_bytes(b"one")
    (tmp_path / "B" / "b.jpg").write_bytes(b"two")
    issues, check = _run("exact_duplicates", _data(tmp_path))
    assert [i.key for i in issues] == [("A", "gone1.jpg", "B", "gone3.jpg")]
    assert check.summary()["files_compared"] == 2  # the two images


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), rows=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 5)), min_size=1,
                                                     max_size=20))
def test_vectors_only_identical_rows(seed, rows):
    rng = np.random.default_rng(seed)
    pool = rng.standard_normal((6, 8)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        per: dict[str, list[int]] = defaultdict(list)
        for folder, v in rows:
            per[f"V{folder}"].append(v)
        for folder, vs in per.items():
            write_plain(root, folder, pool[vs], files=[f"{folder}_{k}.jpg" for k in range(len(vs))])
        issues, check = _run("exact_duplicates", _data(root))
        by: dict[int, list[tuple[str, str]]] = defaultdict(list)
        for folder, vs in per.items():
            for k, v in enumerate(vs):
                by[v].append((folder, f"{folder}_{k}.jpg"))
        want = {}
        for members in by.values():
            members.sort()
            for m in members[1:]:
                want[(*members[0], *m)] = "warn" if m[0] == members[0][0] else "fail"
        assert {i.key: i.severity for i in issues} == want
        assert all("identical vectors" in i.detail for i in issues)


# -- through pytest ----------------------------------------------------------------------------




def test_families_and_csv(pytester):
    root = pytester.path / "data"
    rng = np.random.default_rng(5)
    burst = rng.standard_normal(16)
    write_face01(root, "Alice", np.stack([burst, burst + 1e-4, rng.standard_normal(16)]),
                 files=["a1.jpg", "a2.jpg", "a3.jpg"])
    write_face01(root, "Bob", rng.standard_normal((2, 16)), files=["b1.jpg", "b2.jpg"])
    write_face01(root, "Carol", rng.standard_normal((2, 16)), files=["c1.jpg", "c2.jpg"])
    for who, names in (("Alice", ["a1", "a2", "a3"]), ("Bob", ["b1", "b2"]), ("Carol", ["c1", "c2"])):
        for n in names:
            (root / who / f"{n}.jpg").write_bytes(f"photo {n}".encode())
    (root / "Bob" / "b2.jpg").write_bytes(b"photo a3")  # Alice's photo filed under Bob
    (root / "Carol" / "c2.jpg").write_bytes(b"photo c1")  # one photo twice in Carol
    before = tree_state(root)
    rec = pytester.inline_run(PKG, "-p", "no:cacheprovider", "--report-dir", "out", "--dataset", str(root),
                              "--threshold", "0.99", "-W", "default")
    assert tree_state(root) == before
    assert family_outcomes(rec, "test_exact_duplicates") == {"Alice": "failed", "Bob": "failed", "Carol": "passed"}
    assert set(family_outcomes(rec, "test_near_duplicates").values()) == {"passed"}
    with open(pytester.path / "out" / "exact_duplicates.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0][4] == "copies"
    assert sorted(tuple(r[:4]) + (r[5],) for r in rows[1:]) == [
        ("Alice", "a3.jpg", "Bob", "b2.jpg", "fail"), ("Carol", "c1.jpg", "Carol", "c2.jpg", "warn")]
    with open(pytester.path / "out" / "near_duplicates.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    assert [tuple(r[:4]) for r in rows[1:]] == [("Alice", "a1.jpg", "Alice", "a2.jpg")] and rows[1][5] == "info"


# -- LFW -----------------------------------------------------------------------------------------


@pytest.mark.skipif(not LFW.is_dir(), reason="../shared/lfw (LFW with dlib vectors) is not on this machine")
def test_lfw():
    data = _data(LFW)
    before = {p: p.stat().st_mtime_ns for p in list(LFW.glob("George_W_Bush/*"))}
    exact, check = _run("exact_duplicates", data)
    # LFW deep-funneled holds no byte-identical image twice; every image was considered
    assert exact == [] and check.summary()["files_compared"] == 13233
    near, check = _run("near_duplicates", data)
    assert check.summary()["threshold"] == 0.993
    assert 10 <= len(near) <= 60  # bursts of one press event (looked at: all near-identical shots)
    assert ("George_W_Bush", "George_W_Bush_0407.jpg", "George_W_Bush", "George_W_Bush_0409.jpg") in {
        i.key for i in near}
    t = data.table
    for issue in near:  # exact against float64 brute force of the folder
        k = [x.name for x in t.identities].index(issue.identity)
        rows = np.flatnonzero(t.identity_of == k)
        want = _brute(t.vectors[rows], 0.993)
        names = [t.files[r] for r in rows]
        a, b = sorted((names.index(issue.file), names.index(issue.other_file)))
        assert abs(want[(a, b)] - issue.score) < 1e-9
    assert sum(len(_brute(t.vectors[np.flatnonzero(t.identity_of == k)], 0.993))
               for k in {[x.name for x in t.identities].index(i.identity) for i in near}) == len(near)
    assert {p: p.stat().st_mtime_ns for p in before} == before
