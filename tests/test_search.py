"""find_pairs against brute force: nothing missed, nothing extra, nothing within one folder."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import faiss
from dataset_checks.rules import IndexRules
from dataset_checks.search import SearchResult, SearchTooBroad, exact_pairs, find_pairs
from helpers import brute_force, pair_set
from strategies import build_clusters, clusters, crowded_clusters, permutations, thresholds

FLAT = IndexRules(type="flat", gpu=False)
NO_GPU = faiss.get_num_gpus() == 0


def exhaustive_ivf(nlist: int, gpu: bool = False) -> IndexRules:
    # every list probed: an IVF index is then exact, so it must equal brute force
    return IndexRules(type="ivf", nlist=nlist, nprobe=nlist, gpu=gpu)


def assert_matches_brute_force(result: SearchResult, vectors: np.ndarray, labels: np.ndarray, threshold: float):
    truth = brute_force(vectors, labels, threshold)
    found = pair_set(result)
    missed, extra = truth - found, found - truth
    assert not missed, f"pairs at/above {threshold} missed: {sorted(missed)[:10]}"
    assert not extra, f"pairs reported that brute force does not have: {sorted(extra)[:10]}"
    assert len(result) == len(found), "duplicate pairs in the result"
    # the library's own reference agrees with the independent one, pair for pair. Not compared
    # as ordered arrays: pairs whose similarities differ in the last bits (or tie) may be
    # ordered either way by two computations; the order contract is checked below.
    ref = exact_pairs(vectors, labels, threshold)
    assert pair_set(ref) == truth
    ref_sim = dict(zip(zip(ref.i.tolist(), ref.j.tolist()), ref.sim.tolist()))
    for i, j, s in zip(result.i.tolist(), result.j.tolist(), result.sim.tolist()):
        assert abs(s - ref_sim[(i, j)]) <= 1e-12
    # structural guarantees
    assert np.all(result.i < result.j)
    assert np.all(labels[result.i] != labels[result.j]), "a pair within one folder was reported"
    assert np.all(result.sim >= threshold)
    x = vectors.astype(np.float64)
    expected = np.einsum("ij,ij->i", x[result.i], x[result.j])
    np.testing.assert_allclose(result.sim, expected, rtol=0, atol=1e-12)
    assert result.sim.dtype == np.float64
    assert np.all(np.diff(result.sim) <= 0), "pairs are not sorted by similarity, highest first"
    # ties (identical similarities) in one canonical order: by i, then j
    order = np.lexsort((result.j, result.i, -result.sim))
    np.testing.assert_array_equal(order, np.arange(len(result)))


# -- properties over generated datasets --------------------------------------------------------


@given(data=clusters(), threshold=thresholds)
def test_flat_equals_brute_force(data, threshold):
    result = find_pairs(data.vectors, data.labels, threshold, FLAT)
    assert_matches_brute_force(result, data.vectors, data.labels, threshold)
    assert result.info["index"] == "IndexFlatIP"


@given(data=clusters(), threshold=thresholds, nlist=st.integers(1, 4))
def test_exhaustive_ivf_equals_brute_force(data, threshold, nlist):
    result = find_pairs(data.vectors, data.labels, threshold, exhaustive_ivf(nlist))
    assert_matches_brute_force(result, data.vectors, data.labels, threshold)
    assert result.info["index"] == "IndexIVFFlat"
    assert result.info["nprobe"] == result.info["nlist"]


@settings(max_examples=15)
@given(data=clusters(max_dim=32, min_folders=10, max_folders=16, max_size=14), threshold=thresholds, nlist=st.integers(2, 8))
def test_exhaustive_ivf_with_several_lists_equals_brute_force(data, threshold, nlist):
    # enough vectors for faiss to train several lists (it wants ~39 per list)
    result = find_pairs(data.vectors, data.labels, threshold, exhaustive_ivf(nlist))
    assert result.info["nlist"] == min(nlist, max(1, len(data.vectors) // 39))
    assert_matches_brute_force(result, data.vectors, data.labels, threshold)


@given(data=clusters(), threshold=thresholds)
def test_planted_duplicates_found(data, threshold):
    result = find_pairs(data.vectors, data.labels, threshold, FLAT)
    found = pair_set(result)
    x = data.vectors.astype(np.float64)
    for a, b in data.planted:
        if data.labels[a] == data.labels[b]:
            continue
        pair = (min(a, b), max(a, b))
        assert (pair in found) == (float(x[a] @ x[b]) >= threshold), pair


@given(data=st.data(), clusters_=clusters(max_folders=4), threshold=thresholds, kind=st.sampled_from(["flat", "ivf"]))
def test_result_independent_of_row_and_folder_order(data, clusters_, threshold, kind):
    n = len(clusters_.vectors)
    order = data.draw(permutations(n), label="row order")
    label_map = data.draw(permutations(len(clusters_.names)), label="folder renaming")
    rules = FLAT if kind == "flat" else exhaustive_ivf(2)
    base = find_pairs(clusters_.vectors, clusters_.labels, threshold, rules)
    perm = clusters_.permuted(order, label_map)
    moved = find_pairs(perm.vectors, perm.labels, threshold, rules)
    back = {tuple(sorted((int(order[i]), int(order[j])))) for i, j in pair_set(moved)}
    assert back == pair_set(base)
    # the same similarities, pair for pair
    sims_base = dict(zip(zip(base.i.tolist(), base.j.tolist()), base.sim.tolist()))
    for i, j, s in zip(moved.i.tolist(), moved.j.tolist(), moved.sim.tolist()):
        key = tuple(sorted((int(order[i]), int(order[j]))))
        assert s == pytest.approx(sims_base[key], abs=1e-12)


@given(data=clusters(), pick=st.integers(0, 10_000))
def test_threshold_exactly_on_a_similarity_is_included(data, pick):
    labels = data.labels
    low = find_pairs(data.vectors, labels, -1.0, FLAT)
    # every cross-folder pair is at or above -1
    assert len(low) == sum(int((labels[:, None] != labels[None, :])[i, i + 1 :].sum()) for i in range(len(labels)))
    k = pick % len(low)
    s = float(low.sim[k])
    pair = (int(low.i[k]), int(low.j[k]))
    at = find_pairs(data.vectors, labels, s, FLAT)
    assert pair in pair_set(at), f"pair with similarity exactly {s!r} not reported at threshold {s!r}"
    assert np.all(at.sim >= s)
    # every pair whose similarity is >= s at the low threshold is still there, nothing else
    assert pair_set(at) == {p for p, v in zip(zip(low.i.tolist(), low.j.tolist()), low.sim.tolist()) if v >= s}
    above = find_pairs(data.vectors, labels, float(np.nextafter(s, 2.0)), FLAT)
    assert pair not in pair_set(above)


@given(data=crowded_clusters(), threshold=st.floats(0.8, 0.95))
def test_crowded_folders_equal_brute_force(data, threshold):
    for rules in (FLAT, exhaustive_ivf(3)):
        result = find_pairs(data.vectors, data.labels, threshold, rules)
        assert_matches_brute_force(result, data.vectors, data.labels, threshold)


# -- fixed cases -------------------------------------------------------------------------------


def topk_cross_pairs(vectors: np.ndarray, labels: np.ndarray, threshold: float, k: int) -> set[tuple[int, int]]:
    """The usual recipe: k nearest neighbours per face, keep the cross-folder ones >= threshold."""
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    sims, nbs = index.search(vectors, k + 1)
    out = set()
    for q in range(len(vectors)):
        for s, nb in zip(sims[q], nbs[q]):
            if nb >= 0 and nb != q and labels[nb] != labels[q] and s >= threshold:
                out.add((min(q, int(nb)), max(q, int(nb))))
    return out


def test_crowded_folder_topk_misses_range_search_finds():
    # one folder of 40 near-identical frames (cosine ~0.995); a frame copied, re-encoded, into
    # another folder at cosine ~0.95 to every frame. From each frame, its 10 nearest neighbours
    # are frames of its own folder; from the copy, only 10 of the 40 frames are reachable.
    data = build_clusters(seed=7, dim=64, sizes=[5, 5, 5], intra=0.6, crowd_sizes=[40], plants=[(0, 1, 0.25)])
    threshold = 0.85
    truth = brute_force(data.vectors, data.labels, threshold)
    (src, copy), = data.planted
    assert (min(src, copy), max(src, copy)) in truth
    crowd = data.crowded[0]
    assert sum(1 for i, j in truth if crowd in (data.labels[i], data.labels[j])) >= 30
    topk = topk_cross_pairs(data.vectors, data.labels, threshold, k=10)
    assert topk < truth and len(truth - topk) >= 20, "the case is not hard for top-k"
    result = find_pairs(data.vectors, data.labels, threshold, FLAT)
    assert pair_set(result) == truth
    result_ivf = find_pairs(data.vectors, data.labels, threshold, exhaustive_ivf(4))
    assert pair_set(result_ivf) == truth


def test_demo_dataset_planted_crowd_copy_found():
    from dataset_checks.demo import LIVE_HOST, build

    ds = build()
    vecs = np.concatenate([v / np.linalg.norm(v, axis=1, keepdims=True) for v in ds.vectors]).astype(np.float32)
    labels = np.repeat(np.arange(len(ds.names)), [len(v) for v in ds.vectors])
    result = find_pairs(vecs, labels, 0.85, FLAT)
    truth = brute_force(vecs, labels, 0.85)
    assert pair_set(result) == truth
    topk = topk_cross_pairs(vecs, labels, 0.85, k=10)
    host = ds.names.index(LIVE_HOST)
    host_pairs = {p for p in truth if host in (labels[p[0]], labels[p[1]])}
    assert len(host_pairs) == 300
    assert not host_pairs <= topk


def test_auto_calibrated_ivf_has_full_recall_on_clustered_data():
    # 4,000 faces in 250 folders of 16-d ArcFace-like clusters plus planted copies: calibration
    # picks nprobe on a sample; on clustered data every pair at/above the threshold is found.
    rng = np.random.default_rng(3)
    sizes = rng.integers(4, 28, 250).tolist()
    plants = [(int(a), int(b), float(nz)) for a, b, nz in zip(rng.integers(0, 999, 60), rng.integers(0, 999, 60), rng.uniform(0.0, 0.5, 60))]
    data = build_clusters(seed=11, dim=32, sizes=sizes, intra=0.6, crowd_sizes=[60, 80], plants=plants)
    threshold = 0.8
    rules = IndexRules(type="ivf", gpu=False)
    result = find_pairs(data.vectors, data.labels, threshold, rules)
    info = result.info
    assert info["index"] == "IndexIVFFlat"
    assert info["calibration"]["mode"] == "calibrated"
    assert 1 <= info["nprobe"] <= info["nlist"]
    assert info["nlist"] > 1
    truth = brute_force(data.vectors, data.labels, threshold)
    assert len(truth) > 60
    found = pair_set(result)
    recall = len(found & truth) / len(truth)
    assert recall == 1.0, f"recall {recall:.4f} with nprobe={info['nprobe']} of nlist={info['nlist']}"
    assert found == truth


def test_auto_index_type_follows_flat_below():
    data = build_clusters(seed=1, dim=16, sizes=[10] * 10, intra=0.6, crowd_sizes=[], plants=[(0, 1, 0.1)])
    flat = find_pairs(data.vectors, data.labels, 0.8, IndexRules(type="auto", flat_below=1000, gpu=False))
    caps = find_pairs(data.vectors, data.labels, 0.8, IndexRules(type="auto", flat_below=50, nprobe=64, gpu=False))
    # above flat_below, auto is the exact folder-caps search, never an unproven IVF
    assert flat.info["index"] == "IndexFlatIP" and caps.info["index"] == "folder caps"
    assert flat.info["certified"]["exact"] and caps.info["certified"]["exact"]
    assert pair_set(flat) == pair_set(caps) == brute_force(data.vectors, data.labels, 0.8)


def test_too_broad_raises_with_tiny_max_pairs():
    data = build_clusters(seed=2, dim=8, sizes=[20, 20, 20], intra=0.5, crowd_sizes=[], plants=[])
    truth = brute_force(data.vectors, data.labels, -1.0)
    assert len(truth) == 3 * 400
    with pytest.raises(SearchTooBroad, match=r"threshold -1"):
        find_pairs(data.vectors, data.labels, -1.0, FLAT, max_pairs=10)
    with pytest.raises(SearchTooBroad):
        find_pairs(data.vectors, data.labels, -1.0, exhaustive_ivf(2), max_pairs=10)
    # exactly at the limit is allowed
    result = find_pairs(data.vectors, data.labels, -1.0, FLAT, max_pairs=len(truth))
    assert pair_set(result) == truth
    with pytest.raises(SearchTooBroad):
        find_pairs(data.vectors, data.labels, -1.0, FLAT, max_pairs=len(truth) - 1)


def test_degenerate_inputs_give_empty_results():
    x = np.eye(4, dtype=np.float32)
    one_folder = find_pairs(x, np.zeros(4, np.int64), -1.0, FLAT)
    assert len(one_folder) == 0
    empty = find_pairs(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), 0.5, FLAT)
    assert len(empty) == 0
    assert len(exact_pairs(x, np.zeros(4, np.int64), -1.0)) == 0


def test_identical_vectors_in_two_folders():
    v = np.ones((3, 8), np.float32) / np.sqrt(8)
    labels = np.array([0, 1, 1])
    result = find_pairs(v, labels, 1.0, FLAT)
    truth = exact_pairs(v, labels, 1.0)
    assert pair_set(result) == pair_set(truth)
    assert pair_set(result) == brute_force(v, labels, 1.0)


# -- GPU -----------------------------------------------------------------------------------------

needs_gpu = pytest.mark.skipif(NO_GPU, reason="faiss sees no GPU (faiss.get_num_gpus() == 0)")


@needs_gpu
@settings(max_examples=10)
@given(data=clusters(), threshold=thresholds)
def test_gpu_flat_equals_brute_force(data, threshold):
    result = find_pairs(data.vectors, data.labels, threshold, IndexRules(type="flat", gpu=True))
    assert result.info["device"] == "gpu"
    assert_matches_brute_force(result, data.vectors, data.labels, threshold)


@needs_gpu
@settings(max_examples=10)
@given(data=crowded_clusters(), threshold=st.floats(0.8, 0.95), nlist=st.integers(1, 4))
def test_gpu_exhaustive_ivf_equals_brute_force(data, threshold, nlist):
    result = find_pairs(data.vectors, data.labels, threshold, exhaustive_ivf(nlist, gpu=True))
    assert result.info["device"] == "gpu"
    assert_matches_brute_force(result, data.vectors, data.labels, threshold)


@needs_gpu
def test_gpu_widening_k_beyond_the_largest_k_falls_back_exactly():
    # a crowd larger than GPU_K_MAX: every frame has more neighbours above the radius than the
    # widest k-NN search returns, so the CPU range-search fallback has to produce them
    from dataset_checks.search import GPU_K_MAX

    data = build_clusters(seed=5, dim=32, sizes=[4, 4], intra=0.6, crowd_sizes=[GPU_K_MAX + 200], plants=[(0, 0, 0.05)])
    result = find_pairs(data.vectors, data.labels, 0.9, IndexRules(type="flat", gpu=True))
    assert result.info.get("cpu_fallback_queries", 0) > 0
    assert_matches_brute_force(result, data.vectors, data.labels, 0.9)


def test_gpu_required_without_gpu_is_an_error():
    if not NO_GPU:
        pytest.skip("a GPU is present")
    x = np.eye(4, dtype=np.float32)
    with pytest.raises(RuntimeError, match="no GPU"):
        find_pairs(x, np.arange(4), 0.5, IndexRules(type="flat", gpu=True))


# -- the list-major IVF scan is IndexIVFFlat.range_search, run list by list ------------------------


def _trained_ivf(x: np.ndarray, nlist: int):
    quantizer = faiss.IndexFlatIP(x.shape[1])
    index = faiss.IndexIVFFlat(quantizer, x.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(x)
    index.add(x)
    return index


@settings(max_examples=20)
@given(data=clusters(max_dim=32, min_folders=10, max_folders=16, max_size=14), threshold=thresholds,
       nlist=st.integers(2, 8), nprobe=st.integers(1, 3))
def test_list_scan_returns_what_faiss_range_search_returns(data, threshold, nlist, nprobe):
    from dataset_checks.search import _cpu_range, _list_scan

    x = data.vectors
    index = _trained_ivf(x, min(nlist, max(1, len(x) // 39)))
    index.nprobe = min(nprobe, index.nlist)
    q1, n1, d1 = _list_scan(faiss, index, threshold)(x)
    q2, n2, d2 = _cpu_range(index, threshold)(x)
    got1 = dict(zip(zip(q1.tolist(), n1.tolist()), d1.tolist()))
    got2 = dict(zip(zip(q2.tolist(), n2.tolist()), d2.tolist()))
    assert len(got1) == len(q1), "a candidate was returned twice"
    # float32 sums in another order: only a candidate within rounding of the radius may differ
    for key in got1.keys() ^ got2.keys():
        score = got1.get(key, got2.get(key))
        assert abs(score - threshold) < 1e-5, f"{key} ({score}) found by one scan only"
    for key in got1.keys() & got2.keys():
        assert abs(got1[key] - got2[key]) < 1e-5


@settings(max_examples=15)
@given(data=clusters(max_dim=32, min_folders=10, max_folders=16, max_size=14), threshold=thresholds,
       nlist=st.integers(2, 8), nprobe=st.integers(1, 3))
def test_find_pairs_same_with_list_scan_and_faiss_scan(data, threshold, nlist, nprobe):
    rules = IndexRules(type="ivf", nlist=nlist, nprobe=nprobe, gpu=False)
    lists = find_pairs(data.vectors, data.labels, threshold, rules, ivf_scan="lists")
    plain = find_pairs(data.vectors, data.labels, threshold, replace(rules, scan="faiss"))  # rules.yaml index.scan
    assert lists.info.get("scan") == "lists" and "scan" not in plain.info
    np.testing.assert_array_equal(lists.i, plain.i)
    np.testing.assert_array_equal(lists.j, plain.j)
    np.testing.assert_array_equal(lists.sim, plain.sim)


def test_list_scan_splits_a_crowded_list(monkeypatch):
    # one list probed by more queries than one product may hold: results must not change
    import dataset_checks.search as search

    data = build_clusters(seed=5, dim=16, sizes=[30] * 12, intra=0.7, crowd_sizes=[120], plants=[(0, 5, 0.1)])
    rules = IndexRules(type="ivf", nlist=4, nprobe=2, gpu=False)
    whole = find_pairs(data.vectors, data.labels, 0.8, rules)
    split = find_pairs(data.vectors, data.labels, 0.8, rules, tuning=search.SearchTuning(scan_cells=7))
    assert pair_set(whole) == pair_set(split) and len(whole) > 0
