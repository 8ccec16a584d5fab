"""Interest state: exact decay in any order, dedup, bounds, rebase, expiry, serialisation."""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.core.codec import FORMAT_VERSION, decode, encode
from stream.core.dedup import BEYOND, FRESH, DedupConfig, SeenIds
from stream.core.errors import StateFormatError
from stream.core.interest import (
    LONG,
    SHORT,
    InterestConfig,
    category_strengths,
    fold,
    interest_vector,
    is_expired,
    item_strengths,
    new_state,
    rebase,
    top_categories,
)
from stream.core.types import Event

HS, HL = 1_000, 20_000
CFG = InterestConfig(HS, HL, max_categories=64, max_items=100)
DIM = 8


class DictVectors:
    """A small real ItemVectors: a dict of random embeddings (some items unknown)."""

    def __init__(self, version: str, n_items: int, seed: int, dim: int = DIM) -> None:
        rng = np.random.default_rng(seed)
        self.version = version
        self.dim = dim
        self.table = {
            f"i{k}": rng.standard_normal(dim).astype(np.float32) for k in range(n_items) if k % 4
        }

    def get(self, item_id: str) -> np.ndarray | None:
        return self.table.get(item_id)


VEC = DictVectors("1", 12, seed=1)


def ev(n: int, item: int, cat: int | None, ts: int, w: float = 1.0, type_: str = "browse") -> Event:
    return Event("u", f"i{item}", type_, ts, f"e{n}", None if cat is None else f"c{cat}", w)


# -- the independent reference: the contract formula, summed directly ------------------


