"""The interest-strength network and its metrics."""

from __future__ import annotations

import numpy as np
import pytest

from models.training.ranker import (
    RankerConfig,
    best_f1_threshold,
    binary_metrics,
    feature_names,
    fit,
    log_loss,
    pair_features,
    roc_auc,
)
from stream.core.features import N_FEATURES


def test_network_beats_constant_predictor_on_planted_signal() -> None:
    rng = np.random.default_rng(0)
    n, f = 6000, 10
    x = rng.normal(size=(n, f)).astype(np.float32)
    logit = 2.5 * x[:, 0] * x[:, 1] + 2.0 * x[:, 2] - 1.0  # interaction + linear signal
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    tr, te = slice(0, 4500), slice(4500, n)
    res = fit(x[tr], y[tr], RankerConfig(hidden=(32, 16), epochs=8, batch_size=128), seed=1)
    p = res.network.predict(x[te])
    assert p.shape == (n - 4500,) and np.all((p >= 0) & (p <= 1))
    constant = np.full_like(p, y[tr].mean())
    assert log_loss(y[te], p) < log_loss(y[te], constant) - 0.1
    assert roc_auc(y[te], p) > 0.75
    assert res.history["loss"][-1] < res.history["loss"][0]


def test_auc_and_threshold_metrics() -> None:
    y = np.array([0, 0, 1, 1, 0, 1])
    assert roc_auc(y, np.array([0.1, 0.2, 0.8, 0.9, 0.3, 0.7])) == 1.0
    assert roc_auc(y, np.full(6, 0.5)) == 0.5
    assert roc_auc(y, np.array([0.9, 0.8, 0.1, 0.2, 0.7, 0.3])) == 0.0
    p = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.6])
    thr = best_f1_threshold(y, p)
    m = binary_metrics(y, p, thr)
    assert set(m) >= {"auc", "log_loss", "accuracy", "precision", "recall", "f1", "threshold"}
    assert 0 <= m["f1"] <= 1 and m["f1"] >= binary_metrics(y, p, 0.99)["f1"]


def test_pair_features_are_finite_for_cold_users() -> None:
    import tensorflow as tf

    d = 4
    zeros = tf.zeros((3, d))
    x = tf.constant(np.random.default_rng(0).normal(size=(3, d)), tf.float32)
    f = pair_features(zeros, zeros, x, tf.ones(3), tf.zeros((3, N_FEATURES)), [1.0, 2.0])
    assert f.shape == (3, len(feature_names(d)))
    assert np.all(np.isfinite(f.numpy()))


@pytest.mark.parametrize("shape", [(2, 5), (7,)])
def test_pair_features_broadcast_user_over_items(shape: tuple[int, ...]) -> None:
    import tensorflow as tf

    d = 3
    rng = np.random.default_rng(1)
    user = tf.constant(
        rng.normal(size=(*shape[:-1], 1, d)) if len(shape) > 1 else rng.normal(size=(d,)),
        tf.float32,
    )
    x = tf.constant(rng.normal(size=(*shape, d)), tf.float32)
    s = tf.ones(shape)
    extra = tf.ones((*shape, N_FEATURES))
    f = pair_features(user, user, x, s, extra, tf.constant([1.0, 1.0]))
    assert f.shape == (*shape, len(feature_names(d)))
