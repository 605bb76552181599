"""calibrate_threshold on synthetic data whose different-identity tail is known.

Independent uniform unit vectors in d dimensions have cosines with density proportional to
(1 - c^2)^((d-3)/2), so the exact false-match rate at any threshold is a 1-D integral; with
random folder labels every cross-folder pair is a "different person" pair. The tolerances were
set from the spread over 40-100 seeds (see each test) with a wide margin, so they hold for any seed.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataset_checks.threshold import (
    ThresholdChoice,
    calibrate_threshold,
    cross_pair_count,
    sample_cross_similarities,
)

D = 24


def exact_rate(t: float, d: int = D) -> float:
    """P(cos >= t) for two independent uniform unit vectors in R^d."""
    grid = np.linspace(-1.0, 1.0, 400_001)
    dens = np.power(np.clip(1.0 - grid**2, 0.0, None), (d - 3) / 2)
    cdf = np.concatenate([[0.0], np.cumsum((dens[1:] + dens[:-1]) / 2)])
    return float(1.0 - np.interp(t, grid, cdf / cdf[-1]))


def iid_dataset(seed: int, n: int, folders: int, d: int = D) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = rng.integers(0, folders, size=n)
    return x.astype(np.float32), labels


def brute_count(x: np.ndarray, labels: np.ndarray, t: float) -> int:
    x = x.astype(np.float64)
    total = 0
    for s in range(0, len(x), 1024):
        sims = x[s : s + 1024] @ x.T
        r, c = np.nonzero(sims >= t)
        r = r + s
        total += int(np.count_nonzero((r < c) & (labels[r] != labels[c])))
    return total


SEEDS = [0, 1, 2, 12345, 2**31 - 1]


@pytest.mark.parametrize("seed", SEEDS)
def test_expected_pairs_match_the_true_tail(seed):
    # 6,000 vectors: 1.8e7 cross-folder pairs, so a budget of 1 means a rate of 5.5e-8, ten times
    # rarer than anything the 2M-pair sample sees: the fitted tail has to extrapolate. Over 100
    # seeds the true expected count at the chosen threshold ranged 0.26-20 (median 2.3: the
    # fit errs towards lighter tails on this distribution); the bounds leave a wide margin on
    # both sides and still fail a fit that is off by two orders of magnitude.
    x, labels = iid_dataset(seed, 6_000, 600)
    choice = calibrate_threshold(x, labels, floor=0.3, chance_pairs=1.0, ceiling=0.99, seed=seed)
    assert choice.source == "data", choice.describe()
    assert 0.9 < choice.expected_pairs <= 1.0 + 1e-9  # the budget, at the value rounded up to 4 decimals
    true_pairs = exact_rate(choice.value) * choice.cross_pairs
    assert 1 / 40 < true_pairs < 100, (choice.describe(), true_pairs)


@pytest.mark.parametrize("seed", SEEDS)
def test_true_tail_near_the_sample_edge(seed):
    # 20,000 vectors, budget 100: a rate of 5e-7, the edge of the 2M-pair sample. Over 40 seeds
    # true/budget ranged 0.30-4.4.
    x, labels = iid_dataset(seed, 20_000, 2_000)
    choice = calibrate_threshold(x, labels, floor=0.3, chance_pairs=100.0, ceiling=0.99, seed=seed)
    assert choice.source == "data"
    true_pairs = exact_rate(choice.value) * choice.cross_pairs
    assert 100 / 8 < true_pairs < 100 * 12, (choice.describe(), true_pairs)


@pytest.mark.parametrize("seed", SEEDS)
def test_brute_force_count_at_chosen_threshold(seed):
    # 4,000 vectors (8M row pairs, so the 2M-pair sampler is used) with uneven folders; a
    # budget of 200 makes the brute-force count large enough (Poisson sd ~14) to compare
    x, labels = iid_dataset(seed, 4_000, 300)
    labels[:800] = 0  # one crowded folder: a fifth of the rows
    choice = calibrate_threshold(x, labels, floor=0.2, chance_pairs=200.0, ceiling=0.99, seed=seed)
    assert choice.source == "data"
    assert choice.cross_pairs == brute_count(x, labels, -2.0)
    count = brute_count(x, labels, choice.value)
    # over 100 seeds count/200 ranged 0.73-1.66
    assert 200 / 2.5 < count < 200 * 2.5, (choice.describe(), count)


def test_floor_is_respected_when_the_budget_allows_lower():
    x, labels = iid_dataset(3, 20_000, 2_000)
    choice = calibrate_threshold(x, labels, floor=0.9, chance_pairs=1.0)
    assert choice.value == 0.9 and choice.source == "floor"
    assert choice.reason.startswith("floor: model default 0.9")
    assert choice.expected_pairs <= 1.0
    assert choice.budget_threshold < 0.9


def test_ceiling_caps_and_copies_still_fail():
    x, labels = iid_dataset(4, 20_000, 2_000)
    # a photo filed in two folders: rows copied (with float noise) into other folders
    rng = np.random.default_rng(4)
    src = rng.choice(10_000, 200, replace=False)
    x[10_000:10_200] = x[src] + rng.normal(0, 1e-3, (200, D)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels[10_000:10_200] = (labels[src] + 1) % 2_000
    choice = calibrate_threshold(x, labels, floor=0.3, chance_pairs=1e-6, ceiling=0.6)
    assert choice.value == 0.6 and choice.source == "ceiling"
    assert choice.budget_threshold > 0.6
    copies = np.einsum("ij,ij->i", x[src].astype(np.float64), x[10_000:10_200].astype(np.float64))
    assert np.all(copies >= choice.value)
    # the planted matches move the data-driven choice by no more than seed noise does
    clean, clean_labels = iid_dataset(4, 20_000, 2_000)
    a = calibrate_threshold(x, labels, floor=0.3, ceiling=0.99)
    b = calibrate_threshold(clean, clean_labels, floor=0.3, ceiling=0.99)
    assert abs(a.value - b.value) < 0.03
    assert np.all(copies >= a.value)


def test_floor_above_ceiling_means_floor():
    x, labels = iid_dataset(5, 3_000, 300)
    choice = calibrate_threshold(x, labels, floor=0.99, ceiling=0.98)
    assert choice.value == 0.99


@pytest.mark.parametrize("n,folders", [(0, 1), (1, 1), (50, 1), (40, 5), (140, 3)])
def test_tiny_datasets_fall_back_to_the_floor(n, folders):
    x, labels = iid_dataset(6, n, folders)
    choice = calibrate_threshold(x, labels, floor=0.95)
    assert choice.value == 0.95 and choice.source == "fallback"
    assert choice.reason == "too few cross-folder pairs to estimate: floor used"
    assert choice.cross_pairs == brute_count(x, labels, -2.0)
    assert choice.rate is None and choice.expected_pairs is None


def test_small_dataset_uses_every_pair():
    # 1,500 vectors: 1.1M row pairs, below the sample size, so the "sample" is all of them
    x, labels = iid_dataset(7, 1_500, 150)
    sims = sample_cross_similarities(x, labels, sample_pairs=2_000_000)
    assert sims.size == cross_pair_count(labels)
    choice = calibrate_threshold(x, labels, floor=0.1, chance_pairs=20.0, ceiling=0.99)
    assert choice.cross_pairs * 0.99 <= choice.sample_size <= choice.cross_pairs  # every pair, less tail repeats of one identity pair
    assert choice.source == "data"


def test_sample_is_uniform_over_pairs_not_rows():
    # the crowded folder's rows sit near one direction; its cross pairs with everyone else have
    # cosine ~0.5, the rest ~0. Uniform over cross pairs, the mean is their pair-weighted mix;
    # a sampler that was uniform over rows or folders would land far from it.
    rng = np.random.default_rng(8)
    n, d = 6_000, 16
    x = rng.standard_normal((n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = rng.integers(1, 400, size=n)
    labels[:3_000] = 0
    centre = np.zeros(d)
    centre[0] = 1.0
    x[:3_000] = centre + 0.05 * rng.standard_normal((3_000, d))
    x[3_000:, 0] = np.abs(x[3_000:, 0]) + 0.5
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    xf = x.astype(np.float32)
    total, count = 0.0, 0
    for s in range(0, n, 1024):
        sims = xf[s : s + 1024].astype(np.float64) @ xf.T.astype(np.float64)
        r, c = np.nonzero(np.ones_like(sims, dtype=bool))
        r = r + s
        keep = (r < c) & (labels[r] != labels[c])
        total += float(sims[r[keep] - s, c[keep]].sum())
        count += int(keep.sum())
    exact = total / count
    sample = sample_cross_similarities(xf, labels, sample_pairs=400_000, seed=8)
    assert count == cross_pair_count(labels)
    # the sample's standard error is ~1e-3; folder-weighted or row-weighted means are 0.1+ away
    assert abs(sample.mean() - exact) < 0.01, (sample.mean(), exact)


@settings(max_examples=50, deadline=None)
@given(sizes=st.lists(st.integers(0, 30), min_size=0, max_size=12))
def test_cross_pair_count(sizes):
    labels = np.repeat(np.arange(len(sizes)), sizes)
    n = labels.size
    same = sum(s * (s - 1) // 2 for s in sizes)
    assert cross_pair_count(labels) == n * (n - 1) // 2 - same
    assert cross_pair_count(labels * 7 - 3) == n * (n - 1) // 2 - same  # any label values


def test_report_forms():
    x, labels = iid_dataset(9, 20_000, 2_000)
    choice = calibrate_threshold(x, labels, floor=0.3)
    assert isinstance(choice, ThresholdChoice)
    d = json.loads(json.dumps(choice.as_dict()))
    assert d["value"] == choice.value and d["tail"]["xi"] == choice.tail.xi
    assert d["cross_pairs"] == choice.cross_pairs
    line = choice.describe()
    assert "\n" not in line and f"{choice.value:.4f}" in line
    with pytest.raises(AttributeError):  # dataclasses.FrozenInstanceError
        choice.value = 0.5  # frozen
    tiny = calibrate_threshold(*iid_dataset(9, 10, 2), floor=0.95)
    assert json.loads(json.dumps(tiny.as_dict()))["tail"] is None
    assert "floor used" in tiny.describe()
    assert math.isfinite(choice.seconds)


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_a_copied_video_frame_is_not_taken_for_a_heavy_tail(seed):
    """A frame of a crowded folder copied into another folder gives hundreds of true pairs at
    once (0.25% of the demo's cross-folder pairs); they must not push the threshold up to the
    ceiling, or the gate would stop failing the very copy that caused them."""
    x, labels = iid_dataset(seed, 3000, 300)
    rng = np.random.default_rng(seed)
    frame = x[0] / np.linalg.norm(x[0])
    crowd = frame + 0.05 / np.sqrt(D) * rng.standard_normal((300, D))
    crowd /= np.linalg.norm(crowd, axis=1, keepdims=True)
    x = np.vstack([x, crowd.astype(np.float32)])
    labels = np.concatenate([labels, np.full(300, 300)])  # row 0 (folder labels[0]) is the copied frame
    plain = calibrate_threshold(x[:3000], labels[:3000], floor=0.3, ceiling=0.98)
    choice = calibrate_threshold(x, labels, floor=0.3, ceiling=0.98)
    assert choice.source != "ceiling", choice.describe()
    assert choice.value < plain.value + 0.05, (choice.describe(), plain.describe())
    sims = crowd @ frame
    assert (sims >= choice.value).all()  # the copy still fails
