"""`pytest dataset_checks` end to end, through pytester: ids, outcomes, messages, files, exit codes."""

from __future__ import annotations

import csv
import io
import json
import re
import sys
import unicodedata
from pathlib import Path

import faiss  # noqa: F401  - imported here, before pytester's sys.modules snapshot: re-importing
import numpy as np  # the compiled module in a later in-process run would crash the interpreter
import pytest

import dataset_checks
from dataset_checks.discover import discover_identities
from dataset_checks.findings import CSV_HEADER
from dataset_checks.search import exact_pairs
from dataset_checks.vectors import load_table
from helpers import cross_identity_only, tree_state, write_face01

PKG = str(Path(dataset_checks.__file__).resolve().parent)
DEMO_FAILURES = {"Live_Stream_Host", "Olivia_Brown", "Maria_Rossi", "Sofia_Russo", "高橋一生", "髙橋一生"}
DIM = 64


def _unit(v):
    return v / np.linalg.norm(v)


def build_dataset(root: Path, seed: int = 0) -> Path:
    """Six identities, three planted cross-folder copies of different strength."""
    rng = np.random.default_rng(seed)
    sizes = {"Alice": 5, "Bob": 5, "Carol": 4, "Dave": 4, "高橋一生": 3, "髙橋一生": 3}
    vecs = {}
    for name, n in sizes.items():
        c = _unit(rng.standard_normal(DIM))
        vecs[name] = c + np.sqrt(1 / 0.6 - 1) / np.sqrt(DIM) * rng.standard_normal((n, DIM))

    def copy(src, i, dst, j, noise):
        v = _unit(vecs[src][i]) + noise / np.sqrt(DIM) * rng.standard_normal(DIM)
        vecs[dst][j] = v

    copy("Alice", 1, "Bob", 2, 0.05)  # ~0.999
    copy("Alice", 3, "Carol", 0, 0.35)  # ~0.9
    copy("高橋一生", 0, "髙橋一生", 0, 0.15)
    for name, v in vecs.items():
        write_face01(root, name, v.astype(np.float32), shape_3d=True)
    return root


def reference_rows(root: Path, threshold: float) -> list[tuple]:
    """findings.csv rows computed by brute force, independently of the plugin."""
    idents = discover_identities(root)
    table = load_table(root, idents)
    ref = exact_pairs(table.vectors, table.identity_of, threshold)
    rows = []
    for i, j, s in zip(ref.i.tolist(), ref.j.tolist(), ref.sim.tolist()):
        a = (idents[table.identity_of[i]].name, table.files[i])
        b = (idents[table.identity_of[j]].name, table.files[j])
        a, b = min(a, b), max(a, b)
        rows.append((*a, *b, s))
    rows.sort(key=lambda r: (-r[4], r[:4]))
    return rows


def pair_sim(root: Path, a: str, b: str) -> float:
    rows = [r for r in reference_rows(root, -1.0) if {r[0], r[2]} == {a, b}]
    return max(r[4] for r in rows)


def read_csv_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


def outcomes(rec) -> dict[str, str]:
    """test id -> outcome, from an inline run's reports."""
    out = {}
    for rep in rec.getreports("pytest_runtest_logreport"):
        if rep.when == "call" or (rep.when == "setup" and rep.outcome != "passed"):
            m = re.search(r"::test_identity\[(.*)\]$", rep.nodeid, re.S)
            if m:  # other tests of the package (image checks) are not this file's subject
                out[m.group(1)] = rep.outcome
    return out


def summary_outcomes(text: str) -> dict[str, str]:
    """test id -> outcome, from the short summary of a run with -rA."""
    out = {}
    for m in re.finditer(r"^(PASSED|FAILED) \S*::test_identity\[(.*?)\](?: - .*)?$", text, re.M):
        out[m.group(2)] = m.group(1).lower()
    return out


def failure_text(rec, ident: str) -> str:
    """The whole failure message of an identity's test (the terminal shows a brief of it)."""
    for rep in rec.getreports("pytest_runtest_logreport"):
        if rep.when == "call" and rep.nodeid.endswith(f"::test_identity[{ident}]"):
            return str(rep.longrepr)
    raise AssertionError(f"no report for {ident}")


@pytest.fixture
def dataset(pytester) -> Path:
    return build_dataset(pytester.path / "data")


# -- outcomes, ids, messages ---------------------------------------------------------------------


