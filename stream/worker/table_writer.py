"""Writes of the hot tables: a RocksDB put plus a changelog record produced by librdkafka.

A Faust table write goes through Faust's producer buffer and aiokafka, about 40 µs of
Python per record, plus a second RocksDB put per record for the persisted offset. The
pipeline writes a state per user per flush and a recommendation per publication, so that
path dominated a worker's time. Here the value goes into the partition's RocksDB (Faust's
own store, so Faust still reads, serves, recovers and standbys the table) and the record
into the table's changelog through a confluent-kafka producer (murmur2, idempotent).

The records that led to a write are acknowledged to Faust only once every changelog and
output record produced before them is delivered: writes are grouped in epochs, and an
epoch's records are acked when its last delivery report arrives. So an offset Faust
commits always has its effects in Kafka, as with Faust's own tables.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from faust.types import TP

from stream.core.errors import DeliveryFailed

log = logging.getLogger("interest.writer")

PRODUCER_OPTIONS = {"linger.ms": 2, "message.timeout.ms": 300_000, "client.id": "interest-tables"}


class TableWriter:
    """RocksDB puts and changelog records, with acknowledgements gated on delivery.

    ``producer`` is a confluent-kafka Producer (murmur2, idempotent: see
    stream.worker.kafka_clients.producer_config and PRODUCER_OPTIONS)."""

    def __init__(self, producer: Any, ack: Callable[[Any], Any]) -> None:
        self.producer = producer
        self.ack = ack
        self.epoch = 0
        self.outstanding: dict[int, int] = {0: 0}  # epoch -> records not yet delivered
        self.sealed: deque[tuple[int, list[Any]]] = deque()  # (epoch, records to ack)
        self.stores: dict[str, Any] = {}  # changelog topic -> Faust store, for offsets
        self.delivered_offsets: dict[tuple[str, int], int] = {}
        self.failure: Any = None  # the first delivery error (a confluent KafkaError)
        self._callbacks: dict[int, Callable[[Any, Any], None]] = {}

    def put(self, store: Any, topic: str, partition: int, key: bytes, value: bytes | None) -> None:
        """Write ``key`` in the partition's RocksDB, then its changelog record (None deletes)."""
        db = store._db_for_partition(partition)
        if value is None:
            db.delete(key)
            store._key_index.pop(key, None)
        else:
            db.put(key, value)
            store._key_index[key] = partition
        self.stores.setdefault(topic, store)
        self.produce(topic, key, value, partition)

    def produce(
        self, topic: str, key: bytes | None, value: bytes | None, partition: int = -1
    ) -> None:
        """A record of the current epoch (partition -1: murmur2 of the key)."""
        callback = self._callbacks.get(self.epoch)
        if callback is None:
            callback = self._callbacks[self.epoch] = self._on_delivery(self.epoch)
        self.outstanding[self.epoch] += 1
        while True:
            try:
                self.producer.produce(topic, value, key, partition, on_delivery=callback)
                return
            except BufferError:  # librdkafka's queue is full: let it drain
                self.producer.poll(0.05)

    def _on_delivery(self, epoch: int) -> Callable[[Any, Any], None]:
        def delivered(err: Any, msg: Any) -> None:
            if err is not None:
                self.failure = err
                return
            self.outstanding[epoch] -= 1
            key = (msg.topic(), msg.partition())
            if msg.offset() > self.delivered_offsets.get(key, -1):
                self.delivered_offsets[key] = msg.offset()

        return delivered

    def seal(self, records: Sequence[Any]) -> None:
        """Close the epoch: ``records`` are acked once all its writes are delivered."""
        self.sealed.append((self.epoch, list(records)))
        self.epoch += 1
        self.outstanding[self.epoch] = 0

    def poll(self) -> int:
        """Serve delivery reports; ack the records of complete epochs. Returns records acked."""
        self.producer.poll(0)
        if self.failure is not None:
            raise DeliveryFailed(f"changelog record not delivered: {self.failure}")
        acked = 0
        while self.sealed and self.outstanding[self.sealed[0][0]] == 0:
            epoch, records = self.sealed.popleft()
            del self.outstanding[epoch]
            self._callbacks.pop(epoch, None)
            for record in records:
                self.ack(record)
            acked += len(records)
        if acked:
            self._persist_offsets()
        return acked

    def _persist_offsets(self) -> None:
        """Tell Faust how far each local store is in its changelog (recovery starts there)."""
        for (topic, partition), offset in self.delivered_offsets.items():
            store = self.stores.get(topic)
            if store is not None and partition in store._dbs:
                store.set_persisted_offset(TP(topic, partition), offset)
        self.delivered_offsets.clear()

    def forget(self) -> None:
        """A rebalance: the records waiting for acks are read again from committed offsets."""
        for _, records in self.sealed:
            records.clear()
        self.delivered_offsets.clear()

    def close(self, timeout_s: float = 30.0) -> bool:
        """Deliver everything produced; False if some record could not be."""
        left = self.producer.flush(timeout_s)
        if left or self.failure is not None:
            log.error("%d table records undelivered at stop (%s)", left, self.failure or "timeout")
            return False
        return True
