"""Review gaps (issue 20, item 7): the worst problem first, group photos warn by default, and a
check's warnings as one line per check, not one per identity."""

from __future__ import annotations

from pathlib import Path

import faiss  # noqa: F401  - before pytester's sys.modules snapshot (see test_plugin.py)
import numpy as np
import pytest
from PIL import Image

import dataset_checks
from dataset_checks.embed.cache import Entry
from dataset_checks.embed.folders import FaceReport, ImageOutcome
from dataset_checks.discover import Identity
from dataset_checks.problems import MAX_PROBLEMS, Problem, capped
from helpers import write_face01

PKG = str(Path(dataset_checks.__file__).resolve().parent)

FAKE = '''
import numpy as np

def embed(images):
    """4x4 grid of grey means; mostly blue: two faces (a group photo)."""
    out = []
    for im in images:
        mean = im.reshape(-1, 3).mean(axis=0)
        h, w = im.shape[:2]
        v = np.array([im[i * h // 4:(i + 1) * h // 4, j * w // 4:(j + 1) * w // 4].mean()
                      for i in range(4) for j in range(4)], dtype=np.float32) - 127.0
        out.append(np.stack([v, v[::-1]]) if mean[2] > 150 and mean[0] < 50 else v)
    return out

embed.model_name = "fakegroup"
embed.model_version = "1"
'''


