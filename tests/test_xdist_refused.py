"""pytest-xdist's -n: refused in one line (usage error, status 4) before anything is read or
written; the run computes everything once, in one process."""

from __future__ import annotations

import sys
from pathlib import Path

import faiss  # noqa: F401  - before pytester's sys.modules snapshot (see test_plugin.py)
import numpy as np
import pytest

from helpers import tree_state, write_face01

pytest.importorskip("xdist")  # in the `test` extra; skipped only where it is not installed


@pytest.fixture
def faces(pytester) -> Path:
    rng = np.random.default_rng(3)
    root = pytester.path / "faces"
    for name in ("Alice", "Bob", "Carol"):
        write_face01(root, name, rng.standard_normal((3, 16)))
    return root


def _run(pytester, cwd: Path, *args: str, cli: bool = False):
    cwd.mkdir(parents=True, exist_ok=True)
    command = (("-c", "import sys; from dataset_checks.cli import main; sys.exit(main())") if cli
               else ("-m", "pytest", "dataset_checks"))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        return pytester.run(sys.executable, *command, "-p", "no:cacheprovider", *args)


@pytest.mark.parametrize("cli", [False, True], ids=["pytest", "dataset-checks"])
@pytest.mark.parametrize("option", [("-n", "2"), ("-n", "auto"), ("--numprocesses=2",)])
def test_xdist_is_refused_in_one_line(pytester, faces, cli, option):
    work = pytester.path / "work"
    before = tree_state(faces)
    result = _run(pytester, work, f"--dataset={faces}", *option, cli=cli)
    lines = [line for line in result.outlines + result.errlines if line.strip()]
    assert result.ret == pytest.ExitCode.USAGE_ERROR, "\n".join(lines)
    assert len(lines) == 1, "\n".join(lines)
    assert "-n " in lines[0] and "pytest-xdist" in lines[0] and "one process" in lines[0]
    assert "Traceback" not in lines[0]
    assert sorted(p.name for p in work.iterdir()) == []  # no reports/, no report.html, no cache
    assert tree_state(faces) == before


def test_no_workers_still_runs(pytester, faces):
    """-n 0 (xdist's own "off") and --collect-only (never distributed) are not refused."""
    work = pytester.path / "work"
    result = _run(pytester, work, f"--dataset={faces}", "-n", "0", "--threshold", "0.99")
    assert result.ret in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED), result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines(["dataset_checks: * (3 identity folder(s))", "*wrote *findings.csv"])
    assert (work / "reports" / "findings.csv").is_file()
    listed = _run(pytester, work, f"--dataset={faces}", "-n", "2", "--collect-only", "-q")
    assert listed.ret == pytest.ExitCode.OK, listed.stdout.str() + listed.stderr.str()
    assert "test_identity[Alice]" in listed.stdout.str()
