"""Issue 21, items 4 and 6: FACE01's default project layout (one npKnown.npz at the root for
preset_face_images/, many people told apart by the file-name prefix) is refused with what to do,
and converted into one folder per person; the pairs export in the FACE01 seed's layout."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import faiss  # noqa: F401  - before pytester's sys.modules snapshot (see tests/conftest.py)
import numpy as np
import pytest

from dataset_checks import face01_layout, sinks
from dataset_checks.discover import discover_identities
from dataset_checks.face01_layout import COMMAND, convert, main, root_layout
from dataset_checks.rules import RulesError, load_rules, parse_rules
from dataset_checks.run import Pipeline
from dataset_checks.vectors import load_table
from helpers import write_face01
from test_report import PKG

PEOPLE = {"Audrey Hepburn": ["Audrey Hepburn_9.png", "Audrey Hepburn_1.png", "Audrey Hepburn_default.png"],
          "安倍晋三": ["安倍晋三_default.png", "安倍晋三_2.jpg"],
          "Ken Watanabe": ["Ken Watanabe_a_b.jpg", "Ken Watanabe_2.webp", "Ken Watanabe_3.png", "Ken Watanabe_4.png"]}


def face01_root(root: Path, names: list[str] | None = None, seed: int = 0, rows: int | None = None) -> np.ndarray:
    """FACE01's project layout as FACE01 writes it: preset_face_images/ with every person's images
    and ONE root npKnown.npz, `name` a <U array of the file names, the ArcFace vectors float32
    (N, 1, 512), not normalised (norms 30-92). Returns the vectors."""
    names = [n for files in PEOPLE.values() for n in files] if names is None else names
    preset = root / "preset_face_images"
    preset.mkdir(parents=True)
    for name in names:
        (preset / name).write_bytes(b"\x89PNG\r\n\x1a\n fake image of " + name.encode())
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((len(names) if rows is None else rows, 512))
    x *= rng.uniform(30, 92, (len(x), 1)) / np.linalg.norm(x, axis=1, keepdims=True)
    vectors = [row[None, :].astype(np.float32) for row in x]  # one (1, 512) ONNX output per face
    np.savez(root / "npKnown", name=names, efficientnetv2_arcface=vectors)
    return np.asarray(vectors)


def snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


# -- item 4 (a): refused, never silently read as one identity ----------------------------------


def test_the_root_layout_is_refused_with_what_it_is_and_what_to_do(pytester):
    root = pytester.path / "FACE01"
    face01_root(root)
    before = snapshot(root)
    result = pytester.runpytest_inprocess(PKG, "-p", "no:cacheprovider", "--report-dir", "out", f"--dataset={root}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str() + result.stderr.str()
    err = "\n".join(result.errlines)
    want = (f"{root} is FACE01's default project layout: one npKnown.npz at the dataset root for the single folder "
            "preset_face_images/ (9 image(s) of 3 people by file-name prefix), which holds many people")
    assert want in err, err
    assert f"{COMMAND} {root} NEW_FOLDER, then run with --dataset NEW_FOLDER" in err
    assert len([line for line in result.errlines if "FACE01" in line]) == 1  # one line
    assert not (pytester.path / "out" / "findings.csv").exists() and not (pytester.path / "out" / "findings.json").exists()
    assert snapshot(root) == before


def test_only_that_layout_is_recognised(tmp_path):
    write_face01(tmp_path / "plain", "A", np.eye(3, 8))
    write_face01(tmp_path / "plain", "B", np.eye(3, 8)[::-1])
    assert root_layout(tmp_path / "plain") is None
    (tmp_path / "half" / "preset_face_images").mkdir(parents=True)  # no root npz
    assert root_layout(tmp_path / "half") is None
    assert root_layout(tmp_path / "missing") is None
    face01_root(tmp_path / "f")
    assert root_layout(tmp_path / "f") is not None
    # --dataset on the images folder itself: pointed at its project and the conversion
    inner = root_layout(tmp_path / "f" / "preset_face_images")
    assert inner is not None and inner.startswith(f"{tmp_path / 'f' / 'preset_face_images'} is the images folder of "
                                                  f"a FACE01 project; {tmp_path / 'f'} is FACE01's default project")
    assert f"{COMMAND} {tmp_path / 'f'} NEW_FOLDER" in inner


# -- item 4 (b): the converter ------------------------------------------------------------------


def test_convert_round_trip_one_folder_per_person_and_src_untouched(tmp_path):
    src, dst = tmp_path / "FACE01", tmp_path / "people"
    vectors = face01_root(src)
    before = snapshot(src)
    run = subprocess.run([sys.executable, "-m", "dataset_checks.face01_layout", str(src), str(dst)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"converted {src} into {dst}: 9 face(s) of 3 people, one folder each (")
    assert f"check it with: dataset-checks --dataset {dst}" in run.stdout
    assert snapshot(src) == before  # byte for byte
    assert sorted(p.name for p in dst.iterdir()) == sorted(PEOPLE)
    names = [n for files in PEOPLE.values() for n in files]
    for person, files in PEOPLE.items():
        folder = dst / person
        assert sorted(p.name for p in folder.iterdir()) == sorted([*files, "npKnown.npz"])
        for f in files:
            assert (folder / f).read_bytes() == (src / "preset_face_images" / f).read_bytes()
        with np.load(folder / "npKnown.npz", allow_pickle=False) as npz:
            assert sorted(npz.files) == ["efficientnetv2_arcface", "name"]
            assert npz["name"].dtype.kind == "U" and list(npz["name"]) == files
            got = npz["efficientnetv2_arcface"]
            assert got.dtype == np.float32 and got.shape == (len(files), 1, 512)
            assert np.array_equal(got, vectors[[names.index(f) for f in files]])
    identities = discover_identities(dst)
    table = load_table(dst, identities)
    assert [i.name for i in identities] == sorted(PEOPLE) and not any(table.problems.values())
    for idx, identity in enumerate(identities):
        rows = np.flatnonzero(table.identity_of == idx)
        files = PEOPLE[identity.name]
        assert [table.files[r] for r in rows] == files
        want = vectors[[names.index(f) for f in files]][:, 0, :].astype(np.float64)
        want /= np.linalg.norm(want, axis=1, keepdims=True)
        assert np.allclose(table.vectors[rows], want, atol=1e-6)


def test_dlib_root_file_keeps_its_key_dtype_and_shape(tmp_path):
    src = tmp_path / "FACE01"
    names = ["A_1.png", "B_1.png", "A_2.png"]
    face01_root(src, names)
    dlib = np.random.default_rng(3).standard_normal((3, 128))  # FACE01's dlib variant: float64 (N, 128)
    np.savez(src / "npKnown", name=names, dlib=dlib)
    convert(src, tmp_path / "people")
    with np.load(tmp_path / "people" / "A" / "npKnown.npz", allow_pickle=False) as npz:
        assert sorted(npz.files) == ["dlib", "name"] and npz["dlib"].dtype == np.float64
        assert np.array_equal(npz["dlib"], dlib[[0, 2]]) and list(npz["name"]) == ["A_1.png", "A_2.png"]


def test_names_without_a_prefix_unlisted_images_and_face01_subfolders(tmp_path, capsys):
    src, dst = tmp_path / "FACE01", tmp_path / "people"
    face01_root(src, ["Solo.png", "Audrey Hepburn_1.png", "_x.jpg", "Audrey Hepburn_2.png"])
    (src / "preset_face_images" / "Audrey Hepburn_9.png").write_bytes(b"no face found")  # not in the npz
    (src / "preset_face_images" / "same_face").mkdir()
    (src / "preset_face_images" / "Audrey Hepburn_2.png").rename(src / "preset_face_images" / "same_face" /
                                                                  "Audrey Hepburn_2.png")
    (src / "preset_face_images" / "notes.txt").write_text("x")
    assert main([str(src), str(dst)]) == 0
    out = capsys.readouterr().out
    assert "2 name(s) without a '_' prefix, each in a folder named by its whole file name stem: 'Solo.png', '_x.jpg'" in out
    assert "1 image(s) not in npKnown.npz (FACE01 found no face?), filed by prefix with no vector: " \
           "'Audrey Hepburn_9.png'" in out
    assert "1 entry of preset_face_images/ not an image, left out: 'notes.txt'" in out
    assert sorted(p.name for p in dst.iterdir()) == ["Audrey Hepburn", "Solo", "_x"]
    assert (dst / "Audrey Hepburn" / "same_face" / "Audrey Hepburn_2.png").is_file()
    assert (dst / "Audrey Hepburn" / "Audrey Hepburn_9.png").is_file()
    with np.load(dst / "Audrey Hepburn" / "npKnown.npz") as npz:
        assert list(npz["name"]) == ["Audrey Hepburn_1.png", "Audrey Hepburn_2.png"]


def test_refusals_write_nothing(tmp_path, capsys):
    src = tmp_path / "FACE01"
    face01_root(src)
    before = snapshot(src)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "x").write_text("mine")
    assert main([str(src), str(taken)]) == 2
    err = capsys.readouterr().err
    assert err == f"{COMMAND}: {taken} already exists and is not an empty folder: give a new folder\n"
    assert main([str(src), str(src / "inside")]) == 2
    assert "which is never written" in capsys.readouterr().err
    assert main([str(tmp_path / "taken"), str(tmp_path / "new")]) == 2
    assert "is not FACE01's default project layout" in capsys.readouterr().err
    assert main([str(src)]) == 2 and capsys.readouterr().err.startswith(f"usage: {COMMAND} SRC DST")
    assert snapshot(src) == before and not (tmp_path / "new").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no work folder left


def test_names_and_vectors_that_do_not_pair_up_are_refused(tmp_path, capsys):
    src = tmp_path / "FACE01"
    face01_root(src, [n for files in PEOPLE.values() for n in files], rows=7)  # 9 names, 7 vectors
    assert main([str(src), str(tmp_path / "new")]) == 2
    err = capsys.readouterr().err
    assert err == (f"{COMMAND}: {src / 'npKnown.npz'}: 9 names but efficientnetv2_arcface holds 7 vectors "
                   "(shape (7, 1, 512)): the names and vectors do not pair up, nothing was converted\n")
    assert not (tmp_path / "new").exists()


def test_a_pickled_root_file_is_never_unpickled(tmp_path, capsys, monkeypatch):
    src = tmp_path / "FACE01"
    face01_root(src, ["A_1.png"])
    np.savez(src / "npKnown", name=np.array(["A_1.png"], dtype=object), efficientnetv2_arcface=np.ones((1, 1, 512)))
    import pickle

    monkeypatch.setattr(pickle, "loads", lambda *_a, **_k: pytest.fail("unpickled"))
    monkeypatch.setattr(pickle, "load", lambda *_a, **_k: pytest.fail("unpickled"))
    assert main([str(src), str(tmp_path / "new")]) == 2
    assert "dataset_checks never unpickles a file" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_names_that_are_paths_are_refused(tmp_path):
    src = tmp_path / "FACE01"
    face01_root(src, ["A_1.png"])
    np.savez(src / "npKnown", name=np.array(["../../evil_1.png"]), efficientnetv2_arcface=np.ones((1, 1, 512),
                                                                                                   np.float32))
    with pytest.raises(face01_layout.Refused, match="not plain file names"):
        convert(src, tmp_path / "new")
    assert not (tmp_path / "new").exists() and not (tmp_path.parent / "evil_1.png").exists()


# -- item 6: the pairs file of the seed's workflow ----------------------------------------------


def _pairs_dataset(root: Path) -> None:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((20, 16)).astype(np.float32)
    for k, name in enumerate(["A", "B", "=cmd", "D"]):
        rows = x[k * 5:(k + 1) * 5].copy()
        if name == "A":
            rows[0] = x[5]  # a face of B filed in A
        if name == "=cmd":
            rows[1] = x[16] * 40  # a face of D (raw scale)
        write_face01(root, name, rows, [f"{name}_{i}.jpg" for i in range(5)], shape_3d=True)


def _rows(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.reader(fh))


def test_pairs_face01_is_written_when_asked_headerless_in_findings_order(tmp_path):
    _pairs_dataset(tmp_path / "d")
    rules = parse_rules({"threshold": 0.99, "outputs": ["face01_pairs"]})
    result = Pipeline(rules, tmp_path / "d", discover_identities(tmp_path / "d"), tmp_path / "cache").execute()
    out = tmp_path / "out"
    assert out / "pairs_face01.csv" in sinks.planned_files(out, rules)
    out.mkdir()
    written = sinks.write_all(out, sinks.RunView(result.findings, (), result.check_results, rules=rules))
    assert not written.errors and out / "pairs_face01.csv" in written.files
    findings = _rows(out / "findings.csv")
    assert findings[0][:2] == ["identity", "file"] and len(findings) >= 3
    pairs = _rows(out / "pairs_face01.csv")
    assert pairs == [[row[1], row[3], row[4]] for row in findings[1:]]  # no header, same order
    assert all(len(p) == 3 and len(p[2].split(".")[1]) == 6 for p in pairs)
    assert ["'=cmd_1.jpg", "D_1.jpg"] in [p[:2] for p in pairs] or ["D_1.jpg", "'=cmd_1.jpg"] in [p[:2] for p in pairs]


def test_pairs_face01_is_not_written_by_default(tmp_path):
    _pairs_dataset(tmp_path / "d")
    rules = parse_rules({"threshold": 0.99})
    assert rules.outputs == ()
    result = Pipeline(rules, tmp_path / "d", discover_identities(tmp_path / "d"), tmp_path / "cache").execute()
    out = tmp_path / "out"
    assert all(p.name != "pairs_face01.csv" for p in sinks.planned_files(out, rules))
    out.mkdir()
    for view in (sinks.RunView(result.findings, (), result.check_results),
                 sinks.RunView(result.findings, (), result.check_results, rules=rules)):
        sinks.write_all(out, view)
        assert not (out / "pairs_face01.csv").exists() and (out / "findings.csv").is_file()


def test_a_bad_outputs_value_is_refused(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text("outputs: face01_pairs\n", encoding="utf-8")
    with pytest.raises(RulesError) as info:
        load_rules(path)
    assert str(info.value) == (f"{path.resolve()}: key 'outputs': expected a list of optional output names, such as "
                               "[face01_pairs], found 'face01_pairs'")
    with pytest.raises(RulesError, match=r"key 'outputs\[1\]': expected an optional output name \(a string\)"):
        parse_rules({"outputs": ["face01_pairs", 3]})
    path.write_text("outputs: [face01_pairz]\n", encoding="utf-8")
    rules = load_rules(path)
    with pytest.raises(sinks.UnknownOutput) as unknown:
        sinks.planned_files(tmp_path / "out", rules)
    assert str(unknown.value) == (f"{path.resolve()}: key 'outputs': expected optional outputs among face01_pairs, "
                                  "found unknown ['face01_pairz']")
    assert isinstance(unknown.value, ValueError) and "face01_pairs" in sinks.optional_outputs()


def test_pairs_face01_through_pytest_and_an_unknown_output_refused(pytester):
    _pairs_dataset(pytester.path / "d")
    rules = pytester.path / "rules.yaml"
    rules.write_text("threshold: 0.99\noutputs: [face01_pairs]\n", encoding="utf-8")
    result = pytester.runpytest_inprocess(PKG, "-p", "no:cacheprovider", "--report-dir", "out", "--rules", str(rules),
                                          f"--dataset={pytester.path / 'd'}")
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # the planted pairs fail
    out = pytester.path / "out"
    pairs = _rows(out / "pairs_face01.csv")
    assert pairs and pairs == [[row[1], row[3], row[4]] for row in _rows(out / "findings.csv")[1:]]
    result.stdout.fnmatch_lines(["*wrote*pairs_face01.csv*"])
    rules.write_text("threshold: 0.99\noutputs: [face01_pairz]\n", encoding="utf-8")
    result = pytester.runpytest_inprocess(PKG, "-p", "no:cacheprovider", "--report-dir", "out2", "--rules", str(rules),
                                          f"--dataset={pytester.path / 'd'}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "expected optional outputs among face01_pairs, found unknown ['face01_pairz']" in result.stderr.str()
    assert not (pytester.path / "out2" / "findings.csv").exists()
