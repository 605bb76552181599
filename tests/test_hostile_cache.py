"""A cache that cannot be trusted or cannot be written (issue 19: 4c, 4d, 8).

* A face copied into another folder by rewriting its archive in place (same size, same inode,
  the old mtime set back with utime) is found on the same cache, incremental or `--full`: a
  folder's listing holds the ctime (which utime cannot set back), the device and the archive's
  own checksums (its zip central directory).
* `--full` trusts nothing in the cache: a forged table row, forged stored pairs or keys (their
  digests recomputed, as an attacker would) or a forged embedding; it finds what a run on a fresh
  cache finds and leaves the same state. (An incremental run trusts what the cache holds: that
  is the documented trust model, asserted here so that a change to it is seen.)
* A full disk (or a quota, a read-only file system, no permission) under the cache: the run
  goes on in memory, checks every identity, finds what a normal run finds, says so once, and
  leaves no staging folder; staging folders of killed runs are removed, those of live runs and
  anything else are not.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from dataset_checks import table_store
from dataset_checks.discover import discover_identities
from dataset_checks.folderscan import scan_folder, zip_index
from dataset_checks.rules import parse_rules
from dataset_checks.run import Pipeline
from dataset_checks.search_state import load, row_keys, state_folder
from dataset_checks.table_store import dataset_folder

from helpers import ARC

DIM = 16


def _dataset(root: Path, seed: int, folders: int = 6, rows: int = 5) -> np.ndarray:
    """Folders of distinct people (no cross-folder pair at 0.9); returns the people's directions."""
    rng = np.random.default_rng(seed)
    people = np.linalg.qr(rng.standard_normal((DIM, DIM)))[0][:folders]  # orthonormal: far apart
    for k in range(folders):
        vecs = people[k] + 0.05 * rng.standard_normal((rows, DIM))
        _write(root / f"p{k}", [f"p{k}_{r:02d}.jpg" for r in range(rows)], vecs)
    return people


def _write(folder: Path, names: list[str], vecs: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "npKnown.npz", name=np.array(names, dtype=str), **{ARC: np.asarray(vecs, np.float32)})


def _archive_bytes(names: list[str], vecs: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, name=np.array(names, dtype=str), **{ARC: np.asarray(vecs, np.float32)})
    return buf.getvalue()


def _rules(**extra):
    return parse_rules({"threshold": 0.9, "incremental": {"max_changed": "100%"}, **extra}, None)


def _run(root: Path, cache: Path | None, full: bool = False, rules=None):
    pipeline = Pipeline(rules or _rules(), root, discover_identities(root), cache, full=full)
    return pipeline, pipeline.execute()


def _findings(result) -> dict:
    """What a run found: its pairs (faces by folder and file, float64 similarity), verdicts, issues."""
    t = result.table
    face = lambda r: (t.identities[t.identity_of[r]].name, t.files[r])  # noqa: E731
    s = result.search
    return {"pairs": sorted((face(i), face(j), sim) for i, j, sim in zip(s.i.tolist(), s.j.tolist(), s.sim.tolist())),
            "findings": result.findings.pairs,
            "verdicts": {n: (v.status, v.matches, [str(p) for p in v.problems])
                         for n, v in result.findings.verdicts.items()},
            "issues": [repr(i) for i in result.findings.issues],
            "rows": len(t)}


def _copy_in_place(root: Path, src: str, dst: str, row: int = 0) -> None:
    """Copy the first face of `src` over face `row` of `dst` by rewriting dst's archive in place:
    the same size, the same inode, its mtime (and atime) set back."""
    path = root / dst / "npKnown.npz"
    before = os.stat(path)
    with np.load(root / src / "npKnown.npz") as z:
        face = z[ARC][0]
    with np.load(path) as z:
        names, vecs = [str(n) for n in z["name"]], z[ARC].copy()
    vecs[row] = face
    data = _archive_bytes(names, vecs)
    assert len(data) == before.st_size
    with open(path, "r+b") as fp:
        fp.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_ino, after.st_mtime_ns) == (before.st_size, before.st_ino, before.st_mtime_ns)


# -- 4c: an in-place rewrite with its mtime set back ---------------------------------------------


@pytest.mark.parametrize("full", [False, True], ids=["incremental", "full"])
def test_a_face_copied_in_place_with_the_old_mtime_is_found_on_the_same_cache(tmp_path, full):
    root = tmp_path / "ds"
    _dataset(root, seed=11)
    cache = tmp_path / "cache"
    _, first = _run(root, cache)
    assert not first.findings.pairs  # distinct people: green
    _copy_in_place(root, "p1", "p4")
    pipeline, again = _run(root, cache, full=full)
    _, fresh = _run(root, tmp_path / "fresh-cache")
    assert {(p.identity, p.other_identity) for p in fresh.findings.pairs} == {("p1", "p4")}
    assert _findings(again) == _findings(fresh)
    assert pipeline.table_source in ("updated", "loaded")  # never the stored table as it was


