"""The exported model: one tf.Module whose functions serve in-process and in TF Serving.

As in tensorflow/recommenders, the retrieval and the ranking network are small pieces of
one module, and the very functions exported as SavedModel signatures are what the local
scorer, TF Serving and the training replay call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from models.serving.model_dir import SEQUENCE_SIGNATURES
from models.training.ranker import (
    EPS,
    DenseStack,
    category_only_features,
    dense_apply,
)
from models.training.sequence import (
    SequenceWeights,
    head_from,
    next_items,
    next_scores,
    sequence_feature,
)
from stream.core.features import N_FEATURES


@dataclass(slots=True)
class ModelArtifacts:
    """Everything a version is built from (what training produces)."""

    item_ids: list[str]
    item_categories: list[str]  # category name per item
    categories: list[str]  # the model's category index; last entry is OTHER_CATEGORY
    popularity: np.ndarray  # (N,) float32 log1p(total engagement)
    embeddings: np.ndarray  # (N, d) float32
    network: DenseStack
    num_candidates: int = 50  # retrieval candidates re-ranked by the network
    top_k: int = 20
    category_weight: float = 1.0  # retrieval: weight of the user's share in the item's category
    popularity_weight: float = 0.01  # retrieval: tie-breaker towards popular items (cold users)
    # the causal self-attention model over recent events (models.training.sequence): its
    # item indices are this version's; exported as `next_items` / `next_scores` when set
    sequence: SequenceWeights | None = None
    # the fused network (the article's model fusion): the network with the sequence model's
    # score of each candidate as one more per-pair input (models.training.sequence
    # .sequence_feature); when set (with ``sequence``), the exported `score` is this network
    # and takes the users' recent events too. Training sets it when it beat the plain
    # network and the blend on the validation window (metadata.json ranking = "fused")
    fused: DenseStack | None = None

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def item_category_index(self) -> np.ndarray:
        index = {c: n for n, c in enumerate(self.categories)}
        other = len(self.categories) - 1
        return np.array([index.get(c, other) for c in self.item_categories], np.int32)


def item_scales(art: ModelArtifacts) -> np.ndarray:
    """(mean item-embedding norm, max popularity): the units the network's inputs are in."""
    norms = np.linalg.norm(art.embeddings, axis=1)
    return np.array(
        [
            max(float(norms.mean()) if len(norms) else 1.0, 1e-6),
            max(float(art.popularity.max(initial=0)), 1e-6),
        ],
        np.float32,
    )


def retrieval_scores(
    xp: Any,
    short: Any,
    long: Any,
    cat_short: Any,
    cat_long: Any,
    item_unit: Any,
    item_cat: Any,
    pop_scaled: Any,
    cat_weight: Any,
    pop_weight: Any,
) -> Any:
    """The retrieval score of every (user, item), once for both backends: ``xp`` is numpy
    (the training replay) or TensorFlow's numpy API (the exported module, so TF Serving).

    (unit short + unit long) . unit item embedding, plus ``cat_weight`` x the user's share
    of strength in the item's category (both horizons), plus ``pop_weight`` x normalised
    popularity (a tie-breaker that gives cold users popular items)."""

    def unit(v: Any) -> Any:
        return v / xp.maximum(xp.sqrt(xp.sum(v * v, axis=1, keepdims=True)), 1e-6)

    def share(c: Any) -> Any:
        return c / xp.maximum(xp.sum(c, axis=1, keepdims=True), 1e-6)

    score = xp.matmul(unit(short) + unit(long), xp.transpose(item_unit))
    # a row gather on the transpose: 4x faster on CPU than a gather along axis 1
    by_item = xp.transpose(
        xp.take(xp.transpose(share(cat_short) + share(cat_long)), item_cat, axis=0)
    )
    return score + cat_weight * by_item + pop_weight * pop_scaled[None, :]


