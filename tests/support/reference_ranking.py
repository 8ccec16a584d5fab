"""The per-user ranking of interest-stream 0.2.0, kept as the oracle of the batch ranking.

tests/unit/core/test_batch_ranking.py checks that stream.core.candidates.recommend_batch
(arrays over a whole rescoring batch) gives the same top-k, reasons and scores as this
user-at-a-time implementation on the same inputs. Not used by the stream.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from stream.core.candidates import (
    DEMOTE_FACTOR,
    MIN_CANDIDATES,
    OWN_SHARE,
    POLICIES,
    TREND_CATEGORIES,
    TREND_SHARE,
    score_request,
)
from stream.core.decay import LONG, SHORT, read_factor
from stream.core.features import EPS, SHARE_EPS, W_CAT, W_OWN, W_TREND, Components
from stream.core.interest import UserState, top_categories
from stream.core.trending import CategoryTrend, TrendEntry, trend_parts
from stream.core.types import (
    Candidate,
    CandidateBatch,
    Recommended,
    RecommendReason,
    ScoreBatch,
    Scorer,
)

N_FEATURES = 14


def _two_horizon_rank(values: Mapping[str, Sequence[float]]) -> list[str]:
    """Keys by the mean of the two horizons' max-normalised values, best first (ties: key).

    Normalising per horizon keeps one burst (short) and steady interest (long) comparable;
    the same rule orders the user's own items and a category's trending items.
    """
    if not values:
        return []
    ms = max(max(v[SHORT] for v in values.values()), EPS)
    ml = max(max(v[LONG] for v in values.values()), EPS)
    return sorted(values, key=lambda k: (-(values[k][SHORT] / ms + values[k][LONG] / ml), k))


@dataclass(frozen=True, slots=True)
class PreparedTrend:
    """What every user's ranking reads of one category's trending entry."""

    t_ref: int | None
    half_lives: tuple[int, int]
    items: Mapping[str, Sequence[float]]
    ranked: list[str]  # _two_horizon_rank(items)
    max_short: float  # the strongest item per horizon, at t_ref
    max_long: float


_PREPARED: dict[int, tuple[Any, PreparedTrend]] = {}


def _prepared(entry: TrendEntry) -> PreparedTrend:
    """The entry's ranking and maxima, computed once per published snapshot.

    Snapshots (dicts from the trending topic) are replaced, never changed, so they are
    cached by identity; a CategoryTrend (evaluation folds into it in place) never is."""
    if isinstance(entry, CategoryTrend):
        return _prepare(entry)
    hit = _PREPARED.get(id(entry))
    if hit is not None and hit[0] is entry:
        return hit[1]
    view = _prepare(entry)
    if len(_PREPARED) >= 8192:
        _PREPARED.clear()
    _PREPARED[id(entry)] = (entry, view)  # holding the entry keeps its id unique
    return view


def _prepare(entry: TrendEntry) -> PreparedTrend:
    t_ref, hls, items = trend_parts(entry)
    return PreparedTrend(
        t_ref,
        hls,
        items,
        _two_horizon_rank(items),
        max((v[SHORT] for v in items.values()), default=0.0),
        max((v[LONG] for v in items.values()), default=0.0),
    )


def _read_time(state: UserState, t: int | None) -> int | None:
    """Everything is read at the user's t_ref unless a later t is asked for."""
    if t is None:
        return state.t_ref
    return t if state.t_ref is None else max(t, state.t_ref)


def _user_factors(state: UserState, t: int | None) -> tuple[float, float]:
    return (
        read_factor(state.t_ref, state.half_lives[SHORT], t),
        read_factor(state.t_ref, state.half_lives[LONG], t),
    )


