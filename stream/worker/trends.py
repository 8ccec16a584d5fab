"""The trending aggregation in the stream: per-category folds, snapshots, every worker's view.

Applied events arrive grouped per category on a category-keyed topic; :class:`TrendAggregator`
folds each batch into the per-category table (one read-modify-write per category per batch,
deduplicated by source position) and publishes the snapshots of changed categories to a
compacted topic. No worker owns all categories, so every worker follows that topic from the
beginning in a background thread (:class:`TrendingFollower`, no consumer group) and ranks
from its local view without any network call.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import orjson

from stream.core.codec import decode_trend, encode_trend
from stream.core.messages import now_ms
from stream.core.trending import TrendConfig, fold_trend, global_top, new_trend, snapshot
from stream.core.types import Event
from stream.worker import metrics
from stream.worker.batch_consumer import high_water
from stream.worker.state_store import PartitionContexts, Table, Writer

log = logging.getLogger("interest.trending")


class SnapshotSender(Protocol):
    """Faust's topic ``send`` (the snapshots topic)."""

    async def send(self, *, key: bytes, value: bytes) -> Any: ...


class TrendAggregator:
    """The by-category batch handler and the snapshot publisher."""

    def __init__(
        self,
        table: Table,
        changelog: str,
        writer: Writer,
        contexts: PartitionContexts,
        snapshots: SnapshotSender,
        config: TrendConfig,
    ) -> None:
        self.table = table
        self.changelog = changelog
        self.writer = writer
        self.contexts = contexts
        self.snapshots = snapshots
        self.config = config
        self.changed: dict[str, int] = {}  # category -> its partition, not yet published

    async def fold(self, batch: Sequence[Any]) -> None:
        """Fold one fetch of by-category records; acknowledged once their writes are delivered."""
        groups: dict[str, tuple[int, list[Event], list[tuple[int, int]]]] = {}
        for msg in batch:
            category = msg.key.decode()
            group = groups.setdefault(category, (msg.partition, [], []))
            for user, item, type_, ts, weight, source, offset in orjson.loads(msg.value):
                group[1].append(Event(user, item, type_, ts, "", category, weight))
                group[2].append((source, offset))
        store = self.table.data
        for category, (partition, events, positions) in groups.items():
            key = category.encode()
            with self.contexts(partition):
                raw = self.table.get(key)
            trend = decode_trend(raw) if raw else new_trend(category, self.config)
            if fold_trend(trend, events, self.config, positions):
                self.writer.put(store, self.changelog, partition, key, encode_trend(trend))
                self.changed[category] = partition
        self.writer.seal(high_water(batch))
        self.writer.poll()

    def forget(self, partitions: set[int]) -> None:
        """Partitions moved away: their changes are the new owner's to publish."""
        self.changed = {c: p for c, p in self.changed.items() if p not in partitions}

    async def publish(self) -> None:
        """Publish the snapshots of categories that changed since the last round."""
        changed, self.changed = self.changed, {}
        published_at = now_ms()
        for category, partition in changed.items():
            with self.contexts(partition):
                raw = self.table.get(category.encode())
            if raw is None:
                continue
            snap = snapshot(decode_trend(raw), self.config.max_items)
            snap["published_at"] = published_at
            await self.snapshots.send(key=category.encode(), value=orjson.dumps(snap))


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
