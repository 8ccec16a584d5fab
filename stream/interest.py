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
import struct
import sys
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from hashlib import blake2b
from itertools import accumulate
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from stream.events import Event
    from stream.settings import Settings

SHORT, LONG = 0, 1
PURCHASE_TYPE = "purchase"
FORMAT_VERSION = 1

_DEFAULT_HALF_LIVES = (1_800_000, 604_800_000)


class StateFormatError(ValueError):
    """Stored bytes are not a state this worker can read (newer format, or corrupt)."""


@dataclass(frozen=True, slots=True)
class InterestConfig:
    """The knobs of the arithmetic, separate from Settings so the core needs no pydantic."""

    half_life_short_ms: int = _DEFAULT_HALF_LIVES[0]
    half_life_long_ms: int = _DEFAULT_HALF_LIVES[1]
    max_categories: int = 64
    max_items: int = 100
    dedup_window: int = 64

    @classmethod
    def from_settings(cls, settings: Settings) -> InterestConfig:
        return cls(
            half_life_short_ms=settings.half_life_short_ms,
            half_life_long_ms=settings.half_life_long_ms,
            max_categories=settings.max_categories,
            max_items=settings.max_items,
            dedup_window=settings.dedup_window,
        )


class ItemVectors(Protocol):
    """What the core needs of a model's item embeddings."""

    version: str
    dim: int

    def get(self, item_id: str) -> np.ndarray | None:
        """The (dim,) embedding of ``item_id``, or None when the model does not know it."""
        ...


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
    half_lives: tuple[int, int] = _DEFAULT_HALF_LIVES  # (short, long) the sums were built with

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


def _round32(values: list[float]) -> list[float]:
    """Round Python floats to the nearest float32 (what the state stores at rest)."""
    return array("f", values).tolist()


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
    hs, hl = state.half_lives
    t_new = max(ev.ts for ev in events)
    if state.t_ref is not None and state.t_ref > t_new:
        t_new = state.t_ref
    cat_add: dict[str, list[float]] = {}
    item_add: dict[str, list[float]] = {}
    track_items = config.max_items > 0
    for ev in events:
        age = t_new - ev.ts
        a = ev.weight * 2.0 ** (-age / hs) if age else ev.weight
        b = ev.weight * 2.0 ** (-age / hl) if age else ev.weight
        if ev.category is not None:
            acc = cat_add.get(ev.category)
            if acc is None:
                cat_add[ev.category] = [a, b]
            else:
                acc[0] += a
                acc[1] += b
        acc = item_add.get(ev.item_id)
        if acc is None:
            item_add[ev.item_id] = [a, b]
        else:
            acc[0] += a
            acc[1] += b
        if track_items:
            if ev.category is not None:
                state.item_categories[ev.item_id] = ev.category
            if ev.type == PURCHASE_TYPE:
                state.purchased.add(ev.item_id)
    fs, fl = _factors(state, t_new)
    _merge(state.categories, cat_add, fs, fl)
    if track_items:
        _merge(state.items, item_add, fs, fl)
    if vectors is not None:
        _add_vectors(state, item_add, vectors, fs, fl)
    state.t_ref = t_new


def _factors(state: UserState, t_new: int) -> tuple[float, float]:
    if state.t_ref is None or state.t_ref == t_new:
        return 1.0, 1.0
    dt = t_new - state.t_ref
    return 2.0 ** (-dt / state.half_lives[0]), 2.0 ** (-dt / state.half_lives[1])


def _merge(
    kept: dict[str, list[float]], adds: dict[str, list[float]], fs: float, fl: float
) -> None:
    """kept = round32(kept * factor + adds); only the added keys when t_ref did not move."""
    if fs == 1.0 and fl == 1.0:
        for k, add in adds.items():
            v = kept.get(k)
            kept[k] = _round32(add if v is None else [v[0] + add[0], v[1] + add[1]])
        return
    # the rescale touches every kept entry; one float32 rounding pass over all of them
    # (a plain loop: cheaper than numpy's conversions at these sizes, same IEEE operations)
    flat: list[float] = []
    put = flat.extend
    add_of = adds.get
    for k, v in kept.items():
        a = add_of(k)
        put((v[0] * fs, v[1] * fl) if a is None else (v[0] * fs + a[0], v[1] * fl + a[1]))
    keys = list(kept)
    for k, a in adds.items():
        if k not in kept:
            keys.append(k)
            put((a[0], a[1]))
    rounded = array("f", flat).tolist()
    kept.clear()
    kept.update(zip(keys, (rounded[i : i + 2] for i in range(0, len(rounded), 2)), strict=True))


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
        state.categories = _strongest(state.categories, config.max_categories)
    if len(state.items) > config.max_items:
        state.items = _strongest(state.items, config.max_items)
    if len(state.item_categories) > len(state.items):
        state.item_categories = {k: c for k, c in state.item_categories.items() if k in state.items}
    if any(p not in state.items for p in state.purchased):
        state.purchased = {p for p in state.purchased if p in state.items}