def components(
    state: UserState,
    candidates: Sequence[Candidate],
    trending: Mapping[str, TrendEntry],
    global_top: Sequence[tuple[str, str | None, float]] = (),
    t: int | None = None,
) -> Components:
    """Every raw quantity the features and the blend need, read at one time t >= t_ref."""
    t = _read_time(state, t)
    fs, fl = _user_factors(state, t)
    m = len(candidates)
    zero = (0.0, 0.0)
    items_get, cats_get, bought = state.items.get, state.categories.get, state.purchased
    item_rows: list[tuple[float, float]] = []
    cat_rows: list[tuple[float, float]] = []
    trend_rows: list[tuple[float, float]] = []
    tmax_rows: list[tuple[float, float]] = []
    cat_cache: dict[str, tuple[Mapping[str, Sequence[float]], float, float, float, float]] = {}
    for c in candidates:
        v = items_get(c.item_id)
        item_rows.append((v[SHORT] * fs, v[LONG] * fl) if v is not None else zero)
        entry = trending.get(c.category) if c.category is not None else None
        if c.category is None:
            cat_rows.append(zero)
        else:
            cv = cats_get(c.category)
            cat_rows.append((cv[SHORT] * fs, cv[LONG] * fl) if cv is not None else zero)
        if entry is None:
            trend_rows.append(zero)
            tmax_rows.append(zero)
            continue
        info = cat_cache.get(c.category)  # type: ignore[arg-type]
        if info is None:
            info = cat_cache[c.category] = _trend_info(entry, t)  # type: ignore[index]
        titems, f_s, f_l, mx_s, mx_l = info
        tv = titems.get(c.item_id)
        trend_rows.append((tv[SHORT] * f_s, tv[LONG] * f_l) if tv is not None else zero)
        tmax_rows.append((mx_s, mx_l))
    item = np.array(item_rows, np.float64).reshape(m, 2)
    cat = np.array(cat_rows, np.float64).reshape(m, 2)
    trend = np.array(trend_rows, np.float64).reshape(m, 2)
    trend_max = np.array(tmax_rows, np.float64).reshape(m, 2)
    purchased = np.array([c.item_id in bought for c in candidates], bool).reshape(m)
    gmax = max((s for _, _, s in global_top), default=0.0)
    gscore = {i: s for i, _, s in global_top}
    global_rel = np.array(
        [max(gscore.get(c.item_id, 0.0), 0.0) / gmax if gmax > 0 else 0.0 for c in candidates]
    )
    return Components(
        item=item,
        cat=cat,
        cat_total=np.array(
            [
                sum(v[SHORT] for v in state.categories.values()) * fs,
                sum(v[LONG] for v in state.categories.values()) * fl,
            ]
        ),
        trend=trend,
        trend_max=trend_max,
        item_max=_col_max(state.items, (fs, fl)),
        cat_max=_col_max(state.categories, (fs, fl)),
        global_rel=global_rel,
        purchased=purchased,
    )


def _trend_info(
    entry: TrendEntry, t: int | None
) -> tuple[Mapping[str, Sequence[float]], float, float, float, float]:
    """(items, decay factors to t, the category's strongest item per horizon at t)."""
    p = _prepared(entry)
    f_s = read_factor(p.t_ref, p.half_lives[SHORT], t)
    f_l = read_factor(p.t_ref, p.half_lives[LONG], t)
    return p.items, f_s, f_l, p.max_short * f_s, p.max_long * f_l


def _col_max(kept: Mapping[str, Sequence[float]], factors: tuple[float, float]) -> np.ndarray:
    if not kept:
        return np.zeros(2)
    return np.array(
        [
            max(v[SHORT] for v in kept.values()) * factors[0],
            max(v[LONG] for v in kept.values()) * factors[1],
        ]
    )


def features_from(parts: Components) -> np.ndarray:
    """(M, N_FEATURES) float32 in FEATURE_NAMES order: log1p for heavy tails, shares for scale."""

    def log1p(x: np.ndarray) -> np.ndarray:
        return np.log1p(np.maximum(x, 0.0))

    share = np.maximum(parts.cat, 0.0) / np.maximum(parts.cat_total, SHARE_EPS)
    rel = np.maximum(parts.trend[:, LONG], 0.0) / np.maximum(parts.trend_max[:, LONG], EPS)
    cols = [
        log1p(parts.item[:, SHORT]),
        log1p(parts.item[:, LONG]),
        log1p(parts.cat[:, SHORT]),
        log1p(parts.cat[:, LONG]),
        share[:, SHORT],
        share[:, LONG],
        log1p(parts.trend[:, SHORT]),
        log1p(parts.trend[:, LONG]),
        rel,
        parts.purchased.astype(np.float64),
        *blend_parts(parts),
        blend_scores(parts),
    ]
    return np.stack(cols, axis=1).astype(np.float32).reshape(-1, N_FEATURES)


def _norm(x: np.ndarray, mx: np.ndarray) -> np.ndarray:
    return np.clip(np.maximum(x, 0.0) / np.maximum(mx, EPS), 0.0, 1.0)


def blend_parts(parts: Components) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(own, cat, trend), each (M,) in [0, 1]: the blend's components (see blend_scores)."""
    own = _norm(parts.item, parts.item_max).mean(axis=1)
    cat = _norm(parts.cat, parts.cat_max).mean(axis=1)
    trend = np.maximum(_norm(parts.trend, parts.trend_max).mean(axis=1), parts.global_rel)
    return own, cat, trend


def blend_scores(parts: Components) -> np.ndarray:
    """The transparent no-model score in [0, 1], before the purchased policy.

    ``own``   = mean over horizons of S_i / max_j S_j (the user's item strength, relative
                to the user's strongest item);
    ``cat``   = mean over horizons of S_c / max_c' S_c' (the item's category, relative to
                the user's strongest category);
    ``trend`` = mean over horizons of T_i / max_j T_j within the item's category, or the
                item's global trending score relative to the top one when that is larger;
    ``score`` = 0.5 * own + 0.3 * cat + 0.2 * trend.
    """
    own, cat, trend = blend_parts(parts)
    return np.clip(W_OWN * own + W_CAT * cat + W_TREND * trend, 0.0, 1.0)


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
    for item in _two_horizon_rank(state.items)[:own_cap]:
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
        for item in _prepared(trending[category]).ranked:
            if taken >= quota:
                break
            if item in state.items:
                continue  # already proposed as the user's own (or bounded out of it)
            if not add(item, category, RecommendReason.trending_in_category, cap):
                return
            taken += 1


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
