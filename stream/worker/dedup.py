"""Remembered event ids (stream.core.dedup) in a changelogged RocksDB table per partition.

Keys are (user, id digest), values the event time and the position it was applied from;
each partition also keeps its watermark (the newest event time applied). Lookups are one
multi-get per partition per fetch; what a fetch remembers is written with the states of the
next flush, in the same epoch, so an acknowledged offset has both its state and its ids in
Kafka. Entries older than the retention are deleted a slice at a time in the background.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from stream.core.dedup import (
    ENTRY_BYTES,
    FRESH,
    WATERMARK_KEY,
    DedupConfig,
    entry,
    id_key,
    judge,
    read_entry,
    read_watermark,
    watermark_value,
)
from stream.core.types import EventBatch
from stream.worker.state_store import Table, Writer

log = logging.getLogger("interest.dedup")


class DedupStore:
    """The id table of the partitions this worker owns, with what is not yet written."""

    def __init__(self, table: Table, changelog: str, writer: Writer, config: DedupConfig) -> None:
        self.table = table
        self.changelog = changelog
        self.writer = writer
        self.config = config
        self.pending: dict[int, dict[bytes, bytes]] = {}  # partition -> key -> entry
        self.watermarks: dict[int, int | None] = {}  # partition -> newest applied event time
        self.cursors: dict[int, bytes | None] = {}  # partition -> where the expiry sweep is

    def _db(self, partition: int) -> Any:
        return self.table.data._db_for_partition(partition)

    def watermark(self, partition: int) -> int | None:
        if partition not in self.watermarks:
            self.watermarks[partition] = read_watermark(self._db(partition).get(WATERMARK_KEY))
        return self.watermarks[partition]

    def check(
        self,
        events: EventBatch,
        partitions: Sequence[int],
        sources: Sequence[int],
        offsets: Sequence[int],
    ) -> np.ndarray:
        """Each event's verdict (stream.core.dedup FRESH / DUPLICATE / BEYOND); the FRESH
        ones are remembered (written at the next flush)."""
        n = len(events)
        verdict = np.full(n, FRESH, np.int8)
        if self.config.retention_ms <= 0 or not n:
            return verdict
        keys = [id_key(u, e) for u, e in zip(events.user_id, events.event_id, strict=True)]
        by_partition: dict[int, list[int]] = {}
        for i, p in enumerate(partitions):
            by_partition.setdefault(p, []).append(i)
        for p, rows in by_partition.items():
            pending = self.pending.setdefault(p, {})
            part_keys = [keys[i] for i in rows]
            found: list[bytes | None] = [pending.get(k) for k in part_keys]
            missing = [j for j, f in enumerate(found) if f is None]
            if missing:
                got = self._db(p).get([part_keys[j] for j in missing])
                for j, value in zip(missing, got, strict=True):
                    found[j] = value
            ts = events.ts[rows]
            part_verdict = judge(
                part_keys,
                found,
                ts,
                [sources[i] for i in rows],
                [offsets[i] for i in rows],
                self.watermark(p),
                self.config,
            )
            verdict[rows] = part_verdict
            for j in np.flatnonzero(part_verdict == FRESH).tolist():
                i = rows[j]
                pending[part_keys[j]] = entry(int(ts[j]), sources[i], offsets[i])
            fresh_ts = ts[part_verdict == FRESH]
            if len(fresh_ts):
                newest = int(fresh_ts.max())
                mark = self.watermarks.get(p)
                if mark is None or newest > mark:
                    self.watermarks[p] = newest
        return verdict

    def write(self) -> None:
        """Write what was remembered since the last flush (the flush's epoch, before seal)."""
        writes = []
        for p, pending in self.pending.items():
            if not pending:
                continue
            writes.extend((p, k, v) for k, v in pending.items())
            mark = self.watermarks.get(p)
            if mark is not None:
                writes.append((p, WATERMARK_KEY, watermark_value(mark)))
        if writes:
            self.writer.put_many(self.table.data, self.changelog, writes)
        self.pending = {}

    def forget(self) -> None:
        """A rebalance: unwritten ids are remembered again when their records are re-read."""
        self.pending = {}
        self.watermarks = {}
        self.cursors = {}

    def expire(self, partitions: set[int], budget: int = 20_000) -> int:
        """Delete up to ``budget`` entries per partition older than the retention, resuming
        where the previous sweep stopped; returns how many were deleted."""
        if self.config.retention_ms <= 0:
            return 0
        deleted = 0
        for p in sorted(partitions):
            mark = self.watermark(p)
            if mark is None:
                continue
            floor = mark - self.config.retention_ms
            db = self._db(p)
            start = self.cursors.get(p)
            seen = 0
            old: list[bytes] = []
            last = None
            for key, value in db.items(from_key=start) if start is not None else db.items():
                seen += 1
                last = key
                if len(value) == ENTRY_BYTES and read_entry(value)[0] < floor:
                    old.append(key)  # (other keys: the watermark, Faust's stored offsets)
                if seen >= budget:
                    break
            self.cursors[p] = last if seen >= budget else None  # None: start over next time
            for key in old:
                self.writer.put(self.table.data, self.changelog, p, key, None)
            deleted += len(old)
        if deleted:
            log.info("forgot %d event ids older than the retention", deleted)
        return deleted
