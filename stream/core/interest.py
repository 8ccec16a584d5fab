"""Per-user interest state and its exact incremental update, folded a whole fetch at a time.

The arithmetic (CONTRACT section 2): for a horizon with half-life ``H`` the strength of a
category ``c`` at time ``t`` is ``S_c(t) = sum_e w_e * 2**(-(t - ts_e)/H)`` over the
applied events on ``c``.  Exponential decay composes, so the state keeps every sum
*scaled to* ``t_ref`` (the newest event time applied) and any arrival order gives the
same numbers:

* a batch whose newest event is after ``t_ref`` rescales the kept sums once by
  ``2**(-(t_new - t_ref)/H)`` and moves ``t_ref`` to ``t_new``;
* every event of the batch then adds ``w * 2**(-(t_ref - ts)/H)`` (a late event simply
  adds its already-decayed weight; nothing is dropped).

The state is columnar: category and item sums are ``(n, 2)`` float32 arrays next to their
keys (:class:`Sums`), so one fetch of events for many users is folded with a handful of
numpy calls (:func:`fold_batch`: one decay call per horizon for all events, one rescale
and one grouped sum for all the users' rows). What stays per event in Python is finding
its row (a dict lookup) and its dedup check.

Floats are float32 at rest: sums are computed in float64 inside a fold and rounded to
float32 once at its end, so ``decode(encode(s))`` is bit-for-bit equal to ``s`` and a state
costs half the bytes of float64.  The rounding adds at most ~6e-8 relative error per fold,
far inside the contract's 1e-4.

Each state also keeps its user's last ``sequence_length`` applied events in event-time order
(stream.core.sequence): the same events as the sums (after dedup and replays), bounded, and
as exact: the kept events are the newest of all applied whatever the order they came in.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import itemgetter

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
from stream.core.dedup import FRESH, SeenIds
from stream.core.sequence import RecentEvents
from stream.core.types import Event, EventBatch, ItemVectors

__all__ = [
    "LONG",
    "SHORT",
    "FoldResult",
    "InterestConfig",
    "ItemSums",
    "RecentEvents",
    "Sums",
    "UserState",
    "fold",
    "fold_batch",
    "new_state",
]

PURCHASE_TYPE = "purchase"


@dataclass(frozen=True, slots=True)
class InterestConfig:
    """The knobs of the arithmetic (stream.config builds it from the settings)."""

    half_life_short_ms: int = DEFAULT_HALF_LIVES[0]
    half_life_long_ms: int = DEFAULT_HALF_LIVES[1]
    max_categories: int = 64
    max_items: int = 100
    sequence_length: int = 50  # recent events kept per user (stream.core.sequence); 0: none


class ItemSums(Sums):
    """Item sums plus, per kept item, its category and whether the user bought it.

    Categories are codes into ``cat_names`` (1-based; 0 = no category), so a state names
    each category once however many of its items it keeps."""

    __slots__ = ("_cat_index", "bought", "cat", "cat_names")

    def __init__(
        self,
        keys: list[str] | None = None,
        vals: np.ndarray | None = None,
        raw: list[bytes] | None = None,
        *,
        cat: list[int] | None = None,
        cat_names: list[str] | None = None,
        bought: list[bool] | None = None,
    ) -> None:
        super().__init__(keys, vals, raw)
        n = len(self.keys_)
        self.cat: list[int] = cat if cat is not None else [0] * n
        self.cat_names: list[str] = cat_names if cat_names is not None else []
        self.bought: list[bool] = bought if bought is not None else [False] * n
        self._cat_index: dict[str, int] | None = None

    def add_key(self, key: str) -> int:
        self.cat.append(0)
        self.bought.append(False)
        return super().add_key(key)

    def _copy_from(self, source: Sums) -> None:
        super()._copy_from(source)
        assert isinstance(source, ItemSums)
        self.cat = source.cat.copy()
        self.cat_names = source.cat_names.copy()
        self.bought = source.bought.copy()
        self._cat_index = None

    def category_code(self, name: str) -> int:
        """The code of a category name, added to ``cat_names`` if new."""
        if self._cat_index is None:
            self._cat_index = {c: n for n, c in enumerate(self.cat_names, 1)}
        code = self._cat_index.get(name)
        if code is None:
            self.cat_names.append(name)
            code = self._cat_index[name] = len(self.cat_names)
        return code

    def category_of(self, row: int) -> str | None:
        code = self.cat[row]
        return self.cat_names[code - 1] if code else None

    def keep(self, rows: np.ndarray) -> None:
        sel = rows.tolist()
        self.cat = [self.cat[n] for n in sel]
        self.bought = [self.bought[n] for n in sel]
        super().keep(rows)
        used = set(self.cat)
        if len(self.cat_names) > len(used) + 16:  # forget names no kept item uses
            names = {c: self.cat_names[c - 1] for c in sorted(used) if c}
            self.cat_names = list(names.values())
            recode = {c: n for n, c in enumerate(names, 1)}
            self.cat = [recode.get(c, 0) for c in self.cat]
            self._cat_index = None


@dataclass(slots=True, eq=False)
class UserState:
    """Everything the worker keeps about one user; one table value, one changelog record.

    ``categories`` and ``items`` hold ``[short, long]`` sums scaled to ``t_ref`` (float32).
    ``vectors`` is ``(2, dim)`` float32, also scaled to ``t_ref``, or None while no model is
    loaded.  ``offsets`` (the highest applied offset per source partition) lives here, in the
    same value as what it protects, so a state and its replay record are written together;
    event ids are remembered apart (stream.core.dedup), for a window of event time.
    ``sequence`` is the last ``sequence_length`` applied events in event-time order
    (stream.core.sequence), the sequence model's input.
    """

    user_id: str
    t_ref: int | None = None
    categories: Sums = field(default_factory=Sums)
    items: ItemSums = field(default_factory=ItemSums)
    vectors: np.ndarray | None = None
    model_version: str | None = None
    type_counts: dict[str, int] = field(default_factory=dict)
    events_applied: int = 0
    offsets: dict[int, int] = field(default_factory=dict)  # partition -> highest applied offset
    last_event_kafka_ts: int | None = None
    half_lives: tuple[int, int] = DEFAULT_HALF_LIVES  # (short, long) the sums were built with
    sequence: RecentEvents = field(default_factory=RecentEvents)

    @property
    def item_categories(self) -> dict[str, str]:
        """Kept item -> its category (items without one left out)."""
        items = self.items
        return {k: items.cat_names[c - 1] for k, c in zip(items.keys_, items.cat, strict=True) if c}

    @property
    def purchased(self) -> set[str]:
        """Kept items the user bought."""
        return {k for k, b in zip(self.items.keys_, self.items.bought, strict=True) if b}

    def snapshot(self) -> UserState:
        """A copy to read in another thread (the ranking) while folds go on in this one;
        it shares only arrays, which folds replace and never write into."""
        return UserState(
            self.user_id,
            self.t_ref,
            self.categories.copy(),
            self.items.copy(),
            self.vectors,
            self.model_version,
            dict(self.type_counts),
            self.events_applied,
            dict(self.offsets),
            self.last_event_kafka_ts,
            self.half_lives,
            self.sequence.copy(),
        )

    def __eq__(self, other: object) -> bool:
        """Field-wise equality, sums and vectors compared bit-for-bit (round-trip tests)."""
        if not isinstance(other, UserState):
            return NotImplemented
        for name in ("user_id", "t_ref", "model_version", "type_counts", "events_applied"):
            if getattr(self, name) != getattr(other, name):
                return False
        if (self.offsets, self.last_event_kafka_ts, self.half_lives) != (
            other.offsets,
            other.last_event_kafka_ts,
            other.half_lives,
        ):
            return False
        if not _same_array(self.vectors, other.vectors) or self.sequence != other.sequence:
            return False
        for a, b in ((self.categories, other.categories), (self.items, other.items)):
            if a.keys_ != b.keys_ or not _same_array(a.vals, b.vals):
                return False
        return (self.item_categories, self.purchased) == (other.item_categories, other.purchased)

    __hash__ = None  # type: ignore[assignment]


def _same_array(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.shape == b.shape and a.tobytes() == b.tobytes()


@dataclass(frozen=True, slots=True)
class FoldResult:
    """What one fold did, for the metrics: applied events per user, duplicates, types."""

    applied: np.ndarray  # (users,) int64: events applied to each state
    duplicates: int
    applied_by_type: dict[str, int]


def new_state(user_id: str, config: InterestConfig | None = None) -> UserState:
    """An empty state; ``config`` only records the half-lives (fold sets them anyway)."""
    state = UserState(user_id)
    if config is not None:
        state.half_lives = (config.half_life_short_ms, config.half_life_long_ms)
    return state


# --------------------------------------------------------------------------- fold


def fold(
    state: UserState,
    events: Sequence[Event],
    config: InterestConfig,
    *,
    vectors: ItemVectors | None = None,
    positions: Sequence[tuple[int, int]] | None = None,
    kafka_ts: Sequence[int] | None = None,
    seen: SeenIds | None = None,
) -> FoldResult:
    """Apply one user's events to ``state`` in place (:func:`fold_batch` for one user);
    with ``seen``, event ids already applied are skipped (stream.core.dedup)."""
    batch = EventBatch.of(list(events))
    sources = offsets = None
    if positions is not None:
        sources = [p for p, _ in positions]
        offsets = [o for _, o in positions]
    duplicates = 0
    if seen is not None:
        verdict = seen.check(batch.user_id, batch.event_id, batch.ts, sources, offsets)
        picks = np.flatnonzero(verdict == FRESH).tolist()
        duplicates = len(events) - len(picks)
        batch = batch.take(picks)
        sources = [sources[i] for i in picks] if sources is not None else None
        offsets = [offsets[i] for i in picks] if offsets is not None else None
        kafka_ts = [kafka_ts[i] for i in picks] if kafka_ts is not None else None
    result = fold_batch(
        [state],
        batch,
        np.zeros(len(batch), np.int64),
        config,
        vectors=vectors,
        sources=sources,
        offsets=offsets,
        kafka_ts=kafka_ts,
    )
    if duplicates:
        return FoldResult(result.applied, result.duplicates + duplicates, result.applied_by_type)
    return result


def fold_batch(
    states: Sequence[UserState],
    batch: EventBatch,
    users: np.ndarray,
    config: InterestConfig,
    *,
    vectors: ItemVectors | None = None,
    sources: Sequence[int] | None = None,
    offsets: Sequence[int] | None = None,
    kafka_ts: Sequence[int] | None = None,
) -> FoldResult:
    """Apply a batch of events of many users to their states in place, skipping replays.

    ``users[i]`` is the index in ``states`` of event ``i``'s user. Events of one user must
    come in offset order. ``sources[i]``/``offsets[i]`` say where event ``i`` was read
    from: an offset at or below the highest already applied for that source is a replay
    and is skipped. (Event ids re-sent at new offsets are the caller's to filter first:
    stream.core.dedup.) ``kafka_ts[i]`` is its record timestamp (for the latency metric).
    When ``vectors`` is a different model than a state's vectors, the state is first
    re-based on it; with ``vectors=None`` states keep no vector. Every applied event also
    goes into its user's sequence, bounded by ``config.sequence_length``.
    """
    for state in states:
        _align_model(state, vectors)
        _align_half_lives(state, config)
    users = np.asarray(users, np.int64)
    fresh = _replays(states, users, sources, offsets)
    keep = np.flatnonzero(fresh)
    applied = np.bincount(users[keep], minlength=len(states))
    by_type: dict[str, int] = {}
    if len(keep):
        touched = np.flatnonzero(applied)
        _apply(states, batch, users, keep, touched, config, vectors)
        _count(states, batch, users, keep, by_type, kafka_ts)
        _remember(states, batch, users, keep, touched, applied, config.sequence_length)
        for u in touched.tolist():
            _bound(states[u], config)
    return FoldResult(applied, len(batch) - len(keep), by_type)


def _align_model(state: UserState, vectors: ItemVectors | None) -> None:
    if vectors is None:
        state.vectors, state.model_version = None, None
    elif state.vectors is None or state.model_version != vectors.version:
        rebase(state, vectors)


def _align_half_lives(state: UserState, config: InterestConfig) -> None:
    """A changed half-life is adopted as is: the kept sums are not (cannot be) re-derived."""
    hl = (config.half_life_short_ms, config.half_life_long_ms)
    if state.half_lives != hl:
        state.half_lives = hl


def _replays(
    states: Sequence[UserState],
    users: np.ndarray,
    sources: Sequence[int] | None,
    offsets: Sequence[int] | None,
) -> np.ndarray:
    """Which events to apply: not at or below the highest offset applied from its source
    (a replay after a crash or a rebalance)."""
    fresh = np.ones(len(users), bool)
    if sources is None or offsets is None:
        return fresh
    for i, (u, p, o) in enumerate(zip(users.tolist(), sources, offsets, strict=True)):
        known = states[u].offsets
        done = known.get(p)
        if done is not None and o <= done:
            fresh[i] = False
        else:
            known[p] = o
    return fresh


def _apply(
    states: Sequence[UserState],
    batch: EventBatch,
    users: np.ndarray,
    keep: np.ndarray,
    touched: np.ndarray,
    config: InterestConfig,
    vectors: ItemVectors | None,
) -> None:
    """One rescale to each user's new t_ref, then every event adds its decayed weight."""
    u = users[keep]
    t_old = np.array([NO_TIME if s.t_ref is None else s.t_ref for s in states], np.int64)
    half = np.array([s.half_lives for s in states], np.float64)  # (users, 2)
    t_new, adds, factors = decayed_batch(t_old, u, batch.ts[keep], batch.weight[keep], half)
    cats = batch.category
    items = batch.item_id
    rows_cat = np.empty(len(keep), np.int64)
    rows_item = np.empty(len(keep), np.int64)
    track = config.max_items > 0
    purchase = [t == PURCHASE_TYPE for t in batch.type]
    for j, (i, uu) in enumerate(zip(keep.tolist(), u.tolist(), strict=True)):
        state = states[uu]
        c = cats[i]
        if c is None:
            rows_cat[j] = -1
        else:
            row = state.categories.index.get(c)
            rows_cat[j] = row if row is not None else state.categories.add_key(c)
        if not track:
            continue
        table = state.items
        row = table.index.get(items[i])
        if row is None:
            row = table.add_key(items[i])
        rows_item[j] = row
        if c is not None:
            table.cat[row] = table.category_code(c)
        if purchase[i]:
            table.bought[row] = True
    tl = touched.tolist()
    accumulate([states[x].categories for x in tl], touched, u, rows_cat, adds, factors)
    if track:
        accumulate([states[x].items for x in tl], touched, u, rows_item, adds, factors)
    if vectors is not None:
        _add_vectors(states, touched, u, [items[i] for i in keep.tolist()], adds, factors, vectors)
    for x in tl:
        states[x].t_ref = int(t_new[x])