def _network_parts(net: DenseStack, unit: np.ndarray, d: int, name: str) -> Any:
    """A network's weights for serving, its first layer split by what its inputs depend on
    (the columns of models.training.ranker.pair_features): the item side is computed here
    once per model version for every item (``first_item``), the user side once per user
    (``first_user``), and only the per-pair columns (``first_pair``) per pair."""
    import tensorflow as tf

    w0 = net.weights[0]
    parts = tf.Module(name=name)
    parts.w = [tf.Variable(w, trainable=False) for w in net.weights]
    parts.b = [tf.Variable(b, trainable=False) for b in net.biases]
    parts.first_item = tf.Variable(unit @ w0[2 * d : 3 * d], trainable=False, name="first_item")
    parts.first_user = tf.constant(w0[: 2 * d])
    parts.first_pair = tf.constant(w0[3 * d :])
    return parts


def build_module(art: ModelArtifacts):
    """A tf.Module with the serving functions (``recommend``, ``recommend_mask``, ``score``:
    the exported signatures), traced for any batch size. Retrieval is
    :func:`retrieval_scores`, which the training replay runs in numpy. With
    ``art.sequence`` also ``next_items`` and ``next_scores`` (models.training.sequence)."""
    import tensorflow as tf
    import tensorflow.experimental.numpy as tnp

    d = art.dim
    n_feat = N_FEATURES
    n_cat = len(art.categories)
    emb = art.embeddings.astype(np.float32)
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    unit = emb / np.maximum(norms, EPS)
    pop = art.popularity.astype(np.float32)
    scales = item_scales(art)
    users = [  # the users' half of every signature
        tf.TensorSpec([None, d], tf.float32, name="short"),
        tf.TensorSpec([None, d], tf.float32, name="long"),
        tf.TensorSpec([None, n_cat], tf.float32, name="cat_short"),
        tf.TensorSpec([None, n_cat], tf.float32, name="cat_long"),
    ]

    class InterestModel(tf.Module):
        def __init__(self) -> None:
            super().__init__(name="interest_model")
            self.item_emb = tf.Variable(emb, trainable=False, name="item_emb")
            self.item_unit = tf.Variable(unit, trainable=False, name="item_unit")
            self.item_cat = tf.Variable(art.item_category_index(), trainable=False, name="item_cat")
            self.item_pop = tf.Variable(pop, trainable=False, name="item_pop")
            self.scales = tf.Variable(scales, trainable=False, name="scales")
            self.item_norm = tf.Variable(norms[:, 0], trainable=False, name="item_norm")
            self.net = _network_parts(art.network, unit, d, "net")
            self.num_candidates = tf.constant(art.num_candidates, tf.int32)
            self.retrieval_w = tf.constant([art.category_weight, art.popularity_weight], tf.float32)

        def _net(self, short, long, items, feats, net=None):
            """Network scores (B, M) for item indices (B, M); outside [0, N): unknown item
            (zero embedding and popularity, scored from its per-pair features alone).

            The same network as dense_apply(pair_features(...)) of training, with its first
            layer computed in parts: items' part precomputed (``first_item``), users' part
            once per user, per-pair columns ([B x M, 6 + F]) per pair. ``net``: the
            :func:`_network_parts` (default: the plain one)."""
            net = net if net is not None else self.net
            n_items = tf.shape(self.item_emb)[0]
            known = (items >= 0) & (items < n_items)
            safe = tf.where(known, items, 0)
            k = tf.cast(known, tf.float32)
            x_unit = tf.gather(self.item_unit, safe) * k[..., None]  # (B, M, d)
            x_norm = tf.gather(self.item_norm, safe) * k
            pop = tf.gather(self.item_pop, safe) * k
            emb_norm_mean, pop_max = self.scales[0], self.scales[1]
            s_norm = tf.norm(short, axis=-1, keepdims=True)
            l_norm = tf.norm(long, axis=-1, keepdims=True)
            s_unit = short / tf.maximum(s_norm, EPS)
            l_unit = long / tf.maximum(l_norm, EPS)
            ones = tf.ones_like(x_norm)
            pair = tf.stack(
                [
                    tf.einsum("bd,bmd->bm", s_unit, x_unit),
                    tf.einsum("bd,bmd->bm", l_unit, x_unit),
                    tf.math.log1p(s_norm / emb_norm_mean) * ones,
                    tf.math.log1p(l_norm / emb_norm_mean) * ones,
                    pop / pop_max,
                    x_norm / emb_norm_mean,
                ],
                axis=-1,
            )
            pair = tf.concat([pair, tf.cast(feats, tf.float32)], axis=-1)  # (B, M, 6 + F)
            user = tf.matmul(tf.concat([s_unit, l_unit], -1), net.first_user)  # (B, H)
            h = (
                tf.gather(net.first_item, safe) * k[..., None]
                + user[:, None, :]
                + tf.einsum("bmf,fh->bmh", pair, net.first_pair)
                + net.b[0]
            )
            if len(net.w) == 1:
                return tf.sigmoid(h[..., 0])
            shape = tf.shape(h)
            flat = tf.nn.relu(tf.reshape(h, [-1, shape[-1]]))
            return tf.reshape(dense_apply(net.w[1:], net.b[1:], flat), shape[:-1])

        def _category_feats(self, cat_short, cat_long, items):
            """Per-pair features from the category strengths alone (retrieval re-ranking)."""
            cat = tf.gather(self.item_cat, items)
            return category_only_features(
                tf.gather(cat_short, cat, batch_dims=1),
                tf.gather(cat_long, cat, batch_dims=1),
                tf.reduce_sum(cat_short, axis=1, keepdims=True),
                tf.reduce_sum(cat_long, axis=1, keepdims=True),
            )

        def _retrieval(self, short, long, cat_short, cat_long):
            return retrieval_scores(
                tnp,
                short,
                long,
                cat_short,
                cat_long,
                self.item_unit,
                self.item_cat,
                self.item_pop / self.scales[1],
                self.retrieval_w[0],
                self.retrieval_w[1],
            )

        def _top(self, short, long, cat_short, cat_long, excluded, k):
            n_items = tf.shape(self.item_emb)[0]
            # k is per user (B,) so TF Serving's batcher can merge requests along dim 0;
            # the batch returns max(k) columns and each caller keeps its own k.
            k = tf.maximum(tf.reduce_max(tf.concat([k, [1]], 0)), 1)
            m = tf.minimum(tf.maximum(self.num_candidates, k), n_items)
            ret = self._retrieval(short, long, cat_short, cat_long)
            ret = tf.where(excluded, tf.constant(-np.inf, tf.float32), ret)
            cand = tf.math.top_k(ret, k=m, sorted=False)
            valid = cand.values > -np.inf
            feats = self._category_feats(cat_short, cat_long, cand.indices)
            p = self._net(short, long, cand.indices, feats)
            p = tf.where(valid, p, -1.0)
            best = tf.math.top_k(p, k=tf.minimum(k, m), sorted=True)
            items = tf.gather(cand.indices, best.indices, batch_dims=1)
            ok = best.values >= 0.0
            return {
                "items": tf.where(ok, items, -1),
                "scores": tf.where(ok, best.values, 0.0),
            }

        @tf.function(
            input_signature=[
                *users,
                tf.TensorSpec([None, None], tf.int32, name="exclude"),
                tf.TensorSpec([None], tf.int32, name="k"),
            ]
        )
        def recommend(self, short, long, cat_short, cat_long, exclude, k):
            """Top-k items; `exclude` lists item indices per user, padded with -1.

            Clients put -1 in column 0: TF Serving's batcher pads narrower requests with
            each tensor's first element, which must therefore be the "no item" value.
            """
            n_items = tf.shape(self.item_emb)[0]
            b = tf.shape(short)[0]
            ok = (exclude >= 0) & (exclude < n_items)
            where = tf.where(ok)
            cols = tf.cast(tf.gather_nd(exclude, where), tf.int64)
            pairs = tf.stack([where[:, 0], cols], axis=1)
            hits = tf.scatter_nd(
                pairs, tf.ones_like(cols, tf.float32), tf.cast([b, n_items], tf.int64)
            )
            return self._top(short, long, cat_short, cat_long, hits > 0.0, k)

        @tf.function(
            input_signature=[
                *users,
                tf.TensorSpec([None, None], tf.bool, name="exclude"),
                tf.TensorSpec([None], tf.int32, name="k"),
            ]
        )
        def recommend_mask(self, short, long, cat_short, cat_long, exclude, k):
            """Top-k items; `exclude` is a (B, N) boolean mask over the model's items."""
            return self._top(short, long, cat_short, cat_long, exclude, k)

        @tf.function(
            input_signature=[
                *users,
                tf.TensorSpec([None, None], tf.int32, name="items"),
                tf.TensorSpec([None, None, n_feat], tf.float32, name="feats"),
            ]
        )
        def score(self, short, long, cat_short, cat_long, items, feats):
            """Network scores of candidates: item indices (-1 or out of range: unknown to
            the model) with their per-pair features (stream.core.features.FEATURE_NAMES).

            cat_short / cat_long are accepted for a uniform client but unused: the
            category strengths arrive in ``feats``, also for items the model lacks.
            """
            del cat_short, cat_long
            return {"scores": self._net(short, long, items, feats)}

    if art.sequence is None:
        return InterestModel()
    fused = _network_parts(art.fused, unit, d, "fused") if art.fused is not None else None
    return _with_sequence(InterestModel, art.sequence, fused, users, n_feat)


