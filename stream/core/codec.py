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
from itertools import accumulate, chain
from operator import itemgetter
from typing import Any

import numpy as np

from stream.core.decay import Sums
from stream.core.errors import InterestStreamError, StateFormatError, TrendFormatError
from stream.core.interest import ItemSums, UserState
from stream.core.sequence import RecentEvents
from stream.core.trending import CategoryTrend

FORMAT_VERSION = 3  # user states (formats 1 and 2 are still read)
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

    def string(self) -> str:
        """One string behind a uint16 byte length."""
        (n,) = struct.unpack("<H", self.take(2))
        return self.take(n).decode()

    def done(self) -> None:
        if self.pos != len(self.data):
            raise self.fail(f"{len(self.data) - self.pos} trailing bytes")


def _check_format(data: bytes, error: type[InterestStreamError], what: str, newest: int) -> None:
    """Refuse empty values and unknown or newer formats (the format byte comes first)."""
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


def _checked(data: bytes, error: type[InterestStreamError], what: str, newest: int) -> Reader:
    """A reader past the format byte, after refusing empty, unknown or newer formats."""
    _check_format(data, error, what, newest)
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
_F_SEQ = 16  # format 3: a sequence section follows the vectors
_SEQ_HEAD = struct.Struct("<HH")  # the sequence's events, its item names not kept in items
_SEQ_MAX = 0xFFFF


def encode(state: UserState) -> bytes:
    """Compact binary state: format byte first, then a fixed header and packed sections.

    Layout (little-endian), format 3: header (scalars and section counts); one string
    table (user_id, model_version, type names, category keys, item keys, the items'
    category names: a width byte, the byte lengths, the UTF-8 bytes); type counts;
    partition offsets (int64 pairs); category then item [short, long] float32 pairs
    (non-zero bitmap + values); each item's category code (0 = none, else 1-based into the
    items' category names); purchased bitset; vectors (2 x dim float32); then, only when
    the sequence is not empty (flag ``_F_SEQ``), the sequence (see :func:`_sequence_bytes`).
    Every section is written from the state's columns as they are. A state with an empty
    sequence is the format 2 bytes with the format byte 3.

    Raises ValueError for a sequence no fold makes: an event after t_ref (or no t_ref), a
    type missing from type_counts, more than 65535 events.
    """
    cats, items, vectors, seq = state.categories, state.items, state.vectors, state.sequence
    flags = (
        (_F_TREF if state.t_ref is not None else 0)
        | (_F_KTS if state.last_event_kafka_ts is not None else 0)
        | (_F_VEC if vectors is not None else 0)
        | (_F_MODEL if state.model_version is not None else 0)
        | (_F_SEQ if seq.ts else 0)
    )
    raw = [
        state.user_id.encode(),
        (state.model_version or "").encode(),
        *map(str.encode, state.type_counts),
        *cats.raw,
        *items.raw,
        *map(str.encode, items.cat_names),
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
            vectors.shape[1] if vectors is not None else 0,
        ),
        _uints_bytes(list(map(len, raw))),
        b"".join(raw),
        _uints_bytes(list(state.type_counts.values())),
        _arr("q", [*state.offsets, *state.offsets.values()]),
        _float_pairs_bytes(cats.vals, items.vals),
        _uints_bytes(items.cat),
        _bits_bytes(items.bought),
    ]
    if vectors is not None:
        out.append(_f4_bytes(vectors))
    if seq.ts:
        out.append(_sequence_bytes(state))
    return b"".join(out)