def _strongest(kept: dict[str, list[float]], n: int) -> dict[str, list[float]]:
    best = heapq.nlargest(n, kept.items(), key=lambda kv: (kv[1][LONG], kv[0]))
    return dict(best)


# --------------------------------------------------------------------------- reads


def _decay(state: UserState, horizon: int, t: int | None) -> float:
    """Factor from t_ref to t; reading before t_ref would need events we may not have seen."""
    if t is None or state.t_ref is None or t == state.t_ref:
        return 1.0
    if t < state.t_ref:
        raise ValueError(f"strengths are readable at t >= t_ref ({state.t_ref}), not at {t}")
    return 2.0 ** (-(t - state.t_ref) / state.half_lives[horizon])


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


# --------------------------------------------------------------------------- encoding

# format, flags, t_ref, half-lives, kafka ts, events applied; then the counts of types,
# partitions, digests, category names, categories, items, and the vector dim
_HEADER = struct.Struct("<BBqqqqqHHIIIIH")
_F_TREF, _F_KTS, _F_VEC, _F_MODEL = 1, 2, 4, 8
_BIG_ENDIAN = sys.byteorder == "big"


def _arr(code: str, values: Iterable[float] | Iterable[int]) -> bytes:
    a = array(code, values)
    if _BIG_ENDIAN:
        a.byteswap()
    return a.tobytes()


def _uint_code(maximum: int) -> str:
    """Smallest unsigned array typecode holding ``maximum`` (per-list width, saves bytes)."""
    if maximum < 1 << 8:
        return "B"
    if maximum < 1 << 16:
        return "H"
    return "I" if maximum < 1 << 32 else "Q"


def _put_uints(out: list[bytes], values: list[int]) -> None:
    """Width byte + values; the count is known to the reader from the header."""
    code = _uint_code(max(values, default=0))
    out.append(code.encode())
    out.append(_arr(code, values))


def _put_floats(out: list[bytes], flat: list[float]) -> None:
    """float32 values behind a bitmap of the non-zero ones.

    Short-horizon sums of anything older than a few days are exactly zero; eliding them
    saves ~100 bytes for a typical user.  The test is on the bit pattern, so -0.0 survives.
    """
    a = np.array(flat, dtype="<f4")
    nz = a.view("<u4") != 0
    out.append(np.packbits(nz, bitorder="little").tobytes())
    out.append(a[nz].tobytes())


def _put_digests(out: list[bytes], digests: list[int]) -> None:
    raw = np.array(digests, dtype="<u8").view(np.uint8).reshape(-1, 8)[:, :DIGEST_BYTES]
    out.append(raw.tobytes())


