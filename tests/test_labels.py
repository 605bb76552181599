"""Labels say only what the evidence supports (issue 20, item 6).

* "copies" (the same photo filed twice, "delete the copies") needs one-to-one pairs at a
  near-duplicate cosine (the run's copy similarity: the near_duplicates check's threshold);
  one-to-one pairs of different photos are "different photos, one-to-one", whose next step is
  merging the folders.
* The merge list is sorted by its rank score (evidence + name bonus), and every output (terminal,
  merge_candidates.csv, report.html) shows that number, so its printed order is the printed
  score's order, whatever the hidden parts.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import faiss  # noqa: F401  - before pytester's sys.modules snapshot (see test_plugin.py)
import numpy as np
import pytest

import dataset_checks
from dataset_checks.findings import Finding
from dataset_checks.merge import NAME_EVIDENCE, merge_candidates
from dataset_checks.patterns import COPIES, COPY_SIMILARITY, ONE_TO_ONE, classify, rank_failing
from dataset_checks.report import merge_html, summary_lines
from test_patterns import findings_of

PKG = str(Path(dataset_checks.__file__).resolve().parent)
TAKAHASHI = frozenset(("高橋一生", "髙橋一生"))


# -- the patterns ------------------------------------------------------------------------------


def test_one_to_one_different_photos_are_not_copies():
    p = classify("A", "B", [("a1.jpg", "b1.jpg", 0.96)], 5, 6)
    assert p.kind == ONE_TO_ONE and p.label == "different photos, one-to-one"
    assert "copies" not in p.label and "same photo filed twice" not in p.description
    assert "below 0.99, the cosine of the same photo" in p.description and "one person under two names" in p.description
    assert p.fix == "merge A and B into one folder" and "delete" not in p.next_step
    several = classify("A", "B", [("a1.jpg", "b1.jpg", 0.97), ("a2.jpg", "b2.jpg", 0.96)], 5, 6)
    assert several.kind == ONE_TO_ONE and "have a copy" not in several.description
    assert "delete" not in several.next_step and "merge A and B" in several.next_step


def test_one_to_one_near_duplicates_are_copies():
    p = classify("A", "B", [("a1.jpg", "b1.jpg", 0.999)], 5, 6)
    assert p.kind == COPIES and p.label == "copies"
    assert "the same photo filed twice" in p.description and ">= 0.99" in p.description
    assert "delete the copies" in p.fix
    both = classify("A", "B", [("a1.jpg", "b1.jpg", 0.999), ("a2.jpg", "b2.jpg", 0.9991)], 5, 6)
    assert both.kind == COPIES and "2 photos of A have a copy in B" in both.description


@pytest.mark.parametrize("seed", range(5))
def test_copies_need_every_pair_at_the_copy_similarity(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 6))
    sims = list(rng.uniform(COPY_SIMILARITY, 1.0, n))
    files = [(f"a{k}.jpg", f"b{k}.jpg") for k in range(n)]
    pairs = [(a, b, s) for (a, b), s in zip(files, sims)]
    assert classify("A", "B", pairs, 9, 9).kind == COPIES
    k = int(rng.integers(n))
    pairs[k] = (*files[k], float(rng.uniform(0.9, COPY_SIMILARITY - 1e-6)))  # one pair of different photos
    assert classify("A", "B", pairs, 9, 9).kind == ONE_TO_ONE
    # the run's own copy similarity (the near_duplicates threshold, e.g. centred dlib 0.97) decides
    assert classify("A", "B", pairs, 9, 9, copy_similarity=min(s for *_, s in pairs)).kind == COPIES


def test_run_copy_similarity_reaches_failing_identities_and_candidates():
    pairs = [Finding("A", "a1.jpg", "B", "b1.jpg", 0.975)]
    f = findings_of({"A": 4, "B": 4, "C": 4}, pairs)
    assert rank_failing(f)[0].top.kind == ONE_TO_ONE  # default: 0.99
    f.metadata["copy_similarity"] = 0.97  # e.g. centred dlib
    assert rank_failing(f)[0].top.kind == COPIES
    x = np.random.default_rng(0).standard_normal((12, 8)).astype(np.float32)
    owner = np.repeat(np.arange(3), 4)
    assert merge_candidates(x, owner, ["A", "B", "C"], pairs)[0].pattern.kind == ONE_TO_ONE
    assert merge_candidates(x, owner, ["A", "B", "C"], pairs, copy_similarity=0.97)[0].pattern.kind == COPIES


# -- the merge list's order ----------------------------------------------------------------------


def _name_reordered_candidates():
    """A/B: stronger faces; C/D: weaker faces whose names match (reordered): the name bonus puts
    C/D first (as in test_check_names)."""
    rng = np.random.default_rng(2)
    centres = {n: rng.standard_normal(32) * 3 for n in ("A", "B", "C", "D", "E", "F", "G", "H")}
    centres["B"] = centres["A"] + rng.standard_normal(32) * 0.3
    centres["D"] = centres["C"] + rng.standard_normal(32) * 1.2
    names = list(centres)
    vectors, owner = [], []
    for k, n in enumerate(names):
        v = rng.standard_normal((4, 32)) + centres[n]
        vectors.append(v / np.linalg.norm(v, axis=1, keepdims=True))
        owner += [k] * 4
    vectors, owner = np.vstack(vectors).astype(np.float32), np.array(owner)
    pairs = [Finding("A", "a1.jpg", "B", "b1.jpg", 0.99), Finding("C", "c1.jpg", "D", "d1.jpg", 0.99)]
    cands = merge_candidates(vectors, owner, names, pairs, name_matches={("D", "C"): "reordered"})
    return findings_of({n: 4 for n in names}, pairs), cands


def _printed_list(lines: list[str]) -> tuple[str, list[tuple[str, float, float, float]]]:
    start = next(k for k, line in enumerate(lines) if line.startswith("folders that may be one person"))
    rows = []
    for line in lines[start + 1:]:
        m = re.match(r"  \d+\. (.+?): .*rank score (-?\d+\.\d+) = evidence (-?\d+\.\d+) \+ name bonus (\d+\.\d+)", line)
        if not m:
            break
        rows.append((m.group(1), float(m.group(2)), float(m.group(3)), float(m.group(4))))
    return lines[start], rows


def test_terminal_merge_list_is_in_the_order_of_its_printed_score(tmp_path):
    f, cands = _name_reordered_candidates()
    assert cands[0].evidence < cands[1].evidence  # the name bonus, not the evidence, put C/D first
    heading, rows = _printed_list(summary_lines(f, cands))
    assert "best evidence first" not in heading and "rank score = evidence + name bonus" in heading
    assert [r[0] for r in rows] == ["C + D", "A + B"]
    scores = [r[1] for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert rows[0][3] == NAME_EVIDENCE["reordered"] and rows[1][3] == 0.0
    assert all(abs(score - (ev + bonus)) <= 2e-3 for _, score, ev, bonus in rows)
    html = merge_html(cands, None)
    assert "Rank score (evidence + name bonus)" in html and "ranked by evidence" not in html
    shown = [float(x) for x in re.findall(r"<td class='dc-rank-score'>(-?\d+\.\d+)</td>", html)]
    assert shown == sorted(shown, reverse=True) and len(shown) == 2


# -- the built-in demo -------------------------------------------------------------------------


def test_demo_calls_takahashi_different_photos_and_lists_by_rank_score(pytester):
    result = pytester.runpytest_inprocess(PKG, "-p", "no:cacheprovider", "--report-dir", "out")
    out = result.stdout.str()
    summary = out[out.index("dataset_checks ==="):].splitlines()
    # the failing identities' lines and the merge list: 高橋一生 / 髙橋一生 are not "copies"
    takahashi = [line for line in summary if "高橋一生" in line and "髙橋一生" in line]
    assert takahashi and not any("copies" in line or "same photo filed twice" in line for line in takahashi), takahashi
    assert any("different photos, one-to-one" in line for line in takahashi), takahashi
    heading, rows = _printed_list(summary)
    assert "best evidence first" not in heading and rows
    assert [r[1] for r in rows] == sorted((r[1] for r in rows), reverse=True)
    with open(pytester.path / "out" / "merge_candidates.csv", encoding="utf-8", newline="") as fh:
        csv_rows = list(csv.DictReader(fh))
    pair = next(r for r in csv_rows if frozenset((r["identity"], r["other_identity"])) == TAKAHASHI)
    assert pair["pattern"] == ONE_TO_ONE and float(pair["best_similarity"]) < COPY_SIMILARITY
    ranks = [float(r["rank_score"]) for r in csv_rows]
    assert ranks == sorted(ranks, reverse=True)
    for r in csv_rows:
        assert abs(float(r["rank_score"]) - float(r["evidence"]) - float(r["name_bonus"])) <= 2e-4
    html = (pytester.path / "out" / "report.html").read_text(encoding="utf-8")
    [row] = [r for r in html.split("<tr class='dc-candidate'>")[1:] if "<b>高橋一生</b>" in r and "<b>髙橋一生</b>" in r]
    row = row.split("</tr>", 1)[0]
    assert "different photos, one-to-one" in row and "copies" not in row and "same photo filed twice" not in row
    shown = [float(x) for x in re.findall(r"<td class='dc-rank-score'>(-?\d+\.\d+)</td>", html)]
    assert shown and shown == sorted(shown, reverse=True)
