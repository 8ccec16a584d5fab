"""Trending items per category: decayed item engagement, the second aggregation of the stream.

For a category ``c`` and horizon half-life ``H`` the trending score of an item ``i`` at time
``t`` is ``T_i(t) = sum_e w_e * 2**(-(t - ts_e)/H)`` over every user's applied events on ``i``
(CONTRACT section 2's formula, summed over users instead of over one user's events).  The
arithmetic is the user state's, imported from :mod:`stream.interest` rather than re-written:
sums are kept scaled to ``t_ref`` (the newest event time applied), a batch moves ``t_ref`` with
one rescale, and a late event simply adds its already-decayed weight, so any arrival order
gives the same numbers.

Bounded: the ``max_items`` strongest items by long-horizon sum are kept per category (ties
by id, so the survivors do not depend on arrival order either).  Replays are dropped by
(source partition, source offset), kept per category in the same value they protect.

Pure: no faust, kafka or tensorflow; the worker wires it to a category-keyed repartition
topic and publishes :func:`snapshot` views in a GlobalTable.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from stream.interest import LONG, SHORT, _factors, _merge, _strongest

if TYPE_CHECKING:
    from stream.events import Event
    from stream.settings import Settings

TREND_FORMAT = 1
_DEFAULT_HALF_LIVES = (1_800_000, 604_800_000)
_HEAD = struct.Struct("<BBqqqII")  # format, flags, t_ref, hs, hl, n_offsets, n_items
_F_TREF = 1

__all__ = [
    "LONG",
    "SHORT",
    "TREND_FORMAT",
    "CategoryTrend",
    "GlobalTrend",
    "TrendConfig",
    "TrendEntry",
    "TrendFormatError",
    "decode_trend",
    "encode_trend",
    "fold_trend",
    "new_trend",
    "snapshot",
    "top_items",
    "trend_strength",
]


class TrendFormatError(ValueError):
    """Stored bytes are not a trend this worker can read (newer format, or corrupt)."""


@dataclass(frozen=True, slots=True)
class TrendConfig:
    """Half-lives (the user state's, so both aggregations speak the same time scale) and bound."""

    half_life_short_ms: int = _DEFAULT_HALF_LIVES[0]
    half_life_long_ms: int = _DEFAULT_HALF_LIVES[1]
    max_items: int = 200

    @classmethod
    def from_settings(cls, settings: Settings) -> TrendConfig:
        return cls(
            half_life_short_ms=settings.half_life_short_ms,
            half_life_long_ms=settings.half_life_long_ms,
            max_items=getattr(settings, "trending_items", 200),
        )

    @property
    def half_lives(self) -> tuple[int, int]:
        return (self.half_life_short_ms, self.half_life_long_ms)


@dataclass(slots=True)
class CategoryTrend:
    """One category's trending state: item -> [short, long] sums scaled to ``t_ref``.

    Attribute names match :class:`stream.interest.UserState` (``t_ref``, ``half_lives``)
    so the user state's rescale helpers apply unchanged.
    """

    category: str
    t_ref: int | None = None
    items: dict[str, list[float]] = field(default_factory=dict)
    offsets: dict[int, int] = field(default_factory=dict)  # source partition -> highest offset
    half_lives: tuple[int, int] = _DEFAULT_HALF_LIVES


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
    hs, hl = trend.half_lives
    t_new = max(ev.ts for ev in events)
    if trend.t_ref is not None and trend.t_ref > t_new:
        t_new = trend.t_ref
    adds: dict[str, list[float]] = {}
    for ev in events:
        age = t_new - ev.ts
        a = ev.weight * 2.0 ** (-age / hs) if age else ev.weight
        b = ev.weight * 2.0 ** (-age / hl) if age else ev.weight
        acc = adds.get(ev.item_id)
        if acc is None:
            adds[ev.item_id] = [a, b]
        else:
            acc[0] += a
            acc[1] += b
    fs, fl = _factors(trend, t_new)  # type: ignore[arg-type]  # duck-typed: t_ref, half_lives
    _merge(trend.items, adds, fs, fl)
    trend.t_ref = t_new
    if len(trend.items) > config.max_items:
        trend.items = _strongest(trend.items, config.max_items)


# --------------------------------------------------------------------------- reads


def _parts(entry: TrendEntry) -> tuple[int | None, tuple[int, int], Mapping[str, Sequence[float]]]:
    """(t_ref, half_lives, items) of a CategoryTrend or of its published snapshot dict."""
    if isinstance(entry, CategoryTrend):
        return entry.t_ref, entry.half_lives, entry.items
    hl = entry.get("half_lives") or _DEFAULT_HALF_LIVES
    return entry.get("t_ref"), (int(hl[0]), int(hl[1])), entry.get("items") or {}


def decay_factor(t_ref: int | None, half_life: int, t: int | None) -> float:
    """Factor taking sums scaled to t_ref to time t; t before t_ref reads at t_ref.

    A trending view is shared by many users whose t_ref differ: reading it "before" its
    own t_ref cannot remove events it already holds, so it is read as it stands.
    """
    if t is None or t_ref is None or t <= t_ref:
        return 1.0
    return 2.0 ** (-(t - t_ref) / half_life)


def trend_strength(entry: TrendEntry, item_id: str, horizon: int, t: int | None = None) -> float:
    """T_i(t) of one item in a category view (0 when the item is not among the kept ones)."""
    t_ref, hls, items = _parts(entry)
    v = items.get(item_id)
    return 0.0 if v is None else float(v[horizon]) * decay_factor(t_ref, hls[horizon], t)


def top_items(
    entry: TrendEntry, horizon: int, n: int, t: int | None = None
) -> list[tuple[str, float]]:
    """The n strongest items of the horizon at t, strongest first (ties: by id)."""
    t_ref, hls, items = _parts(entry)
    f = decay_factor(t_ref, hls[horizon], t)
    best = sorted(items.items(), key=lambda kv: (-kv[1][horizon], kv[0]))[: max(0, n)]
    return [(i, float(v[horizon]) * f) for i, v in best]


def snapshot(trend: CategoryTrend, n: int | None = None) -> dict[str, Any]:
    """JSON-able view for publication: the n strongest items (long horizon), scaled to t_ref.

    Readers get strengths at any t >= t_ref with :func:`trend_strength` / :func:`top_items`.
    """
    items = trend.items if n is None or len(trend.items) <= n else _strongest(trend.items, n)
    return {
        "category": trend.category,
        "t_ref": trend.t_ref,
        "half_lives": list(trend.half_lives),
        "items": {i: [float(v[0]), float(v[1])] for i, v in items.items()},
    }


# --------------------------------------------------------------------------- encoding


def _put_str(out: list[bytes], s: str) -> None:
    raw = s.encode()
    out.append(struct.pack("<H", len(raw)))
    out.append(raw)


def encode_trend(trend: CategoryTrend) -> bytes:
    """Format byte, header, category name, offsets (int64 pairs), item ids, float32 [s, l].

    Values are float32 at rest, like the user state, so a round trip is bit-for-bit.
    """
    out = [
        _HEAD.pack(
            TREND_FORMAT,
            _F_TREF if trend.t_ref is not None else 0,
            trend.t_ref or 0,
            trend.half_lives[0],
            trend.half_lives[1],
            len(trend.offsets),
            len(trend.items),
        )
    ]
    _put_str(out, trend.category)
    out.append(np.array([*trend.offsets, *trend.offsets.values()], "<i8").tobytes())
    for item in trend.items:
        _put_str(out, item)
    out.append(np.array(list(trend.items.values()), "<f4").reshape(-1, 2).tobytes())
    return b"".join(out)


class _Cursor:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise TrendFormatError(f"corrupt trend: truncated at byte {self.pos}")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def string(self) -> str:
        (n,) = struct.unpack("<H", self.take(2))
        return self.take(n).decode()


def decode_trend(data: bytes) -> CategoryTrend:
    """Inverse of :func:`encode_trend`; a newer or corrupt value raises TrendFormatError."""
    if not data:
        raise TrendFormatError("corrupt trend: empty value")
    if data[0] != TREND_FORMAT:
        raise TrendFormatError(f"trend format {data[0]} (this worker reads {TREND_FORMAT})")
    try:
        return _decode_v1(_Cursor(bytes(data)))
    except TrendFormatError:
        raise
    except (ValueError, UnicodeDecodeError, struct.error) as exc:
        raise TrendFormatError(f"corrupt trend: {exc}") from exc


def _decode_v1(r: _Cursor) -> CategoryTrend:
    _, flags, t_ref, hs, hl, n_off, n_items = _HEAD.unpack(r.take(_HEAD.size))
    category = r.string()
    parts = np.frombuffer(r.take(16 * n_off), "<i8").tolist()
    ids = [r.string() for _ in range(n_items)]
    vals = np.frombuffer(r.take(8 * n_items), "<f4").reshape(-1, 2).astype(np.float32).tolist()
    if r.pos != len(r.data):
        raise TrendFormatError(f"corrupt trend: {len(r.data) - r.pos} trailing bytes")
    return CategoryTrend(
        category=category,
        t_ref=t_ref if flags & _F_TREF else None,
        items=dict(zip(ids, vals, strict=True)),
        offsets=dict(zip(parts[:n_off], parts[n_off:], strict=True)),
        half_lives=(hs, hl),
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

    def encode(self) -> bytes:
        """Format byte, the trend's length and bytes, then (item, category) pairs."""
        inner = encode_trend(self.trend)
        out = [struct.pack("<BI", TREND_FORMAT, len(inner)), inner]
        out.append(struct.pack("<I", len(self.item_categories)))
        for i, c in self.item_categories.items():
            _put_str(out, i)
            _put_str(out, c)
        return b"".join(out)

    @classmethod
    def decode(cls, data: bytes, config: TrendConfig | None = None) -> GlobalTrend:
        r = _Cursor(bytes(data))
        try:
            fmt, n = struct.unpack("<BI", r.take(5))
            if fmt != TREND_FORMAT:
                raise TrendFormatError(
                    f"global trend format {fmt} (this worker reads {TREND_FORMAT})"
                )
            g = cls(config)
            g.trend = decode_trend(r.take(n))
            (m,) = struct.unpack("<I", r.take(4))
            g.item_categories = {r.string(): r.string() for _ in range(m)}
        except struct.error as exc:
            raise TrendFormatError(f"corrupt global trend: {exc}") from exc
        return g
