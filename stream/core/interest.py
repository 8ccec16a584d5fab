"""Per-user interest state, its exact incremental update, and its binary serialisation.

The arithmetic (CONTRACT section 2): for a horizon with half-life ``H`` the strength of a
category ``c`` at time ``t`` is ``S_c(t) = sum_e w_e * 2**(-(t - ts_e)/H)`` over the
applied events on ``c``.  Exponential decay composes, so the state keeps every sum
*scaled to* ``t_ref`` (the newest event time applied) and any arrival order gives the
same numbers:

* a batch whose newest event is after ``t_ref`` rescales the kept sums once by
  ``2**(-(t_new - t_ref)/H)`` and moves ``t_ref`` to ``t_new``;
* every event of the batch then adds ``w * 2**(-(t_ref - ts)/H)`` (a late event simply
  adds its already-decayed weight; nothing is dropped).

The cost is O(d) per event for the vector plus one pass over the kept maps per *batch*
(the rescale), which the batch amortises.

Floats are float32 everywhere the state is at rest: sums are computed in float64 inside
a fold and rounded to float32 once at its end, so ``decode(encode(s))`` is bit-for-bit
equal to ``s`` and a state costs half the bytes of float64.  The rounding adds at most
~6e-8 relative error per fold, far inside the contract's 1e-4.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from hashlib import blake2b

import numpy as np

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
from stream.core.types import Event, ItemVectors

__all__ = ["LONG", "SHORT", "FoldResult", "InterestConfig", "UserState", "fold", "new_state"]

PURCHASE_TYPE = "purchase"


@dataclass(frozen=True, slots=True)
class InterestConfig:
    """The knobs of the arithmetic (stream.config builds it from the settings)."""

    half_life_short_ms: int = DEFAULT_HALF_LIVES[0]
    half_life_long_ms: int = DEFAULT_HALF_LIVES[1]
    max_categories: int = 64
    max_items: int = 100
    dedup_window: int = 64


@dataclass(slots=True)
class UserState:
    """Everything the worker keeps about one user; one table value, one changelog record.

    ``categories`` and ``items`` map to ``[short, long]`` sums scaled to ``t_ref``
    (float32-representable Python floats).  ``vectors`` is ``(2, dim)`` float32, also
    scaled to ``t_ref``, or None while no model is loaded.  Dedup information
    (``offsets``, ``recent_ids``) lives here, in the same value as what it protects,
    so a state and its dedup record can never be written apart.
    """

    user_id: str
    t_ref: int | None = None
    categories: dict[str, list[float]] = field(default_factory=dict)
    items: dict[str, list[float]] = field(default_factory=dict)
    vectors: np.ndarray | None = None
    model_version: str | None = None
    type_counts: dict[str, int] = field(default_factory=dict)
    events_applied: int = 0
    offsets: dict[int, int] = field(default_factory=dict)  # partition -> highest applied offset
    recent_ids: dict[int, None] = field(default_factory=dict)  # 48-bit id digests, oldest first
    last_event_kafka_ts: int | None = None
    item_categories: dict[str, str] = field(default_factory=dict)  # kept item -> its category
    purchased: set[str] = field(default_factory=set)  # kept items the user bought
    half_lives: tuple[int, int] = DEFAULT_HALF_LIVES  # (short, long) the sums were built with

    def __eq__(self, other: object) -> bool:
        """Field-wise equality, vectors compared bit-for-bit (for round-trip tests)."""
        if not isinstance(other, UserState):
            return NotImplemented
        for name in self.__slots__:
            a, b = getattr(self, name), getattr(other, name)
            if name == "vectors":
                if (a is None) != (b is None):
                    return False
                if a is not None and (a.shape != b.shape or a.tobytes() != b.tobytes()):
                    return False
            elif name == "recent_ids":
                if list(a) != list(b):
                    return False
            elif a != b:
                return False
        return True

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class FoldResult:
    """What one fold did, for the metrics."""

    applied: int
    duplicates: int
    applied_by_type: dict[str, int]


def new_state(user_id: str, config: InterestConfig | None = None) -> UserState:
    """An empty state; ``config`` only records the half-lives (fold sets them anyway)."""
    state = UserState(user_id)
    if config is not None:
        state.half_lives = (config.half_life_short_ms, config.half_life_long_ms)
    return state


DIGEST_BYTES = 6  # per remembered event id; see CORE.md for the collision arithmetic


def id_digest(event_id: str) -> int:
    """48-bit digest of an event id: the dedup window stores these, not the ids.

    A fresh event is wrongly taken for a duplicate with probability window / 2**48
    (2.3e-13 at the default 64), which buys 128 bytes per user over 8-byte digests.
    """
    return int.from_bytes(blake2b(event_id.encode(), digest_size=DIGEST_BYTES).digest(), "little")


# --------------------------------------------------------------------------- fold


def fold(
    state: UserState,
    events: Sequence[Event],
    config: InterestConfig,
    *,
    vectors: ItemVectors | None = None,
    positions: Sequence[tuple[int, int]] | None = None,
    kafka_ts: Sequence[int] | None = None,
) -> FoldResult:
    """Apply one user's batch of events to ``state`` in place, skipping duplicates.

    ``positions[i]`` is the (partition, offset) event ``i`` was read from: an offset at
    or below the highest already applied for that partition is a replay and is skipped.
    ``kafka_ts[i]`` is its record timestamp (kept for the end-to-end latency metric).
    When ``vectors`` is a different model than the state's vectors, the state is first
    re-based on it; with ``vectors=None`` the state keeps no vector.
    """
    _align_model(state, vectors)
    _align_half_lives(state, config)
    fresh = _dedup(state, events, config.dedup_window, positions)
    by_type: dict[str, int] = {}
    if fresh:
        _apply(state, [events[i] for i in fresh], config, vectors)
        for i in fresh:
            t = events[i].type
            by_type[t] = by_type.get(t, 0) + 1
        for t, n in by_type.items():
            state.type_counts[t] = state.type_counts.get(t, 0) + n
        state.events_applied += len(fresh)
        if kafka_ts is not None:
            newest = max(kafka_ts[i] for i in fresh)
            if state.last_event_kafka_ts is None or newest > state.last_event_kafka_ts:
                state.last_event_kafka_ts = newest
        _bound(state, config)
    return FoldResult(len(fresh), len(events) - len(fresh), by_type)


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


def _dedup(
    state: UserState,
    events: Sequence[Event],
    window: int,
    positions: Sequence[tuple[int, int]] | None,
) -> list[int]:
    """Indices of the events to apply: not a replayed offset and not a recent event id."""
    fresh: list[int] = []
    offsets, recent = state.offsets, state.recent_ids
    for i, ev in enumerate(events):
        if positions is not None:
            p, o = positions[i]
            done = offsets.get(p)
            if done is not None and o <= done:
                continue
            offsets[p] = o
        if window > 0:
            h = id_digest(ev.event_id)
            if h in recent:
                continue
            recent[h] = None
            if len(recent) > window:
                del recent[next(iter(recent))]
        fresh.append(i)
    if window <= 0:
        recent.clear()
    else:
        while len(recent) > window:  # the window setting shrank
            del recent[next(iter(recent))]
    return fresh


def _apply(
    state: UserState, events: list[Event], config: InterestConfig, vectors: ItemVectors | None
) -> None:
    """Add the events' decayed weights to every sum, after one rescale to the new t_ref."""
    half_lives = state.half_lives
    t_new = newest(state.t_ref, (ev.ts for ev in events))
    cat_add: dict[str, Pair] = {}
    item_add: dict[str, Pair] = {}
    track_items = config.max_items > 0
    for ev in events:
        a, b = decayed(ev.weight, t_new - ev.ts, half_lives)
        if ev.category is not None:
            add_pair(cat_add, ev.category, a, b)
        add_pair(item_add, ev.item_id, a, b)
        if track_items:
            if ev.category is not None:
                state.item_categories[ev.item_id] = ev.category
            if ev.type == PURCHASE_TYPE:
                state.purchased.add(ev.item_id)
    fs, fl = rescale_factors(state.t_ref, t_new, half_lives)
    merge(state.categories, cat_add, fs, fl)
    if track_items:
        merge(state.items, item_add, fs, fl)
    if vectors is not None:
        _add_vectors(state, item_add, vectors, fs, fl)
    state.t_ref = t_new


