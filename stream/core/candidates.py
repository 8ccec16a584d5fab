"""Candidate sources and blended ranking for a whole rescoring batch, as arrays.

No single source wins everywhere (the user's own items on one shop, trending items in the
user's categories on another, model retrieval on a third), and retrieval alone cannot reach
items first seen after training.  So each user's candidates are the union of four sources,
each tagged with the reason it was proposed (sources in the order they fill the union):

* ``your_interest``: the user's strongest items (decayed item strengths in the state);
* ``trending_in_category``: trending items in the user's strongest categories, a quota per
  category in proportion to the user's strength in it;
* ``similar_to_your_interests``: the model's retrieval results (when a model is loaded);
* ``popular``: global trending, the last fallback for users with almost no history;
* ``next_in_sequence``: the sequence model's likeliest next items given the user's recent
  events in order (when the loaded model has one).

Without a model the union is ranked by a transparent blend of normalised strengths
(stream.core.features); with one, the interest-strength network scores every candidate.
:func:`recommend_batch` is the single path the worker and the offline evaluation both call.

A batch is ranked as columns: the users' sums, the union and every candidate's features are
arrays over the whole batch (interned ids, stream.core.vocab), so the work per candidate is
numpy's, not Python's. What stays per user is ordering its final top k (ties break on item
id, a string). Pure: no faust, kafka or tensorflow.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from stream.core.decay import LONG, SHORT, starts
from stream.core.features import (
    EPS,
    Components,
    UserColumns,
    blend_scores,
    components_of,
    features_from,
    gather,
)
from stream.core.interest import UserState, category_strengths, interest_vector
from stream.core.messages import INTERESTS_PER_HORIZON
from stream.core.sequence import RecentEvents
from stream.core.trending import TrendEntry
from stream.core.types import (
    Candidate,
    CandidateBatch,
    Recommended,
    RecommendReason,
    ScoreBatch,
    Scorer,
    SequenceBatch,
)
from stream.core.vocab import ITEM_BITS, TRENDS, VOCABULARY, Vocabulary, two_horizon_rank

POLICIES = ("keep", "demote", "exclude")
DEMOTE_FACTOR = 0.25  # policy "demote": a purchased item's score is multiplied by this
OWN_SHARE, TREND_SHARE = 0.4, 0.4  # of the candidate limit; retrieval gets the rest
TREND_CATEGORIES = 5  # the user's strongest categories trending items are drawn from
MIN_CANDIDATES = 20  # global trending fills a thin union up to this many
REASONS = tuple(RecommendReason)  # reason codes of Union.reason, in source order
OWN, TRENDING, SIMILAR, POPULAR, SEQUENCE = range(5)
SEQUENCE_CANDIDATES = 20  # the sequence model's next items proposed per user


@dataclass(slots=True)
class Union:
    """The candidate union of a batch: one row per (user, item), grouped by user."""

    user: np.ndarray  # (M,) int64 index of the user in the batch
    item: np.ndarray  # (M,) int64 interned item id
    cat: np.ndarray  # (M,) int64 interned category id, -1: none
    reason: np.ndarray  # (M,) int64 index into REASONS
    start: np.ndarray  # (B + 1,) each user's first row

    def rows(self, b: int) -> slice:
        return slice(int(self.start[b]), int(self.start[b + 1]))


# --------------------------------------------------------------------------- generation


def generate_batch(
    cols: UserColumns,
    *,
    trending: Mapping[str, TrendEntry],
    global_top: Sequence[tuple[str, str | None, float]],
    retrieved: Sequence[Sequence[Recommended]] | None = None,
    sequenced: Sequence[Sequence[Recommended]] | None = None,
    policy: str = "demote",
    limit: int = 200,
    vocab: Vocabulary = VOCABULARY,
) -> Union:
    """The union of the sources per user, at most ``limit``, each item once (first reason
    wins).

    Budgets: the user's items up to 40% of ``limit``, trending up to 40% split across the
    user's strongest categories in proportion to their strength, then the sequence model's
    next items (``sequenced``, at most SEQUENCE_CANDIDATES per user, not already proposed),
    retrieval the rest; global trending only fills a union smaller than MIN_CANDIDATES (a
    thin history).  Policy ``exclude`` keeps purchased items out of every source.
    """
    if policy not in POLICIES:
        raise ValueError(f"purchased policy {policy!r} (allowed: {', '.join(POLICIES)})")
    exclude = policy == "exclude"
    own = _own(cols, max(1, math.ceil(limit * OWN_SHARE)), exclude)
    sizes = np.bincount(own.user, minlength=cols.size)
    room = max(1, math.ceil(limit * TREND_SHARE))
    parts = [own]
    trend = _trending(cols, trending, room, np.minimum(limit, sizes + room) - sizes, vocab)
    parts.append(trend)
    sizes = sizes + np.bincount(trend.user, minlength=cols.size)
    if sequenced is not None:
        budget = np.minimum(limit - sizes, SEQUENCE_CANDIDATES)
        seq = _listed(cols, parts, _recommended(sequenced, SEQUENCE, vocab), budget, exclude)
        parts.append(seq)
        sizes = sizes + np.bincount(seq.user, minlength=cols.size)
    if retrieved is not None:
        sim = _listed(cols, parts, _recommended(retrieved, SIMILAR, vocab), limit - sizes, exclude)
        parts.append(sim)
        sizes = sizes + np.bincount(sim.user, minlength=cols.size)
    fill = min(limit, MIN_CANDIDATES)
    if global_top and (sizes < fill).any():
        thin = np.flatnonzero(sizes < fill)
        parts.append(_listed(cols, parts, _popular(thin, global_top, vocab), fill - sizes, exclude))
    return _concat(parts, cols.size)


def _rows_union(user: np.ndarray, item: np.ndarray, cat: np.ndarray, reason: int) -> Union:
    return Union(user, item, cat, np.full(len(user), reason, np.int64), np.zeros(0, np.int64))


def _concat(parts: list[Union], users: int) -> Union:
    user = np.concatenate([p.user for p in parts])
    order = np.argsort(user, kind="stable")  # by user, sources (and items) in their order
    start = starts(np.bincount(user, minlength=users))
    return Union(
        user[order],
        np.concatenate([p.item for p in parts])[order],
        np.concatenate([p.cat for p in parts])[order],
        np.concatenate([p.reason for p in parts])[order],
        start,
    )


def _own(cols: UserColumns, cap: int, exclude: bool) -> Union:
    """The user's strongest kept items, at most ``cap`` (purchased ones dropped under
    ``exclude`` without being replaced)."""
    sizes = np.diff(cols.item_start)
    keep = np.ones(len(cols.item_id), bool)
    for b in np.flatnonzero(sizes > cap).tolist():  # heavy users: rank their items
        lo, hi = int(cols.item_start[b]), int(cols.item_start[b + 1])
        table = cols.states[b].items
        order = two_horizon_rank(table.keys_, cols.item_vals[lo:hi])
        keep[lo:hi] = False
        keep[lo + order[:cap]] = True
    if exclude:
        keep &= ~cols.item_bought
    rows = np.flatnonzero(keep)
    return _rows_union(cols.item_user[rows], cols.item_id[rows], cols.item_cat[rows], OWN)


def _sequential_sum(values: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Per-group sums added left to right, as Python's ``sum`` adds (same rounding)."""
    sizes = np.diff(start)
    if len(sizes) <= 8:  # a handful of groups (one user): Python's own sum is the rule
        bounds = start.tolist()
        flat = values.tolist()
        return np.array([sum(flat[a:b]) for a, b in itertools.pairwise(bounds)], np.float64)
    out = np.zeros(len(sizes), np.float64)
    for j in range(int(sizes.max(initial=0))):
        has = sizes > j
        out[has] += values[start[:-1][has] + j]
    return out


