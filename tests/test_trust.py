"""The gate's promises, tried as a new user would: from other folders, on bad paths, with outputs
that cannot be written. The dataset is never written; a run that checked nothing never passes."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import faiss  # noqa: F401  - before pytester's sys.modules snapshot (see test_plugin.py)
import numpy as np
import pytest

from dataset_checks.demo import write_demo
from dataset_checks.outputs import FolderLock, is_inside, writable_dir_problem
from helpers import cross_identity_only, tree_state, write_face01

PKG = str(Path(__file__).resolve().parents[1] / "dataset_checks")


@pytest.fixture
def demo_data(pytester) -> Path:
    """The demo dataset (embeddings and images) as a user's dataset, in its own tree."""
    return write_demo(pytester.path / "faces")


@pytest.fixture(autouse=True)
def user_cache(pytester, monkeypatch) -> Path:
    cache = pytester.path / "user-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))  # the user cache folder lands here, not in ~
    return cache


def _run(pytester, cwd: Path, *args: str):
    cwd.mkdir(parents=True, exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        return pytester.runpytest_subprocess("dataset_checks", *args)  # as a user types it, from any folder


def _output(result) -> str:
    return result.stdout.str() + result.stderr.str()


# -- 1. nothing is ever written under the dataset root --------------------------------------------


def test_dataset_as_rootdir_writes_nothing_there(pytester, demo_data):
    # `pytest dataset_checks --dataset /data/faces` from a folder sharing only / with the data
    # makes the dataset pytest's rootdir; --rootdir reproduces that without touching /.
    before = tree_state(demo_data)
    work = pytester.path / "work"
    # pytest's cache would go to the rootdir: refused (pytest offers no public way to move it)
    refused = _run(pytester, work, "--dataset", str(demo_data), f"--rootdir={demo_data}")
    assert refused.ret == pytest.ExitCode.USAGE_ERROR, _output(refused)
    assert "pytest's cache folder" in _output(refused) and "-p no:cacheprovider" in _output(refused)
    assert tree_state(demo_data) == before
    result = _run(pytester, work, "--dataset", str(demo_data), f"--rootdir={demo_data}", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.TESTS_FAILED, _output(result)  # the demo's planted errors
    assert tree_state(demo_data) == before
    assert (work / "reports" / "findings.csv").is_file() and (work / "reports" / "report.html").is_file()
    again = _run(pytester, work, "--dataset", str(demo_data), f"--rootdir={demo_data}", "-p", "no:cacheprovider")
    assert "test_identity[reports]" not in _output(again)  # no fake identity from our own files
    assert tree_state(demo_data) == before


def test_run_from_inside_the_dataset(pytester, demo_data):
    before = tree_state(demo_data)
    refused = _run(pytester, demo_data, "--dataset", ".")  # the rootdir, and pytest's cache, would be the dataset
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    assert "inside the dataset" in _output(refused) and "-p no:cacheprovider" in _output(refused)
    refused = _run(pytester, demo_data, "--dataset", ".", "-p", "no:cacheprovider")
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    assert "inside the dataset" in _output(refused) and "--report-dir" in _output(refused)
    out = pytester.path / "out"
    ran = _run(pytester, demo_data, "--dataset", ".", "--report-dir", str(out), "-p", "no:cacheprovider")
    assert ran.ret == pytest.ExitCode.TESTS_FAILED, _output(ran)
    assert (out / "findings.json").is_file()
    assert tree_state(demo_data) == before


@pytest.mark.parametrize("option", ["--report-dir={ds}/reports", "--html={ds}/r.html", "--junitxml={ds}/j.xml",
                                    "--basetemp={ds}/tmp", "--report-dir={ds}/../faces/x"])
def test_output_options_inside_the_dataset_are_refused(pytester, demo_data, option):
    before = tree_state(demo_data)
    result = _run(pytester, pytester.path / "work", "--dataset", str(demo_data), option.format(ds=demo_data))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "inside the dataset" in _output(result)
    assert tree_state(demo_data) == before


def test_update_baseline_inside_the_dataset_is_refused(pytester, demo_data):
    before = tree_state(demo_data)
    result = _run(pytester, pytester.path / "work", "--dataset", str(demo_data),
                  "--baseline", str(demo_data / "baseline.csv"), "--update-baseline")
    assert result.ret == pytest.ExitCode.USAGE_ERROR and "inside the dataset" in _output(result)
    assert tree_state(demo_data) == before


def test_cache_dir_inside_the_dataset_is_refused(pytester, demo_data):
    # pytest has no public way to move its cache once the ini is read: the run is refused, before
    # --cache-clear (the cache plugin's configure, after ours) could empty a folder of the dataset
    before = tree_state(demo_data)
    work = pytester.path / "work"
    result = _run(pytester, work, "--dataset", str(demo_data), "-o", f"cache_dir={demo_data}/.cache", "--cache-clear")
    assert result.ret == pytest.ExitCode.USAGE_ERROR, _output(result)
    assert "inside the dataset" in _output(result) and "-o cache_dir=PATH" in _output(result)
    assert "dataset-checks --dataset" in _output(result)
    assert tree_state(demo_data) == before
    ran = _run(pytester, work, "--dataset", str(demo_data), "-o", f"cache_dir={work}/.cache", "--cache-clear")
    assert ran.ret == pytest.ExitCode.TESTS_FAILED, _output(ran)
    assert (work / ".cache").is_dir() and tree_state(demo_data) == before


def test_symlinked_report_dir_into_the_dataset_is_refused(pytester, demo_data):
    link = pytester.path / "sneaky"
    link.symlink_to(demo_data, target_is_directory=True)
    before = tree_state(demo_data)
    result = _run(pytester, pytester.path / "work", "--dataset", str(demo_data), "--report-dir", str(link / "out"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR and "inside the dataset" in _output(result)
    assert tree_state(demo_data) == before


def test_config_files_inside_the_dataset_are_not_obeyed(pytester, demo_data):
    (demo_data / "rules.yaml").write_text("threshold: 0.1\n", encoding="utf-8")
    before = tree_state(demo_data)
    work = pytester.path / "work"
    result = _run(pytester, work, "--dataset", str(demo_data), f"--rootdir={demo_data}", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*rules.yaml lies inside the dataset and is not read*"])
    assert "threshold 0.1" not in result.stdout.str()
    (demo_data / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    before = tree_state(demo_data)
    refused = _run(pytester, work, "--dataset", str(demo_data), f"--rootdir={demo_data}")
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    assert "inside the dataset" in _output(refused) and "--dataset=" in _output(refused)
    assert tree_state(demo_data) == before


def test_is_inside_resolves_links_and_dotdot(tmp_path):
    (tmp_path / "data" / "a").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "data", target_is_directory=True)
    assert is_inside(tmp_path / "link" / "a" / "new", tmp_path / "data")
    assert is_inside(tmp_path / "other" / ".." / "data", tmp_path / "data")
    assert not is_inside(tmp_path / "data2", tmp_path / "data")
    assert not is_inside(tmp_path, tmp_path / "data")


# -- 2. the same defaults everywhere ------------------------------------------------------------


def test_defaults_outside_this_repository(pytester, demo_data):
    """No rules.yaml anywhere: the documented defaults (threshold auto), not the demo's allowlist."""
    result = _run(pytester, pytester.path / "work", "--dataset", str(demo_data), "-rA")
    out = result.stdout.str()
    assert "rules (built-in defaults)" in out
    result.stdout.fnmatch_lines(["dataset_checks: cosine threshold 0.* (auto*"])
    # the demo's twins are only allowlisted in the demo run itself
    assert "FAILED" in out and "test_identity[Olsen_Ashley]" in out
    demo = _run(pytester, pytester.path / "work", "-rA")
    assert "PASSED dataset_checks/test_identities.py::test_identity[Olsen_Ashley]" in demo.stdout.str() \
        or "PASSED test_identities.py::test_identity[Olsen_Ashley]" in demo.stdout.str()


# -- 3. never passes by accident ------------------------------------------------------------------


def _no_pass(result, *needles: str) -> None:
    out = _output(result)
    assert result.ret == pytest.ExitCode.TESTS_FAILED, out
    assert "skipped" not in out.splitlines()[-1]
    for needle in needles:
        assert needle in out, out


def test_empty_dataset_fails(pytester):
    empty = pytester.path / "empty"
    empty.mkdir()
    _no_pass(_run(pytester, pytester.path / "work", "--dataset", str(empty)), "is empty")


def test_dataset_of_dangling_symlinks_fails(pytester):
    root = pytester.path / "mounted"
    root.mkdir()
    for name in ("Alice", "Bob"):
        (root / name).symlink_to(pytester.path / "unmounted" / name, target_is_directory=True)
    _no_pass(_run(pytester, pytester.path / "work", "--dataset", str(root)), "test_dataset")


def test_one_identity_folder_as_dataset_fails(pytester, demo_data):
    one = demo_data / "Maria_Rossi"
    _no_pass(_run(pytester, pytester.path / "work", "--dataset", str(one)), "looks like ONE identity folder")


def test_no_checkable_identity_fails(pytester):
    root = pytester.path / "broken"
    for name in ("Alice", "Bob"):
        (root / name).mkdir(parents=True)
        (root / name / "npKnown.npz").write_bytes(b"not a zip")
    _no_pass(_run(pytester, pytester.path / "work", "--dataset", str(root), "--threshold", "0.9"),
             "none of the 2 identity folder(s)")


def test_one_good_identity_is_a_checked_dataset(pytester):
    root = pytester.path / "single"
    write_face01(root, "Alice", np.eye(3, 8, dtype=np.float32))
    result = _run(pytester, pytester.path / "work", "--dataset", str(root), "--threshold", "0.9")
    assert result.ret == pytest.ExitCode.OK, _output(result)
    out = result.stdout.str()
    assert "failed" not in out.splitlines()[-1] and result.parseoutcomes()["passed"] >= 2


# -- 7. outputs that cannot be written ------------------------------------------------------------


def test_report_dir_that_is_a_file_is_refused_before_the_run(pytester, demo_data):
    blocker = pytester.path / "taken"
    blocker.write_text("x")
    result = _run(pytester, pytester.path / "work", "--dataset", str(demo_data), "--report-dir", str(blocker))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--report-dir" in _output(result) and "taken" in _output(result)
    assert "collected" not in result.stdout.str()  # refused before any search


def test_unwritable_folders_are_refused_before_the_run(pytester, demo_data):
    result = _run(pytester, pytester.path / "work", "--dataset", str(demo_data), "--report-dir", "/proc/dataset_checks")
    assert result.ret == pytest.ExitCode.USAGE_ERROR and "/proc/dataset_checks" in _output(result)
    base = pytester.path / "file"
    base.write_text("x")
    result = _run(pytester, pytester.path / "work", "--dataset", str(demo_data),
                  "--baseline", str(base / "baseline.csv"), "--update-baseline")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "baseline" in _output(result) and "not a folder" in _output(result)


def test_second_run_on_the_same_report_dir_is_refused(pytester, demo_data):
    out = pytester.path / "shared-out"
    out.mkdir()
    lock = FolderLock(out)
    assert lock.acquire() is None
    try:
        result = _run(pytester, pytester.path / "work", "--dataset", str(demo_data), "--report-dir", str(out))
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        assert "in use by another dataset_checks run" in _output(result)
        assert not (out / "findings.csv").exists()
    finally:
        lock.release()
    result = _run(pytester, pytester.path / "work", "--dataset", str(demo_data), "--report-dir", str(out))
    assert result.ret == pytest.ExitCode.TESTS_FAILED and (out / "findings.csv").is_file()


def test_write_failure_is_said_and_fails_the_run(pytester, monkeypatch, run):
    root = pytester.path / "ok"
    write_face01(root, "Alice", np.eye(2, 8, dtype=np.float32))
    write_face01(root, "Bob", np.eye(2, 8, k=4, dtype=np.float32))
    import dataset_checks.findings as files_mod  # the sinks call its writers

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files_mod, "write_json", full)
    rec = run("--dataset", str(root), "--threshold", "0.9")
    assert rec.ret == pytest.ExitCode.TESTS_FAILED  # every identity passed, but an output is missing
    out = pytester.path / "out"
    assert (out / "findings.csv").is_file() and not (out / "findings.json").exists()


def test_report_html_is_replaced_atomically(pytester, monkeypatch, run):
    root = pytester.path / "ok"
    write_face01(root, "Alice", np.eye(2, 8, dtype=np.float32))
    write_face01(root, "Bob", np.eye(2, 8, k=4, dtype=np.float32))
    out = pytester.path / "out"
    assert run("--dataset", str(root), "--threshold", "0.9").ret == pytest.ExitCode.OK
    first = (out / "report.html").read_bytes()
    assert b"dataset_checks run" in first
    from pytest_html import basereport

    def broken(self, *a, **k):
        Path(self._report_path).write_text("<html>half")  # what a killed or failing writer leaves
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(basereport.BaseReport, "_generate_report", broken)
    rec = run("--dataset", str(root), "--threshold", "0.9")
    assert rec.ret == pytest.ExitCode.TESTS_FAILED
    assert (out / "report.html").read_bytes() == first  # the last complete report stays
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]  # the half-written file is gone


def test_writable_dir_problem(tmp_path):
    assert writable_dir_problem(tmp_path / "new" / "deep") is None and (tmp_path / "new" / "deep").is_dir()
    (tmp_path / "f").write_text("x")
    assert "not a folder" in writable_dir_problem(tmp_path / "f")
    assert writable_dir_problem(tmp_path / "f" / "sub") is not None


def test_a_pair_the_exact_check_finds_is_never_dropped(pytester, monkeypatch, run):
    """If the index misses a pair and the exact sample sees it, the gate still fails on it."""
    root = pytester.path / "data"
    rng = np.random.default_rng(11)
    a, b, c = (rng.standard_normal((4, 16)).astype(np.float32) for _ in range(3))
    b[2] = a[1]  # one copy across folders
    for name, v in (("Alice", a), ("Bob", b), ("Carol", c)):
        write_face01(root, name, v)
    import dataset_checks.run as run_mod

    real = run_mod.find_pairs

    def lossy(*args, **kwargs):  # an index that lost every pair
        result = real(*args, **kwargs)
        return type(result)(result.i[:0], result.j[:0], result.sim[:0], result.info)

    monkeypatch.setattr(run_mod, "find_pairs", lossy)
    rec = run("--dataset", str(root), "--threshold", "0.99", "--rules", str(cross_identity_only(pytester.path)))
    from helpers import family_outcomes

    assert family_outcomes(rec, "test_identity") == {"Alice": "failed", "Bob": "failed", "Carol": "passed"}
    import json

    doc = json.loads((pytester.path / "out" / "findings.json").read_text(encoding="utf-8"))
    assert doc["verification"]["added_to_findings"] == 1 and doc["verification"]["recall"] == 0.0
