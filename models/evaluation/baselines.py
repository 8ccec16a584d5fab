"""The methods compared by ``interest evaluate``, behind one two-call interface.

A :class:`Method` is asked ``recommend(user_id, k, now_ms)`` and told ``observe(event)``;
nothing else.  The replay (models/evaluate.py) calls ``recommend`` for a target *before*
it passes the target to ``observe``, so a method can only know what happened strictly
before the event it is judged on.  Each method owns its own state (no state is shared
between methods), which keeps one method's bug from leaking into another's numbers.

Decayed counts use one trick throughout: a value is stored scaled to a fixed anchor time,
``w * 2**((ts - anchor) / H)``, so adding an event is O(1), every stored value decays by
the same factor, and the *ranking* at any later time is the ranking of the stored values.
"""

from __future__ import annotations

import copy
import heapq
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol, TypeVar

import numpy as np

from models.training.embeddings import Interactions
from stream.core.candidates import recommend_batch
from stream.core.decay import LONG, SHORT, Sums
from stream.core.interest import InterestConfig, UserState, fold, new_state
from stream.core.sequence import RecentEvents
from stream.core.trending import (
    GLOBAL_TOP,
    CategoryTrend,
    GlobalTrend,
    TrendConfig,
    fold_trend,
    new_trend,
    top_items,
)
from stream.core.types import Event, ItemVectors, Scorer, SequenceBatch

S = TypeVar("S", bound=Sums)

MAX_EXPONENT = 500.0  # re-anchor before 2**exponent gets near float64's range


class Method(Protocol):
    """What the replay needs of a method: rank for a user now, then learn the event."""

    name: str

    def recommend(self, user_id: str, k: int, now_ms: int) -> list[str]:
        """Up to k item ids, best first, using only events observed so far."""
        ...

    def observe(self, event: Event) -> None:
        """Learn one event (called in event-time order, after any ranking it is a target of)."""
        ...


# ----------------------------------------------------------------------------- counting


@dataclass(slots=True)
class DecayedCounts:
    """Decayed engagement per key for one half-life, stored scaled to an anchor time."""

    half_life_ms: float
    anchor: int | None = None
    index: dict[str, int] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)
    values: np.ndarray = field(default_factory=lambda: np.zeros(64))

    def add(self, key: str, weight: float, ts: int) -> None:
        if self.anchor is None:
            self.anchor = ts
        exponent = (ts - self.anchor) / self.half_life_ms
        if exponent > MAX_EXPONENT:
            self.values *= 2.0**-exponent
            self.anchor, exponent = ts, 0.0
        pos = self.index.get(key)
        if pos is None:
            pos = self.index[key] = len(self.keys)
            self.keys.append(key)
            if pos >= len(self.values):
                self.values = np.concatenate([self.values, np.zeros(len(self.values))])
        self.values[pos] += weight * 2.0**exponent

    def top(self, n: int) -> list[str]:
        """The n keys with the largest positive values, best first (ties: insertion order)."""
        m = len(self.keys)
        if m == 0 or n <= 0:
            return []
        vals = self.values[:m]
        if n < m:
            part = np.argpartition(-vals, n - 1)[:n]
            order = part[np.lexsort((part, -vals[part]))]
        else:
            order = np.lexsort((np.arange(m), -vals))
        return [self.keys[i] for i in order if vals[i] > 0]


def trend_config(config: InterestConfig, max_items: int = 200) -> TrendConfig:
    """Trending speaks the user state's time scale (as the worker configures it)."""
    return TrendConfig(config.half_life_short_ms, config.half_life_long_ms, max_items)


class UserStates:
    """Per-user interest state folded with the production arithmetic (stream.core.interest.fold)."""

    def __init__(self, config: InterestConfig, vectors: ItemVectors | None = None) -> None:
        self.config = config
        self.vectors = vectors
        self.states: dict[str, UserState] = {}

    def observe(self, event: Event) -> UserState:
        state = self.states.get(event.user_id)
        if state is None:
            state = self.states[event.user_id] = new_state(event.user_id, self.config)
        fold(state, [event], self.config, vectors=self.vectors)
        return state

    def get(self, user_id: str) -> UserState | None:
        return self.states.get(user_id)


def strongest(values: Mapping[str, Sequence[float]], horizon: int, n: int) -> list[str]:
    """Keys of the n largest positive ``values[key][horizon]`` (ties: by key)."""
    best = heapq.nlargest(n, values.items(), key=lambda kv: (kv[1][horizon], kv[0]))
    return [key for key, v in best if v[horizon] > 0]


