"""Every count a person reads agrees with what pytest reports.

An identity fails when any test of it fails (test_identity, test_faces_detected, a registered
check's family test_<check>[identity]); the terminal summary's first line, report.html's
"Identities" row, findings.json `counts` and the JUnit file all say the same number of failing
identities, and findings.json names the failing tests of each."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

import faiss  # noqa: F401  - before pytester's sys.modules snapshot (see conftest.py)
import numpy as np
import pytest
from PIL import Image

from helpers import fake_embedder, write_face01

PKG = str(Path(__file__).resolve().parents[1] / "dataset_checks")
FILLERS = ["Alice_Cooper", "Bruno_Mars", "Chaka_Khan", "Dolly_Parton", "Freddie_Mercury", "Gwen_Stefani",
           "Herbie_Hancock", "Iggy_Pop", "Janis_Joplin", "Kurt_Cobain", "Lionel_Richie", "Marvin_Gaye"]
# (the wording before these counts agreed is accepted too, so that the old code fails on the numbers)
HEADLINE = re.compile(r"(\d+) of (\d+) identities fail \((\d+) passed[;,] (\d+)(?: of the \d+)? not checkable")
FAILED_LINE = re.compile(r"^FAILED \S*::(?P<family>test_\w+)\[(?P<identity>[^\]]+)\]")
HTML_ROW = re.compile(r"<th>Identities</th><td>(\d+)(?: checked)?: <span class='dc-ok'>(\d+) passed</span>, "
                      r"<span class='dc-bad'>(\d+) failed</span>[^<]*?(\d+)(?: of the \d+)? not checkable")


def _junit_failures(path: Path) -> tuple[dict[str, set[str]], int]:
    """identity (test id in brackets) -> the test families failing it; and the per-identity test count."""
    failing: dict[str, set[str]] = defaultdict(set)
    tests = 0
    for case in ET.parse(path).getroot().iter("testcase"):
        name = case.get("name", "")
        if "[" not in name:  # test_dataset, dataset-level checks
            continue
        tests += 1
        family, ident = name[:-1].split("[", 1)
        if case.find("failure") is not None or case.find("error") is not None:
            failing[ident].add(family)
    return dict(failing), tests


def _said(pytester, result) -> dict[str, tuple[int, int, int, int]]:
    """(failed, identities, passed, not checkable) as the summary, report.html and findings.json say them."""
    out = pytester.path / "out"
    head = [m for m in map(HEADLINE.search, result.outlines) if m]
    assert len(head) == 1, result.stdout.str()
    failed, total, passed, unchecked = map(int, head[0].groups())
    row = HTML_ROW.search((out / "report.html").read_text(encoding="utf-8"))
    assert row, "report.html has no Identities row"
    html_total, html_passed, html_failed, html_unchecked = map(int, row.groups())
    counts = json.loads((out / "findings.json").read_text(encoding="utf-8"))["counts"]
    return {"summary": (failed, total, passed, unchecked),
            "report.html": (html_failed, html_total, html_passed, html_unchecked),
            "findings.json": (counts["failed"], counts["identities"], counts["passed"], counts["not_checkable"])}


def _run(pytester, data, *args):
    return pytester.runpytest_inprocess(PKG, "-p", "no:cacheprovider", "--report-dir", "out", "--dataset",
                                        str(data), "--junitxml", "junit.xml", "-W", "default", *args)


@pytest.fixture
def data(pytester) -> Path:
    root = pytester.path / "data"
    rng = np.random.default_rng(11)
    for name in FILLERS:
        write_face01(root, name, rng.standard_normal((3, 32)) + 3 * rng.standard_normal(32))
    shared = 3 * rng.standard_normal(32)  # one person under two names, no face pair at 0.99: test_names only
    write_face01(root, "Nan_Wang", rng.standard_normal((4, 32)) + shared)
    write_face01(root, "Wang_Nan", rng.standard_normal((2, 32)) + shared)
    a = 3 * rng.standard_normal(32)  # two people, one face of Ann nearly a face of Ben: test_identity
    ann = rng.standard_normal((3, 32)) + a
    ben = rng.standard_normal((3, 32)) + 3 * rng.standard_normal(32)
    ben[0] = ann[0] + 0.01 * rng.standard_normal(32)
    write_face01(root, "Ann_Lee", ann)
    write_face01(root, "Ben_Ode", ben)
    write_face01(root, "Zed_Broken", rng.standard_normal((3, 32)))
    path = root / "Zed_Broken" / "npKnown.npz"  # not checkable: its test_identity fails
    path.write_bytes(path.read_bytes()[:100])
    return root


def test_every_count_is_the_number_of_identities_with_a_failing_test(pytester, data):
    result = _run(pytester, data, "--threshold", "0.99")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    failing, _ = _junit_failures(pytester.path / "junit.xml")
    # the dataset has identities failing only a check's family, only test_identity, and one not checkable
    only_checks = {i for i, fam in failing.items() if "test_identity" not in fam}
    only_identity = {i for i, fam in failing.items() if fam == {"test_identity"}}
    assert {"Nan_Wang", "Wang_Nan"} <= only_checks and {"Ann_Lee", "Zed_Broken"} <= only_identity
    assert "test_identity" in failing["Ben_Ode"]
    assert not any(i.endswith("other identities") for i in failing)  # each failing identity by name
    total = len(FILLERS) + 5
    said = _said(pytester, result)
    for where, (failed, identities, passed, unchecked) in said.items():
        assert (failed, identities, passed, unchecked) == (len(failing), total, total - len(failing), 1), where
    # the same from pytest's own short summary: the FAILED lines grouped by identity
    reported: dict[str, set[str]] = defaultdict(set)
    for m in map(FAILED_LINE.search, result.outlines):
        if m:
            reported[m["identity"]].add(m["family"])
    assert reported == failing
    # findings.json names each identity's failing tests, as JUnit does
    doc = json.loads((pytester.path / "out" / "findings.json").read_text(encoding="utf-8"))
    named = {i: set(v["failed_tests"]) for i, v in doc["identities"].items() if v.get("failed_tests")}
    assert named == failing
    assert doc["identities"]["Zed_Broken"]["status"] == "error"




def _png(path: Path, person: int, shot: int, face: bool = True) -> None:
    """A person's coarse blocks with a shot's variation (a face to the fake embedder); face False:
    nearly black, each file its own bytes (no face, and no exact duplicate of another)."""
    rng = np.random.default_rng(1000 * person + shot)
    if face:
        blocks = np.random.default_rng(person).integers(40, 215, (4, 4, 3)) + rng.integers(-30, 30, (4, 4, 3))
        arr = np.kron(blocks, np.ones((8, 8, 1)))
    else:
        arr = rng.integers(0, 3, (32, 32, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path)


def test_image_folders_count_faces_detected_failures(pytester, monkeypatch):
    mods = pytester.path / "mods"
    mods.mkdir()
    (mods / "fakeemb_counts.py").write_text(fake_embedder("fake_counts"), encoding="utf-8")
    monkeypatch.syspath_prepend(str(mods))
    root = pytester.path / "imgs"
    for k in range(6):
        for j in range(3):
            _png(root / f"Person_{k}" / f"{j}.png", k, j)
    for k in (1, 3):  # a photo without a face: only test_faces_detected fails these two
        _png(root / f"Person_{k}" / "black.png", k, 99, face=False)
    rules = pytester.path / "r.yaml"
    rules.write_text(f"embedder: fakeemb_counts:embed\nembeddings:\n  workers: 1\n  cache: {pytester.path / 'cache'}\n",
                     encoding="utf-8")
    result = _run(pytester, root, "--rules", str(rules), "--threshold", "0.999")
    failing, tests = _junit_failures(pytester.path / "junit.xml")
    assert failing == {"Person_1": {"test_faces_detected"}, "Person_3": {"test_faces_detected"}}
    assert tests >= 12  # test_identity and test_faces_detected of each folder ran
    for where, counts in _said(pytester, result).items():
        assert counts == (2, 6, 4, 0), where