def test_a_folder_listing_changes_with_the_archive_content_even_where_ctime_would_not(tmp_path):
    """The archive's own checksums alone tell the in-place rewrite (file systems whose ctime
    follows the mtime: some network and FUSE mounts)."""
    root = tmp_path / "ds"
    _dataset(root, seed=3, folders=2)
    before = scan_folder(root / "p1", "p1", stamps=True).stamps
    _copy_in_place(root, "p0", "p1")
    after = scan_folder(root / "p1", "p1", stamps=True).stamps
    # (name, size, mtime_ns, ctime_ns, inode, device, zip_index): all but ctime and the index equal
    (b,), (a,) = before, after
    assert (a[0], a[1], a[2], a[4], a[5]) == (b[0], b[1], b[2], b[4], b[5])
    assert a[6] != b[6]
    path = root / "p1" / "npKnown.npz"
    assert zip_index(str(path), path.stat().st_size) == a[6]  # the same bytes, the same index
    odd = tmp_path / "not-a-zip.npz"
    odd.write_bytes(b"x" * 10)
    assert zip_index(str(odd), 10) is not None and zip_index(str(tmp_path / "absent"), 0) is None


# -- 4d: --full trusts nothing in the cache --------------------------------------------------------


def _rewrite_state_array(folder: Path, name: str, arr: np.ndarray, doc_update: dict | None = None) -> None:
    """Replace one array of the stored state and recompute its size and digest in state.json."""
    path = folder / f"{name}.npy"
    np.save(path, arr, allow_pickle=False)
    doc = json.loads((folder / "state.json").read_text())
    doc["files"][name] = {"bytes": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    doc.update(doc_update or {})
    (folder / "state.json").write_text(json.dumps(doc))


def _forge(cache: Path, root: Path, result, what: str) -> None:
    """Hide the planted pair (p1's first face copied into p4) from a run that trusts the cache."""
    t = result.table
    names = [i.name for i in t.identities]
    row = next(r for r in range(len(t)) if names[t.identity_of[r]] == "p4" and t.files[r] == "p4_00.jpg")
    state = state_folder(cache, root)
    if what in ("table_row", "both"):
        # the row as the table holds it, replaced by another unit vector (the table has no digest)
        with open(dataset_folder(cache, root) / "vectors.f32", "r+b") as fp:
            other = np.zeros(t.dim, np.float32)
            other[-1] = 1.0
            fp.seek(row * t.dim * 4)
            fp.write(other.tobytes())
    if what in ("state_pairs", "both"):
        st = load(state)
        keep = (st.pair_i != row) & (st.pair_j != row)
        assert not keep.all()
        for name, arr in (("pair_i", st.pair_i), ("pair_j", st.pair_j), ("pair_sim", st.pair_sim)):
            _rewrite_state_array(state, name, arr[keep], {"pairs": int(keep.sum())})
    if what == "state_keys":
        # p4's copied row keyed as the face it replaced: a later run would take it for that face
        st = load(state)
        keys = st.keys.copy()
        keys[row] = row_keys(np.asarray(t.vectors[row + 1 : row + 2]))[0] ^ np.uint64(1)
        _rewrite_state_array(state, "keys", keys)


@pytest.mark.parametrize("what", ["table_row", "state_pairs", "state_keys", "both"])
def test_full_finds_what_a_fresh_cache_finds_whatever_was_forged_in_the_cache(tmp_path, what):
    root = tmp_path / "ds"
    _dataset(root, seed=5)
    _copy_in_place(root, "p1", "p4")
    cache = tmp_path / "cache"
    _, first = _run(root, cache)
    assert {(p.identity, p.other_identity) for p in first.findings.pairs} == {("p1", "p4")}
    _forge(cache, root, first, what)
    if what == "both":  # the trust model: an incremental run believes the cache and misses the pair
        pipeline, fooled = _run(root, cache)
        assert pipeline.incremental.record["mode"] == "incremental"
        assert not fooled.findings.pairs
    pipeline, full = _run(root, cache, full=True)
    assert pipeline.table_source == "loaded" and pipeline.incremental.record["reason"] == "--full"
    fresh_cache = tmp_path / "fresh-cache"
    _, fresh = _run(root, fresh_cache)
    assert _findings(full) == _findings(fresh)
    # and it leaves what a fresh cache holds: the next incremental run is right again
    mine, theirs = load(state_folder(cache, root)), load(state_folder(fresh_cache, root))
    for name in ("keys", "pair_i", "pair_j", "pair_sim"):
        assert np.array_equal(getattr(mine, name), getattr(theirs, name)), name
    assert (dataset_folder(cache, root) / "vectors.f32").read_bytes() == \
        (dataset_folder(fresh_cache, root) / "vectors.f32").read_bytes()
    pipeline, after = _run(root, cache)
    assert pipeline.incremental.record["mode"] == "incremental"
    assert _findings(after) == _findings(fresh)


EMBEDDER = '''
import numpy as np

def embed(images):
    return [np.array([im[..., c].mean() for c in range(3)] + [1.0], dtype=np.float32) for im in images]

embed.model_name = "hostile-cache-test"
embed.model_version = "1"
'''


def test_full_embeds_every_image_again_ignoring_a_forged_cache_entry(tmp_path, monkeypatch):
    from PIL import Image

    from dataset_checks.embed import embed_images, get_embedder
    from dataset_checks.embed.cache import Cache, Entry, file_hash

    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "hostile_cache_emb.py").write_text(EMBEDDER)
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    emb = get_embedder("hostile_cache_emb:embed")
    image = tmp_path / "A" / "a.png"
    image.parent.mkdir()
    Image.fromarray(np.full((8, 8, 3), (200, 10, 10), np.uint8)).save(image)
    cache = tmp_path / "cache"
    truth, _ = embed_images([image], emb, cache, workers=1)
    # an attacker's entry: any vector, its checksum recomputed by the cache's own code
    Cache(cache, emb.slug, emb.model_id).put(file_hash(image), Entry(np.ones(4, np.float32), 1))
    fooled, _ = embed_images([image], emb, cache, workers=1)
    assert np.array_equal(fooled[image].vector, np.ones(4, np.float32))  # the trust model
    again, stats = embed_images([image], emb, cache, workers=1, refresh=True)
    assert stats.embedded == 1 and stats.cached == 0
    assert np.array_equal(again[image].vector, truth[image].vector)
    after, _ = embed_images([image], emb, cache, workers=1)  # the entry was written anew
    assert np.array_equal(after[image].vector, truth[image].vector)


