"""The recent-events sequence: exact under any order, batching, late and duplicate events.

The reference is the definition: the kept events are the ``length`` greatest, under
``(ts, item, type)``, of the events applied (each event id once, replays skipped).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

import numpy as np
import pytest

from stream.core.codec import decode, encode
from stream.core.dedup import FRESH, DedupConfig, SeenIds
from stream.core.interest import (
    LONG,
    InterestConfig,
    UserState,
    fold,
    fold_batch,
    item_strengths,
    new_state,
)
from stream.core.sequence import PAD, RecentEvents, sequence_columns
from stream.core.types import Event, EventBatch

TYPES = ("browse", "click", "purchase")


def cfg(length: int, max_items: int = 100) -> InterestConfig:
    return InterestConfig(1_000, 20_000, max_items=max_items, sequence_length=length)


def ev(n: int, item: str, ts: int, type_: str = "browse", user: str = "u") -> Event:
    return Event(user, item, type_, ts, f"e{n}", "c", 1.0)


def keys(events: Sequence[Event]) -> list[tuple[int, str, str]]:
    return [(e.ts, e.item_id, e.type) for e in events]


def reference(events: Sequence[Event], length: int) -> list[tuple[int, str, str]]:
    """The definition: the ``length`` greatest keys of the distinct event ids."""
    once = {e.event_id: e for e in events}  # a re-sent id is the same event
    return sorted(keys(list(once.values())))[-length:] if length else []


def random_events(rnd: random.Random, n: int, users: int = 1) -> list[Event]:
    """Events with many ties on time (and on the whole key), then a fifth of them re-sent."""
    out = [
        ev(k, f"i{rnd.randrange(15)}", rnd.randrange(40) * 1_000, rnd.choice(TYPES),
           f"u{rnd.randrange(users)}")
        for k in range(n)
    ]  # fmt: skip
    out += [rnd.choice(out) for _ in range(n // 5)]
    return out


def fold_fetches(
    events: Sequence[Event], cuts: Sequence[int], config: InterestConfig
) -> dict[str, UserState]:
    """Fold the events of many users in fetches split at ``cuts``, ids checked as the
    worker does (stream.core.dedup, then fold_batch over every user of the fetch)."""
    seen = SeenIds(DedupConfig(retention_ms=10**12))
    states: dict[str, UserState] = {}
    bounds = [0, *sorted(cuts), len(events)]
    for a, b in itertools.pairwise(bounds):
        batch = EventBatch.of(list(events[a:b]))
        verdict = seen.check(batch.user_id, batch.event_id, batch.ts, None, None)
        batch = batch.take(np.flatnonzero(verdict == FRESH).tolist())
        names = sorted(set(batch.user_id))
        for u in names:
            states.setdefault(u, new_state(u))
        at = {u: n for n, u in enumerate(names)}
        users = np.array([at[u] for u in batch.user_id], np.int64)
        fold_batch([states[u] for u in names], batch, users, config)
    return states


# -- order independence -------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(40))
def test_any_permutation_and_batching_gives_the_same_sequence(seed: int) -> None:
    rnd = random.Random(seed)
    length = rnd.choice([1, 3, 8, 50])
    events = random_events(rnd, rnd.randrange(1, 60), users=3)
    config = cfg(length, max_items=rnd.choice([2, 100]))
    results = []
    for _ in range(4):
        order = events[:]
        rnd.shuffle(order)
        cuts = [rnd.randrange(len(order) + 1) for _ in range(rnd.randrange(6))]
        results.append(fold_fetches(order, cuts, config))
    for u in {e.user_id for e in events}:
        want = reference([e for e in events if e.user_id == u], length)
        for states in results:
            seq = states[u].sequence
            assert seq.events() == want
            assert seq == results[0][u].sequence
            assert decode(encode(states[u])).sequence == seq


@pytest.mark.parametrize("seed", range(20))
def test_insert_one_by_one_equals_add_in_batches(seed: int) -> None:
    rnd = random.Random(100 + seed)
    length = rnd.choice([1, 2, 5, 20])
    events = [(rnd.randrange(30), f"i{rnd.randrange(6)}", rnd.choice(TYPES)) for _ in range(80)]
    one = RecentEvents()
    for t, i, y in events:
        one.insert(t, i, y, length)
    batched = RecentEvents()
    k = 0
    while k < len(events):
        step = rnd.randrange(1, 12)
        batched.add(events[k : k + step], length)
        k += step
    want = sorted(events)[-length:]
    assert one.events() == want and batched.events() == want and one == batched


def test_replays_and_resent_ids_never_reach_the_sequence() -> None:
    first = [ev(n, f"i{n}", 1_000 * n) for n in range(5)]
    second = [ev(n, f"i{n}", 1_000 * n) for n in range(5, 8)]
    state = new_state("u")
    fold(state, first, cfg(50), positions=[(0, n) for n in range(5)])
    fold(state, first, cfg(50), positions=[(0, n) for n in range(5)])  # replayed fetch
    seen = SeenIds()
    fold(state, second, cfg(50), positions=[(0, n) for n in range(5, 8)], seen=seen)
    fold(state, second, cfg(50), positions=[(1, n) for n in range(3)], seen=seen)  # re-sent
    assert state.sequence.events() == keys(first + second)
    assert state.events_applied == 8


def test_same_key_different_ids_are_both_kept() -> None:
    state = new_state("u")
    fold(state, [ev(0, "a", 5), ev(1, "a", 5), ev(2, "b", 1)], cfg(50))
    assert state.sequence.events() == [(1, "b", "browse"), (5, "a", "browse"), (5, "a", "browse")]


# -- late and old events --------------------------------------------------------------------


def test_a_late_event_is_inserted_in_order() -> None:
    state = new_state("u")
    fold(state, [ev(0, "a", 10), ev(1, "b", 20), ev(2, "c", 30)], cfg(50))
    fold(state, [ev(3, "late", 15)], cfg(50))
    fold(state, [ev(4, "tie", 20, "click"), ev(5, "a", 20)], cfg(50))  # ties: (item, type)
    assert state.sequence.events() == [
        (10, "a", "browse"),
        (15, "late", "browse"),
        (20, "a", "browse"),
        (20, "b", "browse"),
        (20, "tie", "click"),
        (30, "c", "browse"),
    ]
    assert state.t_ref == 30


def test_an_event_older_than_a_full_sequence_is_dropped_from_it_only() -> None:
    state = new_state("u")
    fold(state, [ev(0, "a", 10), ev(1, "b", 20), ev(2, "c", 30)], cfg(3))
    before = state.sequence.copy()
    fold(state, [ev(3, "old", 5, "purchase")], cfg(3))
    assert state.sequence == before
    assert "old" in item_strengths(state, LONG) and "old" in state.purchased
    assert state.type_counts == {"browse": 3, "purchase": 1} and state.events_applied == 4
    fold(state, [ev(4, "mid", 25)], cfg(3))  # a late one newer than the oldest kept
    assert state.sequence.ts == [20, 25, 30] and state.sequence.item == ["b", "mid", "c"]


def test_insert_reports_whether_the_event_was_kept() -> None:
    seq = RecentEvents()
    assert seq.insert(10, "a", "browse", 2) and seq.insert(20, "b", "browse", 2)
    assert not seq.insert(5, "x", "browse", 2)  # older than the oldest of a full sequence
    assert not seq.insert(10, "a", "browse", 2)  # equal to it: the same content either way
    assert seq.insert(15, "c", "browse", 2)
    assert seq.events() == [(15, "c", "browse"), (20, "b", "browse")]
    assert not seq.insert(30, "d", "browse", 0) and len(seq) == 0


# -- the length setting ---------------------------------------------------------------------


def test_length_zero_keeps_no_sequence() -> None:
    state = new_state("u")
    fold(state, [ev(n, f"i{n}", n) for n in range(10)], cfg(0))
    assert len(state.sequence) == 0 and state.events_applied == 10
    blob = encode(state)
    assert not blob[1] & 16  # no sequence section at all
    assert decode(blob) == state


def test_a_changed_length_applies_at_the_users_next_fold() -> None:
    state = new_state("u")
    fold(state, [ev(n, f"i{n}", n) for n in range(6)], cfg(5))
    assert [t for t, _, _ in state.sequence.events()] == [1, 2, 3, 4, 5]
    fold(state, [ev(6, "late", 0)], cfg(3))  # lowered: the oldest go, the late one too
    assert [t for t, _, _ in state.sequence.events()] == [3, 4, 5]
    fold(state, [ev(7, "new", 9)], cfg(10))  # raised: nothing comes back, new ones add
    assert [t for t, _, _ in state.sequence.events()] == [3, 4, 5, 9]
    fold(state, [ev(8, "x", 10)], cfg(0))
    assert len(state.sequence) == 0


def test_lowering_the_length_trims_even_a_fold_of_old_events() -> None:
    seq = RecentEvents(list(range(5)), list("abcde"), ["browse"] * 5)
    seq.add([], 2)
    assert seq.ts == [3, 4]
    seq.add([(0, "z", "browse")], 1)
    assert seq.events() == [(4, "e", "browse")]


def test_many_users_in_one_fetch_each_get_their_own_events() -> None:
    events = [ev(n, f"i{n}", 100 - n, user=f"u{n % 3}") for n in range(12)]
    states = fold_fetches(events, [], cfg(3))
    for u in ("u0", "u1", "u2"):
        mine = [e for e in events if e.user_id == u]
        assert states[u].sequence.events() == sorted(keys(mine))[-3:]


# -- the state: snapshot, equality, codec ---------------------------------------------------


def test_snapshot_copies_the_sequence_and_equality_compares_it() -> None:
    state = new_state("u")
    fold(state, [ev(0, "a", 1)], cfg(50))
    snap = state.snapshot()
    assert snap == state
    fold(state, [ev(1, "b", 2)], cfg(50))
    assert len(snap.sequence) == 1 and len(state.sequence) == 2
    other = state.snapshot()
    other.sequence.type[-1] = "click"
    assert other != state


@pytest.mark.parametrize("max_items", [0, 3, 100])
@pytest.mark.parametrize("length", [0, 1, 50])
def test_codec_round_trip_with_and_without_a_sequence(max_items: int, length: int) -> None:
    rnd = random.Random(length * 1000 + max_items)
    state = new_state("user-é")
    for _ in range(8):
        fold(state, random_events(rnd, 25), cfg(length, max_items))
        blob = encode(state)
        back = decode(blob)
        assert back == state and back.sequence == state.sequence
        assert encode(back) == blob
        assert bool(blob[1] & 16) == (len(state.sequence) > 0)
    if max_items == 0 and length:
        assert len(state.items) == 0 and len(state.sequence) > 0  # every name an extra one


def format2(blob: bytes) -> bytes:
    """What format 2 wrote for the same state without its sequence: format 3 only adds the
    sequence section behind its flag (checked against pinned format 2 bytes in
    test_codec_speed)."""
    assert blob[0] == 3
    state = decode(blob)
    state.sequence = RecentEvents()
    return b"\x02" + encode(state)[1:]


def test_format_2_bytes_still_decode_with_an_empty_sequence() -> None:
    state = new_state("u")
    fold(state, [ev(n, f"i{n % 4}", 1_000 * n) for n in range(20)], cfg(50))
    old = format2(encode(state))
    back = decode(old)
    assert len(back.sequence) == 0
    assert back.items.keys_ == state.items.keys_ and back.type_counts == state.type_counts
    fold(back, [ev(20, "i9", 30_000)], cfg(50))  # the sequence starts from there
    assert back.sequence.events() == [(30_000, "i9", "browse")]
    assert decode(encode(back)) == back


def test_state_size_grows_by_a_few_bytes_per_kept_event() -> None:
    events = [ev(n, f"i{n % 60}", 1_000 * n, TYPES[n % 3]) for n in range(300)]
    sizes = {}
    for length in (0, 50):
        state = new_state("user-123456")
        fold(state, events, InterestConfig(sequence_length=length))
        sizes[length] = len(encode(state))
    # 4 counts + 3 width bytes + per event: item code 1, type code 1, age 2 (< 65.5 s)
    assert sizes[50] - sizes[0] == 4 + 3 + 50 * (1 + 1 + 2)


def test_encode_refuses_a_sequence_no_fold_makes() -> None:
    state = new_state("u")
    fold(state, [ev(0, "a", 10)], cfg(50))
    bad = state.snapshot()
    bad.sequence = RecentEvents([11], ["a"], ["browse"])  # after t_ref
    with pytest.raises(ValueError, match="after the state's t_ref"):
        encode(bad)
    bad.sequence = RecentEvents([10], ["a"], ["click"])  # a type never counted
    with pytest.raises(ValueError, match="not in type_counts"):
        encode(bad)


# -- sequence_columns -----------------------------------------------------------------------


def test_sequence_columns_are_right_aligned_padded_and_map_unknown_ids_to_pad() -> None:
    seqs = [
        RecentEvents([1, 2, 3], ["a", "zz", "b"], ["browse", "click", "odd"]),
        RecentEvents(),
        RecentEvents(list(range(6)), list("abcabc"), ["browse"] * 6),
    ]
    item_index = {"a": 0, "b": 1, "c": 7}
    type_index = {"browse": 1, "click": 2}
    items, types = sequence_columns(seqs, item_index, type_index, 4)
    assert items.dtype == np.int32 and types.dtype == np.int32
    assert items.shape == types.shape == (3, 4)
    assert items.tolist() == [[PAD, 0, PAD, 1], [PAD] * 4, [7, 0, 1, 7]]  # newest 4 of 6
    assert types.tolist() == [[PAD, 1, 2, PAD], [PAD] * 4, [1, 1, 1, 1]]
    items, types = sequence_columns(seqs, item_index, type_index, 0)
    assert items.shape == types.shape == (3, 0)
    items, types = sequence_columns([], item_index, type_index, 5)
    assert items.shape == types.shape == (0, 5)
    items, _ = sequence_columns([RecentEvents(), RecentEvents()], item_index, type_index, 2)
    assert items.tolist() == [[PAD, PAD], [PAD, PAD]]
    one = [RecentEvents(), RecentEvents([7], ["c"], ["click"])]
    items, types = sequence_columns(one, item_index, type_index, 2)
    assert items.tolist() == [[PAD, PAD], [PAD, 7]] and types.tolist() == [[PAD, PAD], [PAD, 2]]


def test_sequence_columns_of_a_batch_match_a_per_user_reference() -> None:
    rnd = random.Random(5)
    vocab = {f"i{k}": 3 * k for k in range(40)}  # some items unknown (i40..i49)
    types = {"browse": 0, "click": 1}
    seqs = []
    for _ in range(256):
        seq = RecentEvents()
        n = rnd.randrange(0, 70)
        seq.add([(rnd.randrange(10**6), f"i{rnd.randrange(50)}", rnd.choice(TYPES))
                 for _ in range(n)], 60)  # fmt: skip
        seqs.append(seq)
    items, tcols = sequence_columns(seqs, vocab, types, 50)
    for row, seq in enumerate(seqs):
        last = seq.events()[-50:]
        want_i = [PAD] * (50 - len(last)) + [vocab.get(i, PAD) for _, i, _ in last]
        want_t = [PAD] * (50 - len(last)) + [types.get(y, PAD) for _, _, y in last]
        assert items[row].tolist() == want_i and tcols[row].tolist() == want_t