def _sequence_bytes(state: UserState) -> bytes:
    """The sequence section: its counts (events, extra item names: uint16 each); the
    extra names' string table (only when there are some); per event its item code, type
    code and age ``t_ref - ts`` (three lists of unsigned ints, each behind its width byte).

    Nothing is repeated that the state already writes: an item code below ``len(items)``
    is the row of a kept item key, the codes above index the extra names (items of recent
    events that the bound on items dropped, each written once); a type code indexes the
    type names of ``type_counts`` (every applied type is counted there); the ages of the
    last 50 events fit two bytes for a user active within the last minute, four within 49
    days. Each column is one C-level lookup (:func:`_pick`) over the 50 events."""
    seq, items, t_ref = state.sequence, state.items, state.t_ref
    n = len(seq.ts)
    if n > _SEQ_MAX:
        raise ValueError(f"a sequence of {n} events (at most {_SEQ_MAX} are encoded)")
    if t_ref is None:
        raise ValueError("sequence events after the state's t_ref (None)")
    ages = [t_ref - t for t in seq.ts]
    index = items.index
    extra: dict[str, int] = {}
    try:
        codes = _pick(index, seq.item)
    except KeyError:  # items of recent events no longer kept in items
        base = len(items.keys_)
        codes = list(map(index.get, seq.item))
        for k, code in enumerate(codes):
            if code is None:
                name = seq.item[k]
                code = extra.get(name)
                if code is None:
                    code = extra[name] = base + len(extra)
                codes[k] = code
    try:
        types = _pick({t: k for k, t in enumerate(state.type_counts)}, seq.type)
    except KeyError as exc:
        raise ValueError(f"sequence event type {exc} is not in type_counts") from None
    out = [_SEQ_HEAD.pack(n, len(extra))]
    if extra:
        raw = list(map(str.encode, extra))
        out.append(_uints_bytes(list(map(len, raw))))
        out.append(b"".join(raw))
    out.append(_uints_bytes(codes))
    out.append(_uints_bytes(types))
    out.append(_ages_bytes(ages, t_ref))
    return b"".join(out)


def _pick(table: Any, keys: list) -> list:
    """``[table[k] for k in keys]`` by one ``operator.itemgetter`` call: half the cost of
    a comprehension or a ``map`` of ``__getitem__`` at 50 keys. Raises what ``table[k]``
    raises (KeyError, IndexError)."""
    if len(keys) > 1:
        return list(itemgetter(*keys)(table))
    return [table[k] for k in keys]


def _ages_bytes(ages: list[int], t_ref: int) -> bytes:
    """Width byte + the ages (as :func:`_uints_bytes` writes them). The sequence is oldest
    first, so the first age is the largest and sets the width with no ``max``; a list out of
    order (a state no fold makes) takes the general path, a negative age is refused."""
    code = _uint_code(ages[0])
    try:
        return code.encode() + _arr(code, ages)
    except OverflowError:
        if min(ages) < 0:
            raise ValueError(f"sequence events after the state's t_ref ({t_ref})") from None
        return _uints_bytes(ages)


# Encoding helpers: each returns its section's bytes exactly as the numpy/array version
# that wrote format 2 first did; the fast paths cover what states hold (small unsigned
# ints, Python bools, float32 arrays) and anything else takes the general path.

_LE_F4 = np.dtype("<f4")
_ZERO_WORD = bytes(4)
# byte -> "0" or "1": a list of 0/1 bytes becomes the digits of one int (see _bits_bytes)
_BINARY_DIGITS = bytes.maketrans(bytes(range(256)), b"0" + b"1" * 255)


def _uints_bytes(values: list[int]) -> bytes:
    """Width byte + values (see :func:`_put_uints`). Values that all fit one byte (string
    lengths, category codes: nearly always) are ``bytes(values)``, which also finds that
    out in the same pass (no ``max``); else the width is chosen as before."""
    try:
        return b"B" + bytes(values)
    except ValueError:  # a value of 256 or more (or negative: array raises for it)
        code = _uint_code(max(values, default=0))
        return code.encode() + _arr(code, values)


def _f4_bytes(a: np.ndarray) -> bytes:
    """C-order little-endian float32 bytes of ``a``; no copy beyond ``tobytes`` when it is
    float32 already (what states hold)."""
    if a.dtype != _LE_F4:
        a = a.astype(_LE_F4)
    return a.tobytes()


def _float_pairs_bytes(cat_vals: np.ndarray, item_vals: np.ndarray) -> bytes:
    """float32 [short, long] values of categories then items, behind a bitmap of the
    non-zero ones (least significant bit first).

    Short-horizon sums of anything older than a few days are exactly zero; eliding them
    saves ~100 bytes for a typical user.  The test is on the bit pattern, so -0.0 survives.
    A state with no zero at all (a recent user: nothing has decayed to zero yet) skips the
    numpy round: the bitmap is all ones and the values are the bytes as they are. The test
    for it (no four zero bytes in a row anywhere) is conservative: a zero float32 is four
    aligned zero bytes, and a false alarm only takes the exact numpy path."""
    body = _f4_bytes(cat_vals) + _f4_bytes(item_vals)
    n = len(body) >> 2
    if _ZERO_WORD not in body:
        tail = bytes(((1 << (n & 7)) - 1,)) if n & 7 else b""
        return b"\xff" * (n >> 3) + tail + body
    words = np.frombuffer(body, "<u4")
    nz = words != 0  # on the bit pattern, so -0.0 is kept
    return np.packbits(nz, bitorder="little").tobytes() + words[nz].tobytes()


