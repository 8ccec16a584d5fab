"""Event parsing and validation: every rejection reason, weights, aliases, derived ids."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from stream.config import DEFAULT_ALIASES, DEFAULT_WEIGHTS, Settings, event_parser
from stream.core.events import PARSE_REASONS, EventParser, derive_event_id, event_weight
from stream.core.types import Event, Rejection, RejectReason

NOW = 1_700_000_000_000
DAY = 86_400_000


@pytest.fixture
def parser() -> EventParser:
    return EventParser(DEFAULT_WEIGHTS, DEFAULT_ALIASES, catalog={"cat-item": "c-from-catalog"})


def raw(**fields: object) -> bytes:
    base: dict[str, object] = {"user_id": "u1", "item_id": "i1", "type": "browse", "ts": NOW}
    base.update(fields)
    return orjson.dumps({k: v for k, v in base.items() if v is not ...})


def parse(parser: EventParser, value: bytes | None, **kw: object) -> Event | Rejection:
    kw.setdefault("now_ms", NOW)
    return parser.parse(value, **kw)  # type: ignore[arg-type]


def reason(result: Event | Rejection) -> str:
    assert isinstance(result, Rejection), result
    assert result.reason in set(RejectReason)
    assert result.detail
    return result.reason


def test_valid_minimal_event(parser: EventParser) -> None:
    ev = parse(parser, raw())
    assert isinstance(ev, Event)
    assert (ev.user_id, ev.item_id, ev.type, ev.ts, ev.weight) == ("u1", "i1", "browse", NOW, 1.0)
    assert ev.category is None and ev.dwell_ms is None and ev.quantity is None
    assert ev.event_id == derive_event_id("u1", "i1", "browse", NOW)


def test_all_fields_and_unknown_extras(parser: EventParser) -> None:
    ev = parse(
        parser,
        raw(type="purchase", event_id="e1", category="c1", quantity=3, extra={"x": 1}),
    )
    assert isinstance(ev, Event)
    assert (ev.event_id, ev.category, ev.quantity, ev.weight) == ("e1", "c1", 3, 24.0)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"\xff\xfe{}", "invalid_utf8"),
        (b'{"user_id": "\xc3\x28"}', "invalid_utf8"),
        (b"{not json", "invalid_json"),
        (b"", "invalid_json"),
        (None, "invalid_json"),
        (b"[1, 2]", "not_object"),
        (b'"a string"', "not_object"),
        (b"42", "not_object"),
    ],
)
def test_undecodable_values(parser: EventParser, value: bytes | None, expected: str) -> None:
    assert reason(parse(parser, value)) == expected


@pytest.mark.parametrize("name", ["user_id", "item_id", "type"])
def test_missing_required_field(parser: EventParser, name: str) -> None:
    assert reason(parse(parser, raw(**{name: ...}))) == "missing_field"
    assert reason(parse(parser, raw(**{name: None}))) == "missing_field"


def test_ts_absent_uses_kafka_timestamp_else_rejects(parser: EventParser) -> None:
    ev = parse(parser, raw(ts=...), timestamp_ms=NOW - 5)
    assert isinstance(ev, Event) and ev.ts == NOW - 5
    assert reason(parse(parser, raw(ts=...))) == "missing_field"
    assert reason(parse(parser, raw(ts=...), timestamp_ms=-1)) == "missing_field"


def test_ts_present_wins_over_kafka_timestamp(parser: EventParser) -> None:
    ev = parse(parser, raw(ts=NOW - 100), timestamp_ms=NOW - 5)
    assert isinstance(ev, Event) and ev.ts == NOW - 100


@pytest.mark.parametrize(
    "fields",
    [
        {"user_id": 17},
        {"item_id": ["x"]},
        {"type": 3},
        {"ts": "1700000000000"},
        {"ts": 1.7e12},
        {"ts": True},
        {"event_id": 5},
        {"category": 12},
        {"dwell_ms": 1.5},
        {"dwell_ms": False},
        {"quantity": "2"},
    ],
)
def test_wrong_types(parser: EventParser, fields: dict[str, object]) -> None:
    assert reason(parse(parser, raw(**fields))) == "wrong_type"


@pytest.mark.parametrize("name", ["user_id", "item_id", "event_id", "category"])
def test_id_length_limits(parser: EventParser, name: str) -> None:
    assert reason(parse(parser, raw(**{name: ""}))) == "empty_id"
    assert reason(parse(parser, raw(**{name: "x" * 129}))) == "id_too_long"
    assert isinstance(parse(parser, raw(**{name: "é" * 128})), Event)


def test_unknown_type(parser: EventParser) -> None:
    assert reason(parse(parser, raw(type="teleport"))) == "unknown_type"
    assert reason(parse(parser, raw(type=""))) == "unknown_type"


def test_too_large(parser: EventParser) -> None:
    small = EventParser(DEFAULT_WEIGHTS, DEFAULT_ALIASES, max_bytes=300)
    assert isinstance(parse(small, raw()), Event)
    assert reason(parse(small, raw(pad="x" * 300))) == "too_large"


def test_future_ts(parser: EventParser) -> None:
    assert isinstance(parse(parser, raw(ts=NOW + DAY)), Event)
    assert reason(parse(parser, raw(ts=NOW + DAY + 1))) == "future_ts"
    strict = EventParser(DEFAULT_WEIGHTS, DEFAULT_ALIASES, max_future_ms=0)
    assert reason(parse(strict, raw(ts=NOW + 1))) == "future_ts"


def test_future_ts_defaults_to_wall_clock(parser: EventParser) -> None:
    assert reason(parser.parse(raw(ts=4_000_000_000_000))) == "future_ts"


@pytest.mark.parametrize(
    "fields", [{"dwell_ms": -1}, {"quantity": 0}, {"quantity": -3}, {"ts": -1}]
)
def test_negative_values(parser: EventParser, fields: dict[str, object]) -> None:
    assert reason(parse(parser, raw(**fields))) == "negative_value"


def test_every_reason_is_exercised() -> None:
    # the parametrised tests above cover each code; this guards the list against drift
    assert set(PARSE_REASONS) == {
        "invalid_utf8",
        "invalid_json",
        "not_object",
        "missing_field",
        "wrong_type",
        "id_too_long",
        "empty_id",
        "unknown_type",
        "too_large",
        "future_ts",
        "negative_value",
    }


@pytest.mark.parametrize(
    ("spelling", "canonical", "weight"),
    [
        ("pv", "browse", 1.0),
        ("VIEW", "browse", 1.0),
        ("Impression_Click", "browse", 1.0),
        ("click", "click", 2.0),
        (" fav ", "favorite", 3.0),
        ("Like", "favorite", 3.0),
        ("cart", "add_to_cart", 4.0),
        ("AddToCart", "add_to_cart", 4.0),
        ("buy", "purchase", 8.0),
        ("ORDER", "purchase", 8.0),
        ("transaction", "purchase", 8.0),
    ],
)
def test_aliases_case_insensitive(
    parser: EventParser, spelling: str, canonical: str, weight: float
) -> None:
    ev = parse(parser, raw(type=spelling))
    assert isinstance(ev, Event)
    assert (ev.type, ev.weight) == (canonical, weight)


def test_new_types_and_negative_weights() -> None:
    p = EventParser({"browse": 1.0, "dislike": -2.5, "Share": 5.0}, {"thumbs_down": "dislike"})
    ev = parse(p, raw(type="thumbs_down", quantity=2))
    assert isinstance(ev, Event) and (ev.type, ev.weight) == ("dislike", -5.0)
    ev = parse(p, raw(type="share"))
    assert isinstance(ev, Event) and (ev.type, ev.weight) == ("share", 5.0)
    with pytest.raises(ValueError, match="without a weight"):
        EventParser({"browse": 1.0}, {"x": "nothing"})


@pytest.mark.parametrize(
    ("dwell", "factor"),
    [(0, 0.1), (500, 0.1), (1000, 0.1), (10_000, 1.0), (25_000, 2.5), (60_000, 6.0), (10**9, 6.0)],
)
def test_dwell_factor(parser: EventParser, dwell: int, factor: float) -> None:
    ev = parse(parser, raw(type="click", dwell_ms=dwell))
    assert isinstance(ev, Event)
    assert ev.weight == pytest.approx(2.0 * factor)
    assert ev.dwell_ms == dwell


@pytest.mark.parametrize(("qty", "factor"), [(1, 1), (2, 2), (10, 10), (11, 10), (10**6, 10)])
def test_quantity_factor(parser: EventParser, qty: int, factor: int) -> None:
    ev = parse(parser, raw(type="add_to_cart", quantity=qty))
    assert isinstance(ev, Event) and ev.weight == 4.0 * factor


def test_dwell_and_quantity_combine() -> None:
    assert event_weight(8.0, 20_000, 3) == pytest.approx(8.0 * 2.0 * 3)
    assert event_weight(8.0, None, None) == 8.0


def test_derived_event_id_is_deterministic_and_alias_blind(parser: EventParser) -> None:
    a = parse(parser, raw(type="pv"))
    b = parse(parser, raw(type="Browse"))
    c = parse(parser, raw(type="pv", ts=NOW - 1))
    assert isinstance(a, Event) and isinstance(b, Event) and isinstance(c, Event)
    assert a.event_id == b.event_id != c.event_id
    assert derive_event_id("u", "i", "browse", 1) == derive_event_id("u", "i", "browse", 1)
    assert derive_event_id("a,b", "c", "t", 1) != derive_event_id("a", "b,c", "t", 1)
    assert len(a.event_id) <= 128


def test_category_from_catalog_only_when_absent(parser: EventParser) -> None:
    ev = parse(parser, raw(item_id="cat-item"))
    assert isinstance(ev, Event) and ev.category == "c-from-catalog"
    ev = parse(parser, raw(item_id="cat-item", category="mine"))
    assert isinstance(ev, Event) and ev.category == "mine"
    ev = parse(parser, raw(item_id="other"))
    assert isinstance(ev, Event) and ev.category is None


def test_key_is_not_checked(parser: EventParser) -> None:
    assert isinstance(parse(parser, raw(), key=b"someone-else"), Event)


def test_build_applies_same_rules(parser: EventParser) -> None:
    ev = parser.build(user_id="u", item_id="i", type="cart", ts=5, quantity=2, now_ms=NOW)
    assert isinstance(ev, Event) and (ev.type, ev.weight) == ("add_to_cart", 8.0)
    bad = parser.build(user_id="u", item_id="i", type="cart", ts=None, now_ms=NOW)
    assert reason(bad) == "missing_field"


def test_from_settings() -> None:
    s = Settings(event_weights={"browse": 1.0, "boost": 9.0}, event_aliases={}, max_event_bytes=256)
    p = event_parser(s)
    ev = parse(p, raw(type="BOOST"))
    assert isinstance(ev, Event) and ev.weight == 9.0
    assert reason(parse(p, raw(pad="x" * 300))) == "too_large"


# --- parse_batch: the typed, columnar path must be parse, record by record ---------------------

BATCH_PARSER_BYTES = 400


def batch_parser() -> EventParser:
    return EventParser(
        DEFAULT_WEIGHTS,
        DEFAULT_ALIASES,
        max_bytes=BATCH_PARSER_BYTES,
        catalog={"cat-item": "c-from-catalog"},
    )


# (value, Kafka timestamp; -1 = none, expected reason or None for an event)
MIXED: list[tuple[bytes | None, int, str | None]] = [
    (raw(), -1, None),
    (b"\xff\xfe{}", -1, "invalid_utf8"),
    (b'{"user_id": "\xc3\x28", "item_id": "i1", "type": "browse", "ts": 1}', -1, "invalid_utf8"),
    (b'{"user_id": "u1", "item_id": "i1", "type": "browse", "ts": 1, "x": "\xff"}', -1,
     "invalid_utf8"),  # in a field the schema does not know
    (b"{not json", -1, "invalid_json"),
    (b"", -1, "invalid_json"),
    (None, -1, "invalid_json"),
    (raw()[:-3], -1, "invalid_json"),
    # the schema would stop at the empty user_id; the value is not JSON, which comes first
    (b'{"user_id": "", "item_id": "i1", "type": "browse", "ts": 1, "x": 1e999}', -1,
     "invalid_json"),
    (b'{"user_id": "u1", "x": NaN}', -1, "invalid_json"),
    (b"[1, 2]", -1, "not_object"),
    (b"null", -1, "not_object"),
    (raw(item_id=...), -1, "missing_field"),
    (raw(type=None), -1, "missing_field"),
    (raw(ts=...), -1, "missing_field"),
    (raw(ts=...), NOW - 5, None),
    (raw(ts=None), NOW - 7, None),
    (raw(ts=NOW - 9), NOW - 5, None),
    # two faults: the contract reports the first in field order, not in document order
    (b'{"item_id": 5, "type": "browse", "ts": 1, "user_id": null}', -1, "missing_field"),
    (b'{"ts": "x", "type": "teleport", "user_id": "u", "item_id": "i"}', -1, "unknown_type"),
    (raw(ts=1.7e12), -1, "wrong_type"),
    (raw(ts=True), -1, "wrong_type"),
    (raw(dwell_ms=1.0), -1, "wrong_type"),
    (raw(user_id=["x"]), -1, "wrong_type"),
    (b'{"user_id": "u1", "item_id": "i1", "type": "browse", "ts": 18446744073709551616}', -1,
     "wrong_type"),  # orjson makes a float of an integer past 64 bits
    (raw(user_id="x" * 129), -1, "id_too_long"),
    (raw(event_id="é" * 129), -1, "id_too_long"),
    (raw(category=""), -1, "empty_id"),
    (raw(type="teleport"), -1, "unknown_type"),
    (raw(type=""), -1, "unknown_type"),
    (raw(pad="x" * BATCH_PARSER_BYTES), -1, "too_large"),
    (raw(ts=NOW + DAY + 1), -1, "future_ts"),
    (raw(ts=...), NOW + DAY + 1, "future_ts"),
    (b'{"user_id": "u1", "item_id": "i1", "type": "browse", "ts": 9223372036854775808}', -1,
     "future_ts"),  # past int64: the checks, not the schema, decide it
    (raw(quantity=0), -1, "negative_value"),
    (raw(dwell_ms=-1), -1, "negative_value"),
    (raw(ts=-1), -1, "negative_value"),
    (raw(type="PV", item_id="cat-item"), -1, None),
    (raw(type=" Fav ", item_id="cat-item", category="mine"), -1, None),
    (raw(type="cart", quantity=3, dwell_ms=20_000, event_id="e7"), -1, None),
    (raw(type="click", dwell_ms=9_223_372_036_854_775_808), -1, None),
    (raw(extra={"nested": [1, [2, {"x": None}]]}, event_id=None, category=None), -1, None),
    (b'{"user\\u005fid": "u2", "item_id": "i2", "type": "buy", "ts": 3}', -1, None),
    (b'{"user_id": 5, "user_id": "u3", "item_id": "i3", "type": "fav", "ts": 4}', -1, None),
    (b'{"user_id": "u4", "user_id": null, "item_id": "i3", "type": "fav", "ts": 4}', -1,
     "missing_field"),
]  # fmt: skip


def test_parse_batch_agrees_with_parse_on_every_reason() -> None:
    p = batch_parser()
    values = [v for v, _, _ in MIXED]
    stamps = [t for _, t, _ in MIXED]
    batch, rejected = p.parse_batch(values, stamps, NOW)
    singles = [parse(p, v, timestamp_ms=None if t < 0 else t) for v, t, _ in MIXED]
    assert [i for i, r in enumerate(singles) if isinstance(r, Event)] == batch.rows.tolist()
    assert [(i, r) for i, r in enumerate(singles) if isinstance(r, Rejection)] == rejected
    for row, i in enumerate(batch.rows.tolist()):
        ev = singles[i]
        assert isinstance(ev, Event)
        assert batch.event(row) == Event(
            ev.user_id, ev.item_id, ev.type, ev.ts, ev.event_id, ev.category, ev.weight
        )
    got = [r.reason if isinstance(r, Rejection) else None for r in singles]
    assert got == [want for _, _, want in MIXED]
    assert {r.reason for _, r in rejected} == set(PARSE_REASONS)
    assert all(r.detail for _, r in rejected)


def test_parse_batch_details_are_the_checks_details() -> None:
    p = batch_parser()
    values = [
        raw(user_id="x" * 129),
        raw(quantity=0),
        raw(ts=1.5),
        b"{not json",
        b"\xff",
        b"[1]",
        raw(type="x" * 50),
    ]
    _, rejected = p.parse_batch(values, [-1] * len(values), NOW)
    try:
        orjson.loads(b"{not json")
    except orjson.JSONDecodeError as exc:
        not_json = f"value is not JSON: {exc}"
    assert [(r.reason, r.detail) for _, r in rejected] == [
        ("id_too_long", "user_id has 129 characters (max 128)"),
        ("negative_value", "quantity must be >= 1, got 0"),
        ("wrong_type", "ts must be an integer, got float"),
        ("invalid_json", not_json),
        ("invalid_utf8", "value is not UTF-8: invalid start byte at byte 0"),
        ("not_object", "value is a JSON list, not an object"),
        ("unknown_type", f"unknown event type {'x' * 40 + '...'!r}"),
    ]


def test_parse_batch_columns() -> None:
    p = batch_parser()
    values = [b"{}", raw(type="view"), raw(type="purchase", quantity=2, ts=NOW - 1), raw(ts=...)]
    batch, rejected = p.parse_batch(values, [1, 2, 3, 4], NOW)
    assert batch.rows.dtype == np.int64 and batch.rows.tolist() == [1, 2, 3]
    assert batch.ts.dtype == np.int64 and batch.ts.tolist() == [NOW, NOW - 1, 4]
    assert batch.weight.dtype == np.float64 and batch.weight.tolist() == [1.0, 16.0, 1.0]
    assert batch.type == ["browse", "purchase", "browse"]
    assert batch.event_id == [
        derive_event_id("u1", "i1", "browse", NOW),
        derive_event_id("u1", "i1", "purchase", NOW - 1),
        derive_event_id("u1", "i1", "browse", 4),
    ]
    assert [(i, r.reason) for i, r in rejected] == [(0, "missing_field")]
    empty, none = p.parse_batch([], [], NOW)
    assert len(empty) == 0 and empty.rows.dtype == np.int64 and empty.ts.dtype == np.int64
    assert empty.weight.dtype == np.float64 and none == []


def test_parse_batch_timestamps_as_numpy_and_length_check() -> None:
    p = batch_parser()
    batch, _ = p.parse_batch([raw(ts=...)], np.array([NOW - 3], np.int64), NOW)
    assert batch.ts.tolist() == [NOW - 3]
    assert batch.event_id == [derive_event_id("u1", "i1", "browse", NOW - 3)]
    with pytest.raises(ValueError, match="timestamps"):
        p.parse_batch([raw()], [], NOW)


def test_derived_ids_identical_across_paths() -> None:
    p = batch_parser()
    values = [raw(type=t, ts=NOW - k) for k, t in enumerate(["pv", "Browse", "buy", "CART"])]
    batch, _ = p.parse_batch(values, [-1] * 4, NOW)
    singles = [parse(p, v) for v in values]
    expected = [
        derive_event_id("u1", "i1", t, NOW - k)
        for k, t in enumerate(["browse", "browse", "purchase", "add_to_cart"])
    ]
    assert batch.event_id == expected
    assert [e.event_id for e in singles if isinstance(e, Event)] == expected
    # the derivation itself is frozen: a change would re-apply every replayed event
    assert derive_event_id("u1", "i1", "browse", 1) == "3c2b2b6751d7cf7fe0b8323b"
