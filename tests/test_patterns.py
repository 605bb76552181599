"""patterns.py and the evidence order, on synthetic findings (no search, no pytest run)."""

from __future__ import annotations

from pathlib import Path

from dataset_checks.discover import Identity
from dataset_checks.findings import Finding, Findings, Verdict
from dataset_checks.merge import MergeCandidate
from dataset_checks.patterns import COPIES, ONE_PERSON, ONE_PHOTO, classify, rank_failing
from dataset_checks.report import identity_message, row_order, summary_lines


def findings_of(sizes: dict[str, int], pairs: list[Finding], waived_ok: bool = True) -> Findings:
    verdicts = {n: Verdict(Identity(n, Path(n)), 0.9, k) for n, k in sizes.items()}
    for f in pairs:
        verdicts[f.identity].matches.append(f.seen_from(f.identity))
        verdicts[f.other_identity].matches.append(f.seen_from(f.other_identity))
    for v in verdicts.values():
        v.matches.sort(key=lambda m: -m.similarity)
    return Findings(pairs, verdicts, {"threshold": 0.9, "vectors": sum(sizes.values())})


def photo_pairs(a, photo, b, n, sim=0.95):
    return [Finding(a, photo, b, f"{b}_{k:04d}.jpg", sim - k * 1e-4) for k in range(n)]


def test_one_photo_matching_many_is_a_misfiled_photo_seen_from_either_side():
    pairs = [(f"H_{k}.jpg", "O_2.jpg", 0.97) for k in range(280)]
    p = classify("Host", "Olivia", pairs, 300, 13)
    assert p.kind == ONE_PHOTO and p.identity == "Olivia" and p.photo == "O_2.jpg"
    assert p.description == "O_2.jpg matches 280 of 300 faces of Host: a photo of Host filed under Olivia?"
    assert "move Olivia/O_2.jpg to Host" in p.next_step and "allow:" in p.next_step and "--update-baseline" in p.next_step
    flipped = classify("Olivia", "Host", [(b, a, s) for a, b, s in pairs], 13, 300)
    assert flipped == p


def test_copies_and_many_to_many():
    copies = classify("A", "B", [("a1", "b1", 0.999), ("a2", "b2", 0.995)], 5, 6)  # near-duplicates (labels: >= 0.99)
    assert copies.kind == COPIES and "2 photos of A have a copy in B" in copies.description
    single = classify("A", "B", [("a1", "b1", 0.99)], 1, 1)
    assert single.kind == COPIES and "A/a1 matches B/b1" in single.description
    many = classify("A", "B", [("a1", "b1", 0.95), ("a1", "b2", 0.94), ("a2", "b2", 0.93)], 4, 5)
    assert many.kind == ONE_PERSON and "2 of 4 faces of A match 2 of 5 faces of B" in many.description
    assert "merge A and B" in many.next_step


def test_photo_evidence_grows_with_the_share_of_faces_matched():
    small = classify("A", "B", [("a", "b1", 0.99), ("a", "b2", 0.99)], 3, 2)
    big = classify("A", "B", [("a", f"b{k}", 0.95) for k in range(300)], 3, 300)
    half = classify("A", "B", [("a", f"b{k}", 0.95) for k in range(150)], 3, 300)
    assert small.evidence < half.evidence < big.evidence <= 1


def candidate(a, b, score, fa, na, fb, nb, pairs, best, examples):
    return MergeCandidate(a, b, fa, na, fb, nb, pairs, best, 0.0, score, examples)


def test_misfiled_photo_not_ranked_last_and_failing_identities_ordered_by_evidence():
    pairs = (photo_pairs("Host", "Host_0001.jpg", "Olivia", 1)[:0]
             + [Finding("Host", f"Host_{k:04d}.jpg", "Olivia", "Olivia_0002.jpg", 0.96) for k in range(280)]
             + [Finding("Ann", "Ann_1.jpg", "Bea", "Bea_1.jpg", 0.999)]
             + [Finding("Cy", f"Cy_{k}.jpg", "Dee", f"Dee_{j}.jpg", 0.91) for k in range(3) for j in range(3)])
    f = findings_of({"Host": 300, "Olivia": 13, "Ann": 5, "Bea": 5, "Cy": 9, "Dee": 9, "Zed": 4}, pairs)
    cands = [
        candidate("Ann", "Bea", 0.30, 1, 5, 1, 5, 1, 0.999, [pairs[280]]),
        candidate("Cy", "Dee", 0.10, 3, 9, 3, 9, 9, 0.91, pairs[281:285]),
        candidate("Host", "Olivia", -0.7, 280, 300, 1, 13, 280, 0.96, pairs[:4]),
    ]
    cands.sort(key=lambda c: -c.evidence)
    assert [c.other_identity for c in cands] == ["Olivia", "Bea", "Dee"]
    ranked = [r.verdict.identity.name for r in rank_failing(f, cands)]
    assert set(ranked[:2]) == {"Host", "Olivia"} and set(ranked[2:4]) == {"Ann", "Bea"} and "Zed" not in ranked
    order = row_order(f, cands)
    keys = sorted(order, key=lambda n: order[n][0])
    assert keys[:6] == ranked and keys[-1] == "Zed" and order["Zed"][1] == "passed"
    lines = summary_lines(f, cands, ["out/report.html"])
    text = "\n".join(lines)
    fails = [ln for ln in lines if ln.startswith("  FAIL")]
    assert fails[0].startswith("  FAIL Host, Olivia: misfiled photo: Olivia_0002.jpg matches 280 of 300 faces of Host")
    assert len(fails) == 3  # one line per folder pair, not per identity
    assert "threshold: cosine >= 0.9" in text and "next steps:" in text and lines[-1] == "wrote out/report.html"
    msg = identity_message(f.verdicts["Olivia"], f, cands)
    assert len(msg.splitlines()) < 10 and "... and 277 more pair(s)" in msg


def test_summary_lines_hostile_names_and_limit():
    names = [f"\x1b[31mX{k}<b>" for k in range(30)]
    pairs = [Finding(names[k], "a.jpg", names[k + 1], "b.jpg", 0.95) for k in range(0, 30, 2)]
    f = findings_of({n: 2 for n in names}, pairs)
    f.metadata["threshold_choice"] = "from --threshold"
    lines = summary_lines(f, [], limit=10)
    assert all(ch.isprintable() for ln in lines for ch in ln)
    assert not any("<b>" in ln for ln in lines) and any("%1B[31mX0%3Cb%3E" in ln for ln in lines)
    assert sum(ln.startswith("  FAIL") for ln in lines) == 5
    assert "  ... and 20 more failing identities (report.html, findings.csv)" in lines
    assert "threshold: cosine >= 0.9 (from --threshold)" in lines
