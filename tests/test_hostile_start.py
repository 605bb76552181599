"""Issue 19, item 1: code from the dataset must not run, not even during pytest's own start-up.

A dataset that holds a pytest configuration file (`pythonpath = .`, `addopts = -p evil_plugin
--debug=FILE`), an evil_plugin.py and a conftest.py gets that code imported and that file written
by `pytest dataset_checks --dataset DIR`: pytest reads its configuration before any plugin
loads, and takes DIR for a test path then. `dataset-checks` pins pytest's configuration instead.

These tests start real processes (pytest's start-up is what is under test, so not pytester's
in-process runs), always the executables of the interpreter running the tests.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import tree_state, write_dataset

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 300
MARKERS = ("evil_plugin", "conftest", "debug.log")

# one file of each kind pytest reads its configuration from; each says: import evil_plugin from
# the dataset, and write a debug file
CONFIGS = {
    "pytest.ini": "[pytest]\npythonpath = .\naddopts = -p evil_plugin --debug={debug}\n",
    "pytest.toml": '[pytest]\npythonpath = ["."]\naddopts = ["-p", "evil_plugin", "--debug={debug}"]\n',
    "tox.ini": "[pytest]\npythonpath = .\naddopts = -p evil_plugin --debug={debug}\n",
    "setup.cfg": "[tool:pytest]\npythonpath = .\naddopts = -p evil_plugin --debug={debug}\n",
    "pyproject.toml": '[tool.pytest.ini_options]\npythonpath = ["."]\naddopts = "-p evil_plugin --debug={debug}"\n',
}


def _script(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent))
    assert found, f"{name} is not installed beside {sys.executable} (pip install -e .)"
    return found


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_", "HYPOTHESIS")) and k not in ("PYTHONPATH",)}
    env["XDG_CACHE_HOME"] = str(tmp_path / "user-cache")  # the user cache, never the real one
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # no __pycache__ beside a module (there should be none)
    return env


def _run(cmd: list[str], cwd: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env={**_env(tmp_path), **env}, capture_output=True, text=True,
                          timeout=TIMEOUT)


class Hostile:
    def __init__(self, tmp_path: Path, config: str = "pytest.ini"):
        rng = np.random.default_rng(19)
        faces = rng.standard_normal((7, 512))
        faces /= np.linalg.norm(faces, axis=1, keepdims=True)
        faces[3] = faces[0]  # Bob_0001.jpg is Alice_0001.jpg: one cross-identity finding
        self.markers = tmp_path / "markers"
        self.markers.mkdir()
        self.root = write_dataset(tmp_path / "faces", {"Alice": faces[:3], "Bob": faces[3:5], "Carol": faces[5:]})
        debug = self.markers / "debug.log"
        (self.root / config).write_text(CONFIGS[config].format(debug=debug), encoding="utf-8")
        for module in ("evil_plugin", "conftest"):
            (self.root / f"{module}.py").write_text(
                f"open({str(self.markers / module)!r}, 'w').write('imported')\n", encoding="utf-8")
        self.far = tmp_path / "far"  # a folder that shares nothing with the dataset but tmp_path
        self.far.mkdir()
        self.reports = tmp_path / "reports"
        self.before = tree_state(self.root)

    def written(self) -> list[str]:
        return sorted(p.name for p in self.markers.iterdir())

    def assert_untouched(self) -> None:
        assert self.written() == [], f"code or options from the dataset ran: {self.written()}"
        assert tree_state(self.root) == self.before

    def assert_checked(self, result: subprocess.CompletedProcess) -> None:
        """The run checked this dataset: the planted pair fails it, and it says so."""
        out = result.stdout + result.stderr
        assert result.returncode == pytest.ExitCode.TESTS_FAILED, out
        assert f"dataset_checks: {self.root} (3 identity folder(s))" in out
        assert re.search(r"\b\d+ failed\b", out) and ("test_identity[Alice]" in out or "test_identity[Bob]" in out)
        findings = json.loads((self.reports / "findings.json").read_text(encoding="utf-8"))
        assert findings["dataset"] == str(self.root)
        pairs = {frozenset((f["identity"], f["other_identity"])) for f in findings["findings"]}
        assert pairs == {frozenset(("Alice", "Bob"))}, findings["findings"]


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_the_plain_two_token_form_obeys_the_dataset(tmp_path, config):
    """DOCUMENTS PYTEST'S BEHAVIOUR (the reason `dataset-checks` exists), and proves that each
    hostile dataset of these tests is live: with `--dataset DIR` as two tokens, pytest takes DIR
    for a test path while it looks for its configuration, before the plugin is loaded, and runs
    the dataset's code. The plugin can only refuse afterwards. The docs never show this form
    (test_docs_never_show_the_unsafe_form)."""
    ds = Hostile(tmp_path, config)
    result = _run([sys.executable, "-m", "pytest", "dataset_checks", "--dataset", str(ds.root),
                   f"--report-dir={ds.reports}"], ds.far, tmp_path)
    assert "evil_plugin" in ds.written() and "debug.log" in ds.written()
    assert result.returncode == pytest.ExitCode.USAGE_ERROR  # the plugin's refusal, too late
    assert "inside the dataset" in result.stderr and "dataset-checks --dataset" in result.stderr


def test_the_plain_form_with_equals_is_safe_only_from_another_folder(tmp_path):
    """DOCUMENTS PYTEST'S BEHAVIOUR: pytest 9 takes a path for a test path only as a word of its
    own, so `--dataset=DIR` (and `--report-dir=`) run from a folder outside the dataset leave its
    configuration unread. Run from inside the dataset, pytest finds its pytest.ini by walking up
    from the cwd, '=' or not, and no plugin can stop it (the README says: dataset-checks)."""
    ds = Hostile(tmp_path)
    result = _run([sys.executable, "-m", "pytest", "dataset_checks", f"--dataset={ds.root}",
                   f"--report-dir={ds.reports}"], ds.far, tmp_path)
    ds.assert_untouched()
    ds.assert_checked(result)
    inside = _run([sys.executable, "-m", "pytest", "dataset_checks", "--dataset=.", f"--report-dir={ds.reports}"],
                  ds.root, tmp_path)
    assert "evil_plugin" in ds.written() and "debug.log" in ds.written()
    assert inside.returncode == pytest.ExitCode.USAGE_ERROR and "dataset-checks --dataset" in inside.stderr


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_dataset_checks_reads_nothing_of_the_dataset(tmp_path, config):
    ds = Hostile(tmp_path, config)
    result = _run([_script("dataset-checks"), "--dataset", str(ds.root), "--report-dir", str(ds.reports)],
                  ds.far, tmp_path)
    ds.assert_untouched()
    ds.assert_checked(result)
    assert "pytest_pinned.ini" in result.stdout  # pytest's header: configfile
    assert f"rootdir: {ds.far}" in result.stdout


def test_dataset_checks_with_equals_and_passed_through_options(tmp_path):
    ds = Hostile(tmp_path)
    result = _run([_script("dataset-checks"), f"--dataset={ds.root}", "--report-dir", str(ds.reports),
                   "--threshold", "0.9", "-x", "-p", "no:randomly"], ds.far, tmp_path)
    ds.assert_untouched()
    ds.assert_checked(result)
    assert "cosine threshold 0.9 (from --threshold)" in result.stdout
    assert "stopping after 1 failures" in result.stdout  # -x reached pytest


def test_dataset_checks_from_inside_the_dataset(tmp_path):
    ds = Hostile(tmp_path)
    refused = _run([_script("dataset-checks"), "--dataset", "."], ds.root, tmp_path)
    assert refused.returncode == pytest.ExitCode.USAGE_ERROR
    assert refused.stderr.strip().count("\n") == 0 and "give --report-dir outside it" in refused.stderr
    ds.assert_untouched()
    result = _run([_script("dataset-checks"), "--dataset", ".", "--report-dir", str(ds.reports)], ds.root, tmp_path)
    ds.assert_untouched()
    ds.assert_checked(result)
    assert f"rootdir: {tmp_path / 'user-cache' / 'dataset_checks' / 'rootdir'}" in result.stdout


def test_python_m_from_inside_the_dataset_imports_nothing_from_it(tmp_path):
    """`python -m` puts the cwd on sys.path: -p evil_plugin would find the dataset's module."""
    ds = Hostile(tmp_path)
    cmd = [sys.executable, "-m", "dataset_checks.cli", "--dataset", ".", "--report-dir", str(ds.reports)]
    refused = _run([*cmd, "-p", "evil_plugin"], ds.root, tmp_path)
    assert refused.returncode == pytest.ExitCode.USAGE_ERROR, refused.stdout + refused.stderr
    assert "-p evil_plugin: its module" in refused.stderr and "inside the dataset" in refused.stderr
    ds.assert_untouched()
    ds.assert_checked(_run(cmd, ds.root, tmp_path))
    ds.assert_untouched()


