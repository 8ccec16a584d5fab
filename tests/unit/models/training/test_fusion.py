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
from models.training.export import export_version, ranking_mode
from models.training.fusion import fused_input, pair_probabilities
from models.training.module import build_module
from models.training.replay import network_input
from stream.core.features import N_FEATURES
from tests.support.models import D, N, toy_artifacts
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
