"""Node ids can be pasted back, and --collect-only lists what a run runs (issue 20, item 4).

Each command form is run in a subprocess, as a user runs it: plain `pytest dataset_checks` from a
folder far from the package (pytest picks a rootdir the package is not in, and prints ids such
as `../../test_identities.py::test_identity[X]`), `dataset-checks` (rootdir pinned to the cwd:
`test_identities.py::...`), and `pytest dataset_checks` from the checkout (`dataset_checks/...`).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dataset_checks
from helpers import unit_rows, write_face01

PKG = Path(dataset_checks.__file__).resolve().parent
DIM = 64
# a face filed in three folders: hostile, escaped (%25, %09) and unicode names fail and round-trip
SHARED = ("Alice", "a b%c", "tab\tname", "高橋", "x[1]", "a::b")
OTHERS = ("Bob", "Dave", "Eve")
SUMMARY = re.compile(r"^=+ (.*) in [0-9.]+s")


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    base = tmp_path_factory.mktemp("nodeids")
    data = base / "data" / "faces"
    rng = np.random.default_rng(7)
    centres = unit_rows(rng.standard_normal((len(SHARED) + len(OTHERS), DIM)))
    face = centres[0]
    for k, name in enumerate(SHARED + OTHERS):
        vecs = unit_rows(centres[k] + 0.05 * rng.standard_normal((3, DIM)))
        if name in SHARED:
            vecs[0] = face
        write_face01(data, name, vecs)
    rules = base / "rules.yaml"
    rules.write_text(f"threshold: 0.9\nembeddings:\n  cache: {base / 'cache'}\n", encoding="utf-8")
    far = base / "far" / "away"
    far.mkdir(parents=True)
    return {"base": base, "data": data, "rules": rules, "far": far}


def _command(form: str, layout) -> tuple[list[str], list[str], Path]:
    """(program, options, cwd) of a command form; the test path goes between them."""
    options = ["--dataset", str(layout["data"]), "--rules", str(layout["rules"]), "-p", "no:cacheprovider",
               "-p", "no:randomly", "--report-dir", str(layout["base"] / f"out-{form}")]
    if form == "cli":
        return [sys.executable, "-m", "dataset_checks.cli"], options, layout["far"]
    if form == "checkout":
        return [sys.executable, "-m", "pytest"], options, PKG.parent
    return [sys.executable, "-m", "pytest"], options, layout["far"]


def _run(program: list[str], args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS")}
    env["COLUMNS"] = "400"
    return subprocess.run([*program, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          encoding="utf-8", timeout=600)


def _outcomes(stdout: str) -> dict[str, str]:
    """-rA's short summary: node id (as printed) -> PASSED / FAILED."""
    out = {}
    for line in stdout.splitlines():
        word, _, rest = line.partition(" ")
        if word in ("PASSED", "FAILED"):
            out[rest.split(" - ")[0] if word == "FAILED" else rest] = word
    return out


def _counts(stdout: str) -> str:
    lines = [m.group(1) for m in map(SUMMARY.match, stdout.splitlines()) if m]
    return lines[-1] if lines else ""


def _suffix(node_id: str) -> str:
    return node_id.split("::", 1)[1]


def _test_path(form: str) -> list[str]:
    return [] if form == "cli" else ["dataset_checks"]


FORMS = ["far", "cli", "checkout"]


@pytest.mark.parametrize("form", FORMS)
def test_failed_node_ids_paste_back(layout, form):
    program, options, cwd = _command(form, layout)
    run = _run(program, [*_test_path(form), *options, "-rA"], cwd)
    assert run.returncode == 1, run.stdout + run.stderr
    got = _outcomes(run.stdout)
    failed = [node for node, word in got.items() if word == "FAILED"]
    shown = {_suffix(n) for n in failed}
    for name in ("Alice", "a b%25c", "tab%09name", "高橋", "x[1]", "a::b"):  # escaped as everywhere
        assert f"test_identity[{name}]" in shown
    assert any(n.startswith("test_misfiled[") or n.startswith("test_exact_duplicates[") for n in shown)
    if form == "far":
        assert all(n.startswith("../") for n in failed)  # outside the rootdir: no path that exists
    if form != "far":  # the far form pastes every id back; the others one per family (2 cores, ~2 s a run)
        firsts = {}
        for node in failed:
            firsts.setdefault(_suffix(node).split("[")[0], node)
        failed = list(firsts.values())
    for node in failed:
        again = _run(program, [node, *options, "-rA"], cwd)
        assert again.returncode == 1, (node, again.stdout + again.stderr)
        assert _outcomes(again.stdout) == {node: "FAILED"}, (node, again.stdout)  # that test, the same id
        assert _counts(again.stdout) == "1 failed", (node, again.stdout)


@pytest.mark.parametrize("form", FORMS)
def test_collect_only_lists_what_a_run_runs(layout, form):
    program, options, cwd = _command(form, layout)
    run = _run(program, [*_test_path(form), *options, "-rA"], cwd)
    executed = _outcomes(run.stdout)
    counts = _counts(run.stdout)
    assert sum(int(n) for n in re.findall(r"(\d+) (?:passed|failed)", counts)) == len(executed), run.stdout
    # the checks' families collapse: one item for the identities a check did not flag
    assert any(re.search(r"::test_names\[\d+ other identities\]$", n) for n in executed)
    out = Path(layout["base"] / f"out-{form}")
    for name in ("findings.csv", "findings.json"):
        (out / name).unlink()
    listed = _run(program, [*_test_path(form), *options, "--co", "-q"], cwd)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    ids = [line for line in listed.stdout.splitlines() if "::" in line]
    assert len(ids) == len(set(ids)) and f"{len(ids)} tests collected" in listed.stdout
    assert {_suffix(n) for n in ids} == {_suffix(n) for n in executed}
    if form != "far":  # the cwd is the rootdir: the listed ids are the printed ones
        assert set(ids) == set(executed)
    assert not (out / "findings.csv").exists() and not (out / "findings.json").exists()  # --co writes no findings
    # a listed id is a node id too: pasted back, it runs that test
    node = next(n for n in ids if "::test_identity[" in n and "%09" in n)
    again = _run(program, [node, *options, "-rA"], cwd)
    assert again.returncode == 1 and _counts(again.stdout) == "1 failed", again.stdout + again.stderr


def test_option_values_are_not_test_paths(layout):
    # `dataset_checks/...` not found here names the package, but only as a test path
    program, options, _ = _command("far", layout)
    cwd = layout["base"] / "elsewhere"  # its own: the dataset_checks/ made here must not shadow the package
    cwd.mkdir()
    options = options[:-1] + ["dataset_checks/out"]  # --report-dir dataset_checks/out, relative to the cwd
    listed = _run(program, ["dataset_checks", *options, "--co", "-q"], cwd)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert (cwd / "dataset_checks" / "out" / "report.html").is_file()
    assert not (PKG / "out").exists()


def test_unknown_test_identities_path_is_pytest_s_own(layout):
    # a missing test_identities.py whose `::` names no test of this package stays missing (status 4)
    program, options, cwd = _command("far", layout)
    run = _run(program, ["elsewhere/test_identities.py::test_something_else", *options], cwd)
    assert run.returncode == 4, run.stdout + run.stderr
    assert "not found" in run.stdout + run.stderr
