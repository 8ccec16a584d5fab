"""The per-candidate quantities, the network's features and the transparent blend.

One function computes the features a user-item pair is scored from, for training (the
replay in models.training) and for serving (the worker's rescoring), so the two cannot
drift: :func:`components` reads every raw quantity at one time, :func:`features_from`
turns them into the network's columns (FEATURE_NAMES), and :func:`blend_scores` into the
no-model score.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from stream.core.decay import LONG, SHORT, read_factor
from stream.core.interest import UserState
from stream.core.trending import TrendEntry, prepared
from stream.core.types import Candidate

__all__ = [
    "EPS",
    "FEATURE_NAMES",
    "N_FEATURES",
    "SHARE_EPS",
    "W_CAT",
    "W_OWN",
    "W_TREND",
    "Components",
    "blend_parts",
    "blend_scores",
    "components",
    "features",
    "features_from",
]

FEATURE_NAMES: tuple[str, ...] = (
    "log1p_item_short",  # the user's strength for the item
    "log1p_item_long",
    "log1p_cat_short",  # the user's strength for the item's category
    "log1p_cat_long",
    "cat_short_share",  # ... as a share of all the user's category strength (scale free)
    "cat_long_share",
    "log1p_trend_short",  # the item's trending score in its category
    "log1p_trend_long",
    "trend_long_rel",  # ... relative to the category's strongest item
    "purchased",  # the user bought it (the policy decides what that means)
    "blend_own",  # the transparent blend's components (blend_parts), each in [0, 1] ...
    "blend_cat",
    "blend_trend",
    "blend_score",  # ... and the blend score itself: the network can at least reproduce it
)
N_FEATURES = len(FEATURE_NAMES)

# Blend without a model: score = W_OWN*own + W_CAT*cat + W_TREND*trend, each in [0, 1].
W_OWN, W_CAT, W_TREND = 0.5, 0.3, 0.2
EPS = 1e-12
SHARE_EPS = 1e-6  # the model's EPS (models.training.ranker), so both compute the same shares


@dataclass(slots=True)
class Components:
    """Raw per-candidate quantities (M,), all read at the same time; features and blend use them."""

    item: np.ndarray  # (M, 2) the user's item strength [short, long]
    cat: np.ndarray  # (M, 2) the user's strength of the item's category
    cat_total: np.ndarray  # (2,) the user's total category strength
    trend: np.ndarray  # (M, 2) the item's trending score in its category
    trend_max: np.ndarray  # (M, 2) the strongest trending score in that category
    item_max: np.ndarray  # (2,) the user's strongest item strength
    cat_max: np.ndarray  # (2,) the user's strongest category strength
    global_rel: np.ndarray  # (M,) global trending score / the strongest one
    purchased: np.ndarray  # (M,) bool


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
    p = prepared(entry)
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


def features(
    state: UserState,
    candidates: Sequence[Candidate],
    trending: Mapping[str, TrendEntry],
    t: int | None = None,
    global_top: Sequence[tuple[str, str | None, float]] = (),
) -> np.ndarray:
    """The network's per-pair features for the user's candidates (training and serving)."""
    return features_from(components(state, candidates, trending, global_top, t))


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