def fill(ranked: list[str], extra: Iterable[str], k: int) -> list[str]:
    """Append ``extra`` items not already in ``ranked`` until there are k."""
    seen = set(ranked)
    for item in extra:
        if len(ranked) >= k:
            break
        if item not in seen:
            ranked.append(item)
            seen.add(item)
    return ranked


# ----------------------------------------------------------------------------- baselines


class Popularity:
    """Globally most engaged items so far, decayed with the long half-life."""

    def __init__(self, half_life_ms: int, name: str = "popularity") -> None:
        self.name = name
        self.counts = DecayedCounts(half_life_ms)

    def recommend(self, user_id: str, k: int, now_ms: int) -> list[str]:
        return self.counts.top(k)

    def observe(self, event: Event) -> None:
        self.counts.add(event.item_id, event.weight, event.ts)


class CategoryItems:
    """Decayed per-category item engagement, both horizons (our own trending fallback)."""

    def __init__(self, config: InterestConfig) -> None:
        self.config = config
        self.by_category: dict[str, tuple[DecayedCounts, DecayedCounts]] = {}

    def observe(self, event: Event) -> None:
        if event.category is None:
            return
        pair = self.by_category.get(event.category)
        if pair is None:
            pair = self.by_category[event.category] = (
                DecayedCounts(self.config.half_life_short_ms),
                DecayedCounts(self.config.half_life_long_ms),
            )
        pair[SHORT].add(event.item_id, event.weight, event.ts)
        pair[LONG].add(event.item_id, event.weight, event.ts)

    def top(self, category: str, horizon: int, n: int) -> list[str]:
        pair = self.by_category.get(category)
        return pair[horizon].top(n) if pair is not None else []


class CategoryPopularity:
    """Most engaged items (long horizon) within the user's strongest long-horizon categories.

    Categories are visited strongest first and each fills what is left of the list, so
    the user's main interest gets the top positions; global popularity fills the rest.
    """

    def __init__(self, config: InterestConfig, name: str = "category-popularity") -> None:
        self.name = name
        self.users = UserStates(replace(config, max_items=0))
        self.items = CategoryItems(config)
        self.popular = Popularity(config.half_life_long_ms)

    def recommend(self, user_id: str, k: int, now_ms: int) -> list[str]:
        state = self.users.get(user_id)
        ranked: list[str] = []
        if state is not None:
            for category in strongest(state.categories, LONG, k):
                fill(ranked, self.items.top(category, LONG, k), k)
                if len(ranked) >= k:
                    break
        return fill(ranked, self.popular.recommend(user_id, k, now_ms), k)

    def observe(self, event: Event) -> None:
        self.users.observe(event)
        self.items.observe(event)
        self.popular.observe(event)


