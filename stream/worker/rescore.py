"""Dirty users -> ranking -> recommendation messages, on the rescore timer.

Ranking runs in a worker thread with a timeout, so a failing or hanging scorer never
blocks ingestion: the users stay dirty and are retried with exponential backoff. The thread
ranks snapshots of the states (:meth:`UserState.snapshot`), never the states the event
loop keeps folding into, and the message is built from the same snapshot: its strengths,
``as_of`` and ``events_applied`` describe one state. A message
is one write to the recommendations table, whose changelog *is* the output topic; its
version is one above the last message published for the user, which the table holds
across restarts and rebalances.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from typing import Any

import orjson

from stream.core.candidates import Ranked, rank_batch
from stream.core.interest import UserState, rebase
from stream.core.messages import build_message
from stream.core.scheduling import DirtyUsers, RoundBudget, Turns
from stream.core.types import ItemVectors, Scorer
from stream.worker import metrics
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

    def publish(
        self,
        states: Sequence[UserState],
        taken: Sequence[Taken],
        ranked: Ranked,
        model_version: str | None,
    ) -> None:
        published_at = time.time()
        now = int(published_at * 1000)
        writes = []
        latency = metrics.EVENT_TO_RECOMMENDATION
        for b, (state, (partition, user_id, newest_ts)) in enumerate(
            zip(states, taken, strict=True)
        ):
            version = self.log.last(user_id)[0] + 1
            message = build_message(
                state,
                ranked.entries(b),
                version=version,
                model_version=model_version,
                generated_at=now,
                interests_now=ranked.interests[b],
            )
            writes.append((partition, user_id.encode(), orjson.dumps(message)))
            self.log.record(user_id, version, state.events_applied)
            if newest_ts:
                latency.observe(max(0.0, published_at - newest_ts / 1000))
        self.writer.put_many(self.table.data, self.topic, writes)
        metrics.PUBLISHED.inc(len(writes))


class Ranker:
    """The blended ranking of stream.core.candidates over the live trending view.

    Called in the scorer thread: ``refresh`` may do network I/O (TF Serving status)."""

    def __init__(
        self,
        scorer: Scorer,
        trending: Callable[[], tuple[Mapping[str, Any], Sequence[tuple[str, str | None, float]]]],
        *,
        k: int,
        policy: str,
        limit: int,
    ) -> None:
        self.scorer = scorer
        self.trending = trending
        self.k = k
        self.policy = policy
        self.limit = limit

    def __call__(self, states: list[UserState]) -> Ranked:
        self.scorer.refresh()
        view, top = self.trending()
        return rank_batch(
            states,
            trending=view,
            global_top=top,
            scorer=self.scorer,
            k=self.k,
            policy=self.policy,
            limit=self.limit,
        )


class Rescorer:
    """Takes dirty users in batches, ranks them off the event loop, publishes the results."""

    def __init__(
        self,
        states: StateStore,
        dirty: DirtyUsers,
        rank: Callable[[list[UserState]], Ranked],
        publisher: Publisher,
        executor: Executor,
        *,
        vectors: Callable[[], ItemVectors | None],
        model_version: Callable[[], str | None],
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
        self.model_version = model_version
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
        live: list[UserState] = []
        kept: list[Taken] = []
        vectors = self.vectors()
        for partition, user_id, ts in taken:
            state = self.states.read(user_id)
            if state is None:
                log.warning(
                    "dirty user %r has no state on partition %d; skipped", user_id, partition
                )
                continue
            if vectors is not None and state.model_version != vectors.version:
                rebase(state, vectors)
            live.append(state)
            kept.append((partition, user_id, ts))
        if not live:
            return True
        states = [state.snapshot() for state in live]
        model_version = self.model_version()
        generation = self.generation()
        metrics.RESCORE_BATCH_SIZE.observe(len(states))
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        self.scoring = loop.run_in_executor(self.executor, self.rank, states)
        try:
            recs = await asyncio.wait_for(asyncio.shield(self.scoring), self.timeout_s)
        except Exception as exc:
            metrics.SCORER_ERRORS.inc()
            log.warning("scorer call failed: %s", exc if str(exc) else type(exc).__name__)
            return False
        metrics.RESCORE_SECONDS.observe(time.perf_counter() - started)
        for state, snapshot in zip(live, states, strict=True):
            state.items.adopt_ids(snapshot.items)  # the ranking's interned ids, if still good
        if self.generation() != generation:
            return True  # a rebalance came in between: the replay after it marks them again
        self.publisher.publish(states, kept, recs, model_version)
        return True