@pytest.mark.parametrize("hostile", [
    ["{ds}"], ["{ds}/Alice"], ["-c", "{ds}/pytest.ini"], ["--config-file={ds}/pytest.ini"], ["--rootdir", "{ds}"],
    ["--confcutdir={ds}"], ["--debug={ds}/debug.log"], ["--log-file", "{ds}/run.log"],
], ids=lambda args: " ".join(args).replace("{ds}", "DS"))
def test_paths_into_the_dataset_are_refused(tmp_path, hostile):
    ds = Hostile(tmp_path)
    args = [arg.format(ds=ds.root) for arg in hostile]
    result = _run([_script("dataset-checks"), "--dataset", str(ds.root), "--report-dir", str(ds.reports), *args],
                  ds.far, tmp_path)
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stdout + result.stderr
    assert "dataset-checks" in result.stderr and ("inside the dataset" in result.stderr
                                                  or "runs the dataset_checks tests only" in result.stderr)
    assert not ds.reports.exists()  # refused before the run
    ds.assert_untouched()


def test_pytest_addopts_cannot_smuggle_the_dataset_in(tmp_path):
    """PYTEST_ADDOPTS is the user's own and applies, under the same checks."""
    ds = Hostile(tmp_path)
    cmd = [_script("dataset-checks"), "--dataset", str(ds.root), "--report-dir", str(ds.reports)]
    refused = _run(cmd, ds.far, tmp_path, PYTEST_ADDOPTS=f"--co {ds.root}")
    assert refused.returncode == pytest.ExitCode.USAGE_ERROR and "runs the dataset_checks tests only" in refused.stderr
    ds.assert_untouched()
    result = _run(cmd, ds.far, tmp_path, PYTEST_ADDOPTS="-p no:randomly -rN")
    ds.assert_untouched()
    ds.assert_checked(result)
    assert "short test summary info" not in result.stdout  # -rN from PYTEST_ADDOPTS applied


