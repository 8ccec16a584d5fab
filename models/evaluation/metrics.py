"""Ranking metrics of the offline evaluation: one target, one ranked list, one rank.

Every metric here is a function of the target's 1-based rank in a method's list (0 when it
is not in the list), so the replay only has to store one small integer per (target,
method) and every K, bootstrap resample and time bucket is computed afterwards from the
same ranks.  Averages are *micro* averages over targets (each target counts once), and the
bootstrap resamples *users* (whole users with all their targets), because targets of one
user are not independent: resampling targets would give intervals that are too narrow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

KS: tuple[int, ...] = (10, 20, 50)
MISS = 0  # rank value of a target that is not in the list


def rank_of(item_id: str, ranked: Sequence[str]) -> int:
    """1-based position of ``item_id`` in ``ranked``, or MISS (0) when absent."""
    for pos, candidate in enumerate(ranked, 1):
        if candidate == item_id:
            return pos
    return MISS


def hit(rank: int, k: int) -> float:
    """1 when the target is in the top k."""
    return 1.0 if 0 < rank <= k else 0.0


def ndcg(rank: int, k: int) -> float:
    """NDCG@k for one relevant item: the ideal DCG is 1, so it is 1/log2(rank + 1)."""
    return 1.0 / math.log2(rank + 1) if 0 < rank <= k else 0.0


def reciprocal_rank(rank: int, k: int) -> float:
    """MRR@k contribution: 1/rank inside the top k, else 0."""
    return 1.0 / rank if 0 < rank <= k else 0.0


def per_target(ranks: np.ndarray, metric: str, k: int) -> np.ndarray:
    """Vectorised metric values for an int array of ranks (0 = miss)."""
    r = np.asarray(ranks, np.int64)
    inside = (r > 0) & (r <= k)
    safe = np.where(inside, r, 1).astype(np.float64)
    if metric == "hr":
        values = np.ones_like(safe)
    elif metric == "ndcg":
        values = 1.0 / np.log2(safe + 1.0)
    elif metric == "mrr":
        values = 1.0 / safe
    else:
        raise ValueError(f"unknown metric {metric!r} (hr, ndcg, mrr)")
    return np.where(inside, values, 0.0)


def summarize(ranks: np.ndarray, ks: Sequence[int] = KS) -> dict[str, float]:
    """{'hr@10': .., 'ndcg@10': .., 'mrr@10': .., ...} micro-averaged over the targets."""
    out: dict[str, float] = {}
    n = len(ranks)
    for k in ks:
        for metric in ("hr", "ndcg", "mrr"):
            out[f"{metric}@{k}"] = float(per_target(ranks, metric, k).mean()) if n else 0.0
    return out


def hit_curve(ranks: np.ndarray, max_k: int) -> np.ndarray:
    """HR@K for K = 1..max_k (the hit-rate-against-K plot) from one pass over the ranks."""
    r = np.asarray(ranks, np.int64)
    if not len(r):
        return np.zeros(max_k)
    counts = np.bincount(r[(r > 0) & (r <= max_k)], minlength=max_k + 1)[1:]
    return np.cumsum(counts) / len(r)


def bootstrap_ci(
    values: np.ndarray,
    users: np.ndarray,
    *,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile CI of the micro mean of ``values`` when *users* are resampled.

    Per user we keep (sum, count); a resample draws users with replacement and takes
    sum(sums) / sum(counts), i.e. the same micro average as the point estimate.
    """
    values = np.asarray(values, np.float64)
    if not len(values):
        return (0.0, 0.0)
    _, inverse = np.unique(np.asarray(users), return_inverse=True)
    sums = np.bincount(inverse, weights=values)
    counts = np.bincount(inverse).astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(sums), size=(resamples, len(sums)))
    means = sums[draws].sum(axis=1) / np.maximum(counts[draws].sum(axis=1), 1.0)
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(means, [tail, 100.0 - tail])
    return (float(lo), float(hi))


def coverage(recommended: set[str], catalog_size: int) -> float:
    """Distinct items ever recommended / items in the catalog (0 for an empty catalog)."""
    return len(recommended) / catalog_size if catalog_size else 0.0