def _with_sequence(base: type, weights: SequenceWeights, fused: Any, users: list, n_feat: int):
    """The module plus the sequence model's signatures (models.training.sequence); with a
    ``fused`` network, `score` is that network over the per-pair features plus the sequence
    model's score of each candidate, and takes the users' recent events too."""
    import tensorflow as tf

    seqs = [
        tf.TensorSpec([None, None], tf.int32, name="seq_items"),
        tf.TensorSpec([None, None], tf.int32, name="seq_types"),
    ]
    fused_score = [
        *users,
        tf.TensorSpec([None, None], tf.int32, name="items"),
        tf.TensorSpec([None, None, n_feat], tf.float32, name="feats"),
        *seqs,
    ]

    class InterestSequenceModel(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.sequence = head_from(weights)

        @tf.function(input_signature=[*seqs, tf.TensorSpec([None], tf.int32, name="k")])
        def next_items(self, seq_items, seq_types, k):
            """Top max(k) next items of right-aligned event sequences (newest last; -1:
            padding or unknown), with their softmax probability over the catalog, best
            first; -1 / 0 for a user without a known item."""
            return next_items(self.sequence, seq_items, seq_types, k)

        @tf.function(input_signature=[*seqs, tf.TensorSpec([None, None], tf.int32, name="items")])
        def next_scores(self, seq_items, seq_types, items):
            """The same probability for given item indices (0 for -1 / unknown)."""
            return next_scores(self.sequence, seq_items, seq_types, items)

    class InterestFusedModel(InterestSequenceModel):
        def __init__(self) -> None:
            super().__init__()
            self.fused = fused

        @tf.function(input_signature=fused_score)
        def score(self, short, long, cat_short, cat_long, items, feats, seq_items, seq_types):
            """The fused network's scores of candidates: the per-pair features plus the
            sequence model's score of each candidate given the user's recent events."""
            del cat_short, cat_long
            p = next_scores(self.sequence, seq_items, seq_types, items)["scores"]
            n_items = tf.cast(self.sequence.n_items, tf.float32)
            col = sequence_feature(tf.math, p, n_items)[..., None]
            return {"scores": self._net(short, long, items, tf.concat([feats, col], -1), fused)}

    return InterestSequenceModel() if fused is None else InterestFusedModel()


def signatures_of(module) -> dict[str, Any]:
    out = {
        "recommend": module.recommend.get_concrete_function(),
        "recommend_mask": module.recommend_mask.get_concrete_function(),
        "score": module.score.get_concrete_function(),
        "serving_default": module.recommend.get_concrete_function(),
    }
    for name in SEQUENCE_SIGNATURES:
        if hasattr(module, name):
            out[name] = getattr(module, name).get_concrete_function()
    return out
