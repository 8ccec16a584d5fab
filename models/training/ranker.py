"""The interest-strength network: P(the user acts on this item next | the user's state now).

One feature function, :func:`pair_features`, turns a user's raw state (short and long interest
vectors, the strengths of the item's category) and an item (embedding, popularity) into the
network's input. Training and the exported SavedModel both call it, so the features cannot
drift between the two. The network is a small MLP with a sigmoid output trained with binary
cross-entropy and Adam; after training its weights are copied out as plain arrays so the
export is pure TensorFlow ops (no Keras object inside the SavedModel to version-skew).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from stream.core.features import FEATURE_NAMES, SHARE_EPS

EPS = SHARE_EPS  # stream.core.features computes the same shares with the same epsilon


@dataclass(frozen=True, slots=True)
class RankerConfig:
    """Network shape and optimiser; the defaults train in seconds on ~50k pairs."""

    hidden: tuple[int, ...] = (64, 32)
    epochs: int = 6
    batch_size: int = 256
    learning_rate: float = 1e-3
    l2: float = 1e-5


@dataclass(slots=True)
class DenseStack:
    """The trained MLP as arrays: ``h = relu(h @ W + b)`` ..., last layer sigmoid."""

    weights: list[np.ndarray]
    biases: list[np.ndarray]

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Numpy forward pass (used for metrics; the export runs the same maths in TF)."""
        h = x.astype(np.float32)
        for n, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = h @ w + b
            if n < len(self.weights) - 1:
                h = np.maximum(h, 0.0)
        return (1.0 / (1.0 + np.exp(-h[..., 0]))).astype(np.float32)


def feature_names(dim: int) -> list[str]:
    """Names of the columns :func:`pair_features` returns, in order."""
    return [
        *[f"short_unit_{j}" for j in range(dim)],
        *[f"long_unit_{j}" for j in range(dim)],
        *[f"item_unit_{j}" for j in range(dim)],
        "cos_short_item",
        "cos_long_item",
        "log1p_short_norm",
        "log1p_long_norm",
        "popularity",
        "item_norm",
        *FEATURE_NAMES,
    ]


def pair_features(short, long, x, pop, extra, scales):
    """Network input for user-item pairs; every argument broadcasts to the pairs' shape.

    short, long: (..., d) raw interest vectors (sum of decayed strengths times embeddings);
    x: (..., d) item embeddings (zeros for an item the model does not know); pop: (...)
    log1p engagement (0 when unknown); extra: (..., F) the per-pair features of
    stream.core.candidates (the user's strength for the item and its category, both horizons,
    the item's trending score in its category, purchased); scales: (emb_norm_mean, pop_max).

    Why these transforms: raw vectors grow with activity, so the direction (unit vectors,
    cosines, i.e. the inner product with the user's vectors) and the magnitude (log1p of the
    norm in units of a typical item norm) enter separately. The strengths in ``extra`` are
    computed in numpy by the same function at training and serving time, so an item first
    seen after training still gets a meaningful score from them.
    """
    import tensorflow as tf

    emb_norm_mean, pop_max = scales[0], scales[1]
    s_norm = tf.norm(short, axis=-1, keepdims=True)
    l_norm = tf.norm(long, axis=-1, keepdims=True)
    x_norm = tf.norm(x, axis=-1, keepdims=True)
    s_unit = short / tf.maximum(s_norm, EPS)
    l_unit = long / tf.maximum(l_norm, EPS)
    x_unit = x / tf.maximum(x_norm, EPS)
    shape = tf.shape(x_unit)
    s_unit = tf.broadcast_to(s_unit, shape)
    l_unit = tf.broadcast_to(l_unit, shape)
    scalar_shape = shape[:-1]

    def col(t):
        return tf.broadcast_to(tf.cast(t, tf.float32), scalar_shape)[..., None]

    scalars = [
        tf.reduce_sum(s_unit * x_unit, -1, keepdims=True),
        tf.reduce_sum(l_unit * x_unit, -1, keepdims=True),
        tf.broadcast_to(tf.math.log1p(s_norm / emb_norm_mean), shape)[..., :1],
        tf.broadcast_to(tf.math.log1p(l_norm / emb_norm_mean), shape)[..., :1],
        col(pop / pop_max),
        x_norm / emb_norm_mean,
    ]
    extra = tf.cast(extra, tf.float32)
    extra = tf.broadcast_to(extra, tf.concat([scalar_shape, tf.shape(extra)[-1:]], 0))
    return tf.concat([s_unit, l_unit, x_unit, *scalars, extra], axis=-1)


