"""Which rules.yaml a run reads: --rules FILE, else rules.yaml in the current folder, else in
pytest's rootdir; never one inside the dataset. The header says which file and why."""

from __future__ import annotations

import sys
from pathlib import Path

import faiss  # noqa: F401  - before pytester's sys.modules snapshot (see test_plugin.py)
import numpy as np
import pytest

from helpers import tree_state, write_face01


@pytest.fixture(autouse=True)
def user_cache(pytester, monkeypatch) -> Path:
    cache = pytester.path / "user-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))  # `dataset-checks` from inside the dataset uses it
    return cache


@pytest.fixture
def faces(pytester) -> Path:
    rng = np.random.default_rng(7)
    root = pytester.path / "faces"
    for name in ("Alice", "Bob", "Carol"):
        write_face01(root, name, rng.standard_normal((3, 16)))
    return root


def _rules(folder: Path, threshold: float, name: str = "rules.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(f"threshold: {threshold}\n", encoding="utf-8")
    return path


def _run(pytester, cwd: Path, *args: str, command: tuple[str, ...] = ("-m", "pytest", "dataset_checks")):
    cwd.mkdir(parents=True, exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        return pytester.run(sys.executable, *command, "-p", "no:cacheprovider", *args)


def _cli():
    return ("-c", "import sys; from dataset_checks.cli import main; sys.exit(main())")


def _out(result) -> str:
    return result.stdout.str() + result.stderr.str()


def _used(result, path: Path, why: str, threshold: float) -> None:
    assert result.ret in (0, 1), _out(result)
    result.stdout.fnmatch_lines([f"dataset_checks: rules {path.resolve()} ({why}); *",
                                 f"dataset_checks: cosine threshold {threshold:g} (from *{path.name})"])


@pytest.mark.parametrize("command", ["pytest", "dataset-checks"])
def test_rules_in_the_current_folder_are_used_with_the_rootdir_elsewhere(pytester, faces, command):
    work = pytester.path / "work"
    here = _rules(work, 0.31)
    (pytester.path / "elsewhere").mkdir()
    args = ["--dataset", str(faces), f"--rootdir={pytester.path / 'elsewhere'}", "--report-dir", "out"]
    result = _run(pytester, work, *args) if command == "pytest" else _run(pytester, work, *args, command=_cli())
    _used(result, here, "from the current folder", 0.31)


def test_rules_option_wins_over_the_current_folder(pytester, faces):
    work = pytester.path / "work"
    _rules(work, 0.31)
    given = _rules(pytester.path / "mine", 0.42, name="strict.yaml")
    result = _run(pytester, work, "--dataset", str(faces), f"--rootdir={pytester.path / 'mine'}",
                  "--rules", str(given), "--report-dir", "out")
    _used(result, given, "--rules", 0.42)
    assert "0.31" not in _out(result)


def test_current_folder_wins_over_the_rootdir(pytester, faces):
    work = pytester.path / "work"
    here = _rules(work, 0.31)
    _rules(pytester.path / "root", 0.52)
    result = _run(pytester, work, "--dataset", str(faces), f"--rootdir={pytester.path / 'root'}", "--report-dir", "out")
    _used(result, here, "from the current folder", 0.31)
    assert "0.52" not in _out(result)


def test_rootdir_rules_when_the_current_folder_has_none(pytester, faces):
    root = pytester.path / "root"
    there = _rules(root, 0.52)
    result = _run(pytester, pytester.path / "work", "--dataset", str(faces), f"--rootdir={root}", "--report-dir", "out")
    _used(result, there, "from the rootdir", 0.52)


def test_rules_inside_the_dataset_are_never_read_even_from_the_current_folder(pytester, faces):
    _rules(faces, 0.13)  # the dataset's own rules.yaml, in the folder the run starts from
    there = _rules(pytester.path / "root", 0.52)
    before = tree_state(faces)
    out = pytester.path / "out"
    result = _run(pytester, faces, "--dataset=.", f"--rootdir={there.parent}", f"--report-dir={out}")
    _used(result, there, "from the rootdir", 0.52)  # the next place looked at, not the dataset's
    result.stdout.fnmatch_lines(["*note: *rules.yaml lies inside the dataset and is not read (--rules to use it)"])
    assert "0.13" not in _out(result)
    # the same with no rules.yaml outside the dataset: the built-in defaults, and the same note
    cli = _run(pytester, faces, "--dataset=.", f"--report-dir={out}", command=_cli())
    assert cli.ret in (0, 1), _out(cli)
    assert "rules (built-in defaults)" in cli.stdout.str() and "0.13" not in _out(cli)
    cli.stdout.fnmatch_lines(["*note: *rules.yaml lies inside the dataset and is not read*"])
    assert tree_state(faces) == before