def _category_shares(cols: UserColumns, vocab: Vocabulary) -> tuple[np.ndarray, ...]:
    """The users' strongest categories with their share of the (positive) strength:
    (user, category, share) rows, strongest first within each user, at most 5 per user.

    A category is among the user's 5 strongest of either horizon (ties: the larger name);
    its share is the mean over horizons of its positive strength over the user's total."""
    if not len(cols.cat_id):
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    rank = vocab.category_rank()[cols.cat_id]
    chosen = np.zeros(len(cols.cat_id), bool)
    for h in (LONG, SHORT):
        order = np.lexsort((-rank, -cols.cat_vals[:, h], cols.cat_user))
        chosen[order[_position(cols.cat_user[order]) < TREND_CATEGORIES]] = True
    pos = np.maximum(cols.cat_vals, 0.0)
    tot_s = _sequential_sum(pos[:, SHORT], cols.cat_start)
    tot_l = _sequential_sum(pos[:, LONG], cols.cat_start)
    tot_s[tot_s == 0] = EPS
    tot_l[tot_l == 0] = EPS
    u = cols.cat_user
    share = 0.5 * (pos[:, SHORT] / tot_s[u]) + 0.5 * (pos[:, LONG] / tot_l[u])
    rows = np.flatnonzero(chosen)
    order = rows[np.lexsort((rank[rows], -share[rows], u[rows]))]
    best = order[_position(u[order]) < TREND_CATEGORIES]
    best = best[share[best] > 0]
    return u[best], cols.cat_id[best], share[best]