def test_outcomes_and_ids_per_identity(pytester, dataset, run):
    t = 0.85
    rec = run("--dataset", str(dataset), "--threshold", str(t))
    assert rec.ret == pytest.ExitCode.TESTS_FAILED
    got = outcomes(rec)
    assert set(got) == {p.name for p in dataset.iterdir()}
    expected_fail = {r[0] for r in reference_rows(dataset, t)} | {r[2] for r in reference_rows(dataset, t)}
    assert expected_fail == {"Alice", "Bob", "Carol", "高橋一生", "髙橋一生"}
    assert {k for k, v in got.items() if v == "failed"} == expected_fail
    assert {k for k, v in got.items() if v == "passed"} == {"Dave"}


def test_failure_message_format_highest_first(pytester, dataset, run):
    rec = run("--dataset", str(dataset), "--threshold", "0.85")
    text = failure_text(rec, "Alice")
    lines = text.splitlines()
    ref = [r for r in reference_rows(dataset, 0.85) if "Alice" in (r[0], r[2])]
    assert lines[0] == f"Alice: {len(ref)} face pair(s) with 2 other folder(s) at cosine >= 0.85"
    # the pattern of each other folder: Bob's copy (~0.999) is the same photo, Carol's (~0.9) is not
    assert sum(line.startswith("  copies: ") for line in lines) == 1
    assert sum(line.startswith("  different photos, one-to-one: ") for line in lines) == 1
    pat = re.compile(r"^  (\S+) ↔ (\S+)/(\S+)  (\d\.\d{4})$")
    matched = [m for m in map(pat.match, lines) if m]
    sims = [float(m.group(4)) for m in matched]
    assert sims == sorted(sims, reverse=True) and len(sims) == 2
    expect = []
    for r in ref:
        own, other_id, other_file = (r[1], r[2], r[3]) if r[0] == "Alice" else (r[3], r[0], r[1])
        expect.append(f"  {own} ↔ {other_id}/{other_file}  {r[4]:.4f}")
    assert [m.group(0) for m in matched] == expect
    assert "Traceback" not in text and "def test_identity" not in text and len(lines) <= 12
    # seen from the other side
    bob = failure_text(rec, "Bob").splitlines()
    assert any(line.startswith("  Bob_0003.jpg ↔ Alice/Alice_0002.jpg  0.99") for line in bob)


def test_exit_code_zero_when_all_pass(pytester, dataset, run):
    # the planted copies are misfiled faces too: this test is about the cross-identity gate
    rec = run("--dataset", str(dataset), "--threshold", "1.0", "--rules", str(cross_identity_only(pytester.path)))
    # nothing reaches 1.0 (float noise aside, the copies are re-encoded)
    assert reference_rows(dataset, 1.0) == []
    assert rec.ret == pytest.ExitCode.OK
    assert set(outcomes(rec).values()) == {"passed"}


def test_unicode_ids_exact_and_nfc_nfd_distinct(pytester, run, rng):
    root = pytester.path / "uni"
    nfc, nfd = unicodedata.normalize("NFC", "José_Ñúñez"), unicodedata.normalize("NFD", "José_Ñúñez")
    names = [nfc, nfd, "高橋一生", "髙橋一生", "Zoë Ångström", "a[b]"]
    for name in names:
        write_face01(root, name, rng.standard_normal((2, 16)).astype(np.float32))
    if len(list(root.iterdir())) != len(names):
        pytest.skip("this file system normalises Unicode names")
    rec = run("--dataset", str(root), "--threshold", "0.999")
    got = outcomes(rec)
    assert sorted(got) == sorted(names)
    assert got[nfc] == got[nfd] == "passed"
    ids = [rep.nodeid for rep in rec.getreports("pytest_runtest_logreport")
           if rep.when == "call" and "::test_identity[" in rep.nodeid]
    assert len(set(ids)) == len(names)
    assert not any("\\u" in i or "\\x" in i for i in ids)


