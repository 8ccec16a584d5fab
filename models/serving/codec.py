"""Between the core's batches and a signature's tensors: encode requests, decode replies.

The same functions serve the in-process scorer and the TF Serving client, so both send
the SavedModel identical inputs and read identical outputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields, replace
from typing import TypeVar

import numpy as np

from models.serving.model_dir import ModelView
from stream.core.errors import ScorerError
from stream.core.features import N_FEATURES
from stream.core.sequence import RecentEvents, sequence_columns
from stream.core.types import (
    CandidateBatch,
    Recommended,
    RecommendReason,
    ScoreBatch,
    SequenceBatch,
)

B = TypeVar("B", ScoreBatch, CandidateBatch, SequenceBatch)


def user_inputs(
    vectors: np.ndarray,
    categories: Sequence[tuple[Mapping[str, float], Mapping[str, float]]],
    view: ModelView,
) -> dict[str, np.ndarray]:
    """The users' half of every signature: vectors and category strengths in model index."""
    cat = view.catalog
    b = len(categories)
    vec = np.asarray(vectors, np.float32)
    if vec.shape != (b, 2, view.vectors.dim):
        raise ScorerError(
            f"vectors have shape {vec.shape}, "
            f"model {view.version} needs ({b}, 2, {view.vectors.dim})"
        )
    n_cat = len(cat.categories)
    cat_s = np.zeros((b, n_cat), np.float32)
    cat_l = np.zeros((b, n_cat), np.float32)
    for row, (short, long) in enumerate(categories):
        _fill(cat_s[row], short, cat.category_index, cat.other_slot)
        _fill(cat_l[row], long, cat.category_index, cat.other_slot)
    return {
        "short": np.ascontiguousarray(vec[:, 0]),
        "long": np.ascontiguousarray(vec[:, 1]),
        "cat_short": cat_s,
        "cat_long": cat_l,
    }


def encode_batch(batch: ScoreBatch, view: ModelView) -> dict[str, np.ndarray]:
    """ScoreBatch -> the `recommend` signature's inputs, in the model's item/category index."""
    cat = view.catalog
    b = len(batch.user_ids)
    inputs = user_inputs(batch.vectors, batch.categories, view)
    excl = [[cat.item_index[i] for i in ex if i in cat.item_index] for ex in batch.exclude]
    # column 0 stays -1: TF Serving's batcher pads with a tensor's first element
    width = 1 + max([0, *(len(e) for e in excl)])
    exclude = np.full((b, width), -1, np.int32)
    for row, idx in enumerate(excl):
        exclude[row, 1 : 1 + len(idx)] = idx
    inputs["exclude"] = exclude
    inputs["k"] = np.full(b, max(1, int(batch.k)), np.int32)
    return inputs


def encode_candidates(batch: CandidateBatch, view: ModelView) -> dict[str, np.ndarray]:
    """CandidateBatch -> the `score` signature's inputs (items -1: unknown to the model;
    a fused version's also takes the users' recent events).

    Rows are padded to the longest candidate list; padding is cut off again by
    :func:`decode_candidates`, so its value does not matter.
    """
    inputs = user_inputs(batch.vectors, batch.categories, view)
    b = len(batch.user_ids)
    width = max([1, *(len(i) for i in batch.items)])
    n_feat = feature_count(batch)
    items = np.full((b, width), -1, np.int32)
    feats = np.zeros((b, width, n_feat), np.float32)
    index = view.catalog.item_index
    for row, (ids, f) in enumerate(zip(batch.items, batch.features, strict=True)):
        if not ids:
            continue
        items[row, : len(ids)] = [index.get(i, -1) for i in ids]
        feats[row, : len(ids)] = np.asarray(f, np.float32).reshape(len(ids), n_feat)
    inputs["items"] = items
    inputs["feats"] = feats
    if view.fused:  # its `score` reads the users' recent events too (the sequence feature)
        seqs = batch.sequences if batch.sequences is not None else [RecentEvents()] * b
        seq = encode_sequences(SequenceBatch(batch.user_ids, seqs, 1), view)
        inputs["seq_items"], inputs["seq_types"] = seq["seq_items"], seq["seq_types"]
    return inputs


def feature_count(batch: CandidateBatch) -> int:
    for f in batch.features:
        a = np.asarray(f)
        if a.ndim == 2:
            return int(a.shape[1])
    return N_FEATURES


def decode_candidates(batch: CandidateBatch, scores: np.ndarray) -> list[np.ndarray]:
    """(B, M) scores -> one (M_b,) array per user, padding dropped, clipped to [0, 1]."""
    s = np.clip(np.asarray(scores, np.float64).reshape(len(batch.user_ids), -1), 0.0, 1.0)
    return [s[row, : len(ids)].copy() for row, ids in enumerate(batch.items)]


