"""One crowded folder (video frames, thousands of identical vectors) must cost time, not memory.

Results are checked against brute force; memory is checked with tracemalloc (numpy reports its
buffers to it) around each stage, with the block sizes shrunk so that a bounded stage stays far
below what gathering the crowd's same-folder hits would take.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import faiss
import dataset_checks.backends.ivf as ivf
import dataset_checks.search as search
import dataset_checks.verify as verify
from dataset_checks.rules import IndexRules
from dataset_checks.search import SearchTooBroad, SearchTuning, exact_pairs, find_pairs
from dataset_checks.verify import verify_search
from helpers import brute_force, pair_set
from strategies import build_clusters

FLAT = IndexRules(type="flat", gpu=False)


def crowd_dataset(crowd: int, dim: int = 16, folders: int = 40, size: int = 6, seed: int = 0):
    """`crowd` identical vectors in folder 0, `folders` ArcFace-like folders, and the crowd's
    vector copied into two of them (the label errors)."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(dim)
    v /= np.linalg.norm(v)
    others = build_clusters(seed, dim, [size] * folders, 0.6, [], []).vectors.copy()
    others[0] = v
    others[size * 3 + 1] = v
    x = np.concatenate([np.repeat(v[None, :], crowd, axis=0), others]).astype(np.float32)
    labels = np.concatenate([np.zeros(crowd, np.int64), 1 + np.repeat(np.arange(folders), size)])
    return x, labels


