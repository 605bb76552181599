"""From images to embeddings: cache, pool, plugged embedders, stale files, dlib on real faces.

Tests marked `needs_dlib` run only with the [faces] extra installed; `needs_lfw` ones only where
../shared/lfw exists. Everything else uses a tiny plugged embedder written into tmp_path.
"""

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataset_checks.embed import embed_images, get_embedder, list_images, prepare
from dataset_checks.embed.cache import Cache
from dataset_checks.embed.models import EmbedderUnavailable, dlib_model_dir
from dataset_checks.rules import RulesError, parse_rules
from dataset_checks.session import CheckSession
from dataset_checks.vectors import centre_vectors

LFW = Path(__file__).resolve().parents[1].parent / "shared" / "lfw"
PKG = str(Path(__file__).resolve().parents[1] / "dataset_checks")
HAVE_DLIB = importlib.util.find_spec("dlib") is not None and importlib.util.find_spec("face_recognition_models") is not None
needs_dlib = pytest.mark.skipif(not HAVE_DLIB, reason="dlib is not installed (pip install 'dataset-checks[faces]')")
needs_lfw = pytest.mark.skipif(not LFW.is_dir(), reason=f"real faces not available: {LFW} is absent")

FAKE = '''
import numpy as np

def embed(images):
    """Test embedder: 4x4 grid of grey means. Black: no face; mostly blue: two faces."""
    out = []
    for im in images:
        mean = im.reshape(-1, 3).mean(axis=0)
        if mean.sum() < 5:
            out.append(None)
            continue
        h, w = im.shape[:2]
        v = np.array([im[i * h // 4:(i + 1) * h // 4, j * w // 4:(j + 1) * w // 4].mean()
                      for i in range(4) for j in range(4)], dtype=np.float32) - 127.0
        out.append(np.stack([v, v[::-1]]) if mean[2] > 150 and mean[0] < 50 else v)
    return out

embed.model_name = "fake"
embed.model_version = "1"
'''


@pytest.fixture
def fake(tmp_path, monkeypatch):
    mod = tmp_path / "mods"
    mod.mkdir()
    (mod / "fakeemb.py").write_text(FAKE)
    monkeypatch.syspath_prepend(str(mod))
    return "fakeemb:embed"


