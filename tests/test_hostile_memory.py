"""One folder cannot exhaust the machine (issue 19, item 5).

* A folder's arrays are bounded by the run's memory budget (a quarter of it, the budget capped at
  the machine's memory or its cgroup's limit), checked on the .npy headers before anything is
  read or decompressed: a compressed npz that inflates to gigabytes is refused unread, naming the
  file, the declared size and the budget, and the rest of the dataset is checked.
* near_duplicates compares each distinct row once: a folder of 200,000 copies of one vector is one
  row to multiply, not 2e10 pairs, and the result is the brute force's. Asserted on counted work
  (the rows handed to the blocked GEMM) and on tracemalloc, never on time.
"""

from __future__ import annotations

import math
import tracemalloc
import zipfile

import numpy as np
import pytest
from helpers import ARC, write_face01

from dataset_checks import memory
from dataset_checks.checks import near_duplicates
from dataset_checks.checks.near_duplicates import batch_pairs, folder_pairs
from dataset_checks.discover import discover_identities
from dataset_checks.rules import parse_rules
from dataset_checks.run import Pipeline

SEEDS = [0, 1, 2, 3, 0xC0FFEE]


# -- (a) the per-folder bound follows the budget and the cgroup ------------------------------------


def _cgroup(monkeypatch, files: dict[str, str], physical: int = 64 * 2**30) -> None:
    """machine_memory sees `files` (cgroup path -> content) and `physical` bytes of RAM."""
    real_open = open

    def fake_open(path, *a, **k):
        if str(path).startswith("/sys/fs/cgroup"):
            if str(path) not in files:
                raise FileNotFoundError(path)
            import io

            return io.StringIO(files[str(path)])
        return real_open(path, *a, **k)

    monkeypatch.setattr(memory, "open", fake_open, raising=False)
    page = 4096
    monkeypatch.setattr(memory.os, "sysconf", lambda name: page if name == "SC_PAGE_SIZE" else physical // page)


def test_folder_bound_is_a_quarter_of_the_budget_capped_by_the_cgroup(monkeypatch):
    _cgroup(monkeypatch, {"/sys/fs/cgroup/memory.max": "3221225472\n"})  # a 3 GiB container (v2)
    assert memory.machine_memory() == 3 * 2**30
    assert memory.folder_bound(10**9) == 250_000_000  # --memory 1GB
    assert memory.folder_bound(8 * 2**30) == 3 * 2**30 // 4  # a budget over the cgroup: the cgroup's
    assert memory.folder_bound(None) == memory.default_budget() // 4 == 3 * 2**30 // 8
    _cgroup(monkeypatch, {"/sys/fs/cgroup/memory.max": "max\n",
                          "/sys/fs/cgroup/memory/memory.limit_in_bytes": str(2**31)})  # v1: 2 GiB
    assert memory.folder_bound(None) == 2**31 // 8
    _cgroup(monkeypatch, {"/sys/fs/cgroup/memory.max": "max\n"}, physical=16 * 2**30)  # no limit: the RAM
    assert memory.folder_bound(None) == 16 * 2**30 // 8


def _hostile_dataset(root, n: int = 20_000, dim: int = 512):
    """A folder whose compressed npz (a few hundred KB) inflates to n identical dim-d rows, and
    three ordinary folders."""
    rng = np.random.default_rng(7)
    (root / "crowd").mkdir(parents=True)
    v = rng.standard_normal(dim).astype(np.float32)
    np.savez_compressed(root / "crowd" / "npKnown.npz", name=np.array([f"{k:06d}.jpg" for k in range(n)]),
                        **{ARC: np.broadcast_to(v, (n, dim))})
    for k in range(3):
        write_face01(root, f"p{k}", rng.standard_normal((4, dim)))
    return root


def test_a_run_refuses_a_folder_over_its_share_of_the_budget_unread(tmp_path, monkeypatch):
    root = _hostile_dataset(tmp_path / "data")  # 40 MB of vectors declared, 64 MB budget: bound 16 MB
    declared = 20_000 * 512 * 4
    assert (root / "crowd" / "npKnown.npz").stat().st_size < declared // 20
    inflated = []  # bytes decompressed out of any archive member
    real_read = zipfile.ZipExtFile.read
    monkeypatch.setattr(zipfile.ZipExtFile, "read",
                        lambda self, n=-1: (lambda b: inflated.append(len(b)) or b)(real_read(self, n)))
    rules = parse_rules({"threshold": 0.5, "memory": "64MiB"}, None)
    tracemalloc.start()
    try:
        result = Pipeline(rules, root, discover_identities(root), tmp_path / "cache").execute()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    table = result.table
    names = [i.name for i in table.identities]
    crowd = names.index("crowd")
    (p,) = [p for p in table.problems[crowd] if p.code == "too-large"]
    assert p.fatal and p.file == "crowd/npKnown.npz"
    assert "(20000, 512)" in p.message and "39.1 MiB" in p.message  # what it declares
    assert "16.0 MiB" in p.message and "64.0 MiB" in p.message  # the bound and the run's budget
    assert table.counts[crowd] == 0
    assert [int(table.counts[names.index(f"p{k}")]) for k in range(3)] == [4, 4, 4]  # the rest is checked
    assert sum(inflated) < 1 << 20  # headers only: the 40 MB member was never inflated
    assert peak < declared * 3 // 4  # reading it would hold all 40 MB (and a normalised copy)


def test_folder_bytes_of_a_run_follow_its_budget(tmp_path):
    root = _hostile_dataset(tmp_path / "data", n=10)
    for given, bound in (("64MiB", 16 * 2**20), ("1GB", 250_000_000)):
        rules = parse_rules({"threshold": 0.5, "memory": given}, None)
        pipeline = Pipeline(rules, root, discover_identities(root), tmp_path / "cache")
        assert pipeline.folder_bytes() == min(bound, memory.machine_memory() // 4)


# -- (b) near_duplicates is near-linear in a crowd of identical rows --------------------------------


def _brute(x: np.ndarray, threshold: float, keep: int):
    """Every pair in float64, ranked by (-sim, a, b): (a, b, sim) of the first `keep`, the total,
    the degrees."""
    n = len(x)
    x64 = x.astype(np.float64)
    degree = np.zeros(n, np.int64)
    total = 0
    best = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0))
    for lo in range(0, n, 32):  # rows a in [lo, lo + 32), every b > a: a few MB at a time
        a, b = np.nonzero(np.arange(lo, min(n, lo + 32))[:, None] < np.arange(n)[None, :])
        a += lo
        s = np.einsum("ij,ij->i", x64[a], x64[b])
        ok = s >= threshold
        a, b, s = a[ok], b[ok], s[ok]
        total += a.size
        degree += np.bincount(a, minlength=n) + np.bincount(b, minlength=n)
        a, b, s = (np.concatenate([u, v]) for u, v in zip(best, (a, b, s)))
        order = np.lexsort((b, a, -s))[:keep]
        best = (a[order], b[order], s[order])
    return (*best, total, degree)