# -- 8: a full disk under the cache ------------------------------------------------------------------


class FullDisk:
    """Every write into `cache` fails with `code` once `room` bytes were written (midway), as a
    full disk, a quota or a read-only file system does: files opened for writing (mkstemp and
    fdopen: the table's rows, atomic writes), np.save and write_text to paths in the cache; with
    `no_folders`, new folders cannot be made there either."""

    def __init__(self, monkeypatch, cache: Path, code: int, room: int = 2000, no_folders: bool = False):
        self.cache, self.code, self.room = Path(cache), code, room
        self.fds: set[int] = set()
        self.failed = 0
        real_mkstemp, real_fdopen, real_save = tempfile.mkstemp, os.fdopen, np.save
        real_write_text, real_mkdtemp = Path.write_text, tempfile.mkdtemp
        disk = self

        def inside(path) -> bool:
            try:
                return Path(os.path.abspath(path)).is_relative_to(disk.cache)
            except TypeError:
                return False

        def mkstemp(*a, **k):
            fd, name = real_mkstemp(*a, **k)
            if inside(name):
                disk.fds.add(fd)
            return fd, name

        def fdopen(fd, mode="r", *a, **k):
            if fd not in disk.fds or not any(c in mode for c in "wax+"):
                return real_fdopen(fd, mode, *a, **k)
            disk.fds.discard(fd)
            raw = _Raw(fd, disk)
            buffered = io.BufferedWriter(raw)
            if "b" in mode:
                return buffered
            return io.TextIOWrapper(buffered, encoding=k.get("encoding") or "utf-8", newline=k.get("newline"))

        def save(file, arr, *a, **k):
            if isinstance(file, (str, os.PathLike)) and inside(file):
                buf = io.BytesIO()
                real_save(buf, arr, *a, **k)
                Path(file).write_bytes(buf.getvalue()[: disk.take(len(buf.getvalue()))])
                disk.fail()
            return real_save(file, arr, *a, **k)

        def write_text(self, data, *a, **k):
            if inside(self):
                real_write_text(self, data[: disk.take(len(data))], *a, **k)
                disk.fail()
            return real_write_text(self, data, *a, **k)

        def mkdtemp(*a, **k):
            if no_folders and inside(k.get("dir") or (a[2] if len(a) > 2 else "")):
                disk.fail()
            return real_mkdtemp(*a, **k)

        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
        monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
        monkeypatch.setattr(os, "fdopen", fdopen)
        monkeypatch.setattr(np, "save", save)
        monkeypatch.setattr(Path, "write_text", write_text)

    def take(self, n: int) -> int:
        n = min(n, self.room)
        self.room -= n
        return n

    def fail(self):
        self.failed += 1
        raise OSError(self.code, os.strerror(self.code))


