"""`threshold: auto` from the data: the similarity above which chance pairs become rare.

A fixed model default fails too much on a large dataset: the number of different-person pairs
grows with the square of the dataset, so a false-match rate that is harmless for a thousand
faces (2e-5 at dlib's 0.95) fails hundreds of look-alike identities on LFW's 87 million
cross-folder pairs. Here the threshold is chosen so that the *expected number* of chance pairs
over the whole dataset stays below a budget:

1. Sample cross-folder pairs uniformly. Almost all of them are different people, so their
   cosine distribution is the different-identity distribution (a few real label errors in the
   sample are tolerated by the robust fit below).
2. Fit the upper tail by peaks-over-threshold: exceedances of a high sample quantile `u` follow
   a Generalised Pareto distribution (Pickands-Balkema-de Haan). Cosine is bounded by 1, so the
   shape is usually negative (a finite endpoint).
3. rate(t) = P(cos >= t) and expected chance pairs E(t) = rate(t) * total cross-folder pairs;
   the threshold is the smallest t >= floor with E(t) <= budget, capped at `ceiling` so that
   the same photo filed twice (cosine ~1.0) always fails.

numpy only; the cost is a fixed number of small BLAS products (independent of the dataset's
size beyond drawing row indices), well under a second.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Literal, overload

import numpy as np
from numpy.typing import NDArray

from .memory import Budget, gather

DEFAULT_THRESHOLD = 0.85  # a model without a default of its own (rules `threshold`, the floor of `auto`)

# Defaults (rules.yaml `calibration:`); the measurements behind them are in benchmarks/lfw_threshold.py.
CHANCE_PAIRS = 1.0  # expected different-person pairs at/above the threshold, whole dataset
# The same photo filed twice must always fail. On LFW (dlib) such pairs scored 0.984-0.998 raw
# (LFW's per-folder alignment crops the same photo differently), so raw vectors get 0.98; after
# centring the same pairs scored 0.932-0.991, so centred vectors get 0.90.
CEILING = 0.98
CEILING_CENTRED = 0.90
SAMPLE_PAIRS = 2_000_000

# Rows per side of a sampled block (a 128 x 128 product of random rows). Pairs of one block
# share rows, and a few "generic" faces that resemble everyone then weigh on the tail: on LFW the
# fitted threshold's spread over seeds was 0.0045 with 512-row square blocks, ~0.003 with 128
# (2M pairs either way); smaller blocks gained nothing more and batched products below 128 rows
# got slow (0.3-0.5 s instead of 0.1 s for 2M pairs at d=512).
BLOCK_ROWS = 128
MAX_BLOCK_FACTOR = 4  # a dataset that is mostly one folder gets at most 4x the nominal blocks
MIN_SAMPLE = 10_000  # fewer cross-folder pairs than this: no tail to speak of
MIN_EXCEED = 50
MAX_EXCEED = 20_000
EXCEED_FRACTION = 0.0025  # u = the sample's 99.75th percentile (top 5,000 of 2M)
# Share of the top exceedances left out of the fit: real label errors (copies, one person under
# two names) sit at the very top of the sample and must not drag the fitted tail up.
TRIM = 0.01
XI_GRID = np.linspace(-1.5, 0.5, 401)


@dataclass(frozen=True)
class TailFit:
    """Generalised Pareto fit to sample exceedances of `u`: P(cos >= u + y | cos >= u) =
    (1 + xi*y/sigma)^(-1/xi); `p_u` is the sample's share at or above `u`."""

    u: float
    xi: float
    sigma: float
    p_u: float
    exceedances: int
    trimmed: int
    method: str = "quantile least squares, top trimmed"

    def rate(self, t: float) -> float:
        y = t - self.u
        if y <= 0:
            return self.p_u
        return self.p_u * _gpd_survival(y, self.xi, self.sigma)

    def endpoint(self) -> float:
        return self.u - self.sigma / self.xi if self.xi < 0 else math.inf


