"""Model fusion (the article's section 3.5): the sequence model's score of a candidate as one
more input of the interest-strength network.

The fused network is the network of models.training.ranker over the same per-pair inputs
plus ``sequence_feature(p)``, where ``p`` is the sequence model's probability of the
candidate as the user's next item given the user's recent events (the `next_scores`
signature's value). Training computes ``p`` for every replayed pair from the recent events
the replay recorded before the pair's event (models.training.replay), with the very
function the exported `score` runs (models.training.sequence.next_scores), so the feature
means the same at training and serving time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models.training.replay import RankGroup
from models.training.sequence import SequenceRunner, SequenceWeights, sequence_feature

CHUNK = 512  # events per next_scores call


def pair_probabilities(
    weights: SequenceWeights,
    seq_items: np.ndarray,
    seq_types: np.ndarray,
    rows: np.ndarray,
    items: np.ndarray,
) -> np.ndarray:
    """p(item | recent events) for pairs: ``rows[n]`` is pair n's row of ``seq_items`` /
    ``seq_types`` (-1: no sequence), ``items[n]`` its model item index (-1: unknown); both
    give 0. The pairs of one event share one sequence: one row per event in each call."""
    rows = np.asarray(rows, np.int64)
    items = np.asarray(items, np.int64)
    out = np.zeros(len(rows), np.float32)
    pick = np.flatnonzero((rows >= 0) & (items >= 0))
    if not len(pick) or not len(seq_items):
        return out
    pick = pick[np.argsort(rows[pick], kind="stable")]
    events, first, counts = np.unique(rows[pick], return_index=True, return_counts=True)
    pos = np.arange(len(pick)) - np.repeat(first, counts)  # the pair's column in its event
    group = np.repeat(np.arange(len(events)), counts)
    wanted = np.full((len(events), int(counts.max())), -1, np.int32)
    wanted[group, pos] = items[pick]
    got = SequenceRunner(weights, CHUNK).next_scores(seq_items[events], seq_types[events], wanted)
    out[pick] = got[group, pos]
    return out


def fused_input(x: np.ndarray, p: np.ndarray, n_items: int) -> np.ndarray:
    """The network's input ``x`` with the sequence feature as its last column (the order the
    exported fused `score` builds: per-pair features, then the sequence feature)."""
    col = sequence_feature(np, np.asarray(p, np.float64), float(n_items)).astype(np.float32)
    return np.concatenate([np.asarray(x, np.float32), col[:, None]], axis=1)


def group_probabilities(
    weights: SequenceWeights,
    seq_items: np.ndarray,
    seq_types: np.ndarray,
    groups: Sequence[RankGroup],
) -> list[np.ndarray]:
    """p(item | recent events) of every candidate of each validation group (its union)."""
    sizes = [len(g.item) if g.item is not None else 0 for g in groups]
    if not sum(sizes):
        return [np.zeros(n, np.float32) for n in sizes]
    rows = np.repeat([g.seq for g in groups], sizes)
    items = np.concatenate([g.item for g in groups if g.item is not None])
    p = pair_probabilities(weights, seq_items, seq_types, rows, items)
    return np.split(p, np.cumsum(sizes)[:-1])