def _add_vectors(
    states: Sequence[UserState],
    touched: np.ndarray,
    u: np.ndarray,
    items: list[str],
    adds: np.ndarray,
    factors: np.ndarray,
    vectors: ItemVectors,
) -> None:
    """vectors = vectors * factor + sum_e add_e * x(item_e), for every touched user."""
    acc = np.stack([states[x].vectors for x in touched.tolist()]).astype(np.float64)
    acc *= factors[touched][:, :, None]
    slot = np.full(len(factors), -1, np.int64)
    slot[touched] = np.arange(len(touched))
    found = [(j, x) for j, x in enumerate(vectors.get(i) for i in items) if x is not None]
    if found:
        at = np.array([j for j, _ in found], np.int64)
        rows = np.stack([x for _, x in found]).astype(np.float64)  # (k, d)
        contrib = adds[at][:, :, None] * rows[:, None, :]  # (k, 2, d)
        np.add.at(acc, slot[u[at]], contrib)
    small = acc.astype(np.float32)
    for n, x in enumerate(touched.tolist()):
        states[x].vectors = small[n].copy()


def _count(
    states: Sequence[UserState],
    batch: EventBatch,
    users: np.ndarray,
    keep: np.ndarray,
    by_type: dict[str, int],
    kafka_ts: Sequence[int] | None,
) -> None:
    types = batch.type
    ul = users.tolist()
    for i in keep.tolist():
        state = states[ul[i]]
        t = types[i]
        state.type_counts[t] = state.type_counts.get(t, 0) + 1
        state.events_applied += 1
        by_type[t] = by_type.get(t, 0) + 1
        if kafka_ts is not None:
            k = kafka_ts[i]
            if state.last_event_kafka_ts is None or k > state.last_event_kafka_ts:
                state.last_event_kafka_ts = k


