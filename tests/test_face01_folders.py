"""Issue 21, items 1 and 2: FACE01 identity folders in the state FACE01 itself leaves them.

* Images FACE01 found no face in stay in the folder, unlisted in npKnown.npz (its move into
  noFace/ fails silently): one warning names them, the listed vectors are checked, and an
  embedder of another model never runs for them nor mixes its vectors into the file.
* Its duplicate finder moves near-identical photos into same_face/ without updating the npz (it
  also uses noFace/ and multipleFaces/): a listed name found there is resolved there (one note,
  thumbnails included), never "stale"; those subfolders are never identities. A listed name
  found nowhere stays a "stale" warning.

Every dataset is generated: FACE01's (N, 1, D) float32 arrays, real image files beside them.
"""

from __future__ import annotations

import json
from pathlib import Path

import faiss  # noqa: F401  - before pytester's sys.modules snapshot (see test_plugin.py)
import numpy as np
import pytest
from PIL import Image

from dataset_checks.checks import all_checks
from dataset_checks.discover import discover_identities
from dataset_checks.embed import folders as embed_folders
from dataset_checks.folderscan import scan_folder
from dataset_checks.rules import parse_rules
from dataset_checks.session import CheckSession
from dataset_checks.thumbnails import Thumbnails
from helpers import ARC, clustered, cross_identity_only, fake_embedder, family_outcomes, write_face01
from test_report import PKG

DIM = 64
THRESHOLD = 0.9  # generated faces of two people stay far below it; a planted copy far above



@pytest.fixture
def fakes(tmp_path, monkeypatch):
    """Plugged embedders (no dlib): one making 'fake' vectors, one making the file's own key."""
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "f2fake_other.py").write_text(fake_embedder("fake"))
    (mods / "f2fake_arc.py").write_text(fake_embedder(ARC))
    monkeypatch.syspath_prepend(str(mods))
    return {"other": "f2fake_other:embed", "own": "f2fake_arc:embed"}


def _image(path: Path, seed: int, black: bool = False) -> None:
    rng = np.random.default_rng(seed)
    arr = np.zeros((64, 64, 3), np.uint8) if black else np.kron(
        rng.integers(0, 255, (4, 4, 3)), np.ones((16, 16, 1))).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _face01(root: Path, name: str, vectors: np.ndarray, listed: list[str], images: dict[str, str],
            seed: int) -> None:
    """root/name/npKnown.npz as FACE01 writes it ((N, 1, D) float32 under `name`), and the image
    files: `images` maps a file name to where it lies ("" the folder, else a subfolder)."""
    write_face01(root, name, vectors, listed, shape_3d=True)
    for k, (file, where) in enumerate(images.items()):
        _image(root / name / where / file, seed * 100 + k)


def _names(name: str, n: int) -> list[str]:
    return [f"{name}_{k + 1:04d}.jpg" for k in range(n)]


def _dataset(root: Path, rng: np.random.Generator) -> dict[str, list[str]]:
    """The generated FACE01 folders, every state of items 1 and 2 (name -> its listed files):

    Clean: 6 images, all listed. NoFace2: 6 images, 4 listed (FACE01 found no face in 2).
    Planted: as NoFace2, and its listed 2nd face is a copy of Other's 3rd (a real error).
    SameOnly: 5 listed, 3 of them in same_face/. Moved: 7 listed, 3 in same_face/, 1 in noFace/,
    1 in multipleFaces/, 1 found nowhere. PlantedSame: 4 listed, 2 in same_face/, one of those a
    copy of Other2's 1st face. Top-level noFace/, same_face/, multipleFaces/: never identities."""
    sizes = {"Clean": 6, "NoFace2": 4, "Other": 5, "Other2": 4, "Planted": 4, "SameOnly": 5, "Moved": 7,
             "PlantedSame": 4}
    vecs = dict(zip(sizes, clustered(rng, sizes.values(), DIM)))
    vecs["Planted"][1] = vecs["Other"][2] + 0.01 * rng.standard_normal(DIM)
    vecs["PlantedSame"][0] = vecs["Other2"][0] + 0.01 * rng.standard_normal(DIM)
    listed = {name: _names(name, n) for name, n in sizes.items()}
    listed["Moved"][-1] = "Moved_gone.jpg"
    for seed, name in enumerate(sizes):
        files = listed[name]
        images = {f: "" for f in files}
        if name in ("NoFace2", "Planted"):
            images.update({f: "" for f in _names(name, 6)[4:]})  # FACE01 found no face in them
        elif name == "SameOnly":
            images.update({f: "same_face" for f in files[:3]})
        elif name == "Moved":
            images.update({f: "same_face" for f in files[:3]})
            images.update({files[3]: "noFace", files[4]: "multipleFaces"})
            del images["Moved_gone.jpg"]
        elif name == "PlantedSame":
            images.update({f: "same_face" for f in files[:2]})
        _face01(root, name, vecs[name], files, images, seed)
    for side in ("noFace", "same_face", "multipleFaces"):  # FACE01's own folders at the top level
        _image(root / side / "stray.jpg", 999)
    return listed


