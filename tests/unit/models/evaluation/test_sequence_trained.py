"""The `sequence` method with a really trained (tiny) sequence model: chains are learned,
the replay's leak check holds, and build_methods offers the sequence methods."""

from __future__ import annotations

import numpy as np
import pytest

from models.evaluation.baselines import SequenceNext
from models.evaluation.evaluate import (
    build_methods,
    has_sequence_model,
    replay,
    without_sequence,
)
from models.training.embeddings import MFConfig
from models.training.ranker import RankerConfig
from models.training.sequence import SequenceConfig
from models.training.train import TrainConfig, TrainedModel, train
from stream.config import Settings, event_parser, load_settings
from stream.core.sequence import RecentEvents
from stream.core.types import Event, SequenceBatch

pytest.importorskip("tensorflow")

N_CHAIN = 12  # items i0 -> i1 -> ... -> i11 -> i0, all in one category
MINUTE = 60_000
T0 = 1_764_000_000_000
SETTINGS = load_settings(overrides={"embedding_dim": 8, "sequence_length": 8})


def chain_history(users: int = 48, steps: int = 10, seed: int = 3) -> list[Event]:
    """Every user walks part of the chain (no item twice) from a random start, browse,
    click, cart, browse, ..."""
    parser = event_parser(Settings())
    rng = np.random.default_rng(seed)
    types = ("browse", "click", "add_to_cart")
    out = []
    for u in range(users):
        start = int(rng.integers(N_CHAIN))
        t = T0 + int(rng.integers(0, 60)) * MINUTE
        for s in range(steps):
            item = (start + s) % N_CHAIN
            built = parser.build(
                user_id=f"u{u}", item_id=f"i{item}", type=types[s % 3], ts=t, category="c1"
            )
            assert isinstance(built, Event)
            out.append(built)
            t += int(rng.integers(1, 5)) * MINUTE
    return sorted(out, key=lambda e: e.ts)


@pytest.fixture(scope="module")
def events() -> list[Event]:
    return chain_history()


@pytest.fixture(scope="module")
def model(events: list[Event]) -> TrainedModel:
    config = TrainConfig(
        mf=MFConfig(dim=8, iterations=3),
        ranker=RankerConfig(hidden=(8,), epochs=1),
        refit_full=False,
        sequence=SequenceConfig(length=8, dim=16, blocks=1, heads=1, epochs=40, dropout=0.0),
    )
    return train(events, SETTINGS, seed=3, config=config)


def test_the_sequence_method_ranks_the_chain_successor_first(
    model: TrainedModel, events: list[Event]
) -> None:
    assert has_sequence_model(model)
    method = SequenceNext(model.scorer(), 8)
    for e in events:
        method.observe(e)
    firsts = [method.recommend(f"u{u}", 5, 0) for u in range(10)]
    for u, ranked in enumerate(firsts):
        last = method.sequences[f"u{u}"].item[-1]
        successor = f"i{(int(last[1:]) + 1) % N_CHAIN}"
        assert ranked[0] == successor, (u, last, ranked)


def test_the_leak_check_holds_for_the_trained_sequence_method(
    model: TrainedModel, events: list[Event]
) -> None:
    cut = events[int(len(events) * 0.7)].ts
    method = SequenceNext(model.scorer(), 8)
    result = replay(events, [method], cut_ts=cut)  # LeakError if it ever looked ahead
    ranks = result.rank_array("sequence")
    assert len(ranks) > 50
    assert np.mean((ranks > 0) & (ranks <= 1)) > 0.8  # the successor, first, mostly


def test_build_methods_offers_the_sequence_methods(
    model: TrainedModel, events: list[Event]
) -> None:
    names = [m.name for m in build_methods(events, model, SETTINGS, seed=3)]
    assert {"interest-stream", "interest-stream:no-sequence", "sequence"} <= set(names)
    assert len(names) == len(set(names))


def test_without_sequence_is_the_same_model_less_the_sequence_model(model: TrainedModel) -> None:
    plain = without_sequence(model)
    assert not has_sequence_model(plain) and has_sequence_model(model)  # the original kept
    assert plain.artifacts.embeddings is model.artifacts.embeddings
    assert plain.artifacts.network is model.artifacts.network
    batch = SequenceBatch(["u0"], [RecentEvents([T0], ["i3"], ["browse"])], 5)
    assert plain.scorer().next_in_sequence(batch) == [[]]
    (recs,) = model.scorer().next_in_sequence(batch)
    assert recs[0].item_id == "i4"
    ranking = model.metrics["ranking"]
    k = ranking["k"]

    def key(name: str) -> tuple[float, float]:
        return (ranking[name][f"hr@{k}"], ranking[name][f"ndcg@{k}"])

    assert plain.scorer().network_ranking == (key("network") > key("blend"))
