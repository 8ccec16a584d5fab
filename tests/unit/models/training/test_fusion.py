"""Model fusion: the sequence model's score as an input of the interest-strength network,
the same in training (numpy + DenseStack) and in the exported `score` (TensorFlow); the
guard picking the best of network, fused network and blend."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.serving import LocalScorer, TFServingScorer
from models.serving.model_dir import RANKING_BLEND, RANKING_FUSED, RANKING_NETWORK, ModelView
from models.training.embeddings import MFConfig
from models.training.export import export_version, ranking_mode
from models.training.fusion import fused_input, pair_probabilities
from models.training.module import build_module
from models.training.ranker import feature_names
from models.training.replay import RankGroup, network_input
from models.training.sequence import SequenceWeights
from stream.core.candidates import SEQUENCE_CANDIDATES
from stream.core.features import N_FEATURES
from stream.core.interest import UserState
from stream.core.types import Event, RecommendReason, SequenceBatch
from tests.support.models import D, N, toy_artifacts, toy_network, toy_sequence
from tests.support.tfserving_standin import StandinServer
from tests.unit.models.serving.test_scorers import make_candidates, make_sequences
from tests.unit.models.training.test_sequence import category_events


def call(fn, **kw: np.ndarray) -> dict[str, np.ndarray]:
    import tensorflow as tf

    return {k: v.numpy() for k, v in fn(**{k: tf.constant(v) for k, v in kw.items()}).items()}


def fused_inputs(b: int, m: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    items = rng.integers(-1, N, (b, m)).astype(np.int32)
    seq_items = rng.integers(-1, N, (b, 8)).astype(np.int32)
    seq_items[0] = -1  # a user without a sequence
    return {
        "short": rng.normal(size=(b, D)).astype(np.float32),
        "long": rng.normal(size=(b, D)).astype(np.float32),
        "cat_short": np.zeros((b, 7), np.float32),
        "cat_long": np.zeros((b, 7), np.float32),
        "items": items,
        "feats": rng.random((b, m, N_FEATURES)).astype(np.float32),
        "seq_items": seq_items,
        "seq_types": rng.integers(-1, 5, (b, 8)).astype(np.int32),
    }


def test_exported_fused_score_is_the_trained_function() -> None:
    """score = fused network(network_input(...) + sequence_feature(next_scores(...)))."""
    art = toy_artifacts(seed=4, fused=True)
    assert art.sequence is not None and art.fused is not None
    module = build_module(art)
    x = fused_inputs(5, 6, seed=1)
    got = call(module.score, **x)["scores"]
    b, m = x["items"].shape
    pairs = network_input(
        np.repeat(x["short"], m, axis=0),
        np.repeat(x["long"], m, axis=0),
        x["items"].reshape(-1),
        np.zeros(b * m, bool),
        x["feats"].reshape(b * m, -1),
        art,
    )
    rows = np.repeat(np.arange(b), m)
    p = pair_probabilities(art.sequence, x["seq_items"], x["seq_types"], rows, x["items"].ravel())
    want = art.fused.predict(fused_input(pairs, p, art.sequence.n_items)).reshape(b, m)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert np.all(p.reshape(b, m)[0] == 0)  # no sequence: no sequence score


def test_fused_version_round_trip_and_both_scorers(tmp_path: Path) -> None:
    art = toy_artifacts(seed=0, fused=True)
    path = export_version(art, tmp_path)
    meta = json.loads((path / "metadata.json").read_text())
    assert meta["ranking"] == RANKING_FUSED
    view = ModelView.load(path)
    assert view.fused and view.network_ranking and view.sequence is not None
    import tensorflow as tf

    x = fused_inputs(4, 5, seed=2)
    loaded = tf.saved_model.load(str(path))
    reloaded = call(loaded.signatures["score"], **x)["scores"]
    module = build_module(art)  # held: a tf.function method keeps only a weak reference
    np.testing.assert_allclose(reloaded, call(module.score, **x)["scores"], atol=1e-6)

    batch = make_candidates(6, seed=2)
    batch.sequences = make_sequences(6, seed=1).sequences
    local = LocalScorer(tmp_path, watch=False)
    got = local.score_candidates(batch)
    assert [len(s) for s in got] == [len(i) for i in batch.items]
    with StandinServer(tmp_path, "interest") as server:
        remote = TFServingScorer(server.url, "interest", tmp_path, max_batch=4)
        for a, b in zip(remote.score_candidates(batch), got, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # the users' recent events are an input: without them the scores change
    batch.sequences = None
    assert any(
        not np.allclose(a, b) for a, b in zip(local.score_candidates(batch), got, strict=True)
    )
    local.close()


def test_ranking_mode_of_a_version() -> None:
    assert ranking_mode({"ranking": {"use_network": True}}, fused=True) == RANKING_FUSED
    assert ranking_mode({"ranking": {"use_network": True}}) == RANKING_NETWORK
    assert ranking_mode({"ranking": {"use_network": False}}, fused=True) == RANKING_BLEND


def test_train_guard_picks_the_best_of_network_fused_and_blend(tmp_path: Path) -> None:
    from models.training.embeddings import MFConfig
    from models.training.ranker import RankerConfig
    from models.training.train import TrainConfig, sequence_config, train
    from stream.config import Settings

    settings = Settings(sequence_length=12, sequence_dim=16, sequence_heads=2, sequence_blocks=1)
    cfg = TrainConfig(
        mf=MFConfig(dim=8, iterations=4),
        ranker=RankerConfig(hidden=(16,), epochs=1),
        sequence=sequence_config(settings, epochs=3),
    )
    model = train(category_events(16, 20), settings, seed=3, config=cfg)
    guard = model.metrics["ranking"]
    k = guard["k"]
    scores = {
        name: (guard[name][f"hr@{k}"], guard[name][f"ndcg@{k}"])
        for name in (RANKING_BLEND, RANKING_NETWORK, RANKING_FUSED)
    }
    best = max(scores.values())
    simplest = next(n for n in (RANKING_BLEND, RANKING_NETWORK, RANKING_FUSED) if scores[n] == best)
    assert guard["mode"] == simplest and guard["use_network"] == (simplest != RANKING_BLEND)
    assert (model.artifacts.fused is not None) == (simplest == RANKING_FUSED)
    assert "fused_validation" in model.metrics["sequence"]
    path = model.export(tmp_path, settings=settings)
    assert json.loads((path / "metadata.json").read_text())["ranking"] == simplest


@pytest.mark.parametrize("rows", [[-1, -1], [0, -1]])
def test_pair_probabilities_of_missing_sequences_or_items_are_zero(rows: list[int]) -> None:
    art = toy_artifacts(seed=1, sequence=True)
    assert art.sequence is not None
    seq_items = np.array([[-1] * 7 + [3]], np.int32)
    seq_types = np.zeros((1, 8), np.int32)
    p = pair_probabilities(art.sequence, seq_items, seq_types, np.array(rows), np.array([5, -1]))
    assert p[1] == 0 and (p[0] > 0) == (rows[0] == 0)


def wide_events(users: int = 8, per_user: int = 12, items: int = 300) -> list[Event]:
    """Users browsing a catalog wider than any union: the sequence source adds to it."""
    rng = np.random.default_rng(11)
    out = []
    for u in range(users):
        t = 1_700_000_000_000 + u * 1_000
        for n in range(per_user):
            t += int(rng.integers(10_000, 600_000))
            item = int(rng.integers(0, items))
            out.append(Event(f"u{u}", f"i{item}", "browse", t, f"e{u}-{n}", f"c{item % 5}", 1.0))
    return sorted(out, key=lambda e: e.ts)


def test_replay_unions_hold_the_next_items_serving_proposes(tmp_path: Path) -> None:
    """The training replay ranks what serving ranks: for every event, the sequence model's
    next items before it are the exported model's `next_items` for the same state (as the
    worker asks, through LocalScorer), and they join the replayed union."""
    from models.training.replay import Steps, next_in_sequence, replay
    from models.training.train import TrainConfig, _fit_embeddings
    from stream.config import Settings, interest_config
    from stream.core.interest import fold, new_state

    events = wide_events()
    settings = Settings(sequence_length=8)
    cfg = TrainConfig(mf=MFConfig(dim=D, iterations=3), refit_full=False, retrieval_k=5)
    stage = _fit_embeddings(events, cfg, settings, 0, Steps(None), "mf")
    art = stage.artifacts
    art.sequence = toy_sequence(len(art.item_ids), seed=5)
    art.network = toy_network(np.random.default_rng(5), len(feature_names(D)))
    interest = interest_config(settings)
    index = stage.interactions.item_index
    nexts = next_in_sequence(events, art.sequence, art, index, interest)

    export_version(art, tmp_path)
    served = LocalScorer(tmp_path, watch=False)
    states: dict[str, UserState] = {}
    asked = 0
    for n, ev in enumerate(events):
        state = states.get(ev.user_id)
        if state is None:
            state = states[ev.user_id] = new_state(ev.user_id, interest)
            assert nexts.lists[n] == []
        else:
            batch = SequenceBatch([ev.user_id], [state.sequence], SEQUENCE_CANDIDATES)
            want = served.next_in_sequence(batch)[0]
            assert [r.item_id for r in nexts.lists[n]] == [r.item_id for r in want]
            assert [r.score for r in nexts.lists[n]] == pytest.approx(
                [r.score for r in want], rel=1e-4, abs=1e-7
            )
            assert {r.reason for r in nexts.lists[n]} == {RecommendReason.next_in_sequence}
            asked += 1
        fold(state, [ev], interest)
    served.close()
    assert asked == len(events) - len(states)

    def unions(sequence: SequenceWeights | None) -> list[RankGroup]:
        groups: list[RankGroup] = []
        rng = np.random.default_rng(0)
        replay(
            events,
            stage,
            cfg,
            interest,
            rng,
            Steps(None),
            "r",
            groups=groups,
            validate_after=events[0].ts,
            sequence=sequence,
        )
        return groups

    with_seq, without = unions(art.sequence), unions(None)
    assert len(with_seq) == len(without) > 0
    added = 0
    for g, plain in zip(with_seq, without, strict=True):
        assert g.seq >= 0 and plain.seq == -1
        if g.pos < 0:
            continue
        proposed = {r.item_id for r in nexts.lists[g.seq]}
        assert proposed <= set(g.ids), "a next item is missing from the replayed union"
        added += len(proposed - set(plain.ids)) if plain.pos >= 0 else 0
    assert added > 0, "the sequence source added nothing the other sources lacked"
