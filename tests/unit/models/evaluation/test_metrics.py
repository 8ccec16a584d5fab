"""Ranking metrics of `interest evaluate`, on cases small enough to compute by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.evaluation.metrics import (
    MISS,
    bootstrap_ci,
    coverage,
    hit,
    hit_curve,
    ndcg,
    per_target,
    rank_of,
    reciprocal_rank,
    summarize,
)


def test_rank_is_one_based_and_zero_when_missing() -> None:
    assert rank_of("b", ["a", "b", "c"]) == 2
    assert rank_of("a", ["a"]) == 1
    assert rank_of("z", ["a", "b"]) == MISS == 0
    assert rank_of("a", []) == MISS


@pytest.mark.parametrize(
    ("rank", "k", "hr", "dcg", "rr"),
    [
        (1, 10, 1.0, 1.0, 1.0),
        (3, 10, 1.0, 0.5, 1 / 3),  # 1/log2(4) = 0.5
        (7, 10, 1.0, 1 / 3, 1 / 7),  # 1/log2(8) = 1/3
        (10, 10, 1.0, 1 / math.log2(11), 0.1),
        (11, 10, 0.0, 0.0, 0.0),  # just outside the list
        (0, 10, 0.0, 0.0, 0.0),  # a miss
    ],
)
def test_single_target_values(rank: int, k: int, hr: float, dcg: float, rr: float) -> None:
    assert hit(rank, k) == hr
    assert ndcg(rank, k) == pytest.approx(dcg)
    assert reciprocal_rank(rank, k) == pytest.approx(rr)
    for metric, want in (("hr", hr), ("ndcg", dcg), ("mrr", rr)):
        assert per_target(np.array([rank]), metric, k)[0] == pytest.approx(want)


def test_summary_is_the_micro_mean_over_targets() -> None:
    # ranks 1, 3, 15, miss: HR@10 = 2/4, NDCG@10 = (1 + 0.5)/4, MRR@20 = (1 + 1/3 + 1/15)/4
    ranks = np.array([1, 3, 15, 0])
    s = summarize(ranks, (10, 20))
    assert s["hr@10"] == pytest.approx(0.5)
    assert s["hr@20"] == pytest.approx(0.75)
    assert s["ndcg@10"] == pytest.approx(1.5 / 4)
    assert s["ndcg@20"] == pytest.approx((1 + 0.5 + 1 / math.log2(16)) / 4)
    assert s["mrr@20"] == pytest.approx((1 + 1 / 3 + 1 / 15) / 4)
    assert set(s) == {f"{m}@{k}" for m in ("hr", "ndcg", "mrr") for k in (10, 20)}


def test_empty_summary_is_zero_not_nan() -> None:
    assert summarize(np.array([], np.int16), (10,)) == {"hr@10": 0.0, "ndcg@10": 0.0, "mrr@10": 0.0}


def test_unknown_metric_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown metric"):
        per_target(np.array([1]), "map", 10)


def test_hit_curve_is_cumulative() -> None:
    curve = hit_curve(np.array([1, 2, 2, 5, 0]), 5)
    assert curve.tolist() == pytest.approx([0.2, 0.6, 0.6, 0.6, 0.8])


def test_coverage() -> None:
    assert coverage({"a", "b"}, 8) == 0.25
    assert coverage(set(), 0) == 0.0


def test_bootstrap_ci_brackets_the_mean_and_is_seeded() -> None:
    rng = np.random.default_rng(1)
    users = np.repeat(np.arange(50), 4)
    values = (rng.random(200) < 0.3).astype(float)
    lo, hi = bootstrap_ci(values, users, resamples=1000, seed=3)
    assert lo <= values.mean() <= hi
    assert 0.0 < hi - lo < 0.3
    assert bootstrap_ci(values, users, resamples=1000, seed=3) == (lo, hi)


def test_bootstrap_resamples_users_not_targets() -> None:
    # one user with every hit and many targets: resampling users makes the interval wide,
    # resampling targets (wrongly treating them as independent) would make it narrow
    values = np.array([1.0] * 10 + [0.0] * 10)
    users = np.array([0] * 10 + list(range(1, 11)))
    lo, hi = bootstrap_ci(values, users, resamples=2000, seed=0)
    assert lo == 0.0  # a resample without user 0 has no hit at all
    assert hi > 0.6


def test_degenerate_bootstrap() -> None:
    assert bootstrap_ci(np.array([]), np.array([])) == (0.0, 0.0)
    assert bootstrap_ci(np.ones(5), np.zeros(5)) == (1.0, 1.0)