def _bits_bytes(flags: list[bool]) -> bytes:
    """Bitset of ``flags``, least significant bit first (``np.packbits(.., "little")``).

    Reversed, the flags are the binary digits of one int, which ``int.to_bytes`` packs in
    C: about four times cheaper than the numpy round for a state's 1 to 100 items. Flags
    that are not 0/1-valued ints (numpy bools, say) take the numpy path."""
    if not flags:
        return b""
    try:
        digits = bytes(flags[::-1]).translate(_BINARY_DIGITS)
    except (TypeError, ValueError):
        return np.packbits(np.asarray(flags, bool), bitorder="little").tobytes()
    return int(digits, 2).to_bytes((len(flags) + 7) >> 3, "little")


_HEAD = struct.Struct("<BBqqqqq")  # the fields every format starts with


def read_head(data: bytes) -> tuple[int | None, int | None, int]:
    """(t_ref, last Kafka timestamp, events applied) from a state's header alone: what a
    scan over every stored state needs, at a fraction of a :func:`decode`."""
    _check_format(data, StateFormatError, "state", FORMAT_VERSION)
    if len(data) < _HEAD.size:
        raise StateFormatError(f"corrupt state: truncated header ({len(data)} bytes)")
    _, flags, t_ref, _, _, kafka_ts, events = _HEAD.unpack_from(data)
    return (
        t_ref if flags & _F_TREF else None,
        kafka_ts if flags & _F_KTS else None,
        events,
    )


def decode(data: bytes) -> UserState:
    """Inverse of :func:`encode`; reads formats 1 and 2 too (an empty sequence); a newer
    or unknown format raises StateFormatError."""
    _check_format(data, StateFormatError, "state", FORMAT_VERSION)
    data = bytes(data)
    try:
        return _decode_state(data, data[0])
    except StateFormatError:
        raise
    except (ValueError, UnicodeDecodeError, struct.error, IndexError) as exc:
        raise _corrupt(str(exc)) from exc


