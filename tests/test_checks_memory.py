"""The checks' memory contract: the vector table may be a read-only memmap of a file larger than
the memory budget. Every check must read it without writing into it, without a copy of the
whole table, in blocks of rows: the results are the same as with the table in memory, and each
check's allocations stay far below the table's size when its blocks are small.
"""

from __future__ import annotations

import dataclasses
import tracemalloc
from contextlib import ExitStack
from unittest import mock

import numpy as np
import pytest

from dataset_checks.check_run import run_checks
from dataset_checks.checks import AgainstData, CheckData, all_checks
from dataset_checks.discover import discover_identities
from dataset_checks.rules import CalibrationRules, parse_rules
from dataset_checks.synthetic import seed_scale
from dataset_checks.vectors import load_table

CHECKS = [c.name for c in all_checks() if not c.builtin]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """30,000 x 256 vectors (31 MB) in 300 folders: crowded folders of video frames, copies."""
    root = tmp_path_factory.mktemp("memory") / "data"
    seed_scale(n_identities=300, n_vectors=30_000, dim=256, n_planted=80, crowded_every=30, crowd_size=300,
               seed=3).write(root)
    identities = discover_identities(root)
    table = load_table(root, identities)
    path = root.parent / "vectors.npy"
    np.save(path, table.vectors)
    rules = parse_rules({"threshold": 0.85, "checks": {"near_duplicates": {"threshold": 0.95},
                                                      "calibration": {"same_pairs": 1000, "cross_pairs": 10_000}}})
    rules = dataclasses.replace(rules, calibration=CalibrationRules(sample_pairs=20_000))
    return root, identities, table, path, rules


def _data(dataset, vectors) -> CheckData:
    """The dataset's checks, the table's vectors given; leakage against a copy of its folders 1 to
    29 (no crowded folder among them: one face pair per face), the same kind of vectors."""
    root, identities, table, _, rules = dataset
    part = np.flatnonzero((table.identity_of >= 1) & (table.identity_of < 30))
    other = dataclasses.replace(table, identities=identities[:30], identity_of=table.identity_of[part],
                                files=[table.files[r] for r in part], vectors=vectors[part[0] : part[-1] + 1])
    return CheckData(root=root, rules=rules, identities=identities, table=dataclasses.replace(table, vectors=vectors),
                     pairs=None, threshold=rules.threshold, against=[AgainstData(root / "other", other.identities, other)])


def _small_blocks() -> ExitStack:
    """Every block-size knob of the checks at about 1 MB (256 KB of float32 scores)."""
    from dataset_checks.checks import calibration, exact_duplicates, leakage, near_duplicates
    from dataset_checks.checks import folder_fit as fitting

    stack = ExitStack()
    for module, name, value in ((fitting, "BLOCK_BYTES", 1 << 20), (fitting, "QUERY_CELLS", 1 << 16),
                                (leakage, "BASE_BYTES", 1 << 20), (leakage, "SCAN_CELLS", 1 << 16),
                                (near_duplicates, "BLOCK_CELLS", 1 << 16), (near_duplicates, "BATCH_BYTES", 1 << 20),
                                (exact_duplicates, "ROW_BLOCK_BYTES", 1 << 20), (calibration, "CHUNK", 512)):
        stack.enter_context(mock.patch.object(module, name, value))
    return stack


def _issues(results) -> dict:
    return {name: [dataclasses.astuple(i) for i in r.issues] for name, r in results.items()}


def test_read_only_memmap_gives_the_same_results(dataset):
    _, _, table, path, _ = dataset
    mapped = np.lib.format.open_memmap(path, mode="r")
    assert not mapped.flags.writeable
    with _small_blocks():
        in_memory = run_checks(_data(dataset, table.vectors), only=CHECKS)
        on_disk = run_checks(_data(dataset, mapped), only=CHECKS)
    assert sorted(on_disk) == sorted(CHECKS)
    assert {n: r.error for n, r in on_disk.items()} == {n: None for n in CHECKS}  # nothing wrote into it
    assert _issues(on_disk) == _issues(in_memory)
    # the planted errors are there: the data exercise the checks
    for name in ("misfiled", "consistency", "near_duplicates", "leakage"):
        assert on_disk[name].issues, name
    # and the block sizes change nothing but rounding
    default = run_checks(_data(dataset, table.vectors), only=CHECKS)
    for name in CHECKS:
        got = [(i.check, i.identity, i.file, i.other_identity, i.other_file, i.severity) for i in on_disk[name].issues]
        want = [(i.check, i.identity, i.file, i.other_identity, i.other_file, i.severity) for i in default[name].issues]
        assert got == want, name
        np.testing.assert_allclose([i.score for i in on_disk[name].issues],
                                   [i.score for i in default[name].issues], atol=1e-9)


@pytest.mark.parametrize("name", CHECKS)
def test_each_check_allocates_far_less_than_the_table(dataset, name):
    _, _, table, path, _ = dataset
    data = _data(dataset, np.lib.format.open_memmap(path, mode="r"))
    with _small_blocks():
        tracemalloc.start()
        try:
            result = run_checks(data, only=[name])[name]
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert result.error is None
    size = table.vectors.nbytes
    assert peak < size / 4, f"{name}: {peak / 2**20:.1f} MiB for a {size / 2**20:.0f} MiB table"


def test_checks_run_with_one_blas_thread_and_restore_the_count():
    """Many small products (one per folder): numpy's OpenBLAS on one thread while a check runs,
    its thread count as before afterwards."""
    from dataset_checks import blas

    libs = blas._openblas()
    if not libs:
        pytest.skip("no OpenBLAS found in this process (another BLAS, or not Linux)")
    before = [get() for _, get in libs]
    seen = []

    class Probe:
        name, builtin, needs = "probe", False, frozenset()

        def run(self, data, settings):
            seen.extend(get() for _, get in libs)
            return []

    rules = parse_rules({})
    with mock.patch("dataset_checks.check_run.all_checks", return_value=[Probe]), \
            mock.patch.object(type(rules), "check_settings", lambda self, name: mock.Mock(enabled=True)):
        run_checks(CheckData(root=None, rules=rules, identities=[], table=None, pairs=None, threshold=0.9))
    assert seen and all(n == 1 for n in seen)
    assert [get() for _, get in libs] == before
