"""Loading embeddings: both layouts, and every kind of bad input becomes a Problem naming the file."""

from __future__ import annotations

import io
import os
import sys
import unicodedata
import zipfile
from pathlib import Path

import numpy as np
import pytest

from dataset_checks.discover import discover_identities
from dataset_checks.vectors import load_table, normalise
from helpers import ARC, unit_rows, write_face01, write_plain


def load(root: Path, key: str | None = None):
    return load_table(root, discover_identities(root), key)


def problems_of(table, name: str) -> list:
    idx = [i.name for i in table.identities].index(name)
    return table.problems.get(idx, [])


def only_problem(table, name: str):
    probs = problems_of(table, name)
    assert len(probs) == 1, probs
    return probs[0]


def rows_of(table, name: str) -> np.ndarray:
    idx = [i.name for i in table.identities].index(name)
    return table.vectors[table.identity_of == idx]


@pytest.fixture
def vecs(rng):
    def make(n: int, dim: int = 16) -> np.ndarray:
        return rng.standard_normal((n, dim)).astype(np.float32)

    return make


# -- good input -----------------------------------------------------------------------------------


def test_face01_3d_arrays_are_reshaped_and_normalised(tmp_path, vecs):
    a, b = vecs(3, 512), vecs(2, 512)
    write_face01(tmp_path, "A", a, shape_3d=True)
    write_face01(tmp_path, "B", b, shape_3d=False)
    table = load(tmp_path)
    assert table.key == ARC and table.dim == 512 and len(table) == 5
    assert table.problems == {}
    np.testing.assert_allclose(rows_of(table, "A"), unit_rows(a), atol=1e-6)
    np.testing.assert_allclose(rows_of(table, "B"), unit_rows(b), atol=1e-6)
    assert table.files == [f"A_{k:04d}.jpg" for k in (1, 2, 3)] + [f"B_{k:04d}.jpg" for k in (1, 2)]
    assert table.identity_of.tolist() == [0, 0, 0, 1, 1]
    assert table.counts.tolist() == [3, 2]
    assert table.vectors.dtype == np.float32 and table.vectors.flags.c_contiguous


def test_plain_layout(tmp_path, vecs):
    a, b = vecs(2, 8), vecs(4, 8)
    write_plain(tmp_path, "A", a, files=["x.png", "y.png"])
    write_plain(tmp_path, "B", b)
    table = load(tmp_path)
    assert table.key == "vectors" and table.problems == {}
    assert table.files[:2] == ["x.png", "y.png"]
    np.testing.assert_allclose(rows_of(table, "B"), unit_rows(b), atol=1e-6)


def test_dlib_layout(tmp_path, vecs):
    write_face01(tmp_path, "A", vecs(2, 128), key="dlib")
    write_face01(tmp_path, "B", vecs(3, 128), key="dlib")
    table = load(tmp_path)
    assert table.key == "dlib" and table.dim == 128 and len(table) == 5 and table.problems == {}


def test_key_auto_prefers_the_key_present_in_most_folders(tmp_path, vecs):
    write_face01(tmp_path, "A", vecs(2, 128), key="dlib")
    write_face01(tmp_path, "B", vecs(2, 128), key="dlib")
    write_face01(tmp_path, "C", vecs(2, 512))
    table = load(tmp_path)
    assert table.key == "dlib"
    p = only_problem(table, "C")
    assert p.file == "C/npKnown.npz" and "no 'dlib' vectors" in p.message and ARC in p.message
    assert table.counts.tolist() == [2, 2, 0]


def test_key_auto_tie_prefers_arcface_and_both_keys_in_one_file(tmp_path, vecs):
    write_face01(tmp_path, "A", vecs(2, 512), dlib=vecs(2, 128))
    write_face01(tmp_path, "B", vecs(2, 128), key="dlib")
    write_face01(tmp_path, "C", vecs(2, 512))
    table = load(tmp_path)
    assert table.key == ARC and table.dim == 512
    assert only_problem(table, "B").file == "B/npKnown.npz"
    # an explicit key wins
    table = load(tmp_path, "dlib")
    assert table.key == "dlib" and table.dim == 128
    assert table.counts.tolist() == [2, 2, 0]
    assert "missing vector array 'dlib'" in only_problem(table, "C").message


