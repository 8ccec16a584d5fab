"""The apply handler: one fetch of event records -> folded user states, dirty users.

stream.worker.batch_consumer delivers the records of each fetch as one list. The whole
fetch is decoded at once (stream.core.events ``parse_batch``) and folded at once
(stream.core.interest ``fold_batch``); what stays per record in Python is routing it (is it
on its user's partition, under its user's key?) and its dedup check. Nothing in here
awaits, so no rebalance can fall between reading a state and folding into it.

Bad records go to the dead-letter topic; records keyed by something else than their user
id, or on another partition than murmur2 gives that id, are re-keyed first, so one user's
state is never split; applied events are forwarded, grouped per category, to the trending
aggregation.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import orjson

from stream.core.dedup import BEYOND, DUPLICATE, FRESH
from stream.core.events import EventParser
from stream.core.interest import InterestConfig, UserState, fold_batch
from stream.core.messages import dead_letter, now_ms
from stream.core.scheduling import DirtyUsers
from stream.core.types import EventBatch, ItemVectors, Rejection, RejectReason
from stream.worker import metrics
from stream.worker.batch_consumer import high_water
from stream.worker.dedup import DedupStore
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
class _Routed:
    """The events of one fetch that belong here, with the users' states and positions."""

    events: EventBatch
    slots: np.ndarray  # event -> index into states
    states: list[UserState]
    partitions: list[int]  # per state: the user's partition
    sources: list[int]  # per event: source partition (re-key topic offset by the base)
    offsets: list[int]
    kafka_ts: list[int]


class ApplyHandler:
    """Folds one fetch of event records into the owned users' states."""

    def __init__(
        self,
        parser: Callable[[], EventParser],
        states: StateStore,
        dedup: DedupStore,
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
        self.dedup = dedup
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

    async def __call__(self, records: Sequence[Any]) -> None:
        """Fold one fetch of event records (Kafka records: ``timestamp`` in ms)."""
        self.last_applied = time.monotonic()
        now = now_ms()
        stamps = [r.timestamp if r.timestamp and r.timestamp > 0 else now for r in records]
        events, rejected = self.parser().parse_batch([r.value for r in records], stamps, now)
        for i, rejection in rejected:
            self.reject(rejection, records[i])
        routed = self._route(records, events, stamps)
        duplicates = self._drop_known_ids(routed, records)
        result = fold_batch(
            routed.states,
            routed.events,
            routed.slots,
            self.config,
            vectors=self.vectors(),
            sources=routed.sources,
            offsets=routed.offsets,
            kafka_ts=routed.kafka_ts,
        )
        self._mark(routed, result.applied)
        if self.trending:
            self._forward_trending(routed)
        for type_, n in result.applied_by_type.items():
            metrics.EVENTS.labels(type=type_).inc(n)
        if result.duplicates + duplicates:
            metrics.DUPLICATES.inc(result.duplicates + duplicates)
        self.states.applied(high_water(records), len(records))
        if self.states.waiting >= self.flush_after:
            self.states.flush()
        else:
            self.producer.poll()

    def _route(self, records: Sequence[Any], events: EventBatch, stamps: list[int]) -> _Routed:
        """Keep the events on their user's partition under their user's key; re-key the
        others through the re-key topic (they come back here, or to their owner)."""
        rekey = self.topics.rekey
        partition_of = self.partition_of
        read = self.states.read_or_new
        config = self.config
        slot_of: dict[str, int] = {}
        states: list[UserState] = []
        partitions: list[int] = []
        keep: list[int] = []
        slots: list[int] = []
        sources: list[int] = []
        offsets: list[int] = []
        kafka_ts: list[int] = []
        for j, (row, user) in enumerate(zip(events.rows.tolist(), events.user_id, strict=True)):
            record = records[row]
            partition = partition_of(user)
            from_rekey = record.topic == rekey
            if not from_rekey:
                key = user.encode()
                if record.partition != partition or record.key != key:
                    self.producer.produce(rekey, key, record.value)
                    continue
            slot = slot_of.get(user)
            if slot is None:
                slot = slot_of[user] = len(states)
                states.append(read(user, config))
                partitions.append(partition)
            keep.append(j)
            slots.append(slot)
            sources.append(record.partition + (REKEY_SOURCE_BASE if from_rekey else 0))
            offsets.append(record.offset)
            kafka_ts.append(stamps[row])
        return _Routed(
            events.take(keep),
            np.asarray(slots, np.int64),
            states,
            partitions,
            sources,
            offsets,
            kafka_ts,
        )

    def _drop_known_ids(self, routed: _Routed, records: Sequence[Any]) -> int:
        """Keep the events whose ids were not applied before (stream.core.dedup): an id
        re-sent is a duplicate, an event older than the id retention is dead-lettered (unless
        the settings apply it anyway). Returns the duplicates dropped."""
        parts = [routed.partitions[s] for s in routed.slots.tolist()]
        verdict = self.dedup.check(routed.events, parts, routed.sources, routed.offsets)
        if not (verdict != FRESH).any():
            return 0
        for i in np.flatnonzero(verdict == BEYOND).tolist():
            ts = int(routed.events.ts[i])
            mark = self.dedup.watermark(parts[i])
            self.reject(
                Rejection(
                    RejectReason.beyond_dedup_retention,
                    f"event time {ts} is more than INTEREST_DEDUP_RETENTION_MS "
                    f"({self.dedup.config.retention_ms} ms) before partition {parts[i]}'s "
                    f"newest event time {mark}: its id can no longer be checked",
                ),
                records[int(routed.events.rows[i])],
            )
        keep = np.flatnonzero(verdict == FRESH).tolist()
        routed.events = routed.events.take(keep)
        routed.slots = routed.slots[keep]
        routed.sources = [routed.sources[i] for i in keep]
        routed.offsets = [routed.offsets[i] for i in keep]
        routed.kafka_ts = [routed.kafka_ts[i] for i in keep]
        return int((verdict == DUPLICATE).sum())

    def _mark(self, routed: _Routed, applied: np.ndarray) -> None:
        """States that changed are written at the next flush; users with events not yet
        published are rescored."""
        for state, partition, n in zip(
            routed.states, routed.partitions, applied.tolist(), strict=True
        ):
            if n:
                self.states.changed(state.user_id, partition)
            if n or self.published.unpublished(state):
                self.dirty.mark(partition, state.user_id, state.last_event_kafka_ts or 0)

    def _forward_trending(self, routed: _Routed) -> None:
        """The fetch's events, one record per category, for the trending aggregation."""
        ev = routed.events
        by_category: dict[str, list[list[Any]]] = defaultdict(list)
        rows = zip(
            ev.category,
            ev.user_id,
            ev.item_id,
            ev.type,
            ev.ts.tolist(),
            ev.weight.tolist(),
            routed.sources,
            routed.offsets,
            strict=True,
        )
        for category, *entry in rows:
            if category is not None:
                by_category[category].append(entry)
        for category, entries in by_category.items():
            self.producer.produce(self.topics.by_category, category.encode(), orjson.dumps(entries))

    def reject(self, rejection: Rejection, record: Any) -> None:
        """Dead-letter a bad record with the reason, and count it (CONTRACT section 1)."""
        letter = dead_letter(
            rejection,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            value=record.value,
        )
        metrics.REJECTED.labels(reason=rejection.reason).inc()
        self.producer.produce(self.topics.dlq, record.key, orjson.dumps(letter))
