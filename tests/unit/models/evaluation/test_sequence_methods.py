"""The sequence methods of `interest evaluate`: the Transformer alone (`sequence`) and the
fusion's ablation (`interest-stream:no-sequence`), against fakes (no training here)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from models.evaluation.baselines import SequenceNext, UserStates
from models.evaluation.evaluate import LeakError, paired_differences, replay, stream_method
from stream.config import Settings, event_parser
from stream.core.interest import InterestConfig
from stream.core.sequence import RecentEvents
from stream.core.types import Event, Recommended, RecommendReason, SequenceBatch
from tests.support.fakes import FakeScorer, FakeVectors

PARSER = event_parser(Settings())
HOUR = 3_600_000


def ev(user: str, item: str, type_: str, ts: int, category: str = "c1") -> Event:
    built = PARSER.build(user_id=user, item_id=item, type=type_, ts=ts, category=category)
    assert isinstance(built, Event)
    return built


@dataclass
class ChainScorer(FakeScorer):
    """next_in_sequence: the successor (``chain``) of the user's newest item; records calls."""

    chain: dict[str, str] = field(default_factory=dict)
    batches: list[SequenceBatch] = field(default_factory=list)

    def next_in_sequence(self, batch: SequenceBatch) -> list[list[Recommended]]:
        self.batches.append(batch)
        out = []
        for seq in batch.sequences:
            nxt = self.chain.get(seq.item[-1]) if len(seq) else None
            reason = RecommendReason.next_in_sequence
            out.append([Recommended(nxt, 0.9, "c1", reason)] if nxt else [])
        return out[: len(batch.user_ids)]


def test_sequence_method_keeps_the_states_recent_events() -> None:
    events = [
        ev("u1", "a", "browse", 3 * HOUR),
        ev("u1", "b", "click", 1 * HOUR),  # late: inserted in time order
        ev("u2", "x", "browse", 2 * HOUR),
        ev("u1", "c", "add_to_cart", 4 * HOUR),
        ev("u1", "d", "purchase", 5 * HOUR),
    ]
    config = InterestConfig(sequence_length=3)
    method = SequenceNext(ChainScorer(), config.sequence_length)
    states = UserStates(config)
    for e in events:
        method.observe(e)
        states.observe(e)
    for user in ("u1", "u2"):
        state = states.get(user)
        assert state is not None
        assert method.sequences[user] == state.sequence, user
    assert method.sequences["u1"].item == ["a", "c", "d"]  # the 3 newest, oldest first
    assert method.sequences["u1"].type == ["browse", "add_to_cart", "purchase"]


def test_sequence_method_asks_the_scorer_with_the_users_sequence() -> None:
    scorer = ChainScorer(chain={"a": "b"})
    method = SequenceNext(scorer, 50)
    assert method.recommend("u1", 10, HOUR) == []  # no events yet: no call
    assert scorer.batches == []
    method.observe(ev("u1", "a", "browse", HOUR))
    assert method.recommend("u1", 10, 2 * HOUR) == ["b"]
    (batch,) = scorer.batches
    assert batch.user_ids == ["u1"] and batch.k == 10
    assert batch.sequences[0] == RecentEvents([HOUR], ["a"], ["browse"])


def test_the_leak_check_holds_for_the_sequence_method() -> None:
    history = [
        ev("u1", "a", "browse", 1 * HOUR),
        ev("u1", "b", "browse", 2 * HOUR),
        ev("u2", "a", "browse", 3 * HOUR),
        ev("u2", "b", "click", 11 * HOUR),  # target: the chain's successor, seen before
    ]
    honest = SequenceNext(ChainScorer(chain={"a": "b"}), 50)
    result = replay(history, [honest], cut_ts=10 * HOUR)
    assert result.rank_array("sequence").tolist() == [1]
    looking_ahead = [*history[:3], ev("u2", "new", "click", 11 * HOUR)]
    leaky = SequenceNext(ChainScorer(chain={"a": "new"}), 50)  # proposes an unseen item
    with pytest.raises(LeakError, match=r"sequence.*new"):
        replay(looking_ahead, [leaky], cut_ts=10 * HOUR)


def test_the_fused_stream_proposes_the_sequence_models_items() -> None:
    """The production path takes the sequence model's items into its union."""
    vectors = FakeVectors({"a": [1.0, 0.0], "b": [0.0, 1.0], "z": [0.5, 0.5]})

    # the network is off (guard), so the union is ranked by the blend: what matters here is
    # whether the item is in the union at all
    def scorer(chain: dict[str, str]) -> ChainScorer:
        return ChainScorer(
            model_version="1", item_vectors=vectors, chain=chain, network_ranking=False
        )

    settings = Settings()
    fused = stream_method("interest-stream", settings, scorer({"a": "z"}))
    ablated = stream_method("interest-stream:no-sequence", settings, scorer({}))
    # u1's own items fill the union past MIN_CANDIDATES, so global trending stays out of it
    own = [ev("u1", f"own{n}", "browse", HOUR + n) for n in range(25)]
    events = [
        ev("u2", "z", "browse", 1 * HOUR, "c9"),  # z: seen, in another category
        *own,
        ev("u1", "a", "browse", 2 * HOUR),
    ]
    for e in events:
        fused.observe(e)
        ablated.observe(e)
    assert "z" in fused.recommend("u1", 50, 3 * HOUR)
    assert "z" not in ablated.recommend("u1", 50, 3 * HOUR)


def test_paired_differences_use_the_same_targets() -> None:
    from models.evaluation.evaluate import Replay

    names = ["interest-stream", "interest-stream:no-sequence", "popularity"]
    result = Replay(names=names, users=[0, 0, 1, 2])
    result.ranks = [[1, 0, 0], [3, 3, 0], [0, 0, 0], [25, 2, 0]]
    diffs = paired_differences(result, seed=1)
    assert list(diffs) == ["interest-stream - interest-stream:no-sequence"]
    d = diffs["interest-stream - interest-stream:no-sequence"]
    assert d["hr@20"] == pytest.approx((1 - 1) / 4)  # +1 on target 0, -1 on target 3
    lo, hi = d["hr@20_ci"]
    assert lo <= d["hr@20"] <= hi
