"""Every name written to a CSV (baseline, findings.csv, merge_candidates.csv) reads back as the
file system's name, byte for byte, and no name cell starts a spreadsheet formula."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import example, given, strategies as st

from dataset_checks.baseline import Baseline
from dataset_checks.discover import Identity
from dataset_checks.findings import Finding, Findings, Verdict, problem_key, read_csv, write_csv
from dataset_checks.merge import MergeCandidate, read_merge_csv, write_merge_csv
from dataset_checks.text import shown
from dataset_checks.vectors import Problem

FORMULA = ("=", "+", "-", "@", "\t", "\r")
# Names as a file system gives them: any text, or any bytes decoded by os.fsdecode (a byte that
# is not UTF-8 becomes a surrogate escape). Lone surrogates of other origin cannot be file names.
_text = st.text(alphabet=st.characters(exclude_categories=("Cs",)))
names = st.one_of(
    _text,
    st.tuples(_text, st.binary()).map(lambda t: os.fsdecode(t[0].encode("utf-8") + t[1])),
    st.sampled_from(["\\xE9", "%41", "%", "=1+1", "+x", "-1", "@SUM(A1)", "\tx", "'", "''a", "\r=x", ""]),
)


def _cells(path: Path) -> list[str]:
    import csv

    with open(path, encoding="utf-8", newline="") as fh:
        return [c for row in csv.reader(fh) for c in row]


@given(a=names, fa=names, b=names, fb=names, pfile=names)
@example(a='=HYPERLINK("http://x","y")', fa="-1+2", b="@SUM(A1)", fb="caf\udce9", pfile="\\x41%41")
def test_every_name_round_trips_through_every_csv(tmp_path_factory, a, fa, b, fb, pfile):
    tmp = tmp_path_factory.mktemp("csv")
    pair = Finding(a, fa, b, fb, 0.93)
    problem = Problem(shown(pfile), "corrupt", code="corrupt")  # Problem.file is shown text
    verdicts = {n: Verdict(Identity(n, tmp / "x"), 0.5, 1) for n in (a, b)}
    verdicts[a].problems.append(problem)
    findings = Findings([pair], verdicts, {})

    base = Baseline(tmp / "baseline.csv")
    base.write(findings)
    assert Baseline.load(base.path).keys == {pair.baseline_key(), problem_key(a, problem)}

    write_csv(findings, tmp / "findings.csv")
    [back] = read_csv(tmp / "findings.csv")
    assert (back.identity, back.file, back.other_identity, back.other_file) == (a, fa, b, fb)

    cand = MergeCandidate(a, b, 1, 2, 1, 3, 1, 0.93, 0.5, 0.7, waived="=allowlisted: siblings")
    write_merge_csv([cand], tmp / "merge.csv")
    [row] = read_merge_csv(tmp / "merge.csv")
    assert (row["identity"], row["other_identity"], row["waived"]) == (a, b, "=allowlisted: siblings")

    for path in (base.path, tmp / "findings.csv", tmp / "merge.csv"):
        assert not [c for c in _cells(path) if c.startswith(FORMULA)], path