def peak_of(fn, *args, **kwargs):
    """(result, peak bytes allocated while fn ran, above what was allocated before)."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        out = fn(*args, **kwargs)
        return out, tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


RULES = {
    "flat": FLAT,
    "ivf-lists": IndexRules(type="ivf", nlist=8, nprobe=8, gpu=False),
    "ivf-faiss": IndexRules(type="ivf", nlist=8, nprobe=8, gpu=False, scan="faiss"),
    "ivf-calibrated": IndexRules(type="ivf", nlist=8, gpu=False),
}


@pytest.mark.parametrize("kind", sorted(RULES))
def test_crowd_of_identical_vectors_equals_brute_force(kind):
    x, labels = crowd_dataset(3000)
    truth = brute_force(x, labels, 0.9)
    assert len(truth) == 2 * 3000 + 1  # both copies to every frame, and to each other
    result = find_pairs(x, labels, 0.9, RULES[kind])
    assert pair_set(result) == truth
    assert pair_set(exact_pairs(x, labels, 0.9)) == truth
    check = verify_search(x, labels, 0.9, result.i, result.j)
    assert check["recall"] == 1.0 and check["extra"] == 0


def search_peak(kind: str, crowd: int, monkeypatch) -> int:
    tuning = SearchTuning(scan_cells=1 << 14, range_batch_probed=1 << 14)
    x, labels = crowd_dataset(crowd)
    result, peak = peak_of(find_pairs, x, labels, 0.9, RULES[kind], tuning=tuning)
    assert len(result) == 2 * crowd + 1
    return peak


@pytest.mark.parametrize("kind", ["flat", "ivf-lists", "ivf-faiss"])
def test_search_memory_does_not_grow_with_the_crowd(kind, monkeypatch):
    # Gathering the crowd's same-folder hits would take 12 bytes x crowd^2 (1.2 GB at 10,000);
    # what may grow with n is per-vector arrays, and on the faiss path one query's own hits
    # (a crowd frame's range search returns the crowd: linear, never quadratic).
    small = search_peak(kind, 2000, monkeypatch)
    big = search_peak(kind, 10_000, monkeypatch)
    assert big < small + 500 * 8000 + (1 << 20), (small, big)


def calibration_peak(crowd: int, probes_path: bool, monkeypatch) -> tuple[int, dict]:
    x, labels = crowd_dataset(crowd)
    peaks = []
    inner = ivf._choose_nprobe

    def measured(*args, **kwargs):
        out, peak = peak_of(inner, *args, **kwargs)
        peaks.append(peak)
        return out

    monkeypatch.setattr(ivf, "_choose_nprobe", measured)
    rules = IndexRules(type="ivf", nlist=8, gpu=False, scan="lists" if probes_path else "faiss")
    result = find_pairs(x, labels, 0.9, rules, tuning=SearchTuning(calibration_cells=1 << 16))
    assert len(result) == 2 * crowd + 1
    assert len(peaks) == 1
    return peaks[0], result.info["calibration"]


@pytest.mark.parametrize("probes_path", [True, False], ids=["probes-kept", "quantizer"])
def test_calibration_memory_does_not_grow_with_the_crowd(probes_path, monkeypatch):
    # 512 sampled queries, nearly all in the crowd: their neighbour sets would be 512 x crowd
    # Python ints (~300 MB at 10,000); the block-wise count needs one block and (sample x nlist).
    small, calib_small = calibration_peak(2000, probes_path, monkeypatch)
    big, calib_big = calibration_peak(10_000, probes_path, monkeypatch)
    assert calib_big["sample_neighbours"] > 4 * 10**6  # the crowd was counted, not skipped
    assert big < 2 * small + (1 << 20), (small, big)
    assert big < 8 << 20


def test_verify_memory_does_not_grow_with_the_crowd(monkeypatch):
    monkeypatch.setattr(verify, "CELLS", 1 << 14)
    peaks = []
    for crowd in (2000, 10_000):
        x, labels = crowd_dataset(crowd)
        found = exact_pairs(x, labels, 0.9)
        # the findings' queries are mostly crowd frames: each has `crowd` same-folder hits
        check, peak = peak_of(verify_search, x, labels, 0.9, found.i, found.j)
        assert check["recall"] == 1.0 and check["extra"] == 0
        peaks.append(peak)
    assert peaks[1] < peaks[0] + 100 * 8000 + (1 << 20), peaks


@pytest.mark.parametrize("kind", ["flat", "ivf-lists", "ivf-faiss", "ivf-calibrated"])
def test_too_broad_fires_before_memory_explodes(kind, monkeypatch):
    # threshold -1: every cross-folder pair (3000 x 240 + ...) matches; the limit stops it
    # with the collector holding about 2 x max_pairs keys, not all the pairs (and calibration,
    # where every sampled cell is a cross-folder hit, holds one block of them).
    tuning = SearchTuning(scan_cells=1 << 14, calibration_cells=1 << 14, range_batch_probed=1 << 14)
    x, labels = crowd_dataset(3000)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        with pytest.raises(SearchTooBroad, match="threshold -1"):
            find_pairs(x, labels, -1.0, RULES[kind], max_pairs=5000, tuning=tuning)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    all_pairs = 3000 * 240 + 240 * 234 // 2
    assert peak < 8 * all_pairs, peak


def test_list_split_skips_the_crowd_for_its_own_queries(monkeypatch):
    x, labels = crowd_dataset(3000)
    rules = RULES["ivf-lists"]
    # folder caps (backends/bounds.py) off: they skip the crowd for its own queries as well
    split = find_pairs(x, labels, 0.9, rules, tuning=SearchTuning(folder_caps=False))
    whole = find_pairs(x, labels, 0.9, rules, tuning=SearchTuning(split_share=2.0, folder_caps=False))  # never split
    caps = find_pairs(x, labels, 0.9, rules, tuning=SearchTuning(split_share=2.0))
    np.testing.assert_array_equal(caps.i, whole.i)
    assert caps.info["scored_cells"] < whole.info["scored_cells"] - 3000 * 2900
    np.testing.assert_array_equal(split.i, whole.i)
    np.testing.assert_array_equal(split.j, whole.j)
    np.testing.assert_array_equal(split.sim, whole.sim)
    # the crowd's own 3000 queries scored 3000 frames each without the split
    assert split.info["scored_cells"] < whole.info["scored_cells"] - 3000 * 2900


def test_faiss_range_batches_cut_to_one_query_give_the_same_pairs(monkeypatch):
    x, labels = crowd_dataset(1500)
    rules = RULES["ivf-faiss"]
    default = find_pairs(x, labels, 0.9, rules)
    cut = find_pairs(x, labels, 0.9, rules, tuning=SearchTuning(range_batch_probed=1))
    assert pair_set(default) == pair_set(cut) == brute_force(x, labels, 0.9)


def test_flat_scan_with_tiny_blocks_and_unsorted_labels(monkeypatch):
    # rows out of label order (the flat scan sorts them) and blocks of a few cells
    data = build_clusters(seed=4, dim=16, sizes=[7, 3, 9, 5], intra=0.6, crowd_sizes=[40], plants=[(0, 1, 0.1)])
    perm = np.random.default_rng(0).permutation(len(data.vectors))
    x, labels = np.ascontiguousarray(data.vectors[perm]), data.labels[perm]
    for threshold in (0.3, 0.8, 0.95):
        result = find_pairs(x, labels, threshold, FLAT, tuning=SearchTuning(scan_cells=5))
        assert pair_set(result) == brute_force(x, labels, threshold)


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_gpu_widening_logic_on_a_cpu_index(kind, monkeypatch):
    # _gpu_scan only needs k-NN `search` and `ntotal`, so a CPU index stands in for the GPU one
    # (there may be no GPU): a crowd wider than the largest k must reach the bounded fallback,
    # and the pairs must still be exactly brute force's.
    tuning = SearchTuning(gpu_k_start=4, gpu_k_max=64, scan_cells=1 << 10)
    x, labels = crowd_dataset(300)
    radius = 0.9 - search.RADIUS_MARGIN
    if kind == "flat":
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x)

        def fallback(rows):
            search._exact_rows(x, labels, rows, radius, collector.add, cells=tuning.scan_cells)
    else:
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(x.shape[1]), x.shape[1], 4, faiss.METRIC_INNER_PRODUCT)
        index.train(x)
        index.add(x)
        index.nprobe = 4

        def fallback(rows):
            search._ivf_range(index, x, labels, radius, collector.add, rows=rows, tuning=tuning)
    collector = search._Collector(x, labels, 0.9, 10**6)
    stats: dict = {}
    search._gpu_scan(index, x, labels, radius, collector.add, stats, fallback, tuning=tuning)
    assert stats["cpu_fallback_queries"] >= 300
    assert pair_set(collector.result()) == brute_force(x, labels, 0.9)


@pytest.mark.parametrize("scan", ["lists", "faiss"])
def test_ivf_backend_over_two_halves_of_its_range_equals_the_whole(scan):
    # sharding is a parameter: candidates over [0, mid) and [mid, units) are the whole range's,
    # and collected they are exactly find_pairs' result
    from dataset_checks.backends.ivf import IVFBackend

    x, labels = crowd_dataset(1500)
    threshold = 0.5  # cross-folder pairs in most lists, not only the crowd's
    rules = IndexRules(type="ivf", nlist=16, gpu=False, scan=scan)
    built = IVFBackend(rules, 16, scan=scan).build(x, labels, threshold - search.RADIUS_MARGIN)
    built.calibrate()
    assert built.unit == ("list" if scan == "lists" else "vec")

    def collect(*spans):
        got = []
        for start, end in spans:
            built.candidates(lambda q, nb, d: got.append((q, nb, d)), start, end)
        return [np.concatenate([g[k] for g in got]) for k in range(3)] if got else [np.zeros(0, np.int64)] * 3

    def pairs(q, nb, d):
        return set(zip(np.minimum(q, nb).tolist(), np.maximum(q, nb).tolist()))

    mid = built.units // 2
    low, high, whole = collect((0, mid)), collect((mid, built.units)), collect((0, built.units))
    assert pairs(*low) and pairs(*high)
    assert pairs(*low) | pairs(*high) == pairs(*whole)
    collector = search._Collector(x, labels, threshold, 10**6)
    collector.add(*collect((0, mid), (mid, built.units)))
    sharded, result = collector.result(), find_pairs(x, labels, threshold, rules)
    assert result.info["nprobe"] == built.info["nprobe"]
    np.testing.assert_array_equal(sharded.i, result.i)
    np.testing.assert_array_equal(sharded.j, result.j)
    np.testing.assert_array_equal(sharded.sim, result.sim)
