"""The sequence model: causal self-attention over a user's recent events (SASRec-like).

A user's events in event-time order, each an item (the model's catalog index) and an event
type, go through item + position + event-type embeddings and ``blocks`` Transformer blocks
(pre-layer-norm, multi-head causal self-attention, a point-wise feed-forward layer); the
output at a position, multiplied with the item embedding table (shared between input and
output, as in SASRec) plus a per-item bias, gives logits over the whole catalog for the
item of the *next* event. Training uses every position at once (each predicts the next
event, padding masked) with full-softmax cross-entropy over the catalog, or sampled softmax
for large catalogs; the item table is initialised from the matrix factorisation's item
embeddings (projected on their leading principal directions when the widths differ).

Layout of a sequence, in training and serving alike: RIGHT-aligned, the newest event in the
last column, -1 padding at the front; events whose item the model does not know are
removed (the known ones moved right, order kept), so position ``L - 1`` is always the
newest known event. :func:`encode` is the single forward pass: the training loop and the
exported module (``next_items`` / ``next_scores``, models.training.module) both call it.

Leak-freedom: :func:`fit_sequence` trains only on events at or before ``cut``;
:func:`sequence_validation` scores every target-like event after ``cut`` (the ranking
validation's definition: a user's event after their first, not a repeat browse) from the
``length`` events before it, validation events included (the stream would know them).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PAD = -1  # padding, and an item or event type the model does not know
REPEAT_TYPE = "browse"  # a browse of an item the user saw before is not a target (replay's rule)
LN_EPS = 1e-5
NEG = -1e9  # additive attention mask

History = Sequence[tuple[int, int, int]]  # (model item index or -1, event type index, ts)


@dataclass(frozen=True, slots=True)
class SequenceConfig:
    """Shape and optimiser of the sequence model; defaults train in seconds on the demo."""

    length: int = 50  # events per sequence (the stream keeps as many per user)
    dim: int = 32
    blocks: int = 2
    heads: int = 2
    epochs: int = 20
    batch_size: int = 64  # sequences per step
    learning_rate: float = 1e-2
    dropout: float = 0.2
    loss: str = "softmax"  # "softmax": full catalog; "sampled": sampled softmax
    samples: int = 512  # negatives per step with loss="sampled" (uniform over the catalog)
    init_scale: float = 0.1  # RMS of an embedding entry at initialisation
    # no loss on repeat browses (which the validation does not count as targets); learning
    # them as well ranks better on the samples
    skip_repeats: bool = False
    seed: int = 7

    def __post_init__(self) -> None:
        if self.loss not in ("softmax", "sampled"):
            raise ValueError(f"loss: {self.loss!r} is not 'softmax' or 'sampled'")
        if self.length < 1 or self.dim < 1 or self.blocks < 1 or self.heads < 1:
            raise ValueError("length, dim, blocks and heads must be positive")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")


@dataclass(slots=True)
class SequenceWeights:
    """The trained sequence model as arrays: what the exported module is built from.

    ``arrays``: ``item_emb`` (N, d), ``item_bias`` (N,), ``pos_emb`` (length, d),
    ``type_emb`` (T, d), per block ``b{n}_ln1_g``/``_ln1_b`` (d,), ``b{n}_wqkv`` (d, 3d),
    ``b{n}_bqkv`` (3d,), ``b{n}_wo`` (d, d), ``b{n}_bo``, ``b{n}_ln2_g``/``_ln2_b``,
    ``b{n}_w1``/``_w2`` (d, d), ``b{n}_b1``/``_b2``, and ``final_g``/``final_b`` (d,).
    """

    arrays: dict[str, np.ndarray]
    heads: int
    event_types: list[str]
    length: int

    @property
    def dim(self) -> int:
        return int(self.arrays["item_emb"].shape[1])

    @property
    def n_items(self) -> int:
        return int(self.arrays["item_emb"].shape[0])

    @property
    def blocks(self) -> int:
        return sum(1 for k in self.arrays if k.endswith("_wqkv"))

    def info(self) -> dict[str, Any]:
        """metadata.json ``"sequence"`` (models.serving.model_dir.SequenceInfo), less signatures."""
        return {
            "length": self.length,
            "event_types": list(self.event_types),
            "dim": self.dim,
            "blocks": self.blocks,
            "heads": self.heads,
            "items": self.n_items,
        }


# ----------------------------------------------------------------------------- histories


def build_histories(
    events: Iterable[Any], item_index: Mapping[str, int], event_types: Sequence[str]
) -> tuple[list[str], list[list[tuple[int, int, int]]], list[list[bool]]]:
    """Per user (first-seen order): the history ``(item index or -1, type index or -1, ts)``
    in the given (event-time) order, and which events are targets for the validation.

    A target is what the replay's ranking validation counts (models.training.replay): an
    event of a user after their first, except a browse of an item (by id) the user had
    already had an event on.
    """
    types = {t: n for n, t in enumerate(event_types)}
    users: dict[str, int] = {}
    hist: list[list[tuple[int, int, int]]] = []
    target: list[list[bool]] = []
    seen: list[set[str]] = []
    for ev in events:
        u = users.get(ev.user_id)
        if u is None:
            u = users[ev.user_id] = len(hist)
            hist.append([])
            target.append([])
            seen.append(set())
        hist[u].append((item_index.get(ev.item_id, PAD), types.get(ev.type, PAD), int(ev.ts)))
        target[u].append(len(hist[u]) > 1 and (ev.type != REPEAT_TYPE or ev.item_id not in seen[u]))
        seen[u].add(ev.item_id)
    return list(users), hist, target


def _as_array(history: History) -> np.ndarray:
    return np.asarray(history, np.int64).reshape(-1, 3)


def _targets_of(
    arr: np.ndarray, event_types: Sequence[str], given: Sequence[bool] | None
) -> np.ndarray:
    """Which events are targets: ``given``, else the rule on model indices (an unknown
    item's repeat browse cannot be told from the indices and then counts)."""
    if given is not None:
        return np.asarray(given, bool)
    browse = list(event_types).index(REPEAT_TYPE) if REPEAT_TYPE in event_types else -2
    out = np.zeros(len(arr), bool)
    seen: set[int] = set()
    for n, (item, kind, _) in enumerate(arr.tolist()):
        out[n] = n > 0 and (kind != browse or item < 0 or item not in seen)
        seen.add(item)
    return out


def right_aligned(rows: Sequence[np.ndarray], length: int) -> np.ndarray:
    """Rows (each (n, ...) oldest first) -> (B, length, ...) with -1 front padding; only the
    last ``length`` entries of a longer row."""
    first = rows[0] if rows else np.zeros((0,), np.int32)
    out = np.full((len(rows), length, *first.shape[1:]), PAD, np.int32)
    for n, r in enumerate(rows):
        r = r[len(r) - min(len(r), length) :]
        if len(r):
            out[n, length - len(r) :] = r
    return out


def training_windows(
    histories: Sequence[History],
    length: int,
    *,
    cut: int | None = None,
    targets: Sequence[Sequence[bool]] | None = None,
    event_types: Sequence[str] = (),
    skip_repeats: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(items, types, next items) (W, length) int32 right-aligned windows over the known
    events at or before ``cut``: column j predicts the item of the event after it (-1: no
    loss there). A history longer than ``length + 1`` gives several windows, each event a
    target exactly once."""
    items, kinds, nxt = [], [], []
    for u, h in enumerate(histories):
        arr = _as_array(h)
        flags = _targets_of(arr, event_types, targets[u] if targets is not None else None)
        keep = arr[:, 0] >= 0
        if cut is not None:
            keep &= arr[:, 2] <= cut
        arr, flags = arr[keep], flags[keep]
        end = len(arr)
        while end >= 2:
            start = max(0, end - length - 1)
            chunk = arr[start:end]
            y = chunk[1:, 0].copy()
            if skip_repeats:
                y[~flags[start + 1 : end]] = PAD
            items.append(chunk[:-1, 0])
            kinds.append(chunk[:-1, 1])
            nxt.append(y)
            end -= length
    if not items:
        empty = np.zeros((0, length), np.int32)
        return empty, empty.copy(), empty.copy()
    return right_aligned(items, length), right_aligned(kinds, length), right_aligned(nxt, length)


# ----------------------------------------------------------------------------- the network


def project_embeddings(emb: np.ndarray, dim: int, scale: float, seed: int = 0) -> np.ndarray:
    """The MF item embeddings as a ``dim``-wide table: their leading principal directions
    (right singular vectors, uncentred: the projection that best keeps inner products),
    scaled so an entry's RMS is ``scale``; widths beyond the MF's are random."""
    emb = np.asarray(emb, np.float64)
    n, d0 = emb.shape
    rng = np.random.default_rng(seed)
    out = rng.normal(0.0, scale, (n, dim))
    if n and d0:
        _, _, vt = np.linalg.svd(emb, full_matrices=False)
        k = min(dim, vt.shape[0])
        proj = emb @ vt[:k].T
        rms = float(np.sqrt(np.mean(proj**2)))
        if rms > 0:
            out[:, :k] = proj * (scale / rms)
    return out.astype(np.float32)


def init_arrays(
    n_items: int,
    n_types: int,
    config: SequenceConfig,
    init_embeddings: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Initial weights (see SequenceWeights for the names)."""
    rng = np.random.default_rng(config.seed)
    d, s = config.dim, config.init_scale

    def glorot(a: int, b: int) -> np.ndarray:
        lim = math.sqrt(6.0 / (a + b))
        return rng.uniform(-lim, lim, (a, b)).astype(np.float32)

    if init_embeddings is not None and len(init_embeddings) == n_items:
        item = project_embeddings(init_embeddings, d, s, config.seed)
    else:
        item = rng.normal(0.0, s, (n_items, d)).astype(np.float32)
    p: dict[str, np.ndarray] = {
        "item_emb": item,
        "item_bias": np.zeros(n_items, np.float32),
        "pos_emb": rng.normal(0.0, s, (config.length, d)).astype(np.float32),
        "type_emb": rng.normal(0.0, s, (max(n_types, 1), d)).astype(np.float32),
    }
    ones, zeros = np.ones(d, np.float32), np.zeros(d, np.float32)
    for b in range(config.blocks):
        p |= {
            f"b{b}_ln1_g": ones.copy(),
            f"b{b}_ln1_b": zeros.copy(),
            f"b{b}_wqkv": np.concatenate([glorot(d, d) for _ in range(3)], axis=1),
            f"b{b}_bqkv": np.zeros(3 * d, np.float32),
            f"b{b}_wo": glorot(d, d),
            f"b{b}_bo": zeros.copy(),
            f"b{b}_ln2_g": ones.copy(),
            f"b{b}_ln2_b": zeros.copy(),
            f"b{b}_w1": glorot(d, d),
            f"b{b}_b1": zeros.copy(),
            f"b{b}_w2": glorot(d, d),
            f"b{b}_b2": zeros.copy(),
        }
    p |= {"final_g": ones, "final_b": zeros}
    return p


def _layer_norm(x, g, b):
    import tensorflow as tf

    xc = x - tf.reduce_mean(x, axis=-1, keepdims=True)  # (faster on CPU than tf.nn.moments)
    var = tf.reduce_mean(tf.square(xc), axis=-1, keepdims=True)
    return xc * (tf.math.rsqrt(var + LN_EPS) * g) + b


def encode(
    p: Mapping[str, Any],
    items,
    types,
    *,
    heads: int,
    last_only: bool = False,
    training: bool = False,
    dropout: float = 0.0,
):
    """The forward pass over right-aligned windows ``items``/``types`` (B, L) int32 whose
    known events are packed at the right (-1 before them): (B, L, d) outputs, or (B, d) of
    the last position with ``last_only`` (the last block then runs its attention and
    feed-forward for that one query). Training and the exported module both call this."""
    import tensorflow as tf

    n_items = tf.shape(p["item_emb"])[0]
    n_types = tf.shape(p["type_emb"])[0]
    shape = tf.shape(items)
    bsz, length = shape[0], shape[1]
    d = p["item_emb"].shape[-1]
    dh = d // heads
    valid = (items >= 0) & (items < n_items)
    vmask = tf.cast(valid, tf.float32)
    tvalid = tf.cast(valid & (types >= 0) & (types < n_types), tf.float32)
    x = (
        tf.gather(p["item_emb"], tf.where(valid, items, 0))
        + tf.gather(p["type_emb"], tf.where(tvalid > 0, types, 0)) * tvalid[..., None]
        + p["pos_emb"][None, -length:]
    )
    keep = vmask[..., None]

    def drop(t):
        return tf.nn.dropout(t, rate=dropout) if training and dropout > 0 else t

    x = drop(x) * keep
    causal = tf.linalg.band_part(tf.ones([length, length]), -1, 0)  # key j <= query i
    full_bias = (1.0 - causal[None, None] * vmask[:, None, None, :]) * NEG  # (B, 1, L, L)
    last_bias = (1.0 - vmask[:, None, None, :]) * NEG  # (B, 1, 1, L)
    blocks = sum(1 for k in p if k.endswith("_wqkv"))

    def heads_of(t, n):  # (B, n, d) -> (B, H, n, dh)
        return tf.transpose(tf.reshape(t, [bsz, n, heads, dh]), [0, 2, 1, 3])

    def dense(t, w, bias):  # (B, n, a) x (a, c): one 2-D matmul (einsum is slower on CPU)
        n, a = tf.shape(t)[1], t.shape[-1]
        out = tf.matmul(tf.reshape(t, [-1, a]), w) + bias
        return tf.reshape(out, [bsz, n, w.shape[-1]])

    for b in range(blocks):
        last = last_only and b == blocks - 1
        h = _layer_norm(x, p[f"b{b}_ln1_g"], p[f"b{b}_ln1_b"])
        if last:  # only the newest position's query, keys and values of all
            kv = dense(h, p[f"b{b}_wqkv"][:, d:], p[f"b{b}_bqkv"][d:])
            q = dense(h[:, -1:], p[f"b{b}_wqkv"][:, :d], p[f"b{b}_bqkv"][:d])
            k, v = kv[..., :d], kv[..., d:]
            x = x[:, -1:]
        else:
            qkv = dense(h, p[f"b{b}_wqkv"], p[f"b{b}_bqkv"])
            q, k, v = qkv[..., :d], qkv[..., d : 2 * d], qkv[..., 2 * d :]
        nq = 1 if last else length
        att = tf.matmul(heads_of(q, nq), heads_of(k, length), transpose_b=True)
        att = tf.nn.softmax(att / math.sqrt(dh) + (last_bias if last else full_bias), axis=-1)
        o = tf.matmul(att, heads_of(v, length))  # (B, H, nq, dh)
        o = tf.reshape(tf.transpose(o, [0, 2, 1, 3]), [bsz, nq, d])
        x = x + drop(dense(o, p[f"b{b}_wo"], p[f"b{b}_bo"]))
        h = _layer_norm(x, p[f"b{b}_ln2_g"], p[f"b{b}_ln2_b"])
        f = tf.nn.relu(dense(h, p[f"b{b}_w1"], p[f"b{b}_b1"]))
        x = x + drop(dense(f, p[f"b{b}_w2"], p[f"b{b}_b2"]))
        x = x * (keep[:, -1:] if last else keep)
    x = _layer_norm(x, p["final_g"], p["final_b"])
    return x[:, -1] if last_only else x


def pack(items, types, length: int):
    """Serving's input -> :func:`encode`'s: the last ``length`` columns (front-padded when
    fewer), unknown items (-1, out of range) moved to the front, order kept."""
    import tensorflow as tf

    items = items[:, -length:]
    types = types[:, -length:]
    pad = length - tf.shape(items)[1]
    items = tf.pad(items, [[0, 0], [pad, 0]], constant_values=PAD)
    types = tf.pad(types, [[0, 0], [pad, 0]], constant_values=PAD)
    known = items >= 0
    order = tf.argsort(tf.cast(known, tf.int32), axis=1, stable=True)
    items = tf.gather(items, order, batch_dims=1)
    types = tf.gather(types, order, batch_dims=1)
    return items, types


TOP_BLOCK = 16  # items per block of the two-stage top-k (models exported pad to a multiple)


def build_sequence_model(
    n_items: int,
    n_types: int,
    config: SequenceConfig,
    init_embeddings: np.ndarray | None = None,
    *,
    arrays: Mapping[str, np.ndarray] | None = None,
    trainable: bool = True,
):
    """The TF model: a tf.Module holding the weights as variables (``p``), with
    ``outputs(items, types, training)`` (B, L, d) for training and, for serving,
    ``logits_last(seq_items, seq_types)``: (B, N') logits of the next item (N' = N padded
    to a multiple of TOP_BLOCK with -inf) and (B,) whether the user has a known item.
    ``logits_last`` reads the output table as built (serve a trained model via
    :func:`head_from`)."""
    import tensorflow as tf

    if arrays is None:
        arrays = init_arrays(n_items, n_types, config, init_embeddings)
    init = dict(arrays)
    heads, dropout, length = config.heads, config.dropout, config.length
    n = int(init["item_emb"].shape[0])
    padded = -(-max(n, 1) // TOP_BLOCK) * TOP_BLOCK
    out_t = np.zeros((init["item_emb"].shape[1], padded), np.float32)
    out_t[:, :n] = init["item_emb"].T
    out_b = np.full(padded, -np.inf, np.float32)
    out_b[:n] = init["item_bias"]

    class SequenceModel(tf.Module):
        def __init__(self) -> None:
            super().__init__(name="sequence_model")
            self.p = {k: tf.Variable(v, trainable=trainable, name=k) for k, v in init.items()}
            # the output layer, transposed once and padded (a (B, d) x (d, N') matmul is
            # the cost of serving); the padding's -inf bias is never a top item and adds
            # nothing to the softmax
            self.out_t = tf.Variable(out_t, trainable=False, name="out_t")
            self.out_b = tf.Variable(out_b, trainable=False, name="out_b")
            self.n_items = tf.constant(n, tf.int32)

        def outputs(self, items, types, training=False):
            return encode(self.p, items, types, heads=heads, training=training, dropout=dropout)

        def logits_last(self, seq_items, seq_types):
            seq_items = tf.where(seq_items < self.n_items, seq_items, PAD)
            items, types = pack(seq_items, seq_types, length)
            # columns before the longest user's first known event are padding for all:
            # dropping them changes no output (they are masked keys)
            width = tf.maximum(tf.reduce_max(tf.reduce_sum(tf.cast(items >= 0, tf.int32), 1)), 1)
            items, types = items[:, -width:], types[:, -width:]
            h = encode(self.p, items, types, heads=heads, last_only=True)
            return tf.matmul(h, self.out_t) + self.out_b, items[:, -1] >= 0

        def to_weights(self, event_types: Sequence[str]) -> SequenceWeights:
            return SequenceWeights(
                {k: np.asarray(v.numpy(), np.float32) for k, v in self.p.items()},
                heads,
                list(event_types),
                length,
            )

    return SequenceModel()


def head_from(weights: SequenceWeights):
    """The exported model's sequence part, from trained weights (non-trainable)."""
    cfg = SequenceConfig(
        length=weights.length, dim=weights.dim, blocks=max(weights.blocks, 1), heads=weights.heads
    )
    return build_sequence_model(
        weights.n_items, len(weights.event_types), cfg, arrays=weights.arrays, trainable=False
    )


def top_k_blocked(logits, k):
    """tf.math.top_k(logits, k) (same values and indices, ties to the lower index) for a
    width that is a multiple of TOP_BLOCK and k <= width / TOP_BLOCK / 4, several times
    faster on CPU: the top k blocks by their maximum hold the top k items, so only their
    k x TOP_BLOCK items are ranked."""
    import tensorflow as tf

    b, n = tf.shape(logits)[0], tf.shape(logits)[1]
    blocks = tf.reshape(logits, [b, n // TOP_BLOCK, TOP_BLOCK])
    best = tf.math.top_k(tf.reduce_max(blocks, axis=2), k=k)
    chosen = tf.sort(best.indices, axis=1)  # ascending, so ties go to the lower index
    cand = tf.reshape(tf.gather(blocks, chosen, batch_dims=1), [b, k * TOP_BLOCK])
    top = tf.math.top_k(cand, k=k)
    block = tf.gather(chosen, top.indices // TOP_BLOCK, batch_dims=1)
    return top.values, block * TOP_BLOCK + top.indices % TOP_BLOCK


def next_items(head, seq_items, seq_types, k):
    """``next_items``: top max(k) items by softmax probability over the catalog, best first;
    -1 / 0 for a user without a known item."""
    import tensorflow as tf

    logits, ok = head.logits_last(seq_items, seq_types)
    width = tf.shape(logits)[1]
    kk = tf.minimum(tf.maximum(tf.reduce_max(tf.concat([k, [1]], 0)), 1), head.n_items)
    values, indices = tf.cond(
        kk * 4 * TOP_BLOCK <= width,
        lambda: top_k_blocked(logits, kk),
        lambda: tuple(tf.math.top_k(logits, k=kk)),
    )
    top = values[:, :1]  # the row's maximum: log-sum-exp without another pass for it
    lse = top + tf.math.log(tf.reduce_sum(tf.exp(logits - top), axis=1, keepdims=True))
    ok = ok[:, None]
    return {
        "items": tf.where(ok, indices, PAD),
        "scores": tf.where(ok, tf.exp(values - lse), 0.0),
    }


class SequenceRunner:
    """Trained weights' ``next_items`` / ``next_scores`` run over numpy rows in chunks:
    training's use of the very functions the export serves (the replay's
    ``next_in_sequence`` candidates, the fused network's feature)."""

    def __init__(self, weights: SequenceWeights, chunk: int = 512) -> None:
        import tensorflow as tf

        self.weights = weights
        self.chunk = chunk
        head = head_from(weights)
        spec = tf.TensorSpec([None, None], tf.int32)
        self._items = tf.function(
            lambda i, t, k: next_items(head, i, t, k),
            input_signature=[spec, spec, tf.TensorSpec([None], tf.int32)],
        )
        self._scores = tf.function(
            lambda i, t, w: next_scores(head, i, t, w)["scores"], input_signature=[spec] * 3
        )

    def next_items(
        self, seq_items: np.ndarray, seq_types: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(B, k) item indices (-1: none) and probabilities, best first, per row."""
        import tensorflow as tf

        n = len(seq_items)
        k = max(1, min(int(k), self.weights.n_items))
        items = np.full((n, k), PAD, np.int32)
        scores = np.zeros((n, k), np.float32)
        for a in range(0, n, self.chunk):
            b = min(a + self.chunk, n)
            got = self._items(
                tf.constant(seq_items[a:b], tf.int32),
                tf.constant(seq_types[a:b], tf.int32),
                tf.constant(np.full(b - a, k, np.int32)),
            )
            items[a:b] = got["items"].numpy()
            scores[a:b] = got["scores"].numpy()
        return items, scores

    def next_scores(
        self, seq_items: np.ndarray, seq_types: np.ndarray, wanted: np.ndarray
    ) -> np.ndarray:
        """(B, W) probabilities of the ``wanted`` item indices (0 for -1), per row."""
        import tensorflow as tf

        out = np.zeros(wanted.shape, np.float32)
        for a in range(0, len(wanted), self.chunk):
            part = slice(a, a + self.chunk)
            inputs = (seq_items[part], seq_types[part], wanted[part])
            out[part] = self._scores(*(tf.constant(x, tf.int32) for x in inputs)).numpy()
        return out


def sequence_feature(xp: Any, p: Any, n_items: Any) -> Any:
    """The fused network's input from the sequence model's probability ``p`` of an item:
    ``log1p(p * N)``, the probability in units of the uniform one (0 for an item the model
    does not know or a user without a sequence). ``xp``: numpy (training) or ``tf.math``
    (the exported `score`), so both compute it alike."""
    return xp.log1p(p * n_items)


def next_scores(head, seq_items, seq_types, items):
    """``next_scores``: the same probability for given items (0 for -1 / out of range)."""
    import tensorflow as tf

    logits, ok = head.logits_last(seq_items, seq_types)
    lse = tf.reduce_logsumexp(logits, axis=1, keepdims=True)
    known = (items >= 0) & (items < head.n_items) & ok[:, None]
    picked = tf.gather(logits, tf.where(known, items, 0), batch_dims=1)
    return {"scores": tf.where(known, tf.exp(picked - lse), 0.0)}


# ----------------------------------------------------------------------------- training


@dataclass(slots=True)
class _Adam:
    """Adam on a list of variables: TF's fused kernel, one op per variable (a Keras
    optimiser would want Keras variables; this keeps the model plain tf.Variables)."""

    variables: list[Any]
    lr: float
    m: list[Any] = field(default_factory=list)
    v: list[Any] = field(default_factory=list)
    t: Any = None

    def __post_init__(self) -> None:
        import tensorflow as tf

        self.m = [tf.Variable(tf.zeros_like(x), trainable=False) for x in self.variables]
        self.v = [tf.Variable(tf.zeros_like(x), trainable=False) for x in self.variables]
        self.t = tf.Variable(0.0, trainable=False)

    def apply(self, grads: Sequence[Any]) -> None:
        import tensorflow as tf

        b1, b2 = 0.9, 0.999
        t = self.t.assign_add(1.0)
        for g, x, m, v in zip(grads, self.variables, self.m, self.v, strict=True):
            if g is None:
                continue
            tf.raw_ops.ResourceApplyAdam(
                var=x.handle,
                m=m.handle,
                v=v.handle,
                beta1_power=b1**t,
                beta2_power=b2**t,
                lr=tf.constant(self.lr, tf.float32),
                beta1=tf.constant(b1, tf.float32),
                beta2=tf.constant(b2, tf.float32),
                epsilon=tf.constant(1e-8, tf.float32),
                grad=tf.convert_to_tensor(g),
            )


def fit_sequence(
    histories: Sequence[History],
    n_items: int,
    event_types: Sequence[str],
    config: SequenceConfig,
    init_embeddings: np.ndarray | None = None,
    *,
    cut: int | None = None,
    targets: Sequence[Sequence[bool]] | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> tuple[SequenceWeights, dict[str, Any]]:
    """Train on the known events at or before ``cut`` (all when None); returns the weights
    and the history (``loss`` per epoch, ``windows``, ``positions``, ``seconds``)."""
    import tensorflow as tf

    started = time.perf_counter()
    items, kinds, nxt = training_windows(
        histories,
        config.length,
        cut=cut,
        targets=targets,
        event_types=event_types,
        skip_repeats=config.skip_repeats,
    )
    tf.random.set_seed(config.seed)
    model = build_sequence_model(n_items, len(event_types), config, init_embeddings)
    variables = list(model.p.values())
    opt = _Adam(variables, config.learning_rate)
    emb, bias = model.p["item_emb"], model.p["item_bias"]
    sampled = config.loss == "sampled" and config.samples < n_items
    spec = tf.TensorSpec([None, None], tf.int32)  # width: the batch's longest window

    @tf.function(input_signature=[spec, spec, spec])
    def step(x_items, x_types, y):
        with tf.GradientTape() as tape:
            h = model.outputs(x_items, x_types, training=True)
            at = tf.where(y >= 0)
            hs, ys = tf.gather_nd(h, at), tf.gather_nd(y, at)
            if sampled:
                labels = tf.cast(ys[:, None], tf.int64)
                cand = tf.random.uniform_candidate_sampler(
                    labels, 1, config.samples, unique=True, range_max=n_items
                )
                per = tf.nn.sampled_softmax_loss(
                    emb, bias, labels, hs, config.samples, n_items, sampled_values=cand
                )
            else:
                logits = tf.matmul(hs, emb, transpose_b=True) + bias
                per = tf.nn.sparse_softmax_cross_entropy_with_logits(ys, logits)
            loss = tf.reduce_mean(per)
        opt.apply(tape.gradient(loss, variables))
        return loss, tf.cast(tf.shape(ys)[0], tf.float32)

    losses: list[float] = []
    rng = np.random.default_rng(config.seed)
    positions = int(np.sum(nxt >= 0))
    width = np.sum(items >= 0, axis=1)  # events per window (right-aligned)
    if positions and n_items > 1:
        for epoch in range(config.epochs):
            total, count = 0.0, 0.0
            for sel in _batches(rng, width, config.batch_size):
                if not np.any(nxt[sel] >= 0):
                    continue
                w = max(int(width[sel].max()), 1)  # all-padding columns change nothing
                loss, n = step(items[sel, -w:], kinds[sel, -w:], nxt[sel, -w:])
                total += float(loss) * float(n)
                count += float(n)
            losses.append(total / max(count, 1.0))
            if on_epoch is not None:
                on_epoch(epoch, losses[-1])
    history = {
        "loss": losses,
        "windows": len(items),
        "positions": positions,
        "seconds": round(time.perf_counter() - started, 2),
    }
    return model.to_weights(event_types), history


def _batches(rng: np.random.Generator, width: np.ndarray, size: int) -> list[np.ndarray]:
    """Shuffled batches of windows of similar width (less padding to compute): a random
    order, sorted by width within runs of 8 batches, the batches shuffled."""
    order = rng.permutation(len(width))
    run = size * 8
    batches = []
    for s in range(0, len(order), run):
        part = order[s : s + run]
        part = part[np.argsort(width[part], kind="stable")]
        batches += [part[i : i + size] for i in range(0, len(part), size)]
    return [batches[i] for i in rng.permutation(len(batches))]


# ----------------------------------------------------------------------------- validation


def sequence_validation(
    weights: SequenceWeights,
    histories: Sequence[History],
    cut: int,
    *,
    k: int = 20,
    targets: Sequence[Sequence[bool]] | None = None,
    batch: int = 512,
) -> dict[str, Any]:
    """HR@k and NDCG@k of the next-item ranking over the whole catalog on the events after
    ``cut``: every target event (``targets``, else :func:`build_histories`'s rule on the
    indices) of a user with an earlier event, predicted from the ``length`` events before
    it. A target whose item the model does not know, or whose user has no known item
    before it, is a miss. Beside it the same for popularity (training events' counts)."""
    import tensorflow as tf

    head = head_from(weights)
    n_items = weights.n_items
    counts = np.zeros(n_items, np.float64)
    rows_i, rows_t, want = [], [], []
    for u, h in enumerate(histories):
        arr = _as_array(h)
        flags = _targets_of(arr, weights.event_types, targets[u] if targets is not None else None)
        known_train = arr[(arr[:, 2] <= cut) & (arr[:, 0] >= 0), 0]
        np.add.at(counts, known_train[known_train < n_items], 1.0)
        for j in np.flatnonzero((arr[:, 2] > cut) & flags).tolist():
            if j == 0:
                continue
            ctx = arr[max(0, j - weights.length) : j]
            rows_i.append(ctx[:, 0])
            rows_t.append(ctx[:, 1])
            want.append(int(arr[j, 0]))
    n = len(want)
    ranks = np.full(n, np.iinfo(np.int64).max, np.int64)
    spec = tf.TensorSpec([None, None], tf.int32)
    fn = tf.function(head.logits_last, input_signature=[spec, spec])
    if n:
        seq_i = right_aligned(rows_i, weights.length)
        seq_t = right_aligned(rows_t, weights.length)
        target = np.asarray(want, np.int64)
        for s in range(0, n, batch):
            logits, ok = fn(tf.constant(seq_i[s : s + batch]), tf.constant(seq_t[s : s + batch]))
            scores = logits.numpy()[:, :n_items]
            ranks[s : s + batch] = _ranks(scores, ok.numpy(), target[s : s + batch])
    order = np.lexsort((np.arange(n_items), -counts))  # best first, ties to the lower index
    rank_of = np.empty(n_items + 1, np.int64)
    rank_of[order] = np.arange(n_items)
    rank_of[n_items] = np.iinfo(np.int64).max  # an unknown item: a miss
    tgt = np.asarray(want, np.int64)
    pop_rank = rank_of[np.where((tgt >= 0) & (tgt < n_items), tgt, n_items)]
    out: dict[str, Any] = {"k": k, "targets": n, "item_known": int(sum(w >= 0 for w in want))}
    out |= _hit_metrics(ranks, k)
    out["popularity"] = _hit_metrics(pop_rank, k)
    out["rule"] = (
        f"every event after the cut of a user seen before, except repeat browses; ranked over "
        f"the whole catalog from the last {weights.length} events before it; unknown item: miss"
    )
    return out


def _ranks(scores: np.ndarray, ok: np.ndarray, target: np.ndarray) -> np.ndarray:
    """0-based rank of each row's target as top_k orders (ties to the lower index);
    int64 max for a target outside the catalog or a row without output."""
    out = np.full(len(target), np.iinfo(np.int64).max, np.int64)
    good = np.flatnonzero(ok & (target >= 0) & (target < scores.shape[1]))
    if len(good):
        s = scores[good]
        t = target[good]
        mine = s[np.arange(len(good)), t][:, None]
        cols = np.arange(s.shape[1])[None, :]
        out[good] = np.sum((s > mine) | ((s == mine) & (cols < t[:, None])), axis=1)
    return out


def _hit_metrics(ranks: np.ndarray, k: int) -> dict[str, float]:
    n = max(len(ranks), 1)
    hit = ranks < k
    return {
        f"hr@{k}": float(hit.sum() / n),
        f"ndcg@{k}": float(np.sum(1.0 / np.log2(ranks[hit].astype(np.float64) + 2.0)) / n),
    }
