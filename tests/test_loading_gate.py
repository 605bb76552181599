"""A gate people can trust: loading never crashes on one folder, never drops faces silently, and
keeps each identity's failure message short. Permission errors are simulated (tests run as root)."""

from __future__ import annotations

import io
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from numpy.lib import format as npy_format

from dataset_checks.discover import discover_identities
from dataset_checks.problems import MAX_PROBLEMS, capped
from dataset_checks.rules import parse_rules
from dataset_checks.session import CheckSession
from dataset_checks import vectors as vectors_mod
from dataset_checks.vectors import load_table
from helpers import ARC, write_face01, write_plain
from test_embed import _png, fake  # noqa: F401 - fixture

needs_symlinks = pytest.mark.skipif(os.name != "posix", reason="symbolic links need a POSIX file system")


def load(root: Path, **kw):
    return load_table(root, discover_identities(root), **kw)


def problems_of(table, name: str) -> list:
    return table.problems.get([i.name for i in table.identities].index(name), [])


def count_of(table, name: str) -> int:
    return int(table.counts[[i.name for i in table.identities].index(name)])


def session(tmp_path: Path, root: Path, **rules) -> CheckSession:
    s = CheckSession(parse_rules({"dataset": str(root), **rules}, tmp_path / "rules.yaml"), report_dir=None,
                     progress=False)
    s.cache_root = tmp_path
    return s


@pytest.fixture
def vecs(rng):
    return lambda n, dim=16: rng.standard_normal((n, dim)).astype(np.float32)


def _npy_header(shape, descr="<f4") -> bytes:
    buf = io.BytesIO()
    npy_format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


# -- 1. declared shapes are checked before reading ----------------------------------------------


def test_declared_huge_shape_is_a_corrupt_file_not_a_memory_error(tmp_path, vecs):
    write_face01(tmp_path, "A", vecs(2))
    (tmp_path / "B").mkdir()
    names = io.BytesIO()
    np.save(names, np.array(["a.jpg", "b.jpg"]))
    with zipfile.ZipFile(tmp_path / "B" / "npKnown.npz", "w") as z:
        z.writestr("name.npy", names.getvalue())
        z.writestr(f"{ARC}.npy", _npy_header((10**9, 512)) + b"\0" * 64)  # 1.9 TiB declared, 64 bytes held
    table = load(tmp_path)
    (p,) = problems_of(table, "B")
    assert p.file == "B/npKnown.npz" and p.fatal and p.code == "corrupt"
    assert "(1000000000, 512)" in p.message and ARC in p.message and "TiB" in p.message and "64 bytes" in p.message
    assert table.counts.tolist() == [2, 0]


def test_array_over_the_memory_bound_is_a_problem_naming_file_array_shape(tmp_path, vecs):
    write_face01(tmp_path, "A", vecs(2))
    (tmp_path / "B").mkdir()  # 6400 bytes of vectors in a file of less than 1000
    np.savez_compressed(tmp_path / "B" / "npKnown.npz", name=np.array(["b.jpg"] * 100),
                        **{ARC: np.tile(vecs(1), (100, 1))})
    assert (tmp_path / "B" / "npKnown.npz").stat().st_size < 1000
    table = load(tmp_path, max_bytes=3000)
    (p,) = problems_of(table, "B")
    assert p.file == "B/npKnown.npz" and p.fatal and p.code == "too-large"
    assert f"'{ARC}'" in p.message and "(100, 16)" in p.message and "6.2 KiB" in p.message
    assert count_of(table, "A") == 2 and count_of(table, "B") == 0


def test_the_name_array_is_bounded_too(tmp_path, vecs):
    write_face01(tmp_path, "A", vecs(2))
    (tmp_path / "B").mkdir()  # '<U5000': 40,000 bytes of names in a small file
    np.savez_compressed(tmp_path / "B" / "npKnown.npz", name=np.array(["x" * 5000, "y.jpg"]), **{ARC: vecs(2)})
    (p,) = problems_of(load(tmp_path, max_bytes=20_000), "B")
    assert p.code == "too-large" and "'name'" in p.message and "(2,)" in p.message


