"""The gate on a real dataset: LFW with dlib descriptors, from ../shared/lfw when it is there."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from dataset_checks.rules import Rules
from dataset_checks.search import exact_pairs
from dataset_checks.session import CheckSession

LFW = Path(__file__).resolve().parents[1].parent / "shared" / "lfw"
# raw dlib descriptors are not centred: different people score about 0.83, so the usual 0.85
# would flag most of the dataset; 0.97 is above almost every same-person pair
THRESHOLD = 0.97

pytestmark = pytest.mark.skipif(
    not (LFW.is_dir() and any(LFW.glob("*/npKnown.npz"))),
    reason=f"LFW with dlib descriptors not found at {LFW} (it sits beside the project root on "
    "development and CI machines only)",
)


@pytest.fixture(scope="module")
def lfw_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("lfw_reports")
    session = CheckSession(Rules(dataset=LFW, vector_key="dlib", threshold=THRESHOLD), report_dir=out, progress=False)
    findings = session.findings()
    session.write_reports()
    yield session, findings, out
    session.close()


def test_lfw_findings_equal_brute_force(lfw_run):
    session, findings, out = lfw_run
    table = session.table
    assert table.key == "dlib" and table.dim == 128
    assert len(table.identities) >= 5000 and len(table) >= 13000
    ref = exact_pairs(table.vectors, table.identity_of, THRESHOLD)
    names = [i.name for i in table.identities]
    expected = []
    for i, j, s in zip(ref.i.tolist(), ref.j.tolist(), ref.sim.tolist()):
        a = (names[table.identity_of[i]], table.files[i])
        b = (names[table.identity_of[j]], table.files[j])
        a, b = min(a, b), max(a, b)
        expected.append((*a, *b, s))
    got = [(f.identity, f.file, f.other_identity, f.other_file, f.similarity) for f in findings.pairs]
    assert {g[:4] for g in got} == {e[:4] for e in expected}
    assert len(got) == len(expected)
    sims = dict((e[:4], e[4]) for e in expected)
    for g in got:
        assert g[4] == pytest.approx(sims[g[:4]], abs=1e-12)
    # the verdicts follow from the pairs
    failing = {g[0] for g in got} | {g[2] for g in got}
    assert {n for n, v in findings.verdicts.items() if v.status == "fail"} == failing
    # and the CSV written holds exactly those rows, highest similarity first
    with open(out / "findings.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))[1:]
    assert len(rows) == len(expected) > 0
    assert {tuple(r[:4]) for r in rows} == {e[:4] for e in expected}
    csv_sims = [float(r[4]) for r in rows]
    assert csv_sims == sorted(csv_sims, reverse=True)


def test_lfw_every_folder_is_checked(lfw_run):
    session, findings, _ = lfw_run
    folders = sorted(p.name for p in LFW.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert sorted(findings.verdicts) == folders
    assert all(v.checkable for v in findings.verdicts.values())
    assert int(session.table.counts.sum()) == len(session.table)