def _position(groups: np.ndarray) -> np.ndarray:
    """Each row's position within its run of equal (sorted) group values."""
    n = len(groups)
    if not n:
        return np.zeros(0, np.int64)
    first = np.ones(n, bool)
    first[1:] = groups[1:] != groups[:-1]
    starts = np.flatnonzero(first)
    return np.arange(n) - np.repeat(starts, np.diff(np.append(starts, n)))


def _trending(
    cols: UserColumns,
    trending: Mapping[str, TrendEntry],
    room: int,
    budget: np.ndarray,
    vocab: Vocabulary,
) -> Union:
    """Trending items of each user's strongest categories, a quota per category in
    proportion to its share; the user's own items are skipped, an item already proposed
    (by an earlier category) uses up quota without being added twice, and the source
    stops once the user's union holds ``budget`` more items."""
    user, cat, share = _category_shares(cols, vocab)
    prepared = TRENDS.of(trending, np.unique(cat).tolist())
    has = np.array([c in prepared for c in cat.tolist()], bool)
    user, cat, share = user[has], cat[has], share[has]
    if not len(user):
        return _rows_union(*(np.zeros(0, np.int64),) * 3, TRENDING)
    total = _sequential_sum(share, starts(np.bincount(user, minlength=cols.size)))
    total[total == 0] = 1.0
    quota = np.maximum(1, np.floor(room * share / total[user])).astype(np.int64)
    ranked = {c: p.ranked for c, p in prepared.items()}
    # each pair's prefix of its ranked list: the quota plus the user's items that may be
    # skipped in it; pairs that turn out short are read again in full
    own_in = _count_pairs(cols, user, cat)
    lengths = np.array([len(ranked[c]) for c in cat.tolist()], np.int64)
    want = np.minimum(lengths, quota + own_in)
    taken = _take(cols, user, cat, quota, want, ranked)
    short = (taken[1] < quota) & (want < lengths)
    if short.any():  # read those pairs to the end of their lists
        want[short] = lengths[short]
        taken = _take(cols, user, cat, quota, want, ranked)
    entry_user, entry_item, entry_cat = taken[0]
    key = entry_user << ITEM_BITS | entry_item
    _, first = np.unique(key, return_index=True)
    added = np.zeros(len(key), bool)
    added[first] = True
    entry_user, entry_item, entry_cat = entry_user[added], entry_item[added], entry_cat[added]
    fits = _position(entry_user) < budget[entry_user]
    return _rows_union(entry_user[fits], entry_item[fits], entry_cat[fits], TRENDING)


def _count_pairs(cols: UserColumns, user: np.ndarray, cat: np.ndarray) -> np.ndarray:
    """How many of each user's kept items are recorded under each (user, category)."""
    tagged = cols.item_cat >= 0
    keys = np.sort(cols.item_user[tagged] << ITEM_BITS | cols.item_cat[tagged])
    query = user << ITEM_BITS | cat
    return np.searchsorted(keys, query, "right") - np.searchsorted(keys, query, "left")