def test_help_says_what_is_pinned(tmp_path):
    result = _run([_script("dataset-checks"), "--help"], tmp_path, tmp_path)
    assert result.returncode == 0, result.stderr
    for needle in ("usage: dataset-checks", "--dataset=DIR", "pytest_pinned.ini", "--noconftest",
                   "PYTEST_ADDOPTS", "face dataset checks"):
        assert needle in result.stdout, needle


def test_pinned_config_is_shipped_and_not_discovered():
    """The pinned file is package data, and its name is none that pytest looks for by itself
    (`pytest dataset_checks` in a checkout would otherwise root there)."""
    from _pytest.config import findpaths

    from dataset_checks.cli import PINNED_INI

    assert PINNED_INI.is_file() and PINNED_INI.parent == REPO / "dataset_checks"
    names = getattr(findpaths, "CONFIG_LOADERS_BY_NAME", None) or ("pytest.ini", ".pytest.ini", "pytest.toml",
                                                                    ".pytest.toml", "pyproject.toml", "tox.ini",
                                                                    "setup.cfg")
    assert PINNED_INI.name not in names
    assert "pytest_pinned.ini" in (REPO / "pyproject.toml").read_text(encoding="utf-8")


# -- the docs show only safe forms --------------------------------------------------------------

PAGES = ["README.md", *(f"docs/{p.name}" for p in sorted((REPO / "docs").glob("*.md")))]
EXAMPLES = [".pre-commit-hooks.yaml", *(f"examples/{p.name}" for p in sorted((REPO / "examples").glob("*.y*ml")))]
DOCS = [*PAGES, *EXAMPLES]
_PYTEST_RUN = re.compile(r"\bpytest\s+dataset_checks\b")
_TWO_TOKEN_DATASET = re.compile(r"--(dataset|against)\s+[^\s|`'\"]")


def _commands(text: str) -> list[str]:
    """Each `pytest dataset_checks ...` command of a document, with its continuation lines (a
    trailing backslash, or indented lines starting with an option, as in a YAML folded block);
    inside inline code, up to the closing backtick."""
    lines = text.splitlines()
    found = []
    for k, line in enumerate(lines):
        for match in _PYTEST_RUN.finditer(line):
            rest = line[match.start():]
            if line[:match.start()].count("`") % 2:  # inline code
                found.append(rest.split("`", 1)[0])
                continue
            command = [rest]
            j = k + 1
            while j < len(lines) and (command[-1].rstrip().endswith("\\") or re.match(r"\s+(--|\$)", lines[j])):
                command.append(lines[j])
                j += 1
            found.append("\n".join(command))
    return found


def test_docs_never_show_the_unsafe_form():
    sample = ("```bash\npytest dataset_checks --dataset /data/faces\n```\n"
              "run: >\n  pytest dataset_checks\n  --dataset data/faces\n"
              "see `pytest dataset_checks --against lfw/` here\n"
              "safe: `pytest dataset_checks --dataset=/data/faces` and dataset-checks --dataset /data/faces\n")
    assert [bool(_TWO_TOKEN_DATASET.search(c)) for c in _commands(sample)] == [True, True, True, False]
    unsafe = [(doc, command) for doc in DOCS for command in _commands((REPO / doc).read_text(encoding="utf-8"))
              if _TWO_TOKEN_DATASET.search(command)]
    assert unsafe == []
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "dataset-checks --dataset /data/faces" in readme
    assert "docs/guarantees.md" in PAGES and "docs/usage.md" in PAGES  # the docs pages are scanned too
    for doc in EXAMPLES:  # every CI / pre-commit example runs the safe command
        assert re.search(r"(^|[\s:>])dataset-checks[ \t]+-", (REPO / doc).read_text(encoding="utf-8"), re.M), doc