def test_identity_thresholds_per_identity(pytester, dataset, run):
    s = pair_sim(dataset, "Alice", "Carol")
    assert 0.8 < s < 0.97
    rules = pytester.path / "r.yaml"
    # Carol is stricter than the pair, Alice's default catches it
    rules.write_text(f"threshold: {s - 0.01:.6f}\nidentity_thresholds:\n  Carol: {s + 0.005:.6f}\n", encoding="utf-8")
    got = outcomes(run("--dataset", str(dataset), "--rules", str(rules)))
    assert got["Carol"] == "passed" and got["Alice"] == "failed"
    # the other way round: only Carol's lower threshold reaches the pair
    rules.write_text(f"threshold: 0.99\nidentity_thresholds:\n  Carol: {s - 0.01:.6f}\n", encoding="utf-8")
    rec = run("--dataset", str(dataset), "--rules", str(rules), report_dir="out2")
    got = outcomes(rec)
    assert got["Carol"] == "failed"
    assert failure_text(rec, "Carol").splitlines()[-1].endswith(f"Alice/Alice_0004.jpg  {s:.4f}")
    # Alice still fails on the near-identical Bob copy, but not on the Carol pair
    assert got["Alice"] == "failed" and "Carol" not in failure_text(rec, "Alice")
    header, rows = read_csv_rows(pytester.path / "out2" / "findings.csv")
    assert {(r[0], r[2]) for r in rows} == {("Alice", "Bob"), ("Alice", "Carol")}


def test_allowlisted_pairs_do_not_fail(pytester, dataset, run):
    rules = pytester.path / "r.yaml"
    rules.write_text(
        "threshold: 0.85\nallow:\n  - identities: [髙橋一生, 高橋一生]\n    reason: spelling variants checked\n",
        encoding="utf-8",
    )
    rec = run("--dataset", str(dataset), "--rules", str(rules))
    got = outcomes(rec)
    assert got["高橋一生"] == got["髙橋一生"] == "passed"
    assert got["Alice"] == "failed"
    doc = json.loads((pytester.path / "out" / "findings.json").read_text(encoding="utf-8"))
    waived = doc["waived"]
    assert waived and all({w["identity"], w["other_identity"]} == {"高橋一生", "髙橋一生"} for w in waived)
    assert all(w["waived"] == "allowlisted: spelling variants checked" for w in waived)
    assert not any("橋" in f["identity"] for f in doc["findings"])
    _, rows = read_csv_rows(pytester.path / "out" / "findings.csv")
    assert not any("橋" in r[0] for r in rows)


# -- findings files ------------------------------------------------------------------------------


def test_findings_csv_equals_brute_force(pytester, dataset, run):
    t = 0.5
    rec = run("--dataset", str(dataset), "--threshold", str(t), report_dir="reports_here")
    assert rec.ret == 1
    header, rows = read_csv_rows(pytester.path / "reports_here" / "findings.csv")
    assert tuple(header) == CSV_HEADER == ("identity", "file", "other_identity", "other_file", "similarity")
    ref = reference_rows(dataset, t)
    assert len(ref) >= 3
    assert rows == [[*r[:4], f"{r[4]:.6f}"] for r in ref]
    sims = [float(r[4]) for r in rows]
    assert sims == sorted(sims, reverse=True)


def test_findings_json_metadata(pytester, dataset, run):
    rules = pytester.path / "r.yaml"
    rules.write_text("threshold: 0.8\nindex:\n  type: flat\n", encoding="utf-8")
    run("--dataset", str(dataset), "--rules", str(rules), "--threshold", "0.85")
    doc = json.loads((pytester.path / "out" / "findings.json").read_text(encoding="utf-8"))
    assert doc["tool"] == f"dataset_checks {dataset_checks.__version__}"
    assert doc["dataset"] == str(dataset.resolve())
    assert doc["rules"] == str(rules.resolve())
    assert doc["threshold"] == 0.85  # --threshold overrides the rules file
    assert doc["embedding_key"] == "efficientnetv2_arcface" and doc["dim"] == DIM
    assert doc["vectors"] == 24
    assert doc["index"] == "IndexFlatIP" and doc["device"] == "cpu"
    assert doc["search"]["threshold"] == 0.85 and doc["search"]["vectors"] == 24
    assert doc["search"]["certified"]["exact"] is True  # flat: every pair scored (IVF: backends/bounds.py)
    assert set(doc["timings"]) >= {"discover", "load", "search", "findings"}
    ref = reference_rows(dataset, 0.85)
    failing = {r[0] for r in ref} | {r[2] for r in ref}
    assert doc["counts"] == {
        "identities": 6, "passed": 6 - len(failing), "failed": len(failing), "not_checkable": 0,
        "findings": len(ref), "waived": 0,
    }
    assert [(f["identity"], f["file"], f["other_identity"], f["other_file"]) for f in doc["findings"]] == [r[:4] for r in ref]
    assert [f["similarity"] for f in doc["findings"]] == [round(r[4], 6) for r in ref]
    assert doc["identities"]["Dave"] == {"status": "pass", "vectors": 4, "threshold": 0.85, "matches": 0, "problems": []}
    assert doc["identities"]["Alice"]["status"] == "fail"


