"""CI gate ratchet: --baseline / --update-baseline, waived-not-hidden, --junitxml."""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import faiss  # noqa: F401  - before pytester's sys.modules snapshot (see test_plugin.py)
import numpy as np
import pytest

from dataset_checks.baseline import HEADER, Baseline, BaselineError, _raw
from dataset_checks.discover import display_name
from dataset_checks.findings import CSV_HEADER
from helpers import cross_identity_only, write_face01
from test_report import PKG, build, extras_of


@pytest.fixture
def dataset(pytester) -> Path:
    return build(pytester.path / "data", images=False)


@pytest.fixture
def run(pytester):
    def go(*args: str, report_dir: str = "out"):
        # the cross-identity ratchet alone (each check's own ratchet: test_checks_framework.py)
        rules = () if "--rules" in args else ("--rules", str(cross_identity_only(pytester.path / "rules")))
        return pytester.inline_run(PKG, "-p", "no:cacheprovider", "--report-dir", report_dir, "--threshold", "0.85",
                                   *rules, *args)

    return go


def failed(rec) -> set[str]:
    return {r.nodeid.rsplit("[", 1)[1][:-1] for r in rec.getreports("pytest_runtest_logreport")
            if r.when == "call" and r.failed}


def rows(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.reader(fh))


def test_update_then_gate_only_new_findings_fail(pytester, dataset, run):
    base = pytester.path / "gate" / "baseline.csv"
    rec = run("--dataset", str(dataset), "--baseline", str(base), "--update-baseline")
    assert rec.ret == pytest.ExitCode.OK  # accepting the current findings passes the run
    written = rows(base)
    assert tuple(written[0]) == HEADER
    assert {r[0] for r in written[1:]} == {"cross_identity"}
    findings = rows(pytester.path / "out" / "findings.csv")  # nothing active, all accepted
    assert findings == [list(CSV_HEADER)]
    assert len(written) - 1 == 44

    rec = run("--dataset", str(dataset), "--baseline", str(base))
    assert rec.ret == pytest.ExitCode.OK and not failed(rec)
    doc = json.loads((pytester.path / "out" / "findings.json").read_text(encoding="utf-8"))
    assert doc["counts"]["findings"] == 0 and doc["counts"]["waived"] == 44
    assert all(w["waived"] == "baseline: baseline.csv" for w in doc["waived"])
    html = (pytester.path / "out" / "report.html").read_text(encoding="utf-8")
    assert "Waived findings (44)" in html and "baseline: baseline.csv" in html  # shown, not hidden
    assert "waived pair(s)" in extras_of(rec)["Bob"]

    # a new label error: a Carol photo copied into Frank; only Carol and Frank fail
    v = np.load(dataset / "Frank" / "npKnown.npz")
    frank, names = v["efficientnetv2_arcface"].copy(), list(v["name"])
    frank[1] = np.load(dataset / "Carol" / "npKnown.npz")["efficientnetv2_arcface"][2]
    write_face01(dataset, "Frank", frank, files=names)
    rec = run("--dataset", str(dataset), "--baseline", str(base))
    assert rec.ret == pytest.ExitCode.TESTS_FAILED
    assert failed(rec) == {"Carol", "Frank"}
    new = rows(pytester.path / "out" / "findings.csv")[1:]
    assert [(r[0], r[2]) for r in new] == [("Carol", "Frank")]


def test_stale_entries_reported_and_dropped_by_update(pytester, dataset, run):
    base = pytester.path / "baseline.csv"
    run("--dataset", str(dataset), "--baseline", str(base), "--update-baseline")
    # fix the Alice/Bob copy: Bob's face 3 becomes a fresh face
    v = np.load(dataset / "Bob" / "npKnown.npz")
    bob, names = v["efficientnetv2_arcface"].copy(), list(v["name"])
    bob[2] = bob[0] + 0.3 * np.random.default_rng(9).standard_normal(bob.shape[1]) / 8
    write_face01(dataset, "Bob", bob, files=names)
    result = pytester.runpytest_inprocess(PKG, "-p", "no:cacheprovider", "--report-dir", "out", "--threshold", "0.85",
                                          "--rules", str(cross_identity_only(pytester.path / "rules")),
                                          "--dataset", str(dataset), "--baseline", str(base))
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["baseline *baseline.csv: 44 accepted entries; 43 finding(s) waived; 1 no longer found*"])
    run("--dataset", str(dataset), "--baseline", str(base), "--update-baseline")
    assert len(rows(base)) - 1 == 43


def test_allowlisted_findings_stay_out_of_the_baseline(pytester, dataset, run):
    rules = cross_identity_only(pytester.path, "allow:\n  - identities: [Dana, Dana_R]\n    reason: siblings\n")
    base = pytester.path / "baseline.csv"
    run("--dataset", str(dataset), "--rules", str(rules), "--baseline", str(base), "--update-baseline")
    assert not [r for r in rows(base)[1:] if r[1] == "Dana"]
    assert len(rows(base)) - 1 == 41


def test_missing_baseline_is_a_usage_error(pytester, dataset):
    result = pytester.runpytest_inprocess(PKG, "--dataset", str(dataset), "--baseline", "nope.csv")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*baseline file not found: nope.csv*--update-baseline*"])
    result = pytester.runpytest_inprocess(PKG, "--dataset", str(dataset), "--update-baseline")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--update-baseline needs --baseline FILE*"])


def test_bad_baseline_names_the_file(tmp_path):
    bad = tmp_path / "b.csv"
    bad.write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(BaselineError, match="b.csv"):
        Baseline.load(bad)


def test_undecodable_names_round_trip():
    raw = "caf\udce9"  # a Latin-1 byte in a UTF-8 file system
    assert _raw(display_name(raw)) == raw and _raw("plain") == "plain"


def test_junitxml_counts_identities(pytester, dataset, run):
    rec = run("--dataset", str(dataset), "--junitxml", "junit.xml")
    assert rec.ret == pytest.ExitCode.TESTS_FAILED
    suite = ET.parse(pytester.path / "junit.xml").getroot().find("testsuite")
    assert int(suite.get("failures")) == 6
    cases = {c.get("name"): c for c in suite.iter("testcase") if c.get("name").startswith("test_identity[")}
    assert len(cases) == 8
    assert cases["test_identity[Eve]"].find("failure") is not None
    assert cases["test_identity[Frank]"].find("failure") is None