def _session(tmp_path: Path, root: Path, **rules) -> CheckSession:
    off = {c.name: {"enabled": False} for c in all_checks() if not c.builtin}  # test_identity's judgement only
    s = CheckSession(parse_rules({"dataset": str(root), "threshold": THRESHOLD, "checks": off,
                                  "embeddings": {"workers": 1}, **rules}, tmp_path / "rules.yaml"),
                     report_dir=None, progress=False)
    s.cache_root = tmp_path
    return s


def _by_code(problems) -> dict[str, list]:
    out: dict[str, list] = {}
    for p in problems:
        out.setdefault(p.code, []).append(p)
    return out


@pytest.fixture
def dataset(tmp_path, rng):
    root = tmp_path / "ds"
    return root, _dataset(root, rng)


# -- item 1: images FACE01 found no face in ------------------------------------------------------


@pytest.mark.parametrize("embedder", ["other", "unavailable", "dlib"])
def test_unlisted_images_are_one_warning_and_the_listed_faces_are_checked(tmp_path, dataset, fakes, monkeypatch,
                                                                          embedder):
    root, _ = dataset
    loaded = []
    real = embed_folders.get_embedder

    def spy(spec):
        loaded.append(spec)
        return real(spec)

    monkeypatch.setattr(embed_folders, "get_embedder", spy)
    spec = {"other": fakes["other"], "unavailable": "no_such_module_here:embed", "dlib": "dlib"}[embedder]
    s = _session(tmp_path, root, embedder=spec)
    f = s.findings()

    v = f.verdicts["NoFace2"]
    assert v.status == "pass" and v.vectors == 4  # checkable: its 4 listed faces are checked
    (p,) = v.problems
    assert p.code == "not-in-npz" and not p.fatal and p.file == "NoFace2/npKnown.npz"
    why = {"other": "the embedder makes 'fake' vectors and this file holds 'efficientnetv2_arcface'",
           "unavailable": "embedder unavailable: embedder 'no_such_module_here:embed': cannot import",
           "dlib": "the embedder makes 'dlib' vectors and this file holds 'efficientnetv2_arcface'"}[embedder]
    assert p.message.startswith("2 image(s) not in npKnown.npz (FACE01 found no face?): NoFace2_0005.jpg, "
                                f"NoFace2_0006.jpg; not checked ({why}")
    # the listed vectors are checked: the planted copy in a folder with unlisted images still fails
    planted = f.verdicts["Planted"]
    assert planted.status == "fail" and planted.input_status == "pass"
    assert [(m.file, m.other_identity, m.other_file) for m in planted.matches] == [
        ("Planted_0002.jpg", "Other", "Other_0003.jpg")]
    assert [p.code for p in planted.problems] == ["not-in-npz"]
    assert f.counts()["not_checkable"] == 0
    # another model never ran for them (nothing embedded, nothing cached), and built-in dlib is
    # never even loaded for a file of another key
    counts = dict(zip([i.name for i in s.table.identities], s.table.counts.tolist()))
    assert s.embedding == {} and s.table.key == ARC and counts["NoFace2"] == 4 and counts["Clean"] == 6
    assert not list(tmp_path.glob(".dataset_checks_cache/**/*.npz"))
    if embedder == "dlib":
        assert loaded == []
    thumbs = s.thumbnails()  # the report shows the planted pair's faces
    assert thumbs.data_uri("Planted", "Planted_0002.jpg") and thumbs.data_uri("Other", "Other_0003.jpg")


