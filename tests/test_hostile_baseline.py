"""--update-baseline on hostile input (issue 19): a run that checked nothing never writes the
baseline; a run that saw only part of the dataset never drops the rows of what it did not see;
the 20-problem cap is for display only, so a new problem never hides behind an accepted count."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import faiss  # noqa: F401  - before pytester's sys.modules snapshot (see test_plugin.py)
import numpy as np
import pytest

from dataset_checks import checks as registry
from dataset_checks.baseline import HEADER
from dataset_checks.checks import Check, Issue
from dataset_checks.problems import MAX_PROBLEMS
from helpers import cross_identity_only, family_outcomes, write_face01
from test_report import PKG, build

ACCEPTED = (",".join(HEADER) + "\n"
            "cross_identity,Alice,Alice_0002.jpg,Bob,Bob_0003.jpg,0.990000,,\n"
            "input,Zed,Zed/npKnown.npz,,,,corrupt,corrupt or truncated archive\n").encode()


def go(pytester, *args: str, keep: tuple[str, ...] = ()):
    rules = () if "--rules" in args else ("--rules", str(cross_identity_only(pytester.path / "rules", keep=keep)))
    return pytester.runpytest_inprocess(PKG, "-p", "no:cacheprovider", "--report-dir", "out",
                                        "--threshold", "0.85", *rules, *args)


def rows(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.reader(fh))[1:]


def failed(result) -> set[str]:
    return {r.nodeid.rsplit("[", 1)[1][:-1] for r in result.reprec.getreports("pytest_runtest_logreport")
            if r.when == "call" and r.failed and "[" in r.nodeid}


def truncate(npz: Path) -> None:
    data = npz.read_bytes()
    npz.write_bytes(data[: len(data) // 2])  # a copy cut off half way: a broken zip


# -- item 2: a run that checked nothing never writes the baseline --------------------------------


def _empty(root: Path) -> None:
    root.mkdir()


def _only_files(root: Path) -> None:
    root.mkdir()
    (root / "README.txt").write_text("nothing here\n", encoding="utf-8")
    (root / "list.csv").write_text("a,b\n", encoding="utf-8")


def _one_identity(root: Path) -> None:  # --dataset points at one identity folder, not its parent
    write_face01(root.parent, root.name, np.random.default_rng(0).standard_normal((3, 16)))


def _unmounted(root: Path) -> None:  # every identity folder a dangling link (storage not mounted)
    root.mkdir()
    for name in ("Alice", "Bob"):
        os.symlink(root.parent / "not_mounted" / name, root / name)


def _none_checkable(root: Path) -> None:  # identity folders, none of them readable
    for name in ("Alice", "Bob"):
        truncate(write_face01(root, name, np.random.default_rng(1).standard_normal((3, 16))))


@pytest.mark.parametrize("make", [_empty, _only_files, _one_identity, _unmounted, _none_checkable],
                         ids=["empty", "only-files", "one-identity-folder", "dangling-links", "none-checkable"])
def test_a_run_that_checked_nothing_leaves_the_baseline_byte_identical(pytester, make):
    base = pytester.path / "baseline.csv"
    base.write_bytes(ACCEPTED)
    root = pytester.path / "data"
    make(root)
    result = go(pytester, "--dataset", str(root), "--baseline", str(base), "--update-baseline")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert base.read_bytes() == ACCEPTED
    result.stdout.fnmatch_lines(["BASELINE NOT UPDATED: baseline *baseline.csv not updated: this run checked "
                                 "nothing (*); the file is left as it was"])
    assert "rewritten with" not in result.stdout.str()
    assert [p.name for p in pytester.path.iterdir() if p.name.startswith(".baseline.csv")] == []  # no temp left


# -- item 2: a partial run keeps what it did not see, drops what it saw fixed -------------------


@pytest.fixture
def accepted(pytester):
    """build()'s eight folders accepted: 44 pairs, one of them Alice_0002 copied into Bob."""
    root = build(pytester.path / "data", images=False)
    base = pytester.path / "baseline.csv"
    assert go(pytester, "--dataset", str(root), "--baseline", str(base), "--update-baseline").ret == 0
    pairs = [r for r in rows(base) if r[0] == "cross_identity"]
    assert len(pairs) == 44 and not [r for r in rows(base) if r[0] == "input"]
    return root, base, pairs


def _fix_eve(root: Path) -> None:
    """Eve's face copied from Crowd becomes a fresh face: its pairs are fixed."""
    v = np.load(root / "Eve" / "npKnown.npz")
    eve, names = v["efficientnetv2_arcface"].copy(), list(v["name"])
    eve[0] = np.random.default_rng(5).standard_normal(eve.shape[1])
    write_face01(root, "Eve", eve, files=names)


