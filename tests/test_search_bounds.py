"""Provable bounds (dataset_checks/backends/bounds.py): a cap that says "skip" never hides a vector
at or above the radius; the scan through them finds exactly what the plain scan finds; `certify`
makes the IVF search equal brute force; and the certified share is reported.

The caps are attacked with the cases that break careless bounds: duplicates (radius 0, arccos
at 1), antipodal rows (a mean of zero), a member placed exactly on the cap's edge toward the
query with the radius set to its very product, one-member and huge caps, thresholds near 1 and
far below 0.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import faiss
from dataset_checks.backends import SearchTuning
from dataset_checks.backends import bounds as B
from dataset_checks.backends.ivf import IVFBackend
from dataset_checks.rules import IndexRules, load_rules
from dataset_checks.search import RADIUS_MARGIN, exact_pairs, find_pairs
from helpers import brute_force, pair_set
from strategies import build_clusters, clusters, crowded_clusters, thresholds
from test_search import assert_matches_brute_force

# folder caps in every list, however small the test (production skips lists where they cannot pay)
CAPS_ALWAYS = SearchTuning(cap_min=2, cap_min_saving=0)
NO_BOUNDS = SearchTuning(list_bounds=False, folder_caps=False)


def unit32(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


# -- the cap inequality itself -------------------------------------------------------------------


@st.composite
def cap_cases(draw):
    """Members of a few groups plus queries aimed at them, in adversarial shapes."""
    dim = draw(st.integers(2, 48))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rows, groups = [], []
    for g in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["cluster", "duplicates", "antipodal", "spread", "single", "huge"]))
        centre = rng.standard_normal(dim)
        if kind == "cluster":
            m = rng.standard_normal((draw(st.integers(2, 12)), dim)) * draw(st.floats(1e-4, 2.0)) / math.sqrt(dim)
            members = centre / np.linalg.norm(centre) + m
        elif kind == "duplicates":
            members = np.repeat(centre[None, :], draw(st.integers(2, 8)), axis=0)
        elif kind == "antipodal":
            members = np.stack([centre, -centre] * draw(st.integers(1, 3)))
        elif kind == "spread":
            members = rng.standard_normal((draw(st.integers(2, 10)), dim))
        elif kind == "single":
            members = centre[None, :]
        else:  # one big tight group with an outlier or two
            members = centre / np.linalg.norm(centre) + 0.05 * rng.standard_normal((200, dim)) / math.sqrt(dim)
            members[: draw(st.integers(0, 2))] = rng.standard_normal(dim)
        rows.append(unit32(members))
        groups += [g] * len(members)
    x = np.concatenate(rows)
    # queries: random, the members themselves (product ~1), near-members, antipodes
    q = [unit32(rng.standard_normal((8, dim))), x[rng.integers(0, len(x), 4)], -x[rng.integers(0, len(x), 2)],
         unit32(x[rng.integers(0, len(x), 4)] + 0.01 * rng.standard_normal((4, dim)))]
    radius = draw(st.one_of(st.floats(-1.0, 1.0), st.sampled_from([1.0 - 1e-4, 0.9999999, -0.9999, 0.0])))
    return x, np.array(groups), np.concatenate(q), radius, draw(st.sampled_from([1, 2, 3])), draw(st.sampled_from([0.0, 1.3]))


@settings(max_examples=200)
@given(case=cap_cases())
def test_a_skipped_cap_holds_nothing_at_or_above_the_radius(case):
    x, groups, q, radius, min_size, peel = case
    norms = B.NormRange.of(np.concatenate([x, q]))
    caps = B.build_caps(x, np.arange(len(x)), groups, radius, norms, min_size=min_size, peel=peel)
    # every row is in exactly one cap or loose
    assert sorted(np.concatenate([caps.rows, caps.loose]).tolist()) == list(range(len(x)))
    if not len(caps.cutoff):
        return
    x64, q64 = x.astype(np.float64), q.astype(np.float64)
    for products in (q @ caps.centres.T, np.einsum("qd,gd->qg", q, caps.centres)):  # two summation orders
        skip = products < caps.cutoff[None, :]
        for g in range(len(caps.cutoff)):
            members = caps.rows[caps.ptr[g] : caps.ptr[g + 1]]
            best = (q64[skip[:, g]] @ x64[members].T).max(axis=1, initial=-np.inf)
            assert np.all(best < radius), f"cap {g} skipped for a query whose product {best.max()} >= {radius}"


@settings(max_examples=300)
@given(dim=st.integers(2, 256), theta=st.floats(0.0, math.pi), phi=st.floats(0.0, math.pi),
       seed=st.integers(0, 2**32 - 1), extra=st.integers(0, 5))
def test_the_member_on_the_edge_toward_the_query_is_never_skipped(dim, theta, phi, seed, extra):
    # the inequality's worst case: a member at angle theta from the centre, in the plane of the
    # centre and the query, on the query's side; the radius is set to exactly its product
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((dim, 2)))
    c, u = basis[:, 0], basis[:, 1]
    q = unit32(math.cos(phi) * c + math.sin(phi) * u)
    edge = unit32(math.cos(min(theta, phi)) * c + math.sin(min(theta, phi)) * u)
    others = unit32(c + rng.uniform(0, 1) * rng.standard_normal((extra, dim)) / math.sqrt(dim)) if extra else edge[None, :][:0]
    members = np.concatenate([edge[None, :], others])
    c32 = unit32(c)[None, :]
    norms = B.NormRange.of(np.concatenate([members, q[None, :], c32]))
    c_lo, c_hi = B.centre_norms(c32)
    cos = np.einsum("ij,ij->i", members, np.repeat(c32, len(members), axis=0))
    cos_lo = B.cosine_lower_from_float32(cos, c_lo[[0] * len(members)], c_hi[[0] * len(members)], norms).min()
    radius = float((members.astype(np.float64) @ q.astype(np.float64)).max())
    cut = B.cutoffs(np.array([cos_lo]), c_lo, c_hi, radius, norms)
    assert not (q[None, :] @ c32.T)[0, 0] < cut[0]


def test_duplicates_and_antipodes_give_no_false_cap():
    v = unit32(np.arange(1, 9, dtype=np.float64))
    x = np.stack([v, v, v, -v, -v, -v])
    groups = np.array([0, 0, 0, 0, 0, 0])  # one group whose mean is exactly zero
    norms = B.NormRange.of(x)
    caps = B.build_caps(x, np.arange(6), groups, 0.5, norms, min_size=2, peel=0.0)
    assert len(caps.cutoff) == 0 and len(caps.loose) == 6  # no direction: scored one by one
    caps = B.build_caps(x, np.arange(6), np.array([0, 0, 0, 1, 1, 1]), 1.0 - 1e-4, norms, min_size=2)
    assert len(caps.cutoff) == 2
    sims = x @ caps.centres.T
    # each copy of v reaches its own cap's duplicates (product 1): never skipped
    assert np.all(sims[:3, 0] >= caps.cutoff[0]) and np.all(sims[3:, 1] >= caps.cutoff[1])
    # ... and the antipodes are skipped
    assert np.all(sims[3:, 0] < caps.cutoff[0]) and np.all(sims[:3, 1] < caps.cutoff[1])


def test_a_radius_at_or_below_minus_one_is_never_skipped():
    x = unit32(np.random.default_rng(0).standard_normal((10, 6)))
    norms = B.NormRange.of(x)
    caps = B.build_caps(x, np.arange(10), np.zeros(10, int), -1.0, norms, min_size=2, peel=0.0)
    assert len(caps.cutoff) == 0  # a cutoff of -inf is no use: the rows stay loose


# -- whole lists: the build's own products ------------------------------------------------------


def trained_ivf(x: np.ndarray, nlist: int, k: int):
    quantizer = faiss.IndexFlatIP(x.shape[1])
    index = faiss.IndexIVFFlat(quantizer, x.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = 1
    index.train(x)
    near, dist = [np.asarray(a) for a in index.quantizer.search(x, k)[::-1]]
    return index, near.astype(np.int32), dist.astype(np.float32)


@settings(max_examples=30)
@given(data=clusters(min_dim=2, max_dim=16, min_folders=8, max_folders=16, max_size=12),
       threshold=st.floats(0.3, 0.999), nlist=st.integers(2, 8), k=st.integers(1, 8), nprobe=st.integers(1, 8))
def test_list_caps_prove_only_what_is_true(data, threshold, nlist, k, nprobe):
    x = data.vectors
    nlist = min(nlist, max(1, len(x) // 39))
    k, nprobe = min(k, nlist), min(nprobe, k)
    index, near, dist = trained_ivf(x, nlist, k)
    radius = threshold - RADIUS_MARGIN
    lb = B.ListBounds(index.quantizer.reconstruct_n(0, nlist), near, dist, radius, B.NormRange.of(x))
    assign = near[:, 0]
    sims = x.astype(np.float64) @ x.astype(np.float64).T
    # a probe proven empty holds nothing at or above the radius
    skip = lb.skipped(near, dist)
    for r, j in zip(*np.nonzero(skip)):
        assert np.all(sims[r, assign == near[r, j]] < radius)
    # a certified query's every neighbour at or above the radius lies in a list it probes
    proven = lb.proven_unprobed(nprobe)
    for r in np.flatnonzero(proven >= nlist - nprobe):
        hit_lists = set(assign[(sims[r] >= radius) & (np.arange(len(x)) != r)].tolist())
        assert hit_lists <= set(near[r, :nprobe].tolist())
    cert = lb.certificate(nprobe)
    assert 0.0 <= cert["queries"] <= 1.0 and 0.0 <= cert["unprobed_proven"] <= 1.0


def test_list_caps_certify_well_separated_lists():
    # 4-d, tight and far apart clusters at a high threshold: the whole-list caps prove most
    # unprobed lists empty, and the certificate says so
    data = build_clusters(seed=4, dim=4, sizes=[60] * 16, intra=0.995, crowd_sizes=[], plants=[])
    rules = IndexRules(type="ivf", nlist=16, nprobe=1, gpu=False)
    result = find_pairs(data.vectors, data.labels, 0.99, rules)
    cert = result.info["certified"]
    assert cert["queries"] > 0.5 and cert["unprobed_proven"] > 0.5
    assert pair_set(result) == brute_force(data.vectors, data.labels, 0.99)


# -- the scan through the caps finds what the plain scan finds ---------------------------------


@settings(max_examples=25)
@given(data=st.one_of(clusters(max_dim=32, min_folders=6, max_folders=12, max_size=14), crowded_clusters()),
       threshold=thresholds, nlist=st.integers(2, 6), nprobe=st.integers(1, 3))
def test_scan_with_bounds_equals_scan_without(data, threshold, nlist, nprobe):
    rules = IndexRules(type="ivf", nlist=nlist, nprobe=nprobe, gpu=False)
    plain = find_pairs(data.vectors, data.labels, threshold, rules, tuning=NO_BOUNDS)
    saved = B.GEMM_CALL_CELLS
    try:
        for call_cells in (0, saved, 10**12):  # needed caps scored cap by cap, either way, as one product
            B.GEMM_CALL_CELLS = call_cells
            bounded = find_pairs(data.vectors, data.labels, threshold, rules, tuning=CAPS_ALWAYS)
            np.testing.assert_array_equal(plain.i, bounded.i)
            np.testing.assert_array_equal(plain.j, bounded.j)
            np.testing.assert_array_equal(plain.sim, bounded.sim)
    finally:
        B.GEMM_CALL_CELLS = saved


def test_folder_caps_cut_the_scored_cells_on_clustered_data():
    sizes = [40] * 60
    data = build_clusters(seed=9, dim=64, sizes=sizes, intra=0.7, crowd_sizes=[300], plants=[(0, 3, 0.1)] * 5)
    rules = IndexRules(type="ivf", nlist=8, nprobe=2, gpu=False)
    plain = find_pairs(data.vectors, data.labels, 0.85, rules, tuning=NO_BOUNDS)
    bounded = find_pairs(data.vectors, data.labels, 0.85, rules, tuning=SearchTuning(cap_min_saving=0))
    assert pair_set(plain) == pair_set(bounded) and len(plain) > 0
    assert bounded.info["scored_cells"] < plain.info["scored_cells"] / 3
    cert = bounded.info["certified"]
    assert cert["folder_cap_probes_skipped"] > 0.5 * cert["folder_cap_probes"]


# -- certify: the IVF search equals brute force -------------------------------------------------


extreme_thresholds = st.one_of(thresholds, st.sampled_from([1.0, 0.99999, 0.999, 0.1, -0.3]))


@settings(max_examples=30)
@given(data=st.one_of(clusters(max_dim=32, min_folders=6, max_folders=14, max_size=14), crowded_clusters()),
       threshold=extreme_thresholds, nlist=st.integers(2, 8), caps=st.booleans())
def test_certify_equals_brute_force(data, threshold, nlist, caps):
    rules = IndexRules(type="ivf", nlist=nlist, nprobe=1, gpu=False, certify=True)
    saved = B.GEMM_CALL_CELLS
    try:
        B.GEMM_CALL_CELLS = 0 if caps else 10**12  # the certify pass's two ways of scoring needed caps
        result = find_pairs(data.vectors, data.labels, threshold, rules, tuning=CAPS_ALWAYS if caps else NO_BOUNDS)
    finally:
        B.GEMM_CALL_CELLS = saved
    assert_matches_brute_force(result, data.vectors, data.labels, threshold)
    cert = result.info["certified"]
    assert cert["exact"] is True
    assert cert["how"] in ("certify", "every list probed", "list caps")


@pytest.mark.parametrize("scan", ["lists", "faiss"])
def test_certify_finds_what_a_starved_nprobe_misses(scan):
    rng = np.random.default_rng(3)
    sizes = rng.integers(4, 28, 200).tolist()
    plants = [(int(a), int(b), float(nz)) for a, b, nz in zip(rng.integers(0, 999, 60), rng.integers(0, 999, 60),
                                                              rng.uniform(0.0, 0.8, 60))]
    data = build_clusters(seed=11, dim=32, sizes=sizes, intra=0.5, crowd_sizes=[60, 80], plants=plants)
    rules = IndexRules(type="ivf", nlist=32, nprobe=1, gpu=False, scan=scan)
    truth = exact_pairs(data.vectors, data.labels, 0.6)
    starved = find_pairs(data.vectors, data.labels, 0.6, rules)
    assert len(starved) < len(truth), "the case does not starve the probes"
    assert starved.info["certified"]["exact"] is False
    certified = find_pairs(data.vectors, data.labels, 0.6, replace(rules, certify=True))
    assert pair_set(certified) == pair_set(truth)
    np.testing.assert_array_equal(certified.sim, truth.sim)
    info = certified.info["certified"]
    assert info["exact"] is True and info["how"] == "certify"
    assert info["certify"]["rows"] == len(data.vectors) and info["certify"]["cells"] > 0


def test_certify_with_duplicates_antipodes_and_a_threshold_of_one():
    rng = np.random.default_rng(5)
    v = unit32(rng.standard_normal(16))
    base = build_clusters(seed=2, dim=16, sizes=[30] * 12, intra=0.6, crowd_sizes=[], plants=[]).vectors
    x = np.concatenate([np.repeat(v[None, :], 50, axis=0), -np.repeat(v[None, :], 20, axis=0), base, v[None, :], -v[None, :]])
    labels = np.concatenate([np.zeros(50, int), np.ones(20, int), 2 + np.repeat(np.arange(12), 30), [20, 21]])
    for threshold in (1.0, 0.999, 0.5, -0.5):
        rules = IndexRules(type="ivf", nlist=4, nprobe=1, gpu=False, certify=True)
        result = find_pairs(x, labels, threshold, rules, tuning=CAPS_ALWAYS, max_pairs=10**7)
        assert pair_set(result) == pair_set(exact_pairs(x, labels, threshold)), threshold
        assert result.info["certified"]["exact"]


@pytest.mark.parametrize("scan", ["lists", "faiss"])
def test_certify_over_two_halves_of_the_range_equals_the_whole(scan):
    from dataset_checks import search

    data = build_clusters(seed=8, dim=24, sizes=[20] * 40, intra=0.5, crowd_sizes=[100], plants=[(0, 1, 0.3)] * 4)
    x, labels, threshold = data.vectors, data.labels, 0.55
    rules = IndexRules(type="ivf", nlist=16, nprobe=1, gpu=False, scan=scan, certify=True)
    built = IVFBackend(rules, 16, scan=scan).build(x, labels, threshold - RADIUS_MARGIN)
    built.calibrate()
    collector = search._Collector(x, labels, threshold, 10**7)
    mid = built.units // 2
    built.candidates(collector.add, 0, mid)
    assert built.info["certified"]["exact"] is False  # half the rows certified so far
    built.candidates(collector.add, mid, built.units)
    assert built.info["certified"]["exact"] is True
    assert pair_set(collector.result()) == brute_force(x, labels, threshold)


# -- reporting -----------------------------------------------------------------------------------


def test_certified_share_is_reported():
    data = build_clusters(seed=1, dim=16, sizes=[12] * 40, intra=0.6, crowd_sizes=[50], plants=[(0, 1, 0.1)])
    x, labels = data.vectors, data.labels
    flat = find_pairs(x, labels, 0.8, IndexRules(type="flat", gpu=False))
    assert flat.info["certified"]["exact"] is True
    every = find_pairs(x, labels, 0.8, IndexRules(type="ivf", nlist=8, nprobe=8, gpu=False))
    assert every.info["certified"] == {**every.info["certified"], "exact": True, "how": "every list probed"}
    some = find_pairs(x, labels, 0.8, IndexRules(type="ivf", nlist=8, nprobe=1, gpu=False))
    cert = some.info["certified"]
    assert set(cert) >= {"exact", "how", "queries", "unprobed_list_probes", "unprobed_proven"}
    assert 0.0 <= cert["queries"] <= 1.0 and 0.0 <= cert["unprobed_proven"] <= 1.0
    assert cert["unprobed_list_probes"] == len(x) * 7
    assert cert["exact"] == (cert["queries"] == 1.0)
    faiss_scan = find_pairs(x, labels, 0.8, IndexRules(type="ivf", nlist=8, nprobe=1, gpu=False, scan="faiss"))
    assert faiss_scan.info["certified"]["queries"] is None and faiss_scan.info["certified"]["exact"] is False


def test_rules_certify(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("index:\n  certify: true\n", encoding="utf-8")
    assert load_rules(path).index.certify is True
    assert IndexRules().certify is False
    path.write_text("index:\n  certify: maybe\n", encoding="utf-8")
    with pytest.raises(Exception, match="index.certify"):
        load_rules(path)