def test_default_rules_and_report_dir_in_rootdir_with_bare_name(pytester, dataset):
    # run from another folder with a bare `dataset_checks`: the installed package is meant;
    # rules.yaml and reports/ are the rootdir's
    (pytester.path / "rules.yaml").write_text("dataset: data\nthreshold: 0.85\n", encoding="utf-8")
    result = pytester.runpytest_subprocess("dataset_checks", "-p", "no:cacheprovider", "-rA")
    assert result.ret == 1, result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines([f"dataset_checks: {dataset.resolve()} (6 identity folder(s))",
                                 "dataset_checks: rules*rules.yaml*", "dataset_checks: cosine threshold 0.85 (from *rules.yaml)"])
    got = summary_outcomes(result.stdout.str())
    assert got == {**{n: "failed" for n in ("Alice", "Bob", "Carol", "高橋一生", "髙橋一生")}, "Dave": "passed"}
    result.stdout.fnmatch_lines(["*5 of 6 identities fail (1 passed*"])
    header, rows = read_csv_rows(pytester.path / "reports" / "findings.csv")
    assert rows == [[*r[:4], f"{r[4]:.6f}"] for r in reference_rows(dataset, 0.85)]


# -- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad_input", ["fail", "warn"])
def test_corrupt_file_is_not_passed(pytester, dataset, run, bad_input):
    path = dataset / "Dave" / "npKnown.npz"
    path.write_bytes(path.read_bytes()[:100])
    rules = pytester.path / "r.yaml"
    rules.write_text(f"threshold: 0.85\nbad_input: {bad_input}\n", encoding="utf-8")
    rec = run("--dataset", str(dataset), "--rules", str(rules))
    assert outcomes(rec)["Dave"] == "failed"
    text = failure_text(rec, "Dave")
    assert "Dave: not checked: no usable embeddings" in text
    assert "Dave/npKnown.npz: corrupt or truncated archive" in text
    doc = json.loads((pytester.path / "out" / "findings.json").read_text(encoding="utf-8"))
    assert doc["identities"]["Dave"]["status"] == "error"
    assert doc["counts"]["not_checkable"] == 1


@pytest.mark.parametrize("bad_input, outcome", [("fail", "failed"), ("warn", "passed")])
def test_bad_rows_fail_or_warn(pytester, dataset, bad_input, outcome):
    vecs = np.random.default_rng(1).standard_normal((3, DIM)).astype(np.float32)
    vecs[1] = np.nan
    write_face01(dataset, "Dave", vecs)
    rules = pytester.path / "r.yaml"
    rules.write_text(f"threshold: 0.85\nbad_input: {bad_input}\n", encoding="utf-8")
    result = pytester.runpytest_inprocess(PKG, "-p", "no:cacheprovider", "--report-dir", "out",
                                          "--dataset", str(dataset), "--rules", str(rules), "-rA")
    line = "Dave/npKnown.npz: 1 face has NaN or infinite values, skipped (row 1 (Dave_0002.jpg))"
    out = result.stdout.str()
    assert line in out
    assert re.search(rf"{outcome.upper()} .*test_identity\[Dave\]", out), out
    if bad_input == "warn":
        assert "DatasetWarning" in out


# -- usage errors ----------------------------------------------------------------------------------


def _assert_usage_error(result, needle: str):
    assert result.ret == pytest.ExitCode.USAGE_ERROR == 4
    text = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in text
    hits = [line for line in text.splitlines() if needle in line]
    assert len(hits) == 1, text
    assert "test session starts" not in text


@pytest.mark.parametrize("value", ["2", "nan", "high", "-1.5"])
def test_bad_threshold_is_a_usage_error(pytester, dataset, value):
    result = pytester.runpytest_subprocess(PKG, "-p", "no:cacheprovider", "--dataset", str(dataset), "--threshold", value)
    _assert_usage_error(result, f"argument --threshold: expected a number in [-1, 1], found '{value}'")