def _png(path: Path, seed: int, colour=None, size=64):
    rng = np.random.default_rng(seed)
    if colour is None:  # coarse random blocks: each seed gives a clearly different picture
        arr = np.kron(rng.integers(0, 255, (4, 4, 3)), np.ones((-(-size // 4), -(-size // 4), 1)))[:size, :size]
        arr = arr.astype(np.uint8)
    else:
        arr = np.full((size, size, 3), colour, np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# -- cache and pool ---------------------------------------------------------------------------


def test_cache_second_run_embeds_nothing_three_new_embeds_three(tmp_path, fake):
    emb = get_embedder(fake)
    paths = [_png(tmp_path / "ds" / "A" / f"{i}.png", i) for i in range(4)]
    cache = tmp_path / "cache"
    first, s1 = embed_images(paths, emb, cache, workers=1)
    assert s1.embedded == 4 and s1.cached == 0
    again, s2 = embed_images(paths, emb, cache, workers=1)
    assert s2.embedded == 0 and s2.cached == 4
    assert all(np.array_equal(first[p].vector, again[p].vector) for p in paths)
    paths += [_png(tmp_path / "ds" / "A" / f"{i}.png", i) for i in range(10, 13)]
    _, s3 = embed_images(paths, emb, cache, workers=1)
    assert s3.embedded == 3 and s3.cached == 4
    assert not list(cache.rglob("*.tmp"))  # atomic writes leave no temporaries
    assert (cache / "CACHEDIR.TAG").is_file()


def test_copies_are_embedded_once(tmp_path, fake):
    a = _png(tmp_path / "A" / "x.png", 1)
    b = tmp_path / "B" / "x.png"
    b.parent.mkdir()
    shutil.copy(a, b)
    entries, stats = embed_images([a, b], get_embedder(fake), tmp_path / "c", workers=1)
    assert stats.unique == 1 and stats.embedded == 1
    assert np.array_equal(entries[a].vector, entries[b].vector)


@pytest.mark.parametrize("damage", ["garbage", "truncate", "tamper"])
def test_corrupt_cache_entry_is_detected_and_recomputed(tmp_path, fake, damage):
    emb = get_embedder(fake)
    p = _png(tmp_path / "A" / "x.png", 3)
    cache = tmp_path / "c"
    good, _ = embed_images([p], emb, cache, workers=1)
    (entry,) = list(cache.rglob("*.npz"))
    if damage == "garbage":
        entry.write_bytes(b"\x00" * 100)
    elif damage == "truncate":
        entry.write_bytes(entry.read_bytes()[:150])
    else:  # a well-formed archive whose vector no longer matches its checksum
        with np.load(entry) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["vector"] = arrays["vector"] + 1
        np.savez(entry, **arrays)
    again, stats = embed_images([p], emb, cache, workers=1)
    assert stats.corrupt_cache == [str(entry)] and stats.embedded == 1
    assert np.array_equal(again[p].vector, good[p].vector)
    assert Cache(cache, emb.slug, emb.model_id).get(next(iter([entry.stem]))) is not None  # rewritten


def test_process_pool_gives_the_same_vectors(tmp_path, fake):
    emb = get_embedder(fake)
    paths = [_png(tmp_path / "A" / f"{i}.png", i) for i in range(8)]
    seq, _ = embed_images(paths, emb, tmp_path / "c1", workers=1)
    bars = []

    def progress(**kw):
        from tqdm import tqdm

        bars.append(kw)
        return tqdm(disable=True, **kw)

    par, stats = embed_images(paths, emb, tmp_path / "c2", workers=2, progress=progress)
    assert stats.workers == 2
    assert bars and bars[0]["total"] == 8 and bars[0]["unit"] == "img"
    assert all(np.array_equal(seq[p].vector, par[p].vector) for p in paths)


def test_models_are_cached_apart(tmp_path, fake):
    p = _png(tmp_path / "A" / "x.png", 1)
    emb = get_embedder(fake)
    embed_images([p], emb, tmp_path / "c", workers=1)
    other = type(emb)(spec=emb.spec, name=emb.name, version="2")
    _, stats = embed_images([p], other, tmp_path / "c", workers=1)
    assert stats.embedded == 1  # a new model version never reuses the old vectors


# -- plugged embedders, rules ----------------------------------------------------------------


def test_embedder_spec_errors_are_clear(fake):
    with pytest.raises(EmbedderUnavailable, match="cannot import"):
        get_embedder("no_such_module_here:embed")
    with pytest.raises(EmbedderUnavailable, match="no attribute"):
        get_embedder("fakeemb:missing")
    info = get_embedder(fake)
    assert (info.name, info.version) == ("fake", "1")


def test_rules_embedding_keys(tmp_path):
    r = parse_rules({"embedder": "pkg.mod:fn", "threshold": "auto",
                     "embeddings": {"centre": True, "cache": "cachehere", "workers": 3}}, tmp_path / "rules.yaml")
    assert r.embedder == "pkg.mod:fn" and r.threshold_auto and r.centre and r.embed_workers == 3
    assert r.cache_dir == (tmp_path / "cachehere").resolve()
    assert parse_rules({}).embedder == "dlib" and parse_rules({}).threshold_auto
    for bad in ({"embedder": "not a spec"}, {"embeddings": {"centre": "yes"}}, {"threshold": "high"}):
        with pytest.raises(RulesError):
            parse_rules(bad)


def test_centre_vectors():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 16)) + 5
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    c = centre_vectors(x.astype(np.float32))
    assert np.allclose(np.linalg.norm(c, axis=1), 1, atol=1e-5)
    assert float((x @ x.T).mean()) > 0.9 and abs(float((c @ c.T).mean())) < 0.05


def _session(tmp_path, root, **rules):
    s = CheckSession(parse_rules({"dataset": str(root), **rules}, tmp_path / "rules.yaml"), report_dir=None,
                     progress=False)
    s.cache_root = tmp_path
    return s


def test_session_with_plugged_embedder_and_face_problems(tmp_path, fake):
    ds = tmp_path / "ds"
    for i in range(3):
        _png(ds / "A" / f"a{i}.png", i)
        _png(ds / "B" / f"a{i}.png", i)  # the same images filed under another identity
        _png(ds / "C" / f"c{i}.png", 100 + i)
    _png(ds / "C" / "black.png", 0, colour=(0, 0, 0))  # no face
    _png(ds / "C" / "blue.png", 0, colour=(0, 0, 255))  # two faces
    (ds / "C" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    _png(ds / "C" / "tiny.png", 0, size=6)
    before = _tree(ds)
    s = _session(tmp_path, ds, embedder=fake, threshold=0.999)
    assert [i.name for i in s.image_identities()] == ["A", "B", "C"]
    f = s.findings()
    assert f.verdicts["A"].status == "fail" and f.verdicts["B"].status == "fail"
    assert f.verdicts["C"].status == "pass" and f.verdicts["C"].vectors == 4  # 3 + the blue one
    report = s.faces_report("C")
    problems = {o.file: o.problem for o in report.problems}
    assert problems["black.png"] == "no face found"
    assert problems["blue.png"].startswith("2 faces found")
    assert "unreadable" in problems["broken.jpg"] and "too small" in problems["tiny.png"]
    assert not s.faces_report("A").problems
    assert f.metadata["embedding"]["model"] == "fake" and f.metadata["embedding"]["embedded"] == 10  # 13 files, 10 contents
    assert "C" in f.metadata["faces"]
    assert _tree(ds) == before  # nothing written into the dataset
    assert (tmp_path / ".dataset_checks_cache").is_dir()
    s2 = _session(tmp_path, ds, embedder=fake, threshold=0.999)
    s2.findings()
    assert s2.embedding["embedded"] == 0 and s2.embedding["cached"] == 10


def test_two_models_are_never_compared(tmp_path, fake):
    ds = tmp_path / "ds"
    for name in ("P", "Q"):
        (ds / name).mkdir(parents=True)
        np.savez(ds / name / "npKnown.npz", name=np.array(["x.jpg", "y.jpg"]),
                 efficientnetv2_arcface=np.random.default_rng(1).normal(size=(2, 512)).astype(np.float32))
    _png(ds / "R" / "r.png", 5)
    s = _session(tmp_path, ds, embedder=fake)
    v = s.findings().verdicts["R"]
    assert v.status == "error"
    text = v.message()
    assert "R" in text and "fake" in text and "efficientnetv2_arcface" in text and "never compared" in text


def test_stale_face01_file_without_matching_embedder_warns_and_checks_the_rest(tmp_path, fake):
    ds = tmp_path / "ds"
    _png(ds / "S" / "a.png", 1)
    _png(ds / "S" / "new.png", 2)
    np.savez(ds / "S" / "npKnown.npz", name=np.array(["a.png", "gone.png"]),
             dlib=np.random.default_rng(0).normal(size=(2, 128)).astype(np.float32))
    _png(ds / "T" / "t.png", 3)
    np.savez(ds / "T" / "npKnown.npz", name=np.array(["t.png"]),
             dlib=np.random.default_rng(1).normal(size=(1, 128)).astype(np.float32))
    s = _session(tmp_path, ds, embedder=fake)
    assert s.image_identities() == []  # folders with an embeddings file have no test_faces_detected
    v = s.findings().verdicts["S"]
    assert v.vectors == 2  # gone.png's vector is kept (the file records it); new.png: another model
    by_code = {p.code: p for p in v.problems}
    # a FACE01 npKnown.npz that does not list an image: FACE01 found no face in it (issue 21); the
    # listed vectors are checked and the image is named, never embedded with another model
    assert set(by_code) == {"stale", "not-in-npz"}
    assert not by_code["stale"].fatal and "gone.png" in by_code["stale"].message
    assert "still checked" in by_code["stale"].message
    assert not by_code["not-in-npz"].fatal and "new.png" in by_code["not-in-npz"].message
    assert "the embedder makes 'fake' vectors and this file holds 'dlib'" in by_code["not-in-npz"].message
    assert v.status == "pass"
    assert s.findings().verdicts["T"].status == "pass" and not s.findings().verdicts["T"].problems


def test_missing_embedder_is_reported_not_raised(tmp_path):
    ds = tmp_path / "ds"
    _png(ds / "A" / "a.png", 1)
    s = _session(tmp_path, ds, embedder="no_such_module_here:embed")
    v = s.findings().verdicts["A"]
    assert v.status == "error" and "no_such_module_here" in v.message()
    assert "no_such_module_here" in s.faces_report("A").message()


def test_cache_is_never_inside_the_dataset(tmp_path):
    ds = tmp_path / "ds"
    ds.mkdir()
    s = _session(tmp_path, ds)
    s.cache_root = ds
    assert ds not in s.cache_dir.parents


# -- dlib on real faces ----------------------------------------------------------------------


def _lfw_images(n: int) -> list[Path]:
    out = []
    for folder in ("Aaron_Eckhart", "Abba_Eban", "AJ_Cook", "Aaron_Peirsol"):
        out += list_images(LFW / folder)
    return out[:n]


@needs_dlib
def test_dlib_models_found_without_pkg_resources():
    folder = dlib_model_dir()
    assert (folder / "dlib_face_recognition_resnet_model_v1.dat").is_file()
    info = get_embedder("dlib")
    assert info.name == "dlib" and "dlib" in info.version and info.default_threshold == 0.95


@needs_dlib
@needs_lfw
def test_dlib_vectors_equal_the_shared_lfw_vectors(tmp_path):
    paths = _lfw_images(3)
    entries, stats = embed_images(paths, get_embedder("dlib"), tmp_path / "c", workers=1)
    for p in paths:
        with np.load(p.parent / "npKnown.npz") as z:
            ref = z["dlib"][list(z["name"]).index(p.name)]
        assert entries[p].faces == 1
        assert np.abs(entries[p].vector - ref).max() < 1e-4


@needs_dlib
@needs_lfw
def test_dlib_no_face_and_two_faces(tmp_path):
    a, b = (np.asarray(Image.open(p).convert("RGB")) for p in _lfw_images(2))
    _png(tmp_path / "ds" / "X" / "blank.png", 0, colour=(120, 120, 120), size=120)
    Image.fromarray(np.concatenate([a, b], axis=1)).save(tmp_path / "ds" / "X" / "pair.jpg")
    paths = list_images(tmp_path / "ds" / "X")
    entries, _ = embed_images(paths, get_embedder("dlib"), tmp_path / "c", workers=1)
    by = {p.name: e for p, e in entries.items()}
    assert by["blank.png"].faces == 0 and by["blank.png"].vector is None
    assert by["pair.jpg"].faces == 2 and by["pair.jpg"].vector is not None


@needs_dlib
@needs_lfw
def test_stale_face01_file_gets_fresh_dlib_vectors(tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(LFW / "AJ_Cook", ds / "AJ_Cook")
    new = next(iter(list_images(LFW / "Aaron_Eckhart")))
    shutil.copy(new, ds / "AJ_Cook" / new.name)
    ident = [i for i in __import__("dataset_checks.discover", fromlist=["x"]).discover_identities(ds)]
    prep = prepare(ds, ident, None, "dlib", tmp_path / "c", workers=1)
    (fv,) = prep.folders
    assert fv.names == ["AJ_Cook_0001.jpg", new.name]
    with np.load(LFW / "Aaron_Eckhart" / "npKnown.npz") as z:
        ref = z["dlib"][list(z["name"]).index(new.name)]
    assert np.abs(fv.arrays["dlib"][1] - ref).max() < 1e-4
    assert any("stale" in p.message and not p.fatal for p in fv.problems)


@needs_dlib
@needs_lfw
def test_end_to_end_copies_in_two_folders_are_found(pytester):
    ds = pytester.path / "faces"
    imgs = _lfw_images(4)
    for folder in ("Person_A", "Person_A_again"):
        (ds / folder).mkdir(parents=True)
        for p in imgs[:2]:
            shutil.copy(p, ds / folder / p.name)
    (ds / "Someone_Else").mkdir()
    shutil.copy(imgs[3], ds / "Someone_Else" / imgs[3].name)
    (ds / "Someone_Else" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    before = _tree(ds)
    pytester.makefile(".yaml", rules="threshold: auto\nembeddings:\n  workers: 1\n")
    args = ("dataset_checks", "--dataset", str(ds), "-p", "no:cacheprovider", "--report-dir", "out", "-p", "no:html")
    result = pytester.runpytest_subprocess(*args)
    # test_identity and test_exact_duplicates fail both folders (the same photo), faces one
    result.assert_outcomes(failed=5, passed=result.parseoutcomes()["passed"])
    assert "test_exact_duplicates[Person_A]" in result.stdout.str()
    result.stdout.fnmatch_lines(["*FAILED*test_identity?Person_A?*", "*FAILED*test_identity?Person_A_again?*",
                                 "*FAILED*test_faces_detected?Someone_Else?*"])
    assert "corrupt.jpg: unreadable" in result.stdout.str()
    doc = json.loads((pytester.path / "out" / "findings.json").read_text())
    assert doc["threshold"] == 0.95 and doc["embedding"]["embedded"] == 4  # 6 files, 4 contents
    assert _tree(ds) == before
    again = pytester.runpytest_subprocess(*args)
    again.assert_outcomes(failed=5, passed=result.parseoutcomes()["passed"])
    doc = json.loads((pytester.path / "out" / "findings.json").read_text())
    assert doc["embedding"]["embedded"] == 0 and doc["embedding"]["cached"] == 4