def test_the_warning_escapes_names_and_bounds_its_list(tmp_path, rng):
    root = tmp_path / "ds"
    a, b = clustered(rng, [2, 2], DIM)
    _face01(root, "A", a, _names("A", 2), {f: "" for f in _names("A", 2)}, 1)
    unlisted = ["evil\n\x1b[31mname.jpg"] + [f"z{k}.jpg" for k in range(7)]
    for k, name in enumerate(unlisted):
        _image(root / "A" / name, 50 + k)
    _face01(root, "B", b, _names("B", 2), {f: "" for f in _names("B", 2)}, 2)
    v = _session(tmp_path, root, embedder="dlib").findings().verdicts["A"]
    (p,) = v.problems
    assert v.status == "pass" and p.code == "not-in-npz" and "\n" not in p.message and "\x1b" not in p.message
    assert p.message.startswith("8 image(s) not in npKnown.npz (FACE01 found no face?): evil%0A%1B[31mname.jpg, "
                                "z0.jpg, z1.jpg, z2.jpg, z3.jpg, ... first 5 of 8 shown; not checked (")


def test_an_embedder_of_the_files_model_still_embeds_them(tmp_path, rng, fakes):
    """Today's behaviour where it is right: the embedder makes the file's key, so the unlisted
    images get fresh vectors (a 'stale' note), and the ones with no face are named."""
    root = tmp_path / "ds"
    (a, b) = clustered(rng, [4, 4], 16)
    _face01(root, "A", a, _names("A", 4), {f: "" for f in _names("A", 4)}, 1)
    _image(root / "A" / "A_0005.jpg", 77)
    _image(root / "A" / "A_0006.jpg", 0, black=True)
    _face01(root, "B", b, _names("B", 4), {f: "" for f in _names("B", 4)}, 2)
    s = _session(tmp_path, root, embedder=fakes["own"])
    v = s.findings().verdicts["A"]
    assert v.status == "pass" and v.vectors == 5
    codes = _by_code(v.problems)
    assert sorted(codes) == ["no-face", "stale"] and not any(p.fatal for p in v.problems)
    assert "2 image(s) not in its name list (A_0005.jpg, A_0006.jpg); fresh 'efficientnetv2_arcface' vectors" \
        in codes["stale"][0].message
    assert "A_0006.jpg: no face found" in codes["no-face"][0].message


def test_a_plain_embeddings_file_still_fails_unembedded_images(tmp_path, rng, fakes):
    """Only FACE01's file lists just the faces found: our own embeddings.npz missing an image
    still means an image went unchecked (tests/test_loading_gate.py holds the rest)."""
    from helpers import write_plain

    root = tmp_path / "ds"
    write_plain(root, "A", clustered(rng, [3], 16)[0])
    write_plain(root, "B", clustered(rng, [3], 16)[0])
    _image(root / "A" / "new.jpg", 5)
    v = _session(tmp_path, root, embedder=fakes["other"]).findings().verdicts["A"]
    assert v.status == "error" and [p.code for p in v.problems if p.fatal] == ["other-model"]


# -- item 2: listed faces in FACE01's subfolders --------------------------------------------------


def test_listed_faces_in_face01_subfolders_are_resolved_there(tmp_path, dataset):
    root, listed = dataset
    s = _session(tmp_path, root)  # built-in dlib: never needed, every image here is listed
    assert [i.name for i in s.identities()] == ["Clean", "Moved", "NoFace2", "Other", "Other2", "Planted",
                                               "PlantedSame", "SameOnly"]
    f = s.findings()

    v = f.verdicts["SameOnly"]
    assert v.status == "pass" and v.vectors == 5
    (p,) = v.problems
    assert (p.code, p.fatal, p.file) == ("face01-moved", False, "SameOnly/npKnown.npz")
    assert p.message == ("3 listed face(s) are in same_face/ (FACE01's duplicate finder moved them); "
                         "their vectors are checked")

    v = f.verdicts["Moved"]
    assert v.status == "pass" and v.vectors == 7
    codes = _by_code(v.problems)
    assert sorted(codes) == ["face01-moved", "stale"] and not any(p.fatal for p in v.problems)
    assert codes["face01-moved"][0].message == (
        "5 listed face(s) are in FACE01's subfolders: 3 in same_face/ (FACE01's duplicate finder moved them), "
        "1 in noFace/, 1 in multipleFaces/; their vectors are checked")
    # a name found nowhere stays stale, and only that one
    assert [p.message for p in codes["stale"]] == [
        "stale: 1 listed file(s) not in the folder (Moved_gone.jpg); their vectors are still checked"]

    # the vectors of moved faces are checked: a planted copy in same_face/ still fails
    planted = f.verdicts["PlantedSame"]
    assert planted.status == "fail" and planted.input_status == "pass"
    assert [(m.file, m.other_identity, m.other_file) for m in planted.matches] == [
        ("PlantedSame_0001.jpg", "Other2", "Other2_0001.jpg")]
    assert f.counts()["not_checkable"] == 0

    # report thumbnails find them where FACE01 put them
    thumbs = s.thumbnails()
    for name in ("SameOnly", "Moved", "PlantedSame"):
        for file in listed[name]:
            uri = thumbs.data_uri(name, file)
            assert (uri is None) == (file == "Moved_gone.jpg"), (name, file)
            assert uri is None or uri.startswith("data:image/jpeg;base64,")


