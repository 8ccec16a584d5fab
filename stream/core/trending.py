"""Trending items per category: decayed item engagement, the second aggregation of the stream.

For a category ``c`` and horizon half-life ``H`` the trending score of an item ``i`` at time
``t`` is ``T_i(t) = sum_e w_e * 2**(-(t - ts_e)/H)`` over every user's applied events on ``i``
(CONTRACT section 2's formula, summed over users instead of over one user's events).  The
arithmetic is the user state's, imported from :mod:`stream.core.interest` rather than re-written:
sums are kept scaled to ``t_ref`` (the newest event time applied), a batch moves ``t_ref`` with
one rescale, and a late event simply adds its already-decayed weight, so any arrival order
gives the same numbers.

Bounded: the ``max_items`` strongest items by long-horizon sum are kept per category (ties
by id, so the survivors do not depend on arrival order either).  Replays are dropped by
(source partition, source offset), kept per category in the same value they protect.

Pure: no faust, kafka or tensorflow; the worker wires it to a category-keyed repartition
topic and publishes :func:`snapshot` views on a compacted topic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stream.core.decay import (
    DEFAULT_HALF_LIVES,
    LONG,
    SHORT,
    Pair,
    add_pair,
    decayed,
    merge,
    newest,
    read_factor,
    rescale_factors,
    strongest,
)
from stream.core.types import Event

GLOBAL_TOP = 100  # global trending items handed to the candidate generator (worker and replay)


@dataclass(frozen=True, slots=True)
class TrendConfig:
    """Half-lives (the user state's, so both aggregations speak the same time scale) and bound."""

    half_life_short_ms: int = DEFAULT_HALF_LIVES[0]
    half_life_long_ms: int = DEFAULT_HALF_LIVES[1]
    max_items: int = 200

    @property
    def half_lives(self) -> tuple[int, int]:
        return (self.half_life_short_ms, self.half_life_long_ms)


@dataclass(slots=True)
class CategoryTrend:
    """One category's trending state: item -> [short, long] sums scaled to ``t_ref``.

    Sums are kept like the user state's (stream.core.decay), scaled to ``t_ref``.
    """

    category: str
    t_ref: int | None = None
    items: dict[str, list[float]] = field(default_factory=dict)
    offsets: dict[int, int] = field(default_factory=dict)  # source partition -> highest offset
    half_lives: tuple[int, int] = DEFAULT_HALF_LIVES


TrendEntry = CategoryTrend | Mapping[str, Any]


def new_trend(category: str, config: TrendConfig | None = None) -> CategoryTrend:
    trend = CategoryTrend(category)
    if config is not None:
        trend.half_lives = config.half_lives
    return trend


def fold_trend(
    trend: CategoryTrend,
    events: Sequence[Event],
    config: TrendConfig,
    positions: Sequence[tuple[int, int]] | None = None,
) -> int:
    """Add the batch's fresh events on ``trend.category`` to it in place; returns how many.

    ``positions[i]`` is the (partition, offset) event ``i`` was read from in the source
    (repartition) topic: an offset at or below the highest applied one is a replay.
    Events of another category are ignored, so a caller may pass a mixed batch.
    """
    fresh = _fresh(trend.offsets, events, positions, trend.category)
    _fold_items(trend, fresh, config)
    return len(fresh)


def _fresh(
    offsets: dict[int, int],
    events: Sequence[Event],
    positions: Sequence[tuple[int, int]] | None,
    category: str | None,
) -> list[Event]:
    """The events to apply: the right category and not a replayed source offset."""
    out: list[Event] = []
    for i, ev in enumerate(events):
        if category is not None and ev.category != category:
            continue
        if positions is not None:
            p, o = positions[i]
            done = offsets.get(p)
            if done is not None and o <= done:
                continue
            offsets[p] = o
        out.append(ev)
    return out


def _fold_items(trend: CategoryTrend, events: list[Event], config: TrendConfig) -> None:
    """One rescale to the batch's newest time, then every event adds its decayed weight."""
    if trend.half_lives != config.half_lives:  # adopted as is, like the user state
        trend.half_lives = config.half_lives
    if not events:
        return
    half_lives = trend.half_lives
    t_new = newest(trend.t_ref, (ev.ts for ev in events))
    adds: dict[str, Pair] = {}
    for ev in events:
        add_pair(adds, ev.item_id, *decayed(ev.weight, t_new - ev.ts, half_lives))
    fs, fl = rescale_factors(trend.t_ref, t_new, half_lives)
    merge(trend.items, adds, fs, fl)
    trend.t_ref = t_new
    if len(trend.items) > config.max_items:
        trend.items = strongest(trend.items, config.max_items)


# --------------------------------------------------------------------------- reads


def trend_parts(
    entry: TrendEntry,
) -> tuple[int | None, tuple[int, int], Mapping[str, Sequence[float]]]:
    """(t_ref, half_lives, items) of a CategoryTrend or of its published snapshot dict."""
    if isinstance(entry, CategoryTrend):
        return entry.t_ref, entry.half_lives, entry.items
    hl = entry.get("half_lives") or DEFAULT_HALF_LIVES
    return entry.get("t_ref"), (int(hl[0]), int(hl[1])), entry.get("items") or {}


def trend_strength(entry: TrendEntry, item_id: str, horizon: int, t: int | None = None) -> float:
    """T_i(t) of one item in a category view (0 when the item is not among the kept ones)."""
    t_ref, hls, items = trend_parts(entry)
    v = items.get(item_id)
    return 0.0 if v is None else float(v[horizon]) * read_factor(t_ref, hls[horizon], t)


def top_items(
    entry: TrendEntry, horizon: int, n: int, t: int | None = None
) -> list[tuple[str, float]]:
    """The n strongest items of the horizon at t, strongest first (ties: by id)."""
    t_ref, hls, items = trend_parts(entry)
    f = read_factor(t_ref, hls[horizon], t)
    best = sorted(items.items(), key=lambda kv: (-kv[1][horizon], kv[0]))[: max(0, n)]
    return [(i, float(v[horizon]) * f) for i, v in best]


def snapshot(trend: CategoryTrend, n: int | None = None) -> dict[str, Any]:
    """JSON-able view for publication: the n strongest items (long horizon), scaled to t_ref.

    Readers get strengths at any t >= t_ref with :func:`trend_strength` / :func:`top_items`.
    """
    items = trend.items if n is None or len(trend.items) <= n else strongest(trend.items, n)
    return {
        "category": trend.category,
        "t_ref": trend.t_ref,
        "half_lives": list(trend.half_lives),
        "items": {i: [float(v[0]), float(v[1])] for i, v in items.items()},
    }


# --------------------------------------------------------------------------- ranked views

EPS = 1e-12


def two_horizon_rank(values: Mapping[str, Sequence[float]]) -> list[str]:
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
    ranked: list[str]  # two_horizon_rank(items)
    max_short: float  # the strongest item per horizon, at t_ref
    max_long: float


_PREPARED: dict[int, tuple[Any, PreparedTrend]] = {}


def prepared(entry: TrendEntry) -> PreparedTrend:
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
        two_horizon_rank(items),
        max((v[SHORT] for v in items.values()), default=0.0),
        max((v[LONG] for v in items.values()), default=0.0),
    )


