"""Event parsing and validation: every rejection reason, weights, aliases, derived ids."""

from __future__ import annotations

import orjson
import pytest

from stream.config import DEFAULT_ALIASES, DEFAULT_WEIGHTS, Settings, event_parser
from stream.core.events import EventParser, derive_event_id, event_weight
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
    assert set(RejectReason) == {
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