def _png(path: Path, seed: int | None = None, colour=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if colour is not None:
        arr = np.full((64, 64, 3), colour, np.uint8)
    else:  # coarse random blocks: each seed a clearly different picture
        rng = np.random.default_rng(seed)
        arr = np.kron(rng.integers(0, 255, (4, 4, 3)), np.ones((16, 16, 1))).astype(np.uint8)
    Image.fromarray(arr).save(path)


def _blue(path: Path, k: int) -> None:  # a group photo for FAKE; each one a different file content
    _png(path, colour=(10, 10, 200 + k))


@pytest.fixture
def images_run(pytester, monkeypatch):
    mods = pytester.path / "mods"
    mods.mkdir()
    (mods / "fakegroup.py").write_text(FAKE, encoding="utf-8")
    monkeypatch.syspath_prepend(str(mods))

    def go(root: Path, extra_rules: str = ""):
        rules = pytester.path / "rules.yaml"
        rules.write_text(f"embedder: fakegroup:embed\nembeddings:\n  workers: 1\n  cache: {pytester.path / 'cache'}\n"
                         + extra_rules, encoding="utf-8")
        return pytester.inline_run(PKG, "-p", "no:cacheprovider", "--report-dir", "out", "--dataset", str(root),
                                   "--rules", str(rules), "--threshold", "0.9999", "-W", "default")

    return go


def _faces_reports(rec) -> dict[str, object]:
    out = {}
    for rep in rec.getreports("pytest_runtest_logreport"):
        if rep.when == "call" and "test_faces_detected[" in rep.nodeid:
            out[rep.nodeid.rsplit("[", 1)[1].rstrip("]")] = rep
    return out


def _warnings(rec) -> list[str]:
    return [str(c.warning_message.message) for c in rec.getcalls("pytest_warning_recorded")]


# -- (1) the worst problem first -------------------------------------------------------------


def _outcome(name: str, faces: int, error: str | None = None) -> ImageOutcome:
    vector = np.ones(4, np.float32) if faces and not error else None
    return ImageOutcome(name, Entry(vector=vector, faces=-1 if error else faces, error=error))


def test_face_report_lists_unreadable_then_no_face_then_group_photos():
    outcomes = [_outcome(f"a{k:02d}.jpg", 2) for k in range(MAX_PROBLEMS + 5)]
    outcomes += [_outcome("m.jpg", 1), _outcome("y.jpg", 0), _outcome("z.jpg", 0, error="unreadable: not an image")]
    report = FaceReport(Identity("Group", Path("Group")), outcomes)
    assert [o.file for o in report.problems[:2]] == ["z.jpg", "y.jpg"]
    lines = report.message().split("\n")
    assert lines[1].strip() == "z.jpg: unreadable: not an image"  # the worst first, never cut off
    assert lines[2].strip() == "y.jpg: no face found"
    assert "2 faces found" in lines[3] and "more images with a face problem" in lines[-1]
    assert [o.file for o in report.hard] == ["z.jpg", "y.jpg"] and len(report.several) == MAX_PROBLEMS + 5


def test_capped_problems_keep_the_fatal_one():
    notes = [Problem(f"A/{k:02d}.npz", "stale: a note", fatal=False, code="stale") for k in range(MAX_PROBLEMS + 5)]
    fatal = Problem("A/zz.npz", "cannot be read: broken", code="unreadable")
    shown = capped(notes + [fatal], "A/")
    assert shown[0] == fatal and len(shown) == MAX_PROBLEMS
    assert not shown[-1].fatal  # the counted rest holds notes only


def test_terminal_failure_shows_the_unreadable_image_before_group_photos(pytester, images_run):
    root = pytester.path / "data"
    for k in range(MAX_PROBLEMS + 3):
        _blue(root / "Group" / f"g{k:02d}.png", k)
    _png(root / "Group" / "solo.png", seed=1)
    (root / "Group" / "zz_corrupt.jpg").write_bytes(b"not an image at all")
    _png(root / "Other" / "o.png", seed=2)
    rec = images_run(root)
    rep = _faces_reports(rec)["Group"]
    assert rep.outcome == "failed"
    lines = str(rep.longrepr).split("\n")
    assert "zz_corrupt.jpg: unreadable" in lines[1]  # first, though it sorts last by name
    assert "2 faces found" in lines[2]


# -- (2) group photos warn by default --------------------------------------------------------


def _group_dataset(root: Path) -> Path:
    for k in range(3):
        _png(root / "Team" / f"t{k}.png", seed=10 + k)
    _blue(root / "Team" / "group.png", 0)
    _png(root / "Other" / "o.png", seed=2)
    return root


def test_group_photo_is_a_warning_by_default(pytester, images_run):
    rec = images_run(_group_dataset(pytester.path / "data"))
    assert _faces_reports(rec)["Team"].outcome == "passed"
    assert any("group.png: 2 faces found; the one nearest the image centre is used" in w for w in _warnings(rec))


def test_several_faces_fail_when_configured(pytester, images_run):
    rules = "checks:\n  faces_detected:\n    several_faces: fail\n"
    rec = images_run(_group_dataset(pytester.path / "data"), rules)
    rep = _faces_reports(rec)["Team"]
    assert rep.outcome == "failed" and "group.png: 2 faces found" in str(rep.longrepr)


def test_several_faces_info_says_nothing(pytester, images_run):
    rec = images_run(_group_dataset(pytester.path / "data"), "checks:\n  faces_detected:\n    several_faces: info\n")
    assert _faces_reports(rec)["Team"].outcome == "passed"
    assert not any("faces found" in w for w in _warnings(rec))


# -- (3) a check's warnings: one line per check ----------------------------------------------


def test_check_warnings_are_one_summary_line_per_check(pytester):
    root = pytester.path / "data"
    rng = np.random.default_rng(5)
    for name in ("Alan_Turing", "Grace_Hopper", "Ada_Lovelace", "Li_Wei", "Wei_Li", "Mei_Chen", "Chen_Mei"):
        write_face01(root, name, rng.standard_normal((3, 32)) + 3 * rng.standard_normal(32))
    result = pytester.runpytest_inprocess(PKG, "-p", "no:cacheprovider", "--report-dir", "out", "--dataset",
                                          str(root), "--threshold", "0.99", "-W", "default")
    out = result.stdout.str()
    line = "check names (one name, two folders): 2 warning(s) in 4 passing identities; each one in names.csv and report.html"
    assert out.count(line) == 1, out  # one entry in pytest's warnings summary, not one per identity
    assert "Li_Wei: 1 one name, two folders issue(s)" not in out


# -- (4) thumbnails for folder-level rows, captions under face pairs ------------------------


def test_check_section_thumbnails_for_folder_rows_and_captions(tmp_path):
    from dataset_checks.check_files import issues_html
    from dataset_checks.check_run import CheckResult
    from dataset_checks.checks import get
    from dataset_checks.checks.base import Issue
    from dataset_checks.rules import default_settings
    from dataset_checks.thumbnails import Thumbnails

    hostile = "Li<b>_Wei"
    for folder in ("Wei_Li", hostile, "Ann"):
        for k in range(4):
            _png(tmp_path / folder / f"f{k}.jpg", seed=len(folder) * 10 + k)
    thumbs = Thumbnails(tmp_path)

    def section(name: str, issue: Issue) -> str:
        check = get(name)
        return issues_html(CheckResult(check, default_settings(check), issues=[issue]), thumbs)

    names = section("names", Issue("names", hostile, other_identity="Wei_Li", score=0.5, severity="warn"))
    assert names.count("data:image/jpeg;base64,") == 6  # three faces of each folder
    assert "Li%3Cb%3E_Wei/ (3 face(s) of the folder)" in names and "Wei_Li/ (3 face(s) of the folder)" in names
    assert "<b>_Wei" not in names
    folder = section("consistency", Issue("consistency", "Ann", score=0.2, severity="warn"))
    assert folder.count("data:image/jpeg;base64,") == 3 and "Ann/ (3 face(s) of the folder)" in folder
    misfiled = section("misfiled", Issue("misfiled", "Ann", "f1.jpg", "Wei_Li", "f2.jpg", score=0.1234))
    assert misfiled.count("data:image/jpeg;base64,") == 2
    assert "<figcaption>Ann/<br>f1.jpg</figcaption>" in misfiled
    assert "<figcaption>Wei_Li/<br>f2.jpg</figcaption>" in misfiled and "margin 0.1234" in misfiled
