"""Issue 21 (items 3, 5, 7): the npKnown.npz shapes FACE01 itself writes are first-class inputs.

Every fixture here writes a file the way FACE01 does (its own `np.savez` calls, lists and all),
so the shapes are FACE01's, not a tidier version of them:

* today's FACE01: `name=<list of str>`, `efficientnetv2_arcface=<list of (1, 512) float32>`
  (unnormalised ONNX outputs, norms 30-92), or `dlib=<list of float64 (128,)>`;
* a folder where FACE01 found no face: `name=[]` and the key `=[]` (both float64 (0,));
* FACE01 v1 (2021): `np.savez('npKnown', names, encodings)`: arr_0 and arr_1, sometimes with
  more names than vectors.
"""

from __future__ import annotations

import json
from pathlib import Path

import faiss  # noqa: F401  - before pytester's sys.modules snapshot (see test_plugin.py)
import numpy as np
import pytest

from dataset_checks.discover import discover_identities
from dataset_checks.findings import Verdict
from dataset_checks.problems import Problem
from dataset_checks.rules import parse_rules
from dataset_checks.run import Pipeline
from dataset_checks.vectors import NO_FACE, NO_FACE_NOTE, V1_FORMAT, V1_MISMATCH, load_table, read_folder
from helpers import ARC, cross_identity_only, family_outcomes, write_face01
from test_report import PKG

DLIB = "dlib"


# -- FACE01's own writes ---------------------------------------------------------------------


def unit(rng: np.random.Generator, n: int, dim: int, centre: np.ndarray | None = None, spread: float = 0.6
         ) -> np.ndarray:
    """n unit rows (float64) around `centre` (a random one when None): one person's faces."""
    if centre is None:
        centre = rng.standard_normal(dim)
    centre = centre / np.linalg.norm(centre)
    x = centre + spread * rng.standard_normal((n, dim)) / np.sqrt(dim)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def raw_arcface(rng: np.random.Generator, rows: np.ndarray) -> list[np.ndarray]:
    """FACE01's ArcFace outputs for unit `rows`: one (1, 512) float32 ONNX output per face, as
    they come (norms 30 to 92), in a list."""
    norms = rng.uniform(30, 92, len(rows))
    return [(r * s).astype(np.float32)[None, :] for r, s in zip(rows, norms)]


def save_today(root: Path, identity: str, files: list[str], rows: np.ndarray, rng: np.random.Generator,
               key: str = ARC) -> Path:
    """npKnown.npz as current FACE01 saves it: lists of names and of its model's outputs."""
    folder = root / identity
    folder.mkdir(parents=True, exist_ok=True)
    if key == ARC:
        vectors: list[np.ndarray] = raw_arcface(rng, rows)
    else:  # dlib's face descriptors: float64 (128,), length ~0.4 to 0.6, never normalised
        vectors = [np.asarray(r * s, dtype=np.float64) for r, s in zip(rows, rng.uniform(0.4, 0.6, len(rows)))]
    np.savez(folder / "npKnown", name=list(files), **{key: vectors})
    return folder / "npKnown.npz"


def save_no_face(root: Path, identity: str, key: str = ARC) -> Path:
    """npKnown.npz of a folder FACE01 found no face in."""
    folder = root / identity
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "npKnown", name=[], **{key: []})
    return folder / "npKnown.npz"


def save_v1(root: Path, identity: str, names: list[str], rows: np.ndarray) -> Path:
    """npKnown.npz as FACE01 v1 saved it: positional, so arr_0 (names) and arr_1 (dlib vectors)."""
    folder = root / identity
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(str(folder / "npKnown"), names, [np.asarray(r, dtype=np.float64) for r in rows])
    return folder / "npKnown.npz"


def long_names(identity: str, n: int) -> list[str]:
    """v1 names run to 500+ characters (FACE01 v1 kept whole descriptive names)."""
    return [f"{identity}_{k:04d}_" + "x" * (500 + k % 40) + ".png" for k in range(n)]