def test_side_folders_and_hidden_folders_are_not_identities(tmp_path, vecs):
    for name in ("A", "noFace", "multipleFaces", ".cache", ".git"):
        write_face01(tmp_path, name, vecs(2))
    (tmp_path / "A" / "noFace").mkdir()
    (tmp_path / "A" / "multipleFaces").mkdir()
    (tmp_path / "A" / "noFace" / "x.jpg").write_bytes(b"")
    (tmp_path / "README.txt").write_text("not a folder")
    idents = discover_identities(tmp_path)
    assert [i.name for i in idents] == ["A"]
    table = load(tmp_path)
    assert len(table) == 2 and table.problems == {}


def test_identities_sorted_and_named_exactly(tmp_path, vecs):
    for name in ("b", "B", "a b", "Zoë", "高橋一生", "髙橋一生"):
        write_face01(tmp_path, name, vecs(1))
    assert [i.name for i in discover_identities(tmp_path)] == sorted(["b", "B", "a b", "Zoë", "高橋一生", "髙橋一生"])


def test_nfd_and_nfc_names_are_distinct_identities(tmp_path, vecs):
    nfc = unicodedata.normalize("NFC", "José")
    nfd = unicodedata.normalize("NFD", "José")
    assert nfc != nfd
    write_face01(tmp_path, nfc, vecs(2))
    write_face01(tmp_path, nfd, vecs(2))
    if len(os.listdir(tmp_path)) != 2:
        pytest.skip("this file system normalises Unicode names")
    idents = discover_identities(tmp_path)
    assert sorted(i.name for i in idents) == sorted([nfc, nfd])
    table = load(tmp_path)
    assert len(table) == 4
    nfd_notes = [p for p in problems_of(table, nfd)]
    assert any("not in Unicode NFC form" in p.message for p in nfd_notes)
    assert all(not p.fatal for p in nfd_notes)
    assert all(p.file == f"{nfd}/" for p in nfd_notes)
    # both mention the clash
    assert any("same text as" in p.message for p in problems_of(table, nfc))
    assert any("same text as" in p.message for p in nfd_notes)


@pytest.mark.skipif(sys.platform != "linux", reason="bytes folder names need a POSIX file system")
def test_non_utf8_folder_name(tmp_path, vecs):
    raw = os.fsencode(str(tmp_path)) + b"/caf\xe9"
    os.mkdir(raw)
    name = os.fsdecode(b"caf\xe9")
    write_face01(tmp_path, name, vecs(2))
    write_face01(tmp_path, "B", vecs(2))
    idents = discover_identities(tmp_path)
    ident = [i for i in idents if i.name == name][0]
    assert ident.display == "caf%E9"
    table = load(tmp_path)
    assert table.counts.tolist()[[i.name for i in idents].index(name)] == 2
    notes = problems_of(table, name)
    assert len(notes) == 1 and not notes[0].fatal
    assert notes[0].file == "caf%E9/" and "not valid UTF-8" in notes[0].message
    str(notes[0]).encode("utf-8")  # printable


# -- bad input: each problem names the file ---------------------------------------------------------


def test_truncated_npz(tmp_path, vecs):
    write_face01(tmp_path, "A", vecs(2))
    path = write_face01(tmp_path, "B", vecs(5))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    table = load(tmp_path)
    p = only_problem(table, "B")
    assert p.file == "B/npKnown.npz" and p.fatal
    assert "corrupt or truncated" in p.message
    assert table.counts.tolist() == [2, 0]


def test_garbage_npz(tmp_path, vecs):
    write_face01(tmp_path, "A", vecs(2))
    (tmp_path / "B").mkdir()
    (tmp_path / "B" / "npKnown.npz").write_bytes(b"\x00not a zip at all" * 10)
    p = only_problem(load(tmp_path), "B")
    assert p.file == "B/npKnown.npz" and "corrupt or truncated" in p.message


def test_corrupt_member_inside_a_valid_zip(tmp_path, vecs):
    write_face01(tmp_path, "A", vecs(2))
    (tmp_path / "B").mkdir()
    buf = io.BytesIO()
    np.save(buf, vecs(3))
    with zipfile.ZipFile(tmp_path / "B" / "npKnown.npz", "w") as z:
        z.writestr("name.npy", b"\x93NUMPY garbage")
        z.writestr(f"{ARC}.npy", buf.getvalue()[:-20])
    p = only_problem(load(tmp_path), "B")
    assert p.file == "B/npKnown.npz" and p.fatal and "corrupt or truncated" in p.message


def test_missing_names_array(tmp_path, vecs):
    (tmp_path / "A").mkdir()
    np.savez(tmp_path / "A" / "npKnown.npz", **{ARC: vecs(2)})
    write_face01(tmp_path, "B", vecs(2))
    p = only_problem(load(tmp_path), "A")
    assert p.file == "A/npKnown.npz" and "missing array 'name'" in p.message and ARC in p.message


