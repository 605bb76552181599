"""The consistency check: outlier faces and incoherent folders against brute force, planted
strangers and mixed folders found, its test family and CSV, and LFW."""

from __future__ import annotations

import csv

import faiss  # noqa: F401  - before pytester's sys.modules snapshot (see test_plugin.py)
import numpy as np
from hypothesis import given, settings, strategies as st

from helpers import family_outcomes, write_face01
from strategies import build_clusters, clusters
from test_check_misfiled import FAST, PKG, lfw_data, make_data, reference, run_check, usable  # noqa: F401


def expected(c, out_q, fold_q, same_q, min_faces=4, min_other=2):
    """Brute-force issue keys, and keys too close to a threshold to call either way."""
    own, to_folder, folder_mean, counts = reference(c.vectors, c.labels, len(c.names), min_other)
    n_of = counts[c.labels]
    dist = own[n_of >= 3] if (n_of >= 3).any() else own[n_of >= 2]
    if dist.size == 0:
        return set(), set()
    out_t, fold_t, same_t = (np.quantile(dist, q) for q in (out_q, fold_q, same_q))
    want, near = set(), set()
    for i in range(len(own)):
        if n_of[i] < min_faces:
            continue
        best = to_folder[i].max()
        key = (c.names[c.labels[i]], c.files[i])
        if abs(own[i] - out_t) < 1e-4 or (np.isfinite(best) and abs(best - same_t) < 1e-4):
            near.add(key)
        if own[i] < out_t and not best >= same_t:
            want.add(key)
    for g, name in enumerate(c.names):
        if counts[g] >= 2:
            if abs(folder_mean[g] - fold_t) < 1e-4:
                near.add((name, ""))
            if folder_mean[g] < fold_t:
                want.add((name, ""))
    return want, near


@FAST
@given(clusters(max_folders=7), st.floats(0.0, 0.4), st.floats(0.0, 0.4), st.floats(0.0, 0.8))
def test_issues_equal_brute_force(c, out_q, fold_q, same_q):
    if not usable(c):
        return
    data = make_data(c.vectors, c.labels, c.names, c.files)
    issues = run_check("consistency", data, outlier_quantile=out_q, folder_quantile=fold_q, same_quantile=same_q)
    want, near = expected(c, out_q, fold_q, same_q)
    got = {(i.identity, i.file) for i in issues}
    assert got - near == want - near
    assert all(not i.other_identity and i.severity == "warn" for i in issues)


def planted(seed: int, n_folders=20, size=8, dim=64):
    """A stranger (a random vector) in folder 0, and folder 1 cut to 2 faces of two people."""
    rng = np.random.default_rng([seed, 1])  # not build_clusters' stream: its first draw is a folder centre
    c = build_clusters(seed, dim, [size] * n_folders, 0.7, [], [])
    v = rng.standard_normal(dim)
    c.vectors[3] = v / np.linalg.norm(v)
    keep = [r for r in range(len(c.labels)) if c.labels[r] != 1 or r in (size, size + 1)]
    # folder 1's second face: the face of folder 2's person least like folder 1's first one (two
    # random people can score 0.3 in 64-d; the test is about a folder of two people, not luck)
    pick = 2 * size + int(np.argmin(c.vectors[2 * size : 3 * size] @ c.vectors[size]))
    c.vectors[size + 1] = c.vectors[pick]
    c.vectors[pick] = c.vectors[2 * size + (pick - 2 * size + 1) % size]  # (a duplicate inside folder 2 is no stranger)
    vectors, labels = c.vectors[keep], c.labels[keep]
    files = [c.files[r] for r in keep]
    return vectors, labels, c.names, files, {(c.names[0], c.files[3]), (c.names[1], "")}


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_planted_strangers_and_mixed_folders_are_found(seed):
    vectors, labels, names, files, want = planted(seed)
    issues = run_check("consistency", make_data(vectors, labels, names, files), outlier_quantile=0.005,
                       folder_quantile=0.005)
    assert {(i.identity, i.file) for i in issues} == want


def test_family_warns_by_default_and_fails_when_told_and_writes_csv(pytester):
    vectors, labels, names, files, want = planted(5)
    root = pytester.path / "data"
    for k, name in enumerate(names):
        rows = np.flatnonzero(labels == k)
        write_face01(root, name, vectors[rows], files=[files[r] for r in rows])
    rules = pytester.path / "r.yaml"
    rules.write_text("checks:\n  consistency:\n    outlier_quantile: 0.005\n    folder_quantile: 0.005\n",
                     encoding="utf-8")
    args = (PKG, "-p", "no:cacheprovider", "--report-dir", "out", "--dataset", str(root), "--threshold", "0.999",
            "--rules", str(rules))
    rec = pytester.inline_run(*args)
    assert set(family_outcomes(rec, "test_consistency").values()) == {"passed"}
    with open(pytester.path / "out" / "consistency.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0][:5] == ["identity", "file", "other_identity", "other_file", "shortfall"]
    assert {(r[0], r[1]) for r in rows[1:]} == want
    rules.write_text(rules.read_text(encoding="utf-8") + "    severity: fail\n", encoding="utf-8")
    rec = pytester.inline_run(*args)
    outcomes = family_outcomes(rec, "test_consistency")
    assert {k for k, v in outcomes.items() if v == "failed"} == {names[0], names[1]}


def test_lfw_consistency(lfw_data):
    issues = run_check("consistency", lfw_data)
    got = {(i.identity, i.file) for i in issues}
    # photos of other people with no folder of their own (by eye), and a two-photo folder of two
    # different men; the rest are mostly hard photos of the right person: hence warn
    assert ("Mahmoud_Abbas", "Mahmoud_Abbas_0012.jpg") in got
    assert ("Thomas_Birmingham", "") in got
    assert 40 <= len(issues) <= 120
    assert not got & {(i.identity, i.file) for i in run_check("misfiled", lfw_data)}
