"""nprobe calibration counts, without searching, what an IVF search at each nprobe would find.

The identity it rests on: at nprobe p a true pair (a, b) is found iff b's list is among a's p
nearest lists or a's list among b's. These tests run the real `IndexIVFFlat.range_search` at
every nprobe and check that the calibrated recall is exactly the recall it gets on the sample.
"""

from __future__ import annotations

import numpy as np
import pytest

import faiss
import dataset_checks.search as search
from dataset_checks.rules import IndexRules
from strategies import build_clusters

RADIUS = 0.4


def dataset(seed: int = 3):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(3, 20, 60).tolist()
    plants = [(int(a), int(b), 0.2) for a, b in zip(rng.integers(0, 99, 10), rng.integers(0, 99, 10))]
    data = build_clusters(seed, 16, sizes, 0.3, [60, 90], plants)  # loose folders: many misses at low nprobe
    return data.vectors, data.labels


def trained(x: np.ndarray, nlist: int):
    quantizer = faiss.IndexFlatIP(x.shape[1])
    index = faiss.IndexIVFFlat(quantizer, x.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = 1
    index.train(x)
    index.add(x)
    return index


def actual_recall(index, x: np.ndarray, nprobe: int) -> float:
    """Share of true neighbour pairs (a != b, score >= RADIUS, any folders) that the index finds
    from one side or the other, every row being a query."""
    n = len(x)
    index.nprobe = nprobe
    lims, _, nb = index.range_search(x, RADIUS)
    q = np.repeat(np.arange(n), np.diff(lims.astype(np.int64)))
    found = np.zeros((n, n), dtype=bool)
    found[q, nb] = True
    found |= found.T
    truth = x @ x.T >= RADIUS
    np.fill_diagonal(truth, False)
    return float((found & truth).sum() / truth.sum())


def calibrate(index, x, labels, probes_kept: bool, monkeypatch, same_kept: int | None = None, seed: int = 0):
    list_of = search._list_of(faiss, index, len(x))
    probes = search._nearest_lists(index.quantizer, x, min(search.PROBES_KEPT, index.nlist)) if probes_kept else None
    rules = IndexRules(type="ivf", recall_target=1.1)  # never reached: every nprobe up to nlist is tried
    _, calib = search._choose_nprobe(faiss, index, None, x, labels, RADIUS, rules, seed, list_of=list_of,
                                     probes=probes, same_kept=same_kept or 10**9,
                                     tuning=search.SearchTuning(calibration_queries=len(x)))  # the sample is every row
    return calib["recall_by_nprobe"]


@pytest.mark.parametrize("probes_kept", [True, False], ids=["probes-kept", "quantizer"])
def test_calibrated_recall_equals_the_index_recall(probes_kept, monkeypatch):
    x, labels = dataset()
    index = trained(x, 16)  # every place of every ranking is known: the count is exact
    tried = calibrate(index, x, labels, probes_kept, monkeypatch)
    assert sorted(tried) == [4, 8, 16]
    for p, recall in tried.items():
        assert recall == pytest.approx(actual_recall(index, x, p), abs=2e-4), p
    assert tried[4] < 0.95, "the case is too easy to test anything"


def test_places_beyond_the_kept_probes_count_as_missed(monkeypatch):
    # nlist 64 > PROBES_KEPT: b's ranking is known to 16 places only, so the estimate may only
    # err low past 16 (and is exact up to it)
    x, labels = dataset()
    index = trained(x, 64)
    tried = calibrate(index, x, labels, True, monkeypatch)
    for p, recall in tried.items():
        actual = actual_recall(index, x, p)
        if p <= search.PROBES_KEPT:
            assert recall == pytest.approx(actual, abs=2e-4), p
        else:
            assert recall <= actual + 2e-4, p
    assert tried[64] == 1.0


def test_subsampled_same_folder_neighbours_estimate_the_recall(monkeypatch):
    x, labels = dataset()
    index = trained(x, 16)
    exact = calibrate(index, x, labels, True, monkeypatch)
    sampled = calibrate(index, x, labels, True, monkeypatch, same_kept=300)
    for p in exact:
        assert sampled[p] == pytest.approx(exact[p], abs=0.03), p
