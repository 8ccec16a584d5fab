"""A Faust transport that hands the records of chosen topics to a handler one fetch at a time,
and commits them by per-partition high-water marks.

Faust delivers every record on its own: the fetch loop builds a Message and awaits
``wait_first`` (two new tasks) per record, the conductor builds an Event, and the stream
pulls it through a queue, sensors and acks. On a 2-core machine that caps a Faust agent
that does nothing at about 6,000 records/s, 50 times below what the Kafka client reads. The
interest pipeline folds records in batches anyway, so for its source topics this consumer
skips the per-record path: the Kafka client's records of one fetch go to the handler as one
list, untouched, and are acknowledged per partition with the highest offset whose effects
are written (:meth:`BatchConsumer.acknowledge`), not record by record. Offsets are committed
for acknowledged records only: at-least-once, as with an agent, and the core's position
deduplication makes a replay harmless.

Everything else stays Faust's: group membership, the co-partitioning assignor, table
changelogs, recovery and standbys, offset commits, flow control during rebalances, and
every other topic (delivered record by record as before).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, cast

import faust
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from mode import Service

log = logging.getLogger("interest.consumer")

BatchHandler = Callable[[Sequence[Any]], Awaitable[None]]


class _Route:
    __slots__ = ("acks", "handler")

    def __init__(self, handler: BatchHandler, acks: bool) -> None:
        self.handler = handler
        self.acks = acks


def high_water(records: Sequence[Any]) -> dict[TP, int]:
    """The highest offset per partition among Kafka records (what a batch acknowledges)."""
    marks: dict[TP, int] = {}
    for r in records:
        tp = TP(r.topic, r.partition)
        if r.offset > marks.get(tp, -1):
            marks[tp] = r.offset
    return marks


class BatchConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer, with batch delivery for the topics in ``batch_routes``."""

    @property
    def batch_acked(self) -> dict[TP, int]:
        """Highest acknowledged offset per partition of the batch-delivered topics."""
        acked: dict[TP, int] | None = getattr(self, "_batch_acked", None)
        if acked is None:
            acked = self._batch_acked = {}
        return acked

    def acknowledge(self, marks: Mapping[TP, int]) -> None:
        """Records up to these offsets have their effects in Kafka: commit past them."""
        acked = self.batch_acked
        for tp, offset in marks.items():
            if offset > acked.get(tp, -1):
                self._n_acked += offset - acked.get(tp, offset - 1)
                acked[tp] = offset

    def _filter_tps_with_pending_acks(self, topics: Any = None) -> Iterator[TP]:
        yield from super()._filter_tps_with_pending_acks(topics)
        for tp in self.batch_acked:
            if topics is None or tp in topics or tp.topic in topics:
                yield tp

    def _new_offset(self, tp: TP) -> int | None:
        acked = self.batch_acked.get(tp)
        if acked is not None:
            return acked + 1
        return super()._new_offset(tp)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        for tp in revoked:
            self.batch_acked.pop(tp, None)
        await super().on_partitions_revoked(revoked)

    async def _drain_messages(self, fetcher: Any) -> None:  # the fetch loop, one fetch a turn
        routes: dict[str, _Route] = getattr(self.app, "batch_routes", {})
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self.diag.set_flag(CONSUMER_FETCHING)
                await self.sleep(0)
                if self.should_stop:
                    break
                records, active = await self._wait_next_records(1.0)
                generation = self.app.consumer_generation_id
                if not records or self.should_stop:
                    continue
                if not self.flow_active:
                    await self.perform_seek()  # as Faust does: back to committed offsets
                    continue
                batches: dict[int, tuple[_Route, list[Any]]] = {}
                for tp, tp_records in records.items():
                    if (
                        active is not None
                        and tp not in active
                        and tp not in self._buffered_partitions
                    ):
                        continue
                    route = routes.get(tp.topic)
                    if route is None:
                        await self._deliver_one_by_one(tp, tp_records)
                        continue
                    fresh = self._unread(tp, tp_records)
                    if fresh:
                        batches.setdefault(id(route.handler), (route, []))[1].extend(fresh)
                for route, batch in batches.values():
                    await self._deliver_batch(route, batch, generation)
                if self._n_acked >= (self._commit_every or 1 << 62):
                    self._n_acked = 0
                    await self.commit()
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)

    def _unread(self, tp: TP, tp_records: list[Any]) -> list[Any]:
        """The records from the partition's read offset on (Faust's rule: a seek sets it to
        the next offset to read, so a record at it is new)."""
        r_offset = self._read_offset[tp]
        if r_offset is not None and tp_records and tp_records[0].offset < r_offset:
            tp_records = [r for r in tp_records if r.offset >= r_offset]
        if tp_records:
            self._read_offset[tp] = tp_records[-1].offset
        return tp_records

    async def _deliver_one_by_one(self, tp: TP, tp_records: list[Any]) -> None:
        """Faust's own path for the other topics (changelogs, the snapshots, the assignor)."""
        callback = self.callback
        acks_enabled = self.app.topics.acks_enabled_for(tp.topic)
        for record in tp_records:
            if not self.flow_active:
                return
            r_offset = self._read_offset[tp]
            offset = record.offset
            if r_offset is not None and offset < r_offset:
                continue
            if r_offset and offset - r_offset > 1 and acks_enabled:
                await self._add_gap(tp, r_offset + 1, offset)
            message = self._to_message(tp, record)
            await self.wait_first(callback(message), self.suspend_flow.wait())
            self._read_offset[tp] = offset

    async def _deliver_batch(self, route: _Route, records: list[Any], generation: int) -> None:
        """Hand over one fetch's records of a route (then acknowledge them, if the route
        does not acknowledge itself)."""
        # Like Faust's own delivery, race the wait against suspend_flow, which a rebalance or
        # a stop sets: a plain wait on the suspended flow would keep a stopping worker forever.
        await self.wait_first(self.app.producer.buffer.wait_until_ebb(), self.suspend_flow.wait())
        if not (self.flow_active and self.app.flow_control.is_active()):
            return  # a rebalance or a stop began: these records are read again, unacknowledged
        if self.app.consumer_generation_id != generation:
            log.debug("dropped %d records fetched before a rebalance", len(records))
            return  # the partitions' new owners read them again
        await route.handler(records)
        if route.acks:
            self.acknowledge(high_water(records))


