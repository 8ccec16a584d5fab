"""Every worker's local, read-only view of every category's trending items.

The trending aggregation is partitioned by category, so no worker owns all categories;
its snapshots go to a compacted topic that every worker follows from the beginning in a
background thread (no consumer group: each worker reads every partition). Rescoring reads
the view without any network call; the staleness metric says how far behind it is.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

import orjson

from stream import metrics
from stream.kafka_clients import confluent_config
from stream.settings import Settings

log = logging.getLogger("interest.trending")

GLOBAL_TOP = 100


def global_top(
    view: Mapping[str, Mapping[str, Any]], n: int = GLOBAL_TOP
) -> list[tuple[str, str | None, float]]:
    """The strongest items over all categories (long horizon, decayed to the newest snapshot)."""
    snapshots = list(view.values())
    newest = max((s.get("t_ref") or 0 for s in snapshots), default=0)
    scored: list[tuple[float, str, str | None]] = []
    for snap in snapshots:
        t_ref = snap.get("t_ref") or 0
        half_long = (snap.get("half_lives") or [1, 604_800_000])[1]
        factor = 2.0 ** (-(newest - t_ref) / half_long)
        for item, (_short, long) in snap.get("items", {}).items():
            scored.append((long * factor, item, snap.get("category")))
    scored.sort(key=lambda x: (-x[0], x[1]))
    return [(item, cat, score) for score, item, cat in scored[:n]]


class TrendingFollower:
    """Follows the snapshots topic into a dict; recomputes the global top now and then."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.settings = settings
        self.topic = topic
        self.view: dict[str, dict[str, Any]] = {}
        self.top: list[tuple[str, str | None, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trending-follower", daemon=True)

    def start(self) -> TrendingFollower:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _consumer(self) -> Any:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        consumer = Consumer(
            confluent_config(
                self.settings,
                **{
                    "group.id": "unused-no-commits",
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                },
            )
        )
        meta = consumer.list_topics(self.topic, timeout=30).topics[self.topic]
        consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in meta.partitions])
        return consumer

    def _run(self) -> None:
        consumer = None
        last_top = 0.0
        while not self._stop.is_set():
            try:
                if consumer is None:
                    consumer = self._consumer()
                self._poll(consumer)
                if time.monotonic() - last_top > 1.0:
                    self.top = global_top(self.view)
                    last_top = time.monotonic()
            except Exception:
                log.warning("trending follower failed; retrying", exc_info=True)
                consumer = None
                self._stop.wait(1.0)
        if consumer is not None:
            consumer.close()

    def _poll(self, consumer: Any) -> None:
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
