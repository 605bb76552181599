"""The vector table as a file in the cache (table_store) and the memory budget (memory).

A run maps the table read-only from the cache, never from the dataset; the next run on the same
dataset version maps it again without reading an archive; any change to the dataset, and any
damage to the stored files, loads it again. Loading holds one folder's arrays, not the dataset's.
"""

from __future__ import annotations

import mmap
import tracemalloc
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from dataset_checks import memory
from dataset_checks.discover import discover_identities
from dataset_checks.embed import folders as embed_folders
from dataset_checks.rules import RulesError, parse_rules
from dataset_checks.run import Pipeline
from dataset_checks.table_store import Rows, TableStore
from dataset_checks.vectors import centre_vectors, load_table, normalise

from helpers import tree_state, write_face01


def _dataset(root: Path, rng, folders: int = 6, rows: int = 5, dim: int = 32) -> Path:
    for k in range(folders):
        write_face01(root, f"id_{k:02d}", rng.standard_normal((rows + k, dim)).astype(np.float32))
    return root


def _run(root: Path, cache: Path, **rules):
    rules = parse_rules({"threshold": 0.5, **rules}, None)
    pipeline = Pipeline(rules, root, discover_identities(root), cache)
    return pipeline, pipeline.execute()


def _same_table(a, b) -> None:
    assert np.array_equal(np.asarray(a.vectors), np.asarray(b.vectors))
    assert np.array_equal(a.identity_of, b.identity_of)
    assert a.files == b.files and a.key == b.key
    assert a.counts.tolist() == b.counts.tolist()
    assert {k: [str(p) for p in v] for k, v in a.problems.items()} == \
        {k: [str(p) for p in v] for k, v in b.problems.items()}


def test_the_table_is_a_read_only_mapping_in_the_cache_and_the_dataset_is_untouched(tmp_path, rng):
    root = _dataset(tmp_path / "ds", rng)
    before = tree_state(root)
    pipeline, result = _run(root, tmp_path / "cache")
    vectors = result.table.vectors
    assert isinstance(vectors, np.memmap)
    assert Path(vectors.filename).is_relative_to(tmp_path / "cache")
    with pytest.raises(ValueError):
        vectors[0, 0] = 1.0  # read-only: no stage may write into the shared table
    assert pipeline.table_source == "loaded"
    assert tree_state(root) == before
    # the same rows as a plain in-memory load
    _same_table(result.table, load_table(root, discover_identities(root)))


def test_an_unchanged_dataset_is_mapped_again_without_reading_an_archive(tmp_path, rng, monkeypatch):
    root = _dataset(tmp_path / "ds", rng)
    bad = rng.standard_normal((3, 32)).astype(np.float32)
    bad[1] = np.nan
    write_face01(root, "with_nan", bad)
    _, first = _run(root, tmp_path / "cache")

    def no_reads(*a, **k):
        raise AssertionError("an archive was read although the dataset did not change")

    monkeypatch.setattr(embed_folders, "read_bytes", no_reads)
    pipeline, second = _run(root, tmp_path / "cache")
    assert pipeline.table_source == "stored"
    _same_table(first.table, second.table)
    assert [p.code for p in second.table.problems[second.table.identities.index(
        next(i for i in second.table.identities if i.name == "with_nan"))]] == ["nan"]
    assert first.findings.pairs == second.findings.pairs


@pytest.mark.parametrize("change", ["rewrite", "add_folder", "remove_folder", "rename_folder", "vector_key"])
def test_any_change_to_the_dataset_loads_the_table_again(tmp_path, rng, change):
    root = _dataset(tmp_path / "ds", rng)
    cache = tmp_path / "cache"
    _run(root, cache)
    rules = {}
    if change == "rewrite":  # same name, same size: new content and mtime
        write_face01(root, "id_01", rng.standard_normal((6, 32)).astype(np.float32))
    elif change == "add_folder":
        write_face01(root, "zz_new", rng.standard_normal((2, 32)).astype(np.float32))
    elif change == "remove_folder":
        import shutil

        shutil.rmtree(root / "id_03")
    elif change == "rename_folder":
        (root / "id_02").rename(root / "id_02_renamed")
    else:
        rules = {"embeddings": {"key": "efficientnetv2_arcface"}}
    pipeline, result = _run(root, cache, **rules)
    # a change to some folders reads only those, the rest is copied from the stored table
    # (incremental); another vector key changes every folder's version
    assert pipeline.table_source == ("loaded" if change == "vector_key" else "updated")
    _same_table(result.table, load_table(root, discover_identities(root)))


