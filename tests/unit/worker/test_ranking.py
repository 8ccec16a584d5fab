"""Ranking in a child process gives exactly what ranking in a thread gives, and a child
that fails, dies or hangs costs one failed call (users stay dirty), never the worker."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest

from stream.core.errors import ScorerError
from stream.core.interest import InterestConfig, UserState, fold, new_state
from stream.core.types import Event
from stream.worker.ranking import ChildSpec, ProcessRanking, RankOptions, ThreadRanking
from tests.support.fakes import FakeScorer, open_fake_scorer
from tests.support.helpers import wait_for

T0 = 1_700_000_000_000
OPTIONS = RankOptions(k=10, policy="demote", limit=100)


def states(n: int = 40) -> list[UserState]:
    out = []
    for u in range(n):
        state = new_state(f"u{u}")
        events = [
            Event(f"u{u}", f"i{(u * 7 + e) % 60}", "click" if e % 3 else "purchase", T0 + e,
                  f"e{u}-{e}", f"c{(u + e) % 9}", 1.0 + e % 4)
            for e in range(1 + u % 15)
        ]  # fmt: skip
        fold(state, events, InterestConfig())
        out.append(state)
    return out


@pytest.fixture
def child() -> Iterator[ProcessRanking]:
    spec = ChildSpec(OPTIONS, open_fake_scorer, {}, None, ())
    ranking = ProcessRanking(spec, start_timeout_s=60).start()
    yield ranking
    ranking.close()


def test_the_child_ranks_exactly_as_the_thread(child: ProcessRanking) -> None:
    users = states()
    here = ThreadRanking(FakeScorer(), lambda: ({}, []), OPTIONS)
    local = here(here.prepare(users))
    remote = child(child.prepare(users))
    for b in range(len(users)):
        assert orjson.loads(orjson.dumps(remote.items_of(b))) == local.items_of(b)
        assert orjson.loads(orjson.dumps(remote.interests_of(b))) == local.interests_of(b)
    assert remote.model_version is None


def test_a_dead_child_is_replaced_at_the_next_call(child: ProcessRanking) -> None:
    users = states(5)
    child(child.prepare(users))
    first = child.children[0].proc
    first.kill()
    first.join(5)
    assert len(child(child.prepare(users)).items) == 5
    assert child.children[0].proc is not first and child.children[0].proc.is_alive()


def test_several_children_share_a_batch_in_order() -> None:
    users = states()
    here = ThreadRanking(FakeScorer(), lambda: ({}, []), OPTIONS)
    local = here(here.prepare(users))
    ranking = ProcessRanking(
        ChildSpec(OPTIONS, open_fake_scorer, {}, None, ()), start_timeout_s=60, processes=3
    ).start()
    try:
        for batch in (users, users[:2], users[:1]):
            remote = ranking(ranking.prepare(batch))
            assert len(remote.items) == len(batch)
            for b in range(len(batch)):
                assert orjson.loads(orjson.dumps(remote.items_of(b))) == local.items_of(b)
    finally:
        ranking.close()


def test_a_failing_scorer_in_the_child_is_a_scorer_error() -> None:
    spec = ChildSpec(OPTIONS, open_fake_scorer, {"error": "model server down"}, None, ())
    ranking = ProcessRanking(spec, start_timeout_s=60).start()
    try:
        with pytest.raises(ScorerError, match="model server down"):
            ranking(ranking.prepare(states(3)))
    finally:
        ranking.close()


def test_abort_frees_a_call_held_by_a_hanging_child() -> None:
    import threading

    spec = ChildSpec(OPTIONS, open_fake_scorer, {"hang_s": 60.0}, None, ())
    ranking = ProcessRanking(spec, start_timeout_s=60).start()
    errors: list[Exception] = []

    def call() -> None:
        try:
            ranking(ranking.prepare(states(3)))
        except ScorerError as exc:
            errors.append(exc)

    thread = threading.Thread(target=call)
    try:
        thread.start()
        wait_for(lambda: ranking.children[0].ready, 60, "the child never started")
        ranking.abort()
        thread.join(30)
        assert not thread.is_alive() and len(errors) == 1
        assert "the ranking process stopped" in str(errors[0])
    finally:
        ranking.close()


def test_a_child_loading_its_model_is_not_ready_and_costs_no_call() -> None:
    """Start-up (importing TensorFlow, loading the model) is not the scorer's time to
    answer: ready() says False without waiting until the child is up, then True."""
    spec = ChildSpec(OPTIONS, open_fake_scorer, {"open_s": 3.0}, None, ())
    ranking = ProcessRanking(spec, start_timeout_s=60).start()
    try:
        assert ranking.ready() is False  # the child sleeps 3 s in its scorer's start
        wait_for(ranking.ready, 60, "the ranking child never got ready")
        assert len(ranking(ranking.prepare(states(3))).items) == 3
        assert ThreadRanking(FakeScorer(), lambda: ({}, []), OPTIONS).ready()
    finally:
        ranking.close()