def test_a_compressed_array_is_bounded_by_what_it_declares_not_its_file_size(tmp_path):
    (tmp_path / "A").mkdir()
    n = 20_000  # 40 MB once read, a few hundred KB on disk
    np.savez_compressed(tmp_path / "A" / "npKnown.npz", name=np.array([f"{k}.jpg" for k in range(n)]),
                        **{ARC: np.ones((n, 512), np.float32)})
    write_face01(tmp_path, "B", np.eye(512, dtype=np.float32)[:2])
    assert (tmp_path / "A" / "npKnown.npz").stat().st_size < 2_000_000
    table = load(tmp_path, max_bytes=100_000_000)
    assert count_of(table, "A") == n and not problems_of(table, "A")
    table = load(tmp_path, max_bytes=10_000_000)
    (p,) = problems_of(table, "A")
    assert p.code == "too-large" and count_of(table, "A") == 0 and count_of(table, "B") == 2


def test_a_file_over_the_bound_is_not_read_at_all(tmp_path, vecs, monkeypatch):
    write_face01(tmp_path, "A", vecs(2))
    write_face01(tmp_path, "B", vecs(200))
    real = Path.read_bytes
    read = []
    monkeypatch.setattr(Path, "read_bytes", lambda p: read.append(p.parent.name) or real(p))
    (p,) = problems_of(load(tmp_path, max_bytes=4000), "B")
    assert p.code == "too-large" and "file of" in p.message
    assert read == ["A"]


def test_memory_error_while_reading_one_folder_is_that_folders_problem(tmp_path, vecs, monkeypatch):
    write_face01(tmp_path, "A", vecs(2))
    write_face01(tmp_path, "B", vecs(2, 32))
    real = np.lib.npyio.NpzFile.__getitem__

    def getitem(self, key):
        arr = real(self, key)
        if arr.ndim == 2 and arr.shape[1] == 32:
            raise MemoryError("simulated")
        return arr

    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", getitem)
    # uncompressed members are viewed in place, without NpzFile: the allocation can fail there too
    real_view = vectors_mod._stored_array

    def view(data, zf, key, shape, *a):
        if len(shape) == 2 and shape[1] == 32:
            raise MemoryError("simulated")
        return real_view(data, zf, key, shape, *a)

    monkeypatch.setattr(vectors_mod, "_stored_array", view)
    table = load(tmp_path)
    (p,) = problems_of(table, "B")
    assert p.file == "B/npKnown.npz" and p.fatal and p.code == "too-large" and "memory" in p.message
    assert count_of(table, "A") == 2


# -- 2. unreadable folders are per-identity problems --------------------------------------------


class _Entry:
    """A DirEntry whose stat-based answers fail, as in a folder without execute permission."""

    def __init__(self, entry):
        self._entry, self.name, self.path = entry, entry.name, entry.path

    def is_symlink(self):
        return self._entry.is_symlink()

    def _deny(self, *a, **kw):
        raise PermissionError(13, "Permission denied", self.path)

    is_dir = is_file = stat = _deny


def _deny_scandir(monkeypatch, listing_denied: set[str] = frozenset(), entries_denied: set[str] = frozenset()):
    real = os.scandir

    class Wrap:
        def __init__(self, it):
            self._it = it

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._it.close()

        def __iter__(self):
            for e in self._it:
                yield _Entry(e) if e.name in entries_denied else e

    def scandir(path="."):
        if Path(os.fsdecode(path)).name in listing_denied:
            raise PermissionError(13, "Permission denied", str(path))
        return Wrap(real(path))

    monkeypatch.setattr(os, "scandir", scandir)


def test_a_folder_that_cannot_be_listed_is_that_identitys_problem(tmp_path, vecs, monkeypatch):
    for name in "ABC":
        write_face01(tmp_path, name, vecs(2))
    _deny_scandir(monkeypatch, listing_denied={"B"})
    table = load(tmp_path)
    (p,) = problems_of(table, "B")
    assert (p.file, p.message, p.fatal, p.code) == ("B/", "cannot be read: permission denied", True, "unreadable")
    assert table.counts.tolist() == [2, 0, 2]


