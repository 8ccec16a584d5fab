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

No record can stop a partition: when handling a fetch fails for a reason that is not fatal
(:class:`stream.core.errors.FatalError`: the broker gone, the disk full), the states go back
to the last flush, the fetches folded since are folded again (their records, dead letters
and forwards were already sent, so only the states are rebuilt), and the failed fetch is
handled one record at a time. A record that fails ``ATTEMPTS`` times alone goes to the
dead-letter topic as ``unprocessable`` with the error, and the partition moves on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import orjson

from stream.core.dedup import BEYOND, DUPLICATE, FRESH
from stream.core.errors import FatalError
from stream.core.events import EventParser
from stream.core.interest import InterestConfig, UserState, fold_batch
from stream.core.messages import DLQ_MAX_ORIGINAL_BYTES, dead_letter, now_ms
from stream.core.scheduling import DirtyUsers
from stream.core.trending import rows_by_category
from stream.core.types import EventBatch, ItemVectors, Rejection, RejectReason
from stream.worker import metrics
from stream.worker.batch_consumer import high_water
from stream.worker.dedup import DedupStore
from stream.worker.rescore import PublishedLog
from stream.worker.state_store import StateStore

log = logging.getLogger("interest.apply")

REKEY_SOURCE_BASE = 1 << 16  # positions from the re-key topic never collide with the events'
ATTEMPTS = 3  # tries of one record alone before it is dead-lettered as unprocessable


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
        max_original: int = DLQ_MAX_ORIGINAL_BYTES,
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
        self.max_original = max_original  # bytes of a rejected value its dead letter carries
        self.last_applied = 0.0  # monotonic time of the last batch
        self._epoch = states.flushes
        self._folded: list[Sequence[Any]] = []  # fetches folded since the last flush

    async def __call__(self, records: Sequence[Any]) -> None:
        """Fold one fetch of event records (Kafka records: ``timestamp`` in ms)."""
        self.last_applied = time.monotonic()
        try:
            self._fold_fetch(records)
        except FatalError:
            raise
        except Exception as exc:
            log.warning(
                "a fetch of %d records failed (%s: %s): handling them one at a time",
                len(records),
                type(exc).__name__,
                exc,
            )
            self._isolate(records)
        else:
            self._since_flush().append(records)
        if self.states.waiting >= self.flush_after:
            self.states.flush()
        else:
            self.producer.poll()

    def _fold_fetch(self, records: Sequence[Any], replay: bool = False) -> None:
        """Decode, route, check and fold one fetch. With ``replay`` (rebuilding states after
        a rollback) nothing is sent or counted: that was done the first time."""
        now = now_ms()
        stamps = [r.timestamp if r.timestamp and r.timestamp > 0 else now for r in records]
        events, rejected = self.parser().parse_batch([r.value for r in records], stamps, now)
        if not replay:
            for i, rejection in rejected:
                self.reject(rejection, records[i])
        routed = self._route(records, events, stamps, replay)
        duplicates = self._drop_known_ids(routed, records, replay)
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
        self.states.applied(high_water(records), len(records))
        if replay:
            return
        if self.trending:
            self._forward_trending(routed)
        for type_, n in result.applied_by_type.items():
            metrics.EVENTS.labels(type=type_).inc(n)
        if result.duplicates + duplicates:
            metrics.DUPLICATES.inc(result.duplicates + duplicates)

    def _since_flush(self) -> list[Sequence[Any]]:
        """The fetches folded since the last flush (what a rollback must fold again)."""
        if self._epoch != self.states.flushes:
            self._epoch = self.states.flushes
            self._folded = []
        return self._folded

    def _rollback(self) -> None:
        """Back to the states of the last flush plus the fetches folded since, cleanly."""
        self.states.rollback()
        try:
            for records in list(self._since_flush()):
                self._fold_fetch(records, replay=True)
        except FatalError:
            raise
        except Exception as exc:  # it worked the first time: something beyond one record
            raise FatalError(f"records applied before fail when folded again: {exc}") from exc

    def _isolate(self, records: Sequence[Any]) -> None:
        """Handle a failed fetch one record at a time; dead-letter what keeps failing."""
        self._rollback()
        for record in records:
            error: Exception | None = None
            for _ in range(ATTEMPTS):
                try:
                    self._fold_fetch([record])
                except FatalError:
                    raise
                except Exception as exc:
                    error = exc
                    self._rollback()
                    continue
                self._since_flush().append([record])
                break
            else:
                assert error is not None
                self._unprocessable(record, error)

    def _unprocessable(self, record: Any, error: Exception) -> None:
        """Dead-letter a record that failed every attempt; it counts as handled."""
        log.error(
            "record %s[%d]@%d dead-lettered as unprocessable after %d attempts: %s: %s",
            record.topic,
            record.partition,
            record.offset,
            ATTEMPTS,
            type(error).__name__,
            error,
        )
        try:
            self.reject(
                Rejection(RejectReason.unprocessable, f"{type(error).__name__}: {error}"[:2000]),
                record,
            )
        except FatalError:
            raise
        except Exception as exc:  # a bounded dead letter that cannot be sent: not the record
            raise FatalError(f"cannot send a dead letter: {exc}") from exc
        self.states.applied(high_water([record]), 1)

    def _route(
        self, records: Sequence[Any], events: EventBatch, stamps: list[int], replay: bool
    ) -> _Routed:
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
                    if not replay:
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

    def _drop_known_ids(self, routed: _Routed, records: Sequence[Any], replay: bool) -> int:
        """Keep the events whose ids were not applied before (stream.core.dedup): an id
        re-sent is a duplicate, an event older than the id retention is dead-lettered (unless
        the settings apply it anyway). Returns the duplicates dropped."""
        parts = [routed.partitions[s] for s in routed.slots.tolist()]
        verdict = self.dedup.check(routed.events, parts, routed.sources, routed.offsets)
        if not (verdict != FRESH).any():
            return 0
        for i in [] if replay else np.flatnonzero(verdict == BEYOND).tolist():
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
            else:
                self.states.touched(state.user_id)
            if n or self.published.unpublished(state):
                self.dirty.mark(partition, state.user_id, state.last_event_kafka_ts or 0)

    def _forward_trending(self, routed: _Routed) -> None:
        """The fetch's events, one record per category, for the trending aggregation."""
        grouped = rows_by_category(routed.events, routed.sources, routed.offsets)
        for category, entries in grouped.items():
            self.producer.produce(self.topics.by_category, category.encode(), orjson.dumps(entries))

    def reject(self, rejection: Rejection, record: Any) -> None:
        """Dead-letter a bad record with the reason, and count it (CONTRACT section 1)."""
        letter = dead_letter(
            rejection,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            value=record.value,
            max_original=self.max_original,
        )
        metrics.REJECTED.labels(reason=rejection.reason).inc()
        self.producer.produce(self.topics.dlq, record.key, orjson.dumps(letter))
