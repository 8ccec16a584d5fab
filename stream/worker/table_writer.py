"""Writes of the hot tables: a RocksDB put plus a changelog record produced by librdkafka.

A Faust table write goes through Faust's producer buffer and aiokafka, about 40 µs of
Python per record, plus a second RocksDB put per record for the persisted offset. The
pipeline writes a state per user per flush and a recommendation per publication, so that
path dominated a worker's time. Here the value goes into the partition's RocksDB (Faust's
own store, so Faust still reads, serves, recovers and standbys the table) and the record
into the table's changelog through a confluent-kafka producer (murmur2, idempotent).

The records that led to a write are acknowledged to Faust only once every changelog and
output record produced before them is delivered: writes are grouped in epochs, and an
epoch's high-water marks (the highest source offset per partition whose effects it holds)
are acknowledged when its last delivery report arrives. So an offset Faust commits always
has its effects in Kafka, as with Faust's own tables.

A flush's values go into RocksDB as one write batch per partition, without RocksDB's
write-ahead log: the changelog is what makes a table durable, and a worker that did not
stop cleanly rebuilds its stores from the changelogs anyway (stream.worker.main).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from confluent_kafka import KafkaException
from faust.types import TP
from rocksdict import WriteBatch, WriteOptions

from stream.core.errors import DeliveryFailed, FatalError, StorageFailed

log = logging.getLogger("interest.writer")

PRODUCER_OPTIONS = {"linger.ms": 2, "message.timeout.ms": 300_000, "client.id": "interest-tables"}
Marks = Mapping[TP, int]  # source partition -> highest offset whose effects an epoch holds


def _no_wal() -> WriteOptions:
    options = WriteOptions()
    options.disable_wal = True
    return options


NO_WAL = _no_wal()


class TableWriter:
    """RocksDB puts and changelog records, with acknowledgements gated on delivery.

    ``producer`` is a confluent-kafka Producer (murmur2, idempotent: see
    stream.worker.kafka_clients.producer_config and PRODUCER_OPTIONS)."""

    def __init__(
        self,
        producer: Any,
        ack: Callable[[Marks], Any],
        write_batch: Callable[[], Any] = lambda: WriteBatch(raw_mode=True),
    ) -> None:
        self.producer = producer
        self.ack = ack
        self.write_batch = write_batch  # a RocksDB write batch (rocksdict's, raw bytes)
        self.epoch = 0
        self.outstanding: dict[int, int] = {0: 0}  # epoch -> records not yet delivered
        self.sealed: deque[tuple[int, dict[TP, int]]] = deque()  # (epoch, marks to ack)
        self.stores: dict[str, Any] = {}  # changelog topic -> Faust store, for offsets
        self.delivered_offsets: dict[tuple[str, int], int] = {}
        self.failure: Any = None  # the first delivery error (a confluent KafkaError)
        self._callbacks: dict[int, Callable[[Any, Any], None]] = {}

    def put(self, store: Any, topic: str, partition: int, key: bytes, value: bytes | None) -> None:
        """Write ``key`` in the partition's RocksDB, then its changelog record (None deletes)."""
        db = store._db_for_partition(partition)
        try:
            if value is None:
                db.delete(key)
            else:
                db.put(key, value)
        except Exception as exc:  # rocksdict raises plain Exceptions ("IO error: ...")
            raise StorageFailed(f"RocksDB write for {topic}[{partition}] failed: {exc}") from exc
        if value is None:
            store._key_index.pop(key, None)
        else:
            store._key_index[key] = partition
        self.stores.setdefault(topic, store)
        self.produce(topic, key, value, partition)

    def put_many(self, store: Any, topic: str, writes: Iterable[tuple[int, bytes, bytes]]) -> None:
        """Write many (partition, key, value): one RocksDB write batch per partition, then
        their changelog records."""
        batches: dict[int, Any] = {}
        index = store._key_index
        produce = self.produce
        for partition, key, value in writes:
            wb = batches.get(partition)
            if wb is None:
                wb = batches[partition] = self.write_batch()
            wb.put(key, value)
            index[key] = partition
            produce(topic, key, value, partition)
        for partition, wb in batches.items():
            try:
                store._db_for_partition(partition).write(wb, write_opt=NO_WAL)
            except Exception as exc:  # rocksdict raises plain Exceptions ("IO error: ...")
                raise StorageFailed(
                    f"RocksDB write batch for {topic}[{partition}] failed: {exc}"
                ) from exc
        self.stores.setdefault(topic, store)

    def produce(
        self, topic: str, key: bytes | None, value: bytes | None, partition: int = -1
    ) -> None:
        """A record of the current epoch (partition -1: murmur2 of the key).

        A full librdkafka queue is waited out, unless deliveries have started to fail (the
        broker gone for good): that, and librdkafka's fatal errors, are :class:`FatalError`.
        Other errors (a record too large, say) are about this record and propagate."""
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
                if self.failure is not None:
                    self.outstanding[self.epoch] -= 1
                    raise DeliveryFailed(f"records not delivered: {self.failure}") from None
            except KafkaException as exc:
                self.outstanding[self.epoch] -= 1
                if exc.args and getattr(exc.args[0], "fatal", lambda: False)():
                    raise FatalError(f"the Kafka producer failed: {exc}") from exc
                raise

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

    def seal(self, marks: Marks) -> None:
        """Close the epoch: ``marks`` are acked once all its writes are delivered."""
        self.sealed.append((self.epoch, dict(marks)))
        self.epoch += 1
        self.outstanding[self.epoch] = 0

    def poll(self) -> int:
        """Serve delivery reports; ack the marks of complete epochs. Returns epochs acked."""
        self.producer.poll(0)
        if self.failure is not None:
            raise DeliveryFailed(f"changelog record not delivered: {self.failure}")
        acked = 0
        while self.sealed and self.outstanding[self.sealed[0][0]] == 0:
            epoch, marks = self.sealed.popleft()
            del self.outstanding[epoch]
            self._callbacks.pop(epoch, None)
            if marks:
                self.ack(marks)
            acked += 1
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
        for _, marks in self.sealed:
            marks.clear()
        self.delivered_offsets.clear()

    def drain(self, timeout_s: float = 30.0) -> None:
        """Wait until what was produced is delivered, then ack the complete epochs."""
        self.producer.flush(timeout_s)
        self.poll()

    def close(self, timeout_s: float = 30.0) -> bool:
        """Deliver everything produced; False if some record could not be."""
        left = self.producer.flush(timeout_s)
        if left or self.failure is not None:
            log.error("%d table records undelivered at stop (%s)", left, self.failure or "timeout")
            return False
        return True