def test_entries_that_cannot_be_looked_at_are_problems_not_crashes(tmp_path, vecs, monkeypatch):
    # is_dir on the identity (discovery) and is_file on its npKnown.npz both fail
    for name in "ABC":
        write_face01(tmp_path, name, vecs(2))
    _deny_scandir(monkeypatch, entries_denied={"B", "npKnown.npz"})
    table = load(tmp_path)
    assert [i.name for i in table.identities] == ["A", "B", "C"]
    (p,) = problems_of(table, "B")
    assert (p.file, p.code, p.fatal) == ("B/", "unreadable", True) and "permission denied" in p.message
    (p,) = problems_of(table, "A")
    assert (p.file, p.code) == ("A/npKnown.npz", "unreadable")


def test_session_with_an_unreadable_folder_checks_the_rest(tmp_path, vecs, fake, monkeypatch):
    ds = tmp_path / "ds"
    write_face01(ds, "A", vecs(2))
    write_face01(ds, "B", vecs(2))
    _png(ds / "C" / "c.png", 1)
    real_is_file = Path.is_file

    def is_file(p):
        if p.parent.name == "C":
            raise PermissionError(13, "Permission denied", str(p))
        return real_is_file(p)

    monkeypatch.setattr(Path, "is_file", is_file)
    _deny_scandir(monkeypatch, listing_denied={"B"})
    s = session(tmp_path, ds, embedder=fake)
    s.image_identities()  # embeddings_path on C: is_file raises
    f = s.findings()
    assert f.verdicts["A"].status == "pass"
    assert f.verdicts["B"].status == "error" and "permission denied" in f.verdicts["B"].message()


# -- 3. symbolic links ---------------------------------------------------------------------------


@needs_symlinks
def test_a_dataset_of_dangling_links_fails_instead_of_looking_empty(tmp_path):
    ds = tmp_path / "ds"
    ds.mkdir()
    for name in ("Bob", "Alice"):
        os.symlink(tmp_path / "unmounted" / name, ds / name)
    idents = discover_identities(ds)
    assert [i.name for i in idents] == ["Alice", "Bob"] and all(i.fatal for i in idents)
    table = load_table(ds, idents)
    (p,) = problems_of(table, "Alice")
    assert p.file == "Alice/" and p.fatal and p.code == "dangling-link"
    assert p.message == f"dangling symbolic link to {tmp_path / 'unmounted' / 'Alice'}: storage not mounted?"
    f = session(tmp_path, ds).findings()
    assert {v.status for v in f.verdicts.values()} == {"error"}


@needs_symlinks
def test_a_link_leaving_the_root_is_followed_and_announced(tmp_path, vecs):
    ds = tmp_path / "ds"
    write_face01(ds, "A", vecs(2))
    write_face01(tmp_path / "elsewhere", "B<x>", vecs(3))
    os.symlink(tmp_path / "elsewhere" / "B<x>", ds / "B")
    os.symlink("A", ds / "C")  # inside the root: no note
    table = load(ds)
    assert [i.name for i in table.identities] == ["A", "B", "C"]
    (p,) = problems_of(table, "B")
    assert not p.fatal and p.code == "outside-root" and p.file == "B/"
    assert "B%3Cx%3E" in p.message and "<" not in p.message  # the target is shown through text.shown
    assert count_of(table, "B") == 3 and not problems_of(table, "C") and count_of(table, "C") == 2


@needs_symlinks
def test_files_linked_out_of_their_folder_are_announced_and_dangling_ones_are_fatal(tmp_path, vecs):
    ds = tmp_path / "ds"
    write_face01(ds, "A", vecs(2))
    src = write_face01(tmp_path / "other", "X", vecs(3))
    (ds / "B").mkdir()
    os.symlink(src, ds / "B" / "npKnown.npz")
    (ds / "C").mkdir()
    os.symlink(tmp_path / "gone.npz", ds / "C" / "npKnown.npz")
    table = load(ds)
    (p,) = problems_of(table, "B")
    assert p.code == "outside-folder" and not p.fatal and p.file == "B/npKnown.npz" and str(src) in p.message
    assert count_of(table, "B") == 3
    (p,) = problems_of(table, "C")  # not also "no embeddings"
    assert p.code == "dangling-link" and p.fatal and p.file == "C/npKnown.npz"


