"""The user-state table as the worker uses it: a write-back cache over Faust's RocksDB store.

States are folded in memory (this worker is the only writer of the partitions it owns) and
written to the table, RocksDB plus changelog, once per user per flush. The records whose
effects a flush writes are acknowledged only after the changelog records are delivered
(stream.worker.table_writer), so Kafka offsets never get ahead of the changelog; a crash in
between replays them, and the core skips what the restored state already holds.

Reads go to the partition's RocksDB directly: the user's partition is known, and Faust's
table layers (which take the partition from a "current event" a batch handler does not
have) cost more than the read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from aiokafka.partitioner import murmur2

from stream.core.codec import decode, encode, read_head
from stream.core.errors import StorageFailed
from stream.core.interest import InterestConfig, UserState, new_state
from stream.worker import metrics


class Writer(Protocol):
    """What the store needs of stream.worker.table_writer.TableWriter."""

    def put(self, store: Any, topic: str, partition: int, key: bytes, value: bytes | None) -> None:
        """Write ``key`` in the partition's RocksDB, then its changelog record."""
        ...

    def put_many(self, store: Any, topic: str, writes: Iterable[tuple[int, bytes, bytes]]) -> None:
        """Write many (partition, key, value) in one RocksDB batch per partition."""
        ...

    def seal(self, marks: Mapping[Any, int]) -> None:
        """Close the epoch: ``marks`` are acked once all its writes are delivered."""
        ...

    def poll(self) -> int:
        """Serve delivery reports; ack the records of complete epochs."""
        ...

    def forget(self) -> None:
        """A rebalance: records waiting for acks will be read again."""
        ...


class Companion(Protocol):
    """Something written at every flush, in the states' epoch (stream.worker.dedup)."""

    def write(self) -> None: ...

    def forget(self) -> None: ...


class Table(Protocol):
    """What the store needs of a Faust table (bytes keys and values)."""

    data: Any  # the table's store: _db_for_partition, _dbs, set_persisted_offset

    def get(self, key: bytes) -> bytes | None: ...

    def items(self) -> Any: ...


class UserPartitioner:
    """The partition Kafka's default (murmur2) partitioner gives a user id, memoised."""

    def __init__(self, partitions: int, cache_size: int = 1 << 18) -> None:
        self.partitions = partitions
        self.cache: dict[str, int] = {}
        self.cache_size = cache_size

    def __call__(self, user_id: str) -> int:
        p = self.cache.get(user_id)
        if p is None:
            if len(self.cache) >= self.cache_size:
                self.cache.clear()
            p = self.cache[user_id] = (murmur2(user_id.encode()) & 0x7FFFFFFF) % self.partitions
        return p