def _decode_state(data: bytes, fmt: int) -> UserState:
    """Reads the sections at running offsets into ``data`` (no cursor object, no slice
    per section, one C call where one does it): a state is decoded on every cache miss
    and once per batch by the ranking, and at a few hundred bytes to a few KB its cost is
    the number of Python-level calls, not the bytes."""
    if fmt == 1:
        pos = _need(data, 0, _HEADER_V1.size)
        head = _HEADER_V1.unpack_from(data)
        n_types, n_parts, n_digests, n_names, n_cat, n_items, dim = head[7:]
        # one name table for categories and item categories, categories first
        raw, pos = _strings_at(data, pos, 2 + n_types + n_names + n_items)
        cat_at, item_at, names_at = 2 + n_types, 2 + n_types + n_names, 2 + n_types
    else:
        pos = _need(data, 0, _HEADER.size)
        head = _HEADER.unpack_from(data)
        n_types, n_parts, n_names, n_cat, n_items, dim = head[7:]
        n_digests = 0
        raw, pos = _strings_at(data, pos, 2 + n_types + n_cat + n_items + n_names)
        cat_at, item_at = 2 + n_types, 2 + n_types + n_cat
        names_at = item_at + n_items
    _, flags, t_ref, hs, hl, kts, applied = head[:7]
    # strings are decoded in the order of the reader before (the same error comes first
    # for a value corrupt in two places): scalars and names, the sections, then the keys
    head_texts = list(map(bytes.decode, raw[: 2 + n_types]))
    names = list(map(bytes.decode, raw[names_at : names_at + n_names]))
    counts, pos = _uints_at(data, pos, n_types)
    type_counts = dict(zip(head_texts[2:], counts, strict=True))
    parts, pos = _ints_at(data, pos, "q", 2 * n_parts)
    offsets = dict(zip(parts[:n_parts], parts[n_parts:], strict=True))
    pos = _need(data, pos, n_digests * _DIGEST_V1)
    cat_vals, item_vals, pos = _float_pairs_at(data, pos, n_cat, n_items)
    codes, pos = _uints_at(data, pos, n_items)
    bought, pos = _bits_at(data, pos, n_items)
    vectors = None
    if flags & _F_VEC:
        end = _need(data, pos, 8 * dim)
        vectors = np.frombuffer(data, "<f4", 2 * dim, pos).reshape(2, dim).astype(np.float32)
        pos = end
    seq = None
    if fmt >= 3 and flags & _F_SEQ:
        seq, pos = _sequence_at(data, pos, t_ref if flags & _F_TREF else None)
    if pos != len(data):
        raise _corrupt(f"{len(data) - pos} trailing bytes")
    item_raw = list(raw[item_at : item_at + n_items])
    item_keys = list(map(bytes.decode, item_raw))
    items = ItemSums(item_keys, item_vals, item_raw, bought=bought)
    sequence = RecentEvents()
    if seq is not None:
        extra, seq_items, seq_types, ages = seq
        known = item_keys + list(map(bytes.decode, extra)) if extra else item_keys
        sequence = RecentEvents(
            [t_ref - a for a in ages], _pick(known, seq_items), _pick(head_texts[2:], seq_types)
        )
    if fmt == 1:  # codes index the shared table: keep only the names the items use
        items.cat = [items.category_code(names[c - 1]) if c else 0 for c in codes]
    else:
        items.cat, items.cat_names = codes, names
    cat_raw = list(raw[cat_at : cat_at + n_cat])
    return UserState(
        user_id=head_texts[0],
        t_ref=t_ref if flags & _F_TREF else None,
        categories=Sums(list(map(bytes.decode, cat_raw)), cat_vals, cat_raw),
        items=items,
        vectors=vectors,
        model_version=head_texts[1] if flags & _F_MODEL else None,
        type_counts=type_counts,
        events_applied=applied,
        offsets=offsets,
        last_event_kafka_ts=kts if flags & _F_KTS else None,
        half_lives=(hs, hl),
        sequence=sequence,
    )


def _sequence_at(
    data: bytes, pos: int, t_ref: int | None
) -> tuple[tuple[tuple[bytes, ...], list[int], list[int], list[int]], int]:
    """The sequence section (see :func:`_sequence_bytes`) as read: the extra item names
    (bytes), the item codes, the type codes and the ages; resolved by the caller once the
    keys are decoded (a code out of range is an IndexError there: corrupt). A sequence
    without a t_ref to age from is corrupt."""
    if t_ref is None:
        raise _corrupt("a sequence without a reference time")
    end = _need(data, pos, _SEQ_HEAD.size)
    n, n_extra = _SEQ_HEAD.unpack_from(data, pos)
    if not n:  # an empty sequence is written as no section
        raise _corrupt("an empty sequence section")
    extra: tuple[bytes, ...] = ()
    if n_extra:
        extra, end = _strings_at(data, end, n_extra)
    codes, end = _uints_at(data, end, n)
    types, end = _uints_at(data, end, n)
    ages, end = _uints_at(data, end, n)
    return (extra, codes, types, ages), end


# Decoding helpers: each reads one section at ``pos`` and returns it with the offset past
# it; a section running past the end raises the same "truncated" error as :class:`Reader`.