def test_load_table_reads_nothing_for_a_fatal_identity(tmp_path, vecs):
    from dataclasses import replace

    from dataset_checks.problems import Problem

    write_face01(tmp_path, "A", vecs(2))
    write_face01(tmp_path, "B", vecs(2))
    a, b = discover_identities(tmp_path)
    b = replace(b, problems=(Problem("B/", "cannot be read: permission denied", code="unreadable"),))
    table = load_table(tmp_path, [a, b])
    assert table.counts.tolist() == [2, 0] and [p.code for p in problems_of(table, "B")] == ["unreadable"]


# -- 4. bounded per-identity messages ------------------------------------------------------------


def test_two_hundred_thousand_zero_vectors_are_one_problem(tmp_path, vecs):
    n = 200_000
    write_face01(tmp_path, "A", np.zeros((n, 4), np.float32), files=[f"{k}.jpg" for k in range(n)])
    write_face01(tmp_path, "B", vecs(2, 4))
    (p,) = problems_of(load(tmp_path), "A")
    assert p.file == "A/npKnown.npz" and p.code == "zero"
    assert p.message == ("200000 faces have an all-zero vector, skipped (rows 0 (0.jpg), 1 (1.jpg), 2 (2.jpg), "
                         "3 (3.jpg), 4 (4.jpg), ... first 5 of 200000 shown)")


@needs_symlinks
def test_no_identity_carries_more_than_max_problems(tmp_path, fake):
    ds = tmp_path / "ds"
    _png(ds / "A" / "a.png", 1)
    for k in range(30):
        os.symlink(tmp_path / "unmounted" / f"{k}.png", ds / "A" / f"{k:02d}.png")
    _png(ds / "B" / "b.png", 2)
    v = session(tmp_path, ds, embedder=fake).findings().verdicts["A"]
    # the verdict holds every problem (each its own baseline key); what is shown is capped
    assert len(v.problems) == 30 and all(p.code == "dangling-link" for p in v.problems)
    shown = capped(v.problems, "A/")
    assert len(shown) == MAX_PROBLEMS
    last = shown[-1]
    assert last.code == "more-problems" and last.fatal and "and 11 more problems" in last.message
    assert v.status == "error"
    assert len(v.message().splitlines()) <= MAX_PROBLEMS


def test_face_problems_message_is_bounded(tmp_path, fake):
    ds = tmp_path / "ds"
    for k in range(30):
        _png(ds / "A" / f"black{k:02d}.png", 0, colour=(0, 0, 0))
    _png(ds / "A" / "a.png", 1)
    _png(ds / "B" / "b.png", 2)
    report = session(tmp_path, ds, embedder=fake).faces_report("A")
    lines = report.message().splitlines()
    assert len(lines) == MAX_PROBLEMS + 2 and "10 more" in lines[-1]


# -- 5. stale embeddings never drop vectors silently --------------------------------------------


@pytest.mark.parametrize("embedder", ["fake", "no_such_module_here:embed"])
def test_one_image_added_to_a_vectors_only_folder_keeps_its_duplicate(tmp_path, vecs, fake, embedder):
    ds = tmp_path / "ds"
    a, b = vecs(3, 64), vecs(3, 64)
    b[1] = a[2]  # the same face filed under two identities
    write_plain(ds, "A", a)
    write_plain(ds, "B", b)
    write_plain(ds, "C", vecs(2, 64))
    _png(ds / "A" / "new.png", 7)
    s = session(tmp_path, ds, embedder=fake if embedder == "fake" else embedder, threshold=0.99)
    f = s.findings()
    assert s.table.counts.tolist() == [3, 3, 2]
    va = f.verdicts["A"]
    assert va.status == "fail" and [(m.file, m.other_identity, m.other_file) for m in va.matches] == [
        ("A_0003.jpg", "B", "B_0002.jpg")]
    stale = [p for p in va.problems if p.code == "stale"]
    assert len(stale) == 1 and not stale[0].fatal and "3 listed file(s)" in stale[0].message
    assert "still checked" in stale[0].message and "A_0001.jpg" in stale[0].message
    fatal = [p for p in va.problems if p.fatal]
    assert len(fatal) == 1 and "new.png" in fatal[0].message
    assert fatal[0].code == ("other-model" if embedder == "fake" else "not-embedded")
    assert f.verdicts["B"].status == "fail"


