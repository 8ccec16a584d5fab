"""Bytes at rest: user states and category trends, one reader for both.

Table values and changelog records are these bytes: little-endian binary, no pickle or
JSON, a format byte first so that a worker refuses (instead of misreading) what a newer
version wrote. Round trips are bit-for-bit: the sums are float32 in memory too.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Iterable
from itertools import accumulate

import numpy as np

from stream.core.decay import Sums
from stream.core.errors import InterestStreamError, StateFormatError, TrendFormatError
from stream.core.interest import ItemSums, UserState
from stream.core.trending import CategoryTrend

FORMAT_VERSION = 2  # user states (format 1 is still read)
TREND_FORMAT = 2  # category trends (format 1 is still read)

_BIG_ENDIAN = sys.byteorder == "big"


class Reader:
    """Cursor over encoded bytes; every short read raises the codec's format error."""

    __slots__ = ("data", "error", "pos", "what")

    def __init__(self, data: bytes, error: type[InterestStreamError], what: str) -> None:
        self.data = data
        self.pos = 0
        self.error = error
        self.what = what

    def fail(self, detail: str) -> InterestStreamError:
        return self.error(f"corrupt {self.what}: {detail}")

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise self.fail(f"truncated at byte {self.pos} (need {n} more)")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def unpack(self, fmt: struct.Struct) -> tuple:
        return fmt.unpack(self.take(fmt.size))

    def arr(self, code: str, n: int) -> list:
        a = array(code)
        a.frombytes(self.take(n * a.itemsize))
        if _BIG_ENDIAN:
            a.byteswap()
        return a.tolist()

    def uints(self, n: int) -> list[int]:
        """A width byte (array typecode) then ``n`` unsigned integers of that width."""
        code = self.take(1).decode("ascii", "replace")
        if code not in ("B", "H", "I", "Q"):
            raise self.fail(f"bad integer width {code!r}")
        return self.arr(code, n)

    def strs_raw(self, n: int) -> tuple[list[int], bytes]:
        """The byte lengths and the bytes of ``n`` strings (see :meth:`strs`)."""
        lens = self.uints(n)
        return lens, self.take(sum(lens))

    def float_array(self, n: int) -> np.ndarray:
        """``n`` float32 values behind a bitmap of the non-zero ones."""
        nz = np.unpackbits(
            np.frombuffer(self.take((n + 7) // 8), dtype=np.uint8), count=n, bitorder="little"
        ).astype(bool)
        flat = np.zeros(n, dtype=np.float32)
        flat[nz] = np.frombuffer(self.take(4 * int(nz.sum())), dtype="<f4")
        return flat

    def string(self) -> str:
        """One string behind a uint16 byte length."""
        (n,) = struct.unpack("<H", self.take(2))
        return self.take(n).decode()

    def done(self) -> None:
        if self.pos != len(self.data):
            raise self.fail(f"{len(self.data) - self.pos} trailing bytes")


def _checked(data: bytes, error: type[InterestStreamError], what: str, newest: int) -> Reader:
    """A reader past the format byte, after refusing empty, unknown or newer formats."""
    if not data:
        raise error(f"corrupt {what}: empty value")
    fmt = data[0]
    if fmt > newest:
        raise error(
            f"{what} written by a newer interest-stream (format {fmt}); "
            f"this worker reads up to {newest}"
        )
    if fmt < 1:
        raise error(f"corrupt {what}: unknown format {fmt}")
    return Reader(bytes(data), error, what)


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


def _put_floats(out: list[bytes], flat: np.ndarray) -> None:
    """float32 values behind a bitmap of the non-zero ones.

    Short-horizon sums of anything older than a few days are exactly zero; eliding them
    saves ~100 bytes for a typical user.  The test is on the bit pattern, so -0.0 survives.
    """
    a = np.ascontiguousarray(flat, dtype="<f4")
    nz = a.view("<u4") != 0
    out.append(np.packbits(nz, bitorder="little").tobytes())
    out.append(a[nz].tobytes())


def _put_str(out: list[bytes], s: str) -> None:
    raw = s.encode()
    out.append(struct.pack("<H", len(raw)))
    out.append(raw)


# --------------------------------------------------------------------------- user state

# format, flags, t_ref, half-lives, kafka ts, events applied; then the counts of types,
# partitions, the items' category names, categories, items, and the vector dim
_HEADER = struct.Struct("<BBqqqqqHHIIIH")
# format 1 (0.2.0): the same with a count of remembered id digests, and one name table
_HEADER_V1 = struct.Struct("<BBqqqqqHHIIIIH")
_DIGEST_V1 = 6  # bytes per id digest of format 1 (skipped: ids are remembered apart now)
_F_TREF, _F_KTS, _F_VEC, _F_MODEL = 1, 2, 4, 8


def encode(state: UserState) -> bytes:
    """Compact binary state: format byte first, then a fixed header and packed sections.

    Layout (little-endian), format 2: header (scalars and section counts); one string
    table (user_id, model_version, type names, category keys, item keys, the items'
    category names: a width byte, the byte lengths, the UTF-8 bytes); type counts;
    partition offsets (int64 pairs); category then item [short, long] float32 pairs
    (non-zero bitmap + values); each item's category code (0 = none, else 1-based into the
    items' category names); purchased bitset; vectors (2 x dim float32). Every section is
    written from the state's columns as they are.
    """
    cats, items = state.categories, state.items
    flags = (
        (_F_TREF if state.t_ref is not None else 0)
        | (_F_KTS if state.last_event_kafka_ts is not None else 0)
        | (_F_VEC if state.vectors is not None else 0)
        | (_F_MODEL if state.model_version is not None else 0)
    )
    dim = state.vectors.shape[1] if state.vectors is not None else 0
    raw = [
        state.user_id.encode(),
        (state.model_version or "").encode(),
        *(t.encode() for t in state.type_counts),
        *cats.raw,
        *items.raw,
        *(c.encode() for c in items.cat_names),
    ]
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
            len(items.cat_names),
            len(cats),
            len(items),
            dim,
        )
    ]
    _put_uints(out, [len(b) for b in raw])
    out.append(b"".join(raw))
    _put_uints(out, list(state.type_counts.values()))
    out.append(_arr("q", [*state.offsets, *state.offsets.values()]))
    _put_floats(out, np.concatenate([cats.vals, items.vals]).ravel())
    _put_uints(out, items.cat)
    out.append(np.packbits(np.asarray(items.bought, bool), bitorder="little").tobytes())
    if state.vectors is not None:
        out.append(np.ascontiguousarray(state.vectors, dtype="<f4").tobytes())
    return b"".join(out)