@dataclass(frozen=True)
class ThresholdChoice:
    value: float
    floor: float
    ceiling: float
    source: str  # "data" | "floor" | "ceiling" | "fallback"
    reason: str
    chance_pairs_budget: float
    rate: float | None  # estimated different-identity false-match rate at `value`
    expected_pairs: float | None  # rate * cross_pairs
    cross_pairs: int  # all cross-folder pairs in the dataset
    sample_size: int  # sampled cross-folder pairs the fit used
    tail: TailFit | None = None
    seconds: float = 0.0
    # the similarity at which the budget alone would be met, before floor and ceiling
    budget_threshold: float | None = None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["tail"] = None if self.tail is None else {**asdict(self.tail), "endpoint": _finite(self.tail.endpoint())}
        return out

    def source_text(self) -> str:
        """Where the value came from, in words, without the value (header: "0.9776 (<this>)")."""
        if self.source == "fallback":
            return f"auto: {self.reason} (the model's {self.floor:g})"
        chance = (f"expected chance pairs {self.expected_pairs:.2g} of {self.cross_pairs:,} cross-folder pairs, "
                  f"false-match rate {self.rate:.2g}")
        if self.source == "floor":
            return f"auto: the model's floor {self.floor:g}, already within the budget of {self.chance_pairs_budget:g}; {chance}"
        if self.source == "ceiling":
            return f"auto: capped at {self.ceiling:g} so that copies always fail; {chance}"
        return (f"auto from the data: {chance}, budget {self.chance_pairs_budget:g}; "
                f"floor {self.floor:g}, ceiling {self.ceiling:g}")

    def describe(self) -> str:
        if self.source == "fallback":
            return f"threshold {self.value:.4f} ({self.reason})"
        return (f"threshold {self.value:.4f} ({self.source}): expected chance pairs "
                f"{self.expected_pairs:.2g} of {self.cross_pairs:,} cross-folder pairs "
                f"(rate {self.rate:.2g}, budget {self.chance_pairs_budget:g}; floor {self.floor:g}, "
                f"ceiling {self.ceiling:g})")


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


@overload
def _gpd_survival(y: float, xi: float, sigma: float) -> float: ...
@overload
def _gpd_survival(y: NDArray[np.floating[Any]], xi: float, sigma: float) -> NDArray[np.float64]: ...
def _gpd_survival(y: float | NDArray[np.floating[Any]], xi: float, sigma: float) -> float | NDArray[np.float64]:
    ys = np.asarray(y, dtype=np.float64)
    if abs(xi) < 1e-9:
        return np.exp(-ys / sigma)
    base = 1.0 + xi * ys / sigma
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        out = np.where(base > 0, np.power(np.maximum(base, 1e-300), -1.0 / xi), 0.0)
    return out if out.ndim else float(out)


@overload
def _gpd_quantile(p: float, xi: float, sigma: float) -> float: ...
@overload
def _gpd_quantile(p: NDArray[np.floating[Any]], xi: float, sigma: float) -> NDArray[np.float64]: ...
def _gpd_quantile(p: float | NDArray[np.floating[Any]], xi: float, sigma: float) -> float | NDArray[np.float64]:
    """Excess y with survival p (0 < p <= 1)."""
    ps = np.asarray(p, dtype=np.float64)
    if abs(xi) < 1e-9:
        return -sigma * np.log(ps)
    return sigma * (np.power(ps, -xi) - 1.0) / xi


def fit_gpd(excess: np.ndarray, trim: float = TRIM) -> tuple[float, float, int]:
    """(xi, sigma, trimmed) fitted to the excesses by least squares on the quantile function,
    leaving out the top `trim` share.

    Why not maximum likelihood or plain probability-weighted moments: both use every exceedance,
    so a handful of real matches at 1.0 (copies in the sample) shift the fit; the quantile fit
    over the lower 99 % of the exceedances cannot see them at all. For fixed xi the GPD quantile
    is linear in sigma, so sigma is closed-form and xi is a 1-D grid search (cheap).
    """
    y = np.sort(np.asarray(excess, dtype=np.float64))
    k = y.size
    trimmed = int(math.ceil(trim * k)) if trim > 0 else 0
    j = np.arange(1, k + 1, dtype=np.float64)
    surv = (k - j + 0.5) / k  # plotting positions (Hazen): survival of the j-th smallest
    y, surv = y[: k - trimmed], surv[: k - trimmed]
    best = (math.inf, 0.0, float(np.mean(y)) or 1e-12)
    logp = np.log(surv)
    for xi in XI_GRID:
        g = -logp if abs(xi) < 1e-9 else np.expm1(-xi * logp) / xi
        gg = float(g @ g)
        if gg <= 0:
            continue
        sigma = float(g @ y) / gg
        if sigma <= 0:
            continue
        sse = float(np.sum((y - sigma * g) ** 2))
        if sse < best[0]:
            best = (sse, float(xi), sigma)
    return best[1], best[2], trimmed


