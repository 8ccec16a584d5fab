"""Integer ids for item and category names, so a batch of users is ranked with arrays.

A rescoring batch asks questions like "is this trending item one of the user's items?" or
"what is this candidate's trending score in its category?" for tens of thousands of
(user, item) pairs. With names interned to integers once, each question is one sorted
search over the whole batch instead of a dict lookup per pair.

The ids are a cache: a vocabulary that grows past its limit starts over (a new
``generation``), and whatever holds ids checks the generation before trusting them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from stream.core.decay import LONG, SHORT
from stream.core.trending import CategoryTrend, TrendEntry, trend_parts

EPS = 1e-12
ITEM_BITS = 32  # (category or user) << ITEM_BITS | item: one int64 key per pair


class Interner:
    """Names -> dense ids, in order of first sight; restarts when it holds ``limit``."""

    __slots__ = ("_names", "generation", "ids", "limit")

    def __init__(self, limit: int = 1 << 21) -> None:
        self.ids: dict[str, int] = {}
        self._names: list[str] = []
        self.limit = limit
        self.generation = 0

    def __len__(self) -> int:
        return len(self._names)

    def id(self, name: str) -> int:
        n = self.ids.get(name)
        if n is None:
            n = self.ids[name] = len(self._names)
            self._names.append(name)
        return n

    def of(self, names: Iterable[str]) -> list[int]:
        get, add = self.ids.get, self.id
        return [n if (n := get(s)) is not None else add(s) for s in names]

    def name(self, n: int) -> str:
        return self._names[n]

    @property
    def names(self) -> list[str]:
        return self._names

    def make_room(self) -> None:
        """Start over when full (call between batches, never inside one)."""
        if len(self._names) >= self.limit:
            self.ids.clear()
            self._names = []
            self.generation += 1


class Vocabulary:
    """The item and category interners, and the categories' name order (for ties)."""

    def __init__(self, item_limit: int = 1 << 21) -> None:
        self.items = Interner(item_limit)
        self.categories = Interner(1 << 20)
        self._rank: np.ndarray = np.zeros(0, np.int64)

    def make_room(self) -> None:
        self.items.make_room()
        self.categories.make_room()

    def category_rank(self) -> np.ndarray:
        """Each category id's position in the sorted category names (ties break on it)."""
        n = len(self.categories)
        if len(self._rank) != n:
            order = sorted(range(n), key=self.categories.names.__getitem__)
            rank = np.empty(n, np.int64)
            rank[np.asarray(order, np.int64)] = np.arange(n)
            self._rank = rank
        return self._rank

    def item_order(self, ids: Sequence[int]) -> list[int]:
        """The given item ids sorted by name (a tie-break over a handful of items)."""
        names = self.items.names
        return sorted(ids, key=names.__getitem__)


VOCABULARY = Vocabulary()  # the process's vocabulary (the worker and evaluation share one)


@dataclass(frozen=True, slots=True)
class PreparedTrend:
    """What every user's ranking reads of one category's trending entry, as arrays."""

    category: int
    t_ref: int | None
    half_lives: tuple[int, int]
    ranked: np.ndarray  # item ids, best first (the two-horizon rank, ties by name)
    ranked_vals: np.ndarray  # (m, 2) float64 sums at t_ref, in ranked order
    sorted_ids: np.ndarray  # item ids ascending, for lookups
    sorted_vals: np.ndarray  # (m, 2) float64, aligned with sorted_ids
    max_short: float  # the strongest item per horizon, at t_ref
    max_long: float
    generation: int


def two_horizon_rank(keys: Sequence[str], vals: np.ndarray) -> np.ndarray:
    """Row order by the mean of the two horizons' max-normalised values, best first (ties:
    by key). Normalising per horizon keeps one burst (short) and steady interest (long)
    comparable; the same rule orders a user's own items and a category's trending items."""
    if not len(keys):
        return np.zeros(0, np.int64)
    ms = max(float(vals[:, SHORT].max()), EPS)
    ml = max(float(vals[:, LONG].max()), EPS)
    score = (vals[:, SHORT] / ms + vals[:, LONG] / ml).tolist()
    return np.asarray(sorted(range(len(keys)), key=lambda n: (-score[n], keys[n])), np.int64)