def stored(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    with np.load(path, allow_pickle=False) as npz:
        return {k: (npz[k].dtype.str, npz[k].shape) for k in npz.files}


def load(root: Path, key: str | None = None):
    return load_table(root, discover_identities(root), key)


def problems_of(table, name: str) -> list[Problem]:
    k = [i.name for i in table.identities].index(name)
    return table.problems.get(k, [])


def count_of(table, name: str) -> int:
    return int(table.counts[[i.name for i in table.identities].index(name)])


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(21)


def test_the_fixtures_write_exactly_face01s_shapes(tmp_path, rng):
    """The premise of every test below."""
    rows = unit(rng, 3, 512)
    assert stored(save_today(tmp_path, "A", ["a.png", "b.png", "c.png"], rows, rng)) == {
        "name": ("<U5", (3,)), ARC: ("<f4", (3, 1, 512))}
    with np.load(tmp_path / "A" / "npKnown.npz") as npz:
        norms = np.linalg.norm(npz[ARC][:, 0, :], axis=1)
    assert ((norms >= 30) & (norms <= 92)).all()
    assert stored(save_today(tmp_path, "B", ["a.png"], unit(rng, 1, 128), rng, key=DLIB)) == {
        "name": ("<U5", (1,)), DLIB: ("<f8", (1, 128))}
    assert stored(save_no_face(tmp_path, "C")) == {"name": ("<f8", (0,)), ARC: ("<f8", (0,))}
    assert stored(save_no_face(tmp_path, "D", DLIB)) == {"name": ("<f8", (0,)), DLIB: ("<f8", (0,))}
    names = long_names("E", 3)
    assert max(map(len, names)) > 500
    assert stored(save_v1(tmp_path, "E", names, unit(rng, 3, 128))) == {
        "arr_0": (f"<U{max(map(len, names))}", (3,)), "arr_1": ("<f8", (3, 128))}


# -- item 3: a folder FACE01 found no face in -------------------------------------------------


@pytest.mark.parametrize("key", [ARC, DLIB])
def test_an_empty_face01_file_reads_as_no_face_found(tmp_path, rng, key):
    save_today(tmp_path, "Ok", ["a.png", "b.png"], unit(rng, 2, 512), rng)
    save_no_face(tmp_path, "Nobody", key)
    table = load(tmp_path)
    assert count_of(table, "Nobody") == 0 and count_of(table, "Ok") == 2
    (p,) = problems_of(table, "Nobody")  # one note: no "other model", no "broken file"
    assert p == Problem("Nobody/npKnown.npz", NO_FACE_NOTE, fatal=False, code=NO_FACE)
    assert str(p) == "Nobody/npKnown.npz: FACE01 found no face in this folder (npKnown.npz lists none)"
    assert problems_of(table, "Ok") == []
    (f,) = [read_folder(i, tmp_path, None) for i in discover_identities(tmp_path) if i.name == "Nobody"]
    assert f.names == [] and f.arrays == {} and f.problems == [p] and f.source == tmp_path / "Nobody" / "npKnown.npz"


def test_an_empty_file_under_the_rules_key_or_the_other_key_is_the_same_note(tmp_path, rng):
    save_today(tmp_path, "Ok", ["a.png"], unit(rng, 1, 512), rng)
    save_no_face(tmp_path, "Arc", ARC)
    save_no_face(tmp_path, "Dlib", DLIB)
    for key in (None, ARC, DLIB):
        table = load(tmp_path, key)
        for name in ("Arc", "Dlib"):
            assert [p.code for p in problems_of(table, name)] == [NO_FACE], (key, name)


def test_empty_arrays_with_a_dimension_are_still_an_empty_file(tmp_path):
    """Only FACE01's own empty lists are "no face found": a (0, D) array was written by something
    that knew what it wrote (test_vectors.test_empty_folder_and_empty_arrays)."""
    write_face01(tmp_path, "Zero", np.zeros((0, 16), np.float32), files=[])
    (p,) = problems_of(load(tmp_path), "Zero")
    assert p.fatal and p.code == "empty"


def _verdict(problems: list[Problem], vectors: int = 0, waived: dict[Problem, str] | None = None) -> Verdict:
    from dataset_checks.discover import Identity

    return Verdict(Identity("X", Path("X")), 0.5, vectors, problems=problems, problem_waivers=dict(waived or {}))


def test_a_folder_whose_only_reason_for_no_vectors_is_no_face_passes():
    note = Problem("X/npKnown.npz", NO_FACE_NOTE, fatal=False, code=NO_FACE)
    v = _verdict([note])
    assert v.status == v.input_status == "pass" and v.no_face and not v.checkable and not v.unreadable
    # with an odd-name note beside it: still nothing else wrong
    assert _verdict([note, Problem("X/", "odd name", fatal=False, code="note")]).status == "pass"
    # zero vectors for any other reason stays not checkable
    assert _verdict([]).status == "error"
    assert _verdict([Problem("X/", "no embeddings", code="no-embeddings")]).status == "error"
    assert _verdict([Problem("X/", "unlisted", fatal=False, code="stale")]).status == "error"
    assert _verdict([note, Problem("X/npKnown.npz", "broken", code="corrupt")]).status == "error"
    bad_input_warn = _verdict([note, Problem("X/npKnown.npz", "broken", code="corrupt")])
    bad_input_warn.bad_input = "warn"
    assert bad_input_warn.status == "error"


def go(pytester, root: Path, *args: str):
    rules = cross_identity_only(pytester.path / "rules", extra=f"embeddings:\n  cache: {pytester.path / 'cache'}\n")
    return pytester.runpytest_inprocess(PKG, "-p", "no:cacheprovider", "--report-dir", "out", "--rules",
                                        str(rules), "--dataset", str(root), *args)


def doc(pytester) -> dict:
    return json.loads((pytester.path / "out" / "findings.json").read_text(encoding="utf-8"))


def people(root: Path, rng: np.random.Generator, names: list[str], per: int = 6, key: str = ARC,
           dim: int = 512) -> None:
    for name in names:
        save_today(root, name, [f"{name}_{k}.png" for k in range(per)], unit(rng, per, dim), rng, key=key)


def test_a_whole_run_passes_no_face_folders_with_a_warning(pytester, rng):
    root = pytester.path / "data"
    people(root, rng, ["Ann", "Bob", "Cid"])
    save_no_face(root, "Dee")
    save_no_face(root, "Eve", DLIB)
    result = go(pytester, root, "-rw")
    rec = result.reprec
    assert family_outcomes(rec, "test_identity") == dict.fromkeys(["Ann", "Bob", "Cid", "Dee", "Eve"], "passed")
    assert result.ret == pytest.ExitCode.OK  # test_dataset too: three folders were checked
    result.stdout.fnmatch_lines(["*Dee/npKnown.npz: FACE01 found no face in this folder (npKnown.npz lists none)*"])
    d = doc(pytester)
    assert d["counts"]["not_checkable"] == 0 and d["counts"]["failed"] == 0 and d["counts"]["passed"] == 5
    assert d["identities"]["Dee"]["status"] == "pass" and d["identities"]["Dee"]["vectors"] == 0
    assert d["identities"]["Dee"]["problems"] == [
        "Dee/npKnown.npz: FACE01 found no face in this folder (npKnown.npz lists none)"]
    assert "failed_tests" not in d["identities"]["Eve"]


def test_the_baseline_agrees_with_no_face_folders(pytester, rng):
    root = pytester.path / "data"
    people(root, rng, ["Ann", "Bob"])
    save_no_face(root, "Dee")
    base = pytester.path / "gate" / "baseline.csv"
    counts = {"identities": 3, "passed": 3, "failed": 0, "not_checkable": 0, "findings": 0, "waived": 0,
              "waived_problems": 1}
    result = go(pytester, root, "--baseline", str(base), "--update-baseline")
    assert result.ret == pytest.ExitCode.OK
    # the note is accepted as any warning is: a row of its own, keyed by its code (nothing fatal)
    rows = base.read_text(encoding="utf-8").splitlines()
    assert [r for r in rows if ",Dee," in r] == [f"input,Dee,Dee/npKnown.npz,,,,{NO_FACE},{NO_FACE_NOTE}"]
    for gate in (False, True):
        if gate:
            result = go(pytester, root, "--baseline", str(base))
            assert result.ret == pytest.ExitCode.OK
        d = doc(pytester)
        dee = d["identities"]["Dee"]
        assert dee["status"] == "pass" and dee["vectors"] == 0 and dee["problems"] == [f"Dee/npKnown.npz: {NO_FACE_NOTE}"]
        assert [w["code"] for w in dee["waived_problems"]] == [NO_FACE] and "failed_tests" not in dee
        assert d["counts"] == counts
    assert base.read_text(encoding="utf-8").splitlines() == rows


def test_a_dataset_where_no_folder_had_a_face_still_checked_nothing(pytester):
    root = pytester.path / "data"
    save_no_face(root, "Dee")
    save_no_face(root, "Eve")
    result = go(pytester, root)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    failed = [r for r in result.reprec.getreports("pytest_runtest_logreport") if r.when == "call" and r.failed]
    assert [r.nodeid.rsplit("::", 1)[1] for r in failed] == ["test_dataset"]
    result.stdout.fnmatch_lines(["*none of the 2 identity folder(s) in * could be checked (2 face01-no-face)*"])


# -- item 5: FACE01 v1 files ------------------------------------------------------------------


def test_a_v1_file_with_as_many_names_as_vectors_is_read_as_dlib(tmp_path, rng):
    names = long_names("Old", 4)
    rows = unit(rng, 4, 128) * 0.5
    save_v1(tmp_path, "Old", names, rows)
    save_today(tmp_path, "New", ["a.png", "b.png"], unit(rng, 2, 128), rng, key=DLIB)
    table = load(tmp_path)
    assert table.key == DLIB and count_of(table, "Old") == 4 and problems_of(table, "Old") == []
    mine = table.identity_of == [i.name for i in table.identities].index("Old")
    assert [f for f, m in zip(table.files, mine) if m] == names
    np.testing.assert_allclose(np.asarray(table.vectors)[mine], rows / np.linalg.norm(rows, axis=1, keepdims=True),
                               atol=1e-6)
    (f,) = [read_folder(i, tmp_path, DLIB) for i in discover_identities(tmp_path) if i.name == "Old"]
    assert f.names == names and list(f.arrays) == [DLIB] and f.problems == []


def test_a_v1_file_in_an_arcface_dataset_is_another_model(tmp_path, rng):
    save_v1(tmp_path, "Old", long_names("Old", 2), unit(rng, 2, 128))
    people(tmp_path, rng, ["Ann", "Bob"])
    (p,) = problems_of(load(tmp_path), "Old")
    assert p.code == "other-model" and "this folder has: dlib" in p.message


def test_a_v1_file_with_more_names_than_vectors_is_refused_naming_format_and_counts(tmp_path, rng):
    save_v1(tmp_path, "Old", long_names("Old", 467), unit(rng, 440, 128))
    save_today(tmp_path, "New", ["a.png"], unit(rng, 1, 128), rng, key=DLIB)
    table = load(tmp_path)
    (p,) = problems_of(table, "Old")
    assert p.fatal and p.code == V1_MISMATCH and count_of(table, "Old") == 0
    assert str(p) == ("Old/npKnown.npz: FACE01 v1 npKnown.npz (arr_0 names, arr_1 vectors) lists 467 names but 440 "
                      "vectors: it cannot be matched name-to-vector (nothing records which names have no vector); "
                      "not read: re-create it with current FACE01")
    assert V1_FORMAT in p.message


def test_an_empty_v1_file_is_no_face_found(tmp_path, rng):
    (tmp_path / "Old").mkdir()
    np.savez(str(tmp_path / "Old" / "npKnown"), [], [])
    save_today(tmp_path, "New", ["a.png"], unit(rng, 1, 128), rng, key=DLIB)
    assert [p.code for p in problems_of(load(tmp_path), "Old")] == [NO_FACE]


def test_a_v1_lookalike_is_not_guessed_at(tmp_path, rng):
    """Only exactly arr_0 + arr_1 is v1; object names are refused, never unpickled."""
    (tmp_path / "Three").mkdir()
    np.savez(str(tmp_path / "Three" / "npKnown"), np.array(["a.png"]), unit(rng, 1, 128), np.zeros(1))
    (tmp_path / "Objects").mkdir()
    np.savez(str(tmp_path / "Objects" / "npKnown"), np.array(["a.png"], dtype=object), unit(rng, 1, 128))
    save_today(tmp_path, "New", ["a.png"], unit(rng, 1, 128), rng, key=DLIB)
    table = load(tmp_path)
    assert [p.code for p in problems_of(table, "Three")] == ["missing-array"]
    assert [p.code for p in problems_of(table, "Objects")] == ["pickled"]


def test_a_whole_run_fails_only_the_mismatched_v1_folder(pytester, rng):
    root = pytester.path / "data"
    people(root, rng, ["Ann", "Bob"], key=DLIB, dim=128)
    save_v1(root, "Old", long_names("Old", 5), unit(rng, 5, 128))
    save_v1(root, "Older", long_names("Older", 6), unit(rng, 4, 128))
    result = go(pytester, root)
    assert family_outcomes(result.reprec, "test_identity") == {
        "Ann": "passed", "Bob": "passed", "Old": "passed", "Older": "failed"}
    result.stdout.fnmatch_lines(["*Older/npKnown.npz: FACE01 v1 npKnown.npz (arr_0 names, arr_1 vectors) lists 6 "
                                 "names but 4 vectors: it cannot be matched name-to-vector*"])
    d = doc(pytester)
    assert d["identities"]["Old"]["vectors"] == 5 and d["identities"]["Older"]["status"] == "error"
    assert d["counts"]["not_checkable"] == 1


# -- item 7: FACE01's raw vectors ------------------------------------------------------------


def test_raw_arcface_vectors_read_as_the_unit_ones(tmp_path, rng):
    rows = unit(rng, 5, 512)
    save_today(tmp_path / "raw", "A", [f"a{k}.png" for k in range(5)], rows, rng)
    write_face01(tmp_path / "unit", "A", rows.astype(np.float32), files=[f"a{k}.png" for k in range(5)])
    raw, ref = load(tmp_path / "raw"), load(tmp_path / "unit")
    assert raw.key == ref.key == ARC and raw.dim == 512 and raw.files == ref.files
    np.testing.assert_allclose(np.linalg.norm(np.asarray(raw.vectors), axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(np.asarray(raw.vectors), np.asarray(ref.vectors), atol=1e-6)


def test_raw_dlib_vectors_read_as_the_unit_ones(tmp_path, rng):
    rows = unit(rng, 5, 128)
    save_today(tmp_path / "raw", "A", [f"a{k}.png" for k in range(5)], rows, rng, key=DLIB)
    write_face01(tmp_path / "unit", "A", rows.astype(np.float32), files=[f"a{k}.png" for k in range(5)], key=DLIB)
    raw, ref = load(tmp_path / "raw"), load(tmp_path / "unit")
    assert raw.key == DLIB and raw.dim == 128
    np.testing.assert_allclose(np.asarray(raw.vectors), np.asarray(ref.vectors), atol=1e-6)


def _dataset(root: Path, rng: np.random.Generator, raw: bool, key: str = ARC, dim: int = 512) -> None:
    """40 people of 8 faces whose vectors live in a 10-d subspace (crowded: chance pairs reach the
    model's floor, so `threshold: auto` calibrates from the data), and one near copy of a face of
    P03 filed under P02: what the checks must find whatever the vectors' scale and shape."""
    gen = np.random.default_rng(7)
    basis = np.linalg.qr(gen.standard_normal((dim, 10)))[0]
    folders = {f"P{k:02d}": unit(gen, 8, 10) @ basis.T for k in range(40)}
    copy = folders["P03"][0] + 0.01 * (gen.standard_normal(10) @ basis.T)
    folders["P02"] = np.vstack([folders["P02"], copy / np.linalg.norm(copy)])
    for name, rows in folders.items():
        files = [f"{name}_{k}.png" for k in range(len(rows))]
        if raw:
            save_today(root, name, files, rows, rng, key=key)
        else:
            write_face01(root, name, rows.astype(np.float32), files=files, key=key)


@pytest.mark.parametrize("key,dim", [(ARC, 512), (DLIB, 128)])
def test_threshold_auto_and_every_check_behave_on_raw_vectors_as_on_unit_ones(tmp_path, rng, key, dim):
    rules = parse_rules({"threshold": "auto", "embeddings": {"key": key}}, None)
    results = {}
    for raw in (True, False):
        root = tmp_path / ("raw" if raw else "unit")
        _dataset(root, rng, raw, key, dim)
        results[raw] = Pipeline(rules, root, discover_identities(root), tmp_path / f"cache_{raw}").execute()
    raw, ref = results[True], results[False]
    assert raw.threshold.value == pytest.approx(ref.threshold.value, abs=1e-5)
    assert raw.findings.metadata["threshold_choice"] == ref.findings.metadata["threshold_choice"]
    if key == ARC:  # crowded enough to calibrate from the data, not the floor
        assert raw.findings.metadata["threshold_choice"].startswith("auto from the data")
    assert [(f.identity, f.file, f.other_identity, f.other_file) for f in raw.findings.pairs] == \
        [(f.identity, f.file, f.other_identity, f.other_file) for f in ref.findings.pairs]
    assert raw.findings.identity_outcomes() == ref.findings.identity_outcomes()
    assert set(raw.check_results) == set(ref.check_results)
    for name in ref.check_results:
        assert [i.baseline_key() for i in raw.check_results[name].issues] == \
            [i.baseline_key() for i in ref.check_results[name].issues], name
    # the planted photo is found in both
    planted = [f for f in raw.findings.pairs if "P02_8.png" in (f.file, f.other_file)]
    assert planted and all({f.identity, f.other_identity} == {"P02", "P03"} for f in planted)
    assert raw.findings.identity_outcomes()["P02"].status == "fail"


def test_a_stored_table_keeps_the_no_face_note(tmp_path, rng):
    """The next run maps the table from the cache (and updates it when a folder changes): the
    no-face folder is the same note, never "another model"."""
    root = tmp_path / "ds"
    people(root, rng, ["Ann", "Bob", "Cid"])
    save_no_face(root, "Dee", DLIB)
    rules = parse_rules({"threshold": 0.9}, None)

    def run():
        pipeline = Pipeline(rules, root, discover_identities(root), tmp_path / "cache")
        result = pipeline.execute()
        return pipeline.table_source, result

    first_source, first = run()
    again_source, again = run()
    people(root, rng, ["Bob"])  # one folder changes: an update, not a full load
    _, updated = run()
    assert (first_source, again_source) == ("loaded", "stored")
    for result in (first, again, updated):
        assert [p.code for p in problems_of(result.table, "Dee")] == [NO_FACE]
        assert result.findings.verdicts["Dee"].status == "pass"
        assert result.findings.identity_outcomes()["Dee"].status == "pass"  # every check of it, too
        assert result.findings.counts()["not_checkable"] == 0
