"""Rescoring: dirty users ranked off the event loop and published with increasing versions;
a failing or hanging scorer keeps them dirty; a rebalance in between publishes nothing."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import pytest

from stream.core.interest import InterestConfig, fold
from stream.core.scheduling import DirtyUsers
from stream.core.types import Event
from stream.worker import metrics
from stream.worker.ranking import RankOptions, ThreadRanking
from stream.worker.rescore import PublishedLog, Publisher, Rescorer
from stream.worker.state_store import StateStore, UserPartitioner
from tests.support.fakes import FakeProducer, FakeScorer, FakeTable, fake_writer

CFG = InterestConfig()
T0 = 1_700_000_000_000


class Around:
    """A ranking whose calls go through ``call(prepared, original)`` (to act meanwhile)."""

    def __init__(self, ranking: ThreadRanking, call: Any) -> None:
        self.ranking = ranking
        self.call = call
        self.prepare = ranking.prepare
        self.settle = ranking.settle
        self.abort = ranking.abort
        self.ready = ranking.ready
        self.close = ranking.close

    def __call__(self, prepared: Any) -> Any:
        return self.call(prepared, self.ranking)


class World:
    def __init__(self, scorer: FakeScorer, timeout_s: float = 5.0) -> None:
        self.producer = FakeProducer()
        writer = fake_writer(self.producer, lambda _r: None)
        self.partition_of = UserPartitioner(4)
        self.states = StateStore(FakeTable(), "users-changelog", writer, self.partition_of)
        self.published_table = FakeTable()
        self.log = PublishedLog(self.published_table, UserPartitioner(4))
        self.dirty = DirtyUsers(base_backoff_s=0.01)
        self.generation = 1
        self.owned = {0, 1, 2, 3}
        self.executor = ThreadPoolExecutor(1)
        self.rescorer = Rescorer(
            self.states,
            self.dirty,
            ThreadRanking(scorer, lambda: ({}, []), RankOptions(k=5, policy="demote", limit=50)),
            Publisher(self.published_table, "recs", writer, self.log),
            self.executor,
            vectors=lambda: None,
            active_partitions=lambda: self.owned,
            generation=lambda: self.generation,
            last_applied=lambda: 0.0,
            interval_s=0.2,
            batch_size=2,
            timeout_s=timeout_s,
        )

    def event(self, user: str, item: str, ts: int) -> None:
        state = self.states.read_or_new(user, CFG)
        fold(state, [Event(user, item, "click", ts, f"{user}{item}{ts}", "c1", 2.0)], CFG)
        self.dirty.mark(self.partition_of(user), user, ts)

    def messages(self) -> list[dict[str, Any]]:
        return [orjson.loads(r.value) for r in self.producer.on("recs")]

    def run(self, coro: Any) -> Any:
        return asyncio.run(coro)


def test_dirty_users_are_published_with_increasing_versions() -> None:
    w = World(FakeScorer())
    for n, user in enumerate(("a", "b", "c")):
        w.event(user, f"i{n}", T0 + n)
    w.run(w.rescorer.rescore_dirty())
    first = {m["user_id"]: m for m in w.messages()}
    assert set(first) == {"a", "b", "c"} and w.dirty.count() == 0
    assert all(m["version"] == 1 and m["events_applied"] == 1 for m in first.values())
    assert first["a"]["items"] and first["a"]["model_version"] is None
    w.event("a", "i9", T0 + 10)
    w.run(w.rescorer.rescore_dirty())
    assert w.messages()[-1]["user_id"] == "a" and w.messages()[-1]["version"] == 2


def test_a_failing_scorer_keeps_users_dirty_and_backs_off() -> None:
    w = World(FakeScorer(error="model server down"))
    w.event("a", "i1", T0)
    errors = metrics.SCORER_ERRORS._value.get()
    w.run(w.rescorer.rescore_dirty())
    assert w.messages() == [] and w.dirty.count() == 1
    assert metrics.SCORER_ERRORS._value.get() == errors + 1
    assert w.dirty.failures == 1 and w.dirty.retry_at > 0


def test_a_hanging_scorer_times_out_and_is_not_called_again_meanwhile() -> None:
    release = threading.Event()
    scorer = FakeScorer(hang=release)
    w = World(scorer, timeout_s=0.2)
    w.event("a", "i1", T0)

    async def two_rounds() -> None:
        await w.rescorer.rescore_dirty()  # times out, the call still holds the thread
        w.dirty.retry_at = 0.0
        await w.rescorer.rescore_dirty()  # skipped: never pile calls on a hung scorer

    w.run(two_rounds())
    assert scorer.calls == 1 and w.dirty.count() == 1 and w.messages() == []
    release.set()
    w.executor.shutdown(wait=True)


def test_a_ranking_not_ready_yet_keeps_users_dirty_without_a_failure() -> None:
    """A ranking process still loading its model: no call, no error, no back-off."""
    w = World(FakeScorer())
    w.event("a", "i1", T0)
    up = {"ready": False}
    ranking = Around(w.rescorer.rank, lambda prepared, original: original(prepared))
    ranking.ready = lambda: up["ready"]
    w.rescorer.rank = ranking
    errors = metrics.SCORER_ERRORS._value.get()
    w.run(w.rescorer.rescore_dirty())
    assert w.messages() == [] and w.dirty.count() == 1 and w.dirty.failures == 0
    assert metrics.SCORER_ERRORS._value.get() == errors
    up["ready"] = True
    w.run(w.rescorer.rescore_dirty())
    assert [m["user_id"] for m in w.messages()] == ["a"]


def test_a_rebalance_during_ranking_publishes_nothing() -> None:
    w = World(FakeScorer())
    w.event("a", "i1", T0)

    def rank_then_rebalance(states: list[Any], original: Any) -> Any:
        w.generation += 1
        return original(states)

    w.rescorer.rank = Around(w.rescorer.rank, rank_then_rebalance)
    w.run(w.rescorer.rescore_dirty())
    assert w.messages() == []


def test_users_of_partitions_no_longer_owned_are_dropped() -> None:
    w = World(FakeScorer())
    w.event("a", "i1", T0)
    w.owned = set()
    w.run(w.rescorer.rescore_dirty())
    assert w.dirty.count() == 0 and w.messages() == []


@pytest.mark.parametrize("events,published,expect", [(3, 3, False), (4, 3, True)])
def test_published_log_knows_what_is_unpublished(events: int, published: int, expect: bool) -> None:
    table = FakeTable()
    table.data._db_for_partition(UserPartitioner(4)("a")).put(
        b"a", orjson.dumps({"version": 7, "events_applied": published})
    )
    log = PublishedLog(table, UserPartitioner(4))
    state = World(FakeScorer()).states.read_or_new("a", CFG)
    state.events_applied = events
    assert log.last("a") == (7, published) and log.unpublished(state) is expect


def test_the_ranking_reads_a_snapshot_while_the_loop_folds_on() -> None:
    """Events folded during a ranking are not half-seen by it, and the message describes
    the state that was ranked (the next round publishes the newer one)."""
    w = World(FakeScorer())
    for n in range(30):
        w.event("a", f"i{n}", T0 + n)
    ranked_counts: list[int] = []

    def rank_while_folding(states: list[Any], original: Any) -> Any:
        live = w.states.read("a")
        assert all(s is not live for s in states)
        ranked_counts.extend(s.events_applied for s in states)
        if len(ranked_counts) == 1:
            for n in range(30, 200):  # as the event loop would, meanwhile (new keys, bounding)
                w.event("a", f"j{n}", T0 + n)
        return original(states)

    w.rescorer.rank = Around(w.rescorer.rank, rank_while_folding)
    w.rescorer.budget.go_on = lambda *_: len(ranked_counts) < 1  # one batch this round
    w.run(w.rescorer.rescore_dirty())
    [message] = w.messages()
    assert ranked_counts == [30] and message["events_applied"] == 30
    assert all(item["item_id"].startswith("i") for item in message["items"])
    assert w.dirty.count() == 1  # the events folded meanwhile are published next round
    w.rescorer.budget.go_on = lambda *_: len(ranked_counts) < 2  # and one more
    w.run(w.rescorer.rescore_dirty())
    assert w.messages()[-1]["events_applied"] == 200 and w.messages()[-1]["version"] == 2


def test_a_stored_state_is_ranked_from_its_bytes_without_entering_the_cache() -> None:
    from stream.core.codec import encode
    from stream.core.interest import new_state

    w = World(FakeScorer())
    state = new_state("z", CFG)
    fold(state, [Event("z", f"i{n}", "click", T0 + n, f"z{n}", "c1", 1.0) for n in range(7)], CFG)
    partition = w.partition_of("z")
    w.states.table.data._db_for_partition(partition).put(b"z", encode(state))
    w.dirty.mark(partition, "z", T0)
    w.run(w.rescorer.rescore_dirty())
    [message] = w.messages()
    assert message["events_applied"] == 7 and message["as_of"] == T0 + 6 and message["items"]
    assert "z" not in w.states.cache