def _crowd(seed: int, copies: int, dim: int, extra: int = 12):
    """`copies` copies of one vector, a second smaller group of copies, near-copies of the crowd
    and distinct rows, shuffled."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(dim)
    u = rng.standard_normal(dim)
    near = v + 0.002 * rng.standard_normal((extra, dim))
    x = np.vstack([np.tile(v, (copies, 1)), np.tile(u, (max(2, copies // 100), 1)), near,
                   rng.standard_normal((extra, dim))])
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return x[rng.permutation(len(x))]


@pytest.fixture
def gemm_rows(monkeypatch):
    """Rows handed to near_duplicates' blocked GEMM, per call (the quadratic part of its work)."""
    calls: list[int] = []
    real = near_duplicates._scored_pairs

    def counting(x, *args, **kwargs):
        calls.append(len(x))
        return real(x, *args, **kwargs)

    monkeypatch.setattr(near_duplicates, "_scored_pairs", counting)
    return calls


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("threshold", [0.9, 0.99999, 1.0])
def test_a_crowd_of_identical_rows_equals_brute_force(seed, threshold, gemm_rows):
    x = _crowd(seed, 3000, 16)
    keep = int(np.random.default_rng(seed).integers(1, 40))
    got = folder_pairs(x, threshold, keep, block_cells=1 << 12)
    want = _brute(x, threshold, keep)
    for g, w in zip(got, want):
        assert np.array_equal(np.asarray(g), np.asarray(w))
    distinct = len(np.unique(x, axis=0))
    assert gemm_rows == [distinct] and distinct <= 30  # the 3,000 copies are compared once


@pytest.mark.parametrize("seed", SEEDS)
def test_dedup_path_equals_the_plain_gemm_over_every_row(seed):
    x = _crowd(seed, 500, 8)
    for threshold in (0.5, 0.999, 1.0):
        for keep in (1, 7, 60):
            dedup = folder_pairs(x, threshold, keep, block_cells=1 << 10)
            plain = near_duplicates._scored_pairs(x, threshold, keep, block_cells=1 << 10)
            for g, w in zip(dedup, plain):
                assert np.array_equal(np.asarray(g), np.asarray(w))


