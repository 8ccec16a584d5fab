"""The per-candidate quantities, the network's features and the transparent blend, as arrays.

One set of functions computes what a user-item pair is scored from, for training (the
replay in models.training) and for serving (the worker's rescoring), so the two cannot
drift: :func:`gather` lays a batch of users' sums out as columns, :func:`components_of`
reads every raw quantity of every candidate of the batch at once, :func:`features_from`
turns them into the network's columns (FEATURE_NAMES) and :func:`blend_scores` into the
no-model score. Nothing here loops over candidates in Python.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from stream.core.decay import LONG, SHORT, starts
from stream.core.interest import UserState
from stream.core.trending import TrendEntry
from stream.core.types import Candidate
from stream.core.vocab import ITEM_BITS, TRENDS, VOCABULARY, PairTable, Vocabulary, lookup

__all__ = [
    "EPS",
    "FEATURE_NAMES",
    "N_FEATURES",
    "SHARE_EPS",
    "W_CAT",
    "W_OWN",
    "W_TREND",
    "Components",
    "UserColumns",
    "blend_parts",
    "blend_scores",
    "components",
    "components_of",
    "features",
    "features_from",
    "gather",
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
NO_TIME = np.iinfo(np.int64).min  # a state without events has no t_ref


@dataclass(slots=True)
class Components:
    """Raw per-candidate quantities (M,), all read at the candidate's user's read time.

    User-level quantities (totals and maxima) are repeated per candidate, so features and
    the blend are elementwise over a whole batch."""

    item: np.ndarray  # (M, 2) the user's item strength [short, long]
    cat: np.ndarray  # (M, 2) the user's strength of the item's category
    cat_total: np.ndarray  # (M, 2) the user's total category strength
    trend: np.ndarray  # (M, 2) the item's trending score in its category
    trend_max: np.ndarray  # (M, 2) the strongest trending score in that category
    item_max: np.ndarray  # (M, 2) the user's strongest item strength
    cat_max: np.ndarray  # (M, 2) the user's strongest category strength
    global_rel: np.ndarray  # (M,) global trending score / the strongest one
    purchased: np.ndarray  # (M,) bool


@dataclass(slots=True)
class UserColumns:
    """A batch of users' kept sums as concatenated columns (row -> its user's index).

    Item and category rows carry interned ids; ``item_keys``/``cat_keys`` (user << 32 | id,
    sorted) answer "does user u keep item i, and where" for many pairs in one search."""

    states: Sequence[UserState]
    read_t: np.ndarray  # (B,) int64 time the strengths are read at (>= t_ref); NO_TIME: none
    half: np.ndarray  # (B, 2) float64 half-lives
    factors: np.ndarray  # (B, 2) float64 decay from t_ref to read_t
    item_user: np.ndarray  # (R,) int64
    item_id: np.ndarray  # (R,) int64 interned item ids
    item_cat: np.ndarray  # (R,) int64 interned category ids, -1: none
    item_vals: np.ndarray  # (R, 2) float64 at t_ref
    item_bought: np.ndarray  # (R,) bool
    item_start: np.ndarray  # (B + 1,) each user's first row
    cat_user: np.ndarray  # (S,) int64
    cat_id: np.ndarray  # (S,) int64
    cat_vals: np.ndarray  # (S, 2) float64 at t_ref
    cat_start: np.ndarray  # (B + 1,)
    item_keys: np.ndarray  # (R,) sorted user << 32 | item
    item_rows: np.ndarray  # (R,) the row of each sorted key
    cat_keys: np.ndarray  # (S,) sorted user << 32 | category
    cat_rows: np.ndarray

    @property
    def size(self) -> int:
        return len(self.states)

    def user_items(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """The item row of each (user, item) pair, -1 where the user does not keep it."""
        return _rows(self.item_keys, self.item_rows, (users << ITEM_BITS) | items)

    def user_categories(self, users: np.ndarray, cats: np.ndarray) -> np.ndarray:
        """The category row of each (user, category) pair, -1 where not kept (or cat -1)."""
        rows = _rows(self.cat_keys, self.cat_rows, (users << ITEM_BITS) | np.maximum(cats, 0))
        rows[cats < 0] = -1
        return rows


def _rows(keys: np.ndarray, rows: np.ndarray, query: np.ndarray) -> np.ndarray:
    out = np.full(len(query), -1, np.int64)
    if not len(keys) or not len(query):
        return out
    at = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    hit = keys[at] == query
    out[hit] = rows[at[hit]]
    return out


def _item_ids(state: UserState, vocab: Vocabulary) -> list[int]:
    """The state's item ids in the vocabulary, cached on the state until they go stale."""
    table = state.items
    keys = table.keys_
    gen = (id(vocab), vocab.items.generation)
    ids = table.ids
    if ids is None or table.ids_gen != gen:
        ids = table.ids = vocab.items.of(keys)
        table.ids_gen = gen
    elif len(ids) < len(keys):
        ids.extend(vocab.items.of(keys[len(ids) :]))
    return ids


