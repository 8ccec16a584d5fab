"""The test broker is a real Kafka: partitioning by key, consumer groups, committed offsets,
and the client Faust uses (aiokafka) all behave as against a production cluster."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from stream.tools import broker
from tests.support.helpers import create_topic, wait_for

pytestmark = pytest.mark.integration

PARTITIONS = 4
KEYS = [f"user-{i}" for i in range(16)]
ROUNDS = 10


def _produce_keyed(bootstrap: str, topic: str) -> dict[str, set[int]]:
    """Produce ROUNDS messages per key; return the partitions the broker put each key in."""
    placed: dict[str, set[int]] = defaultdict(set)
    errors: list[KafkaError] = []

    def delivered(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(err)
        else:
            placed[msg.key().decode()].add(msg.partition())

    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for round_ in range(ROUNDS):
        for key in KEYS:
            producer.produce(topic, key=key, value=f"{key}:{round_}", on_delivery=delivered)
    assert producer.flush(30) == 0, "messages still in flight after 30 s"
    assert not errors
    return placed


def _consumer(bootstrap: str, group: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )


def _poll_until(consumer: Consumer, count: int, timeout_s: float) -> list[Message]:
    """Poll until ``count`` messages came (bounded); errors fail the test."""
    got: list[Message] = []

    def enough() -> bool:
        msg = consumer.poll(0.2)
        if msg is not None:
            assert msg.error() is None, msg.error()
            got.append(msg)
        return len(got) >= count

    wait_for(enough, timeout_s, f"{count} messages (got {len(got)})", interval_s=0)
    return got


def test_keys_stay_on_one_partition_and_group_offsets_commit(
    kafka_bootstrap: str, unique_topic: Callable[[str], str]
) -> None:
    topic = create_topic(kafka_bootstrap, unique_topic("keyed"), PARTITIONS)
    group = unique_topic("group")
    placed = _produce_keyed(kafka_bootstrap, topic)
    assert all(len(parts) == 1 for parts in placed.values()), placed
    assert len({p for parts in placed.values() for p in parts}) > 1, "all keys on one partition"

    consumer = _consumer(kafka_bootstrap, group)
    consumer.subscribe([topic])
    messages = _poll_until(consumer, len(KEYS) * ROUNDS, timeout_s=60)
    consumed_per_partition: dict[int, int] = defaultdict(int)
    for msg in messages:
        key = msg.key().decode()
        assert {msg.partition()} == placed[key]
        consumed_per_partition[msg.partition()] += 1
    # Per key, order is kept: rounds arrive 0, 1, 2, ...
    rounds_by_key: dict[str, list[int]] = defaultdict(list)
    for msg in messages:
        rounds_by_key[msg.key().decode()].append(int(msg.value().decode().split(":")[1]))
    assert all(rounds == list(range(ROUNDS)) for rounds in rounds_by_key.values())

    consumer.commit(asynchronous=False)
    committed = consumer.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], 10)
    consumer.close()
    assert {tp.partition: tp.offset for tp in committed if tp.offset >= 0} == dict(
        consumed_per_partition
    )

    # A new member of the same group resumes after the committed offsets.
    late = Producer({"bootstrap.servers": kafka_bootstrap})
    late.produce(topic, key=KEYS[0], value="late")
    assert late.flush(30) == 0
    resumed = _consumer(kafka_bootstrap, group)
    resumed.subscribe([topic])
    try:
        (msg,) = _poll_until(resumed, 1, timeout_s=60)
    finally:
        resumed.close()
    assert msg.value() == b"late"


def test_aiokafka_produces_and_consumes_with_a_group(
    kafka_bootstrap: str, unique_topic: Callable[[str], str]
) -> None:
    """Faust talks to Kafka through aiokafka; KIP-896 (Kafka 4) removed old protocol versions."""
    topic = create_topic(kafka_bootstrap, unique_topic("aio"), 2)
    group = unique_topic("aiogroup")
    consumed, committed = asyncio.run(_aiokafka_round_trip(kafka_bootstrap, topic, group))
    assert sorted(consumed) == sorted(f"v{i}".encode() for i in range(20))
    assert sum(committed) == 20


async def _aiokafka_round_trip(bootstrap: str, topic: str, group: str) -> tuple[list, list]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka import TopicPartition as AioTopicPartition

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        for i in range(20):
            await producer.send_and_wait(topic, f"v{i}".encode(), key=f"k{i % 5}".encode())
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    values: list[bytes] = []
    try:
        async with asyncio.timeout(60):
            while len(values) < 20:
                batches = await consumer.getmany(timeout_ms=200)
                values += [rec.value for recs in batches.values() for rec in recs]
        await consumer.commit()
        committed = [await consumer.committed(AioTopicPartition(topic, p)) for p in range(2)]
    finally:
        await consumer.stop()
    return values, [c or 0 for c in committed]


def _interest(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stream.cli", "kafka", *args],
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )


@pytest.mark.slow
def test_cli_up_status_down(tmp_path: Path) -> None:
    """The developer commands: up (twice: the second says it already runs), status, down."""
    data_dir = str(tmp_path / "kafka")
    port = str(broker.free_port())
    try:
        started = _interest("up", "--port", port, "--data-dir", data_dir)
        assert started.returncode == 0, started.stderr
        assert started.stdout.strip() == f"127.0.0.1:{port}"
        again = _interest("up", "--port", port, "--data-dir", data_dir)
        assert again.returncode == 0 and "already running" in again.stderr
        state = _interest("status", "--data-dir", data_dir)
        assert state.returncode == 0 and f"127.0.0.1:{port}" in state.stdout
    finally:
        stopped = _interest("down", "--data-dir", data_dir)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert not broker.port_in_use(int(port))
    gone = _interest("status", "--data-dir", data_dir)
    assert gone.returncode == 1 and "not running" in gone.stdout