# --------------------------------------------------------------------------- global


class GlobalTrend:
    """Decayed engagement over all items: the fallback for users with almost no history.

    Same arithmetic and bound as a category, plus each kept item's category (last seen),
    so a fallback recommendation still says what it is.
    """

    __slots__ = ("config", "item_categories", "trend")

    def __init__(self, config: TrendConfig | None = None) -> None:
        self.config = config or TrendConfig()
        self.trend = new_trend("__all__", self.config)
        self.item_categories: dict[str, str] = {}

    def fold(
        self, events: Sequence[Event], positions: Sequence[tuple[int, int]] | None = None
    ) -> int:
        fresh = _fresh(self.trend.offsets, events, positions, None)
        for ev in fresh:
            if ev.category is not None:
                self.item_categories[ev.item_id] = ev.category
        _fold_items(self.trend, fresh, self.config)
        if len(self.item_categories) > len(self.trend.items):
            kept = self.trend.items
            self.item_categories = {i: c for i, c in self.item_categories.items() if i in kept}
        return len(fresh)

    def top(
        self, n: int, t: int | None = None, horizon: int = LONG
    ) -> list[tuple[str, str | None, float]]:
        """(item, category, strength at t) of the n strongest items, strongest first."""
        cats = self.item_categories
        return [(i, cats.get(i), s) for i, s in top_items(self.trend, horizon, n, t)]


def global_top(
    view: Mapping[str, Mapping[str, Any]], n: int = GLOBAL_TOP
) -> list[tuple[str, str | None, float]]:
    """The strongest items over all category snapshots (long horizon, decayed to the newest
    snapshot): the global fallback the worker draws ``popular`` candidates from."""
    snapshots = list(view.values())
    t_new = max((s.get("t_ref") or 0 for s in snapshots), default=0)
    scored: list[tuple[float, str, str | None]] = []
    for snap in snapshots:
        t_ref = snap.get("t_ref") or 0
        half_long = (snap.get("half_lives") or DEFAULT_HALF_LIVES)[LONG]
        factor = read_factor(t_ref, half_long, t_new)
        for item, (_short, long) in snap.get("items", {}).items():
            scored.append((long * factor, item, snap.get("category")))
    scored.sort(key=lambda x: (-x[0], x[1]))
    return [(item, cat, score) for score, item, cat in scored[:n]]
