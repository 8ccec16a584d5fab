"""The trending aggregation in the stream: per-category folds, snapshots, every worker's view.

Applied events arrive grouped per category on a category-keyed topic; :class:`TrendAggregator`
collects them and, once per publication interval, folds them into the per-category table
(one write per changed category, deduplicated by source position) and publishes the
snapshots of the changed categories to a compacted topic. No worker owns all categories,
so every worker follows that topic from the beginning in a background thread
(:class:`TrendingFollower`, no consumer group) and ranks from its local view without any
network call.

A by-category record that cannot be read, or a category whose fold fails, is dead-lettered
as ``unprocessable`` (through ``reject``, the apply handler's) and the others go on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import orjson

from stream.config import Settings
from stream.core.codec import decode_trend, encode_trend
from stream.core.errors import FatalError
from stream.core.messages import now_ms
from stream.core.trending import (
    CategoryTrend,
    TrendConfig,
    fold_trends,
    global_top,
    new_trend,
    snapshot,
)
from stream.core.types import EventBatch, Rejection, RejectReason
from stream.worker import metrics
from stream.worker.batch_consumer import high_water
from stream.worker.kafka_clients import snapshot_consumer
from stream.worker.state_store import Table, Writer

log = logging.getLogger("interest.trending")


class Producer(Protocol):
    """What the aggregator needs to send snapshots (stream.worker.table_writer.TableWriter)."""

    def produce(
        self, topic: str, key: bytes | None, value: bytes | None, partition: int = -1
    ) -> None: ...


class TrendAggregator:
    """The by-category batch handler and the snapshot publisher.

    Batches are only collected; every ``publish`` round folds what was collected into the
    categories' trends (all at once, stream.core.trending.fold_trends), writes each changed
    trend once, publishes its snapshot and then acknowledges the collected records. Trends of
    owned categories stay decoded in memory: this worker is their only writer."""

    def __init__(
        self,
        table: Table,
        changelog: str,
        writer: Writer,
        snapshots: str,
        config: TrendConfig,
        reject: Callable[[Rejection, Any], None] = lambda _rejection, _record: None,
    ) -> None:
        self.table = table
        self.reject = reject  # dead-letters a record (stream.worker.apply.ApplyHandler.reject)
        self.changelog = changelog
        self.writer = writer
        self.snapshots = snapshots  # the compacted snapshots topic
        self.config = config
        self.cache: dict[str, CategoryTrend] = {}
        self.pending: dict[str, tuple[int, list[list[Any]]]] = {}  # category -> (partition, rows)
        self.marks: dict[Any, int] = {}

    async def fold(self, batch: Sequence[Any]) -> None:
        """Collect one fetch of by-category records (folded at the next publish)."""
        for msg in batch:
            try:
                category = msg.key.decode()
                rows = orjson.loads(msg.value)
                if not isinstance(rows, list) or not all(
                    isinstance(r, list) and len(r) == 7 for r in rows
                ):
                    raise ValueError("not a list of 7-column rows")
            except Exception as exc:
                self.reject(
                    Rejection(RejectReason.unprocessable, f"{type(exc).__name__}: {exc}"), msg
                )
                continue
            entry = self.pending.get(category)
            if entry is None:
                entry = self.pending[category] = (msg.partition, [])
            entry[1].extend(rows)
        for tp, offset in high_water(batch).items():
            if offset > self.marks.get(tp, -1):
                self.marks[tp] = offset

    def forget(self) -> None:
        """A rebalance: what was collected is read again from the committed offsets by the
        partitions' owners, and trends are read from the table again."""
        self.pending.clear()
        self.marks.clear()
        self.cache.clear()

    def _trend(self, category: str, partition: int) -> CategoryTrend:
        trend = self.cache.get(category)
        if trend is None:
            raw = self.table.data._db_for_partition(partition).get(category.encode())
            trend = decode_trend(raw) if raw else new_trend(category, self.config)
            self.cache[category] = trend
        return trend

    async def publish(self) -> None:
        """Fold, write and publish every category with collected events; acknowledge them."""
        pending, self.pending = self.pending, {}
        marks, self.marks = self.marks, {}
        if pending:
            try:
                self._fold_and_write(pending)
            except FatalError:
                raise
            except Exception as exc:  # one category at a time: the failing ones are dropped
                log.warning("trend fold failed (%s); folding one category at a time", exc)
                self.cache.clear()  # some trends may hold half a fold: read them again
                for category, entry in pending.items():
                    try:
                        self._fold_and_write({category: entry})
                    except FatalError:
                        raise
                    except Exception as one:
                        self.cache.pop(category, None)
                        log.error(
                            "dropped %d events of category %r: %s: %s",
                            len(entry[1]),
                            category,
                            type(one).__name__,
                            one,
                        )
                        metrics.REJECTED.labels(reason=RejectReason.unprocessable).inc(
                            len(entry[1])
                        )
        self.writer.seal(marks)
        self.writer.poll()

    def _fold_and_write(self, pending: dict[str, tuple[int, list[list[Any]]]]) -> None:
        names = list(pending)
        trends = [self._trend(c, pending[c][0]) for c in names]
        rows = [(n, row) for n, c in enumerate(names) for row in pending[c][1]]
        cols = list(zip(*(row for _, row in rows), strict=True))  # user, item, type, ts, w, p, o
        batch = EventBatch(
            rows=np.arange(len(rows), dtype=np.int64),
            user_id=list(cols[0]),
            item_id=list(cols[1]),
            type=list(cols[2]),
            ts=np.asarray(cols[3], np.int64),
            event_id=[""] * len(rows),
            category=[names[n] for n, _ in rows],
            weight=np.asarray(cols[4], np.float64),
        )
        applied = fold_trends(
            trends,
            batch,
            np.asarray([n for n, _ in rows], np.int64),
            self.config,
            sources=list(cols[5]),
            offsets=list(cols[6]),
        )
        published_at = now_ms()
        writes = []
        for trend, n in zip(trends, applied.tolist(), strict=True):
            if not n:
                continue
            key = trend.category.encode()
            writes.append((pending[trend.category][0], key, encode_trend(trend)))
            snap = snapshot(trend, self.config.max_items)
            snap["published_at"] = published_at
            self.writer.produce(self.snapshots, key, orjson.dumps(snap))
        self.writer.put_many(self.table.data, self.changelog, writes)