@pytest.mark.parametrize("seed", SEEDS)
def test_identical_rows_groups_bit_patterns(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((5, 8)).astype(np.float32)
    x = base[rng.integers(0, 5, 400)]
    x[rng.integers(0, 400, 3), 0] = -0.0  # -0.0 is another bit pattern than 0.0
    # every fingerprint collides: the bit-for-bit comparison alone must still be exact
    monkeypatch.setattr(np, "einsum", lambda *a, **k: np.zeros(len(a[1]), np.uint64))
    first, group = near_duplicates.identical_rows(np.ascontiguousarray(x), block_bytes=256)
    monkeypatch.undo()
    keys = [r.tobytes() for r in x]
    want_first = sorted({k: i for i, k in reversed(list(enumerate(keys)))}.values())
    assert first.tolist() == want_first
    assert all(keys[first[g]] == keys[i] for i, g in enumerate(group.tolist()))


def test_200k_identical_rows_take_one_row_of_gemm_and_bounded_memory(gemm_rows):
    n, dim = 200_000, 16
    rng = np.random.default_rng(11)
    v = rng.standard_normal(dim)
    x = np.vstack([np.tile(v, (n, 1)), rng.standard_normal((3, dim))])
    x = np.ascontiguousarray((x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32))
    tracemalloc.start()
    try:
        a, b, s, total, degree = folder_pairs(x, 0.99, 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert gemm_rows == [4]
    assert total == n * (n - 1) // 2
    assert degree[:n].tolist() == [n - 1] * n and degree[n:].tolist() == [0, 0, 0]
    assert list(zip(a.tolist(), b.tolist())) == [(0, k) for k in range(1, 21)]
    assert peak < 24 * n * 8  # a few index arrays of the folder's size: no (n, n) block, no pair list
    assert peak < 1 << 26


def test_a_dense_small_folder_in_a_stack_goes_through_the_dedup_path(gemm_rows):
    x = _crowd(5, 100, 8, extra=4)  # 100 copies: far more than DENSE candidate pairs in one small folder
    folders = [np.arange(len(x))[: near_duplicates.SMALL]]
    (got,) = batch_pairs(x, folders, 0.99, 10)
    want = _brute(x[folders[0]], 0.99, 10)
    for g, w in zip(got, want):
        assert np.array_equal(np.asarray(g), np.asarray(w))
    assert all(rows < 20 for rows in gemm_rows)


def test_the_check_on_a_crowded_folder_lists_and_counts(tmp_path, gemm_rows):
    from dataset_checks.check_run import run_checks
    from dataset_checks.checks import CheckData
    from dataset_checks.vectors import load_table

    root = tmp_path / "data"
    n = 50_000
    rng = np.random.default_rng(3)
    v = rng.standard_normal(32)
    write_face01(root, "crowd", np.tile(v, (n, 1)))
    write_face01(root, "other", rng.standard_normal((3, 32)))
    identities = discover_identities(root)
    table = load_table(root, identities)
    rules = parse_rules({"threshold": 0.5}, None)
    data = CheckData(root=root, rules=rules, identities=identities, table=table, pairs=None,
                     threshold=rules.threshold, against=[])
    res = run_checks(data, only=["near_duplicates"])["near_duplicates"]
    assert res.error is None
    issues = res.issues
    assert len(issues) == 20 and all(i.identity == "crowd" for i in issues)
    assert f"{math.comb(n, 2)} in all, {n} of the folder's {n} faces" in issues[-1].detail
    assert f"has {n - 1} and" in issues[0].detail
    assert max(gemm_rows) == 1


def test_exact_duplicates_reads_a_crowd_of_identical_vectors_in_blocks(monkeypatch):
    """The vectors-only exact duplicates of a crowd: every copy found, the crowd's rows read a
    block at a time (not gathered at once: a million copies were 2 GB)."""
    from types import SimpleNamespace

    from dataset_checks.checks import exact_duplicates

    n, dim = 20_000, 512  # 41 MB of rows
    rng = np.random.default_rng(2)
    x = np.vstack([np.tile(rng.standard_normal(dim), (n, 1)), rng.standard_normal((5, dim))]).astype(np.float32)
    table = SimpleNamespace(identity_of=np.zeros(len(x), np.int32), vectors=x, files=[f"{k}.jpg" for k in range(len(x))],
                            identities=[SimpleNamespace(name="crowd")])
    monkeypatch.setattr(exact_duplicates, "ROW_BLOCK_BYTES", 1 << 20)
    check = exact_duplicates.ExactDuplicates()
    tracemalloc.start()
    try:
        groups = check._vector_groups(SimpleNamespace(table=table), np.zeros(len(x), bool))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [len(g) for g in groups] == [n]
    assert [g[4] for g in groups[0]] == [("v", k) for k in range(n)]
    assert peak < x.nbytes // 4  # the groups' own lists (O(n) small objects), no gather of the crowd
