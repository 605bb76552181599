"""The plugin uses pytest and pytest-html through their public APIs only: no `_pytest` import, no
private attribute of their objects; what that once bought (unescaped ids, evidence order, light
rows, the report's path) still holds."""

from __future__ import annotations

import ast
import json
import re
from html import unescape
from pathlib import Path

import faiss  # noqa: F401  - before pytester's sys.modules snapshot (see test_plugin.py)
import numpy as np
import pytest

import dataset_checks
from dataset_checks.text import shown
from helpers import write_face01

PKG = Path(dataset_checks.__file__).resolve().parent
PLUGIN = PKG / "plugin.py"
OWN_PRIVATE = {"_findings"}  # CheckSession's own attribute (session.py), not pytest's or pytest-html's


def test_plugin_uses_no_private_pytest_or_pytest_html_api():
    tree = ast.parse(PLUGIN.read_text(encoding="utf-8"))
    ours = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.ClassDef)}
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) and node.module
                                                     else [])
            problems += [f"line {node.lineno}: imports {n}" for n in names if n.split(".")[0] == "_pytest"]
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if node.attr not in OWN_PRIVATE and node.attr not in ours:
                problems.append(f"line {node.lineno}: .{node.attr}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                node.func.id in ("getattr", "setattr", "hasattr") and len(node.args) > 1:
            name = node.args[1]
            if isinstance(name, ast.Constant) and isinstance(name.value, str) and name.value.startswith("_"):
                problems.append(f"line {node.lineno}: {node.func.id}(..., {name.value!r})")
    assert not problems, problems
    assert "_inicache" not in PLUGIN.read_text(encoding="utf-8")


def _dataset(root: Path, names: list[str]) -> Path:
    rng = np.random.default_rng(5)
    vecs = rng.standard_normal((len(names), 3, 32)).astype(np.float32)
    vecs[1, 0] = vecs[0, 0]  # the first two folders share a photo: both fail
    for k, name in enumerate(names):
        write_face01(root, name, vecs[k], files=[f"f{k}_{j}.jpg" for j in range(3)])
    return root


NAMES = ["高橋", "髙橋", "a\x1bb", "Ann"]


def test_identity_ids_are_the_shown_folder_names(pytester):
    data = _dataset(pytester.path / "data", NAMES)
    result = pytester.runpytest_inprocess(str(PKG), "-p", "no:cacheprovider", "--dataset", str(data),
                                          "--report-dir", "out", "--collect-only", "-q")
    out = result.stdout.str()
    for name in NAMES:  # 高橋 and 髙橋 as themselves (not \u escapes), the escape as text.shown writes it
        assert f"::test_identity[{shown(name)}]" in out, out
    assert "\\u" not in out and "\x1b" not in out and "%1B" in shown("a\x1bb")


def _report(pytester, data: Path, *args: str):
    result = pytester.runpytest_inprocess(str(PKG), "-p", "no:cacheprovider", "--dataset", str(data),
                                          "--threshold", "0.99", "--report-dir", "out", *args)
    html = (pytester.path / "out" / "report.html").read_text(encoding="utf-8")
    found = re.search(r'data-jsonblob="([^"]*)"', html)
    assert found, html[:500]
    blob = json.loads(unescape(found.group(1)))
    return result, html, blob


def test_report_opens_in_evidence_order_unless_the_ini_sorts(pytester):
    data = _dataset(pytester.path / "data", NAMES)
    result, html, blob = _report(pytester, data)
    assert blob["initialSort"] == "dcorder" and blob["title"] == "dataset_checks report"
    assert '<div class="media"></div>' in html and "<video" not in html  # light rows
    assert not list((pytester.path / "out").glob(".report.html.*"))  # the temp file was renamed
    # one line names the report, the real file (never the temp file pytest-html wrote)
    real = (pytester.path / "out" / "report.html").as_uri()
    lines = [line for line in result.stdout.lines if "Generated html report" in line]
    assert len(lines) == 1 and real in lines[0], lines
    _, _, blob = _report(pytester, data, "-o", "initial_sort=testId")
    assert blob["initialSort"] == "testId"


def test_cache_dir_inside_the_dataset_is_refused(pytester):
    data = _dataset(pytester.path / "data", NAMES)
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    result = pytester.runpytest_inprocess(str(PKG), "--dataset", str(data), "--report-dir", "out",
                                          "-o", f"cache_dir={data}/.cache", "--cache-clear")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert "inside the dataset" in err and "-p no:cacheprovider" in err and "cache_dir=" in err
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before