def follow_snapshots(settings: Settings, topic: str) -> TrendingFollower:
    """A started follower of the snapshots topic (the ranking process runs its own)."""
    return TrendingFollower(lambda: snapshot_consumer(settings, topic)).start()


class SnapshotConsumer(Protocol):
    """What the follower needs of a confluent-kafka consumer assigned to every partition."""

    def consume(self, num_messages: int, timeout: float) -> list[Any]: ...

    def close(self) -> None: ...


class TrendingFollower:
    """Follows the snapshots topic into a dict; recomputes the global top now and then."""

    def __init__(self, connect: Callable[[], SnapshotConsumer]) -> None:
        self.connect = connect
        self.view: dict[str, dict[str, Any]] = {}
        self.top: list[tuple[str, str | None, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trending-follower", daemon=True)

    def start(self) -> TrendingFollower:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def current(self) -> tuple[dict[str, dict[str, Any]], list[tuple[str, str | None, float]]]:
        """(category -> snapshot, global top) as of now, for one ranking batch."""
        return self.view, self.top

    def _run(self) -> None:
        consumer: SnapshotConsumer | None = None
        last_top = 0.0
        while not self._stop.is_set():
            try:
                if consumer is None:
                    consumer = self.connect()
                self.poll(consumer)
                if time.monotonic() - last_top > 1.0:
                    self.top = global_top(self.view)
                    last_top = time.monotonic()
            except Exception:
                log.warning("trending follower failed; retrying", exc_info=True)
                consumer = None
                self._stop.wait(1.0)
        if consumer is not None:
            consumer.close()

    def poll(self, consumer: SnapshotConsumer) -> None:
        """Apply one poll's snapshots (a None value deletes its category)."""
        for msg in consumer.consume(500, 0.2):
            if msg.error() or msg.key() is None:
                continue
            category = msg.key().decode()
            if msg.value() is None:
                self.view.pop(category, None)
                continue
            snap = orjson.loads(msg.value())
            self.view[category] = snap
            published = snap.get("published_at")
            if published:
                metrics.TRENDING_STALENESS.set(max(0.0, time.time() - published / 1000))