# -- 6. problem codes and stable files -----------------------------------------------------------


def test_every_problem_has_a_code_and_a_stable_file(tmp_path, vecs):
    write_face01(tmp_path, "A", vecs(3))
    (tmp_path / "Empty").mkdir()
    write_face01(tmp_path, "Dim", vecs(2, 8))
    write_face01(tmp_path, "Count", vecs(3), files=["a.jpg"])
    bad = vecs(4)
    bad[1, 0], bad[2] = np.nan, 0
    write_face01(tmp_path, "Rows", bad)
    (tmp_path / "Names").mkdir()
    np.savez(tmp_path / "Names" / "npKnown.npz", name=np.array([[1, 2]]), **{ARC: vecs(1)})
    (tmp_path / "Shape").mkdir()
    np.savez(tmp_path / "Shape" / "npKnown.npz", name=np.array(["a"]), **{ARC: np.zeros((1, 2, 3))})
    (tmp_path / "Missing").mkdir()
    np.savez(tmp_path / "Missing" / "npKnown.npz", other=vecs(1))
    (tmp_path / "Pickled").mkdir()
    np.savez(tmp_path / "Pickled" / "npKnown.npz", name=np.array(["a"], dtype=object), **{ARC: vecs(1)})
    (tmp_path / "Corrupt").mkdir()
    (tmp_path / "Corrupt" / "npKnown.npz").write_bytes(b"not a zip")
    write_face01(tmp_path, "Dlib", vecs(2, 128), key="dlib")
    table = load(tmp_path)
    codes = {table.identities[k].name: sorted({p.code for p in ps}) for k, ps in table.problems.items()}
    assert codes == {
        "Empty": ["no-embeddings"], "Dim": ["dimension"], "Count": ["count-mismatch"], "Rows": ["nan", "zero"],
        "Names": ["bad-names"], "Shape": ["bad-shape"], "Missing": ["missing-array"], "Pickled": ["pickled"],
        "Corrupt": ["corrupt"], "Dlib": ["other-model"],
    }
    for ps in table.problems.values():
        for p in ps:
            assert not re.search(r"\[\d+\]", p.file) and p.file.split("/")[0] in {i.name for i in table.identities}


def test_stale_file_of_the_embedders_model_gets_fresh_vectors_and_keeps_its_own(tmp_path, vecs, fake):
    from dataset_checks.embed import prepare

    ds = tmp_path / "ds"
    _png(ds / "A" / "listed.png", 1)
    _png(ds / "A" / "new.png", 2)
    _png(ds / "A" / "black.png", 0, colour=(0, 0, 0))  # no face
    np.savez(ds / "A" / "npKnown.npz", name=np.array(["listed.png", "gone.png"]), fake=vecs(2))
    prep = prepare(ds, discover_identities(ds), "fake", fake, tmp_path / "cache", workers=1)
    (fv,) = prep.folders
    assert fv.names == ["listed.png", "gone.png", "new.png"] and fv.arrays["fake"].shape == (3, 16)
    by_code = {}
    for p in fv.problems:
        by_code.setdefault(p.code, []).append(p)
    assert sorted(by_code) == ["no-face", "stale"] and not any(p.fatal for p in fv.problems)
    assert "black.png: no face found" in by_code["no-face"][0].message
    absent, added = by_code["stale"]
    assert "1 listed file(s)" in absent.message and "gone.png" in absent.message
    assert "2 image(s) not in its name list (black.png, new.png)" in added.message


@needs_symlinks
def test_an_image_linked_out_of_its_folder_is_embedded_and_announced(tmp_path, fake):
    ds = tmp_path / "ds"
    _png(ds / "A" / "a.png", 1)
    os.symlink(_png(tmp_path / "elsewhere" / "x.png", 2), ds / "A" / "x.png")
    _png(ds / "B" / "b.png", 3)
    s = session(tmp_path, ds, embedder=fake)
    v = s.findings().verdicts["A"]
    (p,) = v.problems
    assert p.code == "outside-folder" and not p.fatal and p.file == "A/x.png" and v.vectors == 2