def cross_pair_count(labels: np.ndarray) -> int:
    """Unordered pairs of rows in different folders: (N^2 - sum n_i^2) / 2."""
    labels = np.asarray(labels)
    n = labels.size
    if n == 0:
        return 0
    if np.issubdtype(labels.dtype, np.integer) and labels.min() >= 0 and labels.max() < 16 * n + 1024:
        counts = np.bincount(labels)
    else:
        counts = np.unique(labels, return_counts=True)[1]
    counts = counts.astype(np.int64)
    return int((n * n - int(np.sum(counts * counts))) // 2)


@overload
def sample_cross_similarities(vectors: NDArray[Any], labels: NDArray[np.integer[Any]], sample_pairs: int = ...,
                              seed: int = ..., cross_pairs: int | None = ..., with_pairs: Literal[False] = ...,
                              *, budget: Budget | None = ...) -> NDArray[np.float64]: ...
@overload
def sample_cross_similarities(vectors: NDArray[Any], labels: NDArray[np.integer[Any]], sample_pairs: int = ...,
                              seed: int = ..., cross_pairs: int | None = ..., *, with_pairs: Literal[True],
                              budget: Budget | None = ...) -> tuple[NDArray[np.float64], NDArray[np.int64]]: ...
def sample_cross_similarities(vectors: NDArray[Any], labels: NDArray[np.integer[Any]], sample_pairs: int = SAMPLE_PAIRS,
                              seed: int = 0, cross_pairs: int | None = None, with_pairs: bool = False,
                              *, budget: Budget | None = None
                              ) -> NDArray[np.float64] | tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Cosines of cross-folder pairs drawn uniformly over all cross-folder pairs (float64).

    All pairs when the dataset has no more than `sample_pairs` row pairs. Otherwise blocks: two
    sets of BLOCK_ROWS rows drawn uniformly with replacement, every pair between the sets kept.
    Each (a, b) position then holds a given unordered pair of distinct rows with probability
    2/N^2, the same for every pair; a row paired with itself is a same-folder pair, which the
    rejection drops along with the others. Pairs of one block share rows, which costs some
    variance, not bias.

    with_pairs: also return each sampled pair's identity pair (a int64 key, order-free).
    budget: the run's memory budget, checkpointed by the scattered reads (None: none).
    """
    x = np.asarray(vectors)
    labels = np.asarray(labels)
    n = len(x)
    empty = (np.zeros(0), np.zeros(0, np.int64)) if with_pairs else np.zeros(0)
    if n < 2:
        return empty
    all_pairs = n * (n - 1) // 2
    if all_pairs <= sample_pairs:
        sims, keys = _all_pairs(x, labels)
        return (sims, keys) if with_pairs else sims
    if cross_pairs is None:
        cross_pairs = cross_pair_count(labels)
    if cross_pairs == 0:
        return empty
    span = int(labels.max()) + 1 if labels.size else 1
    rng = np.random.default_rng(seed)
    m = BLOCK_ROWS
    nominal = max(1, math.ceil(sample_pairs / (m * m)))
    # a dataset that is mostly one folder rejects most pairs: draw more blocks, within a bound
    blocks = min(nominal * MAX_BLOCK_FACTOR, max(1, math.ceil(sample_pairs / (m * m * cross_pairs / all_pairs))))
    rows = rng.integers(0, n, size=(blocks, 2, m))
    chunk = max(1, (1 << 23) // (2 * m * x.shape[1] * 4))  # ~8 MB of gathered rows at a time
    out: list[NDArray[np.float32]] = []
    key_parts: list[NDArray[np.int64]] = []
    for s in range(0, blocks, chunk):
        rr = rows[s : s + chunk]
        b = np.asarray(gather(x, rr, budget=budget), dtype=np.float32)
        gram = np.matmul(b[:, 0], np.swapaxes(b[:, 1], 1, 2))
        lab = labels[rr].astype(np.int64)
        la, lb = lab[:, 0, :, None], lab[:, 1, None, :]
        cross = la != lb
        out.append(gram[cross])
        if with_pairs:
            key_parts.append((np.minimum(la, lb) * span + np.maximum(la, lb))[cross])
    sims = np.concatenate(out).astype(np.float64)
    return (sims, np.concatenate(key_parts)) if with_pairs else sims


def _all_pairs(x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r, c = np.triu_indices(len(x), k=1)
    keep = labels[r] != labels[c]
    r, c = r[keep], c[keep]
    x = np.asarray(x, dtype=np.float32)
    la, lb = labels[r].astype(np.int64), labels[c].astype(np.int64)
    span = int(labels.max()) + 1 if labels.size else 1
    return (x @ x.T)[r, c].astype(np.float64), np.minimum(la, lb) * span + np.maximum(la, lb)


def one_per_identity_pair(sims: np.ndarray, keys: np.ndarray, fraction: float) -> np.ndarray:
    """The sample with its top `fraction` reduced to one value (the highest) per identity pair.

    A real label error between two folders gives many high pairs at once (a copied video frame
    matches every frame of its crowded folder: 300 pairs in the demo, 0.25% of its cross-folder
    pairs, as many as the whole fitted tail), and would pass for a heavy chance tail. Chance
    look-alikes are spread over many identity pairs, so keeping one per pair in the tail costs
    them almost nothing."""
    n = sims.size
    k = min(n, max(1, int(round(n * fraction))))
    if k >= n:
        top_idx = np.arange(n)
    else:
        top_idx = np.argpartition(sims, n - k)[n - k :]
    order = top_idx[np.argsort(-sims[top_idx], kind="stable")]
    _, first = np.unique(keys[order], return_index=True)
    drop = np.setdiff1d(order, order[first], assume_unique=True)
    if not drop.size:
        return sims
    mask = np.ones(n, dtype=bool)
    mask[drop] = False
    return sims[mask]


def fit_tail(sims: np.ndarray, exceed_fraction: float = EXCEED_FRACTION, trim: float = TRIM) -> TailFit | None:
    n = sims.size
    if n < MIN_SAMPLE:
        return None
    k = int(min(MAX_EXCEED, max(MIN_EXCEED, round(n * exceed_fraction))))
    top = np.partition(sims, n - k - 1)[n - k - 1 :]
    u = float(top[0])  # the (k+1)-th largest: exceedances are strictly the top k
    excess = top[1:] - u
    if np.count_nonzero(excess > 0) < MIN_EXCEED:
        return None  # ties (one value repeated): no tail shape to fit
    xi, sigma, trimmed = fit_gpd(excess, trim)
    return TailFit(u=u, xi=xi, sigma=sigma, p_u=k / n, exceedances=k, trimmed=trimmed)


def _rate(t: float, sims_sorted: np.ndarray, tail: TailFit) -> float:
    if t > tail.u:
        return tail.rate(t)
    # below u the sample itself is the estimate
    n = sims_sorted.size
    return float(n - np.searchsorted(sims_sorted, t, side="left")) / n


def calibrate_threshold(vectors: np.ndarray, labels: np.ndarray, floor: float,
                        chance_pairs: float = CHANCE_PAIRS, ceiling: float = CEILING,
                        sample_pairs: int = SAMPLE_PAIRS, seed: int = 0, *, budget: Budget | None = None
                        ) -> ThresholdChoice:
    """The smallest threshold >= floor at which the expected number of different-identity pairs
    over the whole dataset is <= `chance_pairs`, capped at `ceiling` (see the module docstring).

    vectors: unit float32 rows; labels: identity index of each row. budget: the run's memory
    budget (None: none).
    """
    t0 = time.perf_counter()
    ceiling = max(float(ceiling), float(floor))
    labels = np.asarray(labels)
    cross = cross_pair_count(labels)

    def fallback(why: str) -> ThresholdChoice:
        return ThresholdChoice(value=float(floor), floor=float(floor), ceiling=ceiling, source="fallback",
                               reason=why, chance_pairs_budget=float(chance_pairs), rate=None,
                               expected_pairs=None, cross_pairs=cross, sample_size=0,
                               seconds=time.perf_counter() - t0)

    if cross < MIN_SAMPLE:
        return fallback("too few cross-folder pairs to estimate: floor used")
    sims, keys = sample_cross_similarities(vectors, labels, sample_pairs, seed, cross_pairs=cross, with_pairs=True,
                                           budget=budget)
    sims = one_per_identity_pair(sims, keys, 4 * EXCEED_FRACTION)
    del keys
    tail = fit_tail(sims)
    if tail is None:
        return fallback("too few cross-folder pairs to estimate: floor used")
    sims.sort()
    target = chance_pairs / cross
    # E(t) decreases in t: the budget threshold solves rate(t) = target, from the fitted tail
    # above u, from the sample's own quantile below it
    if target < tail.p_u:
        budget_t = tail.u + float(_gpd_quantile(target / tail.p_u, tail.xi, tail.sigma))
    else:
        idx = int(math.ceil(sims.size * (1.0 - target)))
        budget_t = float(sims[min(max(idx, 0), sims.size - 1)])
    if budget_t <= floor:
        value, source = float(floor), "floor"
    elif budget_t >= ceiling:
        value, source = ceiling, "ceiling"
    else:
        # 4 decimals, rounded up: a value people can read and type, still within the budget
        value, source = min(ceiling, math.ceil(budget_t * 1e4) / 1e4), "data"
    rate = _rate(value, sims, tail)
    expected = rate * cross
    if source == "floor":
        reason = (f"floor: model default {floor:g} already expects {expected:.2g} chance pairs "
                  f"(budget {chance_pairs:g})")
    elif source == "ceiling":
        reason = (f"ceiling: the budget needs {budget_t:.4f}; capped at {ceiling:g} so that copies "
                  f"always fail ({expected:.2g} expected chance pairs)")
    else:
        reason = (f"data: {expected:.2g} expected chance pairs among {cross:,} cross-folder pairs "
                  f"(tail fitted to {sims.size:,} sampled)")
    return ThresholdChoice(value=value, floor=float(floor), ceiling=ceiling, source=source, reason=reason,
                           chance_pairs_budget=float(chance_pairs), rate=rate, expected_pairs=expected,
                           cross_pairs=cross, sample_size=int(sims.size), tail=tail,
                           seconds=time.perf_counter() - t0, budget_threshold=budget_t)
