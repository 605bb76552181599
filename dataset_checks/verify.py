"""Check the search after the fact: a sample of faces searched by brute force in the same run.

Calibration (search.py) tunes nprobe before the search; this step measures what the finished
search actually returned. A few hundred faces are drawn at random (plus some faces that the
search paired, so that the check also covers the region where findings live), every
cross-folder pair of theirs at or above the threshold is found by exact numpy search over all
vectors, and the result is compared with the pairs the index found. The recall it reports is
the share of those exact pairs that the search also found.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .arrays import nonzero
from .search import pair_similarity

RANDOM_QUERIES = 256
FINDING_QUERIES = 128
MARGIN = 1e-4  # float32 candidates are re-scored in float64, as in search.py
BLOCK = 256  # queries per block
CELLS = 1 << 22  # score cells per block (16 MB of float32)


def verify_search(
    vectors: np.ndarray,
    labels: np.ndarray,
    threshold: float,
    found_i: np.ndarray,
    found_j: np.ndarray,
    random_queries: int = RANDOM_QUERIES,
    finding_queries: int = FINDING_QUERIES,
    seed: int = 1,
) -> dict[str, Any]:
    """Recall of the found pairs (found_i < found_j) on a sample of queries, against brute force.

    Returns a JSON-ready dict: queries, exact_pairs, found_pairs, recall (None when the sample
    has no cross-folder pair at the threshold), missed (row pairs, at most 10), extra (found
    pairs that exact search does not confirm; always 0 unless something is broken).
    """
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    labels = np.asarray(labels)
    n = len(x)
    found_i = np.asarray(found_i, dtype=np.int64)
    found_j = np.asarray(found_j, dtype=np.int64)
    if n == 0:
        return {"queries": 0, "exact_pairs": 0, "found_pairs": 0, "recall": None, "missed": [], "extra": 0}
    rng = np.random.default_rng(seed)
    random_rows = rng.choice(n, size=min(random_queries, n), replace=False)
    involved = np.unique(np.concatenate([found_i, found_j]))
    involved = np.setdiff1d(involved, random_rows)
    paired_rows = rng.choice(involved, size=min(finding_queries, involved.size), replace=False)
    queries = np.unique(np.concatenate([random_rows, paired_rows]).astype(np.int64))

    # pairs as int64 keys (i * n + j, i < j): a few hundred queries may touch millions of pairs
    # (a frame copied into another folder pairs with every frame of its crowd)
    truth_keys: list[np.ndarray] = []
    # Score blocks of at most CELLS cells (a query block times a column block), same-folder hits
    # dropped before they are gathered: a crowded folder of identical frames would otherwise
    # hand back millions of hits per query.
    rows = max(1, min(BLOCK, queries.size, CELLS))
    cols = max(1, CELLS // rows)
    for s in range(0, queries.size, rows):
        q = queries[s : s + rows]
        xq, lq = x[q], labels[q][:, None]
        for cs in range(0, n, cols):
            sims = xq @ x[cs : cs + cols].T
            hit = sims >= threshold - MARGIN
            hit &= lq != labels[None, cs : cs + cols]
            r, c = nonzero(hit)
            if not r.size:
                continue
            rows_, cols_ = q[r], c + cs
            exact = pair_similarity(x, rows_, cols_)
            ok = exact >= threshold
            truth_keys.append(np.minimum(rows_, cols_)[ok] * n + np.maximum(rows_, cols_)[ok])

    truth = np.unique(np.concatenate(truth_keys)) if truth_keys else np.zeros(0, np.int64)
    qset = np.zeros(n, dtype=bool)
    qset[queries] = True
    touch = qset[found_i] | qset[found_j] if found_i.size else np.zeros(0, dtype=bool)
    found = np.unique(found_i[touch] * n + found_j[touch])
    hit = np.isin(truth, found)
    missed_all = truth[~hit]
    missed = missed_all[:10]
    extra = int((~np.isin(found, truth)).sum())
    n_hit = int(hit.sum())
    # the statistical statement uses the random queries' pairs alone: the queries drawn from
    # findings are where the search already found pairs (a biased sample)
    rset = np.zeros(n, dtype=bool)
    rset[random_rows] = True
    ti, tj = truth // max(n, 1), truth % max(n, 1)
    random_pair = rset[ti] | rset[tj] if truth.size else np.zeros(0, dtype=bool)
    random_exact, random_found = int(random_pair.sum()), int((hit & random_pair).sum())
    return {
        "queries": int(queries.size),
        "random_queries": int(random_rows.size),
        "queries_from_findings": int(paired_rows.size),
        "threshold": float(threshold),
        "exact_pairs": int(truth.size),
        "found_pairs": n_hit,
        "recall": (n_hit / truth.size) if truth.size else None,
        "random_exact_pairs": random_exact,
        "random_found_pairs": random_found,
        "recall_lower_bound": recall_lower_bound(random_found, random_exact),
        "missed": [[int(k // n), int(k % n)] for k in missed],
        "missed_count": int(missed_all.size),
        "extra": extra,
        # every missed pair as row arrays (i < j): exact pairs the search did not return, which
        # the run adds to its findings (a pair above the threshold is never dropped once seen)
        "_missed_rows": (missed_all // max(n, 1), missed_all % max(n, 1)),
    }


def recall_lower_bound(found: int, total: int, z: float = 1.6448536269514722) -> float | None:
    """A one-sided 95% lower confidence bound on the recall from `found` of `total` sampled
    pairs: 1 - 3/total when none was missed (the rule of three), else Wilson's score bound.
    None without sampled pairs (nothing to measure)."""
    if total <= 0:
        return None
    if found >= total:
        return max(0.0, 1.0 - 3.0 / total)
    p = found / total
    centre = p + z * z / (2 * total)
    spread = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total))
    return max(0.0, (centre - spread) / (1 + z * z / total))
