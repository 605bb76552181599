"""Every pair, proven, by default: the default search (flat below `flat_below`, folder caps above)
returns exactly the brute force's pairs, the whole truth and not a sample, and says so; only an
explicit `index.type: ivf` trades exactness for speed, and then every output says "not proven".
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataset_checks.backends import bounds as B
from dataset_checks.backends.caps import CapsBackend
from dataset_checks.rules import IndexRules
from dataset_checks.search import RADIUS_MARGIN, exact_pairs, exactness, find_pairs
from dataset_checks.synthetic import seed_scale
from dataset_checks.verify import recall_lower_bound
from helpers import pair_set, write_face01
from strategies import Clusters, clusters, crowded_clusters, thresholds

PKG = str(Path(__file__).resolve().parents[1] / "dataset_checks")
AUTO_ABOVE_FLAT = IndexRules(flat_below=0, gpu=False)  # the default choice, for a table of any size


def _with_edge_pairs(data: Clusters, threshold: float, seed: int, deltas: list[float]) -> Clusters:
    """`data` plus, per delta, a face of another folder at cosine threshold + delta (float32
    rows: the float64 similarity lands within ~1e-7 of it) to a random face: pairs right on the
    threshold, which rounding must not drop."""
    rng = np.random.default_rng(seed)
    x, labels = data.vectors.copy(), data.labels.copy()
    extra, extra_labels = [], []
    for k, delta in enumerate(deltas):
        src = x[rng.integers(len(x))].astype(np.float64)
        other = rng.standard_normal(x.shape[1])
        other -= other.dot(src) * src
        other /= np.linalg.norm(other)
        c = float(np.clip(threshold + delta, -1.0, 1.0))
        extra.append(c * src + np.sqrt(max(0.0, 1 - c * c)) * other)
        extra_labels.append(labels.max() + 1 + k)  # each in a folder of its own
    v = np.concatenate([x, np.asarray(extra, dtype=np.float32)]) if extra else x
    v = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
    return Clusters(v, np.concatenate([labels, np.asarray(extra_labels, dtype=np.int64)]), data.names, data.files)


@settings(max_examples=60)
@given(data=st.one_of(clusters(max_dim=48, min_folders=2, max_folders=12, max_size=14), crowded_clusters()),
       threshold=thresholds, seed=st.integers(0, 2**32 - 1),
       deltas=st.lists(st.sampled_from([-3e-7, -1e-7, 0.0, 1e-7, 3e-7, 1e-5, -1e-5]), max_size=4))
def test_the_default_search_above_flat_below_is_the_brute_force(data, threshold, seed, deltas):
    data = _with_edge_pairs(data, threshold, seed, deltas)
    truth = exact_pairs(data.vectors, data.labels, threshold)
    found = find_pairs(data.vectors, data.labels, threshold, AUTO_ABOVE_FLAT)
    # folder caps, or the flat search where a sample shows the caps would exclude too little
    assert found.info["index"] in ("folder caps", "IndexFlatIP") and exactness(found.info)["exact"]
    assert pair_set(found) == pair_set(truth)
    assert np.array_equal(found.sim, truth.sim)


@settings(max_examples=30)
@given(data=clusters(max_dim=32, min_folders=3, max_folders=10, max_size=12), threshold=thresholds,
       pick=st.integers(0, 2**32 - 1))
def test_rows_against_every_other_folder_both_sides(data, threshold, pick):
    # an incremental run's new rows: every pair they take part in, whichever folder comes first
    rng = np.random.default_rng(pick)
    rows = np.unique(rng.integers(0, len(data.vectors), size=max(1, len(data.vectors) // 4)))
    radius = threshold - RADIUS_MARGIN
    built = CapsBackend().build(data.vectors, data.labels, radius)
    got = set()

    def emit(q, nb, s):
        keep = s >= radius
        got.update((int(min(a, b)), int(max(a, b))) for a, b in zip(q[keep], nb[keep]))

    built.exact_rows(rows, emit)
    truth = pair_set(exact_pairs(data.vectors, data.labels, threshold))
    involved = {p for p in truth if p[0] in set(rows.tolist()) or p[1] in set(rows.tolist())}
    assert involved <= got  # candidates may hold pairs within the margin below the threshold
    x = data.vectors.astype(np.float64)
    assert all(x[a] @ x[b] >= radius - 1e-6 and data.labels[a] != data.labels[b] for a, b in got)


def test_smaller_folders_query_the_larger_ones_caps():
    # folders by size, smallest first: each folder pair is tested from its smaller side
    labels = np.repeat([0, 1, 2], [50, 3, 10])
    x = np.random.default_rng(0).standard_normal((63, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    cert = B.Certifier(x, labels, 0.9, B.NormRange.of(x))
    assert cert.folder[labels == 1][0] < cert.folder[labels == 2][0] < cert.folder[labels == 0][0]
    order = cert.order()
    assert np.all(np.diff(cert.folder[order]) >= 0)


def test_the_default_rules_at_21k_faces_find_every_pair():
    # default rules (flat_below 20,000): the 21k faces take the search above it; the whole
    # brute-force truth, planted copies and crowded folders of near-identical frames included
    data = seed_scale(n_identities=420, n_vectors=21_000, n_planted=80, crowded_every=40, crowd_size=300, seed=7)
    x = np.concatenate(data.vectors).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.repeat(np.arange(len(data.vectors)), [len(v) for v in data.vectors])
    found = find_pairs(x, labels, 0.85, IndexRules(gpu=False))
    truth = exact_pairs(x, labels, 0.85)
    assert len(x) >= IndexRules().flat_below and found.info["index"] == "folder caps"
    assert len(truth) > 100
    assert pair_set(found) == pair_set(truth) and np.array_equal(found.sim, truth.sim)
    assert exactness(found.info) == {"exact": True, "how": found.info["certified"]["how"]}


def test_ivf_says_not_proven_and_auto_never_picks_it():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((400, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.repeat(np.arange(40), 10)
    ivf = find_pairs(x, labels, 0.8, IndexRules(type="ivf", nlist=8, nprobe=1, gpu=False))
    assert exactness(ivf.info)["exact"] is False and "sampled nprobe" in exactness(ivf.info)["how"]
    certified = find_pairs(x, labels, 0.8, IndexRules(type="ivf", nlist=8, nprobe=1, gpu=False, certify=True))
    assert exactness(certified.info)["exact"] is True
    for n_below in (0, 100, 10_000):
        auto = find_pairs(x, labels, 0.8, IndexRules(flat_below=n_below, gpu=False))
        assert auto.info["index"] in ("IndexFlatIP", "folder caps") and exactness(auto.info)["exact"]


def test_auto_takes_the_flat_search_where_caps_would_exclude_too_little():
    from dataset_checks.search import CAPS_MAX_SCANNED

    rng = np.random.default_rng(11)
    centres = rng.standard_normal((30, 24))
    x = np.concatenate([c + 0.25 * rng.standard_normal((20, 24)) for c in centres]).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.repeat(np.arange(30), 20)
    tight = find_pairs(x, labels, 0.9, AUTO_ABOVE_FLAT)  # tight clusters at a high threshold: caps pay
    assert tight.info["index"] == "folder caps"
    assert CapsBackend().build(x, labels, 0.9).scanned_share() <= CAPS_MAX_SCANNED
    low = find_pairs(x, labels, -0.2, AUTO_ABOVE_FLAT)  # a threshold no cap can exclude anything at
    assert low.info["index"] == "IndexFlatIP" and low.info["chosen"].startswith("flat: folder caps would leave")
    assert low.info["caps_scanned_share"] > CAPS_MAX_SCANNED and exactness(low.info)["exact"]
    assert pair_set(low) == pair_set(exact_pairs(x, labels, -0.2))
    explicit = find_pairs(x, labels, -0.2, IndexRules(type="caps", gpu=False))  # asked for: kept
    assert explicit.info["index"] == "folder caps" and pair_set(explicit) == pair_set(low)


def test_recall_lower_bound():
    assert recall_lower_bound(300, 300) == pytest.approx(0.99)  # the rule of three
    assert recall_lower_bound(0, 0) is None
    assert 0.9 < recall_lower_bound(95, 100) < 0.95  # below the sampled 0.95
    assert recall_lower_bound(299, 300) < recall_lower_bound(300, 300)


def _run_dataset(pytester, index: str):
    rng = np.random.default_rng(5)
    centres = rng.standard_normal((12, 32))
    ds = pytester.path / "ds"
    for k, c in enumerate(centres):
        v = c + 0.15 * rng.standard_normal((8, 32))
        if k == 1:
            v[0] = centres[0] + 0.01 * rng.standard_normal(32)  # a face of folder 0 filed in folder 1
        write_face01(ds, f"P{k:02d}", v.astype(np.float32))
    rules = pytester.path / "rules.yaml"
    rules.write_text(f"index:\n  type: {index}\n  flat_below: 0\n  nlist: 4\n  nprobe: 1\n", encoding="utf-8")
    result = pytester.runpytest_inprocess(PKG, "-p", "no:cacheprovider", "--dataset", str(ds), "--rules",
                                          str(rules), "--threshold", "0.9", "--report-dir", "out")
    summary = result.stdout.str()
    summary = summary[summary.index("dataset_checks ==="):]
    doc = json.loads((pytester.path / "out" / "findings.json").read_text(encoding="utf-8"))
    return summary, doc


def test_outputs_say_exact_by_default_and_not_proven_for_ivf(pytester):
    summary, doc = _run_dataset(pytester, "auto")
    assert doc["exact"]["exact"] is True and doc["index"] == "folder caps"
    assert "exact: every cross-folder pair at or above the threshold is found (folder caps" in summary
    html = (pytester.path / "out" / "report.html").read_text(encoding="utf-8")
    assert "exact: every cross-folder pair" in html
    summary, doc = _run_dataset(pytester, "ivf")
    assert doc["exact"]["exact"] is False
    line = next(x for x in summary.splitlines() if x.startswith("search: "))
    assert "NOT proven exact" in line and "at 95% confidence" in line and "recall 1.0000 on" not in line
