"""A check is one module: registering a Check subclass gives it a rules section, a test family,
a CSV file, a report section, findings.json entries and a baseline key."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import faiss  # noqa: F401  - before pytester's sys.modules snapshot (see test_plugin.py)
import numpy as np
import pytest

from dataset_checks import checks as registry
from dataset_checks.checks import Check, Issue, Param
from dataset_checks.rules import RulesError, load_rules
from helpers import family_outcomes, write_face01

PKG = str(Path(__file__).resolve().parents[1] / "dataset_checks")


class SmallFolders(Check):
    """A toy check: folders with fewer than `min_faces` faces."""

    name = "small_folders"
    title = "small folders"
    doc = "A folder with fewer faces than min_faces cannot be judged."
    params = {"min_faces": Param(3, "fewest faces a folder needs", kind="int", low=1)}

    def run(self, data, settings):
        counts = np.bincount(data.table.identity_of, minlength=len(data.table.identities))
        return [Issue(self.name, ident.name, score=float(settings["min_faces"] - n),
                      detail=f"{int(n)} face(s), fewer than {settings['min_faces']}", severity=settings.severity)
                for ident, n in zip(data.table.identities, counts) if n < settings["min_faces"]]


@pytest.fixture
def toy_check(monkeypatch):
    # imported before the toy is registered, so that every patch below is undone after the test
    import dataset_checks.test_identities as family_module

    registry.all_checks()
    monkeypatch.setitem(registry._REGISTRY, SmallFolders.name, SmallFolders)
    monkeypatch.setitem(vars(family_module), "test_small_folders", family_module._family(SmallFolders))
    return SmallFolders


@pytest.fixture
def data(pytester) -> Path:
    root = pytester.path / "data"
    rng = np.random.default_rng(3)
    for name, n in (("Alice", 4), ("Bob", 2), ("Carol", 1)):
        write_face01(root, name, rng.standard_normal((n, 16)).astype(np.float32))
    return root


def _run(pytester, data, *args):
    return pytester.inline_run(PKG, "-p", "no:cacheprovider", "--report-dir", "out", "--dataset", str(data),
                               "--threshold", "0.99", *args)




def test_a_registered_check_gets_family_files_report_and_json(pytester, data, toy_check):
    rec = _run(pytester, data)
    # the identities a check flags get a test each; the others share one
    assert family_outcomes(rec, "test_small_folders") == {"1 other identities": "passed", "Bob": "failed", "Carol": "failed"}
    out = pytester.path / "out"
    with open(out / "small_folders.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0][:5] == ["identity", "file", "other_identity", "other_file", "score"]
    assert [r[0] for r in rows[1:]] == ["Carol", "Bob"]  # ranked by evidence
    doc = json.loads((out / "findings.json").read_text(encoding="utf-8"))
    assert [i["identity"] for i in doc["checks"]["small_folders"]["issues"]] == ["Carol", "Bob"]
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "dc-check-small_folders" in html and "fewer than 3" in html


def test_rules_section_switches_and_tunes_it(pytester, data, toy_check):
    rules = pytester.path / "r.yaml"
    rules.write_text("checks:\n  small_folders:\n    min_faces: 2\n    severity: warn\n", encoding="utf-8")
    rec = _run(pytester, data, "--rules", str(rules))
    assert family_outcomes(rec, "test_small_folders") == {"2 other identities": "passed", "Carol": "passed"}  # warns
    rules.write_text("checks:\n  small_folders:\n    enabled: false\n", encoding="utf-8")
    rec = pytester.inline_run(PKG, "-p", "no:cacheprovider", "--report-dir", "off", "--dataset", str(data),
                              "--threshold", "0.99", "--rules", str(rules))
    assert family_outcomes(rec, "test_small_folders") == {}
    assert (pytester.path / "off" / "findings.csv").exists()
    assert not (pytester.path / "off" / "small_folders.csv").exists()


def test_rules_errors_name_check_and_key(tmp_path, toy_check):
    path = tmp_path / "rules.yaml"
    path.write_text("checks:\n  small_folders:\n    min_faces: 0\n", encoding="utf-8")
    with pytest.raises(RulesError) as info:
        load_rules(path)
    assert info.value.key == "checks.small_folders.min_faces" and "whole number >= 1" in str(info.value)
    path.write_text("checks:\n  no_such_check: {}\n", encoding="utf-8")
    with pytest.raises(RulesError) as info:
        load_rules(path)
    assert "no_such_check" in str(info.value)


def test_baseline_ratchets_each_check_on_its_own_key(pytester, data, toy_check):
    base = pytester.path / "gate" / "baseline.csv"
    rec = _run(pytester, data, "--baseline", str(base), "--update-baseline")
    assert rec.ret == pytest.ExitCode.OK
    text = base.read_text(encoding="utf-8")
    assert "small_folders,Bob,,,," in text and "small_folders,Carol,,,," in text
    rec = _run(pytester, data, "--baseline", str(base))
    assert rec.ret == pytest.ExitCode.OK
    write_face01(data, "Dave", np.ones((1, 16), np.float32))  # a NEW small folder fails
    rec = _run(pytester, data, "--baseline", str(base))
    assert family_outcomes(rec, "test_small_folders")["Dave"] == "failed"
    assert family_outcomes(rec, "test_small_folders")["Bob"] == "passed"


def test_a_broken_check_fails_its_family_and_spares_the_others(pytester, data, toy_check, monkeypatch):
    def boom(self, data, settings):
        raise RuntimeError("kaputt")

    monkeypatch.setattr(SmallFolders, "run", boom)
    rec = _run(pytester, data)
    assert set(family_outcomes(rec, "test_small_folders").values()) == {"failed"}
    assert set(family_outcomes(rec, "test_identity").values()) == {"passed"}


# -- the core's own checks, in the same form ---------------------------------------------------


def test_core_checks_are_registered_first():
    names = [c.name for c in registry.all_checks()]
    assert names[:3] == ["cross_identity", "faces_detected", "bad_input"]
    assert all(c.builtin for c in registry.all_checks()[:3]) and not any(c.builtin for c in registry.all_checks()[3:])
    assert registry.get("cross_identity").test_name() == "test_identity"


# -- discovery: a new check is its own module and nothing else ------------------------------------

SHIPPED_ORDER = ["cross_identity", "faces_detected", "bad_input", "misfiled", "consistency", "exact_duplicates",
                 "near_duplicates", "names", "leakage", "calibration"]


def test_report_order_is_each_checks_order():
    names = [c.name for c in registry.all_checks()]
    assert [n for n in names if n in SHIPPED_ORDER] == SHIPPED_ORDER  # a new check may sit anywhere


def test_every_module_but_the_helpers_is_a_check_module():
    import pkgutil

    modules = {m.name for m in pkgutil.iter_modules(registry.__path__)}
    assert registry._NOT_CHECKS <= modules  # no stale helper names
    assert set(registry.check_modules()) == modules - registry._NOT_CHECKS
    registry.all_checks()
    owners = {c.__module__.rpartition(".")[2] for c in registry._REGISTRY.values()
              if c.__module__.startswith(registry.__name__ + ".")}
    assert owners == set(registry.check_modules())  # each registers a check; no helper does


def test_a_check_without_an_order_comes_after_the_shipped_ones(toy_check):
    assert registry.all_checks()[-1] is SmallFolders


def test_a_new_check_module_is_found_and_placed_by_its_order(tmp_path, monkeypatch):
    import sys

    (tmp_path / "zz_toy_check.py").write_text(
        "from dataset_checks.checks import register\nfrom dataset_checks.checks.base import Check\n\n\n"
        "@register\nclass ToyCheck(Check):\n    name = 'toy_check'\n    title = 'toy'\n    doc = 'A toy.'\n"
        "    order = 15\n", encoding="utf-8")
    (tmp_path / "_toy_helper.py").write_text("raise AssertionError('a private module is not a check')\n",
                                             encoding="utf-8")
    monkeypatch.setattr(registry, "__path__", [*registry.__path__, str(tmp_path)])
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_loaded", False)
    module = f"{registry.__name__}.zz_toy_check"
    try:
        assert "zz_toy_check" in registry.check_modules() and "_toy_helper" not in registry.check_modules()
        names = [c.name for c in registry.all_checks()]
        assert names.index("misfiled") < names.index("toy_check") < names.index("consistency")
    finally:
        sys.modules.pop(module, None)
        vars(registry).pop("zz_toy_check", None)


@pytest.fixture
def pairs_and_bad(pytester) -> Path:
    """Alice and Bob share a face; Zed's embeddings file is corrupt."""
    root = pytester.path / "core"
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((3, 16)).astype(np.float32), rng.standard_normal((3, 16)).astype(np.float32)
    b[0] = a[0]
    write_face01(root, "Alice", a)
    write_face01(root, "Bob", b)
    (root / "Zed").mkdir()
    (root / "Zed" / "npKnown.npz").write_bytes(b"not a zip")
    return root