def _remember(
    states: Sequence[UserState],
    batch: EventBatch,
    users: np.ndarray,
    keep: np.ndarray,
    touched: np.ndarray,
    applied: np.ndarray,
    length: int,
) -> None:
    """Add the applied events to their users' sequences (stream.core.sequence).

    The events are grouped by user with one stable argsort and gathered as (ts, item,
    type) tuples by one ``itemgetter`` and a ``zip`` (C loops); what is per user is one
    :meth:`RecentEvents.add` call.
    A touched user's sequence is trimmed to ``length`` (0: emptied) even if the setting
    was lowered since it was kept."""
    tl = touched.tolist()
    if length <= 0:
        for u in tl:
            if states[u].sequence.ts:
                states[u].sequence.clear()
        return
    order = keep if len(tl) == 1 else keep[np.argsort(users[keep], kind="stable")]
    at = order.tolist()
    if len(at) > 1:
        pick = itemgetter(*at)
        ts = batch.ts[order].tolist()
        events = list(zip(ts, pick(batch.item_id), pick(batch.type), strict=True))
    else:
        events = [(int(batch.ts[at[0]]), batch.item_id[at[0]], batch.type[at[0]])]
    if len(tl) == 1:
        states[tl[0]].sequence.add(events, length)
        return
    end = 0
    for u, n in zip(tl, applied[touched].tolist(), strict=True):
        start, end = end, end + n
        states[u].sequence.add(events[start:end], length)


