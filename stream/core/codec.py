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

from stream.core.errors import InterestStreamError, StateFormatError, TrendFormatError
from stream.core.interest import DIGEST_BYTES, UserState
from stream.core.trending import CategoryTrend

FORMAT_VERSION = 1  # user states
TREND_FORMAT = 1  # category trends

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

    def strs(self, n: int) -> list[str]:
        """``n`` UTF-8 strings: their byte lengths (see :meth:`uints`), then the bytes."""
        lens = self.uints(n)
        blob = self.take(sum(lens))
        ends = list(accumulate(lens))
        if blob.isascii():  # byte offsets are character offsets: slice one decoded str
            text = blob.decode()
            return [text[a:b] for a, b in zip([0, *ends], ends, strict=False)]
        return [blob[a:b].decode() for a, b in zip([0, *ends], ends, strict=False)]

    def string(self) -> str:
        """One string behind a uint16 byte length."""
        (n,) = struct.unpack("<H", self.take(2))
        return self.take(n).decode()

    def floats(self, n: int) -> list[list[float]]:
        """``n`` float32 values behind a bitmap of the non-zero ones, as [short, long] pairs."""
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


def _put_str(out: list[bytes], s: str) -> None:
    raw = s.encode()
    out.append(struct.pack("<H", len(raw)))
    out.append(raw)


# --------------------------------------------------------------------------- user state

# format, flags, t_ref, half-lives, kafka ts, events applied; then the counts of types,
# partitions, digests, category names, categories, items, and the vector dim
_HEADER = struct.Struct("<BBqqqqqHHIIIIH")
_F_TREF, _F_KTS, _F_VEC, _F_MODEL = 1, 2, 4, 8


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


def decode(data: bytes) -> UserState:
    """Inverse of :func:`encode`; a newer or unknown format raises StateFormatError."""
    r = _checked(data, StateFormatError, "state", FORMAT_VERSION)
    try:
        return _decode_state_v1(r)
    except StateFormatError:
        raise
    except (ValueError, UnicodeDecodeError, struct.error) as exc:
        raise r.fail(str(exc)) from exc


def _decode_state_v1(r: Reader) -> UserState:
    head = r.unpack(_HEADER)
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
    r.done()
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


# --------------------------------------------------------------------------- trends

_TREND_HEAD = struct.Struct("<BBqqqII")  # format, flags, t_ref, hs, hl, n_offsets, n_items
_T_TREF = 1


def encode_trend(trend: CategoryTrend) -> bytes:
    """Format byte, header, category name, offsets (int64 pairs), item ids, float32 [s, l].

    Values are float32 at rest, like the user state, so a round trip is bit-for-bit.
    """
    out = [
        _TREND_HEAD.pack(
            TREND_FORMAT,
            _T_TREF if trend.t_ref is not None else 0,
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


def decode_trend(data: bytes) -> CategoryTrend:
    """Inverse of :func:`encode_trend`; a newer or corrupt value raises TrendFormatError."""
    r = _checked(data, TrendFormatError, "trend", TREND_FORMAT)
    try:
        return _decode_trend_v1(r)
    except TrendFormatError:
        raise
    except (ValueError, UnicodeDecodeError, struct.error) as exc:
        raise r.fail(str(exc)) from exc


def _decode_trend_v1(r: Reader) -> CategoryTrend:
    _, flags, t_ref, hs, hl, n_off, n_items = r.unpack(_TREND_HEAD)
    category = r.string()
    parts = np.frombuffer(r.take(16 * n_off), "<i8").tolist()
    ids = [r.string() for _ in range(n_items)]
    vals = np.frombuffer(r.take(8 * n_items), "<f4").reshape(-1, 2).astype(np.float32).tolist()
    r.done()
    return CategoryTrend(
        category=category,
        t_ref=t_ref if flags & _T_TREF else None,
        items=dict(zip(ids, vals, strict=True)),
        offsets=dict(zip(parts[:n_off], parts[n_off:], strict=True)),
        half_lives=(hs, hl),
    )
