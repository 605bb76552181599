"""The baseline file on its own: format, reading any file without crashing, atomic writing."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from dataset_checks.baseline import FIELD_LIMIT, HEADER, Baseline, BaselineError, Entry, pair_entry, read_entries
from dataset_checks.discover import Identity
from dataset_checks.findings import (CSV_HEADER, INPUT_CHECK, PAIR_CHECK, TERMINAL_PAIRS, TERMINAL_PROBLEMS,
                                     Finding, Findings, Match, Verdict, problem_key)
from dataset_checks.vectors import Problem


def verdict(name: str, vectors: int = 3, problems=(), **kw) -> Verdict:
    return Verdict(Identity(name, Path("/data") / name), 0.5, vectors, problems=list(problems), **kw)


def findings(pairs=(), verdicts=()) -> Findings:
    return Findings(list(pairs), {v.identity.name: v for v in verdicts}, {})


HEADER_LINE = ",".join(HEADER)


def test_format_sorted_with_generic_keys(tmp_path):
    path = tmp_path / "b.csv"
    corrupt = Problem("Zed/npKnown.npz", "corrupt or truncated archive", code="corrupt")
    f = findings(
        [Finding("B", "b1.jpg", "C", "c1.jpg", 0.91), Finding("A", "a1.jpg", "B", "b2.jpg", 0.95)],
        [verdict("A"), verdict("B"), verdict("C"), verdict("Zed", 0, [corrupt])],
    )
    Baseline(path).write(f)
    text = path.read_text(encoding="utf-8")
    assert text.splitlines() == [
        HEADER_LINE,
        "cross_identity,A,a1.jpg,B,b2.jpg,0.950000,,",
        "cross_identity,B,b1.jpg,C,c1.jpg,0.910000,,",
        "input,Zed,Zed/npKnown.npz,,,,corrupt,corrupt or truncated archive",
    ]
    b = Baseline.load(path)
    assert b.keys == {(PAIR_CHECK, ("A", "a1.jpg", "B", "b2.jpg")), (PAIR_CHECK, ("B", "b1.jpg", "C", "c1.jpg")),
                      (INPUT_CHECK, ("Zed", "Zed/npKnown.npz", "corrupt"))}
    assert problem_key("Zed", corrupt) in b.keys
    # pairs are order-free: the same pair seen from the other side is the same key
    assert Finding("B", "b2.jpg", "A", "a1.jpg", 0.95).baseline_key() in b.keys


def test_old_findings_csv_baseline_still_reads(tmp_path):
    path = tmp_path / "old.csv"
    path.write_text(",".join(CSV_HEADER) + "\nBob,b.jpg,Alice,a.jpg,0.990000\ncaf%E9,x.jpg,=A,y.jpg,0.9\n",
                    encoding="utf-8")
    keys = Baseline.load(path).keys
    assert (PAIR_CHECK, ("Alice", "a.jpg", "Bob", "b.jpg")) in keys
    assert (PAIR_CHECK, ("=A", "y.jpg", "caf\udce9", "x.jpg")) in keys


def test_accepted_problems_pass_and_new_ones_fail():
    empty = Problem("Ghost/", "no embeddings", code="empty")
    v = verdict("Ghost", 0, [empty])
    assert v.status == "error"
    v.problem_waivers[empty] = "baseline: b.csv"
    assert v.status == "pass" and "waived input problem(s)" in v.message()
    nan = Problem("Ghost/npKnown.npz [2] x.jpg", "NaN; this face is skipped", code="nan")
    v2 = verdict("A", 4, [nan, empty], problem_waivers={empty: "baseline: b.csv"})
    assert v2.status == "error" and "x.jpg" in v2.message()
    assert verdict("A", 4, [nan], bad_input="warn").status == "pass"
    assert verdict("A", 0, [], bad_input="warn").status == "error"
    assert verdict("A", 0, [empty], problem_waivers={empty: "b"}, error="search failed").status == "error"


def test_message_is_capped():
    matches = [Match(f"f{k}.jpg", "Other", f"o{k}.jpg", 0.99 - k / 100) for k in range(7)]
    problems = [Problem(f"A/npKnown.npz [{k}] x{k}.jpg", "NaN", fatal=False) for k in range(5)]
    text = verdict("A", 10, problems, matches=matches).message()
    lines = text.splitlines()
    assert sum("↔" in line for line in lines) == TERMINAL_PAIRS == 3
    assert sum("npKnown.npz [" in line for line in lines) == TERMINAL_PROBLEMS == 3
    assert "  ... and 4 more pair(s): see report.html / findings.csv" in lines
    assert any(line.startswith("  ... and 2 more problem(s)") for line in lines)


def _write(path: Path, text: str, **kw) -> Path:
    with open(path, "w", encoding="utf-8", newline="", **kw) as fh:
        fh.write(text)
    return path


def test_excel_saved_baseline_bom_and_crlf(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeff".encode() + (HEADER_LINE + "\r\ncross_identity,A,a.jpg,B,b.jpg,0.9,,\r\n"
                                          "input,'=Z,'=Z/npKnown.npz,,,,corrupt,x\r\n").encode())
    keys = Baseline.load(path).keys
    assert keys == {(PAIR_CHECK, ("A", "a.jpg", "B", "b.jpg")), (INPUT_CHECK, ("=Z", "=Z/npKnown.npz", "corrupt"))}


def test_large_fields(tmp_path):
    big = "x" * (200 * 1024)  # over csv's default 128 KB limit: read
    path = _write(tmp_path / "big.csv", f"{HEADER_LINE}\ninput,A,A/,,,,c,{big}\n")
    assert read_entries(path)[0].detail == big
    before = csv.field_size_limit()
    huge = "y" * (FIELD_LIMIT + 1)
    path = _write(tmp_path / "huge.csv", f"{HEADER_LINE}\ninput,A,A/,,,,c,x\ninput,A,A/,,,,d,{huge}\n")
    with pytest.raises(BaselineError, match=r"huge.csv: line 3: a field is larger than 16 MB"):
        read_entries(path)
    assert csv.field_size_limit() == before  # the process-wide limit is left as it was


@pytest.mark.parametrize("where", ["dir", "proc", "oserror"])
def test_unreadable_baseline_names_the_file(tmp_path, monkeypatch, where):
    if where == "dir":
        path = tmp_path / "b.csv"
        path.mkdir()
        match = "baseline is not a file: .*b.csv"
    elif where == "proc":
        path = Path("/proc/self/mem")  # a regular file that no one can read() from the start
        match = "baseline /proc/self/mem cannot be read: "
    else:
        path = _write(tmp_path / "b.csv", HEADER_LINE + "\n")

        def denied(self):
            raise PermissionError(13, "Permission denied", str(self))

        monkeypatch.setattr(Path, "read_bytes", denied)
        match = "baseline .*b.csv cannot be read: Permission denied"
    with pytest.raises(BaselineError, match=match):
        Baseline.load(path)


@pytest.mark.parametrize("content, match", [
    (b"\xef\xbb\xbf" + HEADER_LINE.encode() + b"\ninput,\xff,x,,,,c,\n",
     rf"b.csv is not UTF-8: byte {3 + len(HEADER_LINE) + 7} \(0xFF\)"),
    (b"identity,file,similarity\n", rf"b.csv: expected the header {HEADER_LINE} \(or the old "
                                    rf"{','.join(CSV_HEADER)}\), found identity,file,similarity"),
    (b"", "b.csv: expected the header .* found an empty file"),
    (HEADER_LINE.encode() + b"\ninput,A,A/,c\n", "b.csv: line 2: expected 8 fields, found 4"),
    (HEADER_LINE.encode() + b"\nblur,A,A/,,,,c,\n", "b.csv: line 2: unknown check 'blur'"),
    (HEADER_LINE.encode() + b"\ncross_identity,A,a,B,b,high,,\n", "b.csv: line 2: similarity is not a number"),
    (HEADER_LINE.encode() + b'\ninput,"A\n', "b.csv: line 2: expected 8 fields, found 2"),  # open quote
])
def test_bad_baseline_content_names_file_and_place(tmp_path, content, match):
    path = tmp_path / "b.csv"
    path.write_bytes(content)
    with pytest.raises(BaselineError, match=match):
        Baseline.load(path)


def test_write_is_atomic_and_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "b.csv"
    f = findings([Finding("A", "a.jpg", "B", "b.jpg", 0.9)], [verdict("A"), verdict("B")])
    Baseline(path).write(f)
    before = path.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["b.csv"]

    def broken(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("dataset_checks.safe_write.os.replace", broken)  # the one writer's rename
    with pytest.raises(BaselineError, match="b.csv could not be written: No space left on device"):
        Baseline(path).write(findings([], [verdict("A"), verdict("B")]))
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["b.csv"]


def test_unwritable_folder_is_found_before_the_run(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    with pytest.raises(BaselineError, match=f"cannot be written: {blocker} is not a folder"):
        Baseline.load(blocker / "b.csv", missing_ok=True, writable=True)
    with pytest.raises(BaselineError, match="cannot be written in the folder /proc/no_such_pid"):
        Baseline.load(Path("/proc/no_such_pid/b.csv"), missing_ok=True, writable=True)
    Baseline.load(tmp_path / "new" / "b.csv", missing_ok=True, writable=True)  # a new folder is fine
    assert list((tmp_path / "new").iterdir()) == []  # the probe leaves nothing behind


def test_update_keeps_unreadable_identities_and_refuses_a_failed_search(tmp_path):
    path = tmp_path / "b.csv"
    old_problem = Problem("Bob/npKnown.npz", "missing array 'name'", code="missing-array")
    Baseline(path).write(findings(
        [Finding("Alice", "a.jpg", "Bob", "b.jpg", 0.99), Finding("Alice", "a2.jpg", "Carol", "c.jpg", 0.97)],
        [verdict("Alice"), verdict("Bob", 2, [old_problem]), verdict("Carol")],
    ))
    b = Baseline.load(path)
    corrupt = Problem("Bob/npKnown.npz", "corrupt", code="corrupt")
    now = findings([], [verdict("Alice"), verdict("Bob", 0, [corrupt]), verdict("Carol")])
    assert [e.full_key for e in b.stale(now)] == [(PAIR_CHECK, ("Alice", "a2.jpg", "Carol", "c.jpg"))]
    b.write(now)
    assert {e.full_key for e in Baseline.load(path).entries} == {
        (PAIR_CHECK, ("Alice", "a.jpg", "Bob", "b.jpg")),  # Bob was not seen: kept
        problem_key("Bob", old_problem), problem_key("Bob", corrupt),
    }
    before = path.read_bytes()
    failed = findings([], [verdict("Alice", error="too many pairs"), verdict("Bob", error="too many pairs")])
    assert Baseline.load(path).stale(failed) == []
    with pytest.raises(BaselineError, match="not updated: this run could not check everything \\(too many pairs\\)"):
        Baseline.load(path).write(failed)
    assert path.read_bytes() == before


def test_entry_rows_are_formula_safe():
    e = Entry(INPUT_CHECK, ("=cmd", "@x/npKnown.npz", "-code"), detail="+detail")
    assert e.row() == ("input", "'=cmd", "'@x/npKnown.npz", "", "", "", "'-code", "'+detail")
    p = pair_entry('=HYPERLINK("http://x","y")', "-1+2.jpg", "@SUM(A1)", "\tt.jpg", -0.5)
    assert p.row()[1:6] == ("'=HYPERLINK(\"http://x\",\"y\")", "'-1+2.jpg", "'@SUM(A1)", "%09t.jpg", "-0.500000")