def _break_bob(root: Path, how: str) -> None:
    bob = root / "Bob"
    if how == "truncated":  # Bob's embeddings file broken this time (a copy cut short)
        truncate(bob / "npKnown.npz")
    elif how == "dangling":  # Bob's folder on storage that is not mounted this time
        bob.rename(root.parent / "elsewhere")
        os.symlink(root.parent / "not_mounted", bob)
    else:  # "nan": Bob readable, but the face in the accepted pair is a NaN row this time
        v = np.load(bob / "npKnown.npz")
        vecs, names = v["efficientnetv2_arcface"].copy(), list(v["name"])
        vecs[names.index("Bob_0003.jpg")] = np.nan
        write_face01(root, "Bob", vecs, files=names)


@pytest.mark.parametrize("how", ["truncated", "dangling", "nan"])
def test_update_keeps_the_rows_of_what_it_did_not_see(pytester, accepted, how):
    root, base, pairs = accepted
    bob_pair = [r for r in pairs if "Bob" in (r[1], r[3])]
    eve_pairs = [r for r in pairs if "Eve" in (r[1], r[3])]
    assert [r[1:5] for r in bob_pair] == [["Alice", "Alice_0002.jpg", "Bob", "Bob_0003.jpg"]] and eve_pairs
    _break_bob(root, how)
    _fix_eve(root)
    result = go(pytester, "--dataset", str(root), "--baseline", str(base), "--update-baseline")
    assert result.ret == pytest.ExitCode.OK
    after = rows(base)
    assert bob_pair[0] in after  # not seen this run: kept as it was
    assert not [r for r in after if "Eve" in (r[1], r[3])]  # seen, and fixed: dropped
    assert [r for r in after if r[0] == "cross_identity"] == [r for r in pairs if r not in eve_pairs]
    assert [(r[1], r[6]) for r in after if r[0] == "input"] == [("Bob", {"truncated": "corrupt", "dangling":
                                                                       "dangling-link", "nan": "nan"}[how])]


class Tiny(Check):
    """A toy check: folders with fewer than 3 faces (one issue per folder, keyed by identity)."""

    name = "tiny_folders"
    title = "tiny folders"
    doc = "A folder with fewer than 3 faces."

    def run(self, data, settings):
        counts = np.bincount(data.table.identity_of, minlength=len(data.table.identities))
        return [Issue(self.name, ident.name, detail=f"{int(n)} face(s)", severity=settings.severity)
                for ident, n in zip(data.table.identities, counts) if n < 3]


@pytest.fixture
def tiny(monkeypatch):
    import dataset_checks.test_identities as family_module

    registry.all_checks()
    monkeypatch.setitem(registry._REGISTRY, Tiny.name, Tiny)
    monkeypatch.setitem(vars(family_module), "test_tiny_folders", family_module._family(Tiny))
    return Tiny


def test_a_check_that_failed_or_is_off_keeps_its_rows(pytester, tiny, monkeypatch):
    root = pytester.path / "data"
    rng = np.random.default_rng(3)
    for name, n in (("Alice", 4), ("Bob", 2), ("Carol", 1)):
        write_face01(root, name, rng.standard_normal((n, 16)))
    base = pytester.path / "baseline.csv"
    update = ("--dataset", str(root), "--baseline", str(base), "--update-baseline")
    assert go(pytester, *update, keep=("tiny_folders",)).ret == pytest.ExitCode.OK
    accepted = [r for r in rows(base) if r[0] == "tiny_folders"]
    assert [r[1] for r in accepted] == ["Bob", "Carol"]
    write_face01(root, "Carol", rng.standard_normal((4, 16)))  # Carol fixed

    def boom(self, data, settings):
        raise RuntimeError("kaputt")

    with monkeypatch.context() as m:
        m.setattr(Tiny, "run", boom)
        result = go(pytester, *update, keep=("tiny_folders",))
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # the check's family fails, as before
    result.stdout.fnmatch_lines(["check tiny_folders: FAILED TO RUN: RuntimeError: kaputt"])
    assert [r for r in rows(base) if r[0] == "tiny_folders"] == accepted  # it saw nothing: both kept

    assert go(pytester, *update).ret == pytest.ExitCode.OK  # the check off: nothing evaluated
    assert [r for r in rows(base) if r[0] == "tiny_folders"] == accepted

    assert go(pytester, *update, keep=("tiny_folders",)).ret == pytest.ExitCode.OK  # it ran: Carol fixed
    assert [r[1] for r in rows(base) if r[0] == "tiny_folders"] == ["Bob"]


