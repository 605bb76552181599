"""Check `leakage`: faces and people of the dataset that are also in another one (--against)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import faiss  # noqa: F401  - before pytester's sys.modules snapshot (see test_plugin.py)
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from dataset_checks.checks import AgainstData, CheckData, CheckSettings
from dataset_checks.checks.leakage import Leakage, cross_pairs, dataset_names
from dataset_checks.discover import Identity
from dataset_checks.rules import Rules, default_settings
from dataset_checks.vectors import VectorTable
from helpers import family_outcomes, clustered, tree_state, unit_rows, write_face01

PKG = str(Path(__file__).resolve().parents[1] / "dataset_checks")
LFW = Path(__file__).resolve().parents[1].parent / "shared" / "lfw"
needs_lfw = pytest.mark.skipif(not LFW.is_dir(), reason=f"real faces not available: {LFW} is absent")


def _table(root: Path, vectors: np.ndarray, owner: np.ndarray, n_ids: int) -> VectorTable:
    ids = [Identity(f"id{k}", root / f"id{k}") for k in range(n_ids)]
    return VectorTable(root=root, identities=ids, identity_of=np.asarray(owner, np.int32),
                       files=[f"f{r}.jpg" for r in range(len(vectors))],
                       vectors=np.ascontiguousarray(vectors, np.float32), key="x", problems={},
                       counts=np.bincount(owner, minlength=n_ids))


def _data(a: VectorTable, others: list[VectorTable], threshold: float) -> CheckData:
    return CheckData(root=a.root, rules=Rules(), identities=a.identities, table=a, pairs=None, threshold=threshold,
                     against=[AgainstData(o.root, o.identities, o) for o in others])


def _face_settings(**params) -> CheckSettings:
    base = default_settings(Leakage)
    return CheckSettings(True, "fail", {**base.params, "overlap": False, **params})


# -- exactness: the cross-dataset search equals brute force --------------------------------------

@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), na=st.integers(0, 60), nb=st.integers(0, 60), dim=st.sampled_from([2, 3, 8, 32]),
       threshold=st.floats(-0.5, 0.999), dup=st.integers(0, 5))
def test_face_pairs_equal_brute_force(seed, na, nb, dim, threshold, dup):
    rng = np.random.default_rng(seed)
    a = unit_rows(rng.standard_normal((na, dim))) if na else np.zeros((0, dim))
    b = unit_rows(rng.standard_normal((nb, dim))) if nb else np.zeros((0, dim))
    if na and nb:  # planted copies and near-copies sit right at the threshold
        for k in range(min(dup, na)):
            b[rng.integers(nb)] = a[k]
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    i, j, s = cross_pairs(a32, b32, threshold)
    sims = a32.astype(np.float64) @ b32.astype(np.float64).T
    want = {(int(x), int(y)) for x, y in zip(*np.nonzero(sims >= threshold))}
    got = set(zip(i.tolist(), j.tolist()))
    # a pair within float64 rounding of the threshold may go either way; everything else must agree
    edge = {(x, y) for x, y in want ^ got if abs(sims[x, y] - threshold) < 1e-12}
    assert want ^ got == edge
    assert np.allclose(s, sims[i, j], atol=1e-12) and np.all(np.diff(s) <= 0)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), threshold=st.floats(0.3, 0.95))
def test_run_issues_equal_brute_force_over_two_other_datasets(seed, threshold):
    rng = np.random.default_rng(seed)
    a = unit_rows(rng.standard_normal((40, 6))).astype(np.float32)
    others = [unit_rows(rng.standard_normal((n, 6))).astype(np.float32) for n in (30, 25)]
    ta = _table(Path("/A"), a, rng.integers(0, 7, 40), 7)
    tos = [_table(Path(f"/x{k}/B"), o, rng.integers(0, 5, len(o)), 5) for k, o in enumerate(others)]
    issues = Leakage().run(_data(ta, tos, threshold), _face_settings())
    got = {(x.identity, x.file, x.other_identity, x.other_file) for x in issues}
    want = set()
    for name, t in zip(("x0/B", "x1/B"), tos):
        sims = a.astype(np.float64) @ t.vectors.astype(np.float64).T
        for r, c in zip(*np.nonzero(sims >= threshold)):
            want.add((ta.identities[ta.identity_of[r]].name, ta.files[r], f"{name}/{t.identities[t.identity_of[c]].name}",
                      t.files[c]))
    assert got == want
    assert all(x.severity == "fail" and x.file for x in issues)


def test_nothing_to_compare_returns_nothing():
    t = _table(Path("/A"), np.eye(3, dtype=np.float32), np.array([0, 1, 2]), 3)
    check = Leakage()
    assert check.run(_data(t, [], 0.5), default_settings(Leakage)) == []
    assert "nothing to compare" in check.report_html()


def test_dataset_names_are_unique_tails():
    assert dataset_names([Path("/d/lfw"), Path("/e/val")]) == ["lfw", "val"]
    assert dataset_names([Path("/d/a/test"), Path("/d/b/test")]) == ["a/test", "b/test"]
    assert dataset_names([Path("/d/lfw"), Path("/d/lfw")]) == ["lfw#1", "lfw#2"]


def test_same_person_without_a_close_face_is_an_overlap_issue():
    rng = np.random.default_rng(5)
    dim = 256
    own = clustered(rng, [6] * 40, dim, intra=0.5)
    theirs = clustered(rng, [6] * 30, dim, intra=0.5)
    # their folder 3 is our folder 7's person, photographed anew (no face copied)
    centre = own[7].mean(axis=0)
    theirs[3] = centre / np.linalg.norm(centre) + rng.standard_normal((6, dim)) / np.sqrt(dim)
    a, b = unit_rows(np.concatenate(own)).astype(np.float32), unit_rows(np.concatenate(theirs)).astype(np.float32)
    ta = _table(Path("/A"), a, np.repeat(np.arange(40), 6), 40)
    tb = _table(Path("/B"), b, np.repeat(np.arange(30), 6), 30)
    sims = a.astype(np.float64) @ b.T.astype(np.float64)
    threshold = float(sims.max()) + 0.01  # no face pair at all: only the folder means can tell
    check = Leakage()
    issues = check.run(_data(ta, [tb], threshold), default_settings(Leakage))
    assert [(i.identity, i.file, i.other_identity, i.severity) for i in issues] == [("id7", "", "B/id3", "warn")]
    assert "same person as B/id3" in issues[0].detail
    facts = check.summary()["against"][0]
    assert facts["overlaps"] == 1 and facts["face_pairs"] == 0 and facts["overlap_level"] >= 0.5


# -- end to end through pytest -----------------------------------------------------------------

def _run(pytester, data, *args):
    return pytester.inline_run(PKG, "-p", "no:cacheprovider", "--report-dir", "out", "--dataset", str(data),
                               "--threshold", "0.9", *args)




@pytest.fixture
def two(pytester):
    rng = np.random.default_rng(11)
    vecs = clustered(rng, [3, 3, 3, 3], 32, intra=0.6)
    train, bench = pytester.path / "train", pytester.path / "bench"
    for name, v in zip(("Ann", "Ben", "Cy"), vecs):
        write_face01(train, name, v)
    write_face01(bench, "Zed", vecs[3])
    write_face01(bench, "Ann_B", np.concatenate([vecs[0][:1], vecs[3][:1]]), files=["copy.jpg", "z.jpg"])
    return train, bench


def test_against_fails_the_leaking_identity_and_writes_nothing_there(pytester, two):
    train, bench = two
    before = (tree_state(train), tree_state(bench))
    rec = _run(pytester, train, "--against", str(bench))
    assert family_outcomes(rec, "test_leakage") == {"Ann": "failed", "2 other identities": "passed"}
    assert (tree_state(train), tree_state(bench)) == before
    out = pytester.path / "out"
    with open(out / "leakage.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0][4] == "similarity"
    assert [r[:4] for r in rows[1:]] == [["Ann", "Ann_0001.jpg", "bench/Ann_B", "copy.jpg"]]
    doc = json.loads((out / "findings.json").read_text(encoding="utf-8"))
    assert doc["checks"]["leakage"]["summary"]["against"][0]["face_pairs"] == 1
    assert "bench/Ann_B" in (out / "report.html").read_text(encoding="utf-8")
    # the other dataset's folders are not tests of this run
    assert "Zed" not in family_outcomes(rec, "test_identity")


def test_rules_against_and_baseline_key(pytester, two):
    train, bench = two
    rules = pytester.path / "r.yaml"
    rules.write_text(f"against:\n  - {bench}\n", encoding="utf-8")
    base = pytester.path / "gate" / "baseline.csv"
    rec = _run(pytester, train, "--rules", str(rules), "--baseline", str(base), "--update-baseline")
    assert rec.ret == pytest.ExitCode.OK
    assert "leakage,Ann,Ann_0001.jpg,bench/Ann_B,copy.jpg" in base.read_text(encoding="utf-8")
    rec = _run(pytester, train, "--rules", str(rules), "--baseline", str(base))
    assert family_outcomes(rec, "test_leakage")["Ann"] == "passed"


def test_without_against_there_is_no_family(pytester, two):
    train, _ = two
    rec = _run(pytester, train)
    assert family_outcomes(rec, "test_leakage") == {} and set(family_outcomes(rec, "test_identity").values()) == {"passed"}


def test_other_model_is_a_clear_error(pytester, two):
    train, bench = two
    other = pytester.path / "dlibbench"
    write_face01(other, "Q", np.ones((2, 128), np.float32), key="dlib")
    rec = _run(pytester, train, "--against", str(other))
    # the leakage family fails saying so; the dataset itself was checked
    reps = [r for r in rec.getreports("pytest_runtest_logreport") if r.when == "call" and "test_leakage" in r.nodeid]
    assert reps and all(r.failed for r in reps)
    assert "dlibbench" in reps[0].longreprtext and "same model" in reps[0].longreprtext
    assert set(family_outcomes(rec, "test_identity").values()) == {"passed"}


def test_outputs_and_overlap_with_the_dataset_are_refused(pytester, two):
    train, bench = two
    result = pytester.runpytest_inprocess(PKG, "-p", "no:cacheprovider", "--dataset", str(train), "--against",
                                          str(bench), "--report-dir", str(bench / "out"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR and "bench" in "\n".join(result.errlines)
    result = pytester.runpytest_inprocess(PKG, "-p", "no:cacheprovider", "--dataset", str(train), "--against",
                                          str(train / "Ann"), "--report-dir", "out")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert not (bench / "out").exists()


FAKE = '''
import numpy as np

def embed(images):
    return [np.array([im[..., c].mean() - 127.0 for c in range(3)] + [1.0], np.float32) for im in images]

embed.model_name = "fake"
embed.model_version = "1"
'''


def test_image_only_other_dataset_is_embedded_with_our_embedder(pytester, monkeypatch):
    from PIL import Image

    mods = pytester.path / "mods"
    mods.mkdir()
    (mods / "fakeleak.py").write_text(FAKE)
    monkeypatch.syspath_prepend(str(mods))
    colours = {"Red": (250, 10, 10), "Green": (10, 250, 10), "Blue": (10, 10, 250)}
    train, bench = pytester.path / "train", pytester.path / "bench"
    for name, c in colours.items():
        (train / name).mkdir(parents=True)
        Image.new("RGB", (32, 32), c).save(train / name / "a.png")
    (bench / "Rot").mkdir(parents=True)
    Image.new("RGB", (32, 32), (250, 12, 10)).save(bench / "Rot" / "x.png")
    rules = pytester.path / "r.yaml"
    rules.write_text(f"embedder: fakeleak:embed\nembeddings:\n  workers: 1\n  cache: {pytester.path / 'cache'}\n",
                     encoding="utf-8")
    before = tree_state(bench)
    rec = _run(pytester, train, "--rules", str(rules), "--against", str(bench), "--threshold", "0.999")
    assert family_outcomes(rec, "test_leakage") == {"Red": "failed", "2 other identities": "passed"}
    assert tree_state(bench) == before


# -- real faces: two halves of LFW ------------------------------------------------------------

@needs_lfw
def test_lfw_halves_planted_copies_and_people_are_found(tmp_path):
    from dataset_checks.discover import discover_identities
    from dataset_checks.vectors import load_table

    folders = sorted(p.name for p in LFW.iterdir() if (p / "npKnown.npz").is_file())
    rng = np.random.default_rng(0)
    chosen = sorted(rng.choice(folders, 400, replace=False).tolist())
    half_a, half_b = chosen[::2], chosen[1::2]
    a, b = tmp_path / "a", tmp_path / "b"
    for root, names in ((a, half_a), (b, half_b)):
        for n in names:
            (root / n).mkdir(parents=True)
            shutil.copy(LFW / n / "npKnown.npz", root / n / "npKnown.npz")
    # plant: a folder of A copied whole into B under a new name; a multi-face folder split in two
    # dlib's folder means separate people only when they average many faces: split the richest
    rich = sorted(half_a, key=lambda n: -len(np.load(LFW / n / "npKnown.npz")["name"]))
    split, copied = rich[0], rich[1]
    shutil.copytree(a / copied, b / "renamed_copy")
    d = np.load(LFW / split / "npKnown.npz")
    k = len(d["name"]) // 2
    write_face01(a, split, d["dlib"][:k], files=list(d["name"][:k]), key="dlib")
    write_face01(b, "split_other_half", d["dlib"][k:], files=list(d["name"][k:]), key="dlib")
    tables = [load_table(r, discover_identities(r), "dlib") for r in (a, b)]
    check = Leakage()
    issues = check.run(_data(tables[0], [tables[1]], 0.95), default_settings(Leakage))
    faces = {(i.identity, i.other_identity) for i in issues if i.file}
    people = {(i.identity, i.other_identity) for i in issues if not i.file}
    print(check.summary(), sorted(faces | people))
    assert (copied, "b/renamed_copy") in faces
    assert (split, "b/split_other_half") in people
