"""The table writer against the real broker and Faust's own RocksDB store: a write lands in
the store and in the changelog partition, a delete is a tombstone, and records are acked
only once their epoch's changelog records are delivered."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
import pytest
from confluent_kafka import Consumer, Message, Producer, TopicPartition
from faust.types import TP

from stream.config import load_settings
from stream.worker.kafka_clients import producer_config
from stream.worker.table_writer import PRODUCER_OPTIONS, TableWriter
from tests.support.helpers import create_topic, wait_for

pytestmark = pytest.mark.integration

SOURCE = TP("events", 0)  # the source partition whose records an epoch covers


def _store(tmp_path: Path, bootstrap: str) -> Any:
    app = faust.App(
        f"tw-{uuid.uuid4().hex[:6]}",
        broker=f"kafka://{bootstrap}",
        store="rocksdb://",
        datadir=str(tmp_path),
        autodiscover=False,
    )
    return app.Table("users", partitions=2, key_type=bytes, value_type=bytes).data


def _read_all(bootstrap: str, topic: str, partition: int, count: int) -> list[Message]:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex, "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, partition, 0)])
    got: list[Message] = []

    def more() -> bool:
        msg = consumer.poll(0.2)
        if msg is not None and not msg.error():
            got.append(msg)
        return len(got) >= count

    try:
        wait_for(more, 30, f"{count} records in {topic}[{partition}]")
    finally:
        consumer.close()
    return got


@dataclass
class Setup:
    topic: str  # a 2-partition changelog topic
    store: Any  # Faust's RocksDB store of a 2-partition table
    writer: TableWriter
    acked: list[Any]


@pytest.fixture
def setup(
    kafka_bootstrap: str, unique_topic: Callable[[str], str], tmp_path: Path
) -> Iterator[Setup]:
    acked: list[Any] = []
    settings = load_settings(None, {"kafka_bootstrap": kafka_bootstrap})
    writer = TableWriter(Producer(producer_config(settings, **PRODUCER_OPTIONS)), acked.append)
    yield Setup(
        create_topic(kafka_bootstrap, unique_topic("changelog"), partitions=2),
        _store(tmp_path, kafka_bootstrap),
        writer,
        acked,
    )
    assert writer.close(), "table records undelivered at close"


def _poll_until(writer: TableWriter, done: Callable[[], bool], what: str) -> None:
    def step() -> bool:
        writer.poll()
        return done()

    wait_for(step, 30, what)


def test_writes_reach_store_and_changelog_then_ack(kafka_bootstrap: str, setup: Setup) -> None:
    topic, store, writer, acked = setup.topic, setup.store, setup.writer, setup.acked
    writer.put(store, topic, 1, b"alice", b"state-1")
    writer.put(store, topic, 1, b"alice", b"state-2")
    writer.seal({SOURCE: 2})
    assert acked == [], "acked before the changelog records were delivered"
    _poll_until(writer, lambda: acked == [{SOURCE: 2}], "records acked after delivery")
    assert store._get(b"alice") == b"state-2"
    records = _read_all(kafka_bootstrap, topic, 1, 2)
    assert [(m.key(), m.value()) for m in records] == [
        (b"alice", b"state-1"),
        (b"alice", b"state-2"),
    ]
    assert store.persisted_offset(TP(topic, 1)) == records[-1].offset()

    writer.put(store, topic, 1, b"alice", None)
    writer.seal({SOURCE: 3})
    _poll_until(writer, lambda: acked[-1:] == [{SOURCE: 3}], "delete acked")
    assert store._get(b"alice") is None
    tombstone = _read_all(kafka_bootstrap, topic, 1, 3)[-1]
    assert (tombstone.key(), tombstone.value()) == (b"alice", None)


def test_forgotten_records_are_never_acked(setup: Setup) -> None:
    topic, store, writer, acked = setup.topic, setup.store, setup.writer, setup.acked
    writer.put(store, topic, 0, b"bob", b"s")
    writer.seal({SOURCE: 5})
    writer.forget()  # a rebalance: these records are read again from committed offsets
    writer.put(store, topic, 0, b"bob", b"s2")
    writer.seal({SOURCE: 9})
    _poll_until(writer, lambda: acked == [{SOURCE: 9}], "the later epoch acked")


def test_many_writes_go_in_one_batch_per_partition(kafka_bootstrap: str, setup: Setup) -> None:
    """A flush's states: one RocksDB write batch per partition, every changelog record."""
    topic, store, writer, acked = setup.topic, setup.store, setup.writer, setup.acked
    writes = [(n % 2, f"user-{n}".encode(), f"state-{n}".encode()) for n in range(40)]
    writer.put_many(store, topic, writes)
    writer.seal({SOURCE: 40})
    _poll_until(writer, lambda: acked == [{SOURCE: 40}], "the flush acked after delivery")
    for partition, key, value in writes:
        assert store._db_for_partition(partition).get(key) == value
    got = {m.key(): m.value() for m in _read_all(kafka_bootstrap, topic, 1, 20)}
    assert got == {k: v for p, k, v in writes if p == 1}
