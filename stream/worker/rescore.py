"""Dirty users -> ranking -> recommendation messages, on the rescore timer.

Ranking (stream.worker.ranking: in a child process, or in a thread) is called from a worker
thread with a timeout, so a failing or hanging scorer never blocks ingestion: the users stay
dirty and are retried with exponential backoff. It ranks a copy of the states taken on the
event loop in one go (snapshots or encoded bytes), never the states the event loop keeps
folding into, and the message carries the ``as_of`` and ``events_applied`` of that copy:
strengths, items and counts describe one state. A message
is one write to the recommendations table, whose changelog *is* the output topic; its
version is one above the last message published for the user, which the table holds
across restarts and rebalances.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import orjson

from stream.core.codec import read_head
from stream.core.interest import UserState, rebase
from stream.core.messages import build_message
from stream.core.scheduling import DirtyUsers, RoundBudget, Turns
from stream.core.types import ItemVectors
from stream.worker import metrics
from stream.worker.ranking import RankedBatch, Ranking
from stream.worker.state_store import StateStore, Table, Writer

log = logging.getLogger("interest.rescore")

Taken = tuple[int, str, int]  # (partition, user_id, newest Kafka timestamp not yet published)


class PublishedLog:
    """(version, events_applied) of each owned user's last message in the output topic.

    The recommendations table is restored from the output topic itself, so this is what
    subscribers saw, even when a crash lost a write in between: the next version is above
    it, and a state with more events than it is still to be published.
    """

    def __init__(
        self, table: Table, partition_of: Callable[[str], int], cache_size: int = 200_000
    ) -> None:
        self.table = table
        self.partition_of = partition_of
        self.cache_size = cache_size
        self.meta: dict[str, tuple[int, int]] = {}

    def last(self, user_id: str) -> tuple[int, int]:
        meta = self.meta.get(user_id)
        if meta is None:
            db = self.table.data._db_for_partition(self.partition_of(user_id))
            raw = db.get(user_id.encode())
            if raw is None:
                return 0, 0
            message = orjson.loads(raw)
            meta = int(message["version"]), int(message["events_applied"])
            self.record(user_id, *meta)
        return meta

    def record(self, user_id: str, version: int, events_applied: int) -> None:
        if user_id not in self.meta and len(self.meta) >= self.cache_size:
            del self.meta[next(iter(self.meta))]
        self.meta[user_id] = version, events_applied

    def unpublished(self, state: UserState) -> bool:
        """The state holds events no message has carried yet."""
        return state.events_applied > self.last(state.user_id)[1]

    def forget(self) -> None:
        self.meta.clear()


class Publisher:
    """One write per user: the message goes to the recommendations table."""

    def __init__(self, table: Table, topic: str, writer: Writer, log: PublishedLog) -> None:
        self.table = table
        self.topic = topic
        self.writer = writer
        self.log = log

    def publish(self, heads: Sequence[Head], taken: Sequence[Taken], ranked: RankedBatch) -> None:
        published_at = time.time()
        now = int(published_at * 1000)
        writes = []
        latency = metrics.EVENT_TO_RECOMMENDATION
        model_version = ranked.model_version
        dumps = orjson.dumps
        for b, (head, (partition, user_id, newest_ts)) in enumerate(zip(heads, taken, strict=True)):
            version = self.log.last(user_id)[0] + 1
            message = build_message(
                head,
                ranked.items_of(b),
                version=version,
                model_version=model_version,
                generated_at=now,
                interests_now=ranked.interests_of(b),
            )
            writes.append((partition, user_id.encode(), dumps(message)))
            self.log.record(user_id, version, head.events_applied)
            if newest_ts:
                latency.observe(max(0.0, published_at - newest_ts / 1000))
        self.writer.put_many(self.table.data, self.topic, writes)
        metrics.PUBLISHED.inc(len(writes))


@dataclass(frozen=True, slots=True)
class Head:
    """What a message says of the state that was ranked (taken with the copy)."""

    user_id: str
    t_ref: int | None
    events_applied: int


class Rescorer:
    """Takes dirty users in batches, ranks them off the event loop, publishes the results."""

    def __init__(
        self,
        states: StateStore,
        dirty: DirtyUsers,
        rank: Ranking,
        publisher: Publisher,
        executor: Executor,
        *,
        vectors: Callable[[], ItemVectors | None],
        active_partitions: Callable[[], set[int]],
        generation: Callable[[], int],
        last_applied: Callable[[], float],
        interval_s: float,
        batch_size: int,
        timeout_s: float,
    ) -> None:
        self.states = states
        self.dirty = dirty
        self.rank = rank
        self.publisher = publisher
        self.executor = executor
        self.vectors = vectors
        self.active_partitions = active_partitions
        self.generation = generation
        self.last_applied = last_applied
        self.budget = RoundBudget(interval_s)
        self.turns = Turns()
        self.batch_size = batch_size
        self.timeout_s = timeout_s
        self.scoring: asyncio.Future[Any] | None = None

    async def rescore_dirty(self) -> None:
        """One round: batches of dirty users until none is left or the budget is spent."""
        if not self.dirty.ready(time.monotonic()):
            return
        if self.scoring is not None and not self.scoring.done():
            return  # a hung scorer call still holds the thread: wait, never pile up
        if not self.rank.ready():
            return  # a ranking process still starting (loading its model): the users wait
        actives = self.active_partitions()
        gone = {p for p, users in self.dirty.by_partition.items() if p not in actives and users}
        if gone:
            log.info("dropping dirty users of partitions no longer owned: %s", sorted(gone))
            self.dirty.drop_partitions(gone)
        started = time.monotonic()
        while self.dirty.count() and self.budget.go_on(
            time.monotonic(), started, self.last_applied()
        ):
            taken = self.dirty.take(self.turns.order(actives), self.batch_size)
            if not taken:
                break
            if not await self.rescore_batch(taken):
                self.dirty.give_back(taken)
                delay = self.dirty.failed(time.monotonic())
                log.warning("scorer failed; %d users stay dirty, retry in %.1fs", len(taken), delay)
                return
            self.dirty.succeeded()

    async def rescore_batch(self, taken: list[Taken]) -> bool:
        """Rank and publish one batch; False when the scorer failed (the caller retries)."""
        live: list[UserState | bytes] = []
        heads: list[Head] = []
        kept: list[Taken] = []
        vectors = self.vectors()
        for partition, user_id, ts in taken:
            found = self.states.peek(user_id)
            if isinstance(found, bytes):
                if vectors is None:  # nothing to re-base: rank the stored bytes as they are
                    t_ref, _, events = read_head(found)
                    live.append(found)
                    heads.append(Head(user_id, t_ref, events))
                    kept.append((partition, user_id, ts))
                    continue
                found = self.states.read(user_id)
            if found is None:
                log.warning(
                    "dirty user %r has no state on partition %d; skipped", user_id, partition
                )
                continue
            if vectors is not None and found.model_version != vectors.version:
                rebase(found, vectors)
                self.states.changed(user_id, partition)  # written at the next flush
            live.append(found)
            heads.append(Head(user_id, found.t_ref, found.events_applied))
            kept.append((partition, user_id, ts))
        if not live:
            return True
        prepared = self.rank.prepare(live)  # the copy, on the event loop: no fold in between
        generation = self.generation()
        metrics.RESCORE_BATCH_SIZE.observe(len(live))
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        self.scoring = loop.run_in_executor(self.executor, self.rank, prepared)
        try:
            ranked = await asyncio.wait_for(asyncio.shield(self.scoring), self.timeout_s)
        except TimeoutError:
            metrics.SCORER_ERRORS.inc()
            log.warning("scorer call timed out after %.1fs", self.timeout_s)
            self.rank.abort()
            return False
        except Exception as exc:
            metrics.SCORER_ERRORS.inc()
            log.warning("scorer call failed: %s", exc if str(exc) else type(exc).__name__)
            return False
        metrics.RESCORE_SECONDS.observe(time.perf_counter() - started)
        self.rank.settle(live, prepared)
        if self.generation() != generation:
            return True  # a rebalance came in between: the replay after it marks them again
        self.publisher.publish(heads, kept, ranked)
        return True
