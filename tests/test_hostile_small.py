"""Hostile inputs that used to pass quietly (issue 19, items 4a and 9): an --against dataset that
could not be read, of another model or empty; a FIFO or a folder where the embeddings file should
be; symbolic link loops; the tool's own words escaped as if they were a dataset name."""

from __future__ import annotations

import csv
import json
import os
import threading
from pathlib import Path

import faiss  # noqa: F401  - before pytester's sys.modules snapshot (see conftest.py)
import numpy as np
import pytest

from dataset_checks.discover import discover_identities
from dataset_checks.vectors import load_table, read_bytes
from helpers import clustered, family_outcomes, write_face01

needs_posix = pytest.mark.skipif(os.name != "posix", reason="symbolic links and FIFOs need a POSIX file system")


def _reports(rec, family: str) -> dict[str, object]:
    return {r.nodeid.rsplit("::", 1)[1]: r for r in rec.getreports("pytest_runtest_logreport")
            if r.when == "call" and f"::{family}" in r.nodeid}


def _warnings(rec) -> list[str]:
    return [str(c.warning_message.message) for c in rec.getcalls("pytest_warning_recorded")]


@pytest.fixture
def train(pytester) -> Path:
    """Three folders of one model (512-d), nothing across them at 0.9."""
    rng = np.random.default_rng(3)
    root = pytester.path / "train"
    for name, v in zip(("Ann", "Ben", "Cy"), clustered(rng, [3, 3, 3], 512, intra=0.6)):
        write_face01(root, name, v)
    return root


def _other(pytester, name: str, good: int) -> Path:
    rng = np.random.default_rng(4)
    root = pytester.path / name
    for k, v in enumerate(clustered(rng, [2] * good, 512, intra=0.6)):
        write_face01(root, f"G{k}", v)
    root.mkdir(exist_ok=True)
    return root


# -- 4a: an --against dataset it could not read ------------------------------------------------


@needs_posix
def test_against_of_dangling_links_but_one_fails_the_leakage_tests_naming_them(run, train, pytester):
    bench = _other(pytester, "bench", 1)
    for k in range(30):
        os.symlink(pytester.path / "unmounted" / f"p{k}", bench / f"p{k:02d}")
    rec = run("--dataset", str(train), "--against", str(bench), "--threshold", "0.9")
    assert rec.ret == pytest.ExitCode.TESTS_FAILED
    leak = _reports(rec, "test_leakage")
    assert leak and all(r.failed for r in leak.values())
    text = next(iter(leak.values())).longreprtext
    assert "30 of its 31 identity folder(s) gave no vectors" in text and "30 dangling-link" in text
    assert "p00/: dangling symbolic link to " in text
    error = json.loads((pytester.path / "out" / "findings.json").read_text(encoding="utf-8"))["checks"]["leakage"]["error"]
    assert f"p04/: dangling symbolic link to {pytester.path / 'unmounted' / 'p4'}: storage not mounted?" in error
    assert error.endswith("first 5 of 30 shown") and "p05/" not in error  # bounded like every problem list
    # the dataset itself was checked: only the leakage family fails
    assert set(family_outcomes(rec, "test_identity").values()) == {"passed"}
    assert all(r.passed for r in _reports(rec, "test_dataset").values())


@needs_posix
def test_against_with_a_few_unreadable_folders_is_checked_and_names_them(run, train, pytester):
    bench = _other(pytester, "bench", 4)
    os.symlink(pytester.path / "unmounted" / "Gone", bench / "Gone")
    os.symlink("Loop", bench / "Loop")  # a folder that is a link to itself
    rec = run("--dataset", str(train), "--against", str(bench), "--threshold", "0.9")
    assert rec.ret == pytest.ExitCode.OK  # 2 of 6 folders: checked, and said
    assert set(family_outcomes(rec, "test_leakage").values()) == {"passed"}
    notes = [w for w in _warnings(rec) if "--against dataset bench" in w]
    assert notes and "2 of its 6 identity folder(s) gave no vectors, leakage into them not checked" in notes[0]
    assert "Gone/: dangling symbolic link" in notes[0] and "Loop/: symbolic link loop" in notes[0]
    out = pytester.path / "out"
    facts = json.loads((out / "findings.json").read_text(encoding="utf-8"))["checks"]["leakage"]["summary"]
    (d,) = facts["against"]
    assert d["lost_folders"] == 2 and d["identities"] == 6
    assert [x.split(":")[0] for x in d["lost"]] == ["Gone/", "Loop/"]
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "Folders not read" in html and "Loop/: symbolic link loop" in html


