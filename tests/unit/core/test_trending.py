"""Trending per category: exact under any order, bounded, replay dedup, encoding."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core.codec import TREND_FORMAT, decode_trend, encode_trend
from stream.core.errors import TrendFormatError
from stream.core.interest import LONG, SHORT
from stream.core.trending import (
    GlobalTrend,
    TrendConfig,
    fold_trend,
    new_trend,
    snapshot,
    top_items,
    trend_strength,
)
from stream.core.types import Event

T0 = 1_700_000_000_000
CFG = TrendConfig(half_life_short_ms=60_000, half_life_long_ms=3_600_000, max_items=1000)


def ev(item: str, ts: int, w: float = 1.0, cat: str | None = "c", n: int = 0) -> Event:
    return Event(f"u{n}", item, "browse", ts, f"e{item}-{ts}-{n}", cat, w)


def formula(events: list[Event], item: str, t: int, horizon: int) -> float:
    hl = (CFG.half_life_short_ms, CFG.half_life_long_ms)[horizon]
    return sum(e.weight * 2 ** (-(t - e.ts) / hl) for e in events if e.item_id == item)


events_st = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c", "d"]),
        st.integers(0, 7_200_000),
        st.sampled_from([1.0, 2.0, 8.0]),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(events_st, st.randoms(use_true_random=False), st.integers(1, 5))
def test_trend_equals_the_formula_whatever_the_order_and_batching(
    raw: list[tuple[str, int, float]], rnd: random.Random, batch: int
) -> None:
    events = [ev(i, T0 + dt, w, n=n) for n, (i, dt, w) in enumerate(raw)]
    shuffled = events[:]
    rnd.shuffle(shuffled)
    trend = new_trend("c", CFG)
    for a in range(0, len(shuffled), batch):
        fold_trend(trend, shuffled[a : a + batch], CFG)
    t = max(e.ts for e in events) + 5_000
    for item in {e.item_id for e in events}:
        for h in (SHORT, LONG):
            want = formula(events, item, t, h)
            got = trend_strength(trend, item, h, t)
            assert got == pytest.approx(want, rel=1e-4, abs=1e-9)
            assert trend_strength(snapshot(trend), item, h, t) == pytest.approx(got, rel=1e-6)


def test_bounded_to_the_strongest_items_independent_of_order() -> None:
    cfg = TrendConfig(60_000, 3_600_000, max_items=3)
    events = [ev(f"i{k}", T0 + k, w=float(k + 1)) for k in range(10)]
    a, b = new_trend("c", cfg), new_trend("c", cfg)
    fold_trend(a, events, cfg)
    for e in reversed(events):
        fold_trend(b, [e], cfg)
    assert set(a.items) == set(b.items) == {"i7", "i8", "i9"}
    assert [i for i, _ in top_items(a, LONG, 2)] == ["i9", "i8"]
    assert len(snapshot(a, 2)["items"]) == 2


def test_other_categories_are_ignored_and_replays_dropped_by_source_offset() -> None:
    trend = new_trend("c", CFG)
    batch = [ev("x", T0), ev("y", T0, cat="other"), ev("z", T0 + 1)]
    assert fold_trend(trend, batch, CFG, positions=[(0, 10), (0, 11), (1, 5)]) == 2
    assert set(trend.items) == {"x", "z"}
    again = fold_trend(trend, [ev("x", T0), ev("w", T0 + 2)], CFG, positions=[(0, 10), (0, 12)])
    assert again == 1  # x at (0, 10) was a replay: counted once
    assert trend_strength(trend, "x", SHORT) == pytest.approx(2 ** (-2 / 60_000), rel=1e-6)
    assert trend.offsets == {0: 12, 1: 5}


def test_encode_round_trip_is_bit_exact_and_versioned() -> None:
    trend = new_trend("cat é", CFG)
    fold_trend(trend, [ev("a", T0, 2.0), ev("b", T0 - 90_000, 8.0)], CFG, [(3, 7), (4, 1)])
    data = encode_trend(trend)
    assert data[0] == TREND_FORMAT
    assert decode_trend(data) == trend
    assert decode_trend(encode_trend(new_trend("e"))) == new_trend("e")
    with pytest.raises(TrendFormatError):
        decode_trend(bytes([TREND_FORMAT + 1]) + data[1:])
    with pytest.raises(TrendFormatError):
        decode_trend(data[:-3])


def test_snapshot_is_json_able_and_reads_like_the_trend() -> None:
    import json

    trend = new_trend("c", CFG)
    fold_trend(trend, [ev("a", T0, 2.0), ev("b", T0 + 30_000, 1.0)], CFG)
    snap = json.loads(json.dumps(snapshot(trend)))
    t = T0 + 120_000
    assert top_items(snap, SHORT, 5, t) == top_items(trend, SHORT, 5, t)
    assert snap["category"] == "c" and snap["t_ref"] == T0 + 30_000


def test_global_trend_keeps_categories_of_its_bounded_items() -> None:
    g = GlobalTrend(TrendConfig(60_000, 3_600_000, max_items=2))
    g.fold([ev("a", T0, 1.0, cat="c1"), ev("b", T0, 5.0, cat="c2"), ev("c", T0, 3.0, cat=None)])
    assert g.top(5) == [("b", "c2", 5.0), ("c", None, 3.0)]
    assert g.item_categories["b"] == "c2" and "c" not in g.item_categories


def test_a_format_1_trend_written_by_0_2_reads_as_it_was() -> None:
    fixture = json.loads((Path(__file__).parent / "data" / "trend_format1.json").read_text())
    trend = decode_trend(bytes.fromhex(fixture["hex"]))
    want = fixture["trend"]
    assert (trend.category, trend.t_ref, list(trend.half_lives)) == (
        want["category"],
        want["t_ref"],
        want["half_lives"],
    )
    assert dict(trend.items) == want["items"]
    assert trend.offsets == {int(k): v for k, v in want["offsets"].items()}
    again = encode_trend(trend)
    assert again[0] == TREND_FORMAT and decode_trend(again) == trend
