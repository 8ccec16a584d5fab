"""What the worker does besides applying and rescoring: gauges, lag, expiry, recovery scans,
and following the model's version.
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

from stream.core.events import EventParser
from stream.core.interest import is_expired
from stream.core.messages import now_ms
from stream.core.scheduling import DirtyUsers
from stream.core.types import Scorer
from stream.worker import metrics
from stream.worker.rescore import PublishedLog
from stream.worker.state_store import StateStore

log = logging.getLogger("interest.housekeeping")


class ModelTracker:
    """The parser for the loaded model's catalog, and the model-info gauge.

    A new model version brings a new catalog (categories for events that carry none)."""

    def __init__(
        self, scorer: Scorer, make_parser: Callable[[Mapping[str, str]], EventParser]
    ) -> None:
        self.scorer = scorer
        self.make_parser = make_parser
        self._parser = make_parser(scorer.catalog)
        self._version: str | None = None
        self._seen = False
        self.refresh()

    def refresh(self) -> None:
        version = self.scorer.model_version
        if self._seen and version == self._version:
            return
        if self._seen:
            self._parser = self.make_parser(self.scorer.catalog)
        self._version, self._seen = version, True
        metrics.MODEL_INFO.clear()
        if version is not None:
            metrics.MODEL_INFO.labels(version=version).set(1)

    def parser(self) -> EventParser:
        self.refresh()
        return self._parser


class PendingScan:
    """After a (re)assignment, find users applied but never published (a crash between).

    Runs once the state stores are complete: scanning at assignment time would read stores
    still being opened or restored."""

    def __init__(
        self,
        states: StateStore,
        published: PublishedLog,
        dirty: DirtyUsers,
        active_partitions: Callable[[], set[int]],
        in_recovery: Callable[[], bool],
    ) -> None:
        self.states = states
        self.published = published
        self.dirty = dirty
        self.active_partitions = active_partitions
        self.in_recovery = in_recovery
        self.pending = False

    async def on_recovered(self) -> None:
        self.pending = True

    def run(self) -> int:
        """Mark every owned state with unpublished events dirty; returns how many."""
        actives = self.active_partitions()
        if not self.pending or self.in_recovery() or not actives:
            return 0
        found = 0
        for user_id, partition, events, kafka_ts in self.states.heads(actives):
            if events > self.published.last(user_id)[1]:
                self.dirty.mark(partition, user_id, kafka_ts or 0)
                found += 1
        self.pending = False
        if found:
            log.info("found %d users applied but not yet published", found)
        return found


class Gauges:
    """The gauges refreshed every few seconds (and the consumer lag per owned partition)."""

    def __init__(
        self,
        states: StateStore,
        dirty: DirtyUsers,
        trending_categories: Callable[[], int],
        consumer: Callable[[], Any],
        assigned: Callable[[], set[Any]],
        events_topic: str,
    ) -> None:
        self.states = states
        self.dirty = dirty
        self.trending_categories = trending_categories
        self.consumer = consumer
        self.assigned = assigned
        self.events_topic = events_topic

    async def update(self) -> None:
        metrics.DIRTY_USERS.set(self.dirty.count())
        metrics.TRENDING_CATEGORIES.set(self.trending_categories())
        metrics.USERS.set(self.count_users())
        await self.update_lag()

    def owned_partitions(self) -> set[int]:
        return {tp.partition for tp in self.assigned() if tp.topic == self.events_topic}

    def count_users(self) -> int:
        """Estimated keys in the RocksDB stores of the owned partitions."""
        owned = self.owned_partitions()
        total = 0
        for partition, db in getattr(self.states.table.data, "_dbs", {}).items():
            if partition in owned:
                with contextlib.suppress(Exception):
                    total += int(db.property_int_value("rocksdb.estimate-num-keys") or 0)
        return total

    async def update_lag(self) -> None:
        consumer = self.consumer()
        for tp in self.assigned():
            if tp.topic != self.events_topic:
                continue
            position = await consumer.position(tp)
            highwater = consumer.highwater(tp)
            if position is not None and highwater is not None:
                metrics.CONSUMER_LAG.labels(topic=tp.topic, partition=str(tp.partition)).set(
                    max(0, highwater - position)
                )


class Expiry:
    """Deletes users whose long-horizon interests all decayed below the threshold."""

    def __init__(
        self, states: StateStore, active_partitions: Callable[[], set[int]], threshold: float
    ) -> None:
        self.states = states
        self.active_partitions = active_partitions
        self.threshold = threshold

    def run(self) -> int:
        self.states.flush()
        now = now_ms()
        expired: dict[int, list[str]] = defaultdict(list)
        for user_id, partition, state in self.states.owned(self.active_partitions()):
            if is_expired(state, now, self.threshold):
                expired[partition].append(user_id)
        for partition, user_ids in expired.items():
            self.states.delete(partition, user_ids)
        total = sum(len(u) for u in expired.values())
        if total:
            log.info("expired %d quiet users", total)
        return total
