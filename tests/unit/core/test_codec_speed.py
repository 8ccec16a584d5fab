"""The user-state codec, made faster, writes and reads exactly what it did before.

Format 2 bytes are in RocksDB tables and changelogs: the bytes below were written by the
codec before its rewrite for speed (numpy/array per section, a Reader cursor), and the
rewrite must write them byte for byte and read them back to equal states, with the same
column types, and refuse every corrupt value with the same error.

Format 3 added only the recent-events sequence, written after everything else and only when
there is one (its own flag): a state without a sequence is its format 2 bytes with the
format byte 3, so the format 2 bytes pinned here are still checked byte for byte, and still
read. States with a sequence have their format 3 bytes pinned apart.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import pytest

from stream.core.codec import FORMAT_VERSION, decode, encode
from stream.core.errors import StateFormatError
from stream.core.interest import ItemSums, Sums, UserState, new_state
from stream.core.sequence import RecentEvents


def f32(rows: list[list[float]]) -> np.ndarray:
    return np.array(rows, np.float32).reshape(-1, 2)


def pinned_states() -> dict[str, UserState]:
    """Varied states whose bytes were written by the codec before it was made faster."""
    tiny = UserState(
        user_id="user-1",
        t_ref=1_700_000_000_000,
        categories=Sums(["c0", "c1", "c2"], f32([[1.0, 1.0], [0.5, 2.25], [0.0, 3.0]])),
        items=ItemSums(
            ["i1", "i2", "i3", "i4"],
            f32([[1.0, 1.0], [0.0, 0.5], [0.25, 0.75], [0.0, 0.0]]),
            cat=[1, 2, 0, 1],
            cat_names=["c0", "c1"],
            bought=[False, True, False, False],
        ),
        type_counts={"browse": 4, "purchase": 1},
        events_applied=5,
        offsets={3: 17},
        last_event_kafka_ts=1_700_000_000_123,
        half_lives=(1_800_000, 604_800_000),
    )
    unicode = UserState(
        user_id="usér-☃-Ω",
        t_ref=-5,
        categories=Sums(["Küche", "家電", ""], f32([[-0.0, 1.5], [2.0, -0.0], [0.0, 0.0]])),
        items=ItemSums(
            ["item-é", "商品-1", "x" * 300, "😀"],
            f32([[np.float32(1e-45), 7.0], [3.0, 4.0], [0.0, 5.0], [6.0, 0.0]]),
            cat=[2, 1, 0, 2],
            cat_names=["家電", "Küche"],
            bought=[True, False, True, True],
        ),
        model_version="v2-ß",
        type_counts={"browse": 70_000, "käufe": 2**33, "click": 0},
        events_applied=2**40,
        offsets={0: 5, 7: 2**40, 2: -1},
        last_event_kafka_ts=None,
        half_lives=(1_000, 20_000),
    )
    rng = np.random.default_rng(7)
    n_cat, n_items, dim = 64, 100, 64
    vals = rng.standard_normal((n_cat + n_items, 2)).astype(np.float32)
    vals[::3, 0] = 0.0  # short sums of old events underflow to exactly zero
    names = [f"category-{k}" for k in range(n_cat)]
    full = UserState(
        user_id="user-9876543210",
        t_ref=1_700_000_123_456,
        categories=Sums(list(names), vals[:n_cat].copy()),
        items=ItemSums(
            [f"item-{k * 7919}" for k in range(n_items)],
            vals[n_cat:].copy(),
            cat=[(k % (n_cat + 1)) for k in range(n_items)],
            cat_names=list(names),
            bought=[k % 5 == 0 for k in range(n_items)],
        ),
        vectors=rng.standard_normal((2, dim)).astype(np.float32),
        model_version="7",
        type_counts={"browse": 500, "click": 80, "purchase": 20},
        events_applied=600,
        offsets={1: 123_456, 4: 99},
        last_event_kafka_ts=1_700_000_123_999,
    )
    many_names = UserState(
        user_id="u",
        items=ItemSums(
            [f"i{k}" for k in range(9)],
            np.zeros((9, 2), np.float32),
            cat=[300, 1, 0, 299, 2, 3, 4, 5, 300],
            cat_names=[f"n{k}" for k in range(300)],
            bought=[True] * 9,
        ),
        vectors=np.zeros((2, 0), np.float32),
        model_version="",
    )
    unaligned = UserState(  # no zero value, but five zero bytes in a row across two values
        user_id="u2",
        t_ref=0,
        categories=Sums(["c"], f32([[np.float32(1e-45), 1.0]])),
        items=ItemSums(
            ["a", "b"],
            f32([[7.0, np.float32(1e-45)], [0.5, 2.0]]),
            cat=[0, 0],
            bought=[np.True_, np.False_],  # numpy bools (the encoder's general path)
        ),
    )
    return {
        "empty": new_state("u"),
        "unaligned": unaligned,
        "empty_unicode": new_state("ü"),
        "tiny": tiny,
        "unicode": unicode,
        "full": full,
        "many_names": many_names,
    }


# name -> (length, sha256, hex when short) of the bytes the codec before the rewrite wrote
EXPECTED: dict[str, tuple[int, str, str | None]] = {
    "empty": (
        66,
        "da467e6ddb8270d06340f7dae92d047e315e0ba9ee999004ebf4e3f537d883e8",
        (
            "0200000000000000000040771b000000000000840c24000000000000000000000000000000000000"
            "0000000000000000000000000000000000000000420100754242"
        ),
    ),
    "unaligned": (
        101,
        "833f58596c108d85a28cf039d548035a9b530e766bada79b70b23e6a7a5fa9ac",
        (
            "0201000000000000000040771b000000000000840c24000000000000000000000000000000000000"
            "00000000000000000000010000000200000000004202000101017532636162423f01000000000080"
            "3f0000e040010000000000003f0000004042000001"
        ),
    ),
    "empty_unicode": (
        67,
        "b2bd46a184c25ad74475935c319d6a9bb2f2efd224286f53fa6791f85ce7200a",
        (
            "0200000000000000000040771b000000000000840c24000000000000000000000000000000000000"
            "0000000000000000000000000000000000000000420200c3bc4242"
        ),
    ),
    "tiny": (
        179,
        "6d1a7e513225f1de7cafaeb42ce843db4fd94324c18cfad7232ab307f8f5582c",
        (
            "02030068e5cf8b01000040771b000000000000840c24000000007b68e5cf8b010000050000000000"
            "00000200010002000000030000000400000000004206000608020202020202020202757365722d31"
            "62726f77736570757263686173656330633163326931693269336934633063314204010300000000"
            "0000001100000000000000ef0e0000803f0000803f0000003f00001040000040400000803f000080"
            "3f0000003f0000803e0000403f420102000102"
        ),
    ),
    "unicode": (
        587,
        "10a448d7f7e62ab2b22fb1306fd08ff58be3689e6aad76386ba76441e4137a92",
        None,
    ),
    "full": (
        4597,
        "3fc13c1ba9a9a3155949e7656d49cbe75aec56964818c2b77d65bcbfe2dc8dcd",
        None,
    ),
    "many_names": (
        1506,
        "2d7e8a85076de53c7a37f054f0858a0f3ac5e0198393066b218bb5c59e01431e",
        None,
    ),
}


def sequence_states() -> dict[str, UserState]:
    """States with a sequence (format 3 only): items kept and dropped, every width."""
    tiny = pinned_states()["tiny"]
    t = tiny.t_ref
    assert t is not None
    tiny.sequence = RecentEvents(
        [t - 70_000, t - 5, t - 5, t],
        ["i2", "gone", "i1", "gone"],  # "gone": an item the bound dropped, written once
        ["purchase", "browse", "browse", "browse"],
    )
    full = pinned_states()["full"]
    t = full.t_ref
    assert t is not None
    ages = sorted((k * 997_003 % 5_000_000_000 for k in range(50)), reverse=True)
    full.sequence = RecentEvents(
        [t - a for a in ages],
        [f"item-{k * 7919}" if k % 7 else f"new-{k}" for k in range(50)],
        [("browse", "click", "purchase")[k % 3] for k in range(50)],
    )
    unicode = pinned_states()["unicode"]
    unicode.sequence = RecentEvents([-5 - 2**40, -5], ["😀", "商品-1"], ["click", "käufe"])
    many = UserState(  # more than 256 item codes and a type code of 0
        user_id="m",
        t_ref=10**6,
        items=ItemSums([f"k{n}" for n in range(300)], np.ones((300, 2), np.float32)),
        type_counts={"view": 300},
        sequence=RecentEvents(
            list(range(10**6 - 299, 10**6 + 1)), [f"k{n}" for n in range(300)], ["view"] * 300
        ),
    )
    return {"tiny_seq": tiny, "full_seq": full, "unicode_seq": unicode, "many_seq": many}


# name -> (length, sha256) of the format 3 bytes of the states with a sequence
EXPECTED_SEQUENCE: dict[str, tuple[int, str]] = {
    "tiny_seq": (216, "c843f7a322f810c6bda2c5bb2d68818f12127144f0d21d492c1154f05d7472f3"),
    "full_seq": (4959, "a3d4dd72b338665f1cb6dfa5a1ad7159a542b9db69783e38b641b18b71cb2fea"),
    "unicode_seq": (614, "7780cc88349f8ebfa8e9ed77e166e6338763314c7a1eabe0d0a81940071d521b"),
    "many_seq": (5783, "41f93b8045f772c7c0c8ffd4d2e59a3a67bd07769730f80bcab2642c98779e56"),
}


def as_format2(blob: bytes) -> bytes:
    """The format 2 bytes of a state without a sequence, from its format 3 bytes."""
    assert blob[0] == FORMAT_VERSION == 3 and not blob[1] & 16  # no sequence flag
    return b"\x02" + blob[1:]


def test_every_pinned_state_is_pinned() -> None:
    assert set(pinned_states()) == set(EXPECTED)
    assert set(sequence_states()) == set(EXPECTED_SEQUENCE)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_encode_writes_the_bytes_written_before(name: str) -> None:
    state = pinned_states()[name]
    size, digest, hexed = EXPECTED[name]
    blob = encode(state)
    old = as_format2(blob)
    if hexed is not None:
        assert old.hex() == hexed
    assert (len(old), hashlib.sha256(old).hexdigest()) == (size, digest)
    back = decode(blob)
    assert back == state
    assert encode(back) == blob
    assert decode(old) == state  # format 2 bytes still read (an empty sequence)


@pytest.mark.parametrize("name", [n for n, (_, _, h) in EXPECTED.items() if h is not None])
def test_format_2_bytes_written_before_read_as_they_were(name: str) -> None:
    """The hex above was written by the format 2 codec: a committed format 2 fixture."""
    old = bytes.fromhex(EXPECTED[name][2] or "")
    assert old[0] == 2
    state = decode(old)
    assert state == pinned_states()[name] and len(state.sequence) == 0
    assert encode(state) == b"\x03" + old[1:]


@pytest.mark.parametrize("name", sorted(EXPECTED_SEQUENCE))
def test_states_with_a_sequence_round_trip_to_pinned_bytes(name: str) -> None:
    state = sequence_states()[name]
    blob = encode(state)
    assert blob[0] == 3 and blob[1] & 16
    assert (len(blob), hashlib.sha256(blob).hexdigest()) == EXPECTED_SEQUENCE[name]
    back = decode(blob)
    assert back == state and back.sequence == state.sequence
    seq = back.sequence
    assert all(type(x) is int for x in seq.ts)
    assert all(type(x) is str for x in seq.item) and all(type(x) is str for x in seq.type)
    assert encode(back) == blob
    without = decode(blob)
    without.sequence = RecentEvents()
    assert blob.startswith(encode(without)[2:], 2)  # the sequence only adds a section


def _width(maximum: int) -> int:
    return 1 if maximum < 1 << 8 else 2 if maximum < 1 << 16 else 4 if maximum < 1 << 32 else 8


@pytest.mark.parametrize("name", sorted(EXPECTED_SEQUENCE))
def test_the_sequence_costs_a_few_bytes_per_event(name: str) -> None:
    """Kept items and types are codes (names only for items no longer kept, once each),
    times are ages from t_ref in the narrowest width that fits them all."""
    state = sequence_states()[name]
    plain = state.snapshot()
    plain.sequence = RecentEvents()
    extra = len(encode(state)) - len(encode(plain))
    seq, t_ref = state.sequence, state.t_ref
    assert t_ref is not None
    gone = {i for i in seq.item if i not in state.items.index}
    names = 1 + sum(len(i.encode()) + 1 for i in gone) if gone else 0
    codes = len(state.items) + len(gone) - 1
    per_event = _width(codes) + _width(len(state.type_counts) - 1) + _width(t_ref - seq.ts[0])
    assert extra == 4 + names + 3 + len(seq) * per_event


@pytest.mark.parametrize("name", ["tiny", "unicode", "full", "many_names", "unaligned"])
def test_decoded_columns_have_the_types_they_had(name: str) -> None:
    state = pinned_states()[name]
    back = decode(encode(state))
    for table, want in ((back.categories, state.categories), (back.items, state.items)):
        assert type(table.keys_) is list and all(type(k) is str for k in table.keys_)
        assert table.keys_ == want.keys_
        assert type(table.raw) is list and table.raw == [k.encode() for k in table.keys_]
        assert all(type(r) is bytes for r in table.raw)
        vals = table.vals
        assert vals.dtype == np.float32 and vals.shape == (len(table.keys_), 2)
        assert vals.flags.owndata and vals.flags.writeable and vals.flags.c_contiguous
        assert vals.tobytes() == np.asarray(want.vals, np.float32).tobytes()
    items = back.items
    assert isinstance(items, ItemSums)
    assert type(items.cat) is list and all(type(c) is int for c in items.cat)
    assert type(items.cat_names) is list and all(type(c) is str for c in items.cat_names)
    assert type(items.bought) is list and all(type(b) is bool for b in items.bought)
    assert items.bought == [bool(b) for b in state.items.bought]
    assert type(back.type_counts) is dict and list(back.type_counts.items()) == list(
        state.type_counts.items()
    )
    assert type(back.offsets) is dict and list(back.offsets.items()) == list(state.offsets.items())
    if state.vectors is None:
        assert back.vectors is None
    else:
        assert back.vectors.dtype == np.float32 and back.vectors.shape == state.vectors.shape
        assert back.vectors.flags.writeable


@pytest.mark.parametrize("name", sorted(EXPECTED) + sorted(EXPECTED_SEQUENCE))
def test_every_truncation_or_extension_is_refused(name: str) -> None:
    blob = encode({**pinned_states(), **sequence_states()}[name])
    for cut in range(len(blob)):
        with pytest.raises(StateFormatError, match=r"^corrupt state: "):
            decode(blob[:cut])
    for extra in (b"\x00", b"B", b"\xff" * 9):
        with pytest.raises(StateFormatError, match=r"^corrupt state: .*trailing bytes"):
            decode(blob + extra)


def test_flipped_bytes_decode_or_raise_state_format_error() -> None:
    rnd = random.Random(11)
    blobs = [encode(s) for s in [*pinned_states().values(), *sequence_states().values()]]
    for _ in range(3000):
        blob = bytearray(rnd.choice(blobs))
        blob[rnd.randrange(len(blob))] = rnd.randrange(256)
        try:
            state = decode(bytes(blob))
        except StateFormatError as exc:
            assert str(exc).startswith("corrupt state: ") or "newer interest-stream" in str(exc)
        else:
            assert isinstance(state, UserState)