def encode(state: UserState) -> bytes:
    """Compact binary state: format byte first, then a fixed header and packed sections.

    Layout (little-endian), format 1: header (scalars and section counts); one string
    table (user_id, model_version, type names, category names, item ids: a width byte,
    the byte lengths, the UTF-8 bytes); type counts; partition offsets (int64 pairs);
    recent id digests (6 bytes each); category then item [short, long] float32 pairs
    (non-zero bitmap + values); item category index (0 = none); purchased bitset;
    vectors (2 x dim float32).
    """
    flags = (
        (_F_TREF if state.t_ref is not None else 0)
        | (_F_KTS if state.last_event_kafka_ts is not None else 0)
        | (_F_VEC if state.vectors is not None else 0)
        | (_F_MODEL if state.model_version is not None else 0)
    )
    names = dict.fromkeys(state.categories)
    names.update(dict.fromkeys(state.item_categories.values()))
    dim = state.vectors.shape[1] if state.vectors is not None else 0
    out = [
        _HEADER.pack(
            FORMAT_VERSION,
            flags,
            state.t_ref or 0,
            state.half_lives[0],
            state.half_lives[1],
            state.last_event_kafka_ts or 0,
            state.events_applied,
            len(state.type_counts),
            len(state.offsets),
            len(state.recent_ids),
            len(names),
            len(state.categories),
            len(state.items),
            dim,
        )
    ]
    raw = [
        s.encode()
        for s in (
            state.user_id,
            state.model_version or "",
            *state.type_counts,
            *names,
            *state.items,
        )
    ]
    _put_uints(out, [len(b) for b in raw])
    out.append(b"".join(raw))
    _put_uints(out, list(state.type_counts.values()))
    out.append(_arr("q", [*state.offsets, *state.offsets.values()]))
    _put_digests(out, list(state.recent_ids))
    flat = [x for v in state.categories.values() for x in v]
    flat.extend(x for v in state.items.values() for x in v)
    _put_floats(out, flat)
    index = {n: i for i, n in enumerate(names, 1)}
    cats = state.item_categories
    _put_uints(out, [index[cats[i]] if i in cats else 0 for i in state.items])
    bits = sum(1 << n for n, i in enumerate(state.items) if i in state.purchased)
    out.append(bits.to_bytes((len(state.items) + 7) // 8, "little"))
    if state.vectors is not None:
        out.append(np.ascontiguousarray(state.vectors, dtype="<f4").tobytes())
    return b"".join(out)


class _Reader:
    """Cursor over the encoded bytes; every short read is a StateFormatError."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise StateFormatError(f"corrupt state: truncated at byte {self.pos} (need {n} more)")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def arr(self, code: str, n: int) -> list:
        a = array(code)
        a.frombytes(self.take(n * a.itemsize))
        if _BIG_ENDIAN:
            a.byteswap()
        return a.tolist()

    def uints(self, n: int) -> list[int]:
        code = self.take(1).decode("ascii", "replace")
        if code not in ("B", "H", "I", "Q"):
            raise StateFormatError(f"corrupt state: bad integer width {code!r}")
        return self.arr(code, n)

    def strs(self, n: int) -> list[str]:
        lens = self.uints(n)
        blob = self.take(sum(lens))
        ends = list(accumulate(lens))
        text = blob.decode() if blob.isascii() else None
        if text is not None:  # ASCII: byte offsets are character offsets, slice once
            return [text[a:b] for a, b in zip([0, *ends], ends, strict=False)]
        return [blob[a:b].decode() for a, b in zip([0, *ends], ends, strict=False)]

    def floats(self, n: int) -> list[float]:
        nz = np.unpackbits(
            np.frombuffer(self.take((n + 7) // 8), dtype=np.uint8), count=n, bitorder="little"
        ).astype(bool)
        flat = np.zeros(n, dtype="<f4")
        flat[nz] = np.frombuffer(self.take(4 * int(nz.sum())), dtype="<f4")
        return flat.astype(np.float32).reshape(-1, 2).tolist()

    def digests(self, n: int) -> list[int]:
        buf = np.zeros((n, 8), dtype=np.uint8)
        got = np.frombuffer(self.take(n * DIGEST_BYTES), np.uint8)
        buf[:, :DIGEST_BYTES] = got.reshape(n, DIGEST_BYTES)
        return buf.view("<u8").ravel().tolist()


def decode(data: bytes) -> UserState:
    """Inverse of :func:`encode`; a newer or unknown format raises StateFormatError."""
    if not data:
        raise StateFormatError("corrupt state: empty value")
    fmt = data[0]
    if fmt > FORMAT_VERSION:
        raise StateFormatError(
            f"state written by a newer interest-stream (format {fmt}); "
            f"this worker reads up to {FORMAT_VERSION}"
        )
    if fmt < 1:
        raise StateFormatError(f"corrupt state: unknown format {fmt}")
    try:
        return _decode_v1(_Reader(bytes(data)))
    except StateFormatError:
        raise
    except (ValueError, UnicodeDecodeError, struct.error) as exc:
        raise StateFormatError(f"corrupt state: {exc}") from exc


def _decode_v1(r: _Reader) -> UserState:
    head = _HEADER.unpack(r.take(_HEADER.size))
    _, flags, t_ref, hs, hl, kts, applied = head[:7]
    n_types, n_parts, n_digests, n_names, n_cat, n_items, dim = head[7:]
    strs = r.strs(2 + n_types + n_names + n_items)
    user_id, model = strs[0], strs[1]
    type_names = strs[2 : 2 + n_types]
    names = strs[2 + n_types : 2 + n_types + n_names]
    item_ids = strs[2 + n_types + n_names :]
    type_counts = dict(zip(type_names, r.uints(n_types), strict=True))
    parts = r.arr("q", 2 * n_parts)
    offsets = dict(zip(parts[:n_parts], parts[n_parts:], strict=True))
    recent = dict.fromkeys(r.digests(n_digests))
    values = r.floats(2 * (n_cat + n_items))
    categories = dict(zip(names[:n_cat], values[:n_cat], strict=True))
    items = dict(zip(item_ids, values[n_cat:], strict=True))
    cat_index = r.uints(n_items)
    bits = int.from_bytes(r.take((n_items + 7) // 8), "little")
    vectors = None
    if flags & _F_VEC:
        vectors = np.frombuffer(r.take(8 * dim), dtype="<f4").astype(np.float32).reshape(2, dim)
    if r.pos != len(r.data):
        raise StateFormatError(f"corrupt state: {len(r.data) - r.pos} trailing bytes")
    return UserState(
        user_id=user_id,
        t_ref=t_ref if flags & _F_TREF else None,
        categories=categories,
        items=items,
        vectors=vectors,
        model_version=model if flags & _F_MODEL else None,
        type_counts=type_counts,
        events_applied=applied,
        offsets=offsets,
        recent_ids=recent,
        last_event_kafka_ts=kts if flags & _F_KTS else None,
        item_categories={i: names[c - 1] for i, c in zip(item_ids, cat_index, strict=True) if c},
        purchased={i for n, i in enumerate(item_ids) if bits >> n & 1},
        half_lives=(hs, hl),
    )
