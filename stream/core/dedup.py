"""Exact deduplication of event ids over a window of event time.

An event id applied to a user is remembered (a 64-bit digest of the id, under the user)
for ``retention_ms`` of event time, measured back from the newest event time its
partition has applied (the partition's *watermark*), so memory is bounded by time, not by
a count of ids. Within the retention, an id sent again is never applied again, whatever its
offset and however many events came in between.

Each remembered id also records where it was applied from (source partition and offset).
A record read again at the *same* position is not a duplicate: it is a replay after a crash
whose state write was lost while its id entry survived, and must be applied (the state's
own per-partition offsets skip replays whose state survived).

An event older than the retention (``ts < watermark - retention_ms``) can no longer be
checked: by default it is rejected (``beyond_dedup_retention``, to the dead-letter topic);
``beyond="apply"`` applies it unchecked instead.

Pure: the worker keeps the remembered ids in a changelogged RocksDB table
(stream.worker.dedup); :class:`SeenIds` keeps them in memory for folds outside the worker.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from hashlib import blake2b

import numpy as np

DAY_MS = 86_400_000
DIGEST_BYTES = 8
FRESH, DUPLICATE, BEYOND = 0, 1, 2  # the verdicts of :func:`judge`
BEYOND_POLICIES = ("dead_letter", "apply")
_ENTRY = struct.Struct("<qiq")  # event time, source partition, source offset
ENTRY_BYTES = _ENTRY.size
WATERMARK_KEY = b"\x00watermark"  # per partition: the newest event time applied


@dataclass(frozen=True, slots=True)
class DedupConfig:
    retention_ms: int = 7 * DAY_MS  # 0: no id deduplication (offsets only)
    beyond: str = "dead_letter"  # or "apply": an event older than the retention, unchecked


def id_key(user_id: str, event_id: str) -> bytes:
    """The remembered form of (user, event id): the user id, a separator, a 64-bit digest.

    A fresh event is taken for a duplicate only if its digest collides with one of the same
    user's ids within the retention: about n / 2**64 for n such ids."""
    digest = blake2b(event_id.encode(), digest_size=DIGEST_BYTES).digest()
    return user_id.encode() + b"\x00" + digest


def entry(ts: int, source: int, offset: int) -> bytes:
    return _ENTRY.pack(ts, source, offset)


def read_entry(value: bytes) -> tuple[int, int, int]:
    return _ENTRY.unpack(value)


def judge(
    keys: Sequence[bytes],
    found: Sequence[bytes | None],
    ts: np.ndarray,
    sources: Sequence[int] | None,
    offsets: Sequence[int] | None,
    watermark: int | None,
    config: DedupConfig,
) -> np.ndarray:
    """Each event's verdict: FRESH, DUPLICATE or BEYOND (older than the retention).

    ``found[i]`` is what was remembered for ``keys[i]`` before this batch (None: nothing);
    within the batch the first occurrence of a key wins. ``watermark`` is the partition's
    newest applied event time before the batch (None: none yet). Without positions
    (``sources`` None) every remembered id is a duplicate."""
    verdict = np.full(len(keys), FRESH, np.int8)
    if config.retention_ms <= 0:
        return verdict
    floor = None if watermark is None else watermark - config.retention_ms
    seen: dict[bytes, tuple[int, int]] = {}
    ts_list = ts.tolist()
    for i, key in enumerate(keys):
        here = (sources[i], offsets[i]) if sources is not None and offsets is not None else None
        earlier = seen.get(key)
        if earlier is None and found[i] is not None:
            _, p, o = read_entry(found[i])  # type: ignore[arg-type]
            earlier = (p, o)
        if earlier is not None:
            if here is None or earlier != here:  # a replay at its own position is not one
                verdict[i] = DUPLICATE
            continue
        if floor is not None and ts_list[i] < floor:
            verdict[i] = BEYOND
            if config.beyond != "apply":
                continue
            verdict[i] = FRESH
        seen[key] = here if here is not None else (-1, -1)
    return verdict


class SeenIds:
    """Remembered ids in memory, with the same rules as the worker's store (one watermark)."""

    def __init__(self, config: DedupConfig | None = None) -> None:
        self.config = config or DedupConfig()
        self.entries: dict[bytes, bytes] = {}
        self.watermark: int | None = None

    def check(
        self,
        users: Sequence[str],
        event_ids: Sequence[str],
        ts: np.ndarray,
        sources: Sequence[int] | None,
        offsets: Sequence[int] | None,
    ) -> np.ndarray:
        """Verdicts for a batch; FRESH ones are remembered (call only for events applied)."""
        keys = [id_key(u, e) for u, e in zip(users, event_ids, strict=True)]
        found = [self.entries.get(k) for k in keys]
        verdict = judge(keys, found, ts, sources, offsets, self.watermark, self.config)
        self.remember(keys, verdict, ts, sources, offsets)
        return verdict

    def remember(
        self,
        keys: Sequence[bytes],
        verdict: np.ndarray,
        ts: np.ndarray,
        sources: Sequence[int] | None,
        offsets: Sequence[int] | None,
    ) -> None:
        ts_list = ts.tolist()
        for i in np.flatnonzero(verdict == FRESH).tolist():
            known = sources is not None and offsets is not None
            p, o = (sources[i], offsets[i]) if known else (-1, -1)
            self.entries[keys[i]] = entry(ts_list[i], p, o)
            if self.watermark is None or ts_list[i] > self.watermark:
                self.watermark = ts_list[i]
        self.expire()

    def expire(self) -> None:
        if self.watermark is None or self.config.retention_ms <= 0:
            return
        floor = self.watermark - self.config.retention_ms
        old = [k for k, v in self.entries.items() if read_entry(v)[0] < floor]
        for k in old:
            del self.entries[k]


def watermark_value(ts: int) -> bytes:
    return ts.to_bytes(8, "little", signed=True)


def read_watermark(value: bytes | None) -> int | None:
    return None if value is None else int.from_bytes(value, "little", signed=True)
