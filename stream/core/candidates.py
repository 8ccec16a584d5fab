"""Candidate sources and blended ranking: from a user's state to the final recommendations.

No single source wins everywhere (the user's own items on one shop, trending items in the
user's categories on another, model retrieval on a third), and retrieval alone cannot reach
items first seen after training.  So each user's candidates are the union of four sources,
each tagged with the reason it was proposed:

* ``your_interest``: the user's strongest items (decayed item strengths in the state);
* ``trending_in_category``: trending items in the user's strongest categories, a quota per
  category in proportion to the user's strength in it;
* ``similar_to_your_interests``: the model's retrieval results (when a model is loaded);
* ``popular``: global trending, the last fallback for users with almost no history.

Without a model the union is ranked by a transparent blend of normalised strengths (see
:func:`blend`); with one, the interest-strength network scores every candidate from the
per-pair features of :func:`features` plus what it computes itself (inner products with the
user's vectors, popularity).  :func:`recommend_batch` is the single path the worker and the
offline evaluation both call.  Pure: no faust, kafka or tensorflow.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from stream.core.decay import LONG, SHORT
from stream.core.features import EPS, Components, blend_scores, components, features_from
from stream.core.interest import UserState, category_strengths, interest_vector, top_categories
from stream.core.trending import TrendEntry, prepared, two_horizon_rank
from stream.core.types import (
    Candidate,
    CandidateBatch,
    Recommended,
    RecommendReason,
    ScoreBatch,
    Scorer,
)

POLICIES = ("keep", "demote", "exclude")

DEMOTE_FACTOR = 0.25  # policy "demote": a purchased item's score is multiplied by this
OWN_SHARE, TREND_SHARE = 0.4, 0.4  # of the candidate limit; retrieval gets the rest
TREND_CATEGORIES = 5  # the user's strongest categories trending items are drawn from
MIN_CANDIDATES = 20  # global trending fills a thin union up to this many


# --------------------------------------------------------------------------- helpers


def _category_shares(state: UserState) -> list[tuple[str, float]]:
    """The user's strongest categories with their share of the (positive) strength."""
    cats = {c for c, _ in top_categories(state, LONG, TREND_CATEGORIES)}
    cats |= {c for c, _ in top_categories(state, SHORT, TREND_CATEGORIES)}
    tot_s = sum(max(v[SHORT], 0.0) for v in state.categories.values()) or EPS
    tot_l = sum(max(v[LONG], 0.0) for v in state.categories.values()) or EPS
    shares = {
        c: 0.5 * (max(state.categories[c][SHORT], 0.0) / tot_s)
        + 0.5 * (max(state.categories[c][LONG], 0.0) / tot_l)
        for c in cats
    }
    best = sorted(shares.items(), key=lambda kv: (-kv[1], kv[0]))[:TREND_CATEGORIES]
    return [(c, s) for c, s in best if s > 0]


# --------------------------------------------------------------------------- generation


def generate(
    state: UserState,
    *,
    trending: Mapping[str, TrendEntry],
    global_top: Sequence[tuple[str, str | None, float]],
    retrieved: Sequence[Recommended] = (),
    policy: str = "demote",
    limit: int = 200,
) -> list[Candidate]:
    """The union of the four sources, at most ``limit``, each item once (first reason wins).

    Budgets: the user's items up to 40% of ``limit``, trending up to 40% split across the
    user's strongest categories in proportion to their strength, retrieval the rest; global
    trending only fills a union smaller than MIN_CANDIDATES (a thin history).  Policy
    ``exclude`` keeps purchased items out of every source.
    """
    if policy not in POLICIES:
        raise ValueError(f"purchased policy {policy!r} (allowed: {', '.join(POLICIES)})")
    banned = state.purchased if policy == "exclude" else set()
    out: dict[str, Candidate] = {}

    def add(item: str, category: str | None, reason: str, cap: int) -> bool:
        if len(out) >= cap or item in out or item in banned:
            return len(out) < cap
        out[item] = Candidate(item, category, reason)
        return True

    own_cap = max(1, math.ceil(limit * OWN_SHARE))
    for item in two_horizon_rank(state.items)[:own_cap]:
        add(item, state.item_categories.get(item), RecommendReason.your_interest, limit)
    room = max(1, math.ceil(limit * TREND_SHARE))
    _add_trending(state, trending, min(limit, len(out) + room), room, add)
    for rec in retrieved:
        if not add(rec.item_id, rec.category, RecommendReason.similar_to_your_interests, limit):
            break
    fill = min(limit, MIN_CANDIDATES)
    for item, category, _ in global_top:
        if len(out) >= fill:
            break
        add(item, category, RecommendReason.popular, fill)
    return list(out.values())