def terms(events: Sequence[Event], key: str, h: int, t: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for e in events:
        k = getattr(e, key)
        if k is not None:
            out.setdefault(k, []).append(e.weight * 2.0 ** (-(t - e.ts) / h))
    return out


def assert_close(got: dict[str, float], want: dict[str, list[float]]) -> None:
    """Relative error < 1e-4 of the sum of magnitudes (weights may be negative and cancel)."""
    assert set(got) == set(want)
    for k, ts in want.items():
        scale = sum(abs(x) for x in ts)
        assert abs(got[k] - sum(ts)) <= 1e-4 * scale + 1e-30, (k, got[k], sum(ts))


def ref_vector(events: Sequence[Event], h: int, t: int, vec: DictVectors) -> np.ndarray:
    acc = np.zeros(vec.dim)
    scale = 0.0
    for e in events:
        x = vec.get(e.item_id)
        if x is not None:
            c = e.weight * 2.0 ** (-(t - e.ts) / h)
            acc += c * x.astype(np.float64)
            scale += abs(c) * float(np.linalg.norm(x))
    return acc, scale


def check_formula(state, events: Sequence[Event], vec: DictVectors | None = VEC) -> None:
    t = max(e.ts for e in events)
    assert state.t_ref == t
    for horizon, h in ((SHORT, HS), (LONG, HL)):
        assert_close(category_strengths(state, horizon), terms(events, "category", h, t))
        assert_close(item_strengths(state, horizon), terms(events, "item_id", h, t))
        if vec is not None:
            want, scale = ref_vector(events, h, t, vec)
            got = interest_vector(state, horizon)
            assert got is not None and got.dtype == np.float32
            assert np.linalg.norm(got - want) <= 1e-4 * scale + 1e-30


# -- hypothesis strategies -------------------------------------------------------------

event_specs = st.lists(
    st.tuples(
        st.integers(0, 11),  # item
        st.one_of(st.none(), st.integers(0, 4)),  # category
        st.integers(0, 60_000),  # ts: many short half-lives, a few long ones
        st.one_of(st.floats(0.1, 50.0), st.floats(-20.0, -0.1)),  # weight
        st.sampled_from(["browse", "purchase", "click"]),
    ),
    min_size=1,
    max_size=40,
)


def make_events(specs: list[tuple]) -> list[Event]:
    return [ev(n, item, cat, ts, w, t) for n, (item, cat, ts, w, t) in enumerate(specs)]


def fold_batches(events: Sequence[Event], cuts: Sequence[int], vec=VEC, cfg=CFG, seen=None):
    state = new_state("u")
    bounds = sorted({0, len(events), *(c % (len(events) + 1) for c in cuts)})
    for a, b in itertools.pairwise(bounds):
        fold(state, events[a:b], cfg, vectors=vec, seen=seen)
    return state


HYP = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@HYP
@given(event_specs, st.randoms(use_true_random=False))
def test_any_order_equals_formula(specs, rnd) -> None:
    events = make_events(specs)
    shuffled = list(events)
    rnd.shuffle(shuffled)
    state = new_state("u")
    fold(state, shuffled, CFG, vectors=VEC)
    check_formula(state, events)


@HYP
@given(event_specs, st.lists(st.integers(0, 40), max_size=6), st.randoms(use_true_random=False))
def test_any_batching_equals_formula(specs, cuts, rnd) -> None:
    events = make_events(specs)
    rnd.shuffle(events)
    state = fold_batches(events, cuts)
    check_formula(state, events)
    assert state.events_applied == len(events)


@HYP
@given(event_specs, st.lists(st.integers(0, 40), max_size=6))
def test_refolding_changes_nothing(specs, cuts) -> None:
    events = make_events(specs)
    seen = SeenIds(DedupConfig(retention_ms=10**15))
    state = fold_batches(events, cuts, seen=seen)
    before = encode(state)
    result = fold(state, events, CFG, vectors=VEC, seen=seen)
    assert (result.applied, result.duplicates) == (0, len(events))
    assert encode(state) == before


@HYP
@given(event_specs, st.lists(st.integers(0, 40), max_size=4), st.booleans())
def test_encode_decode_round_trip(specs, cuts, with_vectors) -> None:
    events = make_events(specs)
    state = fold_batches(events, cuts, vec=VEC if with_vectors else None)
    blob = encode(state)
    back = decode(blob)
    assert back == state
    assert encode(back) == blob
    assert back.items == state.items  # bit-for-bit: float32 values compare exactly


def test_strengths_readable_later_not_earlier() -> None:
    state = new_state("u")
    fold(state, [ev(0, 1, 0, 10_000, 2.0)], CFG)
    assert category_strengths(state, SHORT, 10_000 + HS)["c0"] == pytest.approx(1.0)
    assert category_strengths(state, LONG, 10_000 + 2 * HL)["c0"] == pytest.approx(0.5)
    assert item_strengths(state, SHORT, 10_000 + 2 * HS)["i1"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="t >= t_ref"):
        category_strengths(state, SHORT, 9_999)


def test_late_event_adds_decayed_weight_without_moving_t_ref() -> None:
    state = new_state("u")
    fold(state, [ev(0, 1, 0, 10_000, 1.0)], CFG)
    fold(state, [ev(1, 1, 0, 10_000 - HS, 4.0)], CFG)
    assert state.t_ref == 10_000
    assert category_strengths(state, SHORT)["c0"] == pytest.approx(3.0)


def test_unknown_items_count_in_categories_not_vectors() -> None:
    state = new_state("u")
    fold(state, [ev(0, 0, 0, 1_000, 5.0)], CFG, vectors=VEC)  # i0 is unknown to VEC
    assert category_strengths(state, LONG) == {"c0": 5.0}
    v = interest_vector(state, LONG)
    assert v is not None and not v.any()


def test_no_model_means_no_vectors_then_rebase_on_first_model() -> None:
    events = make_events([(1, 0, 1000, 1.0, "browse"), (2, 1, 2000, 2.0, "click")])
    state = new_state("u")
    fold(state, events[:1], CFG)
    assert state.vectors is None and interest_vector(state, SHORT) is None
    fold(state, events[1:], CFG, vectors=VEC)
    assert state.model_version == "1"
    check_formula(state, events)


def test_rebase_on_new_model_equals_formula_with_new_embeddings() -> None:
    events = make_events([(k, k % 3, 1000 * k, 1.0 + k, "browse") for k in range(12)])
    state = new_state("u")
    fold(state, events, CFG, vectors=VEC)
    other = DictVectors("2", 12, seed=7)
    rebase(state, other)
    assert state.model_version == "2"
    check_formula(state, events, other)
    rebase(state, None)
    assert state.vectors is None and state.model_version is None


def test_fold_with_a_new_model_rebases_first() -> None:
    events = make_events([(k, k % 3, 1000 * k, 1.0, "browse") for k in range(12)])
    state = new_state("u")
    fold(state, events[:6], CFG, vectors=VEC)
    other = DictVectors("2", 12, seed=9)
    fold(state, events[6:], CFG, vectors=other)
    check_formula(state, events, other)


def test_dedup_by_offset_per_partition() -> None:
    state = new_state("u")
    cfg = InterestConfig(HS, HL)  # offsets alone
    batch = [ev(0, 1, 0, 100), ev(1, 1, 0, 200), ev(2, 1, 0, 300)]
    r = fold(state, batch, cfg, positions=[(0, 10), (0, 11), (3, 5)])
    assert (r.applied, r.duplicates) == (3, 0)
    assert state.offsets == {0: 11, 3: 5}
    # replay after a crash: same records, plus one new one from each partition
    replay = [*batch, ev(3, 1, 0, 400), ev(4, 1, 0, 500)]
    r = fold(state, replay, cfg, positions=[(0, 10), (0, 11), (3, 5), (0, 12), (3, 6)])
    assert (r.applied, r.duplicates) == (2, 3)
    assert state.events_applied == 5


def test_dedup_by_event_id_within_and_across_batches() -> None:
    state = new_state("u")
    seen = SeenIds()
    a, b = ev(0, 1, 0, 100, 2.0), ev(1, 2, 0, 200, 3.0)
    r = fold(state, [a, a, b], CFG, positions=[(0, 1), (0, 2), (0, 3)], seen=seen)
    assert (r.applied, r.duplicates, r.applied_by_type) == (2, 1, {"browse": 2})
    r = fold(state, [b], CFG, positions=[(0, 9)], seen=seen)  # a retry: new offset, same id
    assert (r.applied, r.duplicates) == (0, 1)
    assert state.type_counts == {"browse": 2} and state.events_applied == 2


def test_ids_are_remembered_for_a_window_of_event_time_not_a_count() -> None:
    day = 86_400_000
    seen = SeenIds(DedupConfig(retention_ms=7 * day))
    state = new_state("u")
    many = [ev(n, n % 7, 0, n * 60_000) for n in range(5_000)]  # 5,000 ids in 3.5 days
    fold(state, many, CFG, positions=[(0, n) for n in range(5_000)], seen=seen)
    again = fold(state, [many[0]], CFG, positions=[(0, 10_000)], seen=seen)
    assert (again.applied, again.duplicates) == (0, 1)  # the oldest, 4,999 ids later
    late = ev(9_999, 1, 0, 5_000 * 60_000 - 8 * day)  # older than the retention
    with_late = fold(state, [late], CFG, positions=[(0, 10_001)], seen=seen)
    assert with_late.applied == 0 and with_late.duplicates == 1  # dead-lettered upstream
    assert seen.check(["u"], [late.event_id], np.array([late.ts]), [0], [10_002])[0] == BEYOND
    apply_anyway = SeenIds(DedupConfig(7 * day, beyond="apply"))
    apply_anyway.check(["u"], ["x"], np.array([10 * day]), [0], [0])
    assert apply_anyway.check(["u"], ["y"], np.array([day]), [0], [1])[0] == FRESH


def test_a_replay_at_the_same_position_is_not_a_duplicate() -> None:
    """A crash can leave the id remembered and the state not: the record read again from
    its own position must be applied."""
    seen = SeenIds()
    a = ev(0, 1, 0, 100)
    seen.check(["u"], [a.event_id], np.array([a.ts]), [0], [7])  # remembered, state lost
    state = new_state("u")
    r = fold(state, [a], CFG, positions=[(0, 7)], seen=seen)
    assert r.applied == 1 and r.duplicates == 0
    assert fold(state, [a], CFG, positions=[(0, 8)], seen=seen).duplicates == 1


def test_bounded_categories_and_items_keep_the_strongest() -> None:
    cfg = InterestConfig(HS, HL, max_categories=2, max_items=2)
    state = new_state("u")
    events = [ev(0, 0, 0, 1000, 1.0), ev(1, 1, 1, 1000, 5.0), ev(2, 2, 2, 1000, 3.0)]
    fold(state, events, cfg)
    assert set(state.categories) == {"c1", "c2"}
    assert set(state.items) == {"i1", "i2"}
    assert set(state.item_categories) <= set(state.items)
    # a dropped category that comes back restarts from zero
    fold(state, [ev(3, 0, 0, 1000, 10.0)], cfg)
    assert category_strengths(state, LONG) == {"c0": 10.0, "c1": 5.0}


def test_purchased_items_and_item_categories_recorded() -> None:
    state = new_state("u")
    fold(state, [ev(0, 1, 0, 10, 8.0, "purchase"), ev(1, 2, None, 20)], CFG)
    assert state.purchased == {"i1"}
    assert state.item_categories == {"i1": "c0"}


def test_counts_and_kafka_ts() -> None:
    state = new_state("u")
    r = fold(state, [ev(0, 1, 0, 10), ev(1, 1, 0, 20, type_="click")], CFG, kafka_ts=[50, 40])
    assert r.applied_by_type == {"browse": 1, "click": 1}
    assert state.last_event_kafka_ts == 50
    fold(state, [ev(2, 1, 0, 5)], CFG, kafka_ts=[45])
    assert state.last_event_kafka_ts == 50
    assert state.type_counts == {"browse": 2, "click": 1} and state.events_applied == 3


def test_top_categories_strongest_first() -> None:
    state = new_state("u")
    fold(state, [ev(n, n, n, 1000, float(n + 1)) for n in range(5)], CFG)
    top = top_categories(state, LONG, n=3)
    assert [c for c, _ in top] == ["c4", "c3", "c2"]
    later = top_categories(state, SHORT, n=1, t=1000 + HS)
    assert later == [("c4", pytest.approx(2.5))]


def test_expiry() -> None:
    state = new_state("u")
    assert is_expired(state, 0, 0.5)
    fold(state, [ev(0, 1, 0, 0, 4.0), ev(1, 2, 1, 0, 1.0)], CFG)
    assert not is_expired(state, 0, 0.0) and not is_expired(state, 10**15, 0.0)
    assert not is_expired(state, 2 * HL, 0.99)  # c0 is 1.0 then, c1 0.25
    assert is_expired(state, 2 * HL, 1.01)
    assert is_expired(state, 2 * HL + 1, 1.0)
    assert not is_expired(state, -5, 3.9)  # now before t_ref reads at t_ref


def test_half_life_adopted_from_config() -> None:
    state = new_state("u", CFG)
    assert state.half_lives == (HS, HL)
    fold(state, [ev(0, 1, 0, 0)], InterestConfig(10, 100))
    assert state.half_lives == (10, 100)


def test_decode_rejects_newer_and_corrupt_formats() -> None:
    state = new_state("u")
    fold(state, [ev(0, 1, 0, 0)], CFG, vectors=VEC)
    blob = encode(state)
    assert blob[0] == FORMAT_VERSION
    newer = bytes([FORMAT_VERSION + 1]) + blob[1:]
    pattern = rf"newer interest-stream \(format {FORMAT_VERSION + 1}\).*up to {FORMAT_VERSION}"
    with pytest.raises(StateFormatError, match=pattern):
        decode(newer)
    for bad in (b"", b"\x00abc", blob[:-3], blob + b"x"):
        with pytest.raises(StateFormatError, match="corrupt"):
            decode(bad)


def test_state_size_typical_user_fits_budget() -> None:
    vec = DictVectors("1", 200, seed=3, dim=64)
    state = new_state("user-123456")
    events = [ev(n, n % 60, n % 64, 1000 * n, 1.0) for n in range(300)]
    fold(state, events, InterestConfig(), vectors=vec)
    assert len(state.categories) == 64
    assert len(encode(state)) <= 2048 + 1024  # 64 categories AND 60 items AND 64 ids


def test_new_state_is_empty_and_round_trips() -> None:
    state = new_state("ü")
    assert decode(encode(state)) == state
    assert state.t_ref is None and category_strengths(state, SHORT) == {}


def test_a_format_1_state_written_by_0_2_reads_as_it_was() -> None:
    """States in changelogs written by 0.2.0 (format 1) keep working after the upgrade."""
    fixture = json.loads((Path(__file__).parent / "data" / "state_format1.json").read_text())
    state = decode(bytes.fromhex(fixture["hex"]))
    want = fixture["state"]
    assert state.user_id == want["user_id"] and state.t_ref == want["t_ref"]
    assert dict(state.categories) == want["categories"] and dict(state.items) == want["items"]
    assert state.item_categories == want["item_categories"]
    assert sorted(state.purchased) == want["purchased"]
    assert state.vectors.tolist() == want["vectors"] and state.model_version == "7"
    assert state.type_counts == want["type_counts"]
    assert state.events_applied == want["events_applied"]
    assert state.offsets == {int(k): v for k, v in want["offsets"].items()}
    assert state.last_event_kafka_ts == want["last_event_kafka_ts"]
    assert list(state.half_lives) == want["half_lives"]
    again = decode(encode(state))
    assert encode(state)[0] == FORMAT_VERSION and again == state


def test_the_header_alone_gives_what_a_scan_needs_in_both_formats() -> None:
    from stream.core.codec import read_head

    fixture = json.loads((Path(__file__).parent / "data" / "state_format1.json").read_text())
    old = bytes.fromhex(fixture["hex"])
    for raw in (old, encode(decode(old)), encode(new_state("u"))):
        state = decode(raw)
        assert read_head(raw) == (state.t_ref, state.last_event_kafka_ts, state.events_applied)
    with pytest.raises(StateFormatError):
        read_head(b"\x02\x01")
