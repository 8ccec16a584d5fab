"""The state store's write-back cache: reads, one write per user per flush, acks after
delivery, and a rebalance forgetting what was not written."""

from __future__ import annotations

from typing import Any

from faust.types import TP

from stream.core.codec import decode, encode
from stream.core.interest import InterestConfig, fold, new_state
from stream.core.types import Event
from stream.worker.state_store import StateStore, UserPartitioner
from tests.support.fakes import FakeProducer, FakeTable, fake_writer

CFG = InterestConfig()
T0 = 1_700_000_000_000


def make_store() -> tuple[StateStore, FakeTable, FakeProducer, list[Any]]:
    acked: list[Any] = []
    producer = FakeProducer()
    producer.hold = True
    table = FakeTable()
    store = StateStore(
        table,
        "app-users-changelog",
        fake_writer(producer, acked.append),
        UserPartitioner(4),
    )
    return store, table, producer, acked


def ev(user: str, item: str, ts: int) -> Event:
    return Event(user, item, "click", ts, f"{user}-{item}-{ts}", "c1", 2.0)


def test_a_stored_state_is_read_once_then_served_from_the_cache() -> None:
    store, table, _, _ = make_store()
    state = new_state("u1", CFG)
    fold(state, [ev("u1", "i1", T0)], CFG)
    partition = UserPartitioner(4)("u1")
    table.data._db_for_partition(partition).put(b"u1", encode(state))
    got = store.read("u1")
    assert got == state
    table.data._db_for_partition(partition).delete(b"u1")
    assert store.read("u1") is got  # cached: this worker is the partition's only writer
    assert store.read("nobody") is None


def test_flush_writes_each_changed_user_once_and_acks_after_delivery() -> None:
    store, table, producer, acked = make_store()
    state = store.read_or_new("u1", CFG)
    fold(state, [ev("u1", "i1", T0)], CFG)
    store.changed("u1", 2)
    fold(state, [ev("u1", "i2", T0 + 1)], CFG)
    store.changed("u1", 2)
    store.applied({TP("events", 2): 41}, 2)
    store.applied({TP("events", 2): 40, TP("events", 3): 7}, 1)
    assert store.waiting == 3
    store.flush()
    assert [(r.topic, r.partition, r.key) for r in producer.records] == [
        ("app-users-changelog", 2, b"u1")
    ]
    assert decode(table.data._db_for_partition(2).get(b"u1")) == state
    assert table.data._db_for_partition(2).batches == 1  # one RocksDB write batch
    assert acked == [] and store.waiting == 0
    producer.deliver()
    store.writer.poll()
    assert acked == [{TP("events", 2): 41, TP("events", 3): 7}]


def test_forget_drops_unwritten_folds_and_their_records() -> None:
    store, table, producer, acked = make_store()
    fold(store.read_or_new("u1", CFG), [ev("u1", "i1", T0)], CFG)
    store.changed("u1", 1)
    store.applied({TP("events", 1): 3}, 1)
    store.forget()
    store.flush()
    producer.deliver()
    store.writer.poll()
    assert producer.records == [] and table.get(b"u1") is None
    assert acked == []  # read again from the committed offset by the partition's next owner


def test_delete_and_owned_scan() -> None:
    store, table, producer, _ = make_store()
    for user in ("a", "b", "c"):
        fold(store.read_or_new(user, CFG), [ev(user, "i", T0)], CFG)
        store.changed(user, store.partition_of(user))
    store.flush()
    owned = {u for u, _, _ in store.owned({store.partition_of("a")})}
    assert "a" in owned
    store.delete(store.partition_of("a"), ["a"])
    assert table.get(b"a") is None and store.read("a") is None
    assert producer.records[-1].value is None  # a tombstone in the changelog


def test_the_bytes_handed_to_the_ranking_are_always_the_state_as_cached() -> None:
    store, table, _, _ = make_store()
    state = new_state("u1", CFG)
    fold(state, [ev("u1", "i1", T0)], CFG)
    raw = encode(state)
    table.data._db_for_partition(store.partition_of("u1")).put(b"u1", raw)
    cached = store.read("u1")
    assert store.encoded_of(cached) is raw  # as read: not encoded again
    fold(cached, [ev("u1", "i2", T0 + 1)], CFG)
    store.changed("u1", store.partition_of("u1"))
    assert decode(store.encoded_of(cached)) == cached  # changed: encoded now
    store.flush()
    written = store.encoded_of(cached)
    assert written == table.data._db_for_partition(store.partition_of("u1")).get(b"u1")
    fold(cached, [ev("u1", "i3", T0 + 2)], CFG)
    store.touched("u1")  # a fold may change a state without applying an event
    assert decode(store.encoded_of(cached)) == cached