def _add_trending(
    state: UserState,
    trending: Mapping[str, TrendEntry],
    cap: int,
    room: int,
    add: Callable[[str, str | None, str, int], bool],
) -> None:
    """Trending items of the strongest categories, quota proportional to category share.

    ``room`` is this source's budget, ``cap`` the union size it may grow to.
    """
    shares = [(c, s) for c, s in _category_shares(state) if c in trending]
    total = sum(s for _, s in shares) or 1.0
    for category, share in shares:
        quota = max(1, math.floor(room * share / total))
        taken = 0
        for item in prepared(trending[category]).ranked:
            if taken >= quota:
                break
            if item in state.items:
                continue  # already proposed as the user's own (or bounded out of it)
            if not add(item, category, RecommendReason.trending_in_category, cap):
                return
            taken += 1


# --------------------------------------------------------------------------- ranking


def apply_policy(scores: np.ndarray, purchased: np.ndarray, policy: str) -> np.ndarray:
    """Scores clipped to [0, 1] (NaN: 0), purchased ones demoted under policy ``demote``.

    (``exclude`` keeps purchased items out of the candidates instead.)"""
    s = np.clip(np.nan_to_num(np.asarray(scores, np.float64), nan=0.0), 0.0, 1.0)
    if policy == "demote":
        s = np.where(purchased, s * DEMOTE_FACTOR, s)
    return s


def rank(
    candidates: Sequence[Candidate],
    scores: np.ndarray,
    k: int,
    policy: str,
    state: UserState,
) -> list[Recommended]:
    """Best k by score (ties: item id) after the purchased policy; scores clipped to [0, 1]."""
    bought = state.purchased
    hit = np.array([c.item_id in bought for c in candidates] if bought else [], bool)
    s = apply_policy(scores, hit if bought else np.zeros(len(candidates), bool), policy)
    keep = np.array(
        [
            n
            for n, c in enumerate(candidates)
            if policy != "exclude" or c.item_id not in state.purchased
        ],
        np.int64,
    )
    if 0 < k < len(keep):  # only the k best and whatever ties the k-th need sorting
        kept = s[keep]
        kth = np.partition(kept, len(kept) - k)[len(kept) - k]
        keep = keep[kept >= kth]
    sl = s.tolist()
    order = sorted(keep.tolist(), key=lambda n: (-sl[n], candidates[n].item_id))
    return [
        Recommended(candidates[n].item_id, sl[n], candidates[n].category, candidates[n].reason)
        for n in order[: max(0, k)]
    ]


def blend(
    state: UserState, candidates: Sequence[Candidate], parts: Components, k: int, policy: str
) -> list[Recommended]:
    """No model: rank by :func:`blend_scores`, meaningful from the user's first event."""
    return rank(candidates, blend_scores(parts), k, policy, state)


# --------------------------------------------------------------------------- the entry point


def recommend_batch(
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
) -> list[list[Recommended]]:
    """States -> final ranked recommendations, one list per state (the worker and evaluation).

    With a loaded model: retrieval (unless ``retrieved`` is given), the candidate union, and
    the network's scores for every candidate; a user whose scores do not come back (model
    swapped out mid-call) falls back to the blend.  Without one: the blend.  ScorerError
    propagates so the caller can retry.

    The guard: a model whose network did not beat the blend on its validation window
    (``network_ranking`` false, from metadata.json) still supplies retrieval candidates,
    but the union is ranked by the blend.
    """
    if not states:
        return []
    policy = str(getattr(policy, "value", policy))
    use_model = scorer is not None and scorer.model_version is not None
    vectors = scorer.item_vectors if use_model and scorer is not None else None
    # The users' side of every model call (vectors, category strengths), computed once.
    request = (
        score_request(states, vectors.dim, retrieval_k, policy == "exclude")
        if vectors is not None
        else None
    )
    if retrieved is None and request is not None and scorer is not None:
        retrieved = scorer.recommend(request)
    cands = [
        generate(
            s,
            trending=trending,
            global_top=global_top,
            retrieved=retrieved[n] if retrieved is not None else (),
            policy=policy,
            limit=limit,
        )
        for n, s in enumerate(states)
    ]
    parts = [components(s, c, trending, global_top) for s, c in zip(states, cands, strict=True)]
    scores: list[np.ndarray | None] = [None] * len(states)
    if request is not None and scorer is not None and network_ranking(scorer):
        batch = candidate_batch(
            states, cands, [features_from(p) for p in parts], request.vectors.shape[-1], request
        )
        got = scorer.score_candidates(batch)
        scores = [got[n] if n < len(got) else None for n in range(len(states))]
    return [
        rank(c, sc, k, policy, s)
        if sc is not None and len(sc) == len(c)
        else blend(s, c, p, k, policy)
        for s, c, p, sc in zip(states, cands, parts, scores, strict=True)
    ]


def network_ranking(scorer: Scorer | None) -> bool:
    """Whether the scorer's model ranks the union (else the blend does): the guard.

    Training compares the network with the blend on a validation window and records the
    winner (metadata.json ``ranking``).
    """
    return scorer is not None and bool(scorer.network_ranking)


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