def _add_vectors(
    state: UserState,
    item_add: Mapping[str, list[float]],
    vectors: ItemVectors,
    fs: float,
    fl: float,
) -> None:
    """vectors = vectors * factor + sum_i add_i * x(i), one small matmul per batch."""
    coefs, rows = _known_rows(item_add.items(), vectors)
    acc = state.vectors.astype(np.float64) if state.vectors is not None else None
    if acc is None:
        acc = np.zeros((2, vectors.dim), dtype=np.float64)
    elif fs != 1.0 or fl != 1.0:
        acc[0] *= fs
        acc[1] *= fl
    if rows:
        acc += np.asarray(coefs, dtype=np.float64).T @ np.asarray(rows, dtype=np.float64)
    state.vectors = acc.astype(np.float32)


def _known_rows(
    pairs: Iterable[tuple[str, list[float]]], vectors: ItemVectors
) -> tuple[list[list[float]], list[np.ndarray]]:
    """Split (item, [short, long]) pairs into coefficient rows and embeddings, known items only."""
    coefs: list[list[float]] = []
    rows: list[np.ndarray] = []
    for item_id, c in pairs:
        x = vectors.get(item_id)
        if x is not None:
            coefs.append(c)
            rows.append(x)
    return coefs, rows


def _bound(state: UserState, config: InterestConfig) -> None:
    """Keep the strongest max_categories / max_items by long-horizon strength.

    Everything is scaled to the same t_ref, so the stored long sums rank exactly as the
    strengths at any time.  Ties break on the key, so the outcome does not depend on
    arrival order.  A dropped item leaves its (decaying) contribution in the vectors.
    """
    if len(state.categories) > config.max_categories:
        state.categories = strongest(state.categories, config.max_categories)
    if len(state.items) > config.max_items:
        state.items = strongest(state.items, config.max_items)
    if len(state.item_categories) > len(state.items):
        state.item_categories = {k: c for k, c in state.item_categories.items() if k in state.items}
    if any(p not in state.items for p in state.purchased):
        state.purchased = {p for p in state.purchased if p in state.items}