class TrendTables:
    """Prepared trending entries by category id, computed once per published snapshot.

    Snapshots (dicts from the trending topic) are replaced, never changed, so they are
    cached by identity; a CategoryTrend (evaluation folds into it in place) by identity and
    version (every fold bumps it)."""

    def __init__(self, vocab: Vocabulary) -> None:
        self.vocab = vocab
        self._cache: dict[int, tuple[Any, PreparedTrend, int]] = {}

    def prepare(self, category: str, entry: TrendEntry) -> PreparedTrend:
        gen = self.vocab.items.generation
        stamp = entry.version if isinstance(entry, CategoryTrend) else 0
        hit = self._cache.get(id(entry))
        if hit is not None and hit[0] is entry and hit[1].generation == gen and hit[2] == stamp:
            return hit[1]
        t_ref, hls, items = trend_parts(entry)
        if isinstance(entry, CategoryTrend):
            keys, vals = entry.items.keys_, entry.items.vals.astype(np.float64)
        else:
            keys = list(items)
            vals = np.asarray(list(items.values()), np.float64).reshape(-1, 2)
        order = two_horizon_rank(keys, vals)
        ids = np.asarray(self.vocab.items.of(keys), np.int64)
        by_id = np.argsort(ids, kind="stable")
        view = PreparedTrend(
            category=self.vocab.categories.id(category),
            t_ref=t_ref,
            half_lives=hls,
            ranked=ids[order],
            ranked_vals=vals[order],
            sorted_ids=ids[by_id],
            sorted_vals=vals[by_id],
            max_short=float(vals[:, SHORT].max()) if len(keys) else 0.0,
            max_long=float(vals[:, LONG].max()) if len(keys) else 0.0,
            generation=gen,
        )
        if len(self._cache) >= 8192:
            self._cache.clear()
        self._cache[id(entry)] = (entry, view, stamp)  # holding the entry keeps its id unique
        return view

    def of(
        self, trending: Mapping[str, TrendEntry], categories: Iterable[int]
    ) -> dict[int, PreparedTrend]:
        """The prepared entries of these category ids (those with a trending entry)."""
        names = self.vocab.categories.names
        out: dict[int, PreparedTrend] = {}
        for c in categories:
            entry = trending.get(names[c])
            if entry is not None:
                out[c] = self.prepare(names[c], entry)
        return out


TRENDS = TrendTables(VOCABULARY)


@dataclass(frozen=True, slots=True)
class PairTable:
    """(category, item) -> trending [short, long] at the snapshot's t_ref, for lookups."""

    keys: np.ndarray  # sorted int64 category << ITEM_BITS | item
    vals: np.ndarray  # (n, 2) float64

    @classmethod
    def of(cls, prepared: Mapping[int, PreparedTrend]) -> PairTable:
        if not prepared:
            return cls(np.zeros(0, np.int64), np.zeros((0, 2)))
        keys = np.concatenate([(c << ITEM_BITS) | p.sorted_ids for c, p in prepared.items()])
        vals = np.concatenate([p.sorted_vals for p in prepared.values()])
        order = np.argsort(keys, kind="stable")
        return cls(keys[order], vals[order])

    def lookup(self, categories: np.ndarray, items: np.ndarray) -> np.ndarray:
        """(n, 2) values of the pairs, zeros where absent (or the category is -1)."""
        return lookup(self.keys, self.vals, (categories << ITEM_BITS) | items, categories >= 0)


def lookup(keys: np.ndarray, vals: np.ndarray, query: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Rows of ``vals`` whose sorted ``keys`` equal ``query`` (zeros where none)."""
    out = np.zeros((len(query), vals.shape[1] if vals.ndim > 1 else 1), np.float64)
    if not len(keys) or not len(query):
        return out if vals.ndim > 1 else out[:, 0]
    at = np.searchsorted(keys, query)
    at = np.minimum(at, len(keys) - 1)
    hit = valid & (keys[at] == query)
    if vals.ndim > 1:
        out[hit] = vals[at[hit]]
        return out
    flat = out[:, 0]
    flat[hit] = vals[at[hit]]
    return flat