_UINT_WIDTHS = {c.encode(): array(c).itemsize for c in "BHIQ"}  # width byte -> value size
# byte -> the hundreds, tens and units digit of its value, in ASCII (see _strings_format)
_DIGITS = [
    bytes.maketrans(bytes(range(256)), bytes(48 + n // d % 10 for n in range(256)))
    for d in (100, 10, 1)
]
# byte -> its 8 bits as bools, least significant first (the order of np.packbits "little")
_BYTE_BITS = [tuple(bool(b >> i & 1) for i in range(8)) for b in range(256)]


def _corrupt(detail: str) -> StateFormatError:
    return StateFormatError(f"corrupt state: {detail}")


def _need(data: bytes, pos: int, n: int) -> int:
    """The end of ``n`` bytes at ``pos``; raises if ``data`` is shorter."""
    end = pos + n
    if end > len(data):
        raise _corrupt(f"truncated at byte {pos} (need {n} more)")
    return end


def _uints_at(data: bytes, pos: int, n: int) -> tuple[list[int], int]:
    """A width byte (array typecode) then ``n`` unsigned integers of that width; one-byte
    values (the usual width) are ``list(bytes)``."""
    code = data[pos : pos + 1]
    width = _UINT_WIDTHS.get(code)
    if width is None:
        _need(data, pos, 1)
        raise _corrupt(f"bad integer width {code.decode('ascii', 'replace')!r}")
    if width == 1:
        end = _need(data, pos + 1, n)
        return list(data[pos + 1 : end]), end
    return _ints_at(data, pos + 1, code.decode(), n)


def _ints_at(data: bytes, pos: int, code: str, n: int) -> tuple[list[int], int]:
    """``n`` little-endian integers of array typecode ``code``."""
    a = array(code)
    end = _need(data, pos, n * a.itemsize)
    a.frombytes(data[pos:end])
    if _BIG_ENDIAN:
        a.byteswap()
    return a.tolist(), end


def _strings_at(data: bytes, pos: int, n: int) -> tuple[tuple[bytes, ...], int]:
    """The string table of ``n`` strings: their byte lengths (see :func:`_uints_at`) then
    their bytes, cut by one struct format (``"<003s017s..."``) in C: slicing them one by
    one in Python costs about twice as much."""
    if data[pos : pos + 1] == b"B":  # lengths under 256 (nearly always)
        at = _need(data, pos + 1, n)
        fmt = _strings_format(data[pos + 1 : at])
    else:
        lens, at = _uints_at(data, pos, n)
        _need(data, at, sum(lens))  # before a format of a corrupt, huge length
        fmt = ("<" + "".join(f"{k}s" for k in lens)).encode()
    cut = struct.Struct(fmt)
    end = _need(data, at, cut.size)
    return cut.unpack_from(data, at), end


def _strings_format(lens: bytes) -> bytes:
    """The struct format of strings of these one-byte lengths, one 4-byte code each.

    Built in C at any count: each length byte is translated to its three digits (struct
    reads ``"007s"`` as ``"7s"``), which are interleaved by strided slice assignment; this
    is a quarter of the cost of joining ``f"{n}s"`` per string for a state of 200 keys,
    and the struct compiles faster from it too."""
    fmt = bytearray(b"<" + b"s" * (4 * len(lens)))
    fmt[1::4] = lens.translate(_DIGITS[0])
    fmt[2::4] = lens.translate(_DIGITS[1])
    fmt[3::4] = lens.translate(_DIGITS[2])
    return bytes(fmt)


def _float_pairs_at(
    data: bytes, pos: int, n_cat: int, n_items: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """The category and the item [short, long] pairs behind the non-zero bitmap (see
    :func:`_float_pairs_bytes`), each as its own float32 array (copies, not views of
    ``data``). The number of values is the bitmap's popcount; with no zero (a recent user)
    the values are read as they are, with no mask."""
    n = 2 * (n_cat + n_items)
    at = _need(data, pos, (n + 7) >> 3)
    k = (int.from_bytes(data[pos:at], "little") & ((1 << n) - 1)).bit_count()
    end = _need(data, at, 4 * k)
    if k == n:
        flat = np.frombuffer(data, "<f4", n, at)
    else:
        nz = np.frombuffer(data, np.uint8, at - pos, pos)
        mask = np.unpackbits(nz, count=n, bitorder="little").view(bool)
        flat = np.zeros(n, np.float32)
        flat[mask] = np.frombuffer(data, "<f4", k, at)
    pairs = flat.reshape(-1, 2)
    return pairs[:n_cat].astype(np.float32), pairs[n_cat:].astype(np.float32), end


def _bits_at(data: bytes, pos: int, n: int) -> tuple[list[bool], int]:
    """A bitset of ``n`` bools (least significant bit first), through a table of each
    byte's bits: cheaper than ``np.unpackbits(...).tolist()`` at every state size."""
    end = _need(data, pos, (n + 7) >> 3)
    if n <= 8:  # one byte (or none)
        return (list(_BYTE_BITS[data[pos]][:n]) if n else []), end
    bits = list(chain.from_iterable(map(_BYTE_BITS.__getitem__, data[pos:end])))
    del bits[n:]
    return bits, end


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
