"""Trending items per category: decayed item engagement, the second aggregation of the stream.

For a category ``c`` and horizon half-life ``H`` the trending score of an item ``i`` at time
``t`` is ``T_i(t) = sum_e w_e * 2**(-(t - ts_e)/H)`` over every user's applied events on ``i``
(CONTRACT section 2's formula, summed over users instead of over one user's events).  The
arithmetic is the user state's (stream.core.decay): sums are kept scaled to ``t_ref`` (the
newest event time applied), a batch moves ``t_ref`` with one rescale, and a late event
simply adds its already-decayed weight, so any arrival order gives the same numbers. Many
categories are folded at once (:func:`fold_trends`), like many users.

Bounded: the ``max_items`` strongest items by long-horizon sum are kept per category (ties
by id, so the survivors do not depend on arrival order either).  Replays are dropped by
(source partition, source offset), kept per category in the same value they protect.

Pure: no faust, kafka or tensorflow; the worker wires it to a category-keyed repartition
topic and publishes :func:`snapshot` views on a compacted topic.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream.core.decay import (
    DEFAULT_HALF_LIVES,
    LONG,
    NO_TIME,
    SHORT,
    Sums,
    accumulate,
    decayed_batch,
    read_factor,
    strongest_rows,
)
from stream.core.types import Event, EventBatch

__all__ = [
    "GLOBAL_TOP",
    "LONG",
    "SHORT",
    "CategoryTrend",
    "GlobalTrend",
    "TrendConfig",
    "TrendEntry",
    "fold_trend",
    "fold_trends",
    "global_top",
    "new_trend",
    "snapshot",
    "top_items",
    "trend_parts",
    "trend_strength",
]

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
    """One category's trending state: item -> [short, long] sums scaled to ``t_ref``."""

    category: str
    t_ref: int | None = None
    items: Sums = field(default_factory=Sums)
    offsets: dict[int, int] = field(default_factory=dict)  # source partition -> highest offset
    half_lives: tuple[int, int] = DEFAULT_HALF_LIVES
    version: int = 0  # in memory only: bumped by every fold, so readers can cache views

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CategoryTrend):
            return NotImplemented
        return (
            (self.category, self.t_ref, self.offsets, self.half_lives)
            == (other.category, other.t_ref, other.offsets, other.half_lives)
            and self.items.keys_ == other.items.keys_
            and self.items.vals.tobytes() == other.items.vals.tobytes()
        )

    __hash__ = None  # type: ignore[assignment]


TrendEntry = CategoryTrend | Mapping[str, Any]


def rows_by_category(
    batch: EventBatch, sources: Sequence[int], offsets: Sequence[int]
) -> dict[str, list[list[Any]]]:
    """A batch's events as the by-category topic carries them, one record per category:
    rows of [user, item, type, ts, weight, source partition, source offset]. Events
    without a category have no trend."""
    by_category: dict[str, list[list[Any]]] = defaultdict(list)
    rows = zip(
        batch.category,
        batch.user_id,
        batch.item_id,
        batch.type,
        batch.ts.tolist(),
        batch.weight.tolist(),
        sources,
        offsets,
        strict=True,
    )
    for category, *entry in rows:
        if category is not None:
            by_category[category].append(entry)
    return by_category


def new_trend(category: str, config: TrendConfig | None = None) -> CategoryTrend:
    trend = CategoryTrend(category)
    if config is not None:
        trend.half_lives = config.half_lives
    return trend


def fold_trends(
    trends: Sequence[CategoryTrend],
    batch: EventBatch,
    slots: np.ndarray,
    config: TrendConfig,
    *,
    sources: Sequence[int] | None = None,
    offsets: Sequence[int] | None = None,
) -> np.ndarray:
    """Add events to many categories' trends in place; returns the events applied per trend.

    ``slots[i]`` is the index in ``trends`` of event ``i``'s category; ``sources[i]`` /
    ``offsets[i]`` the (partition, offset) it was read from in the source (repartition)
    topic: an offset at or below the highest applied one of that source is a replay."""
    for trend in trends:
        if trend.half_lives != config.half_lives:  # adopted as is, like the user state
            trend.half_lives = config.half_lives
    slots = np.asarray(slots, np.int64)
    fresh = np.ones(len(slots), bool)
    if sources is not None and offsets is not None:
        for i, (g, p, o) in enumerate(zip(slots.tolist(), sources, offsets, strict=True)):
            done = trends[g].offsets.get(p)
            if done is not None and o <= done:
                fresh[i] = False
            else:
                trends[g].offsets[p] = o
    keep = np.flatnonzero(fresh)
    applied = np.bincount(slots[keep], minlength=len(trends))
    if not len(keep):
        return applied
    g = slots[keep]
    t_old = np.array([NO_TIME if t.t_ref is None else t.t_ref for t in trends], np.int64)
    half = np.array([t.half_lives for t in trends], np.float64)
    t_new, adds, factors = decayed_batch(t_old, g, batch.ts[keep], batch.weight[keep], half)
    items = batch.item_id
    rows = np.empty(len(keep), np.int64)
    for j, (i, gg) in enumerate(zip(keep.tolist(), g.tolist(), strict=True)):
        table = trends[gg].items
        row = table.index.get(items[i])
        rows[j] = row if row is not None else table.add_key(items[i])
    touched = np.flatnonzero(applied)
    accumulate([trends[x].items for x in touched.tolist()], touched, g, rows, adds, factors)
    for x in touched.tolist():
        trend = trends[x]
        trend.version += 1
        trend.t_ref = int(t_new[x])
        if len(trend.items) > config.max_items:
            trend.items.keep(strongest_rows(trend.items, config.max_items))
    return applied