def test_leakage_rows_of_a_dataset_not_given_are_kept(pytester):
    rng = np.random.default_rng(11)
    from helpers import clustered

    vecs = clustered(rng, [3, 3, 3, 3], 32, intra=0.6)
    train, bench, other = pytester.path / "train", pytester.path / "bench", pytester.path / "other"
    for name, v in zip(("Ann", "Ben", "Cy"), vecs):
        write_face01(train, name, v)
    write_face01(bench, "Ann_B", np.concatenate([vecs[0][:1], vecs[3][:1]]), files=["copy.jpg", "z.jpg"])
    write_face01(other, "Zed", vecs[3])  # shares nothing with train
    base = pytester.path / "baseline.csv"
    update = ("--dataset", str(train), "--baseline", str(base), "--update-baseline", "--threshold", "0.9")
    assert go(pytester, *update, "--against", str(bench), keep=("leakage",)).ret == pytest.ExitCode.OK
    leak = [r for r in rows(base) if r[0] == "leakage"]
    assert ["Ann", "Ann_0001.jpg", "bench/Ann_B", "copy.jpg"] in [r[1:5] for r in leak]
    assert {r[3] for r in leak} == {"bench/Ann_B"}

    for against in ((), ("--against", str(other))):  # bench not read this time: its row stays
        assert go(pytester, *update, *against, keep=("leakage",)).ret == pytest.ExitCode.OK
        assert [r for r in rows(base) if r[0] == "leakage"] == leak

    write_face01(bench, "Ann_B", vecs[3][:2], files=["copy.jpg", "z.jpg"])  # the leak fixed in bench
    assert go(pytester, *update, "--against", str(bench), keep=("leakage",)).ret == pytest.ExitCode.OK
    assert [r for r in rows(base) if r[0] == "leakage"] == []  # read, and fixed: dropped


# -- item 4b: every problem is a baseline key of its own; the cap is for display -----------------


def test_a_new_problem_behind_the_cap_still_fails(pytester):
    root = pytester.path / "data"
    rng = np.random.default_rng(7)
    for name in ("Alice", "Bob"):
        write_face01(root, name, rng.standard_normal((4, 16)))
    for k in range(25):  # 25 bad files in one folder: more than the 20 a message shows
        os.symlink(pytester.path / "not_mounted" / f"{k}.jpg", root / "Alice" / f"link{k:02d}.jpg")
    base = pytester.path / "baseline.csv"
    result = go(pytester, "--dataset", str(root), "--baseline", str(base), "--update-baseline")
    assert result.ret == pytest.ExitCode.OK
    accepted = [r for r in rows(base) if r[0] == "input"]
    assert [(r[1], r[2], r[6]) for r in accepted] == [("Alice", f"Alice/link{k:02d}.jpg", "dangling-link")
                                                      for k in range(25)]  # one row each, no count row
    doc = json.loads((pytester.path / "out" / "findings.json").read_text(encoding="utf-8"))
    shown = doc["identities"]["Alice"]["problems"]  # the display cap: 19 listed and one counting 6
    assert len(shown) == MAX_PROBLEMS and shown[-1].endswith("... and 6 more problems (dangling-link)")

    os.symlink(pytester.path / "not_mounted" / "new.jpg", root / "Alice" / "link99.jpg")  # NEW, sorted last
    result = go(pytester, "--dataset", str(root), "--baseline", str(base))
    assert result.ret == pytest.ExitCode.TESTS_FAILED and failed(result) == {"Alice"}
    result.stdout.fnmatch_lines(["*Alice: 1 input problem(s)*", "*Alice/link99.jpg: dangling symbolic link*"])
    doc = json.loads((pytester.path / "out" / "findings.json").read_text(encoding="utf-8"))
    assert len(doc["identities"]["Alice"]["waived_problems"]) == 25  # the accepted 25 stay waived
    (root / "Alice" / "link99.jpg").unlink()

    truncate(root / "Alice" / "npKnown.npz")  # NEW: Alice's embeddings broken, 26th problem, 0 vectors
    result = go(pytester, "--dataset", str(root), "--baseline", str(base))
    assert result.ret == pytest.ExitCode.TESTS_FAILED and failed(result) == {"Alice"}
    result.stdout.fnmatch_lines(["*Alice/npKnown.npz: corrupt or truncated archive*"])
    assert family_outcomes(result.reprec, "test_identity")["Bob"] == "passed"