def test_face01_subfolders_are_never_identities_nor_problems(tmp_path, dataset):
    root, _ = dataset
    names = [i.name for i in discover_identities(root)]
    assert not {"noFace", "same_face", "multipleFaces"} & set(names)
    for name in ("Moved", "SameOnly"):
        sc = scan_folder(root / name, name)
        assert not sc.problems
        assert {p.name for p in sc.images}.isdisjoint(sc.side.get("same_face", ()))


def test_a_thumbnail_never_leaves_its_identity_folder(tmp_path):
    root = tmp_path / "ds"
    _image(root / "A" / "same_face" / "a.jpg", 1)
    _image(root / "B" / "b.jpg", 2)
    thumbs = Thumbnails(root)
    assert thumbs.data_uri("A", "a.jpg") is not None
    assert thumbs.data_uri("A", "../B/b.jpg") is None and thumbs.data_uri("A", "../../B/b.jpg") is None


def test_a_face_moved_out_of_same_face_changes_the_folder_version(tmp_path, dataset):
    """What a listed name resolves to is part of the dataset version: a face taken out of
    same_face/ turns its note into "stale" on the next run, never a stored result."""
    root, _ = dataset
    before = scan_folder(root / "SameOnly", "SameOnly", stamps=True).stamps
    (root / "SameOnly" / "same_face" / "SameOnly_0001.jpg").unlink()
    assert scan_folder(root / "SameOnly", "SameOnly", stamps=True).stamps != before
    s = _session(tmp_path, root)
    v = s.findings().verdicts["SameOnly"]
    assert sorted(p.code for p in v.problems) == ["face01-moved", "stale"] and v.status == "pass"


# -- the whole run, as pytest runs it ---------------------------------------------------------------


def test_generated_face01_dataset_fails_only_its_real_errors(pytester, rng):
    root = pytester.path / "faces"
    _dataset(root, rng)
    rules = cross_identity_only(pytester.path / "rules", extra=f"threshold: {THRESHOLD}\nembeddings:\n  workers: 1\n")
    result = pytester.runpytest_inprocess(PKG, "-p", "no:cacheprovider", "--report-dir", "out", "--rules", str(rules),
                                          "--dataset", str(root), "-W", "always")
    outcomes = family_outcomes(result.reprec, "test_identity")
    assert outcomes == {"Clean": "passed", "Moved": "passed", "NoFace2": "passed", "Other": "failed",
                        "Other2": "failed", "Planted": "failed", "PlantedSame": "failed", "SameOnly": "passed"}
    text = result.stdout.str()
    assert "NoFace2/npKnown.npz: 2 image(s) not in npKnown.npz (FACE01 found no face?): NoFace2_0005.jpg" in text
    assert "SameOnly/npKnown.npz: 3 listed face(s) are in same_face/ (FACE01's duplicate finder moved them)" in text
    assert "Moved/npKnown.npz: stale: 1 listed file(s) not in the folder (Moved_gone.jpg)" in text
    doc = json.loads((pytester.path / "out" / "findings.json").read_text(encoding="utf-8"))
    assert doc["counts"]["not_checkable"] == 0 and doc["counts"]["failed"] == 4