class StateStore:
    """Decoded states of owned users, folded in memory and written back once per flush.

    The cache is exact while this worker owns the user's partition (it is the only
    writer); it is dropped on every rebalance (:meth:`forget`).
    """

    def __init__(
        self,
        table: Table,
        changelog: str,
        writer: Writer,
        partition_of: Callable[[str], int],
        *,
        companions: Sequence[Companion] = (),
        cache_size: int = 200_000,
    ) -> None:
        self.table = table
        self.changelog = changelog
        self.writer = writer
        self.partition_of = partition_of
        self.companions = list(companions)  # written with the states, in their epoch
        self.cache: dict[str, UserState] = {}
        self.cache_size = cache_size
        self.unsaved: dict[str, int] = {}  # user_id -> partition: folded, not yet written
        self.marks: dict[Any, int] = {}  # source partition -> highest offset the flush covers
        self.waiting = 0  # records applied and not yet covered by a flush
        self.flushes = 0  # flushes so far: what was folded before the last one is written
        # the bytes of cached states not changed since they were read or written: what the
        # ranking process is handed, without encoding them again
        self.encoded: dict[str, bytes] = {}

    def read(self, user_id: str) -> UserState | None:
        """The cached state, else the one in the partition's RocksDB (read directly: Faust's
        table layers cost more than the read, and the key's partition is known)."""
        state = self.cache.get(user_id)
        if state is None:
            partition = self.partition_of(user_id)
            try:
                raw = self.table.data._db_for_partition(partition).get(user_id.encode())
            except Exception as exc:  # rocksdict raises plain Exceptions ("IO error: ...")
                raise StorageFailed(f"RocksDB read in partition {partition} failed: {exc}") from exc
            if raw is None:
                return None
            state = self._remember(decode(raw))
            self.encoded[user_id] = raw
        return state

    def peek(self, user_id: str) -> UserState | bytes | None:
        """The cached state, else the stored bytes as they are (not decoded, not cached:
        a reader that only passes them on saves the decode), else None."""
        state = self.cache.get(user_id)
        if state is not None:
            return state
        partition = self.partition_of(user_id)
        try:
            raw = self.table.data._db_for_partition(partition).get(user_id.encode())
        except Exception as exc:  # rocksdict raises plain Exceptions ("IO error: ...")
            raise StorageFailed(f"RocksDB read in partition {partition} failed: {exc}") from exc
        return raw

    def read_or_new(self, user_id: str, config: InterestConfig) -> UserState:
        return self.read(user_id) or self._remember(new_state(user_id, config))

    def _remember(self, state: UserState) -> UserState:
        if len(self.cache) >= self.cache_size:
            oldest = next(iter(self.cache))
            if oldest in self.unsaved:
                self.flush()
            del self.cache[oldest]
            self.encoded.pop(oldest, None)
        self.cache[state.user_id] = state
        return state

    def changed(self, user_id: str, partition: int) -> None:
        """The user's state was folded: write it at the next flush."""
        self.unsaved[user_id] = partition
        self.encoded.pop(user_id, None)

    def touched(self, user_id: str) -> None:
        """The cached state may differ from its bytes (a fold that applied nothing may
        still align its model or half-lives)."""
        self.encoded.pop(user_id, None)

    def encoded_of(self, state: UserState) -> bytes:
        """The state's bytes: those read or written last if it has not changed since (taken:
        the next call encodes), else encoded now."""
        raw = self.encoded.pop(state.user_id, None)
        return raw if raw is not None else encode(state)

    def applied(self, marks: Mapping[Any, int], records: int) -> None:
        """Records whose effects the next flush writes (acknowledged after its delivery),
        as high-water marks per source partition."""
        for tp, offset in marks.items():
            if offset > self.marks.get(tp, -1):
                self.marks[tp] = offset
        self.waiting += records

    def flush(self) -> None:
        """Write every state folded since the last flush, once, in one RocksDB batch per
        partition; its records are acknowledged when the changelog records are delivered
        (stream.worker.table_writer)."""
        cache = self.cache
        writes = [
            (partition, user_id.encode(), encode(cache[user_id]))  # unsaved: never evicted
            for user_id, partition in self.unsaved.items()
        ]
        if writes:
            self.writer.put_many(self.table.data, self.changelog, writes)
            sizes = metrics.STATE_BYTES
            encoded = self.encoded
            for _, key, value in writes:
                sizes.observe(len(value))
                encoded[key.decode()] = value
        for companion in self.companions:
            companion.write()
        self.unsaved.clear()
        self.writer.seal(self.marks)
        self.marks = {}
        self.waiting = 0
        self.flushes += 1
        self.writer.poll()

    def delete(self, partition: int, user_ids: list[str]) -> None:
        """Remove users from the table (and their changelog) and from the cache."""
        store = self.table.data
        for user_id in user_ids:
            self.writer.put(store, self.changelog, partition, user_id.encode(), None)
            self.cache.pop(user_id, None)
            self.unsaved.pop(user_id, None)
            self.encoded.pop(user_id, None)

    def owned(self, partitions: set[int]) -> Iterator[tuple[str, int, UserState]]:
        """Every stored state of the given partitions (for scans after a rebalance)."""
        for key, raw in self.table.items():
            user_id = key.decode() if isinstance(key, bytes) else str(key)
            partition = self.partition_of(user_id)
            if partition in partitions:
                yield user_id, partition, decode(raw)

    def heads(self, partitions: set[int]) -> Iterator[tuple[str, int, int, int | None]]:
        """(user_id, partition, events applied, last Kafka timestamp) of every state of
        these partitions, from the headers (a scan after a rebalance; no full decode). A
        cached state, possibly folded further, answers for itself."""
        cache = self.cache
        for key, raw in self.table.items():
            user_id = key.decode() if isinstance(key, bytes) else str(key)
            partition = self.partition_of(user_id)
            if partition not in partitions:
                continue
            state = cache.get(user_id)
            if state is not None:
                yield user_id, partition, state.events_applied, state.last_event_kafka_ts
            else:
                _, kafka_ts, events = read_head(raw)
                yield user_id, partition, events, kafka_ts

    def forget(self) -> None:
        """Drop every cached state with what was folded into it and not yet written:
        after a rebalance those records are read again from the committed offsets."""
        self.writer.forget()
        self.rollback()

    def rollback(self) -> None:
        """Back to the last flush: drop the cached states (some may hold half a fold) with
        what was folded since, which the caller folds again (stream.worker.apply)."""
        for companion in self.companions:
            companion.forget()
        self.unsaved.clear()
        self.marks.clear()
        self.waiting = 0
        self.cache.clear()
        self.encoded.clear()