# --------------------------------------------------------------------------- reads


def _decay(state: UserState, horizon: int, t: int | None) -> float:
    """Factor from t_ref to t; reading before t_ref would need events we may not have seen."""
    if t is not None and state.t_ref is not None and t < state.t_ref:
        raise ValueError(f"strengths are readable at t >= t_ref ({state.t_ref}), not at {t}")
    return read_factor(state.t_ref, state.half_lives[horizon], t)


def category_strengths(state: UserState, horizon: int, t: int | None = None) -> dict[str, float]:
    """S_c(t) for every kept category, t >= t_ref (default t_ref)."""
    f = _decay(state, horizon, t)
    return {c: v[horizon] * f for c, v in state.categories.items()}


def item_strengths(state: UserState, horizon: int, t: int | None = None) -> dict[str, float]:
    """S_i(t) for every kept item, t >= t_ref (default t_ref)."""
    f = _decay(state, horizon, t)
    return {i: v[horizon] * f for i, v in state.items.items()}


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
    best = heapq.nlargest(n, state.categories.items(), key=lambda kv: (kv[1][horizon], kv[0]))
    return [(c, v[horizon] * f) for c, v in best]


def rebase(state: UserState, vectors: ItemVectors | None) -> None:
    """Rebuild the vectors from the kept item strengths in a new model's embeddings.

    Exact while no item was dropped from the bounded item map; otherwise the dropped
    (weakest) items' contributions are lost, which is the approximation we accept.
    """
    if vectors is None:
        state.vectors, state.model_version = None, None
        return
    coefs, rows = _known_rows(state.items.items(), vectors)
    acc = np.zeros((2, vectors.dim), dtype=np.float64)
    if rows:
        acc += np.asarray(coefs, dtype=np.float64).T @ np.asarray(rows, dtype=np.float64)
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
    kept = state.categories or state.items
    return all(abs(v[LONG]) * f < threshold for v in kept.values())