def test_missing_vector_array(tmp_path, vecs):
    (tmp_path / "A").mkdir()
    np.savez(tmp_path / "A" / "npKnown.npz", name=np.array(["a.jpg"]), other=vecs(1))
    write_face01(tmp_path, "B", vecs(2))
    p = only_problem(load(tmp_path), "A")
    assert p.file == "A/npKnown.npz"
    assert p.message == "missing vector array 'efficientnetv2_arcface' or 'dlib' (arrays present: name, other)"


def test_plain_layout_missing_vectors(tmp_path, vecs):
    (tmp_path / "A").mkdir()
    np.savez(tmp_path / "A" / "embeddings.npz", files=np.array(["a.jpg"]))
    write_plain(tmp_path, "B", vecs(2))
    p = only_problem(load(tmp_path), "A")
    assert p.file == "A/embeddings.npz" and "missing vector array 'vectors'" in p.message


def test_name_count_mismatch(tmp_path, vecs):
    write_face01(tmp_path, "A", vecs(3), files=["a.jpg", "b.jpg"])
    write_face01(tmp_path, "B", vecs(2))
    p = only_problem(load(tmp_path), "A")
    assert p.file == "A/npKnown.npz" and p.message == f"'name' lists 2 files but '{ARC}' has 3 vectors"


def test_mixed_dimensions_across_folders(tmp_path, vecs):
    write_face01(tmp_path, "A", vecs(2, 512))
    write_face01(tmp_path, "B", vecs(2, 512))
    write_face01(tmp_path, "C", vecs(2, 256))
    table = load(tmp_path)
    assert table.dim == 512 and len(table) == 4
    p = only_problem(table, "C")
    assert p.file == "C/npKnown.npz" and p.message == "vectors have dimension 256, the rest of the dataset has 512"
    assert table.counts.tolist() == [2, 2, 0]


def test_nan_inf_zero_rows_are_skipped_alone(tmp_path, vecs):
    a = vecs(6)
    a[1, 3] = np.nan
    a[2, 0] = np.inf
    a[4] = 0.0
    write_face01(tmp_path, "A", a)
    write_face01(tmp_path, "B", vecs(2))
    table = load(tmp_path)
    probs = problems_of(table, "A")
    # one problem per kind and file; rows and names in the message, never in `file` (baseline keys)
    assert [(p.file, p.code) for p in probs] == [("A/npKnown.npz", "nan"), ("A/npKnown.npz", "zero")]
    assert probs[0].message == "2 faces have NaN or infinite values, skipped (rows 1 (A_0002.jpg), 2 (A_0003.jpg))"
    assert probs[1].message == "1 face has an all-zero vector, skipped (row 4 (A_0005.jpg))"
    assert all(p.fatal for p in probs)
    np.testing.assert_allclose(rows_of(table, "A"), unit_rows(a[[0, 3, 5]]), atol=1e-6)
    assert [f for f, o in zip(table.files, table.identity_of) if o == 0] == ["A_0001.jpg", "A_0004.jpg", "A_0006.jpg"]
    assert np.isfinite(table.vectors).all()


def test_all_rows_bad(tmp_path, vecs):
    write_face01(tmp_path, "A", np.zeros((2, 16), np.float32))
    write_face01(tmp_path, "B", vecs(2))
    table = load(tmp_path)
    assert table.counts.tolist() == [0, 2]
    (p,) = problems_of(table, "A")
    assert p.code == "zero" and p.message.startswith("2 faces have an all-zero vector")


def test_huge_values_normalise(tmp_path):
    x = np.array([[3e38, 3e38, 0.0], [1e-30, 0.0, 0.0]], dtype=np.float32)
    out, bad = normalise(x)
    assert not bad.any()
    np.testing.assert_allclose(out, [[2**-0.5, 2**-0.5, 0], [1, 0, 0]], atol=1e-6)


def test_empty_folder_and_empty_arrays(tmp_path, vecs):
    (tmp_path / "Empty").mkdir()
    write_face01(tmp_path, "Zero", np.zeros((0, 16), np.float32), files=[])
    write_face01(tmp_path, "Ok", vecs(2))
    table = load(tmp_path)
    p = only_problem(table, "Empty")
    assert p.file == "Empty/" and "no embeddings" in p.message and "npKnown.npz" in p.message
    p = only_problem(table, "Zero")
    assert p.file == "Zero/npKnown.npz" and "no vectors" in p.message