class BatchTransport(faust_aiokafka.Transport):
    Consumer = BatchConsumer


class BatchApp(faust.App):
    """A Faust app whose consumer delivers the topics of ``batch_routes`` in batches."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batch_routes: dict[str, _Route] = {}
        self.before_final_commit: Callable[[], None] | None = None  # see _stop_consumer

    async def _stop_consumer(self) -> None:
        """A clean stop: no batch is delivered any more, then ``before_final_commit`` writes
        what was folded and waits for its delivery (the tables are still open), so the
        consumer's last commit covers those records and a restart reads nothing again."""
        consumer, hook = self._consumer, self.before_final_commit
        if consumer is not None and hook is not None:
            consumer.stop_flow()
            self.flow_control.suspend()
            try:
                hook()
            except Exception:
                log.exception("writing the folded states at stop failed; they are read again")
        await super()._stop_consumer()

    def _new_transport(self) -> Any:
        return BatchTransport(self.conf.broker_consumer, self)

    def batch_route(self, topic: faust.TopicT, handler: BatchHandler, *, acks: bool = True) -> None:
        """Subscribe ``topic`` (every name it covers) and deliver its records to ``handler``
        as lists of Kafka records (aiokafka ConsumerRecords: ``timestamp`` in ms).

        With ``acks=False`` the handler must call ``app.consumer.acknowledge`` with the
        high-water marks of records whose effects are written."""
        for name in topic.topics:
            self.batch_routes[name] = _Route(handler, acks)
        self.topics.add(topic)