def test_missing_dataset_is_a_usage_error(pytester):
    missing = pytester.path / "nowhere"
    result = pytester.runpytest_subprocess(PKG, "-p", "no:cacheprovider", "--dataset", str(missing))
    _assert_usage_error(result, f"argument --dataset: not an existing folder: '{missing}'")


def test_missing_dataset_in_rules_is_a_usage_error(pytester):
    rules = pytester.path / "r.yaml"
    rules.write_text("dataset: nowhere\n", encoding="utf-8")
    result = pytester.runpytest_subprocess(PKG, "-p", "no:cacheprovider", "--rules", str(rules))
    _assert_usage_error(result, f"{rules.resolve()}: key 'dataset': expected an existing folder")


def test_broken_rules_is_a_usage_error(pytester, dataset):
    rules = pytester.path / "rules.yaml"
    rules.write_text("threshold: 0.9\nindex: [flat\n", encoding="utf-8")
    result = pytester.runpytest_subprocess(PKG, "-p", "no:cacheprovider", "--dataset", str(dataset), "--rules", str(rules))
    _assert_usage_error(result, f"{rules}: key 'line 3': expected valid YAML")
    rules.write_text("treshold: 0.9\n", encoding="utf-8")
    result = pytester.runpytest_subprocess(PKG, "-p", "no:cacheprovider", "--dataset", str(dataset), "--rules", str(rules))
    _assert_usage_error(result, f"{rules.resolve()}: key 'treshold': expected one of the known keys")


# -- demo --------------------------------------------------------------------------------------------


def test_demo_run(pytester, run):
    project_rules = Path(PKG).parent / "rules.yaml"
    rules = pytester.path / "demo_rules.yaml"
    rules.write_text(
        "threshold: 0.85\nallow:\n  - identities: [Olsen_Ashley, Olsen_Mary-Kate]\n    reason: twins\n", encoding="utf-8"
    )
    result = pytester.runpytest_inprocess(PKG, "-p", "no:cacheprovider", "--rules", str(rules), "--report-dir", "out", "-rA")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["dataset_checks: built-in demo dataset*"])
    got = summary_outcomes(result.stdout.str())
    assert len(got) == 28
    assert {k for k, v in got.items() if v == "failed"} == DEMO_FAILURES
    # no image folders: no test_faces_detected at all, not even as a deselected or skipped item
    assert "deselected" not in result.stdout.str() and "skipped" not in result.stdout.str()
    out = result.stdout.str()
    # the other checks: the misfiled photos the demo planted fail their folders too
    misfiled = set(re.findall(r"^FAILED \S*::test_misfiled\[(.*?)\]", out, re.M))
    assert misfiled == {"Olivia_Brown", "Sofia_Russo"}
    # and the two spellings of 高橋一生 are one name (itaiji) with agreeing faces
    assert set(re.findall(r"^FAILED \S*::test_names\[(.*?)\]", out, re.M)) == {"高橋一生", "髙橋一生"}
    assert not re.search(r"^FAILED \S*::test_(consistency|exact_duplicates|near_duplicates|calibration)", out, re.M)
    assert list(got.values()).count("passed") == 22
    doc = json.loads((pytester.path / "out" / "findings.json").read_text(encoding="utf-8"))
    assert doc["dataset"] == "built-in demo"
    assert {w["identity"] for w in doc["waived"]} == {"Olsen_Ashley"}
    assert project_rules.is_file()


# -- collection ---------------------------------------------------------------------------------------

FAISS_PROBE = """
import sys

def pytest_collection_finish(session):
    print("FAISS_AFTER_COLLECTION", "faiss" in sys.modules)

def pytest_unconfigure(config):
    print("FAISS_AT_EXIT", "faiss" in sys.modules)
"""