class CategoryTrending:
    """Trending items in the user's top-3 categories (short-horizon category engagement).

    ``trending`` gives the category's trending items, strongest first; by default
    stream/trending.py's aggregation with the same half-lives as the user state.
    """

    def __init__(
        self,
        config: InterestConfig,
        *,
        top_categories: int = 3,
        trending: TrendingSource | None = None,
        name: str = "category-trending",
    ) -> None:
        self.name = name
        self.n_categories = top_categories
        self.users = UserStates(replace(config, max_items=0))
        self.trending: TrendingSource = trending or ModuleTrending(trend_config(config))

    def recommend(self, user_id: str, k: int, now_ms: int) -> list[str]:
        state = self.users.get(user_id)
        if state is None:
            return []
        cats = strongest(state.categories, LONG, self.n_categories)
        quota = max(1, -(-k // max(1, len(cats))))
        ranked: list[str] = []
        for category in cats:  # an even share per category, then top up in order
            fill(ranked, self.trending.top(category, quota, now_ms), len(ranked) + quota)
        for category in cats:
            fill(ranked, self.trending.top(category, k, now_ms), k)
        return ranked[:k]

    def observe(self, event: Event) -> None:
        self.users.observe(event)
        self.trending.observe(event)


class TrendingSource(Protocol):
    def top(self, category: str, n: int, now_ms: int) -> list[str]: ...

    def observe(self, event: Event) -> None: ...


class ModuleTrending:
    """stream/trending.py's decayed per-category trending, short horizon first.

    On sparse logs the short horizon (minutes) is mostly empty, so the category's long
    horizon tops the list up.
    """

    def __init__(self, config: TrendConfig) -> None:
        self.config = config
        self.trends: dict[str, CategoryTrend] = {}

    def top(self, category: str, n: int, now_ms: int) -> list[str]:
        trend = self.trends.get(category)
        if trend is None:
            return []
        ranked = [i for i, s in top_items(trend, SHORT, n, now_ms) if s > 0]
        return fill(ranked, (i for i, s in top_items(trend, LONG, n, now_ms) if s > 0), n)

    def observe(self, event: Event) -> None:
        if event.category is None:
            return
        trend = self.trends.get(event.category)
        if trend is None:
            trend = self.trends[event.category] = new_trend(event.category, self.config)
        fold_trend(trend, [event], self.config)


class UserItemStrength:
    """The user's own items by decayed (long-horizon) strength, from ``state.items``."""

    def __init__(self, config: InterestConfig, name: str = "user-item-strength") -> None:
        self.name = name
        self.users = UserStates(config)

    def recommend(self, user_id: str, k: int, now_ms: int) -> list[str]:
        state = self.users.get(user_id)
        return strongest(state.items, LONG, k) if state is not None else []

    def observe(self, event: Event) -> None:
        self.users.observe(event)


class MFStatic:
    """Trained MF item embeddings with an undecayed user vector sum_e w_e x(item_e)."""

    def __init__(self, item_ids: Sequence[str], embeddings: np.ndarray, name: str = "mf-static"):
        self.name = name
        self.item_ids = list(item_ids)
        self.index = {item: n for n, item in enumerate(self.item_ids)}
        self.emb = np.asarray(embeddings, np.float64)
        self.users: dict[str, np.ndarray] = {}

    def recommend(self, user_id: str, k: int, now_ms: int) -> list[str]:
        u = self.users.get(user_id)
        if u is None or not np.any(u):
            return []
        return [self.item_ids[i] for i in top_indices(self.emb @ u, k)]

    def observe(self, event: Event) -> None:
        pos = self.index.get(event.item_id)
        if pos is None:
            return
        u = self.users.get(event.user_id)
        if u is None:
            u = self.users[event.user_id] = np.zeros(self.emb.shape[1])
        u += event.weight * self.emb[pos]


def top_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores, best first (ties: lower index first)."""
    n = len(scores)
    if n == 0 or k <= 0:
        return np.zeros(0, np.int64)
    if k < n:
        part = np.argpartition(-scores, k - 1)[:k]
        return part[np.lexsort((part, -scores[part]))]
    return np.lexsort((np.arange(n), -scores))


class ImplicitALS:
    """The ``implicit`` library's CPU ALS on the same pre-cut data: an established baseline.

    Same objective family as our MF (confidence 1 + alpha r); the user factor is
    recalculated from the user's current (undecayed) item row at every request, so
    post-cut events count without refitting.
    """

    def __init__(
        self,
        data: Interactions,
        *,
        factors: int,
        regularization: float,
        alpha: float,
        iterations: int,
        seed: int,
        name: str = "als",
    ) -> None:
        from implicit.cpu.als import AlternatingLeastSquares
        from scipy.sparse import csr_matrix
        from threadpoolctl import threadpool_limits

        self.name = name
        self.item_ids = list(data.item_ids)
        self.index = dict(data.item_index)
        self.csr_matrix = csr_matrix
        matrix = csr_matrix(
            (data.values, (data.rows, data.cols)), shape=(data.n_users, data.n_items)
        )
        with threadpool_limits(1, "blas"):  # implicit warns (and crawls) otherwise
            self.model = AlternatingLeastSquares(
                factors=factors,
                regularization=regularization,
                alpha=alpha,
                iterations=iterations,
                random_state=seed,
                num_threads=1,
            )
            self.model.fit(matrix, show_progress=False)
        self.rows: dict[str, dict[int, float]] = {}

    def recommend(self, user_id: str, k: int, now_ms: int) -> list[str]:
        row = self.rows.get(user_id)
        if not row:
            return []
        cols = list(row)
        vals = np.array([row[c] for c in cols], np.float32)
        user_items = self.csr_matrix((vals, ([0] * len(cols), cols)), shape=(1, len(self.item_ids)))
        ids, _ = self.model.recommend(
            0, user_items, N=k, filter_already_liked_items=False, recalculate_user=True
        )
        return [self.item_ids[int(i)] for i in np.ravel(ids)[:k]]

    def observe(self, event: Event) -> None:
        pos = self.index.get(event.item_id)
        if pos is None:
            return
        row = self.rows.setdefault(event.user_id, {})
        row[pos] = row.get(pos, 0.0) + event.weight


class SequenceNext:
    """The sequence model alone: the trained Transformer's next items for the user's recent
    events (the scorer's ``next_in_sequence``, i.e. the model's ``next_items`` signature).

    Each user's events are kept as the state keeps them (:class:`RecentEvents`, the last
    ``length`` in event-time order, the same bounded insertion as the fold), so the model
    sees what the worker would send it. It can only return items the model was trained on,
    all seen before the cut, so the leak check holds by construction.
    """

    def __init__(self, scorer: Scorer, length: int, name: str = "sequence") -> None:
        self.name = name
        self.scorer = scorer
        self.length = length
        self.sequences: dict[str, RecentEvents] = {}

    def recommend(self, user_id: str, k: int, now_ms: int) -> list[str]:
        sequence = self.sequences.get(user_id)
        if sequence is None or not len(sequence):
            return []
        (recs,) = self.scorer.next_in_sequence(SequenceBatch([user_id], [sequence], k))
        return [r.item_id for r in recs[:k]]

    def observe(self, event: Event) -> None:
        sequence = self.sequences.get(event.user_id)
        if sequence is None:
            sequence = self.sequences[event.user_id] = RecentEvents()
        sequence.insert(event.ts, event.item_id, event.type, self.length)


# ----------------------------------------------------------------------------- production

Ranker = Callable[[list[UserState], int], list[list[str]]]
"""Production ranking of a batch of states -> item ids per state."""


class ProductionRanker:
    """stream.core.candidates.recommend_batch, the worker's one ranking path, fed like the worker.

    It keeps the two trending aggregations the worker keeps (per category and global,
    stream/trending.py) from the events it is told about, and calls recommend_batch
    with a scorer (network re-ranking) or ``None`` (the transparent blend).
    """

    def __init__(
        self,
        scorer: Scorer | None,
        config: TrendConfig,
        *,
        policy: str = "demote",
        limit: int = 200,
    ) -> None:
        self.scorer = scorer
        self.config = config
        self.policy = policy
        self.limit = limit
        self.trending: dict[str, CategoryTrend] = {}
        self.global_trend = GlobalTrend(config)

    def observe(self, event: Event) -> None:
        self.global_trend.fold([event])
        if event.category is None:
            return
        trend = self.trending.get(event.category)
        if trend is None:
            trend = self.trending[event.category] = new_trend(event.category, self.config)
        fold_trend(trend, [event], self.config)

    def __call__(self, states: list[UserState], k: int) -> list[list[str]]:
        t = max((s.t_ref for s in states if s.t_ref is not None), default=None)
        recs = recommend_batch(
            states,
            trending=self.trending,
            global_top=self.global_trend.top(max(k, GLOBAL_TOP), t),
            scorer=self.scorer,
            k=k,
            policy=self.policy,
            limit=self.limit,
        )
        return [[r.item_id for r in rec] for rec in recs]


def keep_horizons(state: UserState, keep: tuple[bool, bool]) -> UserState:
    """A copy of ``state`` with the dropped horizon's sums and vector zeroed (ablations)."""
    if all(keep):
        return state

    factor = np.array(keep, np.float32)

    def mask(table: S) -> S:
        masked = copy.copy(table)
        masked.vals = table.vals * factor
        return masked

    vectors = None
    if state.vectors is not None:
        vectors = state.vectors * factor[:, None]
    return replace(
        state, categories=mask(state.categories), items=mask(state.items), vectors=vectors
    )


class InterestStream:
    """The production path: stream.core.interest.fold for state, the production ranking on top.

    ``keep`` selects horizons (ablations zero the other one), ``reweight`` maps an event to
    the weights this variant uses (tuned settings), ``ranker`` is the production ranking.
    """

    def __init__(
        self,
        name: str,
        config: InterestConfig,
        vectors: ItemVectors | None,
        ranker: Ranker,
        *,
        keep: tuple[bool, bool] = (True, True),
        reweight: Callable[[Event], Event] | None = None,
        on_observe: Callable[[Event], None] | None = None,
    ) -> None:
        self.name = name
        self.users = UserStates(config, vectors)
        self.ranker = ranker
        self.keep = keep
        self.reweight = reweight
        self.on_observe = on_observe

    def recommend(self, user_id: str, k: int, now_ms: int) -> list[str]:
        state = self.users.get(user_id)
        if state is None:
            return []
        return self.ranker([keep_horizons(state, self.keep)], k)[0]

    def observe(self, event: Event) -> None:
        if self.reweight is not None:
            event = self.reweight(event)
        self.users.observe(event)
        if self.on_observe is not None:
            self.on_observe(event)


def reweighter(old: Mapping[str, float], new: Mapping[str, float]) -> Callable[[Event], Event]:
    """Event -> the same event weighted with ``new`` base weights (dwell/quantity kept)."""

    def apply(event: Event) -> Event:
        base_old = old.get(event.type, 0.0)
        factor = event.weight / base_old if base_old else 1.0
        return replace(event, weight=new.get(event.type, base_old) * factor)

    return apply