def _bound(state: UserState, config: InterestConfig) -> None:
    """Keep the strongest max_categories / max_items by long-horizon strength.

    Everything is scaled to the same t_ref, so the stored long sums rank exactly as the
    strengths at any time.  Ties break on the key, so the outcome does not depend on
    arrival order.  A dropped item leaves its (decaying) contribution in the vectors.
    """
    for table, limit in (
        (state.categories, config.max_categories),
        (state.items, config.max_items),
    ):
        if len(table) > limit:
            table.keep(strongest_rows(table, limit))


# --------------------------------------------------------------------------- reads


def _decay(state: UserState, horizon: int, t: int | None) -> float:
    """Factor from t_ref to t; reading before t_ref would need events we may not have seen."""
    if t is not None and state.t_ref is not None and t < state.t_ref:
        raise ValueError(f"strengths are readable at t >= t_ref ({state.t_ref}), not at {t}")
    return read_factor(state.t_ref, state.half_lives[horizon], t)


def category_strengths(state: UserState, horizon: int, t: int | None = None) -> dict[str, float]:
    """S_c(t) for every kept category, t >= t_ref (default t_ref)."""
    f = _decay(state, horizon, t)
    vals = state.categories.vals[:, horizon].tolist()
    return {c: v * f for c, v in zip(state.categories.keys_, vals, strict=True)}