def category_only_features(cat_s, cat_l, cat_s_total, cat_l_total):
    """The per-pair features the model can compute alone (its `recommend` re-ranking).

    Mirrors stream.core.candidates.features_from for the category columns; the item strength,
    trending and purchased columns are unknown there and stay 0. The final ranking of the
    stream re-scores retrieval results with the full features (`score` signature).
    """
    import tensorflow as tf

    names = FEATURE_NAMES
    cols = {
        "log1p_cat_short": tf.math.log1p(tf.maximum(cat_s, 0.0)),
        "log1p_cat_long": tf.math.log1p(tf.maximum(cat_l, 0.0)),
        "cat_short_share": tf.maximum(cat_s, 0.0) / tf.maximum(cat_s_total, EPS),
        "cat_long_share": tf.maximum(cat_l, 0.0) / tf.maximum(cat_l_total, EPS),
    }
    zeros = tf.zeros_like(cat_s)
    return tf.stack([cols.get(n, zeros) for n in names], axis=-1)


def dense_apply(weights: Sequence, biases: Sequence, x):
    """The MLP in TF ops (what the SavedModel runs)."""
    import tensorflow as tf

    h = x
    for n, (w, b) in enumerate(zip(weights, biases, strict=True)):
        h = tf.matmul(h, w) + b
        if n < len(weights) - 1:
            h = tf.nn.relu(h)
    return tf.sigmoid(h[..., 0])


@dataclass(slots=True)
class FitResult:
    network: DenseStack
    history: dict[str, list[float]] = field(default_factory=dict)


def fit(
    x: np.ndarray,
    y: np.ndarray,
    config: RankerConfig,
    *,
    seed: int = 0,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> FitResult:
    """Train the MLP with Adam on binary cross-entropy; returns its weights as arrays."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    model = _build(x.shape[1], config)
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss=keras.losses.BinaryCrossentropy(),
    )
    callbacks = []
    if on_epoch is not None:
        callbacks.append(
            keras.callbacks.LambdaCallback(
                on_epoch_end=lambda e, logs: on_epoch(e, dict(logs or {}))
            )
        )
    hist = model.fit(
        tf.constant(x, tf.float32),
        tf.constant(y.astype(np.float32)),
        epochs=config.epochs,
        batch_size=config.batch_size,
        shuffle=True,
        verbose=0,
        callbacks=callbacks,
    )
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    net = DenseStack(
        weights=[np.asarray(layer.kernel.numpy(), np.float32) for layer in dense],
        biases=[np.asarray(layer.bias.numpy(), np.float32) for layer in dense],
    )
    return FitResult(net, {k: [float(v) for v in vals] for k, vals in hist.history.items()})


def _build(n_features: int, config: RankerConfig):
    import keras

    reg = keras.regularizers.L2(config.l2) if config.l2 else None
    layers = [keras.Input((n_features,))]
    layers += [
        keras.layers.Dense(h, activation="relu", kernel_regularizer=reg) for h in config.hidden
    ]
    layers.append(keras.layers.Dense(1, activation="sigmoid"))
    return keras.Sequential(layers)


# ----------------------------------------------------------------------------- metrics


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties)."""
    y = np.asarray(y).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p), np.float64)
    sorted_p = np.asarray(p)[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_p, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    q = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
    yy = np.asarray(y, np.float64)
    return float(-np.mean(yy * np.log(q) + (1 - yy) * np.log(1 - q)))


def best_f1_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The threshold maximising F1 on (y, p); meant to be chosen on training data."""
    y = np.asarray(y).astype(bool)
    order = np.argsort(-np.asarray(p), kind="mergesort")
    ps, ys = np.asarray(p)[order], y[order]
    tp = np.cumsum(ys)
    fp = np.cumsum(~ys)
    f1 = 2 * tp / np.maximum(tp + fp + y.sum(), 1)
    # only cut between distinct scores
    last_of_run = np.r_[ps[1:] != ps[:-1], True]
    best = int(np.argmax(np.where(last_of_run, f1, -1.0)))
    return float(ps[best])


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    """AUC, log loss and the thresholded accuracy, precision, recall and F1."""
    y = np.asarray(y).astype(bool)
    pred = np.asarray(p) >= threshold
    tp = int(np.sum(pred & y))
    fp = int(np.sum(pred & ~y))
    fn = int(np.sum(~pred & y))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "auc": roc_auc(y, p),
        "log_loss": log_loss(y, p),
        "accuracy": float(np.mean(pred == y)) if len(y) else math.nan,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "threshold": float(threshold),
        "positives": int(y.sum()),
        "examples": len(y),
    }