def test_collect_only_imports_faiss_only_for_a_dataset(pytester, dataset):
    pytester.makepyfile(faiss_probe=FAISS_PROBE)
    pytester.makepyfile(test_unrelated="def test_unrelated():\n    pass\n")
    result = pytester.runpytest_subprocess("test_unrelated.py", "-p", "faiss_probe", "-p", "no:cacheprovider",
                                           "--collect-only", "-q")
    assert result.ret == 0, result.stderr.str()
    result.stdout.fnmatch_lines(["FAISS_AFTER_COLLECTION False", "*1 test collected*", "FAISS_AT_EXIT False"])
    # --collect-only of a dataset runs the run's search: it lists the items the run runs (the
    # checks' families collapsed as in a run; tests/test_node_ids.py)
    result = pytester.runpytest_subprocess(
        PKG, "-p", "faiss_probe", "-p", "no:cacheprovider", "--dataset", str(dataset), "--collect-only", "-q",
        "--report-dir", "o", "--full",
    )
    assert result.ret == 0, result.stderr.str()
    result.stdout.fnmatch_lines(["FAISS_AFTER_COLLECTION True", "*tests collected*", "FAISS_AT_EXIT True"])
    assert len(re.findall(r"::test_identity\[", result.stdout.str())) == 6
    # ... while a real search does import it (so the probe can see it); --full: an unchanged
    # dataset whose search state is in a shared cache would otherwise run incrementally
    result = pytester.runpytest_subprocess(
        PKG, "-p", "faiss_probe", "-p", "no:cacheprovider", "--dataset", str(dataset), "--report-dir", "o", "--full"
    )
    result.stdout.fnmatch_lines(["FAISS_AT_EXIT True"])


def test_dataset_inside_rootdir_is_not_collected(pytester):
    dataset = build_dataset(pytester.path / "data")
    # a file in the dataset that would fail if pytest collected it
    (dataset / "Alice" / "test_trap.py").write_text("def test_trap():\n    assert False, 'dataset collected'\n")
    (dataset / "conftest.py").write_text("raise RuntimeError('dataset conftest imported')\n")
    pytester.makepyfile(test_real="def test_real():\n    pass\n")
    result = pytester.runpytest_subprocess(
        PKG, str(pytester.path), "-p", "no:cacheprovider", "--dataset", str(dataset), "--collect-only", "-q",
        "--report-dir", "o",
    )
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    out = result.stdout.str()
    assert "test_trap" not in out and "dataset conftest" not in out
    assert "test_real.py::test_real" in out
    assert len(re.findall(r"test_identity\[", out)) == 6


def test_bare_package_name_from_another_folder(pytester, dataset):
    result = pytester.runpytest_subprocess(
        "dataset_checks", "-p", "no:cacheprovider", "--dataset", "data", "--collect-only", "-q", "--report-dir", "o"
    )
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    ids = re.findall(r"::test_identity\[(.*)\]$", result.stdout.str(), re.M)
    assert sorted(ids) == sorted(p.name for p in dataset.iterdir())


def test_dataset_tree_is_unchanged_by_a_run(pytester, dataset):
    (dataset / "Empty").mkdir()
    (dataset / "Alice" / "noFace").mkdir()
    (dataset / "Alice" / "photo.jpg").write_bytes(b"\xff\xd8\xff jpeg bytes")
    before = tree_state(dataset)
    result = pytester.runpytest_subprocess(
        PKG, "-p", "no:cacheprovider", "--dataset", str(dataset), "--report-dir", "out", "-p", "no:cacheprovider"
    )
    assert result.ret == 1
    assert tree_state(dataset) == before
    assert not list(dataset.rglob("*.pyc")) and not list(dataset.rglob("__pycache__"))


def test_threshold_option_overrides_auto_in_rules(pytester, dataset, run):
    rules = pytester.path / "auto.yaml"
    rules.write_text("threshold: auto\n", encoding="utf-8")
    rules = cross_identity_only(pytester.path, "threshold: auto\n")  # the cross-identity gate alone
    rec = run("--rules", str(rules), "--dataset", str(dataset), "--threshold", "1.0")
    assert rec.ret == pytest.ExitCode.OK
    assert set(outcomes(rec).values()) == {"passed"}
    rec = run("--rules", str(rules), "--dataset", str(dataset))
    assert rec.ret == pytest.ExitCode.TESTS_FAILED  # auto: 0.85 for a model without a default


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize("terminal", [True, False])
def test_progress_follows_the_real_stderr_not_pytests_capture(monkeypatch, terminal):
    # Under pytest, sys.stderr is the capture buffer when the session is made: progress bars must
    # still show on a terminal (the search runs with capture suspended), and never in CI logs.
    from dataset_checks.rules import Rules
    from dataset_checks.session import CheckSession

    monkeypatch.setattr(sys, "stderr", _Stream(tty=not terminal))
    monkeypatch.setattr(sys, "__stderr__", _Stream(tty=terminal))
    assert CheckSession(Rules()).progress is terminal
    assert CheckSession(Rules(), progress=False).progress is False