def item_strengths(state: UserState, horizon: int, t: int | None = None) -> dict[str, float]:
    """S_i(t) for every kept item, t >= t_ref (default t_ref)."""
    f = _decay(state, horizon, t)
    vals = state.items.vals[:, horizon].tolist()
    return {i: v * f for i, v in zip(state.items.keys_, vals, strict=True)}


def interest_vector(state: UserState, horizon: int, t: int | None = None) -> np.ndarray | None:
    """The horizon's (dim,) float32 interest vector at t, or None while no model."""
    if state.vectors is None:
        return None
    f = _decay(state, horizon, t)
    v = state.vectors[horizon]
    return v.copy() if f == 1.0 else (v * np.float32(f)).astype(np.float32)


def top_categories(
    state: UserState, horizon: int, n: int = 10, t: int | None = None
) -> list[tuple[str, float]]:
    """The n strongest categories at t, strongest first (ties: by name)."""
    f = _decay(state, horizon, t)
    pairs = zip(state.categories.vals[:, horizon].tolist(), state.categories.keys_, strict=True)
    best = heapq.nlargest(n, pairs)
    return [(c, v * f) for v, c in best]


def rebase(state: UserState, vectors: ItemVectors | None) -> None:
    """Rebuild the vectors from the kept item strengths in a new model's embeddings.

    Exact while no item was dropped from the bounded item map; otherwise the dropped
    (weakest) items' contributions are lost, which is the approximation we accept.
    """
    if vectors is None:
        state.vectors, state.model_version = None, None
        return
    acc = np.zeros((2, vectors.dim), dtype=np.float64)
    found = [(n, x) for n, x in enumerate(map(vectors.get, state.items.keys_)) if x is not None]
    if found:
        coefs = state.items.vals[[n for n, _ in found]].astype(np.float64)  # (k, 2)
        acc += coefs.T @ np.stack([x for _, x in found]).astype(np.float64)
    state.vectors = acc.astype(np.float32)
    state.model_version = vectors.version


def is_expired(state: UserState, now_ms: int, threshold: float) -> bool:
    """True when every long-horizon strength has decayed below ``threshold`` at now.

    Categories are checked, or items when the user has no category at all; magnitudes
    are compared, so a strongly negative interest is kept too.  threshold <= 0: never.
    """
    if threshold <= 0:
        return False
    if state.t_ref is None:
        return True
    f = _decay(state, LONG, max(now_ms, state.t_ref))
    kept = state.categories if len(state.categories) else state.items
    return bool(np.all(np.abs(kept.vals[:, LONG].astype(np.float64)) * f < threshold))