def decode(data: bytes) -> UserState:
    """Inverse of :func:`encode`; reads format 1 too; a newer or unknown format raises
    StateFormatError."""
    r = _checked(data, StateFormatError, "state", FORMAT_VERSION)
    try:
        return _decode_state(r, data[0])
    except StateFormatError:
        raise
    except (ValueError, UnicodeDecodeError, struct.error, IndexError) as exc:
        raise r.fail(str(exc)) from exc


def _decode_state(r: Reader, fmt: int) -> UserState:
    if fmt == 1:
        head = r.unpack(_HEADER_V1)
        n_types, n_parts, n_digests, n_names, n_cat, n_items, dim = head[7:]
        # one name table for categories and item categories, categories first
        lens, blob = r.strs_raw(2 + n_types + n_names + n_items)
        cat_at, item_at, names_at = 2 + n_types, 2 + n_types + n_names, 2 + n_types
    else:
        head = r.unpack(_HEADER)
        n_types, n_parts, n_names, n_cat, n_items, dim = head[7:]
        n_digests = 0
        lens, blob = r.strs_raw(2 + n_types + n_cat + n_items + n_names)
        cat_at, item_at = 2 + n_types, 2 + n_types + n_cat
        names_at = item_at + n_items
    _, flags, t_ref, hs, hl, kts, applied = head[:7]
    raw = _split(blob, lens)
    strs = [b.decode() for b in raw[: 2 + n_types]]
    user_id, model, type_names = strs[0], strs[1], strs[2:]
    cat_raw = raw[cat_at : cat_at + n_cat]
    item_raw = raw[item_at : item_at + n_items]
    names = [b.decode() for b in raw[names_at : names_at + n_names]]
    type_counts = dict(zip(type_names, r.uints(n_types), strict=True))
    parts = r.arr("q", 2 * n_parts)
    offsets = dict(zip(parts[:n_parts], parts[n_parts:], strict=True))
    r.take(n_digests * _DIGEST_V1)
    values = r.float_array(2 * (n_cat + n_items)).reshape(-1, 2)
    codes = r.uints(n_items)
    bought = np.unpackbits(
        np.frombuffer(r.take((n_items + 7) // 8), np.uint8), count=n_items, bitorder="little"
    )
    vectors = None
    if flags & _F_VEC:
        vectors = np.frombuffer(r.take(8 * dim), dtype="<f4").astype(np.float32).reshape(2, dim)
    r.done()
    items = ItemSums(
        _texts(item_raw), values[n_cat:].copy(), item_raw, bought=bought.astype(bool).tolist()
    )
    if fmt == 1:  # codes index the shared table: keep only the names the items use
        items.cat = [items.category_code(names[c - 1]) if c else 0 for c in codes]
    else:
        items.cat, items.cat_names = codes, names
    return UserState(
        user_id=user_id,
        t_ref=t_ref if flags & _F_TREF else None,
        categories=Sums(_texts(cat_raw), values[:n_cat].copy(), cat_raw),
        items=items,
        vectors=vectors,
        model_version=model if flags & _F_MODEL else None,
        type_counts=type_counts,
        events_applied=applied,
        offsets=offsets,
        last_event_kafka_ts=kts if flags & _F_KTS else None,
        half_lives=(hs, hl),
    )


def _split(blob: bytes, lens: list[int]) -> list[bytes]:
    ends = list(accumulate(lens))
    return [blob[a:b] for a, b in zip([0, *ends], ends, strict=False)]


def _texts(raw: list[bytes]) -> list[str]:
    return [b.decode() for b in raw]


# --------------------------------------------------------------------------- trends

_TREND_HEAD = struct.Struct("<BBqqqII")  # format, flags, t_ref, hs, hl, n_offsets, n_items
_T_TREF = 1


def encode_trend(trend: CategoryTrend) -> bytes:
    """Format byte, header, category name, offsets (int64 pairs), item ids (width byte,
    byte lengths, UTF-8 bytes), float32 [short, long] per item (format 2).

    Values are float32 at rest, like the user state, so a round trip is bit-for-bit.
    """
    items = trend.items
    out = [
        _TREND_HEAD.pack(
            TREND_FORMAT,
            _T_TREF if trend.t_ref is not None else 0,
            trend.t_ref or 0,
            trend.half_lives[0],
            trend.half_lives[1],
            len(trend.offsets),
            len(items),
        )
    ]
    _put_str(out, trend.category)
    out.append(np.array([*trend.offsets, *trend.offsets.values()], "<i8").tobytes())
    _put_uints(out, [len(b) for b in items.raw])
    out.append(b"".join(items.raw))
    out.append(np.ascontiguousarray(items.vals, "<f4").tobytes())
    return b"".join(out)


def decode_trend(data: bytes) -> CategoryTrend:
    """Inverse of :func:`encode_trend`; reads format 1 too; a newer or corrupt value raises
    TrendFormatError."""
    r = _checked(data, TrendFormatError, "trend", TREND_FORMAT)
    try:
        return _decode_trend(r, data[0])
    except TrendFormatError:
        raise
    except (ValueError, UnicodeDecodeError, struct.error) as exc:
        raise r.fail(str(exc)) from exc


def _decode_trend(r: Reader, fmt: int) -> CategoryTrend:
    _, flags, t_ref, hs, hl, n_off, n_items = r.unpack(_TREND_HEAD)
    category = r.string()
    parts = np.frombuffer(r.take(16 * n_off), "<i8").tolist()
    if fmt == 1:  # each id behind its own uint16 length
        raw = [r.string().encode() for _ in range(n_items)]
    else:
        lens, blob = r.strs_raw(n_items)
        raw = _split(blob, lens)
    vals = np.frombuffer(r.take(8 * n_items), "<f4").reshape(-1, 2).astype(np.float32)
    r.done()
    return CategoryTrend(
        category=category,
        t_ref=t_ref if flags & _T_TREF else None,
        items=Sums(_texts(raw), vals, raw),
        offsets=dict(zip(parts[:n_off], parts[n_off:], strict=True)),
        half_lives=(hs, hl),
    )