def test_against_an_empty_folder_fails_the_leakage_tests_not_the_run(run, train, pytester):
    empty = pytester.path / "mnt" / "bench"
    empty.mkdir(parents=True)
    rec = run("--dataset", str(train), "--against", str(empty), "--threshold", "0.9")
    assert rec.ret == pytest.ExitCode.TESTS_FAILED
    leak = _reports(rec, "test_leakage")
    assert leak and all(r.failed for r in leak.values())
    assert f"{empty} is empty: no identity folders (storage not mounted" in next(iter(leak.values())).longreprtext
    assert set(family_outcomes(rec, "test_identity").values()) == {"passed"}
    assert all(r.passed for r in _reports(rec, "test_dataset").values())


def test_against_of_another_model_says_what_it_found(run, train, pytester):
    other = pytester.path / "dlibbench"
    for k in range(3):
        write_face01(other, f"Q{k}", np.random.default_rng(k).standard_normal((2, 128)), key="dlib")
    rec = run("--dataset", str(train), "--against", str(other), "--threshold", "0.9")
    leak = _reports(rec, "test_leakage")
    assert leak and all(r.failed for r in leak.values())
    text = next(iter(leak.values())).longreprtext
    assert "its vectors are 128-d (dlib), this dataset's are 512-d (efficientnetv2_arcface): another model?" in text
    assert "no usable vectors" not in text


# -- 9: FIFOs, folders and loops where a file should be ---------------------------------------


@needs_posix
def test_a_fifo_or_a_folder_named_like_the_embeddings_file_is_a_problem_naming_it(tmp_path):
    ds = tmp_path / "ds"
    write_face01(ds, "A", np.eye(4, dtype=np.float32)[:2])
    (ds / "Fifo").mkdir()
    os.mkfifo(ds / "Fifo" / "npKnown.npz")
    (ds / "Dir").mkdir()
    (ds / "Dir" / "embeddings.npz").mkdir()
    (ds / "Pipe").mkdir()  # an image that is a FIFO: never opened, named
    os.mkfifo(ds / "Pipe" / "x.jpg")
    write_face01(ds, "Pipe", np.eye(4, dtype=np.float32)[2:])
    table = load_table(ds, discover_identities(ds))
    by = {table.identities[k].name: ps for k, ps in table.problems.items()}
    (p,) = by["Fifo"]
    assert (p.file, p.code, p.fatal) == ("Fifo/npKnown.npz", "not-a-file", True)
    assert p.message.startswith("not a regular file: a FIFO")
    (p,) = by["Dir"]
    assert (p.file, p.code, p.fatal, p.message) == ("Dir/embeddings.npz", "not-a-file", True,
                                                     "not a regular file: a folder; not read")
    (p,) = by["Pipe"]
    assert (p.file, p.code, p.fatal) == ("Pipe/x.jpg", "not-a-file", False)
    assert table.counts.tolist() == [2, 0, 0, 2]


@needs_posix
def test_reading_a_fifo_never_blocks(tmp_path):
    fifo = tmp_path / "npKnown.npz"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(read_bytes(fifo)), daemon=True)
    reader.start()
    reader.join(timeout=20)
    blocked = reader.is_alive()
    if blocked:  # give the stuck reader its end of file, so the thread ends
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join()
    assert not blocked
    assert isinstance(got[0], OSError) and "not a regular file" in str(got[0])


@needs_posix
def test_a_fifo_fails_its_identity_in_a_run(run, pytester):
    ds = pytester.path / "ds"
    for k, name in enumerate(("A", "B")):
        write_face01(ds, name, np.eye(8, dtype=np.float32)[2 * k : 2 * k + 2])
    (ds / "C").mkdir()
    os.mkfifo(ds / "C" / "npKnown.npz")
    rec = run("--dataset", str(ds), "--threshold", "0.9")
    assert family_outcomes(rec, "test_identity") == {"A": "passed", "B": "passed", "C": "failed"}
    (rep,) = [r for n, r in _reports(rec, "test_identity").items() if n.endswith("[C]")]
    assert "C/npKnown.npz: not a regular file: a FIFO" in rep.longreprtext