def _core(pytester, root, rules_text):
    rules = pytester.path / "core.yaml"
    rules.write_text(rules_text + "\n" + "\n".join(f"  {c.name}: {{enabled: false}}" for c in registry.all_checks()
                                                   if not c.builtin), encoding="utf-8")
    return pytester.inline_run(PKG, "-p", "no:cacheprovider", "--report-dir", "out", "--dataset", str(root),
                               "--threshold", "0.99", "--rules", str(rules))


def test_cross_identity_severity_and_switch(pytester, pairs_and_bad):
    fail = family_outcomes(_core(pytester, pairs_and_bad, "checks:"), "test_identity")
    assert fail == {"Alice": "failed", "Bob": "failed", "Zed": "failed"}
    rec = _core(pytester, pairs_and_bad, "checks:\n  cross_identity: {severity: warn}")
    assert family_outcomes(rec, "test_identity") == {"Alice": "passed", "Bob": "passed", "Zed": "failed"}
    warned = [w for w in rec.getcalls("pytest_warning_recorded") if "match" in str(w.warning_message.message)]
    assert warned  # the pair is still said, as a warning
    rec = _core(pytester, pairs_and_bad, "checks:\n  cross_identity: {enabled: false}")
    assert family_outcomes(rec, "test_identity")["Zed"] == "failed"  # an unusable folder still fails
    assert family_outcomes(rec, "test_identity")["Alice"] == "passed"