@pytest.mark.parametrize("damage", ["truncate", "meta", "identity_of", "missing"])
def test_a_damaged_stored_table_is_rebuilt_never_trusted(tmp_path, rng, damage):
    root = _dataset(tmp_path / "ds", rng)
    cache = tmp_path / "cache"
    _run(root, cache)
    (folder,) = (cache / "tables").iterdir()
    if damage == "truncate":
        with open(folder / "vectors.f32", "r+b") as fp:
            fp.truncate(100)
    elif damage == "meta":
        (folder / "meta.json").write_text("{not json")
    elif damage == "identity_of":
        np.save(folder / "identity_of.npy", np.zeros(3, np.int32))
    else:
        (folder / "vectors.f32").unlink()
    pipeline, result = _run(root, cache)
    assert pipeline.table_source == "loaded"
    assert any("damaged" in note and "rebuilt" in note for note in pipeline.notes)
    _same_table(result.table, load_table(root, discover_identities(root)))


def test_loading_holds_one_folder_not_the_dataset(tmp_path, rng):
    root = tmp_path / "ds"
    for k in range(400):
        write_face01(root, f"id_{k:03d}", rng.standard_normal((40, 128)).astype(np.float32))
    store = TableStore(tmp_path / "cache", root)
    identities = discover_identities(root)
    prepared = embed_folders.prepare(root, identities, None, "dlib", tmp_path / "cache")
    tracemalloc.start()
    try:
        table = load_table(root, identities, folders=prepared.folders, store=store, version=prepared.version)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert table.vectors.nbytes > 7 * 2**20
    # the readahead window holds a few dozen archives; the whole table is never in memory
    assert peak < table.vectors.nbytes / 2  # before: the raw arrays and the table, over 2x


def test_centring_a_mapped_table_writes_a_second_mapping_equal_to_centring_in_memory(tmp_path, rng):
    root = _dataset(tmp_path / "ds", rng, folders=8, rows=20)
    _, result = _run(root, tmp_path / "cache", embeddings={"centre": True})
    assert isinstance(result.table.vectors, np.memmap) and "centred" in str(result.table.vectors.filename)
    plain = load_table(root, discover_identities(root))
    np.testing.assert_allclose(np.asarray(result.table.vectors), centre_vectors(plain.vectors), atol=1e-6)


def test_rows_in_memory_and_in_a_file_are_the_same(tmp_path, rng):
    blocks = [normalise(rng.standard_normal((k + 1, 8)))[0] for k in range(5)]
    in_memory, in_file = Rows(8, None), Rows(8, tmp_path)
    for k, block in enumerate(blocks):
        for rows in (in_memory, in_file):
            rows.add(k, [f"f{k}_{r}" for r in range(len(block))], block)
    (a, ia), (b, ib) = in_memory.finish(), in_file.finish()
    assert isinstance(b, np.memmap) and np.array_equal(a, b) and np.array_equal(ia, ib)
    assert in_file.counts == {k: k + 1 for k in range(5)}
    in_file.discard()


# -- the memory budget --------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [("4GB", 4 * 10**9), ("1.5 GiB", int(1.5 * 2**30)), ("512MB", 512 * 10**6),
                                            ("2g", 2 * 10**9), (2**30, 2**30)])
def test_sizes_people_write_are_read(text, expected):
    assert memory.parse_size(text) == expected


@pytest.mark.parametrize("text", ["lots", "4 parsecs", "-1GB", "1KB", True, ""])
def test_a_size_that_is_not_one_says_what_is_expected(text):
    with pytest.raises(ValueError):
        memory.parse_size(text)


def test_rules_memory_and_engine_are_validated_naming_the_key(tmp_path):
    assert parse_rules({"memory": "2GB"}, None).memory == 2 * 10**9
    assert parse_rules({}, None).memory is None
    with pytest.raises(RulesError, match="memory"):
        parse_rules({"memory": "lots"}, tmp_path / "rules.yaml")
    assert parse_rules({"engine": "ray"}, None).engine.type == "ray"
    assert parse_rules({"engine": {"type": "ray", "address": "auto"}}, None).engine.address == "auto"
    with pytest.raises(RulesError, match="engine.type"):
        parse_rules({"engine": "spark"}, None)
    with pytest.raises(RulesError, match="engine.address"):
        parse_rules({"engine": {"type": "local", "address": "auto"}}, None)