def gather(
    states: Sequence[UserState],
    read_t: Sequence[int | None] | None = None,
    vocab: Vocabulary = VOCABULARY,
) -> UserColumns:
    """Lay the users' kept sums out as columns; ``read_t[b]`` (default t_ref) >= t_ref."""
    b = len(states)
    cats_of = vocab.categories.of
    item_ids = [_item_ids(state, vocab) for state in states]
    cat_ids = [cats_of(state.categories.keys_) for state in states]
    # every user's item category names in one table: item code c (1-based) of user n is
    # row name_base[n] + c - 1 of it, so all item categories are mapped in one gather
    name_lists = [state.items.cat_names for state in states]
    name_ids = np.asarray(cats_of(list(itertools.chain.from_iterable(name_lists))), np.int64)
    name_base = starts(np.fromiter((len(x) for x in name_lists), np.int64, b))[:-1]
    t_ref = np.fromiter((NO_TIME if s.t_ref is None else s.t_ref for s in states), np.int64, b)
    if read_t is None:
        read = t_ref.copy()
    else:
        read = np.fromiter(
            (
                tr if t is None or s.t_ref is None else max(t, s.t_ref)
                for s, t, tr in zip(states, read_t, t_ref.tolist(), strict=True)
            ),
            np.int64,
            b,
        )
    half = np.asarray([s.half_lives for s in states], np.float64).reshape(b, 2)
    n_items = np.fromiter((len(x) for x in item_ids), np.int64, b)
    n_cats = np.fromiter((len(x) for x in cat_ids), np.int64, b)
    users = np.arange(b, dtype=np.int64)
    item_user = np.repeat(users, n_items)
    item_id = np.fromiter(itertools.chain.from_iterable(item_ids), np.int64, int(n_items.sum()))
    cat_user = np.repeat(users, n_cats)
    cat_id = np.fromiter(itertools.chain.from_iterable(cat_ids), np.int64, int(n_cats.sum()))
    item_keys = (item_user << ITEM_BITS) | item_id
    cat_keys = (cat_user << ITEM_BITS) | cat_id
    item_order = np.argsort(item_keys, kind="stable")
    cat_order = np.argsort(cat_keys, kind="stable")
    factors = np.ones((b, 2), np.float64)
    later = (t_ref != NO_TIME) & (read > t_ref)
    if later.any():
        factors[later] = np.power(2.0, -(read - t_ref)[later, None] / half[later])
    return UserColumns(
        states=states,
        read_t=read,
        half=half,
        factors=factors,
        item_user=item_user,
        item_id=item_id,
        item_cat=_item_categories(states, name_ids, name_base, n_items),
        item_vals=_stack([s.items.vals for s in states]),
        item_bought=np.fromiter(
            itertools.chain.from_iterable(s.items.bought for s in states), bool, len(item_id)
        ),
        item_start=starts(n_items),
        cat_user=cat_user,
        cat_id=cat_id,
        cat_vals=_stack([s.categories.vals for s in states]),
        cat_start=starts(n_cats),
        item_keys=item_keys[item_order],
        item_rows=item_order,
        cat_keys=cat_keys[cat_order],
        cat_rows=cat_order,
    )


def _item_categories(
    states: Sequence[UserState], name_ids: np.ndarray, name_base: np.ndarray, n_items: np.ndarray
) -> np.ndarray:
    """Each kept item's category id (-1: none), for all users at once."""
    codes = np.fromiter(
        itertools.chain.from_iterable(s.items.cat for s in states), np.int64, int(n_items.sum())
    )
    at = np.repeat(name_base, n_items) + codes - 1
    out = np.full(len(codes), -1, np.int64)
    has = codes > 0
    out[has] = name_ids[at[has]]
    return out


def _stack(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts).astype(np.float64) if parts else np.zeros((0, 2))


def _per_user(values: np.ndarray, start: np.ndarray, how: str) -> np.ndarray:
    """(B, 2) sum or max of each user's rows (0 for a user without rows)."""
    out = np.zeros((len(start) - 1, 2), np.float64)
    has = start[1:] > start[:-1]
    if has.any():
        ufunc = np.add if how == "sum" else np.maximum
        out[has] = ufunc.reduceat(values, start[:-1][has], axis=0)
    return out