def test_bad_input_section_is_the_top_level_setting(pytester, pairs_and_bad, tmp_path):
    via_check = _core(pytester, pairs_and_bad, "checks:\n  bad_input: {severity: warn}\n  cross_identity: {severity: info}")
    assert family_outcomes(via_check, "test_identity")["Zed"] == "failed"  # nothing loaded: never a pass
    path = tmp_path / "r.yaml"
    path.write_text("bad_input: warn\n", encoding="utf-8")
    assert load_rules(path).check_settings("bad_input").severity == "warn"
    path.write_text("bad_input: warn\nchecks:\n  bad_input: {severity: fail}\n", encoding="utf-8")
    assert load_rules(path).bad_input == "fail"
    path.write_text("checks:\n  bad_input: {enabled: false}\n", encoding="utf-8")
    assert load_rules(path).bad_input == "info"


def test_faces_detected_off_collects_no_items(pytester):
    root = pytester.path / "imgs"
    from PIL import Image

    for name in ("Ann", "Ben"):
        (root / name).mkdir(parents=True)
        Image.new("RGB", (64, 64), (120, 90, 60)).save(root / name / "a.jpg")
    rules = pytester.path / "faces.yaml"
    for text, expect in (("checks:\n  faces_detected: {enabled: false}\n", False), ("", True)):
        rules.write_text(text, encoding="utf-8")
        result = pytester.runpytest_inprocess(PKG, "-p", "no:cacheprovider", "--report-dir", "out", "--dataset",
                                              str(root), "--rules", str(rules), "--collect-only", "-q")
        assert ("test_faces_detected[Ann]" in result.stdout.str()) is expect


def test_the_pipeline_runs_without_pytest(tmp_path, data):
    """rules -> vectors -> search -> findings -> checks as one typed result, pytest never imported."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from dataset_checks.discover import discover_identities
        from dataset_checks.rules import load_rules
        from dataset_checks.run import Pipeline, RunResult
        from dataclasses import replace
        root = Path({str(data)!r})
        rules = replace(load_rules(None), dataset=root)
        result = Pipeline(rules, root, discover_identities(root), Path({str(tmp_path / 'cache')!r})).execute()
        assert isinstance(result, RunResult) and set(result.findings.verdicts) == {{"Alice", "Bob", "Carol"}}
        assert "misfiled" in result.check_results and result.rules.threshold_auto
        assert "pytest" not in sys.modules, "the pipeline imported pytest"
        print("ok", result.rules.threshold)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stdout + done.stderr


def _function_level_imports(module: str) -> set[str]:
    """The dataset_checks modules `module` imports inside its functions (relative imports)."""
    import ast

    pkg_dir = Path(registry.__file__).resolve().parents[1]
    path = pkg_dir / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = pkg_dir / module.replace(".", "/") / "__init__.py"
    parts = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    for fn in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and node.level:
                    base = parts[: len(parts) - (node.level - 1)]
                    found.add(".".join(base + ([node.module] if node.module else [])))
    return found


def test_modules_the_checks_import_lazily_are_imported_before_the_lanes():
    # CPython 3.11 (gh-106905): a first import in two check lanes at once, under pytest's
    # assertion rewriting, can raise SystemError; check_run imports these before the threads.
    from dataset_checks.check_run import LANE_IMPORTS

    checks = {f"checks.{p.stem}" for p in Path(registry.__file__).parent.glob("*.py") if p.stem != "__init__"}
    seen, todo = set(), list(checks)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(_function_level_imports(module))
    missing = sorted(seen - checks - {"checks"} - set(LANE_IMPORTS))
    assert not missing, f"add to check_run.LANE_IMPORTS: {missing}"