@pytest.mark.skipif(not hasattr(mmap, "MADV_DONTNEED") or memory.resident_bytes() == 0,
                    reason="needs madvise and /proc/self/statm (Linux)")
def test_trimming_gives_the_mapped_pages_back(tmp_path):
    path = tmp_path / "t.f32"
    size = 64 * 2**20
    with open(path, "wb") as fp:
        fp.truncate(size)
    arr = np.memmap(path, dtype=np.float32, mode="r", shape=(size // 4,))
    budget = memory.Budget(10 * size)
    budget.watch(arr)
    base = memory.resident_bytes()
    assert float(arr[:: 1024].sum()) == 0.0  # touches every page
    touched = memory.resident_bytes()
    assert touched - base > size * 0.8
    budget.trim()
    assert touched - memory.resident_bytes() > size * 0.8
    assert float(arr[:: 1024].sum()) == 0.0  # and they read back from the file
    budget.close()


def test_a_tiny_budget_gives_the_same_findings(tmp_path, rng):
    root = _dataset(tmp_path / "ds", rng, folders=10, rows=30, dim=16)
    _, roomy = _run(root, tmp_path / "c1")
    _, tight = _run(root, tmp_path / "c2", memory="64MiB")
    assert roomy.findings.pairs == tight.findings.pairs and len(roomy.findings.pairs) > 0
    assert tight.findings.metadata["memory"]["budget"] == 64 * 2**20


@pytest.mark.skipif(not hasattr(mmap, "MADV_DONTNEED") or memory.resident_bytes() == 0,
                    reason="needs madvise and /proc/self/statm (Linux)")
def test_releasing_rows_gives_their_pages_back_and_they_read_back(tmp_path, rng):
    rows, dim = 1 << 14, 1024  # 64 MiB
    path = tmp_path / "t.f32"
    data = rng.standard_normal((rows, dim)).astype(np.float32)
    data.tofile(path)
    arr = np.memmap(path, dtype=np.float32, mode="r", shape=(rows, dim))
    base = memory.resident_bytes()
    total = float(np.asarray(arr).sum(dtype=np.float64))
    touched = memory.resident_bytes()
    assert touched - base > arr.nbytes * 0.8
    memory.release(arr, 0, rows)
    assert touched - memory.resident_bytes() > arr.nbytes * 0.8
    assert float(np.asarray(arr).sum(dtype=np.float64)) == total
    memory.release(np.zeros((4, 4)), 0, 4)  # not a mapping: nothing to do


@pytest.mark.skipif(not hasattr(mmap, "MADV_DONTNEED") or memory.resident_bytes() == 0,
                    reason="needs madvise and /proc/self/statm (Linux)")
def test_keying_every_row_of_a_first_run_leaves_the_mapped_table_out_of_memory(tmp_path, rng):
    """A first run hashes every row (incremental state): on a 20 GB table that pass made the whole
    table resident before the budget watched it. Now each block's pages are given back."""
    from types import SimpleNamespace

    from dataset_checks import incremental
    from dataset_checks.incremental import Incremental
    from dataset_checks.search_state import row_keys

    rows, dim, folders = 1 << 15, 512, 4  # 64 MiB; folders larger than one block of keys
    path = tmp_path / "t.f32"
    rng.standard_normal((rows, dim)).astype(np.float32).tofile(path)
    vectors = np.memmap(path, dtype=np.float32, mode="r", shape=(rows, dim))
    class Table(SimpleNamespace):
        def __len__(self):
            return len(self.vectors)

    table = Table(vectors=vectors, identity_of=np.repeat(np.arange(folders), rows // folders),
                  identities=[SimpleNamespace(name=f"p{k}") for k in range(folders)])
    inc = Incremental(tmp_path / "cache", tmp_path / "ds", parse_rules({}))
    assert inc.enabled and inc.state is None  # a first run: no stored state, every row keyed
    base = memory.file_resident_bytes()
    with mock.patch.object(incremental, "KEY_ROWS", 1 << 12):
        inc.match(table, SimpleNamespace(folder_versions=[], version=""))
    assert memory.file_resident_bytes() - base < vectors.nbytes / 4
    np.testing.assert_array_equal(inc.change.keys, row_keys(np.asarray(vectors)))
