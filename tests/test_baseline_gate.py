"""The ratchet end to end: a baseline accepts the whole current state (pairs and bad input), a
run that could not see everything never shrinks it, and its file problems are usage errors."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import faiss  # noqa: F401  - before pytester's sys.modules snapshot (see test_plugin.py)
import numpy as np
import pytest

from dataset_checks.baseline import HEADER
from dataset_checks.search import SearchTooBroad
from helpers import cross_identity_only, write_face01
from test_report import PKG, build

CORRUPT = b"PK\x03\x04 this is not a zip archive"


@pytest.fixture
def dataset(pytester) -> Path:
    root = build(pytester.path / "data", images=False)
    (root / "Ghost").mkdir()  # an empty identity folder
    (root / "Zed").mkdir()
    (root / "Zed" / "npKnown.npz").write_bytes(CORRUPT)
    return root


def go(pytester, *args: str):
    # the cross-identity and input-problem ratchet alone (each check's own: test_checks_framework.py)
    rules = () if "--rules" in args else ("--rules", str(cross_identity_only(pytester.path / "rules")))
    return pytester.runpytest_inprocess(PKG, "-p", "no:cacheprovider", "--report-dir", "out",
                                        "--threshold", "0.85", *rules, *args)


def rows(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.reader(fh))


def by_check(path: Path, check: str) -> list[list[str]]:
    return [r for r in rows(path)[1:] if r[0] == check]


def failed(result) -> set[str]:
    return {r.nodeid.rsplit("[", 1)[1][:-1] for r in result.reprec.getreports("pytest_runtest_logreport")
            if r.when == "call" and r.failed}


def test_baseline_accepts_bad_input_and_a_new_problem_fails(pytester, dataset):
    base = pytester.path / "baseline.csv"
    result = go(pytester, "--dataset", str(dataset), "--baseline", str(base), "--update-baseline")
    assert result.ret == pytest.ExitCode.OK  # a real dataset can get a green gate
    assert tuple(rows(base)[0]) == HEADER
    problems = by_check(base, "input")
    assert {r[1] for r in problems} == {"Ghost", "Zed"}
    assert all(r[6] and r[7] for r in problems)  # a code, and the message for the reader
    assert len(by_check(base, "cross_identity")) == 44
    assert rows(base)[1:] == sorted(rows(base)[1:], key=lambda r: (r[0], r[1], r[2]))

    result = go(pytester, "--dataset", str(dataset), "--baseline", str(base))
    assert result.ret == pytest.ExitCode.OK and not failed(result)
    doc = json.loads((pytester.path / "out" / "findings.json").read_text(encoding="utf-8"))
    waived = doc["identities"]["Zed"]["waived_problems"]  # listed as waived, never hidden
    assert [w["waived"] for w in waived] == ["baseline: baseline.csv"] and waived[0]["file"] == "Zed/npKnown.npz"
    assert doc["identities"]["Ghost"]["waived_problems"] and doc["counts"]["waived_problems"] == 2
    result.stdout.fnmatch_lines(["baseline *: 46 accepted entries; 44 finding(s) and 2 input problem(s) waived"])

    (dataset / "Carol" / "npKnown.npz").write_bytes(CORRUPT)  # a new problem
    result = go(pytester, "--dataset", str(dataset), "--baseline", str(base))
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert failed(result) == {"Carol"}


def test_failed_search_does_not_rewrite_the_baseline(pytester, dataset, monkeypatch):
    base = pytester.path / "baseline.csv"
    go(pytester, "--dataset", str(dataset), "--baseline", str(base), "--update-baseline")
    before = base.read_bytes()

    def too_broad(*args, **kwargs):
        raise SearchTooBroad("too many pairs: 10,000,000 cross-folder pairs >= 0.85")

    monkeypatch.setattr("dataset_checks.run.find_pairs", too_broad)
    # --full: the dataset did not change, an incremental run would not search at all
    result = go(pytester, "--dataset", str(dataset), "--baseline", str(base), "--update-baseline", "--full")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert base.read_bytes() == before
    result.stdout.fnmatch_lines(["BASELINE NOT UPDATED: baseline *baseline.csv not updated: this run could not "
                                 "check everything (too many pairs*"])


def test_unreadable_identity_keeps_its_accepted_rows(pytester, dataset):
    base = pytester.path / "baseline.csv"
    go(pytester, "--dataset", str(dataset), "--baseline", str(base), "--update-baseline")
    pairs_before = by_check(base, "cross_identity")
    bob_pairs = [r for r in pairs_before if "Bob" in (r[1], r[3])]
    assert len(bob_pairs) == 1  # the Alice photo copied into Bob

    npz = dataset / "Bob" / "npKnown.npz"
    good = npz.read_bytes()
    npz.write_bytes(CORRUPT)  # Bob cannot be read during this update
    # ...and a finding of fully checked identities is fixed: it drops out as before
    v = np.load(dataset / "Eve" / "npKnown.npz")
    eve, names = v["efficientnetv2_arcface"].copy(), list(v["name"])
    eve[0] = np.random.default_rng(5).standard_normal(eve.shape[1])
    write_face01(dataset, "Eve", eve, files=names)
    result = go(pytester, "--dataset", str(dataset), "--baseline", str(base), "--update-baseline")
    assert result.ret == pytest.ExitCode.OK
    pairs_after = by_check(base, "cross_identity")
    assert bob_pairs[0] in pairs_after  # kept: this run could not see Bob
    assert not [r for r in pairs_after if "Eve" in (r[1], r[3])]  # fixed: dropped
    assert {r[1] for r in by_check(base, "input")} == {"Bob", "Ghost", "Zed"}

    npz.write_bytes(good)  # Bob readable again: the kept pair is still accepted
    result = go(pytester, "--dataset", str(dataset), "--baseline", str(base))
    assert result.ret == pytest.ExitCode.OK and not failed(result)
    result.stdout.fnmatch_lines(["baseline *: 7 accepted entries; 4 finding(s) and 2 input problem(s) waived; 1 no longer found*"])  # Bob's corrupt-file row


def test_update_fails_fast_when_the_baseline_folder_is_not_writable(pytester, dataset, monkeypatch):
    blocker = pytester.path / "not_a_folder"
    blocker.write_text("a file where the baseline's folder should be", encoding="utf-8")

    def no_search(*args, **kwargs):
        raise AssertionError("the search ran before the baseline folder was checked")

    monkeypatch.setattr("dataset_checks.run.find_pairs", no_search)
    result = go(pytester, "--dataset", str(dataset), "--baseline", str(blocker / "baseline.csv"), "--update-baseline")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*baseline {blocker}/baseline.csv cannot be written: {blocker} is not a folder*"])


@pytest.mark.parametrize("make, expected", [
    (lambda p: p.mkdir(), "*baseline is not a file: *b.csv*"),
    (lambda p: p.write_bytes(b"identity,file\n"), "*b.csv: expected the header check,identity,*found identity,file*"),
    (lambda p: p.write_bytes(",".join(HEADER).encode() + b"\ninput,caf\xe9,x,,,,c,\n"), f"*b.csv is not UTF-8: byte {len(','.join(HEADER)) + 1 + len('input,caf')} (0xE9)*"),
])
def test_baseline_file_problems_are_usage_errors(pytester, dataset, make, expected):
    make(pytester.path / "b.csv")
    result = go(pytester, "--dataset", str(dataset), "--baseline", "b.csv")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([expected])
    assert "INTERNALERROR" not in result.stderr.str() + result.stdout.str()


def test_formula_like_folder_names_are_inert_and_round_trip(pytester):
    """Folders named like spreadsheet formulas (and with bytes that are not UTF-8, literal \\xNN
    and %, a tab): no CSV name cell starts a formula, numbers stay numbers, and the baseline
    written from them matches the next run exactly."""
    rng = np.random.default_rng(1)
    # ('/' cannot be in a folder name: the HYPERLINK target is "http:x")
    names = ['=HYPERLINK("http:x","y")', "-1+2", "@SUM(A1)", "+x", "'quoted", "plain",
             os.fsdecode(b"caf\xe9"), "a\\x41", "100%41", "\tTab"]
    root = pytester.path / "data"
    shared = rng.standard_normal(32)
    for n in names:
        v = rng.standard_normal((3, 32))
        v[0] = shared + 0.01 * rng.standard_normal(32)  # one photo in every folder: all pairs match
        write_face01(root, n, v, files=[f"{n}_{j}.jpg" for j in range(3)])
    base = pytester.path / "baseline.csv"
    result = go(pytester, "--dataset", str(root), "--baseline", str(base), "--update-baseline")
    assert result.ret == pytest.ExitCode.OK
    findings = rows(pytester.path / "out" / "findings.csv")[1:]
    merge = rows(pytester.path / "out" / "merge_candidates.csv")[1:]
    baseline = rows(base)[1:]
    assert len(findings) == 0 and len(merge) == 45
    assert len([r for r in baseline if r[0] == "cross_identity"]) == 45
    assert [r[1] for r in baseline if r[0] == "input"] == ["caf%E9"]  # its name is not UTF-8: a note, accepted too
    result = go(pytester, "--dataset", str(root), "--baseline", str(base))
    assert result.ret == pytest.ExitCode.OK and not failed(result)

    base.unlink()
    go(pytester, "--dataset", str(root))
    findings = rows(pytester.path / "out" / "findings.csv")[1:]
    assert len(findings) == 45
    cells = [c for r in findings for c in r[:4]] + [c for r in merge for c in r[1:3]] + \
            [c for r in baseline for c in r[1:5] if c]
    assert cells and all(not c.startswith(("=", "+", "-", "@", "\t", "\r")) for c in cells)
    assert "'=HYPERLINK(\"http:x\",\"y\")" in cells and "'-1+2" in cells and "'@SUM(A1)" in cells
    assert "''quoted" in cells and "plain" in cells and "caf%E9" in cells and "a%5Cx41" in cells
    assert "100%2541" in cells and "%09Tab" in cells
    for r in findings:
        float(r[4])
    for r in merge:
        float(r[3]), float(r[4]), float(r[5]), int(r[6])
