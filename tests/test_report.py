"""report.html, merge candidates, post-search verification and the terminal summary."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import faiss  # noqa: F401  - before pytester's sys.modules snapshot (see test_plugin.py)
import numpy as np
import pytest

import dataset_checks
from dataset_checks.discover import discover_identities
from dataset_checks.findings import Finding
from dataset_checks.merge import CSV_HEADER as MERGE_HEADER, merge_candidates
from dataset_checks.portraits import features, portrait, write_portraits
from dataset_checks.search import exact_pairs
from dataset_checks.thumbnails import THUMB_PX, Thumbnails
from dataset_checks.verify import verify_search
from dataset_checks.vectors import load_table
from helpers import clustered, write_face01

PKG = str(Path(dataset_checks.__file__).resolve().parent)
DIM = 64


def _unit(v):
    return v / np.linalg.norm(v)


def build(root: Path, images: bool = True, seed: int = 3) -> Path:
    """Eight folders: Dana is one person filed as Dana and Dana_R (same centre, shared photos);
    Bob holds one copy of an Alice photo; Crowd is a burst of near-identical frames, one of which
    was copied into Eve (every Crowd frame then matches it)."""
    rng = np.random.default_rng(seed)
    names = ["Alice", "Bob", "Carol", "Crowd", "Dana", "Dana_R", "Eve", "Frank"]
    sizes = [6, 6, 5, 40, 8, 6, 5, 5]
    vecs = dict(zip(names, clustered(rng, sizes, DIM, intra=0.6)))
    base = _unit(vecs["Crowd"][0])
    vecs["Crowd"] = (base + 0.05 / np.sqrt(DIM) * rng.standard_normal((40, DIM))).astype(np.float32)
    dana = _unit(vecs["Dana"].mean(axis=0))
    for name, n in (("Dana", 8), ("Dana_R", 6)):
        vecs[name] = (dana + np.sqrt(1 / 0.6 - 1) / np.sqrt(DIM) * rng.standard_normal((n, DIM))).astype(np.float32)

    def copy(src, i, dst, j, noise=0.05):
        vecs[dst][j] = _unit(vecs[src][i]) + noise / np.sqrt(DIM) * rng.standard_normal(DIM)

    copy("Alice", 1, "Bob", 2)
    copy("Crowd", 3, "Eve", 0)
    for k in range(3):
        copy("Dana", k, "Dana_R", k, noise=0.2)
    files = [[f"{n}_{k + 1:04d}.jpg" for k in range(len(vecs[n]))] for n in names]
    for n, f in zip(names, files):
        write_face01(root, n, vecs[n], files=f)
    if images:
        write_portraits(root, names, files, [vecs[n] for n in names])
    return root


@pytest.fixture
def dataset(pytester) -> Path:
    return build(pytester.path / "data")


def extras_of(rec) -> dict[str, str]:
    out = {}
    for rep in rec.getreports("pytest_runtest_logreport"):
        if rep.when == "call":
            m = re.search(r"\[(.*)\]$", rep.nodeid)
            if m is None:  # test_dataset: no identity
                continue
            # every row of the identity (its pairs are on its test_identity row)
            out[m.group(1)] = out.get(m.group(1), "") + "".join(
                e["content"] for e in getattr(rep, "extras", []) if e["format_type"] == "html")
    return out


# -- report.html -----------------------------------------------------------------------------------


def test_report_html_written_by_default_self_contained(pytester, dataset, run):
    rec = run("--dataset", str(dataset), "--threshold", "0.85")
    assert rec.ret == pytest.ExitCode.TESTS_FAILED
    html_path = pytester.path / "out" / "report.html"
    html = html_path.read_text(encoding="utf-8")
    assert not (pytester.path / "out" / "assets").exists()  # self-contained: no side files
    assert not re.search(r"""(src|href)=["'](?!data:|#|https://pytest-html)[^"']+\.(css|js|png|jpe?g)""", html)
    # the summary at the top
    for text in ("dataset_checks run", str(dataset), "IndexFlatIP", "CPU", "Search recall (this run)",
                 "Time per stage", "8 checked", "merge_candidates.csv"):
        assert text in html, text
    assert "Folders that may be one person" in html
    assert html.count("data:image/jpeg;base64,") > 0


def test_user_html_path_is_respected(pytester, dataset, run):
    run("--dataset", str(dataset), "--html", "mine.html")
    assert (pytester.path / "mine.html").is_file()
    assert not (pytester.path / "out" / "report.html").exists()


def test_thumbnails_for_failing_identities_only_and_capped(pytester, dataset, run):
    rec = run("--dataset", str(dataset), "--threshold", "0.85")
    extras = extras_of(rec)
    failing = {k for k, v in extras.items() if v}
    assert {"Alice", "Bob", "Crowd", "Eve"} <= failing
    assert not extras["Carol"] and not extras["Frank"]
    # Eve's one face matches all 40 Crowd frames: 40 pairs, 4 shown (8 thumbnails), the rest counted
    eve = extras["Eve"]
    assert "40 pair(s)" in eve and "36 more pair(s)" in eve
    assert eve.count("<img ") == 8 and eve.count("data:image/jpeg;base64,") == 8
    bob = extras["Bob"]
    assert "Alice/<br>Alice_0002.jpg" in bob and "Bob/<br>Bob_0003.jpg" in bob and "cosine 0.9" in bob


def test_embeddings_only_dataset_shows_names(pytester, run):
    root = build(pytester.path / "noimg", images=False)
    rec = run("--dataset", str(root), "--threshold", "0.85")
    bob = extras_of(rec)["Bob"]
    assert "<img" not in bob and "no image" in bob and "Alice_0002.jpg" in bob


def test_verification_recorded_in_findings_json(pytester, dataset, run):
    run("--dataset", str(dataset), "--threshold", "0.85")
    doc = json.loads((pytester.path / "out" / "findings.json").read_text(encoding="utf-8"))
    v = doc["verification"]
    assert v["recall"] == 1.0 and v["exact_pairs"] == v["found_pairs"] > 0 and v["extra"] == 0
    assert v["queries"] <= 384 and "verify" in doc["timings"]


def test_merge_candidates_csv_and_ranking(pytester, dataset, run):
    run("--dataset", str(dataset), "--threshold", "0.85")
    with open(pytester.path / "out" / "merge_candidates.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    assert tuple(rows[0]) == MERGE_HEADER
    ranked = [(r[1], r[2]) for r in rows[1:]]
    assert ranked[0] == ("Dana", "Dana_R")  # one person under two names beats single copied photos
    assert set(ranked) >= {("Alice", "Bob"), ("Crowd", "Eve")}
    crowd = next(r for r in rows[1:] if (r[1], r[2]) == ("Crowd", "Eve"))
    assert crowd[6:11] == ["40", "40", "1", "5", "40"]  # every frame matches Eve's one face
    # Eve's one face is a Crowd frame: the folders' means differ (lowest score), yet it is not last
    scores = {(r[1], r[2]): float(r[3]) for r in rows[1:]}
    assert scores[("Crowd", "Eve")] == min(scores.values())
    assert ranked.index(("Crowd", "Eve")) < ranked.index(("Alice", "Bob"))


def test_terminal_summary_lists_failures_candidates_and_files(pytester, dataset):
    result = pytester.runpytest_inprocess(PKG, "-p", "no:cacheprovider", "--report-dir", "out",
                                          "--dataset", str(dataset), "--threshold", "0.85")
    out = result.stdout.str()
    summary = out[out.index("dataset_checks ==="):]
    fails = [line for line in summary.splitlines() if line.startswith("  FAIL ")]
    assert any("Eve" in line and "Crowd" in line and "misfiled photo" in line for line in fails), summary
    assert "folders that may be one person" in summary and "Dana + Dana_R" in summary
    assert "exact: every cross-folder pair at or above the threshold is found (flat" in summary
    assert "sampled check: " in summary and "recall 1.0000" not in summary
    assert summary.rstrip().splitlines()[-1].startswith("=") and "failed" in summary.splitlines()[-1]
    assert "short test summary info" not in summary  # our section comes after pytest's own
    for name in ("findings.csv", "findings.json", "merge_candidates.csv", "report.html"):
        assert re.search(rf"^wrote (\S*/)?out/{re.escape(name)}$", summary, re.M), name


def test_demo_report_has_thumbnails(pytester, run):
    rec = run()
    extras = extras_of(rec)
    assert extras["Maria_Rossi"].count("data:image/jpeg;base64,") == 2
    html = (pytester.path / "out" / "report.html").read_text(encoding="utf-8")
    assert "高橋一生" in html and "Waived findings" in html and "allowlisted: twins" in html


# -- core ------------------------------------------------------------------------------------------


def _table(root: Path):
    return load_table(root, discover_identities(root))


def test_verify_search_against_brute_force(tmp_path):
    table = _table(build(tmp_path / "d", images=False))
    ref = exact_pairs(table.vectors, table.identity_of, 0.85)
    full = verify_search(table.vectors, table.identity_of, 0.85, ref.i, ref.j, random_queries=1000)
    assert full["queries"] == len(table) and full["exact_pairs"] == len(ref) and full["recall"] == 1.0
    # drop two found pairs: the check sees exactly them missing
    keep = np.ones(len(ref), bool)
    keep[[0, 5]] = False
    broken = verify_search(table.vectors, table.identity_of, 0.85, ref.i[keep], ref.j[keep], random_queries=1000)
    assert broken["found_pairs"] == len(ref) - 2
    assert sorted(map(tuple, broken["missed"])) == sorted({(int(ref.i[k]), int(ref.j[k])) for k in (0, 5)})
    none = verify_search(table.vectors, table.identity_of, 0.9999, ref.i[:0], ref.j[:0], random_queries=8)
    assert none["recall"] is None and none["exact_pairs"] == 0


def test_merge_candidates_counts_match_brute_force(tmp_path):
    table = _table(build(tmp_path / "d", images=False))
    names = [i.name for i in table.identities]
    ref = exact_pairs(table.vectors, table.identity_of, 0.85)
    own, files = table.identity_of, table.files
    pairs = [Finding(names[own[i]], files[i], names[own[j]], files[j], s)
             for i, j, s in zip(ref.i.tolist(), ref.j.tolist(), ref.sim.tolist())]
    cands = merge_candidates(table.vectors, own, names, pairs)
    for c in cands:
        mine = [p for p in pairs if {p.identity, p.other_identity} == {c.identity, c.other_identity}]
        assert c.pairs == len(mine)
        assert c.best_similarity == max(p.similarity for p in mine)
        side_a = {p.file if p.identity == c.identity else p.other_file for p in mine}
        assert c.faces_matching == len(side_a)
        a, b = names.index(c.identity), names.index(c.other_identity)
        assert c.faces == int((own == a).sum()) and c.other_faces == int((own == b).sum())
        assert all(e.identity == c.identity for e in c.examples)
    assert (cands[0].identity, cands[0].other_identity) == ("Dana", "Dana_R")
    assert merge_candidates(table.vectors, own, names, []) == []


def test_thumbnails_are_small_and_stay_inside_the_folder(tmp_path):
    root = build(tmp_path / "d")
    (root / "Alice" / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "secret.jpg").write_bytes((root / "Alice" / "Alice_0001.jpg").read_bytes())
    t = Thumbnails(root)
    uri = t.data_uri("Alice", "Alice_0001.jpg")
    assert uri.startswith("data:image/jpeg;base64,")
    from PIL import Image
    import base64
    import io

    im = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert max(im.size) <= THUMB_PX <= 128
    assert t.data_uri("Alice", "broken.jpg") is None
    assert t.data_uri("Alice", "missing.jpg") is None
    assert t.data_uri("Alice", "../../secret.jpg") is None


def test_portraits_deterministic_and_follow_the_vector():
    rng = np.random.default_rng(0)
    v = rng.standard_normal((3, 512))
    v[1] = v[0] + 0.01 * rng.standard_normal(512)
    f = features(v)
    assert np.abs(f[0] - f[1]).max() < 0.05 < np.abs(f[0] - f[2]).max()
    assert portrait(f[0]).tobytes() == portrait(features(v[:1])[0]).tobytes()


# -- report.html: order, columns, escaping -----------------------------------------------------------


def report_tests(html: str) -> dict[str, dict]:
    import html as html_mod

    blob = re.search(r'data-jsonblob="([^"]*)"', html).group(1)
    tests = json.loads(html_mod.unescape(blob))["tests"]
    return {k: v[0] for k, v in tests.items()}


def test_results_table_failing_first_in_evidence_order_without_duration(pytester, dataset, run):
    rec = run("--dataset", str(dataset), "--threshold", "0.85")
    html = (pytester.path / "out" / "report.html").read_text(encoding="utf-8")
    tests = report_tests(html)
    assert 'data-column-type="duration"' not in html and "col-duration" not in html
    assert all(not any("col-duration" in c for c in t["resultsTableRow"]) for t in tests.values())
    assert '"initialSort": "dcorder"' in html.replace("&#34;", '"')
    everything = sorted(tests, key=lambda k: tests[k]["dcorder"])
    results = [tests[k]["result"] for k in everything]
    assert results == sorted(results, key=lambda r: r != "Failed")  # every family's failures first
    order = [k for k in everything if "::test_identity[" in k]
    assert [tests[k]["result"] for k in order].count("Failed") == 6
    names = [k.rsplit("[", 1)[1][:-1] for k in order]
    assert set(names[:2]) == {"Dana", "Dana_R"}  # strongest evidence first, not alphabetical
    assert "#1 failing" in tests[order[0]]["dcorder"] and tests[order[-1]]["dcorder"].endswith("passed")
    eve = extras_of(rec)["Eve"]
    # session.py does not pass the findings yet: the line then leaves out Crowd's size
    assert "misfiled photo" in eve and re.search(r"Eve_0001.jpg matches 40 (of 40 )?faces of Crowd: a photo of Crowd filed under Eve\?", eve)


def test_merge_table_has_a_column_per_folder(pytester, dataset, run):
    run("--dataset", str(dataset), "--threshold", "0.85")
    html = (pytester.path / "out" / "report.html").read_text(encoding="utf-8")
    merge = html[html.index("id='dc-merge'"):]
    row = re.search(r"<tr class='dc-candidate'>(.*?)</tr>", merge).group(1)
    sides = re.findall(r"<td class='dc-side'>(.*?)</td>", row)
    assert len(sides) == 2
    assert "<b>Dana</b>" in sides[0] and "Dana_R" not in sides[0] and "<b>Dana_R</b>" in sides[1]
    assert all("data:image/jpeg;base64," in s and "Dana_R_" not in sides[0] for s in sides)
    assert "Noto Sans CJK JP" in html and "Microsoft YaHei" in html


HOSTILE = "<img src=x onerror=alert(1)>"


def test_hostile_folder_name_never_reaches_the_report_unescaped(pytester, run):
    root = pytester.path / "data"
    rng = np.random.default_rng(11)
    base = _unit(rng.standard_normal(DIM))
    near = lambda: (base + 0.05 / np.sqrt(DIM) * rng.standard_normal((3, DIM))).astype(np.float32)  # noqa: E731
    write_face01(root, HOSTILE, near(), files=["<script>a.jpg", "b.jpg", "c.jpg"])
    write_face01(root, "Plain", near(), files=["p1.jpg", "p2.jpg", "p3.jpg"])
    write_face01(root, "Other", rng.standard_normal((3, DIM)).astype(np.float32), files=["o1.jpg", "o2.jpg", "o3.jpg"])
    rec = run("--dataset", str(root), "--threshold", "0.9")
    assert rec.ret == pytest.ExitCode.TESTS_FAILED
    raw = (pytester.path / "out" / "report.html").read_text(encoding="utf-8")
    import html as html_mod

    # neither in the page nor in the JSON blob that pytest-html's script turns into rows (innerHTML)
    for text in (raw, html_mod.unescape(raw)):
        assert "<img src=x" not in text and "<script>a.jpg" not in text
    tests = report_tests(raw)
    cells = [c for t in tests.values() for c in t["resultsTableRow"]]
    assert any("%3Cimg src=x onerror=alert(1)%3E" in c for c in cells)


def test_a_large_run_counts_its_passing_tests_and_details_its_strongest_failures(pytester, dataset, run, monkeypatch):
    # issue 23: report.html at scale. Over REPORT_PASSING_ROWS passing tests, those are counted
    # (pytest-html's own count stays true) and not listed; past the REPORT_DETAILED strongest
    # failing identities, a row shows its best pair as text, without thumbnails
    import dataset_checks.report as report_mod

    monkeypatch.setattr(report_mod, "REPORT_PASSING_ROWS", 1)
    monkeypatch.setattr(report_mod, "REPORT_DETAILED", 1)
    rec = run("--dataset", str(dataset), "--threshold", "0.85")
    passed = len([r for r in rec.getreports("pytest_runtest_logreport") if r.when == "call" and r.passed])
    failed = len([r for r in rec.getreports("pytest_runtest_logreport") if r.when == "call" and r.failed])
    assert passed > 2 and failed >= 2
    html = (pytester.path / "out" / "report.html").read_text(encoding="utf-8")
    tests = report_tests(html)
    assert {t["result"] for t in tests.values()} == {"Failed"}  # every row left is a failure
    assert len(tests) == failed
    assert f'<span class="passed">{passed} Passed,</span>' in html  # pytest-html's count, still right
    assert f"{passed:,} passing tests are counted, not listed row by row" in html
    assert "the 1 strongest failing identities show their pairs with" in html
    with_thumbs = [k for k, t in tests.items() if "::test_identity[" in k
                   and any("<img" in e.get("content", "") for e in t.get("extras", []))]
    assert len(with_thumbs) == 1  # the strongest only; the others: their best pair as text
    texts = {k: "".join(e.get("content", "") for e in t.get("extras", [])) for k, t in tests.items()
             if "::test_identity[" in k}
    bad = {k: text[-300:] for k, text in texts.items() if k not in with_thumbs and (".jpg" not in text or "<img" in text)}
    assert not bad, bad


def test_per_row_work_does_not_grow_with_the_dataset(pytester, run, monkeypatch):
    # every report row asks the session about its identity: what it asks must be computed once
    # per run, not once per row (20,000 rows each summing 20,000 outcomes took minutes at 1M)
    import numpy as np

    from dataset_checks.findings import Findings
    from dataset_checks.session import CheckSession
    from helpers import clustered, write_face01

    rng = np.random.default_rng(3)
    root = pytester.path / "many"
    faces = clustered(rng, [3] * 120, 32, intra=0.6)
    faces[1][0] = faces[0][0]  # one failing pair among 120 folders
    for k, x in enumerate(faces):
        write_face01(root, f"P{k:03d}", x)
    import dataset_checks.patterns as patterns_mod

    calls = {"outcomes": 0, "ranked": 0, "rank": 0}
    outcomes, rank_failing, identity_rank = Findings.identity_outcomes, patterns_mod.rank_failing, CheckSession.identity_rank

    def count_outcomes(self):
        calls["outcomes"] += 1
        return outcomes(self)

    def count_rank_failing(*args, **kw):
        calls["ranked"] += 1
        return rank_failing(*args, **kw)

    def count_identity_rank(self):
        calls["rank"] += self._rank is None  # computed, not read back
        return identity_rank(self)

    monkeypatch.setattr(Findings, "identity_outcomes", count_outcomes)
    monkeypatch.setattr(patterns_mod, "rank_failing", count_rank_failing)
    monkeypatch.setattr(CheckSession, "identity_rank", count_identity_rank)
    import dataset_checks.report as report_mod

    monkeypatch.setattr(report_mod, "REPORT_PASSING_ROWS", 10)  # the counting path runs for every passing row
    rec = run("--dataset", str(root), "--threshold", "0.95")
    rows = len([r for r in rec.getreports("pytest_runtest_logreport") if r.when == "call"])
    assert rows >= 120
    assert calls["outcomes"] <= 20 and calls["ranked"] == 1 and calls["rank"] == 1, (calls, rows)
