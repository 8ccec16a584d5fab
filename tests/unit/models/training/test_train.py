"""Training data: replay through the core, negatives, and training on real Taobao data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.training.embeddings import MFConfig
from models.training.ranker import RankerConfig
from models.training.replay import NegativeSampler, Steps, replay
from models.training.train import TrainConfig, _fit_embeddings, train
from stream.config import Settings, interest_config
from stream.core.types import Event
from tests.support.helpers import SHARED_DATA

DATA = SHARED_DATA
TAOBAO = DATA / "taobao_userbehavior_114users" / "UserBehavior.csv"
AUC_MARGIN = 0.15  # validation AUC must beat 0.5 by this much (observed ~0.94)

SMALL = TrainConfig(
    mf=MFConfig(dim=8, iterations=4),
    ranker=RankerConfig(hidden=(16,), epochs=2),
    refit_full=False,
)


def synthetic_events(users: int = 30, per_user: int = 25, seed: int = 0) -> list[Event]:
    """Users that stick to one of 4 categories (10 items each): a learnable signal."""
    rng = np.random.default_rng(seed)
    out = []
    for u in range(users):
        g = u % 4
        t = 1_700_000_000_000 + int(rng.integers(0, 3_600_000))
        for n in range(per_user):
            t += int(rng.integers(10_000, 600_000))
            item = g * 10 + int(rng.integers(0, 10))
            kind, w = ("purchase", 8.0) if rng.random() < 0.05 else ("browse", 1.0)
            out.append(Event(f"u{u}", f"i{item}", kind, t, f"e{u}-{n}", f"c{g}", w))
    return sorted(out, key=lambda e: e.ts)


def test_replay_features_equal_the_contract_formula() -> None:
    events = synthetic_events(users=3, per_user=6)
    settings = Settings()
    stage = _fit_embeddings(events, SMALL, settings, 0, Steps(None), "mf")
    interest = interest_config(settings)
    ex, unknown = replay(events, stage, SMALL, interest, np.random.default_rng(0), Steps(None), "r")
    assert unknown == 0
    per_pos = 1 + SMALL.neg_popular + SMALL.neg_uniform
    users = len({e.user_id for e in events})
    # a user's first event has no state yet, hence no negatives drawn from its candidates
    extra = (len(events) - users) * SMALL.neg_candidates
    assert len(ex) == len(events) * per_pos + extra and ex.label.sum() == len(events)
    art = stage.artifacts
    emb = {i: art.embeddings[n] for n, i in enumerate(art.item_ids)}
    cat_of = dict(zip(art.item_ids, art.item_categories, strict=True))
    pos = np.flatnonzero(ex.label == 1)
    by_user: dict[str, list[Event]] = {}
    for row, e in enumerate(sorted(events, key=lambda e: e.ts)):  # replay is in event time
        evs = by_user.setdefault(e.user_id, [])
        evs.append(e)
        n = len(evs) - 1
        r = pos[row]
        hl_s, hl_l = interest.half_life_short_ms, interest.half_life_long_ms
        want_s = sum(
            (p.weight * 2 ** (-(e.ts - p.ts) / hl_s) * emb[p.item_id] for p in evs[:n]),
            np.zeros(art.dim),
        )
        want_l = sum(
            (p.weight * 2 ** (-(e.ts - p.ts) / hl_l) * emb[p.item_id] for p in evs[:n]),
            np.zeros(art.dim),
        )
        np.testing.assert_allclose(ex.short[r], want_s, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(ex.long[r], want_l, rtol=1e-4, atol=1e-6)
        want_cat = sum(
            p.weight * 2 ** (-(e.ts - p.ts) / hl_l)
            for p in evs[:n]
            if p.category == cat_of[e.item_id]
        )
        assert ex.cat[r, 1] == pytest.approx(want_cat, rel=1e-4, abs=1e-6)
        assert art.item_ids[ex.item[r]] == e.item_id


def test_replay_keeps_cold_positives_and_simulates_cold_items() -> None:
    events = synthetic_events(users=6, per_user=12)
    settings = Settings()
    early = events[: len(events) // 2]
    stage = _fit_embeddings(early, SMALL, settings, 0, Steps(None), "mf")
    interest = interest_config(settings)
    cfg = TrainConfig(mf=SMALL.mf, ranker=SMALL.ranker, refit_full=False, cold_fraction=0.5)
    ex, unknown = replay(events, stage, cfg, interest, np.random.default_rng(0), Steps(None), "r")
    known = set(stage.artifacts.item_ids)
    assert unknown == sum(e.item_id not in known for e in events)
    assert ex.label.sum() == len(events)  # every event is a positive, known to the model or not
    pos = ex.label == 1
    assert unknown == 0 or (ex.item[pos] == -1).sum() == unknown
    assert 0.4 < ex.cold.mean() < 0.6 and ex.cold[pos].any() and ex.cold[~pos].any()
    # a cold pair's network input is exactly that of an item unknown to the model
    from models.training.replay import features

    x = features(ex, stage.artifacts)
    hot = np.flatnonzero(ex.cold & (ex.item >= 0))[0]
    as_unknown = ex.take(np.arange(len(ex)) == hot)
    as_unknown.item[:] = -1
    as_unknown.cold[:] = False
    np.testing.assert_allclose(x[hot], features(as_unknown, stage.artifacts)[0], rtol=1e-6)
    again, _ = replay(events, stage, cfg, interest, np.random.default_rng(0), Steps(None), "r")
    np.testing.assert_array_equal(again.cold, ex.cold)  # seeded


def test_train_reports_the_ranking_guard() -> None:
    model = train(synthetic_events(), Settings(), seed=3, config=SMALL)
    guard = model.metrics["ranking"]
    assert guard["lists"] > 0 and 0 <= guard["item_in_union"] <= guard["lists"]
    for name in ("network", "blend"):
        assert 0.0 <= guard[name]["hr@20"] <= 1.0 and 0.0 <= guard[name]["ndcg@20"] <= 1.0
    net = (guard["network"]["hr@20"], guard["network"]["ndcg@20"])
    blend = (guard["blend"]["hr@20"], guard["blend"]["ndcg@20"])
    assert guard["use_network"] == (net > blend)
    assert model.scorer().network_ranking == guard["use_network"]


def test_negative_sampler_mix_never_returns_the_positive() -> None:
    counts = np.array([100.0, 1.0, 1.0, 1.0, 0.0])
    s = NegativeSampler(counts, n_popular=3, n_uniform=2)
    rng = np.random.default_rng(0)
    draws = [s.sample(rng, exclude=0) for _ in range(2000)]
    assert all(len(d) == 5 and 0 not in d for d in draws)
    flat = np.array(draws)
    assert np.all(flat[:, 3:] < 5)  # uniform part reaches the zero-count item
    assert (flat[:, 3:] == 4).any()


def test_train_on_synthetic_events_reports_metrics(tmp_path: Path) -> None:
    cfg = TrainConfig(
        mf=MFConfig(dim=8, iterations=4),
        ranker=RankerConfig(hidden=(16,), epochs=10, batch_size=64),
        refit_full=False,
    )
    model = train(synthetic_events(), Settings(), seed=3, config=cfg)
    m = model.metrics
    for key in ("auc", "log_loss", "accuracy", "precision", "recall", "f1", "threshold"):
        assert key in m["validation"]
    assert m["validation"]["auc"] > 0.6
    path = model.export(tmp_path, settings=Settings())
    meta = json.loads((path / "metadata.json").read_text())
    assert meta["metrics"]["validation"]["auc"] == m["validation"]["auc"]
    recs = model.scorer().recommend(_one_user_batch(model))
    assert len(recs) == 1 and recs[0]


def _one_user_batch(model):
    from stream.core.types import ScoreBatch

    vec = np.zeros((1, 2, model.artifacts.dim), np.float32)
    vec[0, :] = model.item_vectors().get("i3")
    return ScoreBatch(["u"], vec, [({"c0": 1.0}, {"c0": 2.0})], [set()], 5)


def test_train_command_writes_a_version(tmp_path: Path) -> None:
    from models.training.train import train_command

    csv = tmp_path / "UserBehavior.csv"
    kinds = {"browse": "pv", "purchase": "buy"}
    csv.write_text(
        "".join(
            f"{e.user_id[1:]},{e.item_id[1:]},{e.category[1:]},{kinds[e.type]},{e.ts // 1000}\n"
            for e in synthetic_events(users=12, per_user=15)
        )
    )
    out = train_command(
        Settings(embedding_dim=8, top_k=5), [csv], tmp_path / "models", epochs=1, folds=2, seed=1
    )
    assert out.parent == tmp_path / "models" and out.name.isdigit()
    metrics = json.loads((out / "metrics.json").read_text())
    assert "cv" in metrics and metrics["cv"]["folds"] == 2
    assert len(json.loads((out / "metadata.json").read_text())["data_fingerprint"]) == 64


@pytest.mark.slow
def test_train_on_taobao_114_users_beats_chance() -> None:
    if not TAOBAO.exists():
        pytest.skip(f"real data not found at {TAOBAO} (the shared data folder is not checked out)")
    from models.data import load_events

    events = load_events([TAOBAO], settings=Settings())
    cfg = TrainConfig(
        mf=MFConfig(dim=16, iterations=6), ranker=RankerConfig(epochs=3), refit_full=False
    )
    model = train(events, Settings(), seed=7, config=cfg)
    val = model.metrics["validation"]
    assert val["positives"] > 100
    assert val["auc"] > 0.5 + AUC_MARGIN, val
    assert val["auc"] > model.metrics["validation_popularity_auc"]
    assert val["log_loss"] < 0.5
