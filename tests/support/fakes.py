"""Fakes of what the worker's parts receive, for unit tests only.

Integration tests never use these: they run real `interest worker` processes on a real
broker. Each fake does just what its real counterpart does for the part under test, and
records what happened so a test can assert on it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream.core.errors import ScorerError
from stream.core.types import (
    CandidateBatch,
    ItemVectors,
    Recommended,
    ScoreBatch,
    SequenceBatch,
)
from stream.worker.table_writer import TableWriter


@dataclass
class FakeRecord:
    """An aiokafka ConsumerRecord as the batch consumer hands it over."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int | None = None  # epoch ms, as the Kafka client's records carry it


class _Delivered:
    """A delivery report's message (confluent-kafka's Message, the parts the writer reads)."""

    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self._t, self._p, self._o = topic, partition, offset

    def topic(self) -> str:
        return self._t

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o


@dataclass
class Produced:
    topic: str
    key: bytes | None
    value: bytes | None
    partition: int


class FakeProducer:
    """confluent-kafka's Producer: keeps every record; delivers on poll unless held.

    ``hold = True`` keeps delivery reports back until :meth:`deliver`; ``fail`` makes every
    delivery report an error."""

    def __init__(self) -> None:
        self.records: list[Produced] = []
        self.pending: list[tuple[Produced, Callable[[Any, Any], None] | None]] = []
        self.hold = False
        self.fail: str | None = None
        self.offsets: dict[tuple[str, int], int] = {}

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int = -1,
        on_delivery: Callable[[Any, Any], None] | None = None,
    ) -> None:
        record = Produced(topic, key, value, partition)
        self.records.append(record)
        self.pending.append((record, on_delivery))

    def deliver(self, index: int | None = None) -> None:
        """Deliver one held record (or all of them)."""
        chosen = range(len(self.pending)) if index is None else [index]
        for n in sorted(chosen, reverse=True):
            record, callback = self.pending.pop(n)
            part = max(record.partition, 0)
            offset = self.offsets.get((record.topic, part), -1) + 1
            self.offsets[(record.topic, part)] = offset
            if callback is not None:
                callback(self.fail, _Delivered(record.topic, part, offset))

    def poll(self, _timeout: float = 0) -> int:
        n = len(self.pending)
        if not self.hold:
            self.deliver()
        return n

    def flush(self, _timeout: float = 0) -> int:
        self.poll()
        return len(self.pending)

    def on(self, topic: str) -> list[Produced]:
        return [r for r in self.records if r.topic == topic]


class FakeWriteBatch:
    """rocksdict's WriteBatch: puts applied by FakeDB.write."""

    def __init__(self) -> None:
        self.puts: list[tuple[bytes, bytes]] = []

    def put(self, key: bytes, value: bytes) -> None:
        self.puts.append((key, value))


class FakeDB:
    """One partition's RocksDB (rocksdict's Rdict: put, get, delete, write)."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.batches = 0

    def write(self, batch: FakeWriteBatch, write_opt: Any = None) -> None:
        self.batches += 1
        self.data.update(batch.puts)

    def put(self, key: bytes, value: bytes) -> None:
        self.data[key] = value

    def get(self, key: bytes | list[bytes]) -> Any:
        if isinstance(key, list):  # a multi-get
            return [self.data.get(k) for k in key]
        return self.data.get(key)

    def items(self, from_key: bytes | None = None) -> Any:
        return [(k, self.data[k]) for k in sorted(self.data) if from_key is None or k >= from_key]

    def delete(self, key: bytes) -> None:
        self.data.pop(key, None)


class FakeStore:
    """A Faust RocksDB store: a database per partition and the persisted offsets."""

    def __init__(self) -> None:
        self._dbs: dict[int, FakeDB] = {}
        self._key_index: dict[bytes, int] = {}
        self.persisted: dict[Any, int] = {}

    def _db_for_partition(self, partition: int) -> FakeDB:
        return self._dbs.setdefault(partition, FakeDB())

    def set_persisted_offset(self, tp: Any, offset: int) -> None:
        self.persisted[tp] = offset


class FakeTable:
    """A Faust table over a :class:`FakeStore` (bytes keys and values)."""

    def __init__(self) -> None:
        self.data = FakeStore()

    def get(self, key: bytes) -> bytes | None:
        for db in self.data._dbs.values():
            value = db.get(key)
            if value is not None:
                return value
        return None

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        for db in self.data._dbs.values():
            yield from list(db.data.items())


class FakeVectors:
    """ItemVectors over a dict of embeddings."""

    def __init__(self, vectors: Mapping[str, np.ndarray], version: str = "1") -> None:
        self._vectors = {k: np.asarray(v, np.float32) for k, v in vectors.items()}
        self.version = version
        self.dim = len(next(iter(self._vectors.values()))) if self._vectors else 0

    def get(self, item_id: str) -> np.ndarray | None:
        return self._vectors.get(item_id)


@dataclass
class FakeScorer:
    """A Scorer without TensorFlow. No model by default (the blend ranks); ``error`` makes
    every call fail, ``hang`` makes every call wait until released."""

    model_version: str | None = None
    item_vectors: ItemVectors | None = None
    catalog: Mapping[str, str] = field(default_factory=dict)
    network_ranking: bool = True
    error: str | None = None
    hang: threading.Event | None = None
    calls: int = 0
    closed: bool = False
    next_items: tuple[Recommended, ...] = ()  # what next_in_sequence proposes to everyone

    def _call(self) -> None:
        self.calls += 1
        if self.hang is not None:
            self.hang.wait(10)
        if self.error is not None:
            raise ScorerError(self.error)

    def refresh(self) -> None:
        self._call()

    def recommend(self, batch: ScoreBatch) -> list[list[Recommended]]:
        return [[] for _ in batch.user_ids]

    def score_candidates(self, batch: CandidateBatch) -> list[np.ndarray]:
        return [np.full(len(items), 0.5) for items in batch.items]

    def next_in_sequence(self, batch: SequenceBatch) -> list[list[Recommended]]:
        return [list(self.next_items) for _ in batch.user_ids]

    def close(self) -> None:
        self.closed = True


def fake_writer(producer: FakeProducer, ack: Callable[[Any], Any]) -> TableWriter:
    """stream.worker.table_writer.TableWriter over a fake producer and fake write batches."""
    return TableWriter(producer, ack=ack, write_batch=FakeWriteBatch)


def open_fake_scorer(
    error: str | None = None, hang_s: float = 0.0, open_s: float = 0.0
) -> FakeScorer:
    """A FakeScorer made in a ranking child process (a module-level function: picklable).
    ``hang_s``: every call sleeps that long first (a scorer that does not answer);
    ``open_s``: opening it takes that long (a model loading at start)."""
    if open_s:
        threading.Event().wait(open_s)
    scorer = FakeScorer(error=error)
    if hang_s:
        event = threading.Event()
        scorer.hang = event
        original = scorer._call

        def slow() -> None:
            event.wait(hang_s)
            original()

        scorer._call = slow  # type: ignore[method-assign]
        scorer.hang = None
    return scorer