def no_scores(batch: CandidateBatch) -> list[np.ndarray]:
    return [np.zeros(0) for _ in batch.user_ids]


def _fill(
    row: np.ndarray, strengths: Mapping[str, float], index: Mapping[str, int], other: int
) -> None:
    """Categories the model does not know pool in the `__other__` slot (keeps totals right)."""
    for name, value in strengths.items():
        row[index.get(name, other)] += value


def decode_result(
    batch: ScoreBatch, view: ModelView, items: np.ndarray, scores: np.ndarray
) -> list[list[Recommended]]:
    """Item indices and scores -> Recommended lists (padding -1 dropped, at most k).

    Vectorised per batch where it can be: this runs for every user the stream rescores.
    """
    out: list[list[Recommended]] = []
    names, cats, trending = view.item_names, view.item_category_names, view.trending
    items = np.asarray(items)[:, : max(1, batch.k)]
    scores = np.clip(np.asarray(scores, np.float64)[:, : items.shape[1]], 0.0, 1.0).tolist()
    has_vec = (np.abs(np.asarray(batch.vectors)).sum(axis=(1, 2)) > 0).tolist()
    for row, idx_row in enumerate(items.tolist()):
        short, long = batch.categories[row]
        recs: list[Recommended] = []
        for idx, score in zip(idx_row, scores[row], strict=True):
            if idx < 0:
                continue
            c = cats[idx]
            recs.append(
                Recommended(
                    names[idx], score, c, _reason(c, short, long, has_vec[row], trending[idx])
                )
            )
        out.append(recs)
    return out


def _reason(
    category: str | None,
    short: Mapping[str, float],
    long: Mapping[str, float],
    has_vector: bool,
    trending: bool,
) -> str:
    """Why an item was chosen, from what drove its retrieval."""
    in_user_cat = category is not None and (
        short.get(category, 0.0) > 0 or long.get(category, 0.0) > 0
    )
    if in_user_cat:
        return RecommendReason.trending_in_category if trending else RecommendReason.your_interest
    if has_vector:
        return RecommendReason.similar_to_your_interests
    return RecommendReason.popular


def encode_sequences(batch: SequenceBatch, view: ModelView) -> dict[str, np.ndarray]:
    """SequenceBatch -> the `next_items` signature's inputs: each user's recent events as a
    right-aligned row of the model's item and event-type indices (-1: padding, unknown).

    Every row is the model's full sequence length wide, so TF Serving's batcher never pads
    two requests to a common width."""
    info = view.sequence
    if info is None:
        raise ScorerError(f"model {view.version} has no sequence model")
    types = {t: n for n, t in enumerate(info.event_types)}
    items, kinds = sequence_columns(batch.sequences, view.catalog.item_index, types, info.length)
    return {
        "seq_items": items,
        "seq_types": kinds,
        "k": np.full(len(batch.user_ids), max(1, int(batch.k)), np.int32),
    }


def decode_next(
    batch: SequenceBatch, view: ModelView, items: np.ndarray, scores: np.ndarray
) -> list[list[Recommended]]:
    """The `next_items` reply -> Recommended lists (reason ``next_in_sequence``, padding
    -1 dropped, at most k per user, best first)."""
    names, cats = view.item_names, view.item_category_names
    items = np.asarray(items).reshape(len(batch.user_ids), -1)[:, : max(1, batch.k)]
    scores = np.clip(np.asarray(scores, np.float64).reshape(len(batch.user_ids), -1), 0.0, 1.0)
    reason = RecommendReason.next_in_sequence
    return [
        [
            Recommended(names[i], s, cats[i], reason)
            for i, s in zip(row, score_row, strict=False)
            if i >= 0
        ]
        for row, score_row in zip(items.tolist(), scores[:, : items.shape[1]].tolist(), strict=True)
    ]


def empty_result(batch: ScoreBatch | SequenceBatch) -> list[list[Recommended]]:
    return [[] for _ in batch.user_ids]


def split(batch: B, size: int) -> list[B]:
    """A batch of users in parts of at most ``size`` users (every per-user field sliced)."""
    n = len(batch.user_ids)
    if n <= size:
        return [batch]
    per_user = [
        f.name for f in fields(batch) if f.name != "k" and getattr(batch, f.name) is not None
    ]
    return [
        replace(batch, **{name: getattr(batch, name)[a : a + size] for name in per_user})
        for a in range(0, n, size)
    ]
