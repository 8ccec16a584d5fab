"""Fuzz of the event parser: valid, near-valid and hostile records, over 100,000 in all.

Three verdicts are compared on every record: ``parse``, ``parse_batch`` and the 0.2.0
parser rebuilt from its parts (``orjson.loads`` plus the hand-written checks of
``EventParser.build``), because the typed decoder must change the speed and nothing else.
Records come from a seeded generator, in batches the size of a Kafka fetch, and hypothesis
picks the seeds and adds a few records of its own, so a failure shrinks to one seed.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.config import DEFAULT_ALIASES, DEFAULT_WEIGHTS
from stream.core.events import MAX_ID_CHARS, PARSE_REASONS, EventParser
from stream.core.types import Event, EventBatch, Rejection, RejectReason

NOW = 1_700_000_000_000
DAY = 86_400_000
MAX_BYTES = 1 << 18  # room for 100,000 nested arrays, so they reach the decoder
DEEP = 100_000
EXAMPLES = 220
BATCH = 480  # seeded records per example; hypothesis adds up to 20
MIN_RECORDS = 100_000
REASONS = PARSE_REASONS
CANONICAL = frozenset(DEFAULT_WEIGHTS)
CATALOG = {"i1": "c-from-catalog", "é": "ç", "i" * MAX_ID_CHARS: "c" * MAX_ID_CHARS}
FIELDS = ("user_id", "item_id", "type", "ts", "event_id", "category", "dwell_ms", "quantity")
KAFKA_TS = (-1, -1, -1, -7, 0, NOW - 1_000, NOW, NOW + DAY, NOW + DAY + 1)

PARSER = EventParser(DEFAULT_WEIGHTS, DEFAULT_ALIASES, max_bytes=MAX_BYTES, catalog=CATALOG)

Result = Event | Rejection


def legacy_parse(p: EventParser, value: bytes | None, kafka_ts: int) -> Result:
    """The 0.2.0 ``parse`` (orjson, then the checks), the oracle for every verdict."""
    if not value:
        return Rejection(RejectReason.invalid_json, "record has no value")
    if len(value) > MAX_BYTES:
        return Rejection(RejectReason.too_large, f"value has {len(value)} bytes (max {MAX_BYTES})")
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as uexc:
            return Rejection(
                RejectReason.invalid_utf8, f"value is not UTF-8: {uexc.reason} at byte {uexc.start}"
            )
        return Rejection(RejectReason.invalid_json, f"value is not JSON: {exc}")
    if type(obj) is not dict:
        return Rejection(
            RejectReason.not_object, f"value is a JSON {type(obj).__name__}, not an object"
        )
    ts = obj.get("ts")
    if ts is None and kafka_ts >= 0:
        ts = kafka_ts
    return p.build(**{k: obj.get(k) for k in FIELDS if k != "ts"}, ts=ts, now_ms=NOW)


# --- the generator ------------------------------------------------------------------------

TYPE_SPELLINGS = [
    *DEFAULT_WEIGHTS,
    *DEFAULT_ALIASES,
    "PV",
    "Browse",
    " fav ",
    "AddToCart",
    "\tbuy\n",
    "teleport",
    "",
    " ",
    "brows",
    "x" * 60,
    "ß",
]
BIG = [2**63 - 1, 2**63, 2**64 - 1, 2**64, 2**100, -(2**63), -(2**63) - 1, -(2**100)]
HOSTILE_SCALARS = [
    b"null", b"true", b"false", b"0", b"-0", b"-1", b"1", b"1.0", b"-0.0", b"1.5", b"1e3",
    b"1E400", b"-1e999", b"1e-400", b"NaN", b"Infinity", b"-Infinity", b"nan", b"01", b"1.",
    b".5", b"+1", b"0x10", b"9" * 400, b'""', b'" "', b'"1700000000000"', b'"\\u0000"',
    b'"\\ud800"', b'"\\udc00x"', b'"\\ud83d\\ude00"', b'"\\u00e9"', b'"\\q"', b'"a\x01b"',
    b"[]", b"{}", b'["u1"]', b'{"a": 1}', b"[1,]", b'"\xff"', b'"\xed\xa0\x80"', b'"\xc0\xaf"',
    b'"\xef\xbb\xbf"', b"tru", b"nul", b'"unterminated',
    *(str(n).encode() for n in BIG),
]  # fmt: skip
BAD_UTF8 = [
    b"\xff",
    b"\xfe",
    b"\x80",
    b"\xc3\x28",
    b"\xe2\x82",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
]


def rand_id(rnd: random.Random) -> str:
    roll = rnd.random()
    if roll < 0.55:
        return f"{rnd.choice('uice')}{rnd.randrange(10 ** rnd.randint(1, 9))}"
    if roll < 0.65:
        return rnd.choice(["i1", "é", "i" * MAX_ID_CHARS])  # catalog hits
    if roll < 0.75:
        return rnd.choice('aé😀\\"/\x1f\u2028') * rnd.choice([1, 2, 127, 128])
    if roll < 0.85:
        return "".join(chr(rnd.randrange(0x20, 0x3000)) for _ in range(rnd.randint(1, 20)))
    return rnd.choice(["x" * 129, "é" * 129, "", "😀" * 129, "x" * 1000])


def valid_value(rnd: random.Random, field: str) -> bytes:
    if field in ("user_id", "item_id", "event_id", "category"):
        return orjson.dumps(
            rand_id(rnd) if rnd.random() < 0.1 else f"{field[0]}{rnd.randrange(999)}"
        )
    if field == "type":
        return orjson.dumps(rnd.choice(TYPE_SPELLINGS) if rnd.random() < 0.3 else "pv")
    if field == "ts":
        return str(rnd.choice([0, 1, NOW, NOW + DAY, rnd.randrange(NOW + DAY)])).encode()
    if field == "dwell_ms":
        return str(rnd.choice([0, 1, 999, 10_000, 25_000, 10**9, rnd.randrange(10**6)])).encode()
    return str(rnd.choice([1, 2, 10, 11, 10**6])).encode()


def mutated_value(rnd: random.Random) -> bytes:
    roll = rnd.random()
    if roll < 0.6:
        return rnd.choice(HOSTILE_SCALARS)
    if roll < 0.8:
        return orjson.dumps(rand_id(rnd))
    if roll < 0.9:
        return str(
            rnd.choice([-1, -(10 ** rnd.randint(1, 30)), 10 ** rnd.randint(13, 40)])
        ).encode()
    depth = rnd.choice([1, 2, 50, 1022, 1023, 1024, 1025])
    return b"[" * depth + b"]" * depth


def record_fields(rnd: random.Random) -> list[tuple[bytes, bytes]]:
    """A valid record as (raw key, raw value) pairs, optional fields sometimes there."""
    pairs = [(b'"%s"' % f.encode(), valid_value(rnd, f)) for f in ("user_id", "item_id", "type")]
    if rnd.random() < 0.85:
        pairs.append((b'"ts"', valid_value(rnd, "ts")))
    for f in ("event_id", "category", "dwell_ms", "quantity"):
        roll = rnd.random()
        if roll < 0.2:
            pairs.append((b'"%s"' % f.encode(), valid_value(rnd, f)))
        elif roll < 0.25:
            pairs.append((b'"%s"' % f.encode(), b"null"))
    return pairs


def join(pairs: list[tuple[bytes, bytes]], sep: bytes = b",") -> bytes:
    return b"{" + sep.join(k + b":" + v for k, v in pairs) + b"}"


def near_valid(rnd: random.Random) -> bytes:
    pairs = record_fields(rnd)
    for _ in range(rnd.choice([1, 1, 1, 2, 3])):
        op = rnd.random()
        if op < 0.45 or not pairs:
            key = b'"%s"' % rnd.choice(FIELDS).encode()
            pairs = [(k, v) for k, v in pairs if k != key] + [(key, mutated_value(rnd))]
        elif op < 0.55:
            pairs.pop(rnd.randrange(len(pairs)))
        elif op < 0.7:
            extra = rnd.choice([b'"x"', b'"pad"', b'"\xff"', b'"user\\u005fid"', b'""'])
            value = mutated_value(rnd) if rnd.random() < 0.7 else b'{"a": [1, {"b": null}]}'
            pairs.insert(rnd.randrange(len(pairs) + 1), (extra, value))
        elif op < 0.8:
            k, _ = rnd.choice(pairs)  # duplicated key: the last one wins
            pairs.insert(rnd.randrange(len(pairs) + 1), (k, mutated_value(rnd)))
        elif op < 0.9:
            i = rnd.randrange(len(pairs))
            pairs[i] = (pairs[i][0].replace(b"_", b"\\u005f"), pairs[i][1])  # escaped key
        else:
            rnd.shuffle(pairs)
    return join(pairs, rnd.choice([b",", b", ", b" ,\n\t"]))


def hostile(rnd: random.Random) -> bytes | None:
    base = join(record_fields(rnd))
    roll = rnd.random()
    if roll < 0.03:
        wrap = rnd.choice(
            [(b"[", b"]"), (b'{"a":', b"}"), (b'{"user_id":', b"}"), (b'{"x":', b"}")]
        )
        n = rnd.choice([DEEP, 1023, 1024, 1025])
        tail = wrap[1] * n if rnd.random() < 0.5 else b""
        return wrap[0] * n + tail
    if roll < 0.05:
        n = rnd.choice([MAX_BYTES, MAX_BYTES + 1, MAX_BYTES + 1000])
        return base[:-1] + b',"pad":"' + b"x" * max(0, n - len(base) - 9) + b'"}'
    if roll < 0.3:
        i = rnd.randrange(len(base) + 1)
        return base[:i] + rnd.choice(BAD_UTF8) + base[i:]
    if roll < 0.5:
        return base[: rnd.randrange(len(base))]
    if roll < 0.6:
        return rnd.randbytes(rnd.randint(0, 40))
    if roll < 0.75:
        return rnd.choice(
            [b"[1, 2]", b'"a string"', b"42", b"null", b"true", b"1.5", b"[]", b"[{}]", b'"{}"']
        )
    if roll < 0.85:
        return (
            rnd.choice([b"\xef\xbb\xbf", b" ", b"\n\t", b""])
            + base
            + rnd.choice([b"", b" ", b"\n", b"x", b"}", b"\x00", b",{}"])
        )
    if roll < 0.9:
        return base + base  # two objects
    return rnd.choice([b"", None, b" ", b"{}", b"{", b"}", b'{"":1}'])


def generate(rnd: random.Random, n: int) -> list[bytes | None]:
    kinds: list[Callable[[random.Random], bytes | None]] = [
        lambda r: join(record_fields(r)),
        near_valid,
        hostile,
    ]
    return [rnd.choices(kinds, weights=(35, 40, 25))[0](rnd) for _ in range(n)]


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=140),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
HYPOTHESIS_RECORDS = st.one_of(
    st.dictionaries(
        st.sampled_from(FIELDS) | st.text(max_size=8),
        JSON_VALUES | st.sampled_from(TYPE_SPELLINGS) | st.integers(0, NOW + 2 * DAY),
        max_size=10,
    ).map(lambda d: json.dumps(d, ensure_ascii=False).encode("utf-8", "surrogatepass")),
    st.binary(max_size=60),
)


# --- the checks ---------------------------------------------------------------------------


def assert_event_ok(e: Event) -> None:
    for text in (e.user_id, e.item_id, e.event_id):
        assert type(text) is str and 1 <= len(text) <= MAX_ID_CHARS, e
    assert e.category is None or (type(e.category) is str and 1 <= len(e.category) <= 128), e
    assert e.type in CANONICAL, e
    assert type(e.ts) is int and 0 <= e.ts <= NOW + DAY, e
    assert type(e.weight) is float and math.isfinite(e.weight), e
    assert e.dwell_ms is None or (type(e.dwell_ms) is int and e.dwell_ms >= 0), e
    assert e.quantity is None or (type(e.quantity) is int and e.quantity >= 1), e


def assert_rejection_ok(r: Rejection) -> None:
    assert r.reason in REASONS, r
    assert type(r.detail) is str and r.detail, r


def check_batch(values: list[bytes | None], stamps: list[int]) -> None:
    """All three verdicts agree on every record, and every verdict is well formed."""
    batch, rejected = PARSER.parse_batch(values, stamps, NOW)
    assert isinstance(batch, EventBatch)
    by_index: dict[int, Result] = {int(i): batch.event(row) for row, i in enumerate(batch.rows)}
    for i, r in rejected:
        assert i not in by_index, i
        by_index[i] = r
    assert sorted(by_index) == list(range(len(values)))
    assert batch.rows.tolist() == sorted(batch.rows.tolist())
    for i, (value, stamp) in enumerate(zip(values, stamps, strict=True)):
        single = PARSER.parse(value, timestamp_ms=None if stamp == -1 else stamp, now_ms=NOW)
        oracle = legacy_parse(PARSER, value, stamp)
        assert single == oracle, (value, stamp)
        columns = by_index[i]
        if isinstance(single, Event):
            assert_event_ok(single)
            assert isinstance(columns, Event), (value, columns)
            assert_event_ok(columns)
            assert (single.dwell_ms, single.quantity) != (None, None) or single == columns
            assert columns == Event(*[getattr(single, f) for f in Event.__slots__[:7]])
        else:
            assert isinstance(single, Rejection), (value, single)
            assert_rejection_ok(single)
            assert columns == single, (value, columns, single)


def test_fuzz_parse_and_parse_batch_agree_with_the_checks() -> None:
    checked = {"records": 0, "events": 0}
    reasons: set[str] = set()
    started = time.perf_counter()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(seed=st.integers(0, 2**64 - 1), extra=st.lists(HYPOTHESIS_RECORDS, max_size=20))
    def run(seed: int, extra: list[bytes]) -> None:
        rnd = random.Random(seed)
        values = generate(rnd, BATCH) + list(extra)
        rnd.shuffle(values)
        stamps = [rnd.choice(KAFKA_TS) for _ in values]
        check_batch(values, stamps)
        checked["records"] += len(values)
        batch, rejected = PARSER.parse_batch(values, stamps, NOW)
        checked["events"] += len(batch)
        reasons.update(r.reason for _, r in rejected)

    run()
    elapsed = time.perf_counter() - started
    print(f"fuzz: {checked['records']} records ({checked['events']} events) in {elapsed:.1f} s")
    assert checked["records"] >= MIN_RECORDS
    assert reasons == REASONS  # every reason was produced, so each path was exercised
    assert 0.2 < checked["events"] / checked["records"] < 0.8


def test_fuzz_checks_the_oracle_itself() -> None:
    """A sanity check of the harness: it notices a parser that answers differently."""
    value = b'{"user_id": "u", "item_id": "i", "type": "pv", "ts": 5, "x": 1e999}'
    assert legacy_parse(PARSER, value, -1) == PARSER.parse(value, now_ms=NOW)
    assert isinstance(PARSER.parse(value, now_ms=NOW), Rejection)


# --- deep nesting: neither path may recurse its way out of the C stack --------------------

DEEP_VALUES = [
    b"[" * DEEP,
    b"[" * DEEP + b"]" * DEEP,
    b'{"a":' * DEEP + b"1" + b"}" * DEEP,
    b'{"user_id":' + b"[" * DEEP + b"]" * DEEP + b"}",
    b'{"user_id":"u","item_id":"i","type":"pv","ts":1,"x":' + b"[" * DEEP + b"]" * DEEP + b"}",
    b'{"user_id":"u","item_id":"i","type":"pv","ts":1,"x":' + b"[" * 1022 + b"]" * 1022 + b"}",
    b'{"user_id":"u","item_id":"i","type":"pv","ts":1,"x":' + b"[" * 1023 + b"]" * 1023 + b"}",
]


@pytest.mark.parametrize("value", DEEP_VALUES, ids=range(len(DEEP_VALUES)))
def test_deep_nesting_in_process(value: bytes) -> None:
    single = PARSER.parse(value, now_ms=NOW)
    assert single == legacy_parse(PARSER, value, -1)
    batch, rejected = PARSER.parse_batch([value, value], [-1, -1], NOW)
    if isinstance(single, Rejection):
        assert rejected == [(0, single), (1, single)]
    else:
        assert batch.event(1) == single


def test_deep_nesting_cannot_crash_even_with_a_huge_recursion_limit() -> None:
    """A raised recursion limit is the case where a recursive decoder overflows the C stack
    (a segfault, not an exception): run it in a child process, so a crash fails the test."""
    code = f"""
import sys
sys.setrecursionlimit(10**7)
from stream.config import DEFAULT_ALIASES, DEFAULT_WEIGHTS
from stream.core.events import EventParser
p = EventParser(DEFAULT_WEIGHTS, DEFAULT_ALIASES, max_bytes=1 << 24)
n = 2_000_000
for value in (b"[" * n, b"[" * n + b"]" * n, b'{{"a":' * n, b'{{"user_id":' + b"[" * n,
              b'{{"user_id":"u","item_id":"i","type":"pv","x":' + b"[" * n + b"]" * n + b"}}"):
    one = p.parse(value, now_ms={NOW})
    batch, rejected = p.parse_batch([value], [-1], {NOW})
    assert [r for _, r in rejected] == [one], (one, rejected)
    print(one.reason)
"""
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.split() == ["invalid_json"] * 5