def test_unreadable_file(tmp_path, vecs):
    write_face01(tmp_path, "A", vecs(2))
    path = write_face01(tmp_path, "B", vecs(2))
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as a user (root) who can read a chmod 000 file")
        p = only_problem(load(tmp_path), "B")
        assert p.file == "B/npKnown.npz" and "cannot be read" in p.message
    finally:
        path.chmod(0o644)


def test_pickled_object_arrays_are_not_unpickled(tmp_path, vecs):
    (tmp_path / "A").mkdir()
    names = np.array(["a.jpg", "b.jpg"], dtype=object)
    np.savez(tmp_path / "A" / "npKnown.npz", name=names, **{ARC: vecs(2)})
    (tmp_path / "B").mkdir()
    objs = np.empty(2, dtype=object)
    objs[0], objs[1] = vecs(1)[0], vecs(1)[0]
    np.savez(tmp_path / "B" / "npKnown.npz", name=np.array(["a.jpg", "b.jpg"]), **{ARC: objs})
    write_face01(tmp_path, "C", vecs(2))
    table = load(tmp_path)
    for name in ("A", "B"):
        p = only_problem(table, name)
        assert p.file == f"{name}/npKnown.npz" and "pickled" in p.message
    assert table.counts.tolist() == [0, 0, 2]


def test_wrong_shapes_and_dtypes(tmp_path, vecs):
    write_face01(tmp_path, "A", vecs(2), files=None)
    (tmp_path / "B").mkdir()
    np.savez(tmp_path / "B" / "npKnown.npz", name=np.array([["a"], ["b"]]), **{ARC: vecs(2)})
    (tmp_path / "C").mkdir()
    np.savez(tmp_path / "C" / "npKnown.npz", name=np.array(["a", "b"]), **{ARC: np.array(["x", "y"])})
    (tmp_path / "D").mkdir()
    np.savez(tmp_path / "D" / "npKnown.npz", name=np.array(["a", "b"]), **{ARC: np.zeros((2, 2, 3))})
    table = load(tmp_path)
    assert "1-D array of file names" in only_problem(table, "B").message
    assert "(N, D) or (N, 1, D) number array" in only_problem(table, "C").message
    assert "(N, D) or (N, 1, D) number array" in only_problem(table, "D").message
    for name in "BCD":
        assert only_problem(table, name).file == f"{name}/npKnown.npz"
    assert table.counts.tolist() == [2, 0, 0, 0]


def test_bytes_names_are_decoded(tmp_path, vecs):
    (tmp_path / "A").mkdir()
    np.savez(tmp_path / "A" / "npKnown.npz", name=np.array([b"a.jpg", "é.jpg".encode()]), **{ARC: vecs(2)})
    table = load(tmp_path)
    assert table.files == ["a.jpg", "é.jpg"]


def test_loading_does_not_modify_the_dataset(tmp_path, vecs):
    from helpers import tree_state

    write_face01(tmp_path, "A", vecs(3))
    write_plain(tmp_path, "B", vecs(3))
    (tmp_path / "C").mkdir()
    before = tree_state(tmp_path)
    load(tmp_path)
    assert tree_state(tmp_path) == before


def test_permission_error_names_the_file(tmp_path, vecs, monkeypatch):
    # the chmod test above cannot run as root; this drives the same branch on any user
    write_face01(tmp_path, "A", vecs(2))
    write_face01(tmp_path, "B", vecs(2))
    real_read = Path.read_bytes

    def deny(path, *a, **kw):
        if path.parent.name == "B":
            raise PermissionError(13, "Permission denied", str(path))
        return real_read(path, *a, **kw)

    monkeypatch.setattr(Path, "read_bytes", deny)
    table = load(tmp_path)
    p = only_problem(table, "B")
    assert p.file == "B/npKnown.npz" and p.message == "cannot be read: Permission denied"
    assert table.counts.tolist() == [2, 0]


def test_the_benchmark_dataset_written_folder_by_folder_is_the_one_built_in_memory(tmp_path):
    """benchmarks/scale.py writes 10M faces folder by folder (they do not fit in memory): the same
    files, byte for byte, as the in-memory generator, planted copies included."""
    from dataset_checks.synthetic import seed_scale, write_seed_scale

    params = dict(n_identities=40, n_vectors=900, dim=16, n_planted=30, crowded_every=10, crowd_size=50, seed=3)
    built = seed_scale(**params)
    built.write(tmp_path / "memory")
    assert write_seed_scale(tmp_path / "streamed", **params) == len(built.planted) > 0
    for name in built.names:
        a = (tmp_path / "memory" / name / "npKnown.npz").read_bytes()
        assert (tmp_path / "streamed" / name / "npKnown.npz").read_bytes() == a, name