def _take(
    cols: UserColumns,
    user: np.ndarray,
    cat: np.ndarray,
    quota: np.ndarray,
    want: np.ndarray,
    ranked: Mapping[int, np.ndarray],
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    """The first ``quota`` items of each pair's ranked prefix that the user does not keep;
    also how many each pair got."""
    pair = np.repeat(np.arange(len(user)), want)
    start = starts(want)[:-1]
    items = np.concatenate(
        [ranked[c][:w] for c, w in zip(cat.tolist(), want.tolist(), strict=True)]
    )
    eligible = cols.user_items(user[pair], items) < 0
    count = np.cumsum(eligible) - np.repeat(starts(eligible)[start], want)
    take = eligible & (count <= quota[pair])
    got = np.bincount(pair[take], minlength=len(user))
    return (user[pair][take], items[take], cat[pair][take]), got


def _recommended(lists: Sequence[Sequence[Recommended]], reason: int, vocab: Vocabulary) -> Union:
    """A model's lists per user (retrieval, the sequence model) as union rows."""
    user = np.repeat(np.arange(len(lists)), [len(r) for r in lists])
    recs = [r for rs in lists for r in rs]
    item = np.asarray(vocab.items.of([r.item_id for r in recs]), np.int64)
    cats = vocab.categories.of([r.category for r in recs if r.category is not None])
    it = iter(cats)
    cat = np.asarray([next(it) if r.category is not None else -1 for r in recs], np.int64)
    return _rows_union(user.astype(np.int64), item, cat, reason)


def _popular(
    users: np.ndarray, global_top: Sequence[tuple[str, str | None, float]], vocab: Vocabulary
) -> Union:
    ids = np.asarray(vocab.items.of([i for i, _, _ in global_top]), np.int64)
    cat = np.asarray(
        [vocab.categories.id(c) if c is not None else -1 for _, c, _ in global_top], np.int64
    )
    n = len(ids)
    return _rows_union(
        np.repeat(users, n), np.tile(ids, len(users)), np.tile(cat, len(users)), POPULAR
    )


def _listed(
    cols: UserColumns, before: list[Union], listed: Union, budget: np.ndarray, exclude: bool
) -> Union:
    """Items of a ranked list per user added in order until the user's union holds
    ``budget`` more: items already proposed (or purchased, under ``exclude``) are skipped."""
    if not len(listed.user):
        return listed
    seen = np.sort(np.concatenate([p.user << ITEM_BITS | p.item for p in before]))
    key = listed.user << ITEM_BITS | listed.item
    at = np.minimum(np.searchsorted(seen, key), max(len(seen) - 1, 0))
    fresh = ~(seen[at] == key) if len(seen) else np.ones(len(key), bool)
    _, first = np.unique(key, return_index=True)
    once = np.zeros(len(key), bool)
    once[first] = True
    ok = fresh & once
    if exclude:
        row = cols.user_items(listed.user, listed.item)
        bought = np.zeros(len(key), bool)
        bought[row >= 0] = cols.item_bought[row[row >= 0]]
        ok &= ~bought
    rows = np.flatnonzero(ok)
    fits = rows[_position(listed.user[rows]) < budget[listed.user[rows]]]
    return Union(
        listed.user[fits], listed.item[fits], listed.cat[fits], listed.reason[fits], listed.start
    )


# --------------------------------------------------------------------------- ranking


def apply_policy(scores: np.ndarray, purchased: np.ndarray, policy: str) -> np.ndarray:
    """Scores clipped to [0, 1] (NaN: 0), purchased ones demoted under policy ``demote``.

    (``exclude`` keeps purchased items out of the candidates instead.)"""
    s = np.clip(np.nan_to_num(np.asarray(scores, np.float64), nan=0.0), 0.0, 1.0)
    if policy == "demote":
        s = np.where(purchased, s * DEMOTE_FACTOR, s)
    return s


@dataclass(slots=True)
class Ranked:
    """A batch's final recommendations as columns: user ``b``'s best first, in
    ``start[b]:start[b + 1]``; and each user's strongest categories for the message."""

    start: np.ndarray  # (B + 1,)
    item: list[str]
    score: list[float]
    category: list[str | None]
    reason: list[RecommendReason]
    interests: list[dict[str, list[dict[str, Any]]]]  # per user, as the message carries them

    def lists(self) -> list[list[Recommended]]:
        recs = list(map(Recommended, self.item, self.score, self.category, self.reason))
        bounds = self.start.tolist()
        return [recs[a:b] for a, b in itertools.pairwise(bounds)]

    def entries(self, b: int) -> list[dict[str, Any]]:
        """User ``b``'s items as the recommendation message carries them."""
        lo, hi = int(self.start[b]), int(self.start[b + 1])
        rows = zip(
            self.item[lo:hi],
            self.score[lo:hi],
            self.reason[lo:hi],
            self.category[lo:hi],
            strict=True,
        )
        return [
            {"item_id": i, "score": round(s, 6), "reason": r, "category": c}
            if c is not None
            else {"item_id": i, "score": round(s, 6), "reason": r}
            for i, s, r, c in rows
        ]


def top_k(union: Union, scores: np.ndarray, k: int, vocab: Vocabulary = VOCABULARY) -> Ranked:
    """Each user's best k by score (ties: item id).

    Rows are ordered by (user, score) with one sort for the batch; only a user whose
    cut or order involves equal scores has its rows ordered by item name in Python."""
    users = len(union.start) - 1
    if k <= 0 or not len(union.user):
        return Ranked(np.zeros(users + 1, np.int64), [], [], [], [], [])
    order = np.lexsort((-scores, union.user))
    ranked_user = union.user[order]
    pos = _position(ranked_user)
    s = scores[order]
    # a tie inside a user's first k + 1 rows makes the order (or the cut) depend on names
    near = pos <= k
    same = np.zeros(len(order), bool)
    same[1:] = (s[1:] == s[:-1]) & (ranked_user[1:] == ranked_user[:-1]) & near[1:]
    tied = np.zeros(users, bool)
    tied[ranked_user[same]] = True
    best = order[(pos < k) & ~tied[ranked_user]]
    names, cat_names = vocab.items.names, vocab.categories.names
    for b in np.flatnonzero(tied).tolist():  # order by (score, name) in Python
        rows = union.rows(b)
        sl = scores[rows].tolist()
        ids = union.item[rows].tolist()
        picked = sorted(range(len(sl)), key=lambda n: (-sl[n], names[ids[n]]))[:k]
        best = np.concatenate([best, np.asarray(picked, np.int64) + rows.start])
    best = best[np.lexsort((np.arange(len(best)), union.user[best]))]  # by user, kept order
    start = starts(np.bincount(union.user[best], minlength=users))
    return Ranked(
        start,
        [names[i] for i in union.item[best].tolist()],
        scores[best].tolist(),
        [cat_names[c] if c >= 0 else None for c in union.cat[best].tolist()],
        [REASONS[r] for r in union.reason[best].tolist()],
        [],
    )


# --------------------------------------------------------------------------- the entry point


def rank_batch(
    states: Sequence[UserState],
    *,
    trending: Mapping[str, TrendEntry],
    global_top: Sequence[tuple[str, str | None, float]],
    scorer: Scorer | None,
    k: int,
    policy: str = "demote",
    limit: int = 200,
    retrieved: Sequence[Sequence[Recommended]] | None = None,
    retrieval_k: int = 50,
    sequenced: Sequence[Sequence[Recommended]] | None = None,
    vocab: Vocabulary = VOCABULARY,
) -> Ranked:
    """States -> final ranked recommendations, as columns (the worker and evaluation).

    With a loaded model: retrieval (unless ``retrieved`` is given) and the sequence model's
    next items (unless ``sequenced`` is given; one call each per batch), the candidate
    union, and the network's scores for every candidate; a user whose scores do not come back (model
    swapped out mid-call) falls back to the blend.  Without one: the blend.  ScorerError
    propagates so the caller can retry.

    The guard: a model whose network did not beat the blend on its validation window
    (``network_ranking`` false, from metadata.json) still supplies retrieval candidates,
    but the union is ranked by the blend.
    """
    if not states:
        return Ranked(np.zeros(1, np.int64), [], [], [], [], [])
    vocab.make_room()
    policy = str(getattr(policy, "value", policy))
    use_model = scorer is not None and scorer.model_version is not None
    vectors = scorer.item_vectors if use_model and scorer is not None else None
    request = (
        score_request(states, vectors.dim, retrieval_k, policy == "exclude")
        if vectors is not None
        else None
    )
    if retrieved is None and request is not None and scorer is not None:
        retrieved = scorer.recommend(request)
    if sequenced is None and use_model and scorer is not None:
        sequenced = scorer.next_in_sequence(
            SequenceBatch(
                [s.user_id for s in states], [s.sequence for s in states], SEQUENCE_CANDIDATES
            )
        )
    cols = gather(states, vocab=vocab)
    union = generate_batch(
        cols,
        trending=trending,
        global_top=global_top,
        retrieved=retrieved,
        sequenced=sequenced,
        policy=policy,
        limit=limit,
        vocab=vocab,
    )
    parts = components_of(cols, union.user, union.item, union.cat, trending, global_top, vocab)
    scores = blend_scores(parts)
    if request is not None and scorer is not None and network_ranking(scorer):
        sequences = [s.sequence for s in states]
        scores = _network_scores(scorer, request, union, parts, scores, vocab, sequences)
    ranked = top_k(union, apply_policy(scores, parts.purchased, policy), k, vocab)
    ranked.interests = interests_of(cols, vocab)
    return ranked


def recommend_batch(states: Sequence[UserState], **options: Any) -> list[list[Recommended]]:
    """:func:`rank_batch` as one list of Recommended per state."""
    return rank_batch(states, **options).lists()


def interests_of(cols: UserColumns, vocab: Vocabulary = VOCABULARY) -> list[dict[str, Any]]:
    """Each user's strongest categories per horizon at t_ref (INTERESTS_PER_HORIZON, ties:
    the larger name, as stream.core.interest.top_categories), as the message carries them."""
    rank = vocab.category_rank()[cols.cat_id]
    names = vocab.categories.names
    out: list[dict[str, Any]] = [{"long": [], "short": []} for _ in range(cols.size)]
    for name, h in (("long", LONG), ("short", SHORT)):
        order = np.lexsort((-rank, -cols.cat_vals[:, h], cols.cat_user))
        top = order[_position(cols.cat_user[order]) < INTERESTS_PER_HORIZON]
        for u, c, v in zip(
            cols.cat_user[top].tolist(),
            cols.cat_id[top].tolist(),
            cols.cat_vals[top, h].tolist(),
            strict=True,
        ):
            out[u][name].append({"category": names[c], "strength": v})
    return out


def _network_scores(
    scorer: Scorer,
    request: ScoreBatch,
    union: Union,
    parts: Components,
    blend: np.ndarray,
    vocab: Vocabulary,
    sequences: Sequence[RecentEvents],
) -> np.ndarray:
    """The network's scores of every candidate; a user it returns none for keeps the blend."""
    feats = features_from(parts)
    names = vocab.items.names
    batch = CandidateBatch(
        user_ids=request.user_ids,
        vectors=request.vectors,
        categories=request.categories,
        items=[
            [names[i] for i in union.item[union.rows(b)].tolist()]
            for b in range(len(request.user_ids))
        ],
        features=[feats[union.rows(b)] for b in range(len(request.user_ids))],
        sequences=sequences,
    )
    got = scorer.score_candidates(batch)
    scores = blend.copy()
    for b in range(len(request.user_ids)):
        rows = union.rows(b)
        if b < len(got) and len(got[b]) == rows.stop - rows.start:
            scores[rows] = got[b]
    return scores


def network_ranking(scorer: Scorer | None) -> bool:
    """Whether the scorer's model ranks the union (else the blend does): the guard.

    Training compares the network with the blend on a validation window and records the
    winner (metadata.json ``ranking``).
    """
    return scorer is not None and bool(scorer.network_ranking)


def score_request(
    states: Sequence[UserState], dim: int, k: int, exclude_purchased: bool
) -> ScoreBatch:
    """The scorer's input for a batch of users, every quantity taken at each user's t_ref."""
    vectors = np.zeros((len(states), 2, dim), dtype=np.float32)
    categories: list[tuple[dict[str, float], dict[str, float]]] = []
    exclude: list[set[str]] = []
    for row, state in enumerate(states):
        for horizon in (SHORT, LONG):
            vec = interest_vector(state, horizon)
            if vec is not None and vec.shape[-1] == dim:
                vectors[row, horizon] = vec
        categories.append((category_strengths(state, SHORT), category_strengths(state, LONG)))
        exclude.append(set(state.purchased) if exclude_purchased else set())
    return ScoreBatch(
        user_ids=[s.user_id for s in states],
        vectors=vectors,
        categories=categories,
        exclude=exclude,
        k=k,
    )


# --------------------------------------------------------------------------- one user


def generate(
    state: UserState,
    *,
    trending: Mapping[str, TrendEntry],
    global_top: Sequence[tuple[str, str | None, float]],
    retrieved: Sequence[Recommended] = (),
    policy: str = "demote",
    limit: int = 200,
    vocab: Vocabulary = VOCABULARY,
    cols: UserColumns | None = None,
    sequenced: Sequence[Recommended] | None = None,
) -> list[Candidate]:
    """:func:`generate_batch` for one user, as Candidate tuples in union order (``cols``:
    the user's columns, already gathered; ``sequenced``: the sequence model's next items)."""
    cols = cols if cols is not None else gather([state], vocab=vocab)
    union = generate_batch(
        cols,
        trending=trending,
        global_top=global_top,
        retrieved=[list(retrieved)],
        policy=policy,
        limit=limit,
        vocab=vocab,
        sequenced=[list(sequenced)] if sequenced is not None else None,
    )
    names, cat_names = vocab.items.names, vocab.categories.names
    return [
        Candidate(names[i], cat_names[c] if c >= 0 else None, REASONS[r])
        for i, c, r in zip(
            union.item.tolist(), union.cat.tolist(), union.reason.tolist(), strict=True
        )
    ]


def rank(
    candidates: Sequence[Candidate],
    scores: np.ndarray,
    k: int,
    policy: str,
    state: UserState,
    vocab: Vocabulary = VOCABULARY,
) -> list[Recommended]:
    """One user's best k candidates by score (ties: item id) after the purchased policy."""
    bought = state.purchased
    hit = np.array([c.item_id in bought for c in candidates], bool).reshape(len(candidates))
    keep = [n for n, c in enumerate(candidates) if policy != "exclude" or c.item_id not in bought]
    s = apply_policy(np.asarray(scores, np.float64), hit, policy)[keep]
    kept = [candidates[n] for n in keep]
    union = Union(
        np.zeros(len(kept), np.int64),
        np.asarray(vocab.items.of([c.item_id for c in kept]), np.int64),
        np.asarray(
            [vocab.categories.id(c.category) if c.category is not None else -1 for c in kept],
            np.int64,
        ),
        np.asarray([REASONS.index(c.reason) for c in kept], np.int64),
        np.array([0, len(kept)], np.int64),
    )
    return top_k(union, s, k, vocab).lists()[0]


def blend(
    state: UserState, candidates: Sequence[Candidate], parts: Components, k: int, policy: str
) -> list[Recommended]:
    """No model: rank by :func:`blend_scores`, meaningful from the user's first event."""
    return rank(candidates, blend_scores(parts), k, policy, state)


def candidate_batch(
    states: Sequence[UserState],
    cands: Sequence[Sequence[Candidate]],
    feats: Sequence[np.ndarray],
    dim: int,
    request: ScoreBatch | None = None,
) -> CandidateBatch:
    """The scorer's input: the users' vectors and category strengths (from ``request`` when
    the retrieval call already computed them), items and features."""
    req = request if request is not None else score_request(states, dim, 1, False)
    return CandidateBatch(
        user_ids=req.user_ids,
        vectors=req.vectors,
        categories=req.categories,
        items=[[c.item_id for c in cs] for cs in cands],
        features=list(feats),
    )