def fold_trend(
    trend: CategoryTrend,
    events: Sequence[Event],
    config: TrendConfig,
    positions: Sequence[tuple[int, int]] | None = None,
) -> int:
    """Add the fresh events on ``trend.category`` to it in place; returns how many.

    Events of another category are ignored, so a caller may pass a mixed batch."""
    picks = [n for n, ev in enumerate(events) if ev.category == trend.category]
    mine = [events[n] for n in picks]
    sources = offsets = None
    if positions is not None:
        sources = [positions[n][0] for n in picks]
        offsets = [positions[n][1] for n in picks]
    applied = fold_trends(
        [trend],
        EventBatch.of(mine),
        np.zeros(len(mine), np.int64),
        config,
        sources=sources,
        offsets=offsets,
    )
    return int(applied[0])


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
    if isinstance(entry, CategoryTrend):
        pairs = zip(entry.items.keys_, entry.items.vals[:, horizon].tolist(), strict=True)
    else:
        pairs = ((i, float(v[horizon])) for i, v in items.items())
    best = sorted(pairs, key=lambda kv: (-kv[1], kv[0]))[: max(0, n)]
    return [(i, v * f) for i, v in best]


def snapshot(trend: CategoryTrend, n: int | None = None) -> dict[str, Any]:
    """JSON-able view for publication: the n strongest items (long horizon), scaled to t_ref.

    Readers get strengths at any t >= t_ref with :func:`trend_strength` / :func:`top_items`.
    """
    table = trend.items
    rows = np.arange(len(table)) if n is None or len(table) <= n else strongest_rows(table, n)
    vals = table.vals[rows].astype(np.float64).tolist()
    keys = table.keys_
    return {
        "category": trend.category,
        "t_ref": trend.t_ref,
        "half_lives": list(trend.half_lives),
        "items": {keys[r]: v for r, v in zip(rows.tolist(), vals, strict=True)},
    }


# --------------------------------------------------------------------------- global


class GlobalTrend:
    """Decayed engagement over all items: the fallback for users with almost no history.

    Same arithmetic and bound as a category, plus each kept item's category (last seen),
    so a fallback recommendation still says what it is.
    """

    __slots__ = ("_top", "config", "item_categories", "trend")

    def __init__(self, config: TrendConfig | None = None) -> None:
        self.config = config or TrendConfig()
        self.trend = new_trend("__all__", self.config)
        self.item_categories: dict[str, str] = {}
        self._top: tuple[tuple[int, int, int | None, int], list[tuple[str, str | None, float]]]
        self._top = ((-1, 0, None, 0), [])

    def fold(
        self, events: Sequence[Event], positions: Sequence[tuple[int, int]] | None = None
    ) -> int:
        before = dict(self.trend.offsets)
        sources = offsets = None
        if positions is not None:
            sources = [p for p, _ in positions]
            offsets = [o for _, o in positions]
        applied = fold_trends(
            [self.trend],
            EventBatch.of(list(events)),
            np.zeros(len(events), np.int64),
            self.config,
            sources=sources,
            offsets=offsets,
        )
        for n, ev in enumerate(events):  # the fresh events' categories (a replay is not fresh)
            if ev.category is not None and (
                positions is None or positions[n][1] > before.get(positions[n][0], -1)
            ):
                self.item_categories[ev.item_id] = ev.category
        kept = self.trend.items
        if len(self.item_categories) > 2 * len(kept):  # now and then: items fall out in bulk
            self.item_categories = {i: c for i, c in self.item_categories.items() if i in kept}
        return int(applied[0])

    def top(
        self, n: int, t: int | None = None, horizon: int = LONG
    ) -> list[tuple[str, str | None, float]]:
        """(item, category, strength at t) of the n strongest items, strongest first."""
        key = (self.trend.version, n, t, horizon)
        if self._top[0] != key:  # readers ask again and again between folds
            cats = self.item_categories
            self._top = (
                key,
                [(i, cats.get(i), s) for i, s in top_items(self.trend, horizon, n, t)],
            )
        return self._top[1]


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