def components_of(
    cols: UserColumns,
    user: np.ndarray,
    item: np.ndarray,
    cat: np.ndarray,
    trending: Mapping[str, TrendEntry],
    global_top: Sequence[tuple[str, str | None, float]] = (),
    vocab: Vocabulary = VOCABULARY,
) -> Components:
    """Every raw quantity the features and the blend need, for candidates given as arrays:
    ``user`` (index into the batch), ``item`` and ``cat`` (interned ids; cat -1: none)."""
    m = len(user)
    f = cols.factors[user]  # (M, 2) the users' decay to their read time
    row = cols.user_items(user, item)
    hit = row >= 0
    item_s = np.zeros((m, 2))
    item_s[hit] = cols.item_vals[row[hit]]
    crow = cols.user_categories(user, cat)
    cat_s = np.zeros((m, 2))
    cat_s[crow >= 0] = cols.cat_vals[crow[crow >= 0]]
    bought = np.zeros(m, bool)
    bought[hit] = cols.item_bought[row[hit]]
    trend, trend_max = _trend_parts(cols, user, item, cat, trending, vocab)
    return Components(
        item=item_s * f,
        cat=cat_s * f,
        cat_total=(_per_user(cols.cat_vals, cols.cat_start, "sum") * cols.factors)[user],
        trend=trend,
        trend_max=trend_max,
        item_max=(_per_user(cols.item_vals, cols.item_start, "max") * cols.factors)[user],
        cat_max=(_per_user(cols.cat_vals, cols.cat_start, "max") * cols.factors)[user],
        global_rel=_global_rel(item, global_top, vocab),
        purchased=bought,
    )


def _trend_parts(
    cols: UserColumns,
    user: np.ndarray,
    item: np.ndarray,
    cat: np.ndarray,
    trending: Mapping[str, TrendEntry],
    vocab: Vocabulary,
) -> tuple[np.ndarray, np.ndarray]:
    """Each candidate's trending score in its category and that category's strongest, both
    decayed from the snapshot's t_ref to the user's read time (when that is later)."""
    m = len(user)
    trend = np.zeros((m, 2))
    tmax = np.zeros((m, 2))
    known = cat >= 0
    if not known.any():
        return trend, tmax
    cats = np.unique(cat[known])
    prepared = TRENDS.of(trending, cats.tolist())
    if not prepared:
        return trend, tmax
    table = PairTable.of(prepared)
    trend = table.lookup(cat, item)
    ids = np.fromiter(prepared, np.int64, len(prepared))  # ascending: cats was
    views = list(prepared.values())
    t_refs = np.asarray([NO_TIME if p.t_ref is None else p.t_ref for p in views], np.int64)
    info = np.asarray(
        [(*p.half_lives, p.max_short, p.max_long) for p in views], np.float64
    ).reshape(-1, 4)
    slot = np.full(m, -1, np.int64)
    where = np.minimum(np.searchsorted(ids, cat[known]), len(ids) - 1)
    slot[known] = np.where(ids[where] == cat[known], where, -1)
    has = slot >= 0
    t_c = np.full(m, NO_TIME, np.int64)
    t_c[has] = t_refs[slot[has]]
    hls = np.ones((m, 2))
    hls[has] = info[slot[has], 0:2]
    t_u = cols.read_t[user]
    later = has & (t_c != NO_TIME) & (t_u != NO_TIME) & (t_u > t_c)
    fac = np.ones((m, 2))
    if later.any():
        fac[later] = np.power(2.0, -(t_u - t_c)[later, None] / hls[later])
    tmax[has] = info[slot[has], 2:4]
    return trend * fac, tmax * fac


def _global_rel(
    item: np.ndarray, global_top: Sequence[tuple[str, str | None, float]], vocab: Vocabulary
) -> np.ndarray:
    """The candidate's global trending score relative to the strongest (0 when absent)."""
    if not global_top:
        return np.zeros(len(item))
    scores = np.array([s for _, _, s in global_top], np.float64)
    gmax = max(float(scores.max()), 0.0)
    if gmax <= 0:
        return np.zeros(len(item))
    ids = np.asarray(vocab.items.of([i for i, _, _ in global_top]), np.int64)[::-1]
    ids, last = np.unique(ids, return_index=True)  # the last entry of an item wins (a dict)
    rel = np.maximum(scores[::-1][last], 0.0) / gmax
    return lookup(ids, rel, item, np.ones(len(item), bool))


# --------------------------------------------------------------------------- one user


def components(
    state: UserState,
    candidates: Sequence[Candidate],
    trending: Mapping[str, TrendEntry],
    global_top: Sequence[tuple[str, str | None, float]] = (),
    t: int | None = None,
    vocab: Vocabulary = VOCABULARY,
    cols: UserColumns | None = None,
) -> Components:
    """:func:`components_of` for one user's candidates, read at t >= t_ref (``cols``: the
    user's columns already gathered for that time)."""
    cols = cols if cols is not None else gather([state], [t], vocab)
    item = np.asarray(vocab.items.of([c.item_id for c in candidates]), np.int64)
    cat = np.asarray(
        [vocab.categories.id(c.category) if c.category is not None else -1 for c in candidates],
        np.int64,
    )
    return components_of(
        cols, np.zeros(len(candidates), np.int64), item, cat, trending, global_top, vocab
    )


def features(
    state: UserState,
    candidates: Sequence[Candidate],
    trending: Mapping[str, TrendEntry],
    t: int | None = None,
    global_top: Sequence[tuple[str, str | None, float]] = (),
) -> np.ndarray:
    """The network's per-pair features for one user's candidates (training and serving)."""
    return features_from(components(state, candidates, trending, global_top, t))


# --------------------------------------------------------------------------- features, blend


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