@needs_posix
def test_symbolic_link_loops_say_so_not_storage_not_mounted(tmp_path):
    ds = tmp_path / "ds"
    write_face01(ds, "A", np.eye(4, dtype=np.float32)[:2])
    os.symlink("Self", ds / "Self")  # a folder that is a link to itself
    os.symlink("Lb", ds / "La")  # a -> b -> a
    os.symlink("La", ds / "Lb")
    (ds / "F").mkdir()
    os.symlink("npKnown.npz", ds / "F" / "npKnown.npz")  # the embeddings file, a link to itself
    table = load_table(ds, discover_identities(ds))
    by = {table.identities[k].name: ps for k, ps in table.problems.items()}
    for name in ("Self", "La", "Lb", "F"):
        (p,) = by[name]
        assert "symbolic link loop" in p.message and "not mounted" not in p.message and p.fatal
    assert by["F"][0].file == "F/npKnown.npz"


# -- 9: the tool's own words are not a name ---------------------------------------------------


def test_check_details_are_not_escaped_as_names_and_names_in_them_once(run, pytester):
    ds = pytester.path / "ds"
    e = np.eye(16, dtype=np.float32)
    twin = [e[0], e[0] + 0.001 * e[1], e[2]]
    write_face01(ds, "A", np.array(twin), files=["a%b<c>.jpg", "plain.jpg", "third.jpg"])
    write_face01(ds, "B", e[3:5])
    bench = pytester.path / "be%nch"
    write_face01(bench, "X<y>", np.array([e[3], e[9]]), files=["copy.jpg", "other.jpg"])
    rules = pytester.path / "r.yaml"
    rules.write_text("checks:\n  near_duplicates: {threshold: 0.98}\n", encoding="utf-8")
    run("--dataset", str(ds), "--rules", str(rules), "--threshold", "0.9", "--against", str(bench))
    out = pytester.path / "out"

    def details(name: str) -> list[str]:
        with open(out / f"{name}.csv", encoding="utf-8", newline="") as fh:
            return [row["detail"] for row in csv.DictReader(fh)]

    (near,) = details("near_duplicates")
    assert near.startswith("cosine 1.0000 >= 0.98; ") and "%3E" not in near.split(";")[0]
    assert "a%25b%3Cc%3E.jpg has 1" in near and "%2525" not in near  # the name: escaped exactly once
    leaks = details("leakage")
    assert "face also in be%25nch (cosine 1.0000 >= 0.9)" in leaks
    same = [d for d in leaks if d.startswith("same person")]  # the other folder's name, escaped once
    assert all(d.startswith("same person as be%25nch/X%3Cy%3E: centred folder means at cosine ") for d in same)
    assert all(" >= " in d and "%2525" not in d for d in leaks)
    doc = json.loads((out / "findings.json").read_text(encoding="utf-8"))["checks"]
    assert doc["near_duplicates"]["issues"][0]["detail"] == near
    assert sorted(i["detail"] for i in doc["leakage"]["issues"]) == sorted(leaks)


def test_report_html_shows_the_tools_own_words_escaped_once(run, pytester):
    # report.html escaped the tool's own text (waived reasons, waived pair lines holding names
    # already shown) again as a name: "100%" became "100%25", "a%25b" became "a%2525b".
    ds = pytester.path / "ds"
    e = np.eye(16, dtype=np.float32)
    write_face01(ds, "A", np.array([e[0], e[2]]), files=["a%b.jpg", "x.jpg"])
    write_face01(ds, "B", np.array([e[0], e[3]]), files=["b.jpg", "y.jpg"])
    rules = pytester.path / "r.yaml"
    rules.write_text("allow:\n  - identities: [A, B]\n    reason: \"twins <b> 100% >= sure\"\n", encoding="utf-8")
    run("--dataset", str(ds), "--rules", str(rules), "--threshold", "0.9")
    html = (pytester.path / "out" / "report.html").read_text(encoding="utf-8")
    assert "twins &lt;b&gt; 100% &gt;= sure" in html
    assert "100%25" not in html and "%3E" not in html.replace("a%25b", "")
    assert "a%25b.jpg" in html and "a%2525b" not in html