class _Raw(io.FileIO):
    def __init__(self, fd: int, disk: FullDisk):
        super().__init__(fd, "wb", closefd=True)
        self.disk = disk

    def write(self, b):
        view = memoryview(b).cast("B")
        n = self.disk.take(len(view))
        if not n:
            self.disk.fail()
        return super().write(view[:n])


def _leftovers(cache: Path) -> list[str]:
    if not cache.exists():
        return []
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*")
                  if p.name.startswith((".staging-", "rows-", ".centred")) or p.name.endswith(".tmp"))


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES],
                         ids=["ENOSPC", "EDQUOT", "EROFS", "EACCES"])
@pytest.mark.parametrize("how", ["midway", "no_folders"])
def test_a_full_disk_under_the_cache_checks_every_identity_in_memory_and_says_so_once(tmp_path, monkeypatch,
                                                                                      code, how):
    root = tmp_path / "ds"
    _dataset(root, seed=7, folders=8, rows=12)  # 8 x 12 x 16 float32: 6 KB of rows, more than the room
    _copy_in_place(root, "p2", "p6")
    _, reference = _run(root, tmp_path / "healthy-cache")
    cache = tmp_path / "cache"
    disk = FullDisk(monkeypatch, cache, code, no_folders=how == "no_folders")
    for _attempt in range(2):  # each run on the full disk: the same, and nothing piles up
        pipeline, result = _run(root, cache)
        assert disk.failed
        assert _findings(result) == _findings(reference)
        assert len(result.table) == 8 * 12 and set(result.findings.verdicts) == {f"p{k}" for k in range(8)}
        assert {(p.identity, p.other_identity) for p in result.findings.pairs} == {("p2", "p6")}
        said = [n for n in pipeline.notes if "cache" in n]
        assert len(said) == 1, pipeline.notes
        assert "could not be written" in said[0] and "was not used" in said[0] and os.strerror(code) in said[0]
        assert _leftovers(cache) == []
    monkeypatch.undo()  # room again: the cache is used again
    pipeline, result = _run(root, cache)
    assert not [n for n in pipeline.notes if "cache" in n]
    assert _findings(result) == _findings(reference)


def test_staging_folders_of_killed_runs_are_removed_and_nothing_else(tmp_path):
    root = tmp_path / "ds"
    _dataset(root, seed=9, folders=3)
    cache = tmp_path / "cache"
    _run(root, cache)
    old = time.time() - 2 * table_store.ORPHAN_GRACE
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "keep.txt").write_text("not the cache's")
    held = []
    for parent in (cache / "tables", cache / "search_state"):
        # killed: an hour ago; killed_now: just before this run; no_owner_*: killed before it locked
        for name in ("killed", "killed_now", "live", "no_owner_old", "no_owner_new"):
            folder = parent / f".staging-{name}"
            folder.mkdir()
            (folder / "rows-8-x.f32").write_bytes(b"\0" * 64)
            if not name.startswith("no_owner"):
                (folder / ".owner").touch()
            if name == "live":  # a run still writing: it holds the lock
                fd = os.open(folder / ".owner", os.O_RDONLY)
                fcntl.flock(fd, fcntl.LOCK_EX)
                held.append(fd)
            if name not in ("killed_now", "no_owner_new"):
                os.utime(folder, (old, old))
        (parent / ".staging-link").symlink_to(outside, target_is_directory=True)
        (parent / "not-staging").mkdir()
    try:
        # a change: the table is written anew (tables/) and so is the state (search_state/)
        _write(root / "p9", ["a.jpg"], np.eye(DIM)[:1])
        pipeline, _ = _run(root, cache)
        for parent in (cache / "tables", cache / "search_state"):
            left = sorted(p.name for p in parent.iterdir() if p.name.startswith((".staging-", "not-")))
            assert left == [".staging-link", ".staging-live", ".staging-no_owner_new", "not-staging"], parent
        assert (outside / "keep.txt").read_text() == "not the cache's"
    finally:
        for fd in held:
            os.close(fd)
