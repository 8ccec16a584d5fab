"""The apply handler: one fetch of event records -> folded user states, dirty users.

stream.worker.batch_consumer delivers the records of each fetch as one list. Nothing in
here awaits, so no rebalance can fall between reading a state and folding into it. Bad
records go to the dead-letter topic; records keyed by something else than their user id,
or on another partition than murmur2 gives that id, are re-keyed first, so one user's state
is never split; applied events are forwarded, grouped per category, to the trending
aggregation.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from stream.core.events import EventParser
from stream.core.interest import InterestConfig, fold
from stream.core.messages import dead_letter, now_ms
from stream.core.scheduling import DirtyUsers
from stream.core.types import Event, ItemVectors, Rejection
from stream.worker import metrics
from stream.worker.rescore import PublishedLog
from stream.worker.state_store import StateStore

REKEY_SOURCE_BASE = 1 << 16  # positions from the re-key topic never collide with the events'


class Producer(Protocol):
    """What the handler needs to send records (stream.worker.table_writer.TableWriter)."""

    def produce(
        self, topic: str, key: bytes | None, value: bytes | None, partition: int = -1
    ) -> None: ...

    def poll(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Topics:
    """The names the handler produces to."""

    rekey: str
    by_category: str
    dlq: str


@dataclass(slots=True)
class _UserBatch:
    events: list[Event] = field(default_factory=list)
    positions: list[tuple[int, int]] = field(default_factory=list)
    kafka_ts: list[int] = field(default_factory=list)
    partition: int = 0


class ApplyHandler:
    """Folds one fetch of event records into the owned users' states."""

    def __init__(
        self,
        parser: Callable[[], EventParser],
        states: StateStore,
        published: PublishedLog,
        dirty: DirtyUsers,
        producer: Producer,
        topics: Topics,
        config: InterestConfig,
        *,
        vectors: Callable[[], ItemVectors | None],
        partition_of: Callable[[str], int],
        trending: bool,
        flush_after: int,
    ) -> None:
        self.parser = parser
        self.states = states
        self.published = published
        self.dirty = dirty
        self.producer = producer
        self.topics = topics
        self.config = config
        self.vectors = vectors
        self.partition_of = partition_of
        self.trending = trending
        self.flush_after = flush_after
        self.last_applied = 0.0  # monotonic time of the last batch

    async def __call__(self, batch: Sequence[Any]) -> None:
        """Fold one fetch of event records (a list of Kafka records)."""
        self.last_applied = time.monotonic()
        groups, forwards = self._group(batch)
        for key, value in forwards:
            self.producer.produce(self.topics.rekey, key, value)
        applied: dict[str, int] = defaultdict(int)
        duplicates = 0
        vectors = self.vectors()
        for user_id, group in groups.items():
            duplicates += self._fold_user(user_id, group, vectors, applied)
        if self.trending:
            self._forward_trending(groups)
        for type_, n in applied.items():
            metrics.EVENTS.labels(type=type_).inc(n)
        if duplicates:
            metrics.DUPLICATES.inc(duplicates)
        self.states.applied(list(batch))
        if self.states.waiting >= self.flush_after:
            self.states.flush()
        else:
            self.producer.poll()

    def _group(
        self, batch: Sequence[Any]
    ) -> tuple[dict[str, _UserBatch], list[tuple[bytes, bytes]]]:
        """Parse every record; group the valid ones by user, set aside those to re-key."""
        now = now_ms()
        parse = self.parser().parse
        groups: dict[str, _UserBatch] = {}
        forwards: list[tuple[bytes, bytes]] = []
        for msg in batch:
            ts_ms = int(msg.timestamp * 1000) if msg.timestamp else now
            result = parse(msg.value, key=msg.key, timestamp_ms=ts_ms, now_ms=now)
            if isinstance(result, Rejection):
                self.reject(result, msg)
                continue
            partition = self.partition_of(result.user_id)
            from_rekey = msg.topic == self.topics.rekey
            if not from_rekey and (
                msg.partition != partition or msg.key != result.user_id.encode()
            ):
                forwards.append((result.user_id.encode(), msg.value))
                continue
            group = groups.get(result.user_id)
            if group is None:
                group = groups[result.user_id] = _UserBatch(partition=partition)
            group.events.append(result)
            source = msg.partition + (REKEY_SOURCE_BASE if from_rekey else 0)
            group.positions.append((source, msg.offset))
            group.kafka_ts.append(ts_ms)
        return groups, forwards

    def _fold_user(
        self,
        user_id: str,
        group: _UserBatch,
        vectors: ItemVectors | None,
        applied: dict[str, int],
    ) -> int:
        """One read-modify-write of the user's state for all its events in the batch.

        Adds the applied events per type to ``applied``; returns the duplicates skipped.
        """
        state = self.states.read_or_new(user_id, self.config)
        result = fold(  # re-bases the vectors itself when the model changed
            state,
            group.events,
            self.config,
            vectors=vectors,
            positions=group.positions,
            kafka_ts=group.kafka_ts,
        )
        for type_, n in result.applied_by_type.items():
            applied[type_] += n
        if result.applied:
            self.states.changed(user_id, group.partition)
        if result.applied or self.published.unpublished(state):
            self.dirty.mark(group.partition, user_id, state.last_event_kafka_ts or 0)
        return result.duplicates

    def _forward_trending(self, groups: dict[str, _UserBatch]) -> None:
        """The batch's events, one record per category, for the trending aggregation."""
        by_category: dict[str, list[list[Any]]] = defaultdict(list)
        for group in groups.values():
            for event, (source, offset) in zip(group.events, group.positions, strict=True):
                if event.category is not None:
                    entry = [event.user_id, event.item_id, event.type, event.ts, event.weight]
                    by_category[event.category].append([*entry, source, offset])
        for category, entries in by_category.items():
            self.producer.produce(self.topics.by_category, category.encode(), orjson.dumps(entries))

    def reject(self, rejection: Rejection, msg: Any) -> None:
        """Dead-letter a bad record with the reason, and count it (CONTRACT section 1)."""
        record = dead_letter(
            rejection, topic=msg.topic, partition=msg.partition, offset=msg.offset, value=msg.value
        )
        metrics.REJECTED.labels(reason=rejection.reason).inc()
        self.producer.produce(self.topics.dlq, msg.key, orjson.dumps(record))
